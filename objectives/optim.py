"""The optimiser and learning-rate schedule every training loop in isoflop uses, in one place.

ELECTRA's recipe (paper appendix A; official code ``model/optimization.py``, ``create_optimizer``):
AdamW with decoupled weight decay that skips biases and LayerNorm weights, linear warmup, then linear
decay to 0. Pre-training uses one learning rate; fine-tuning gives each depth its own
(layer-wise decay), through ``lr_of``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def warmup_then_linear_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Step 0 already trains: ``(step + 1) / warmup`` during warmup (a multiplier of 0 at step 0 would
    waste the first update), then a straight line to 0 at ``total_steps``.
    """
    total = max(1, int(total_steps))
    warmup = max(0, min(int(warmup_steps), total))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return multiplier


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr_of: Callable[[str], tuple[str, float]] | None = None,
) -> list[dict]:
    """AdamW groups: decay on matrices only (biases and LayerNorm weights, every 1-d tensor, get none).

    ``lr_of(name)`` returns ``(group name, learning rate)`` for a parameter (layer-wise decay); without
    it every group takes the optimiser's learning rate. Frozen parameters are left out; a parameter
    shared between modules (tied embeddings) appears once, as ``named_parameters`` yields it once.
    Groups are named ``<group>`` and ``<group>/no_decay``; ``param_names`` lists their parameters.
    """
    groups: dict[str, dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        base, lr = lr_of(name) if lr_of is not None else ("all", None)
        no_decay = param.ndim < 2
        key = base + ("/no_decay" if no_decay else "")
        if key not in groups:
            groups[key] = {"name": key, "params": [], "param_names": [],
                           "weight_decay": 0.0 if no_decay else weight_decay}
            if lr is not None:
                groups[key]["lr"] = lr
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


# Device types whose fused AdamW kernel isoflop uses: CUDA, and the CPU, where torch's fused kernel
# (torch >= 2.4) steps ELECTRA-Small's 13.5M parameters in 9 ms on one core against 28 ms for the
# default per-parameter loop and 45 ms for foreach (measured with torch 2.13 on an AVX-512 EPYC).
FUSED_DEVICE_TYPES = ("cuda", "cpu")


def fused_adamw(params: list[torch.Tensor]) -> bool:
    """Whether AdamW should take its fused kernel for ``params``: all floating point, all on one device
    type that has the kernel. (Parameters on the meta device, or split across device types, take the
    default implementation.)"""
    types = {p.device.type for p in params}
    return len(types) == 1 and types <= set(FUSED_DEVICE_TYPES) and all(p.is_floating_point() for p in params)


def unscale_before_step(optimizer: torch.optim.Optimizer) -> None:
    """Have a fused optimiser's gradients unscaled before its step, as any other optimiser's are, so that
    Lightning clips them under mixed precision.

    torch's fused AdamW can take the GradScaler's scale into its kernel, and says so with the private flag
    ``_step_supports_amp_scaling``. Lightning reads that flag (``_optimizer_handles_unscaling``) and then
    refuses gradient clipping under any mixed precision ("does not allow for gradient clipping because it
    performs unscaling of gradients internally"), bf16-mixed included, where nothing is scaled, and skips
    the GradScaler's ``unscale_`` under 16-mixed. Clipping needs unscaled gradients anyway: with the flag
    off, Lightning unscales before the step as for any optimiser (16-mixed), the GradScaler then steps it
    the ordinary way (skipping a step with infinite gradients), and the fused kernel runs on unscaled
    gradients. No public switch does this: torch has no argument for it, and Lightning's clipping and
    unscaling both read the flag.

    A private torch attribute, kept here and not in ``experiments/private_api.py`` (which lists it)
    because objectives import nothing above them. Checked on torch 2.13 (set by the fused Adam, AdamW,
    SGD and Adagrad; read by ``torch.amp.GradScaler.step``) and lightning 2.6.6 (read the same way in 2.3
    to 2.6: ``lightning.fabric.plugins.precision.amp._optimizer_handles_unscaling``).
    """
    optimizer._step_supports_amp_scaling = False


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :func:`skip_step_if` can make ``optimizer``'s next step a no-op from a device flag: torch's fused
    Adam and AdamW take a ``found_inf`` tensor into their kernel."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))


def skip_step_if(optimizer: torch.optim.Optimizer, bad: torch.Tensor | None) -> None:
    """Make ``optimizer``'s next step skip every update where ``bad`` (a 0-d float tensor, 1.0 or 0.0, on the
    parameters' device) is 1, decided on the device: no host read-back. None: step normally.

    torch's fused Adam and AdamW read the optimiser's ``found_inf`` attribute, which ``torch.amp.GradScaler``
    sets for an overflowing fp16 step: where it is 1 the kernel leaves parameters and moments untouched and
    the step counter is put back (``torch.optim.adam._fused_adam``). Not a documented argument, so kept here,
    behind one function (objectives import nothing above them; ``experiments/private_api.py`` lists it);
    checked on torch 2.13, on the CPU and CUDA kernels. Only for :func:`skips_on_device` optimisers, and not
    under a GradScaler (fp16), which owns the attribute.
    """
    if bad is None:
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf
        return
    optimizer.found_inf = bad


def adamw_with_schedule(
    groups: list[dict],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    total_steps: int,
    warmup_fraction: float,
) -> dict:
    """AdamW over ``groups`` with warmup-then-linear-decay, as Lightning's ``configure_optimizers`` returns
    it (stepped every optimiser step). The schedule multiplies each group's own rate, so layer-wise
    ratios hold throughout. The fused kernel is used where every parameter is on one CUDA or CPU
    device type (:func:`fused_adamw`)."""
    params = [p for g in groups for p in g["params"]]
    fused = fused_adamw(params)
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)
    if fused:
        unscale_before_step(optimizer)
    schedule = warmup_then_linear_decay(total_steps, int(warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
