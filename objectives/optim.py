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
    ratios hold throughout. The fused kernel is used where every parameter is on a CUDA device."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_cuda for p in params)
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)
    schedule = warmup_then_linear_decay(total_steps, int(warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
