"""Training callbacks shared by the commands."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn


class InitialValidation(Callback):
    """Validate once before the first step and log it at step 0, so every curve starts from the
    untrained model (Lightning's sanity check runs validation but logs nothing)."""

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step != 0 or not trainer.val_dataloaders:
            return
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        limit = trainer.limit_val_batches
        was_training = pl_module.training
        pl_module.eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        with torch.no_grad():
            for loader in loaders:
                n_batches = len(loader) if isinstance(limit, float) else min(len(loader), int(limit))
                if isinstance(limit, float):
                    n_batches = max(1, int(n_batches * limit))
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= n_batches:
                        break
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                    for k, v in pl_module.compute(batch, pl_module.validation_generator(batch_idx)).items():
                        sums[k] = sums.get(k, 0) + v.detach().float()
                    count += 1
        pl_module.train(was_training)
        if count:
            metrics = {f"val/{k}": trainer.strategy.reduce(v / count, reduce_op="mean").item() for k, v in sums.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=0)


class FlopsBudget(Callback):
    """Count training FLOPs over the global batch, log ``train/flops`` every step, and stop once a
    budget is reached (the last step overshoots by less than one step). On several ranks the count
    is each rank's batch shape x world size, and training stops after the steps the budget buys at
    full-length batches (packed data is full length), so all ranks stop together without a collective.

    The count is this callback's state, saved in every checkpoint, so a resumed run continues it. With a budget, the learning-rate schedule spans the steps the budget
    buys at full-length batches, so objectives of different step costs all finish their schedules.

    Args:
        budget: training FLOPs to stop at (``None``: count only).
        convention: ``actual`` (what the implementation multiplies) or ``paper`` (the ELECTRA paper's).
    """

    def __init__(self, budget: float | None = None, convention: str = "actual"):
        from objectives.flops import check_convention

        check_convention(convention)
        if budget is not None and budget <= 0:
            raise ValueError(f"the FLOPs budget must be positive, got {budget}")
        self.budget = budget
        self.convention = convention
        self.total = 0.0  # a Python float: counting and the stop test never sync with the device
        self._cost: dict[tuple, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(budget=self.budget, convention=self.convention)

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = float(state_dict["total"])

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.budget is None:
            return
        data = trainer.datamodule.hparams
        global_batch = data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        step = global_batch * pl_module.scheduled_flops_per_sequence(data.max_seq_length, self.convention)
        pl_module.scheduled_steps = max(1, math.ceil(self.budget / step))
        if trainer.max_steps != -1 and trainer.max_steps < pl_module.scheduled_steps:
            rank_zero_warn(f"max_steps {trainer.max_steps} ends training before the FLOPs budget "
                           f"({pl_module.scheduled_steps} steps): the budget will not be reached")

    def on_train_start(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # FLOPs as the x-axis of every curve
                logger.experiment.define_metric("train/flops")
                for prefix in ("train/*", "val/*"):
                    logger.experiment.define_metric(prefix, step_metric="train/flops")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        B, L = batch["input_ids"].shape  # shapes are host-side: no sync
        # Batch shapes repeat (packed data is full length): compute each shape's cost once. The key
        # holds the step's state, as two-stage objectives change cost between stages.
        key = (B, L, getattr(pl_module, "trains_generator", None), getattr(pl_module, "_stage", None))
        if key not in self._cost:
            self._cost[key] = pl_module.flops_per_batch(B, L, self.convention) * trainer.world_size
        self.total += self._cost[key]
        pl_module.log("train/flops", self.total, on_step=True, on_epoch=False, reduce_fx="max")
        if self.budget is None:
            return
        if trainer.world_size == 1:
            trainer.should_stop = self.total >= self.budget
        else:
            # Ranks may pad their batches to different lengths, so their counts can differ; the step
            # count the budget buys is the same everywhere, and stopping on it needs no collective.
            trainer.should_stop = trainer.global_step >= pl_module.scheduled_steps
