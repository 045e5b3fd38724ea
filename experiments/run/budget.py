"""FLOPs of configurations and budgets, always asked of the objective itself (built on the meta
device: no memory, no compute), so budgets, reports and the documentation tables come from the one
FLOPs path every run counts with.

A budget is a number (``1.5e15``) or "what preset P takes for N steps" (``electra-small:1000000``).
"""

from __future__ import annotations

import math

from jsonargparse import Namespace

from experiments import presets
from experiments.errors import UsageError

# The paper's training FLOPs for its configurations (Clark et al. 2020, Table 1; Table 8 for
# ELECTRA-400K, the Large model at 400k steps), beside the presets that reproduce them.
PUBLISHED = {"bert-small": "1.4e18", "electra-small": "1.4e18", "bert-base": "6.4e19", "electra-base": "6.4e19",
             "electra-large": "7.1e20"}
PAPER_PRESETS = ("bert-small", "electra-small", "bert-base", "electra-base", "bert-large", "electra-large")


def meta_objective(config: Namespace):
    """The configuration's objective, built on the meta device (for its FLOPs)."""
    import torch

    from objectives import resolve

    with torch.device("meta"):
        return resolve(config.model.class_path)(**config.model.init_args)


def global_batch(config: Namespace) -> int:
    """Sequences in one optimiser step over every rank, of a split configuration
    (:func:`split_batch`): per-rank batch x :func:`batches_per_step`."""
    return batches_per_step(config) * config.data.batch_size


def batches_per_step(config: Namespace) -> int:
    """Per-rank batches in one optimiser step over every rank: processes (devices x nodes,
    :func:`experiments.run.ranks.processes`) x accumulation (what :class:`~experiments.run.callbacks.FlopsBudget`
    counts)."""
    from experiments.run.ranks import processes

    accumulate = config.trainer.accumulate_grad_batches
    return processes(config.trainer) * (accumulate if isinstance(accumulate, int) and accumulate > 0 else 1)


def step_flops(config: Namespace, convention: str = "actual", batch: int | None = None, seq: int | None = None,
               scheduled: bool = True, objective=None) -> float:
    """Training FLOPs of one optimiser step of a configuration: every rank's batches at the configured
    per-rank batch and sequence length, or one batch of ``batch`` sequences (a global batch, counted as one
    process would run it); ``scheduled``: averaged over the run, for objectives whose step cost changes.
    ``objective``: the configuration's objective when the caller has built it (else built here, on the
    meta device)."""
    objective = objective if objective is not None else meta_objective(config)
    seq = seq or config.data.max_seq_length
    cost = objective.scheduled_flops_per_batch if scheduled else objective.flops_per_batch
    if batch is not None:
        return cost(batch, seq, convention)
    return batches_per_step(config) * cost(config.data.batch_size, seq, convention)


def split_batch(cfg: Namespace) -> Namespace:
    """``cfg`` (a copy) with the per-device batch and the accumulation the run trains with. Given
    ``data.global_batch_size``, both are derived from it and the number of processes (devices x nodes, as
    :func:`experiments.run.ranks.processes` counts them from the trainer's settings, which is what the launch is
    checked against: :func:`experiments.run.ranks.check_launch`) by :func:`datamodules.batch.split_global_batch`;
    a global batch that does not split, or an accumulation that disagrees, is a one-line error, before any
    compute. Without it, both are as given (the per-device batch 32 when unset).

    Only a final configuration is split: :func:`experiments.run.prepare.check` splits the one it checks, so every reader of the batch
    after it (the FLOPs of a step, the run's identity and directory, the Trainer and the datamodule) sees the
    same numbers; the configurations ``compare`` and ``sweep`` lay settings over are left unsplit, so that a
    device count given there splits the global batch anew."""
    from datamodules.batch import DEFAULT_BATCH_SIZE, split_global_batch
    from experiments.run.ranks import processes

    cfg = cfg.clone()
    if cfg.data.global_batch_size is None:
        if cfg.data.batch_size is None:
            cfg.data.batch_size = DEFAULT_BATCH_SIZE
        return cfg
    try:
        cfg.data.batch_size, cfg.trainer.accumulate_grad_batches = split_global_batch(
            cfg.data.global_batch_size, processes(cfg.trainer), cfg.data.batch_size,
            cfg.trainer.accumulate_grad_batches or 1)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return cfg


def preset_config(name_or_path: str) -> Namespace:
    """A preset's configuration as it runs here: its global batch split over the processes its trainer
    settings make (:func:`split_batch`)."""
    from experiments.config import parse

    return split_batch(parse(["--config", str(name_or_path)]))


def resolve_budget(spec: float | str, convention: str = "actual", option: str = "--budget") -> float:
    """A budget in FLOPs from ``1.5e15`` or ``PRESET:STEPS`` (the FLOPs that preset takes for STEPS steps);
    a one-line error naming ``option`` for anything else."""
    text = str(spec).strip()
    if ":" in text:
        preset, _, steps = text.rpartition(":")
        try:
            n = int(float(steps))
            presets.find(preset)
            config = preset_config(preset)
        except ValueError as err:
            raise UsageError(f"{option} {spec}: {err}") from None
        value = step_flops(config, convention) * n
    else:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{option} {spec}: give a number of FLOPs (1.5e15) or PRESET:STEPS "
                             "(electra-small:1000000)") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{option} {spec}: the FLOPs budget must be a positive number")
    return value


def report(checked) -> str:
    """What a checked pre-training configuration costs (``isoflop flops``, after every check of ``isoflop
    pretrain``: :func:`experiments.run.prepare.check`): FLOPs per sequence, per step (over the global batch)
    and in total, for ``trainer.max_steps`` or the steps its ``budget`` buys; the total is on the last line."""
    from objectives.flops import train_multiplier

    config = checked.config
    convention, per_step = config.flops_convention, checked.step_flops
    batch = global_batch(config)
    if config.budget is not None:
        budget = resolve_budget(config.budget, convention)
        steps, why = math.ceil(budget / per_step), f"what the budget {budget:.3e} buys"
    elif config.trainer.max_steps and config.trainer.max_steps > 0:
        steps, why = config.trainer.max_steps, "trainer.max_steps"
    else:
        raise UsageError("give --trainer.max_steps or --budget: the configuration trains for epochs, whose steps "
                         "depend on the data")
    return "\n".join([
        f"{checked.objective_name}, convention {convention} (training = {train_multiplier(convention):g} x forward), "
        f"global batch {batch} x {config.data.max_seq_length} tokens",
        f"per-sequence training  {per_step / batch:.4e}",
        f"per-step training      {per_step:.4e}",
        f"steps                  {steps} ({why})",
        f"total training FLOPs: {per_step * steps:.3e}",
    ])


def flops_table() -> str:
    """The table of the paper's configurations in ``objectives.flops`` and ``rtd/flops.rst``: each preset
    at its own steps, batch and sequence length, in both conventions, beside the paper's figure."""
    rows = [("preset", "seq / batch / steps", "paper", "published", "actual", "actual/paper")]
    for name in PAPER_PRESETS:
        config = preset_config(name)
        steps, batch, seq = config.trainer.max_steps, global_batch(config), config.data.max_seq_length
        paper, actual = (step_flops(config, c, batch=batch) * steps for c in ("paper", "actual"))
        rows.append((name, f"{seq} / {batch} / {steps}", f"{paper:.3e}", PUBLISHED.get(name, "--"), f"{actual:.3e}",
                     f"{actual / paper:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])
