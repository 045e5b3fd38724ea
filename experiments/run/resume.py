"""Exact resume: what a checkpoint must hold beyond Lightning's own state for the next step to be
the step the uninterrupted run would have taken, and the learning-rate schedule across resumes.

Lightning saves the weights, the optimiser, the scheduler's step and its loop counters. The next
step also depends on where the epoch's data order stands and on every random-number generator
(masks, generator sampling and dropout draw from them). :class:`ResumeState` keeps both; with it, a
run stopped at step k and resumed ends with weights bitwise equal to the uninterrupted run's on a CPU
(the test suite checks this). :class:`ScheduleKeeper` keeps the schedule a run was started with, and
changes it only when asked (``--reschedule``).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import Callback

from experiments.errors import UsageError


def _capture(pl_module) -> dict:
    """This process's RNG states as plain data (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    device = getattr(pl_module, "device", torch.device("cpu"))
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    # Any generator an objective keeps as an attribute (today training draws from the global RNG).
    generators = {name: g.get_state() for name, g in vars(pl_module).items() if isinstance(g, torch.Generator)}
    if generators:
        state["generators"] = generators
    return state


def _restore(pl_module, state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and pl_module.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], pl_module.device)
    for name, g_state in state.get("generators", {}).items():
        getattr(pl_module, name).set_state(g_state)


class ResumeState(Callback):
    """The data position within the epoch and every RNG state, in each checkpoint, one entry per rank.

    Data position: the number of batches of the current epoch trained on, counted here by the training
    loop (the sampler's own iteration runs ahead, by loader workers and prefetching); on resume the
    datamodule's sampler (``resume_at``) starts the epoch after them. RNG states: python, numpy, torch,
    CUDA and any ``torch.Generator`` the objective keeps; on several ranks every rank's states are
    gathered when a checkpoint is written (all ranks write checkpoints together) and each rank restores
    its own, right before the first resumed step, so that nothing drawn while restarting (creating
    loaders, say) shifts them. Validation runs in between steps without touching them: the states are
    put back after each validation, so how often a run validates never changes what it trains.
    """

    def __init__(self):
        self.epoch = 0
        self.consumed = 0  # batches of epoch `epoch` trained on (the same count on every rank)
        self._trainer = None
        self._pending: list[dict] | None = None  # RNG states to restore before the first resumed step
        self._before_validation: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            self.epoch, self.consumed = trainer.current_epoch, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is not None:
            states, self._pending = self._pending, None
            if len(states) == trainer.world_size:
                _restore(pl_module, states[trainer.global_rank])
            # On another number of ranks there is no state to give each: the training draws do not need one
            # (experiments.run.callbacks.StepSeeds seeds every batch from its step), the rest starts afresh.

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.consumed += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._before_validation = _capture(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._before_validation is not None:
            _restore(pl_module, self._before_validation)
            self._before_validation = None

    def state_dict(self) -> dict:
        trainer = self._trainer
        if trainer is None:
            return {}
        state = self._before_validation or _capture(trainer.lightning_module)
        states = [state]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)  # every rank saves: all reach this together
        data = trainer.datamodule.hparams if trainer.datamodule is not None else {}
        return {"epoch": self.epoch, "consumed": self.consumed, "batch_size": data.get("batch_size"),
                "world_size": trainer.world_size, "rng": states}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
            self._pending = state["rng"]

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Called as the checkpoint is restored, before the training loader is built: hand the position over.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        datamodule = trainer.datamodule
        if state and state.get("batch_size") and hasattr(datamodule, "resume_at"):
            position = int(state["consumed"]) * int(state["batch_size"]) * int(state["world_size"])
            datamodule.resume_at({"epoch": int(state["epoch"]), "position": position})


def _linear_to_zero(multiplier: float, start: int, end: int):
    """The learning-rate multiplier from ``multiplier`` at step ``start`` straight down to 0 at ``end``."""
    def schedule(step: int) -> float:
        return multiplier * max(0.0, (end - step) / (end - start))
    return schedule


class ScheduleKeeper(Callback):
    """The learning-rate schedule a run started with, kept across resumes.

    The schedule's length (the steps it spans: ``max_steps``, or what a FLOPs budget buys) is saved in
    every checkpoint. A resume whose configuration gives another length is refused with both values,
    unless ``reschedule``: then the remaining steps decay linearly from the learning rate at the resume
    point to 0 at the new end. That new shape is saved too, so later resumes keep it.
    """

    def __init__(self, reschedule: bool = False):
        self.reschedule = reschedule
        self.total: int | None = None
        self.anchor: dict | None = None  # {"step", "end", "multipliers"} after a reschedule
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        return {"total": self.total, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self._loaded = dict(state)

    def on_train_start(self, trainer, pl_module) -> None:
        if not hasattr(pl_module, "total_steps") or not trainer.lr_scheduler_configs:
            return
        total, loaded, self._loaded = pl_module.total_steps(), self._loaded, None
        anchor = (loaded or {}).get("anchor")
        if loaded and loaded.get("total") is not None and loaded["total"] != total:
            if not self.reschedule:
                raise UsageError(
                    f"the checkpoint's learning-rate schedule spans {loaded['total']} steps, this configuration's "
                    f"{total} (--trainer.max_steps or --budget changed): pass --reschedule true to decay the "
                    f"learning rate linearly from its value at step {trainer.global_step} to 0 at step {total}, "
                    "or keep the original length")
            anchor = self._anchor(trainer, total)
        self.total, self.anchor = total, anchor
        if anchor:
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            scheduler.lr_lambdas = [_linear_to_zero(m, anchor["step"], anchor["end"]) for m in anchor["multipliers"]]

    @staticmethod
    def _anchor(trainer, total: int) -> dict:
        step = trainer.global_step
        if total <= step:
            raise UsageError(f"cannot reschedule to {total} steps: the checkpoint is at step {step} already")
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        multipliers = [g["lr"] / base if base else 0.0 for g, base in zip(scheduler.optimizer.param_groups,
                                                                          scheduler.base_lrs)]
        if not any(multipliers):
            raise UsageError(f"cannot reschedule from step {step}: the learning rate there is 0 (the schedule had "
                             "ended), so every further step would train at 0")
        return {"step": step, "end": total, "multipliers": multipliers}
