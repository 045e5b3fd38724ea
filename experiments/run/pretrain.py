"""Pre-training as a library call: ``pretrain(run) -> RunResult``.

:func:`experiments.run.prepare.prepare` prepares a run once (configuration, checks, budget, run
directory); :func:`pretrain` trains it. The command line, ``isoflop compare`` and ``isoflop sweep`` all go
through these two functions, so a comparison's runs are configured exactly as single runs are::

    from experiments.run.pretrain import pretrain
    result = pretrain(["--config", "tiny", "--model", "objectives.ReplacedTokenDetection"])

Rerunning a configuration continues it: an unfinished run resumes from its last checkpoint, a finished
one returns its saved result (:mod:`experiments.run.rundir`). Every mistake in a configuration fails
while it is prepared, before any data is built (:mod:`experiments.errors`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from experiments.config import parser
from experiments.errors import process_rank
from experiments.run import rundir
from experiments.run.prepare import PreparedRun, prepare
from experiments.run.ranks import World


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
    machine: str = ""  # what the figures were computed on (throughput.describe_machine); "" in older results

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint or "") or None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        checkpoint = fields.get("checkpoint")
        return cls(**{**fields, "run_dir": Path(fields["run_dir"]),
                      "checkpoint": Path(checkpoint) if checkpoint else None})


def pretrain(run: PreparedRun | Namespace | dict | list[str], world: World | None = None) -> RunResult:
    """Pre-train one objective; return what the run did.

    ``run``: a prepared run (:func:`experiments.run.prepare.prepare`), or a configuration, prepared here.
    ``world``: the ranks of a comparison that started them for all its runs (:mod:`experiments.run.ranks`):
    rank 0's view of the run directory then decides for every rank, and a signal reaches the ranks it started.

    A run whose directory holds ``checkpoints/last.ckpt`` resumes from it (exactly: :mod:`experiments.run.resume`);
    a finished one (``result.json``) returns its result without training. A signal stops training at the
    next step boundary with a checkpoint and raises :class:`~experiments.errors.Preempted`."""
    from experiments.run.callbacks import say

    run = run if isinstance(run, PreparedRun) else prepare(run)
    world = world or World()
    plan = world.broadcast(run.plan)  # rank 0's view of the files decides (one rank: itself)
    if plan.finished is not None:
        result = RunResult.from_json(plan.finished)
        say(f"[pretrain] {run.run_dir} finished before ({result.steps} steps): nothing to do")
        return result
    if plan.checkpoint is not None:
        say(f"[pretrain] resuming from {plan.checkpoint}" + (f" ({run.layout_note})" if run.layout_note else ""))
    inherited = "ISOFLOP_RUN_DIR" in os.environ
    os.environ["ISOFLOP_RUN_DIR"] = str(run.run_dir)  # the ranks Lightning starts re-run the command: same directory
    created, state = not run.run_dir.exists(), {}
    try:
        return _train(run, plan.checkpoint, world, state)
    except BaseException:
        trainer = state.get("trainer")
        if created and not process_rank() and (trainer is None or trainer.global_step == 0) \
                and not (run.run_dir / "checkpoints").exists():
            shutil.rmtree(run.run_dir, ignore_errors=True)  # nothing was trained: leave no empty run behind
        raise
    finally:
        if not inherited:  # the next run in this process picks its own directory
            os.environ.pop("ISOFLOP_RUN_DIR", None)


def _train(run: PreparedRun, checkpoint: Path | None, world: World, state: dict) -> RunResult:
    import lightning as L

    from experiments.run.loggers import finish_loggers
    from experiments.run.throughput import describe_machine

    cfg, run_dir, budget = run.config, run.run_dir, run.budget
    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    init = parser().instantiate(cfg)
    model, data = init.model, init.data
    trainer, counter, summary = _trainer(run, init.trainer, world)
    state["trainer"] = trainer
    if trainer.is_global_zero:
        rundir.write_run_info(run_dir, run.dumped)
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
                       tokens=int(model.tokens_seen), flops=counter.total, budget=budget, checkpoint=last, val=val,
                       machine=describe_machine(model.device, trainer.world_size))
    if finished and trainer.is_global_zero:
        rundir.write_result(run_dir, result.to_json(), run.dumped)  # last: its presence means "finished"
    return result


def _trainer(run: PreparedRun, trainer_args: Namespace, world: World):
    """The Lightning Trainer of a run, with isoflop's loggers, callbacks and atomic checkpoint writer."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import CheckpointIO

    from experiments.run.callbacks import DataFloors, FlopsBudget, NonFiniteGuard, Preemption, RunSummary, StepSeeds
    from experiments.run.checkpoints import AtomicCheckpointIO
    from experiments.run.curve import CURVE_DIR, CurveCheckpoints
    from experiments.run.loggers import make_loggers, pretrain_tags
    from experiments.run.ranks import strategy_name, use_isoflop_watch
    from experiments.run.resume import ResumeState, ScheduleKeeper
    from experiments.run.throughput import performance_callbacks

    cfg, run_dir, budget = run.config, run.run_dir, run.budget
    kwargs = dict(trainer_args)
    if kwargs.get("logger") in (None, True):
        kwargs["logger"] = make_loggers(run_dir, "csv", wandb=cfg.wandb, group=cfg.wandb_group, append=True,
                                        project=cfg.wandb_project, entity=cfg.wandb_entity, job_type="pretrain",
                                        tags=pretrain_tags(cfg, budget), run_name=run_dir.name)
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
                 Preemption(last if checkpointing else None, world.procs)]
    callbacks[-1:-1] = performance_callbacks(cfg.peak_flops, cfg.compile, cfg.compile_mode)  # tokens/s, FLOP/s, MFU, memory; compile
    if cfg.get("eval_every_flops") is not None or cfg.get("eval_every_steps") is not None:  # --eval_every_*: a curve
        callbacks.insert(1, CurveCheckpoints(counter, run_dir / CURVE_DIR, cfg.eval_every_flops, cfg.eval_every_steps))
    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # Checkpoints beside the logs, with last.ckpt always there to resume from.
        callbacks.append(ModelCheckpoint(dirpath=last.parent, save_last=True, every_n_train_steps=cfg.checkpoint_every))
    plugins = kwargs.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    # The data's sampler splits the data across ranks itself, resumably (datamodules.sampler).
    kwargs.update(callbacks=callbacks, plugins=plugins, default_root_dir=str(run_dir), use_distributed_sampler=False)
    use_isoflop_watch()  # should fit start the other ranks: a rank that fails does not SIGKILL this one
    trainer = Trainer(**kwargs)
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": run.dumped})  # the fully resolved configuration, as the run's config
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
