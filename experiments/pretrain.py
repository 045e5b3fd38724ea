"""Pre-training as a library call: ``pretrain(config) -> RunResult``.

:func:`experiments.config.parse` builds a configuration (from command-line arguments, a preset name or
a dict); :func:`pretrain` runs it. The command line, ``isoflop compare`` and ``isoflop sweep`` all go
through these two functions, so a comparison's runs are configured exactly as single runs are::

    from experiments.config import parse
    from experiments.pretrain import pretrain
    result = pretrain(parse(["--config", "tiny", "--model", "objectives.ReplacedTokenDetection"]))
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from experiments.config import dump, objective_name, parse, parser


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


def run_dir_of(config: Namespace) -> Path:
    """The run's directory: ``run_dir``, or ``runs/<objective>-<size>-<time>``. Every rank of a run
    uses the first process's choice (ranks that Lightning launches inherit it through the environment)."""
    if config.run_dir:
        return Path(config.run_dir)
    size = config.model.init_args.get("size", "")
    name = f"{objective_name(config).lower()}-{size}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(os.environ.setdefault("ISOFLOP_RUN_DIR", str(Path("runs") / name)))


def pretrain(config: Namespace | dict | list[str]) -> RunResult:
    """Pre-train one objective as ``config`` says (see :func:`experiments.config.parse`); return what the run did.

    Bad combinations of settings fail before any data is built or any step is taken. A run whose
    ``run_dir`` holds a checkpoint is resumed only when ``ckpt_path`` says so."""

    cfg = config if isinstance(config, Namespace) else parse(config)
    inherited = "ISOFLOP_RUN_DIR" in os.environ
    try:
        return _pretrain(cfg, run_dir_of(cfg))
    finally:
        if not inherited:  # the next run in this process picks its own directory
            os.environ.pop("ISOFLOP_RUN_DIR", None)


def _pretrain(cfg: Namespace, run_dir: Path) -> RunResult:
    import lightning as L

    from experiments.budget import resolve_budget
    from experiments.loggers import finish_loggers

    budget = resolve_budget(cfg.flops_budget, cfg.flops_convention) if cfg.flops_budget is not None else None
    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    init = parser().instantiate(cfg)
    model, data = init.model, init.data
    model.check_data(data)  # data/model mismatches fail here, before tokenisation or training
    trainer, counter, summary = _trainer(cfg, init.trainer, run_dir, budget)
    try:
        if cfg.ckpt_path is None and trainer.limit_val_batches != 0:
            trainer.validate(model, datamodule=data, verbose=False)  # the untrained model, logged at step 0
        trainer.fit(model, datamodule=data, ckpt_path=cfg.ckpt_path)
        finished = trainer.state.status == "finished"
        checkpoint = _finish(trainer, model, data, summary) if finished else None
    finally:
        finish_loggers(trainer.loggers)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return RunResult(run_dir=run_dir, objective=cfg.model.class_path, finished=finished, steps=trainer.global_step,
                     tokens=int(model.tokens_seen), flops=counter.total, budget=budget, checkpoint=checkpoint, val=val)


def _trainer(cfg: Namespace, trainer_args: Namespace, run_dir: Path, budget: float | None):
    """The Lightning Trainer of a run, with isoflop's loggers and callbacks."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from experiments.callbacks import FlopsBudget, RunSummary
    from experiments.loggers import make_loggers

    kwargs = dict(trainer_args)
    if kwargs.get("logger") in (None, True):
        kwargs["logger"] = make_loggers(run_dir, "csv", wandb=cfg.wandb, group=cfg.wandb_group)
    if budget is not None:
        kwargs.update(max_steps=-1, max_epochs=-1)  # the budget decides when training ends
    counter, summary = FlopsBudget(budget, cfg.flops_convention), RunSummary(cfg.flops_convention)
    callbacks = [counter, summary, *(kwargs.get("callbacks") or [])]  # the counter first: checkpoints hold its count
    if kwargs.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # Checkpoints beside the logs, with last.ckpt always there to resume from.
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                         every_n_train_steps=cfg.checkpoint_every))
    kwargs.update(callbacks=callbacks, default_root_dir=str(run_dir))
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
