"""Preparing a pre-training run, once: its configuration checked, its FLOPs budget set, its run directory
decided, before any data is built or any step is taken.

:func:`prepare` is the one entry point: ``isoflop pretrain`` calls it for its run, ``isoflop compare`` and
``isoflop sweep`` for each of theirs, and :func:`experiments.run.pretrain.pretrain` runs what it returns. It
comes in two halves, because a comparison chooses one budget for all its runs from their step costs:

- :func:`check` runs every check that needs no data and no compute (the strategy, the data's settings and
  files, the objective built on the meta device and its fit to the data, a checkpoint to resume from) and
  gives the cost of one optimiser step; nothing is written.
- :meth:`CheckedRun.prepare` sets a budget (one step at least), names the run directory and decides what to
  do with it (:func:`experiments.run.rundir.plan`: train, resume, report a finished run, or refuse).

Every mistake is a one-line :class:`~experiments.errors.UsageError`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import Namespace

from experiments.config import dump, objective_name, parse
from experiments.errors import UsageError
from experiments.run import rundir


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to train: its configuration (with its budget), the directory and what to do with it.

    Attributes:
        config: the configuration, budget included (``budget`` as FLOPs, when there is one).
        dumped: ``config`` as plain data (what run.json records and the loggers log).
        run_dir: the run's directory.
        budget: training FLOPs to stop at, or None (``trainer.max_steps`` decides).
        step_flops: training FLOPs of one optimiser step over every rank, in the configuration's convention.
        plan: train from scratch, resume from ``plan.checkpoint``, or report ``plan.finished``.
        layout_note: how the global batch's split changed since the checkpoint ("" when it did not).
    """

    config: Namespace
    dumped: dict
    run_dir: Path
    budget: float | None
    step_flops: float
    plan: rundir.Plan
    layout_note: str = ""

    @property
    def objective(self) -> str:
        return objective_name(self.config)

    def steps_at(self, budget: float) -> int:
        """The optimiser steps a FLOPs ``budget`` buys this run (the last one may overshoot it)."""
        return math.ceil(budget / self.step_flops)


@dataclass(frozen=True)
class CheckedRun:
    """A configuration that passed every check (:func:`check`), with the cost of one optimiser step."""

    config: Namespace
    step_flops: float
    objective_name: str

    def prepare(self, budget: float | None = None, run_dir: str | Path | None = None, wandb_group: str | None = None,
                option: str = "--budget") -> PreparedRun:
        """This run with a FLOPs ``budget`` (None: the configuration's ``max_steps``) in ``run_dir`` (None: the
        configuration's ``run_dir``, else a name derived from what it trains), logged to ``wandb_group`` when
        given. The configuration checked is left as it was: the prepared run holds a copy. ``option`` names
        the budget in errors."""
        cfg = self.config.clone()
        if wandb_group is not None:
            cfg.wandb_group = wandb_group
        if budget is not None:
            if budget < self.step_flops:
                raise UsageError(
                    f"{option} {budget:.3e} FLOPs is less than one training step of {self.objective_name} "
                    f"({self.step_flops:.3e} FLOPs at a global batch of {rundir.global_batch(dump(cfg))} x "
                    f"{cfg.data.max_seq_length} tokens, {cfg.flops_convention} convention): give at least "
                    f"{self.step_flops:.3e}")
            cfg.budget = repr(float(budget))
        if run_dir is not None:
            cfg.run_dir = str(run_dir)
        dumped = dump(cfg)
        directory = _run_dir(cfg, dumped)
        plan = rundir.plan(directory, dumped, cfg.ckpt_path, cfg.reschedule)
        note = rundir.check_layout(directory, dumped) if plan.checkpoint is not None else ""
        return PreparedRun(cfg, dumped, directory, budget, self.step_flops, plan, note)


def _run_dir(cfg: Namespace, dumped: dict) -> Path:
    """``run_dir``, or ``runs/<objective>-<size>-<hash>`` (:func:`experiments.run.rundir.default_name`). The
    ranks Lightning starts for a run re-run its command and inherit the first process's choice through the
    ``ISOFLOP_RUN_DIR`` environment variable."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    return Path(os.environ.get("ISOFLOP_RUN_DIR") or Path("runs") / rundir.default_name(dumped, objective_name(cfg)))


def check(config: Namespace | dict | list[str]) -> CheckedRun:
    """Every check of a configuration that needs no data and no compute; the cost of one optimiser step."""
    from datamodules.pretraining import PretrainingDataModule
    from experiments.run.budget import meta_objective, split_batch, step_flops
    from experiments.run.checkpoints import check_checkpoint_file
    from objectives.flops import check_convention

    cfg = config if isinstance(config, Namespace) else parse(config)
    if cfg.checkpoint_every < 1:
        raise UsageError(f"--checkpoint_every must be at least 1, got {cfg.checkpoint_every} "
                         "(to write no checkpoints: --trainer.enable_checkpointing false)")
    if cfg.skip_nonfinite < 0:
        raise UsageError(f"--skip_nonfinite must be 0 or more, got {cfg.skip_nonfinite}")
    check_strategy(cfg)
    check_curve(cfg)
    with _option_prefix("--", {"flops_convention": cfg.flops_convention}):
        check_convention(cfg.flops_convention)
    with _option_prefix("--data.", dict(cfg.data)):
        data = PretrainingDataModule(**dict(cfg.data))  # its checks: sizes, data files and their contents
    cfg = split_batch(cfg)  # the per-device batch and accumulation, from the global batch when one is given
    with _option_prefix("--model.init_args.", dict(cfg.model.init_args)):
        objective = meta_objective(cfg)  # the objective's own checks, on the meta device (no memory)
    objective.check_data(data)
    if cfg.ckpt_path:
        check_checkpoint_file(cfg.ckpt_path)
    return CheckedRun(cfg, step_flops(cfg, cfg.flops_convention, objective=objective), type(objective).__name__)


def prepare(config: Namespace | dict | list[str]) -> PreparedRun:
    """A run checked, its budget (``--budget``) resolved and its directory decided: what
    :func:`experiments.run.pretrain.pretrain` runs."""
    from experiments.run.budget import resolve_budget

    checked = check(config)
    cfg = checked.config
    budget = None if cfg.budget is None else resolve_budget(cfg.budget, cfg.flops_convention)
    return checked.prepare(budget)


def check_curve(cfg: Namespace) -> None:
    """One-line errors for ``--eval_every_flops`` / ``--eval_every_steps``: at most one, and positive."""
    flops, steps = cfg.get("eval_every_flops"), cfg.get("eval_every_steps")
    if flops is not None and steps is not None:
        raise UsageError("give --eval_every_flops or --eval_every_steps, not both")
    if flops is not None and not flops > 0:
        raise UsageError(f"--eval_every_flops must be a positive number of FLOPs (1e13), got {flops}")
    if steps is not None and steps < 1:
        raise UsageError(f"--eval_every_steps must be at least 1, got {steps}")


def check_strategy(cfg: Namespace) -> None:
    """One-line errors, before any compute, for a strategy this machine cannot run: DeepSpeed without the
    package, DeepSpeed or FSDP without CUDA (Lightning's DeepSpeed strategy runs on CUDA GPUs only, torch's
    FSDP needs an accelerator), or a launch that would run the job several times over
    (:func:`experiments.run.ranks.check_launch`)."""
    import importlib.util

    import torch

    from experiments.run.ranks import check_launch, strategy_name

    name = strategy_name(cfg.trainer.strategy)
    if "deepspeed" in name and importlib.util.find_spec("deepspeed") is None:
        raise UsageError(f"--trainer.strategy {name} needs DeepSpeed, which is not installed: pip install "
                         "'isoflop[deepspeed]' (on a machine with CUDA), or use --trainer.strategy ddp or fsdp")
    without_cuda = str(cfg.trainer.accelerator) == "cpu" or not torch.cuda.is_available()
    if "deepspeed" in name and without_cuda:
        raise UsageError(f"--trainer.strategy {name} needs CUDA devices (Lightning's DeepSpeed strategy runs on CUDA "
                         "GPUs only): use --trainer.strategy ddp here")
    if "fsdp" in name and without_cuda:
        raise UsageError(f"--trainer.strategy {name} needs CUDA devices (torch's FSDP does not run on CPUs): "
                         "use --trainer.strategy ddp here")
    check_launch(cfg.trainer, "pretrain")


@contextlib.contextmanager
def _option_prefix(prefix: str, names) -> Iterator[None]:
    """A constructor's ``ValueError("batch_size must be ...")`` as ``--data.batch_size must be ...`` (and one
    that quotes a setting's value, ``unknown size 'huge'``, prefixed with that setting's option)."""
    try:
        yield
    except ValueError as err:
        text = str(err)
        if text.split(" ", 1)[0] in names:
            raise UsageError(prefix + text) from None
        named = [k for k, v in names.items() if isinstance(v, str) and repr(v) in text]  # "unknown size 'huge'"
        if named:
            raise UsageError(f"{prefix}{named[0]}: {text}") from None
        raise
