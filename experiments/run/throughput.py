"""Throughput you can see: tokens/s, FLOP/s, MFU and peak memory of a training run, and where the
peak FLOP/s that MFU divides by comes from.

:class:`Throughput` logs, every ``log_every_n_steps`` optimiser steps, over the global batch:

- ``train/tokens_per_s``: real (non-pad) training tokens per second, from the objective's own
  global token count (``tokens_seen``);
- ``train/flops_per_s``: the objective's analytic training FLOPs (``actual`` convention: the matrix
  multiplies the step really runs, see ``objectives.flops``) per second;
- ``train/mfu``: model FLOPs utilisation, ``flops_per_s / (peak x world size)``;
- ``train/peak_memory_gb``: peak memory of this process's device in GB (10^9 bytes): CUDA's
  ``max_memory_allocated``; on the CPU the process's peak resident set (VmHWM).

Timing is ``time.perf_counter`` between two log steps, so a step that logs nothing costs a few
Python additions and never waits for the device: on CUDA the device is synchronised on log steps
only (it must be, for the clock to mean anything). Validation inside the interval is left out
(synchronised at its start and end: it is rare); checkpoint writes and data loading are part of
training's wall clock and stay in.

The peak (:func:`peak_flops`) comes from, in this order: the user (``--peak_flops``), this module's
table :data:`DEVICE_PEAKS` (the devices Lightning's table names wrongly or not at all), Lightning's table
(``lightning.fabric.utilities.throughput.get_available_flops``), or a matmul measured on the device
itself (:func:`measured_matmul_flops`: the CPU, or a device neither table has).

:class:`CompileStep` is the opt-in ``torch.compile`` of a run's whole training step (``--compile true``).
"""

from __future__ import annotations

import functools
import platform
import re
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only


# What :class:`Throughput` logs. Wall-clock figures: they differ between two runs of the same
# configuration, where everything else a run logs is reproducible.
KEYS = ("train/tokens_per_s", "train/flops_per_s", "train/mfu", "train/peak_memory_gb")


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak FLOP/s of one accelerator, per device, as its vendor states them.

    ``tf32`` is the tensor-core rate of float32 matmuls where TF32 is allowed (NVIDIA states TF32,
    not IEEE float32, for its tensor cores); ``fp32`` is the plain float32 rate. Vendors print
    tensor-core figures "with sparsity" (2:4 structured): those are halved here, since training
    runs dense matmuls.
    """

    name: str
    bf16: float
    tf32: float
    fp32: float
    source: str


# (pattern matched against torch's device name, case-insensitive; first match wins) -> peak.
# More specific patterns first: "GH200" and "H200 NVL" before "H200", "L40S" before "L40".
DEVICE_PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    (r"H100 NVL", DevicePeak("NVIDIA H100 NVL", 835.5e12, 417.5e12, 60e12,
                             "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL column (sparse BF16 1671, TF32 835 halved)")),
    (r"GH200", DevicePeak("NVIDIA GH200", 989.5e12, 494.5e12, 67e12,
                          "NVIDIA GH200 Grace Hopper Superchip datasheet (sparse BF16 1979, TF32 989 halved)")),
    (r"H200 NVL", DevicePeak("NVIDIA H200 NVL", 835.5e12, 417.5e12, 60e12,
                             "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL column (sparse BF16 1671, TF32 835 halved)")),
    (r"H200", DevicePeak("NVIDIA H200 SXM", 989.5e12, 494.5e12, 67e12,
                         "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column (sparse BF16 1979, TF32 989 halved)")),
    (r"\bA10\b", DevicePeak("NVIDIA A10", 125e12, 62.5e12, 31.2e12,
                            "NVIDIA A10 Tensor Core GPU datasheet (sparse BF16 250, TF32 125 halved)")),
    (r"L40S", DevicePeak("NVIDIA L40S", 362.05e12, 183e12, 91.6e12,
                         "NVIDIA L40S GPU datasheet (sparse BF16 733, TF32 366 halved)")),
    (r"\bL40\b", DevicePeak("NVIDIA L40", 181.05e12, 90.5e12, 90.5e12,
                            "NVIDIA L40 GPU datasheet (sparse BF16 362.1, TF32 181 halved)")),
    (r"RTX 4090", DevicePeak("NVIDIA GeForce RTX 4090", 165.2e12, 82.6e12, 82.6e12,
                             "NVIDIA Ada Lovelace GPU architecture whitepaper v2.1, appendix A (BF16 with FP32 "
                             "accumulate)")),
    (r"MI300X", DevicePeak("AMD Instinct MI300X", 1307.4e12, 653.7e12, 163.4e12,
                           "AMD Instinct MI300X accelerator data sheet (dense matrix BF16, TF32, FP32)")),
)
"""The devices whose figure Lightning's table (``get_available_flops``) gets wrong or lacks; every other
device's figure is Lightning's. Why each is here (read in lightning 2.6.6; the same in 2.3 to 2.6, where
the H200 names first appear in 2.6.0):

- H100 NVL: Lightning's figures are the H100 SXM's sparse ones (BF16 1978.8, 2.4 times the NVL's dense 835.5).
- H200 and H200 NVL: torch names them "NVIDIA H200" and "NVIDIA H200 NVL"; Lightning looks for "sxm1" and
  "nvl1" in the name, so it has no figure for either (and its figures for those names are the sparse ones).
- GH200: torch names it "NVIDIA GH200 480GB", which Lightning reads as an H200: no figure.
- A10: Lightning has the A10G, not the A10.
- L40S and L40: Lightning reads every name containing "l4" (but a "Tesla" one) as an L4, so they would get
  the L4's figures.
- RTX 4090: Lightning's bf16 figure is the non-tensor-core rate (82.6), not the tensor cores' 165.2.
- MI300X (ROCm): Lightning's table has NVIDIA devices only.
"""


def table_peak(device_name: str) -> DevicePeak | None:
    """This module's entry for a device, by torch's name for it (``torch.cuda.get_device_name``)."""
    for pattern, peak in DEVICE_PEAKS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


def lightning_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """Lightning's figure for ``device`` in ``dtype`` (``get_available_flops``: CUDA devices by name, TPUs;
    float32 at the TF32 rate when torch allows TF32 on an Ampere or later GPU), or None. Lightning warns
    when it has none; that is said once, in the peak's source (:func:`peak_flops`), not on every run."""
    from lightning.fabric.utilities.throughput import get_available_flops

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"FLOPs not found for|.* does not support ")
        value = get_available_flops(device, dtype)
    return float(value) if value else None


def compute_dtype(precision: str | int | None) -> torch.dtype:
    """The dtype the matmuls of a Lightning ``precision`` run in (``bf16-mixed`` -> bfloat16)."""
    text = str(precision or "32")
    if "bf16" in text:
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    if text.startswith("64"):
        return torch.float64
    return torch.float32


def _tf32_allowed() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@functools.lru_cache(maxsize=None)
def _measure(device: str, dtype: torch.dtype, threads: int) -> float:
    """The best FLOP/s of repeated square matmuls (``threads`` is part of the cache key only)."""
    dev = torch.device(device)
    n = 1024 if dev.type == "cpu" else 8192  # big enough to reach the device's matmul peak
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for i in range(7):  # the first two warm the kernels and caches
        _synchronize(dev)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _synchronize(dev)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measured_matmul_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large matmul measured on ``device`` in ``dtype``, once per process (per device,
    dtype and, on the CPU, torch's thread count): the peak of a CPU, whose peak depends on its
    cores, threads, clock and vector units (no table can know it), and of any device neither
    :data:`DEVICE_PEAKS` nor Lightning's table has. A fraction of a
    second. Matmuls are what the ``actual`` FLOPs count, so this is the rate they can reach here."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _measure(str(device), dtype, torch.get_num_threads() if device.type == "cpu" else 0)


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32,
               override: float | None = None) -> tuple[float, str]:
    """Peak FLOP/s of one ``device`` for matmuls in ``dtype``, and where the figure comes from.

    The user's ``override`` wins; then this module's table (:data:`DEVICE_PEAKS`, CUDA and ROCm devices
    by name: float16 is given the bfloat16 rate, float32 the TF32 rate when torch allows TF32); then
    Lightning's table (:func:`lightning_peak`); then a matmul measured on the device
    (:func:`measured_matmul_flops`), which is all there is for a CPU's peak: it depends on the cores,
    threads, clock and vector units, which no table can know.
    """
    if override is not None:
        if not override > 0:
            raise ValueError(f"peak_flops must be positive (FLOP/s per device), got {override}")
        return float(override), "given by the user (--peak_flops)"
    device = torch.device(device)
    dtype_name = str(dtype).removeprefix("torch.")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    entry = table_peak(name) if name else None
    if entry is not None and dtype in (torch.bfloat16, torch.float16, torch.float32):
        if dtype == torch.float32:
            kind, value = ("tf32", entry.tf32) if _tf32_allowed() else ("fp32", entry.fp32)
        else:
            kind, value = "bf16", entry.bf16
        return value, f"{entry.name}, dense {kind}: {entry.source}"
    if entry is None:
        value = lightning_peak(device, dtype)
        if value is not None:
            kind = "tf32" if dtype == torch.float32 and _lightning_takes_tf32(device) else dtype_name
            return value, f"{name or device}, {kind}: Lightning's table (get_available_flops)"
    where = f" ({name}: no table has its {dtype_name} figure)" if name else ""
    if device.type == "cpu":
        where = f", {torch.get_num_threads()} thread(s)"
    return measured_matmul_flops(device, dtype), f"measured: {dtype_name} matmul on {device}{where}"


def describe_machine(device: torch.device | str, devices: int = 1) -> str:
    """What a run's figures were computed on, in one line: the device (a GPU's name; a CPU's model and torch's
    thread count), how many, and the versions of torch and Python. Floating-point results depend on all of
    them (a sum's order changes with the vector units, the thread count and the kernels), so a results table
    says where it was made (``rtd/reliability.rst``, same command, same table)."""
    device = torch.device(device)
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{_cpu_model() or device.type}, {torch.get_num_threads()} torch thread(s)"
    return f"{devices} x {what}; torch {torch.__version__}, Python {platform.python_version()}"


def _cpu_model() -> str | None:
    """The CPU's model name on Linux (``/proc/cpuinfo``), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _lightning_takes_tf32(device: torch.device) -> bool:
    """Whether Lightning gives float32 matmuls on ``device`` the TF32 rate: torch allows TF32 and the GPU
    has it (Ampere or later)."""
    return (device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
            and torch.cuda.get_device_capability(device)[0] >= 8)


def peak_memory_gb(device: torch.device | str) -> float:
    """Peak memory in GB (10^9 bytes): CUDA's peak allocated by tensors on ``device``; elsewhere the
    process's peak resident set size (all of its memory, Python and libraries included)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_bytes() / 1e9


def peak_rss_bytes() -> int:
    """The process's peak resident set size: VmHWM on Linux (which :func:`reset_peak_rss` can reset),
    else ``getrusage``'s maxrss (kilobytes on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set to its current size (Linux: ``/proc/self/clear_refs``),
    so the next reading is the peak of what runs in between; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def compile_networks(module: torch.nn.Module, **options) -> list[str]:
    """``torch.compile`` every Hugging Face backbone (``base_model``) under ``module``, in place (what
    ``isoflop bench --compile`` does to the plain loops' networks; a run compiles its whole step instead,
    :class:`CompileStep`).

    The backbones (embeddings and transformer layers) are where a step's time goes; the heads,
    masking, sampling and losses stay eager, so masking's random draws and the generator's sampling
    are untouched. ``nn.Module.compile`` compiles in place: parameter names, checkpoints, exports
    and embedding sharing stay as they are. A backbone shared by two networks is compiled once.
    ``options`` go to ``torch.compile`` (``backend="eager"`` traces without generating code: tests).
    Returns the compiled backbones' names.
    """
    from transformers import PreTrainedModel

    done, names = set(), []
    for name, child in module.named_modules():
        if not isinstance(child, PreTrainedModel):
            continue
        backbone = child.base_model
        if id(backbone) in done:
            continue
        done.add(id(backbone))
        backbone.compile(**options)
        names.append(f"{name}.{child.base_model_prefix}" if name else child.base_model_prefix)
    return names


@rank_zero_only
def _say(text: str) -> None:
    print(text, flush=True)


class Throughput(Callback):
    """Log ``train/tokens_per_s``, ``train/flops_per_s``, ``train/mfu`` and ``train/peak_memory_gb``
    every ``log_every_n_steps`` optimiser steps (see the module's docstring for what each means).

    Args:
        peak_flops: the peak FLOP/s of one device, to override the table and the measurement.
    """

    def __init__(self, peak_flops: float | None = None):
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be positive (FLOP/s per device), got {peak_flops}")
        self.override = peak_flops
        self.peak: float | None = None
        self.source = ""
        self._start = 0.0
        self._tokens = 0
        self._flops = 0.0
        self._paused = 0.0
        self._pause_start: float | None = None
        self._step_before = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.peak, self.source = peak_flops(pl_module.device, compute_dtype(trainer.precision), self.override)
        _say(f"peak: {self.peak:.3e} FLOP/s per device ({self.source}); MFU = training FLOP/s / (peak x "
             f"{trainer.world_size} device(s))")
        self._restart(pl_module)

    def _restart(self, pl_module) -> None:
        _synchronize(pl_module.device)
        self._tokens = int(pl_module.tokens_seen)  # a log step (or the start): a sync is allowed here
        self._start, self._flops, self._paused = time.perf_counter(), 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        B, L = batch["input_ids"].shape  # host-side shapes: no sync
        self._flops += pl_module.step_flops(B, L, "actual") * trainer.world_size
        every = trainer.log_every_n_steps
        if trainer.global_step == self._step_before or not every or trainer.global_step % every:
            return  # inside gradient accumulation, or not a log step: nothing waits for the device
        _synchronize(pl_module.device)
        seconds = max(time.perf_counter() - self._start - self._paused, 1e-9)
        flops_per_s = self._flops / seconds
        values = ((int(pl_module.tokens_seen) - self._tokens) / seconds, flops_per_s,
                  flops_per_s / (self.peak * trainer.world_size), peak_memory_gb(pl_module.device))
        for key, value in zip(KEYS, values):
            pl_module.log(key, float(value), on_step=True, on_epoch=False, reduce_fx="max")
        self._restart(pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # validation inside fit: not training time
            _synchronize(pl_module.device)
            self._pause_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pause_start is not None:
            _synchronize(pl_module.device)
            self._paused += time.perf_counter() - self._pause_start
            self._pause_start = None


class CompileStep(Callback):
    """``--compile true``: the objective's whole training computation compiled as one graph
    (``objectives.base.PretrainingObjective.compile_step``: masking, generator, sampling, main network,
    losses and the backward through them) once its networks are built and on their device (fit start),
    before the first step; ``mode`` is ``torch.compile``'s (``--compile_mode reduce-overhead``: CUDA graphs)."""

    def __init__(self, mode: str | None = None):
        self.mode = mode

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.compile_step(**({"mode": self.mode} if self.mode else {}))
        _say(f"torch.compile: the whole training step (fullgraph{', mode ' + self.mode if self.mode else ''})")


def performance_callbacks(peak_flops: float | None = None, compile: bool = False,
                          compile_mode: str | None = None) -> list[Callback]:
    """The callbacks a run's ``--peak_flops`` and ``--compile`` ask for (what ``_trainer`` registers)."""
    return [Throughput(peak_flops), *([CompileStep(compile_mode)] if compile else [])]
