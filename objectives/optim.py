"""The optimiser and learning-rate schedules every training loop in isoflop uses, in one place.

ELECTRA's recipe (paper appendix A; official code ``model/optimization.py``, ``create_optimizer``):
Adam with decoupled weight decay that skips biases and LayerNorm weights, linear warm-up and linear
decay to 0. Pre-training uses one learning rate; fine-tuning gives each depth its own (layer-wise decay),
through ``lr_of``.

Two choices differ between the official code and the torch default, and each is a setting:

- **Bias correction.** BERT's and ELECTRA's ``AdamWeightDecayOptimizer`` (``model/optimization.py``) and
  DeBERTa's ``XAdam`` (``DeBERTa/optims/xadam.py``, ``bias_correction=0``) update by
  ``m / (sqrt(v) + eps)`` with no ``1 - beta^t`` correction; ``torch.optim.AdamW`` corrects. The
  uncorrected update is larger by ``(1 - b1^t) / sqrt(1 - b2^t)`` in the first steps (about 6.5x at
  step 10, 3.2x at step 100, 1.26x at step 1,000, at betas 0.9/0.999). :class:`AdamWeightDecay` is
  the official rule (``bias_correction=False`` in :func:`adamw_with_schedule`).
- **The schedule** (:data:`SCHEDULES`): ``linear`` warms up from ``1/warmup`` at the first step and
  then decays from the peak to 0 over the steps after warm-up; ``electra`` is the official
  ``create_optimizer``'s polynomial (power 1) decay from step 0 times the warm-up ramp
  ``min(1, step / warmup)`` (so the first update has rate 0 and the peak is ``1 - warmup/total``);
  ``deberta`` is DeBERTa's ``warmup_linear`` (``DeBERTa/optims/lr_schedulers.py``): ``step / warmup``
  during warm-up, then ``1 - step / total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

SCHEDULES = ("linear", "electra", "deberta")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def warmup_then_linear_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The ``linear`` schedule: the multiplier of the peak learning rate at optimiser step ``step`` (0-based).

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


def electra_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The ``electra`` schedule (official ``create_optimizer``): ``max(0, 1 - step / total) x min(1, step / warmup)``,
    with TensorFlow's ``global_step`` before the update as ``step`` (0 at the first update)."""
    total = max(1, int(total_steps))
    warmup = max(0, min(int(warmup_steps), total))

    def multiplier(step: int) -> float:
        ramp = 1.0 if warmup == 0 else min(1.0, step / warmup)
        return max(0.0, 1.0 - step / total) * ramp

    return multiplier


def deberta_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The ``deberta`` schedule (official ``warmup_linear`` with ``ends=0``): ``step / warmup`` while ``step <
    warmup``, then ``1 - step / total``, with the parameter's step count before the update as ``step``."""
    total = max(1, int(total_steps))
    warmup = max(0, min(int(warmup_steps), total))

    def multiplier(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, 1.0 - step / total)

    return multiplier


_SCHEDULE_FUNCTIONS = {"linear": warmup_then_linear_decay, "electra": electra_schedule, "deberta": deberta_schedule}


def schedule(name: str, total_steps: int, warmup_fraction: float,
             stages: Sequence[int] | None = None) -> Callable[[int], float]:
    """The multiplier of each group's peak rate at optimiser step ``step`` (0-based) under schedule ``name``,
    warm-up ``warmup_fraction`` of the steps. ``stages``: the lengths of consecutive stages that each run the
    whole schedule on their own (warm-up and decay; two-stage ELECTRA), summing to ``total_steps``."""
    check_schedule(name)
    build = _SCHEDULE_FUNCTIONS[name]
    lengths = [int(total_steps)] if not stages else [int(n) for n in stages]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    pieces = [build(n, int(warmup_fraction * n)) for n in lengths]

    def multiplier(step: int) -> float:
        for start, length, piece in zip(reversed(starts), reversed(lengths), reversed(pieces)):
            if step >= start:
                return piece(step - start)
        return pieces[0](step)

    return multiplier


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr_of: Callable[[str], tuple[str, float | None]] | None = None,
) -> list[dict]:
    """AdamW groups: decay on matrices only (biases and LayerNorm weights, every 1-d tensor, get none).

    On ELECTRA and DeBERTa networks the 1-d tensors are exactly those the official optimisers exclude by name
    (ELECTRA: ``LayerNorm``, ``layer_norm``, ``bias``; DeBERTa: ``bias``, ``LayerNorm.weight``).
    ``lr_of(name)`` returns ``(group name, learning rate)`` for a parameter (layer-wise decay; a rate of None
    takes the optimiser's); without it every group takes the optimiser's learning rate. Frozen parameters are
    left out; a parameter shared between modules (tied embeddings) appears once, as ``named_parameters`` yields
    it once. Groups are named ``<group>`` and ``<group>/no_decay``; ``param_names`` lists their parameters.
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


# The step count each parameter's Adam state starts from in AdamWeightDecay: 2^23, where beta^t is 0 in float32
# and float64 for every beta up to BIAS_FREE_MAX_BETA (0.99999^(2^23) = 4e-37), so both bias corrections are
# exactly 1; counts stay exact in float32 up to 2^24 (8.4M steps after the offset), and beyond that they stop
# moving, which changes nothing (only the bias corrections read them).
BIAS_FREE_STEP = float(2**23)
BIAS_FREE_MAX_BETA = 0.99999


class AdamWeightDecay(torch.optim.AdamW):
    """AdamW without bias correction: the update rule of BERT's and ELECTRA's ``AdamWeightDecayOptimizer``
    (official ``model/optimization.py``) and of DeBERTa's ``XAdam`` (``DeBERTa/optims/xadam.py``, which passes
    ``bias_correction=0``)::

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (sqrt(v) + eps) + wd p)

    ``torch.optim.AdamW`` computes ``p <- p (1 - lr wd) - lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t) + eps)``,
    which is this rule exactly when ``b1^t = b2^t = 0``. So this is torch's AdamW, with its fused (or foreach)
    kernels, whose per-parameter step counts start at :data:`BIAS_FREE_STEP` instead of 0: each
    parameter's state is created, in torch's own layout (``step``, ``exp_avg``, ``exp_avg_sq``), before its
    first update. A checkpoint's optimiser state shows the offset (``step - 2**23`` updates taken). The
    non-finite check's on-device skip (``found_inf``) works as for AdamW. betas up to 0.99999.
    """

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        if self.defaults["amsgrad"]:
            raise ValueError("AdamWeightDecay has no amsgrad variant (the official optimisers have none)")
        for group in self.param_groups:
            if max(group["betas"]) > BIAS_FREE_MAX_BETA:
                raise ValueError(f"adam_betas {tuple(group['betas'])} with adam_bias_correction false: betas above "
                                 f"{BIAS_FREE_MAX_BETA} are not supported there")
        self._all_started = False

    @torch.no_grad()
    def start_states(self) -> None:
        """Create the Adam state, at the offset step count, of every parameter that has a gradient and no state
        yet (torch would create it at 0 in this step). A loop over the parameters only until every one has
        state (parameters that never get a gradient, a frozen generator's, keep it running: a few microseconds)."""
        if self._all_started:
            return
        missing = False
        for group in self.param_groups:
            on_device = group["fused"] or group["capturable"]
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    continue
                if p.grad is None:
                    missing = True
                    continue
                self.state[p] = {
                    "step": torch.full((), BIAS_FREE_STEP, dtype=torch.float32,
                                       device=p.device if on_device else torch.device("cpu")),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        self._all_started = not missing

    def step(self, closure=None):
        """One update. The closure (Lightning's: forward and backward) runs first, as in any torch optimiser,
        so the parameters that get their first gradient in it get their state at the offset too."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.start_states()
        super().step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._all_started = False


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
    bias_correction: bool = True,
    lr_schedule: str = "linear",
    stages: Sequence[int] | None = None,
) -> dict:
    """AdamW over ``groups`` with a learning-rate schedule, as Lightning's ``configure_optimizers`` returns it
    (stepped every optimiser step). ``bias_correction`` False: :class:`AdamWeightDecay`, the official
    optimisers' rule. ``lr_schedule``: one of :data:`SCHEDULES`; ``stages``: see :func:`schedule`. The schedule
    multiplies each group's own rate, so layer-wise ratios hold throughout. The fused kernel is used where
    every parameter is on one CUDA or CPU device type (:func:`fused_adamw`)."""
    params = [p for g in groups for p in g["params"]]
    fused = fused_adamw(params)
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    kind = torch.optim.AdamW if bias_correction else AdamWeightDecay
    optimizer = kind(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)
    if fused:
        unscale_before_step(optimizer)
    multiplier = schedule(lr_schedule, total_steps, warmup_fraction, stages)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
