"""Pre-training as a library call: ``pretrain(config) -> RunResult``.

:func:`experiments.config.parse` builds a configuration (from command-line arguments, a preset name or
a dict); :func:`pretrain` runs it. The command line, ``isoflop compare`` and ``isoflop sweep`` all go
through these two functions, so a comparison's runs are configured exactly as single runs are::

    from experiments.config import parse
    from experiments.run.pretrain import pretrain
    result = pretrain(parse(["--config", "tiny", "--model", "objectives.ReplacedTokenDetection"]))

Rerunning a configuration continues it: an unfinished run resumes from its last checkpoint, a finished
one returns its saved result (:mod:`experiments.run.rundir`). Every mistake in a configuration fails in
:func:`preflight`, before any data is built (:mod:`experiments.errors`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from experiments.run import rundir
from experiments.config import dump, objective_name, parse, parser
from experiments.errors import UsageError


@dataclass
class RunResult:
    """What a pre-training run did: where it is, how far it got, and its final validation metrics."""

    run_dir: Path
    objective: str
    finished: bool
    steps: int
    tokens: int
    flops: float
    budget: float | None
    checkpoint: Path | None
    val: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint or "") or None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        checkpoint = fields.get("checkpoint")
        return cls(**{**fields, "run_dir": Path(fields["run_dir"]),
                      "checkpoint": Path(checkpoint) if checkpoint else None})


def run_dir_of(config: Namespace) -> Path:
    """The run's directory: ``run_dir``, or ``runs/<objective>-<size>-<hash of the configuration>``, so that
    rerunning a command finds its run. Every rank of a run uses the first process's choice (ranks that
    Lightning launches inherit it through the ``ISOFLOP_RUN_DIR`` environment variable)."""
    if config.run_dir:
        return Path(config.run_dir)
    name = rundir.default_name(dump(config), objective_name(config))
    return Path(os.environ.setdefault("ISOFLOP_RUN_DIR", str(Path("runs") / name)))


def pretrain(config: Namespace | dict | list[str]) -> RunResult:
    """Pre-train one objective as ``config`` says (see :func:`experiments.config.parse`); return what the run did.

    Bad settings fail before any data is built or any step is taken (:func:`preflight`). A run whose
    directory holds ``checkpoints/last.ckpt`` resumes from it (exactly: :mod:`experiments.run.resume`); a
    finished one (``result.json``) returns its result without training. A signal stops training at the
    next step boundary with a checkpoint and raises :class:`~experiments.errors.Preempted`."""
    cfg = config if isinstance(config, Namespace) else parse(config)
    inherited = "ISOFLOP_RUN_DIR" in os.environ
    try:
        return _pretrain(cfg, run_dir_of(cfg))
    finally:
        if not inherited:  # the next run in this process picks its own directory
            os.environ.pop("ISOFLOP_RUN_DIR", None)


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


def preflight(cfg: Namespace) -> float | None:
    """Every check of a configuration that needs no data and no compute (``isoflop compare`` runs it on
    each of its runs before the first pre-training); returns the FLOPs budget, if any."""
    from datamodules.pretraining import PretrainingDataModule
    from experiments.run.budget import meta_objective, resolve_budget, step_flops
    from experiments.run.checkpoints import check_checkpoint_file
    from objectives.flops import check_convention

    if cfg.checkpoint_every < 1:
        raise UsageError(f"--checkpoint_every must be at least 1, got {cfg.checkpoint_every} "
                         "(to write no checkpoints: --trainer.enable_checkpointing false)")
    if cfg.skip_nonfinite < 0:
        raise UsageError(f"--skip_nonfinite must be 0 or more, got {cfg.skip_nonfinite}")
    check_strategy(cfg)
    with _option_prefix("--", {"flops_convention": cfg.flops_convention}):
        check_convention(cfg.flops_convention)
    with _option_prefix("--data.", dict(cfg.data)):
        data = PretrainingDataModule(**dict(cfg.data))  # its checks: sizes, data files and their contents
    with _option_prefix("--model.init_args.", dict(cfg.model.init_args)):
        objective = meta_objective(cfg)  # the objective's own checks, on the meta device (no memory)
    objective.check_data(data)
    if cfg.ckpt_path:
        check_checkpoint_file(cfg.ckpt_path)
    if cfg.flops_budget is None:
        return None
    budget = resolve_budget(cfg.flops_budget, cfg.flops_convention)
    one_step = step_flops(cfg, cfg.flops_convention, objective=objective)
    if budget < one_step:
        raise UsageError(
            f"--flops_budget {cfg.flops_budget} ({budget:.3e} FLOPs) is less than one training step of "
            f"{type(objective).__name__} ({one_step:.3e} FLOPs at a global batch of {rundir.global_batch(dump(cfg))} x "
            f"{cfg.data.max_seq_length} tokens, {cfg.flops_convention} convention): give at least {one_step:.3e}")
    return budget


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


def _pretrain(cfg: Namespace, run_dir: Path) -> RunResult:
    from experiments.run.callbacks import say
    from experiments.run.ranks import current

    budget = preflight(cfg)
    dumped = dump(cfg)
    world = current()  # the ranks of a comparison, when there are several: rank 0's view of the files decides
    plan = world.broadcast(rundir.plan(run_dir, dumped, cfg.ckpt_path, cfg.reschedule) if world.is_zero else None)
    if plan.finished is not None:
        result = RunResult.from_json(plan.finished)
        say(f"[pretrain] {run_dir} finished before ({result.steps} steps): nothing to do")
        return result
    if plan.checkpoint is not None:
        note = rundir.check_layout(run_dir, dumped)
        say(f"[pretrain] resuming from {plan.checkpoint}" + (f" ({note})" if note else ""))
    created, state = not run_dir.exists(), {}
    try:
        return _train(cfg, run_dir, budget, plan.checkpoint, dumped, state)
    except BaseException:
        trainer = state.get("trainer")
        if created and _first_process() and (trainer is None or trainer.global_step == 0) \
                and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was trained: leave no empty run behind
        raise


def _first_process() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _train(cfg: Namespace, run_dir: Path, budget: float | None, checkpoint: Path | None, dumped: dict,
           state: dict) -> RunResult:
    import lightning as L

    from experiments.run.loggers import finish_loggers

    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    init = parser().instantiate(cfg)
    model, data = init.model, init.data
    model.check_data(data)  # data/model mismatches fail here, before tokenisation or training
    trainer, counter, summary = _trainer(cfg, init.trainer, run_dir, budget)
    state["trainer"] = trainer
    if trainer.is_global_zero:
        rundir.write_run_info(run_dir, dumped)
    try:
        if checkpoint is None and trainer.limit_val_batches != 0:
            trainer.validate(model, datamodule=data, verbose=False)  # the untrained model, logged at step 0
        trainer.fit(model, datamodule=data, ckpt_path=str(checkpoint) if checkpoint else None)
        finished = trainer.state.status == "finished"
        last = _finish(trainer, model, data, summary) if finished else None
    finally:
        finish_loggers(trainer.loggers)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result = RunResult(run_dir=run_dir, objective=cfg.model.class_path, finished=finished, steps=trainer.global_step,
                       tokens=int(model.tokens_seen), flops=counter.total, budget=budget, checkpoint=last, val=val)
    if finished and trainer.is_global_zero:
        rundir.write_result(run_dir, result.to_json(), dumped)  # last: its presence means "finished"
    return result


def _trainer(cfg: Namespace, trainer_args: Namespace, run_dir: Path, budget: float | None):
    """The Lightning Trainer of a run, with isoflop's loggers, callbacks and atomic checkpoint writer."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import CheckpointIO

    from experiments.run.callbacks import DataFloors, FlopsBudget, NonFiniteGuard, Preemption, RunSummary, StepSeeds
    from experiments.run.checkpoints import AtomicCheckpointIO
    from experiments.run.loggers import make_loggers
    from experiments.run.ranks import strategy_name
    from experiments.run.resume import ResumeState, ScheduleKeeper
    from experiments.run.throughput import performance_callbacks

    kwargs = dict(trainer_args)
    if kwargs.get("logger") in (None, True):
        kwargs["logger"] = make_loggers(run_dir, "csv", wandb=cfg.wandb, group=cfg.wandb_group, append=True)
    if budget is not None:
        kwargs.update(max_steps=-1, max_epochs=-1)  # the budget decides when training ends
    if "deepspeed" in strategy_name(kwargs.get("strategy")) and kwargs.get("gradient_clip_val") is None:
        # DeepSpeed clips inside its engine, from the Trainer's setting; the objective's own clip is a no-op there.
        kwargs["gradient_clip_val"] = getattr(cfg.model.init_args, "max_grad_norm", 1.0)
    counter, summary = FlopsBudget(budget, cfg.flops_convention), RunSummary(cfg.flops_convention)
    checkpointing = kwargs.get("enable_checkpointing") is not False
    last = run_dir / "checkpoints" / "last.ckpt"
    # The counter and the resume state first, the preemption stop last: checkpoints hold this step's state. The
    # batch's seeds after the resume state, which may restore generator states first.
    callbacks = [counter, ResumeState(), StepSeeds(cfg.seed_everything), ScheduleKeeper(cfg.reschedule),
                 NonFiniteGuard(cfg.skip_nonfinite), summary, DataFloors(), *(kwargs.get("callbacks") or []),
                 Preemption(last if checkpointing else None)]
    callbacks[-1:-1] = performance_callbacks(cfg.peak_flops, cfg.compile)  # tokens/s, FLOP/s, MFU, memory; compile
    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # Checkpoints beside the logs, with last.ckpt always there to resume from.
        callbacks.append(ModelCheckpoint(dirpath=last.parent, save_last=True, every_n_train_steps=cfg.checkpoint_every))
    plugins = kwargs.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    # The data's sampler splits the data across ranks itself, resumably (datamodules.sampler).
    kwargs.update(callbacks=callbacks, plugins=plugins, default_root_dir=str(run_dir), use_distributed_sampler=False)
    trainer = Trainer(**kwargs)
    config = dump(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": config})  # the fully resolved configuration, as the run's config
    return trainer, counter, summary


def _finish(trainer, model, data, summary) -> Path | None:
    """After a finished fit: the final model in last.ckpt, and one validation at the very end (unless
    the fit's last step was validated already), so every run's last point is its final model."""
    checkpoint = None
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        checkpoint = Path(callback.dirpath) / "last.ckpt"
        trainer.save_checkpoint(checkpoint, weights_only=False)
    if trainer.limit_val_batches != 0 and summary.last_validation_step != trainer.global_step:
        trainer.validate(model, datamodule=data, verbose=False)
    return checkpoint
