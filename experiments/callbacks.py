"""Training callbacks of ``isoflop pretrain``: the FLOPs counter and budget, and the run's summary."""

from __future__ import annotations

import math

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


class FlopsBudget(Callback):
    """Count training FLOPs over the global batch, log ``train/flops`` every step, and stop once a
    budget is reached (the last step overshoots by less than one step). On several ranks the count
    is each rank's batch shape x world size, and training stops after the steps the budget buys at
    full-length batches (packed data is full length), so all ranks stop together without a collective.

    The count is this callback's state, saved in every checkpoint, so a resumed run continues it. With
    a budget, the learning-rate schedule spans the steps the budget buys at full-length batches, so
    objectives of different step costs all finish their schedules.

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

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Each validation row carries the training FLOPs and tokens it was taken at (0 before training),
        # so curves against compute read one row, whatever step numbering the logger uses.
        pl_module.log("train/flops", self.total, reduce_fx="max")
        pl_module.log("train/tokens", pl_module.tokens_seen.double(), reduce_fx="max")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        B, L = batch["input_ids"].shape  # shapes are host-side: no sync
        self.total += pl_module.step_flops(B, L, self.convention) * trainer.world_size
        pl_module.log("train/flops", self.total, on_step=True, on_epoch=False, reduce_fx="max")
        if self.budget is None:
            return
        if trainer.world_size == 1:
            trainer.should_stop = self.total >= self.budget
        else:
            # Ranks may pad their batches to different lengths, so their counts can differ; the step
            # count the budget buys is the same everywhere, and stopping on it needs no collective.
            trainer.should_stop = trainer.global_step >= pl_module.scheduled_steps


class RunSummary(Callback):
    """Print what the run is, before it starts: the objective, its networks' sizes, and its analytic
    training FLOPs per step (what the budget counts), in place of Lightning's layer table. Also
    remembers the step of the last validation, so the run's final validation is not repeated."""

    def __init__(self, convention: str = "actual"):
        self.convention = convention
        self.last_validation_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        data = trainer.datamodule.hparams
        global_batch = data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        per_step = pl_module.flops_per_batch(global_batch, data.max_seq_length, self.convention)
        lines = [f"{type(pl_module).__name__}: {_millions(pl_module.parameters())} parameters"]
        for name, child in pl_module.named_children():
            lines.append(f"  {name}: {type(child).__name__}, {_millions(child.parameters())} parameters")
        lines.append(f"step: {global_batch} sequences x {data.max_seq_length} tokens, {per_step:.3e} training FLOPs "
                     f"({self.convention})")
        lines.append(f"device: {_device(pl_module)} x {trainer.world_size} process(es), precision "
                     f"{trainer.precision}, strategy {type(trainer.strategy).__name__}")
        if pl_module.scheduled_steps is not None:
            lines.append(f"budget: {pl_module.scheduled_steps} steps")
        say("\n".join(lines))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.last_validation_step = trainer.global_step


@rank_zero_only
def say(text: str) -> None:
    """Print on the first process only (what the user needs to see, once)."""
    print(text, flush=True)


def _device(pl_module) -> str:
    import torch

    device = pl_module.device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _millions(parameters) -> str:
    unique = {id(p): p.numel() for p in parameters}  # tied weights count once
    return f"{sum(unique.values()) / 1e6:.2f}M"
