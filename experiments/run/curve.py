"""Checkpoints along a run for a curve of downstream score against pre-training FLOPs (``--eval_every_flops``).

The ELECTRA paper judges its objectives not only at the end of pre-training but along it: GLUE score against
pre-training FLOPs (Figure 3, right; Figure 1 across runs). ``--eval_every_flops X`` (or ``--eval_every_steps N``)
saves the weights each time the run's training FLOPs pass a multiple of ``X`` (after the optimiser step that
passes it) and before the first step, as ``<run_dir>/checkpoints/curve/step-<N>.ckpt``, and records each point (step, FLOPs, tokens, file)
in ``points.json`` beside them. ``isoflop compare`` exports and fine-tunes every point
(:mod:`experiments.comparison.curves`); any checkpoint can also be exported and fine-tuned by hand.

The checkpoints hold the weights (and the hyper-parameters and tokenizer ``isoflop export`` needs), not the
optimiser's state: they are for evaluation, not for resuming. They are written through the run's checkpoint
writer (atomically), by every rank together (a sharded strategy gathers the shards), and the record by rank 0.
A resumed run writes the points after its resume point again, under the same names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightning.pytorch import Callback

from datamodules.cache import write_atomic

CURVE_DIR = Path("checkpoints") / "curve"
POINTS_FILE = "points.json"


class CurveCheckpoints(Callback):
    """Save the weights each time training FLOPs pass a multiple of ``every_flops`` (or the optimiser step count a
    multiple of ``every_steps``).

    Args:
        counter: the run's FLOPs counter (:class:`experiments.run.callbacks.FlopsBudget`), which runs before this
            callback in the Trainer's list, so its count includes the step just taken.
        dirpath: where the checkpoints and ``points.json`` go (``<run_dir>/checkpoints/curve``).
        every_flops: the FLOPs interval, or None.
        every_steps: the step interval, or None (one of the two is given).
    """

    def __init__(self, counter, dirpath: str | Path, every_flops: float | None = None,
                 every_steps: int | None = None):
        if (every_flops is None) == (every_steps is None):
            raise ValueError("give every_flops or every_steps, one of them")
        self.counter, self.dirpath = counter, Path(dirpath)
        self.every_flops, self.every_steps = every_flops, every_steps
        self._index = 0
        self._step_before = 0

    def _position(self, trainer) -> int:
        """How many intervals the run has passed (a Python number: no device sync)."""
        if self.every_steps is not None:
            return trainer.global_step // self.every_steps
        return math.floor(self.counter.total / self.every_flops)

    def on_train_start(self, trainer, pl_module) -> None:
        self._index = self._position(trainer)  # a resumed run: the points before its resume point are there
        if trainer.global_step == 0:
            self._save(trainer, pl_module)  # the curve's first point: the weights before any training

    def _save(self, trainer, pl_module) -> None:
        step = trainer.global_step
        path = self.dirpath / f"step-{step}.ckpt"
        trainer.save_checkpoint(path, weights_only=True)  # every rank: a sharded strategy gathers here
        if trainer.is_global_zero:
            # One read of the device's token count per point (a few per run), not per step.
            tokens = int(pl_module.tokens_seen.item())  # over the global batch already
            add_point(self.dirpath, {"step": step, "flops": self.counter.total, "tokens": tokens,
                                     "checkpoint": path.name})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_before:  # within an accumulation: no optimiser step yet
            return
        position = self._position(trainer)
        if position <= self._index:
            return
        self._index = position
        self._save(trainer, pl_module)


def add_point(dirpath: Path, point: dict) -> None:
    """Record a point in ``points.json`` (replacing an earlier record of the same step), atomically."""
    points = {p["step"]: p for p in read_points(dirpath)}
    points[point["step"]] = point
    write_atomic(dirpath / POINTS_FILE, json.dumps([points[s] for s in sorted(points)], indent=2) + "\n")


def read_points(dirpath: str | Path) -> list[dict]:
    """The points recorded in ``dirpath/points.json`` (by step), those whose checkpoint exists; [] if none."""
    dirpath = Path(dirpath)
    path = dirpath / POINTS_FILE
    if not path.exists():
        return []
    return [p for p in json.loads(path.read_text()) if (dirpath / p["checkpoint"]).exists()]


def run_points(run_dir: str | Path) -> list[dict]:
    """A run's curve points (``<run_dir>/checkpoints/curve``), by step."""
    return read_points(Path(run_dir) / CURVE_DIR)
