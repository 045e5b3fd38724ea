"""Training callbacks of ``isoflop pretrain``: the FLOPs counter and budget, the run's summary, the
stop at a step boundary on a preemption signal, and the guard against non-finite losses."""

from __future__ import annotations

import functools
import hashlib
import math
import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from experiments.errors import NonFiniteError, Preempted, RunError
from objectives.base import logs_this_step

# What stops training at a step boundary (SIGUSR1: SLURM's warning before the end of a job's time).
TRAINING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class FlopsBudget(Callback):
    """Count training FLOPs over the global batch, log ``train/flops`` every step, and stop once a
    budget is reached, after the optimiser step that reaches it (the last step overshoots by less than
    one step; a budget never stops a step half-accumulated).

    Every rank's training batches have one shape: ``PretrainingDataModule`` pads them to
    ``max_seq_length`` and drops incomplete ones. A step on ``N`` ranks therefore costs ``N`` times this
    rank's batch, on every rank the same number, so every rank holds the same exact global count and
    stops at the same step without asking the others (no collective). A batch of another shape on
    several ranks (a datamodule that pads to the longest example) would break that, and fails the run.

    The count is this callback's state, saved in every checkpoint, so a resumed run continues it. With
    a budget, the learning-rate schedule spans the steps the budget buys, so objectives of different
    step costs all finish their schedules.

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
        self._step_before = 0

    @property
    def state_key(self) -> str:
        return f"FlopsBudget{{'budget': {self.budget!r}, 'convention': {self.convention!r}}}"

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = float(state_dict["total"])

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.budget is None:
            return
        data = trainer.datamodule.hparams
        batches = trainer.world_size * trainer.accumulate_grad_batches  # per-rank batches in one optimiser step
        step = batches * pl_module.scheduled_flops_per_batch(data.batch_size, data.max_seq_length, self.convention)
        pl_module.scheduled_steps = max(1, math.ceil(self.budget / step))
        if trainer.max_steps != -1 and trainer.max_steps < pl_module.scheduled_steps:
            rank_zero_warn(f"max_steps {trainer.max_steps} ends training before the FLOPs budget "
                           f"({pl_module.scheduled_steps} steps): the budget will not be reached")

    def on_train_start(self, trainer, pl_module) -> None:
        if self.budget is not None and self.total >= self.budget:
            trainer.should_stop = True  # resumed from the run's last step: no step beyond the budget
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # FLOPs as the x-axis of every curve
                logger.experiment.define_metric("train/flops")
                for prefix in ("train/*", "val/*"):
                    logger.experiment.define_metric(prefix, step_metric="train/flops")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Each validation row carries the training FLOPs and tokens it was taken at (0 before training),
        # so curves against compute read one row, whatever step numbering the logger uses.
        # (The same on every rank; sync_dist costs one small all-reduce per validation, and spares a warning.)
        pl_module.log("train/flops", self.total, reduce_fx="max", sync_dist=True)
        pl_module.log("train/tokens", pl_module.tokens_seen.double(), reduce_fx="max", sync_dist=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        B, L = batch["input_ids"].shape  # shapes are host-side: no sync
        if trainer.world_size > 1:
            self._check_shape(trainer, B, L)
        self.total += pl_module.step_flops(B, L, self.convention) * trainer.world_size
        stepped = trainer.global_step != self._step_before  # not in the middle of an accumulation
        if self.budget is not None and stepped and self.total >= self.budget:
            trainer.should_stop = True
        if logs_this_step(trainer, stepped):  # the steps the loggers write (self.log costs the host time)
            pl_module.log("train/flops", self.total, on_step=True, on_epoch=False, reduce_fx="max")

    @staticmethod
    def _check_shape(trainer, B: int, L: int) -> None:
        data = getattr(trainer.datamodule, "hparams", {})
        expected = (data.get("batch_size"), data.get("max_seq_length"))
        if (B, L) != expected:
            raise RunError(f"a training batch of {B} x {L} tokens on rank {trainer.global_rank}, where every rank's "
                           f"are {expected[0]} x {expected[1]}: on several ranks the FLOPs count needs batches of "
                           "one shape (PretrainingDataModule pads them to max_seq_length)")


class StepSeeds(Callback):
    """Seed torch's random-number generators before every training batch from ``(seed, step, index)``,
    ``index`` being the batch's place in the optimiser step over all ranks (``micro-batch x world_size +
    rank``).

    The masks, the generator's samples and dropout of a batch are then a function of which batch of the
    run it is, not of the history of one process's generator. Together with the sampler's dealing of
    micro-batches (:class:`datamodules.sampler.ResumableSampler`), two ranks train exactly what one process
    trains with ``accumulate_grad_batches=2`` (to float rounding: the gradient sums differ in order); a
    resumed run needs no generator state to continue exactly; and validation, which draws from fixed
    generators of its own, changes nothing. Any ``torch.Generator`` the objective keeps as an attribute
    is seeded alike.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._step: int | None = None
        self._micro = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        self._micro = 0 if step != self._step else self._micro + 1
        self._step = step
        value = batch_seed(self.seed, step, self._micro * trainer.world_size + trainer.global_rank)
        torch.manual_seed(value)
        for generator in vars(pl_module).values():
            if isinstance(generator, torch.Generator):
                generator.manual_seed(value)


def batch_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for batch ``index`` of optimiser step ``step`` (a hash: nearby steps do not give
    nearby seeds)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RunSummary(Callback):
    """Print what the run is, before it starts: the objective, its networks' sizes, and its analytic
    training FLOPs per step (what the budget counts), in place of Lightning's layer table. Also
    remembers the step of the last validation, so the run's final validation is not repeated."""

    def __init__(self, convention: str = "actual"):
        self.convention = convention
        self.last_validation_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        data = trainer.datamodule.hparams
        batches = trainer.world_size * trainer.accumulate_grad_batches
        global_batch = data.batch_size * batches
        per_step = batches * pl_module.flops_per_batch(data.batch_size, data.max_seq_length, self.convention)
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
        warning = repeats_warning(trainer, pl_module, global_batch)
        if warning is not None:
            say(warning)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.last_validation_step = trainer.global_step


# More passes than this over the training data, and the run says so before its first step (a warning, not an error).
MAX_EPOCHS = 4


def repeats_warning(trainer, pl_module, global_batch: int) -> str | None:
    """One line when the run would read its training data more than :data:`MAX_EPOCHS` times: its steps (the
    budget's, or ``max_steps`` when fewer) x the global batch, over the training examples the data holds
    (:meth:`datamodules.pretraining.PretrainingDataModule.training_examples`, known once the data is built,
    before the first step). ``None`` otherwise, when streaming, and when either count is unknown."""
    data = trainer.datamodule
    examples = data.training_examples() if hasattr(data, "training_examples") else None
    steps = [s for s in (pl_module.scheduled_steps, trainer.max_steps) if s is not None and s > 0]
    if not examples or not steps:
        return None
    read = min(steps) * global_batch
    epochs = read / examples
    if epochs <= MAX_EPOCHS:
        return None
    source = data.describe_source() if hasattr(data, "describe_source") else type(data).__name__
    return (f"[pretrain] warning: this run reads its training data {epochs:.1f} times ({min(steps)} steps x "
            f"{global_batch} sequences = {read} examples, of {examples} in {source}); past {MAX_EPOCHS} passes, "
            "repeated examples teach less than new text: give a bigger corpus (--data.dataset, --data.data_files, "
            "or --data.streaming true) or a smaller --budget (or --trainer.max_steps)")


class Preemption(Callback):
    """On SIGTERM, SIGUSR1 or SIGINT, save ``last.ckpt`` at the next step boundary and stop.

    While training, this callback's handlers replace the process's: a signal is only recorded, and
    after the next optimiser step the checkpoint is written (everything the next step depends on, see
    :mod:`experiments.run.resume`) and training stops, before the following step, by raising
    :class:`~experiments.errors.Preempted`. (Lightning's own SIGTERM path would end the process with
    exit code 0 and no checkpoint, so a scheduler would not requeue it.) The stop comes after any
    validation due at that step, as in the uninterrupted run, so the resumed run logs the same rows.

    Several ranks: the signal may reach only some of them (Lightning forwards it to the ranks it
    started; a scheduler may signal just one), and all must stop at the same step. Every
    ``log_every_n_steps`` steps all ranks agree through one collective,
    ``strategy.reduce_boolean_decision`` (stop if any rank was signalled), called by every rank at the
    same steps; on one process the flag is read every step, with no collective. Under SLURM, Lightning's
    SIGUSR1 handler (save ``hpc_ckpt_*.ckpt`` and requeue the job) still runs: it is chained.

    Args:
        checkpoint: the file to save (the run's ``checkpoints/last.ckpt``); None: stop without saving.
        procs: processes this one started for a whole comparison (:class:`experiments.run.ranks.World`),
            which get the signal too; the ranks Lightning started for this fit always do.
    """

    def __init__(self, checkpoint: str | Path | None, procs: list | tuple = ()):
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.procs = list(procs)
        self.received: int | None = None
        self.saved_at: int | None = None  # the step saved; training stops before the next one
        self._launcher = None
        self._step_before = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._launcher = trainer.strategy.launcher
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in TRAINING_SIGNALS:
            previous = signal.getsignal(signum)
            chain = previous if signum == getattr(signal, "SIGUSR1", None) and callable(previous) \
                and not getattr(previous, "isoflop", False) else None
            signal.signal(signum, functools.partial(self._on_signal, chain))
        # Lightning restores the process's handlers when fit ends (its signal connector's teardown).

    def _on_signal(self, chain, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            # The ranks Lightning started (for this fit, or for the whole comparison): they stop at the same step.
            from experiments.private_api import launched_processes

            for proc in launched_processes(self._launcher) or self.procs:
                if proc.poll() is None:
                    proc.send_signal(signum)
        if chain is not None:
            chain(signum, frame)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.saved_at is not None:
            raise Preempted(self.received, self.saved_at, str(self.checkpoint) if self.checkpoint else None)
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_before or self.saved_at is not None:
            return  # inside gradient accumulation: not a step boundary
        if trainer.world_size == 1:
            stop = self.received is not None
        elif trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        else:
            return
        if stop:
            if self.received is None:  # another rank was signalled
                self.received = signal.SIGTERM
            if self.checkpoint is not None:
                trainer.save_checkpoint(self.checkpoint)
            self.saved_at = trainer.global_step
            say(f"[pretrain] {signal.Signals(self.received).name}: stopping after step {trainer.global_step}"
                + (f", saved {self.checkpoint}" if self.checkpoint else " (checkpointing is off: nothing saved)"))


class NonFiniteGuard(Callback):
    """Stop (or skip the update) when a loss or the gradient norm is NaN or infinite.

    The step's losses and the total gradient norm are checked in ``on_before_optimizer_step``, after the
    backward pass and before the weights change, so a bad step never reaches the weights nor a checkpoint.
    A non-finite step raises
    :class:`~experiments.errors.NonFiniteError` naming the step (1-based) and the components; the last good
    checkpoint stays as it was. With ``skip`` > 0 up to that many such steps are skipped instead (no update;
    the step still counts for the schedule, the FLOPs and the tokens), each logged as ``train/skipped_steps``
    and printed.

    Without a host-device sync in the steps that log nothing, where the optimiser allows it (torch's fused
    AdamW, isoflop's default, without fp16's GradScaler): every step decides on the device whether it is bad
    and, if so, the optimiser's kernel skips its update (``objectives.optim.skip_step_if``); the count of bad
    steps, the first one and its values stay on the device and are read back on the steps whose metrics are
    logged (``log_every_n_steps``), before every checkpoint is written and when training ends. So a run stops
    at most ``log_every_n_steps - 1`` steps after its first non-finite step (the stop names that step); in
    between, every non-finite step's update was skipped, so the weights, every checkpoint and the export are
    those of good steps only, and the run exits non-zero. With ``skip`` > 0 the limit is checked at the same
    reads (a run may take up to ``log_every_n_steps - 1`` skipped steps beyond it before it stops; none of them
    is applied). Elsewhere (fp16, another optimiser) the values are read back every step, as before.

    On several ranks all ranks decide alike: under DDP on the gradient norm, the same on every rank after the
    gradient all-reduce; under FSDP through an all-reduce of the flag (on the device), or, read back every
    step, through one collective.
    """

    def __init__(self, skip: int = 0):
        if skip < 0:
            raise ValueError(f"skip_nonfinite must be 0 or more, got {skip}")
        self.allowed = skip
        self.skipped = 0
        self._pending: dict | None = None  # on-device record of the bad steps since the last read
        self._trainer = None

    def state_dict(self) -> dict:
        if self._trainer is not None:
            self._read(self._trainer)  # a checkpoint is never written over an unread bad step
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from objectives.optim import skip_step_if, skips_on_device

        names, values = self._values(trainer, pl_module, optimizer)
        if not values:
            return
        checked = torch.stack([v.detach().float().reshape(()).to(pl_module.device) for v in values])
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None and skips_on_device(optimizer) and _on_device_decision(trainer.strategy):
            if names[-1] == "gradient norm" and hasattr(pl_module, "step_grad_norm"):
                pl_module.step_grad_norm = checked[-1]  # the objective clips with it (no second norm)
            bad = self._device_flag(trainer, names, checked)
            skip_step_if(optimizer, bad.float())
            if self._pending is not None and self._pending["names"] != names:
                self._read(trainer, log=True)  # the losses changed (two-stage ELECTRA's second stage): once
            self._remember(trainer.global_step + 1, names, checked, bad)
            logs_at = getattr(pl_module, "logs_at", None)
            if logs_at is None or logs_at(trainer.global_step + 1):
                self._read(trainer, log=True)
            return
        finite = torch.isfinite(checked).tolist()  # read back every step
        if self._decide(trainer, names, finite):
            self._bad_step(trainer, pl_module, optimizer, trainer.global_step + 1,
                           ", ".join(f"{n} = {v:g}" for n, v, ok in zip(names, checked.tolist(), finite) if not ok)
                           or "values on another rank", 1)

    def on_train_end(self, trainer, pl_module) -> None:
        self._read(trainer)

    @staticmethod
    def _values(trainer, pl_module, optimizer) -> tuple[list[str], list]:
        """This step's losses (``loss`` and its parts, ``*_loss``: computed every step, where the other metrics
        are computed on logged steps only) and, unless fp16's GradScaler tests the gradients itself, the total
        gradient norm."""
        logged = {f"train/{k}": v for k, v in getattr(pl_module, "step_metrics", {}).items()
                  if k == "loss" or k.endswith("_loss")}
        names, values = list(logged), list(logged.values())
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            names.append("gradient norm")
            values.append(torch.nn.utils.get_total_norm(grads))
        return names, values

    @staticmethod
    def _device_flag(trainer, names: list[str], checked: torch.Tensor) -> torch.Tensor:
        """Whether this step is bad, as a device tensor, the same on every rank (see the class docstring)."""
        if trainer.world_size > 1 and "gradient norm" in names and _replicated_gradients(trainer.strategy):
            return ~torch.isfinite(checked[-1])
        bad = ~torch.isfinite(checked).all()
        if trainer.world_size > 1:
            flag = bad.float()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag > 0
        return bad

    def _remember(self, step: int, names: list[str], checked: torch.Tensor, bad: torch.Tensor) -> None:
        """Count the bad step and, for the first one since the last read, keep its number and values: device
        tensors only (no read-back)."""
        pending = self._pending
        if pending is None:
            zero = torch.zeros((), dtype=torch.long, device=checked.device)
            pending = self._pending = {"names": names, "count": zero, "first": zero, "values": checked}
        newly = bad & (pending["count"] == 0)
        pending["first"] = torch.where(newly, step, pending["first"])
        pending["values"] = torch.where(newly, checked, pending["values"])
        pending["count"] = pending["count"] + bad.long()

    def _read(self, trainer, log: bool = False) -> None:
        """Read back the bad steps since the last read (one small transfer) and act on them."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        names = pending["names"]
        row = torch.cat([torch.stack([pending["count"], pending["first"]]).double(), pending["values"].double()]).tolist()
        count, first = int(row[0]), int(row[1])
        if count == 0:
            return
        what = ", ".join(f"{n} = {v:g}" for n, v in zip(names, row[2:]) if not math.isfinite(v)) or "values on another rank"
        if count > 1:
            what += f" (and {count - 1} more non-finite step(s) up to step {trainer.global_step + 1}, none applied)"
        self._bad_step(trainer, trainer.lightning_module if log else None, None, first, what, count)

    def _bad_step(self, trainer, pl_module, optimizer, step: int, what: str, count: int) -> None:
        """Skip (``optimizer`` given: drop its gradients now; None: already skipped on the device) or stop."""
        if self.skipped + count <= self.allowed:
            self.skipped += count
            if optimizer is not None:
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.grad = None  # the optimiser skips parameters without a gradient: no update at all
            if pl_module is not None:  # a hook where Lightning lets callbacks log
                pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False, reduce_fx="max")
            say(f"[pretrain] step {step}: non-finite {what}; update skipped ({self.skipped} of {self.allowed} allowed)")
            return
        raise NonFiniteError(f"non-finite {what} at step {step}: stopped; no non-finite update reached the weights"
                             f"{_kept(trainer)}; lower the learning rate, or pass --skip_nonfinite N to skip up "
                             "to N such steps")

    @staticmethod
    def _decide(trainer, names: list[str], finite: list[bool]) -> bool:
        """Whether this step is bad; on several ranks every rank must decide alike: on the gradient
        norm, the same on every rank after DDP's all-reduce, or, where the GradScaler owns the gradient
        test (fp16) or the gradients are sharded (FSDP, DeepSpeed), through one collective (then one per
        step)."""
        bad = not all(finite)
        if trainer.world_size == 1:
            return bad
        if "gradient norm" in names and _replicated_gradients(trainer.strategy):
            return not finite[-1]
        return trainer.strategy.reduce_boolean_decision(bad, all=False)


def _on_device_decision(strategy) -> bool:
    """Whether the strategy lets every rank decide on the device: one process, DDP (replicated gradients) or
    FSDP (an all-reduce of the flag); not DeepSpeed, whose engine steps its own optimiser."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return not isinstance(strategy, DeepSpeedStrategy)


def _replicated_gradients(strategy) -> bool:
    """Whether every rank holds the whole, all-reduced gradient (DDP), so its norm is the same everywhere;
    under FSDP (and DeepSpeed, which keeps gradients to itself) each rank sees only its own part."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    return isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy)


def _kept(trainer) -> str:
    callback = trainer.checkpoint_callback
    last = Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None
    if last is not None and last.is_file():
        return f"; the last good checkpoint, {last}, is kept"
    return "; no checkpoint had been written yet"


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


class DataFloors(Callback):
    """Log the data's reference levels next to the validation losses: ``val/unigram_entropy`` (what an
    MLM that ignores context scores; on text, estimated from the token frequencies), and on a synthetic
    source (``datamodules.synthetic``) ``val/bayes_mlm_loss`` (the best any model can score at the
    objective's masking rate). Computed once per run
    (:meth:`datamodules.pretraining.PretrainingDataModule.floors`)."""

    def __init__(self):
        self.floors: dict[str, float] | None = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        floors_of = getattr(trainer.datamodule, "floors", None)
        if floors_of is None:
            return
        if self.floors is None:
            self.floors = floors_of(pl_module.mask_prob)
        for name, value in self.floors.items():
            pl_module.log(f"val/{name}", value)
