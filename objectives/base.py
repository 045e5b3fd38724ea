"""What every pre-training objective shares: sizes, masking settings, optimiser, schedule, token
counting, tokenizer bookkeeping, FLOPs bookkeeping and checkpoint metadata. An objective's own logic
(its networks, losses, FLOPs sum and export) lives in its own file; this module holds none of it.
"""

from __future__ import annotations

import abc
import contextlib
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from objectives.encoder import EncoderShape, family, resolve_size
from objectives.flops import emd_flops, predicted_positions
from objectives.masking import MaskedPositions, check_mask_args, choose_positions, max_predictions
from objectives.optim import BIAS_FREE_MAX_BETA, adamw_with_schedule, check_schedule, parameter_groups


# compute() may return per-token detection outputs under this key, (scores, labels, mask) of shape (B, L):
# never logged as such; validation accumulates them into val/disc_auroc.
DETECTION = "detection"


class PretrainingObjective(L.LightningModule, abc.ABC):
    """Base class of the pre-training objectives (not an objective itself).

    Args:
        size: encoder size preset of the family: ``tiny``, ``small``, ``base``, ``large`` (ELECTRA paper,
            Table 6); DeBERTa also ``xsmall`` (DeBERTa-v3).
        encoder: encoder family: ``electra`` (absolute positions, the ELECTRA paper's) or ``deberta-v2``
            (disentangled relative-position attention, as DeBERTa-v3); see ``objectives.encoder``.
        vocab_size: vocabulary size; set from the data's ``vocab_size`` (they must agree).
        hidden_size: override the preset's hidden width.
        num_layers: override the preset's number of layers.
        num_heads: override the preset's number of attention heads.
        intermediate_size: override the preset's feed-forward width.
        embedding_size: override the preset's embedding width (ELECTRA-Small: 128 < hidden 256).
        max_position_embeddings: longest sequence the encoder accepts.
        dropout: hidden and attention dropout.
        enhanced_mask_decoder: DeBERTa masked LMs (MaskedLM, the generators, Replace/All-Tokens MLM) predict through
            DeBERTa's enhanced mask decoder (microsoft/DeBERTa ``masked_language_model.py``, ``EnhancedMaskDecoder``):
            the last layer run twice more with absolute positions in its queries (their only absolute positions;
            one layer pass more per step, see ``objectives.deberta``). False: transformers' plain
            ``DebertaV2ForMaskedLM``. Changes nothing for ELECTRA encoders (with absolute positions in the input the
            official decoder is the last layer itself), nor for MLMPlusRTD's head on the discriminator.
        mask_prob: share of non-pad tokens chosen for masking; ``None``: the paper's value for the size
            (0.15, or 0.25 at ELECTRA-Large).
        mask_style: ``bert`` (80% [MASK], 10% random, 10% kept), ``electra`` (85% [MASK], 15% kept) or
            ``deberta`` (100% [MASK], as DeBERTa-v3's generator input).
        whole_word: choose whole words (all their WordPiece pieces together) instead of single tokens.
        learning_rate: peak learning rate; ``None``: the paper's value for the family and size.
        weight_decay: AdamW weight decay, not applied to biases and LayerNorm weights.
        adam_betas: AdamW betas.
        adam_eps: AdamW epsilon.
        adam_bias_correction: Adam's bias correction (torch's AdamW); false: the update of the official
            BERT, ELECTRA and DeBERTa optimisers, which have none (``objectives.optim.AdamWeightDecay``;
            the ``bert-*``, ``electra-*`` and ``deberta-v3-*`` presets).
        warmup_fraction: share of training spent in linear warmup.
        lr_schedule: ``linear`` (warm-up from the first step, then linear decay from the peak to 0),
            ``electra`` (the official code's: linear decay from step 0 times the warm-up ramp) or ``deberta``
            (DeBERTa's ``warmup_linear``); see ``objectives.optim``.
        max_grad_norm: gradient-norm clipping (0 disables).
        seed: seed of the fixed validation masks (each validation batch is masked the same way every time).
    """

    def __init__(
        self,
        size: str = "small",
        encoder: str = "electra",
        vocab_size: int = 30522,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        intermediate_size: int | None = None,
        embedding_size: int | None = None,
        max_position_embeddings: int = 512,
        dropout: float = 0.1,
        enhanced_mask_decoder: bool = True,
        mask_prob: float | None = None,
        mask_style: str = "bert",
        whole_word: bool = False,
        learning_rate: float | None = None,
        weight_decay: float = 0.01,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-6,
        adam_bias_correction: bool = True,
        warmup_fraction: float = 0.01,
        lr_schedule: str = "linear",
        max_grad_norm: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs its whole resolved configuration instead
        self.family = family(encoder)
        self.shape: EncoderShape = resolve_size(encoder, size, hidden_size, num_layers, num_heads, intermediate_size,
                                                embedding_size)
        # Whether this objective's masked LMs are built with DeBERTa's enhanced mask decoder (FLOPs need no networks).
        self.uses_emd = enhanced_mask_decoder and self.family.enhanced_mask_decoder
        self.mask_prob = self.family.mask_prob[size] if mask_prob is None else mask_prob
        check_mask_args(self.mask_prob, mask_style)
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
        check_schedule(lr_schedule)
        if not adam_bias_correction and max(adam_betas) > BIAS_FREE_MAX_BETA:
            raise ValueError(f"adam_betas {tuple(adam_betas)} with adam_bias_correction false: betas above "
                             f"{BIAS_FREE_MAX_BETA} are not supported there")
        self.learning_rate = self.family.learning_rate[size] if learning_rate is None else learning_rate
        self.vocab_size = vocab_size
        self.mask_style = mask_style
        self.whole_word = whole_word
        # Set from the tokenizer (attach_tokenizer); buffers so they follow the module across devices
        # and into checkpoints.
        self.register_buffer("mask_token_id", torch.tensor(-1, dtype=torch.long))
        # Global count of training tokens (all ranks), kept in checkpoints so resume continues it.
        self.register_buffer("tokens_seen", torch.tensor(0, dtype=torch.long))
        self.scheduled_steps: int | None = None  # set from a FLOPs budget; else the trainer's steps
        self.tokenizer = None
        self._step_flops: dict[tuple, float] = {}
        self.disc_auroc = None  # objectives with a discriminator track its validation AUROC (track_detection)
        self._networks_built = False
        # This training step's losses and metrics (detached), for callbacks: the non-finite check reads
        # them every step; they are logged on the steps the loggers write (on_train_batch_end).
        self.step_metrics: dict[str, Tensor] = {}
        self._step_at_batch_start = 0  # trainer.global_step when this batch's training_step ran
        # Whether compute() works out the metrics beside the losses (accuracies, detection metrics: argmaxes and
        # reductions over the batch). Always in validation and outside a Trainer; in training only on the steps
        # whose row the loggers write (training_step): the other steps need the loss alone.
        self.full_metrics = True
        self._compiled_compute = None  # compile_step(): torch.compile of compute, the whole training computation
        self.step_grad_norm: Tensor | None = None  # this step's total gradient norm, when a callback took it

    # -- construction ----------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Build the networks, once. Lightning calls this under the strategy's initialisation context, so
        FSDP shards layers as they are built and large models can start on the meta device. Code that
        uses an objective without a Trainer (tests, benchmarks) calls it first; loading a checkpoint
        (``load_from_checkpoint``) calls it too. FLOPs need no networks.

        The initial weights are drawn on the CPU under every strategy, then moved: Lightning builds them
        on the GPU under one device or DDP (the GPU's random generator) but on the CPU under FSDP, so one
        seed would otherwise start FSDP runs from other weights than DDP runs, and GPU runs from other
        weights than CPU runs. A meta-device context (shapes only, no memory) is kept."""
        if not self._networks_built:
            meta = torch.get_default_device().type == "meta"
            with contextlib.nullcontext() if meta else torch.device("cpu"):
                self.build_networks()
            self._networks_built = True

    @abc.abstractmethod
    def build_networks(self) -> None:
        """Create the objective's networks (called once, by ``configure_model``)."""


    def encoder_config(self, shape: EncoderShape | None = None):
        """Hugging Face config of an encoder of ``shape`` (default: this objective's size) in its family."""
        hp = self.hparams
        return self.family.config(shape or self.shape, self.vocab_size, hp.max_position_embeddings, hp.dropout)

    def mlm_logits(self, model, hidden: Tensor) -> Tensor:
        """A masked-LM network's head applied to selected hidden states: (B, K, H) -> (B, K, V).

        Applying it to the K chosen positions only, not all L, avoids a (B, L, V) logits tensor: at
        ELECTRA-Small sizes that is most of the step's memory. The output matrix is read from the word
        embeddings (the tie made explicit), so it is right even when the table is computed (GDES).
        """
        transform, _, bias = self.family.mlm_head(model)
        words = model.base_model.embeddings.word_embeddings.weight  # (V, E)
        return F.linear(transform(hidden), words, bias)

    @staticmethod
    def attention_mask(batch: dict[str, Tensor]) -> Tensor | None:
        """The attention mask the encoders get for ``batch``: None when the batch is known, on the host, to hold no
        padding (``batch["padded"]`` False, set by ``datamodules.pretraining.collate``), so attention runs with no
        mask at all (SDPA may take its flash kernel; transformers builds no (B, 1, L, L) mask and checks nothing on
        the device); else the batch's mask. A mask of ones and no mask give the same outputs."""
        return None if batch.get("padded") is False else batch["attention_mask"]

    @staticmethod
    def encode(model, batch: dict[str, Tensor], input_ids: Tensor) -> Tensor:
        """The last hidden states (B, L, H) of a network's backbone on ``input_ids`` with the batch's masks."""
        return model.base_model(input_ids=input_ids, attention_mask=PretrainingObjective.attention_mask(batch),
                                token_type_ids=batch["token_type_ids"]).last_hidden_state

    @staticmethod
    def mlm_hidden(model, batch: dict[str, Tensor], input_ids: Tensor) -> Tensor:
        """The hidden states (B, L, H) a masked-LM network's head reads on ``input_ids``: the enhanced mask decoder's
        output for a network that has one (``objectives.deberta.DebertaV2ForMaskedLMWithEMD``), else :meth:`encode`'s
        last hidden states."""
        if not hasattr(model, "emd_hidden"):
            return PretrainingObjective.encode(model, batch, input_ids)
        return model.emd_hidden(input_ids, PretrainingObjective.attention_mask(batch), batch["token_type_ids"])

    # -- tokenizer and data checks -------------------------------------------------------------

    def _vocab_mismatch(self, n: int) -> ValueError:
        return ValueError(f"tokenizer vocabulary size {n} differs from the encoder's vocab_size {self.vocab_size}: "
                          f"set --data.vocab_size {n} (the model takes it from there)")

    def attach_tokenizer(self, tokenizer) -> None:
        """Take the special-token ids from the tokenizer, after checking it fits the encoder."""
        if len(tokenizer) != self.vocab_size:
            raise self._vocab_mismatch(len(tokenizer))
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no [MASK] token: masked-input objectives need one")
        self.mask_token_id.fill_(tokenizer.mask_token_id)
        self.tokenizer = tokenizer

    def check_data(self, datamodule) -> None:
        """Bad combinations of data and model, found before any compute is spent."""
        max_len = datamodule.hparams.max_seq_length
        limit = self.hparams.max_position_embeddings
        if max_len > limit:
            raise ValueError(
                f"max_seq_length {max_len} exceeds the encoder's position limit {limit}: lower the data's "
                f"max_seq_length or raise the model's max_position_embeddings"
            )
        if datamodule.tokenizer_vocab_size() != self.vocab_size:
            raise self._vocab_mismatch(datamodule.tokenizer_vocab_size())

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            self.check_data(datamodule)
            self.attach_tokenizer(datamodule.tokenizer)
        if int(self.mask_token_id) < 0:
            raise RuntimeError("no tokenizer attached: use a datamodule with a tokenizer or call attach_tokenizer()")

    # -- FLOPs -------------------------------------------------------------------------------------

    def decoder_flops(self, shape: EncoderShape, batch_size: int, seq_len: int, convention: str) -> float:
        """Forward FLOPs a masked LM of ``shape`` adds for DeBERTa's enhanced mask decoder (0 without it)."""
        return emd_flops(shape, seq_len, convention, batch_size) if self.uses_emd else 0.0

    def mlm_slots(self, seq_len: int, mask_prob: float | None = None) -> int:
        """The static number K of positions per row an MLM head runs on (``masking.max_predictions``)."""
        return max_predictions(seq_len, self.mask_prob if mask_prob is None else mask_prob, self.whole_word)

    def predicted_positions(self, seq_len: int, convention: str, mask_prob: float | None = None) -> float:
        """Positions per sequence an MLM head is charged for, in the named convention."""
        return predicted_positions(seq_len, convention, self.mlm_slots(seq_len, mask_prob))

    @abc.abstractmethod
    def flops_per_batch(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        """Training FLOPs (forward and backward) of one step on ``batch_size`` sequences of ``seq_len``
        tokens in the current phase, as the sum of the ``objectives.flops`` pieces the objective runs, in
        the named convention (``actual`` or ``paper``). (Per batch, not per sequence: relative-position
        encoders do some work once per forward pass, whatever the batch.)"""

    def scheduled_flops_per_batch(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        """Average training FLOPs per step over a whole run (what a FLOPs budget is divided by to find
        the run's length); differs from ``flops_per_batch`` for objectives whose step cost changes."""
        return self.flops_per_batch(batch_size, seq_len, convention)

    @property
    def phase(self) -> Hashable:
        """Which phase of training the objective is in; its step cost may change between phases (two-stage
        ELECTRA). A single-phase objective is always in phase 0."""
        return 0

    def step_flops(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        """Training FLOPs of the current step on a ``(batch_size, seq_len)`` batch: what the FLOPs counter
        asks every step. Computed once per batch shape and phase (packed batches repeat one shape)."""
        key = (batch_size, seq_len, convention, self.phase)
        if key not in self._step_flops:
            self._step_flops[key] = self.flops_per_batch(batch_size, seq_len, convention)
        return self._step_flops[key]

    # -- the step --------------------------------------------------------------------------------

    def choose_positions(self, batch: dict[str, Tensor], rng: torch.Generator | None = None) -> MaskedPositions:
        return choose_positions(
            batch["attention_mask"],
            batch["special_tokens_mask"],
            self.mask_prob,
            word_ids=batch["word_ids"] if self.whole_word else None,
            rng=rng,
        )

    @abc.abstractmethod
    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        """The objective's losses and metrics for one batch; ``loss`` is what is optimised. ``rng`` draws
        the masks and samples (``None``: the global RNG; validation passes a fixed one)."""

    def track_detection(self) -> None:
        """Log ``val/disc_auroc``, the discriminator's ranking quality (0.5: chance), from the per-token
        outputs ``compute`` returns under ``DETECTION`` (exact, from every scored token; torchmetrics
        gathers them across ranks)."""
        from torchmetrics.classification import BinaryAUROC

        self.disc_auroc = BinaryAUROC()

    def compile_step(self, **options) -> None:
        """Compile the whole training computation, :meth:`compute` (masking, generator, sampling, main network,
        losses; the backward through it, by AOTAutograd), as one graph: ``torch.compile(fullgraph=True)``, so a
        graph break is an error, not a slowdown. ``options`` go to ``torch.compile`` (``mode="reduce-overhead"``
        adds CUDA graphs: the step has no host sync and static shapes; ``backend``). Validation and fine-tuning
        stay eager. Training compiles one graph for the steps that log and one for those that do not
        (:attr:`full_metrics`), and one more for padded batches if there are any (``short_seq_prob`` > 0)."""
        self._compiled_compute = torch.compile(self.compute, fullgraph=True, **options)

    def logs_at(self, step: int) -> bool:
        """Whether the loggers will write the row of optimiser step ``step`` (1-based: the step this batch
        takes), as far as is known before it runs: every ``log_every_n_steps``, the last step of the schedule
        (``max_steps``, or a FLOPs budget's steps), and every step under ``fast_dev_run``. A stop nobody
        planned (a signal) writes its row with the losses only."""
        trainer = self.trainer
        if trainer.fast_dev_run:
            return True
        every = trainer.log_every_n_steps
        last = self.scheduled_steps if self.scheduled_steps is not None else trainer.max_steps
        return bool(every) and (step % every == 0 or step == last)

    def training_computation(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`compute` as training runs it: compiled when :meth:`compile_step` was called, with the
        global RNG, the metrics only where :attr:`full_metrics` says (the caller sets it)."""
        return (self._compiled_compute or self.compute)(batch, None)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.full_metrics = self.logs_at(self.global_step + 1)
        try:
            metrics = self.training_computation(batch)
        finally:
            self.full_metrics = True
        metrics.pop(DETECTION, None)
        tokens = batch["attention_mask"].sum()
        if _world_size(self) > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")  # count over the global batch
        self.tokens_seen += tokens
        self.step_metrics = {k: v.detach() for k, v in metrics.items()}
        self._step_at_batch_start = self.global_step  # before the optimiser step, which runs after this
        return metrics["loss"]

    def on_train_batch_end(self, outputs, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Log the step's metrics on the steps the loggers write (every ``log_every_n_steps``, and the
        step that stops training), not on the others: Lightning's ``self.log`` costs the host about
        0.75 ms a key (measured on a 2-core CPU), some 10 ms a step for a dozen keys, which a GPU
        step of ELECTRA-Small (tens of ms, launch-bound) would otherwise wait for. Runs after the
        callbacks' ``on_train_batch_end``, so a budget's stop is known. A micro-batch inside gradient
        accumulation logs nothing: the optimiser step counter has not moved since ``training_step``
        (recorded there: the step runs after it), and Lightning writes no row for it."""
        stepped = self.global_step != self._step_at_batch_start
        if not self.step_metrics or not logs_this_step(self.trainer, stepped):
            return
        self.log_dict({f"train/{k}": v for k, v in self.step_metrics.items()}, on_step=True, on_epoch=False,
                      batch_size=batch["input_ids"].shape[0])
        self.log("train/tokens", self.tokens_seen.double(), on_step=True, on_epoch=False, reduce_fx="max")

    def validation_rng(self, batch_idx: int) -> torch.Generator:
        """The same masks at every validation run, so validation curves compare across steps and runs."""
        return torch.Generator(device=self.device).manual_seed(self.hparams.seed * 100_003 + batch_idx)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        metrics = self.compute(batch, self.validation_rng(batch_idx))
        detection = metrics.pop(DETECTION, None)
        if detection is not None and self.disc_auroc is not None:
            scores, labels, mask = detection
            self.disc_auroc.update(scores[mask], labels[mask].long())  # validation only: a sync is fine here
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=batch["input_ids"].shape[0])

    def on_validation_epoch_end(self) -> None:
        if self.disc_auroc is not None and self.disc_auroc.update_called:
            self.log("val/disc_auroc", self.disc_auroc.compute())
            self.disc_auroc.reset()

    # -- optimisation ------------------------------------------------------------------------------

    def total_steps(self) -> int:
        """Optimiser steps the schedule spans: those a FLOPs budget buys when there is one, else the
        trainer's ``max_steps`` (or epochs x batches)."""
        if self.scheduled_steps is not None:
            return self.scheduled_steps
        return max(1, int(self.trainer.estimated_stepping_batches))

    def optimizer_groups(self) -> list[dict]:
        """The optimiser's parameter groups (``objectives.optim.parameter_groups``); objectives that give
        parts of their networks their own rates or clipping override it."""
        return parameter_groups(self.named_parameters(), self.hparams.weight_decay)

    def schedule_stages(self) -> list[int] | None:
        """Lengths of consecutive stages that each run the whole learning-rate schedule (None: one stage)."""
        return None

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_schedule(self.optimizer_groups(), self.learning_rate, hp.adam_betas, hp.adam_eps,
                                   self.total_steps(), hp.warmup_fraction, bias_correction=hp.adam_bias_correction,
                                   lr_schedule=hp.lr_schedule, stages=self.schedule_stages())

    def clipping_sets(self) -> list[list[Tensor]] | None:
        """Sets of parameters whose gradients are clipped each by its own global norm (decoupled generator and
        discriminator training); None: one norm over every parameter."""
        return None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient norm at ``max_grad_norm`` (ELECTRA's 1.0), or at the Trainer's
        ``gradient_clip_val`` when one is given. Under FSDP the norm must sum every rank's shard, which only
        the root FSDP module's ``clip_grad_norm_`` does (a plain ``clip_grad_norm_`` would clip each shard
        by its own norm, and Lightning's FSDP precision plugin refuses it), so it clips there."""
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.max_grad_norm
        if not clip:
            return
        algorithm = gradient_clip_algorithm or "norm"
        root = sharded_root(self.trainer.strategy)
        norm, self.step_grad_norm = self.step_grad_norm, None
        sets = self.clipping_sets()
        if sets is not None and algorithm == "norm":  # (objectives that have sets refuse FSDP at setup)
            for params in sets:  # each set by its own global norm (no host sync: torch clips with a clamp)
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)
        elif root is not None and algorithm == "norm":
            root.clip_grad_norm_(clip)
        elif norm is not None and algorithm == "norm":
            # The norm the non-finite check took of these very gradients (experiments.run.callbacks.NonFiniteGuard):
            # clipping with it computes no second norm. No GradScaler then (it would have to unscale first).
            torch.nn.utils.clip_grads_with_norm_([p for p in self.parameters() if p.grad is not None], clip, norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)

    # -- checkpoints and export -----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint is self-contained for export: the objective's class and its tokenizer's files.
        meta = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}"}
        if self.tokenizer is not None:
            with tempfile.TemporaryDirectory() as tmp:
                self.tokenizer.save_pretrained(tmp)
                meta["tokenizer_files"] = {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}
        checkpoint["isoflop"] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        files = checkpoint.get("isoflop", {}).get("tokenizer_files")
        if files:
            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / name).write_text(text)
                self.tokenizer = AutoTokenizer.from_pretrained(tmp)

    def save_tokenizer(self, out_dir: str | Path) -> None:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer to export: the checkpoint was saved without one")
        self.tokenizer.save_pretrained(out_dir)

    @abc.abstractmethod
    def export(self, out_dir: str | Path) -> None:
        """Write Hugging Face ``save_pretrained`` directories (model and tokenizer) to ``out_dir``."""


def logs_this_step(trainer, stepped: bool) -> bool:
    """Whether Lightning's loggers write this training batch's metrics, decided from the Trainer's public
    state in ``on_train_batch_end`` (the last hook before Lightning writes). ``stepped``: the batch ended
    with an optimiser step (``trainer.global_step`` moved during it), not inside gradient accumulation.

    Lightning writes a row after a batch that stepped, when the step just taken is a multiple of
    ``log_every_n_steps`` (0: never) or training stops after it (``trainer.should_stop``), and on every
    step under ``fast_dev_run``. It counts the steps as batches that stepped, a private counter
    incremented after the batch's hooks, so one behind ``global_step`` here: ``global_step`` is that
    count plus one. (Lightning restores its counter one up from a checkpoint saved at the end of a
    batch, as isoflop's are, so the two agree after a resume too.)
    """
    if not stepped:
        return False
    if trainer.fast_dev_run:
        return True
    every = trainer.log_every_n_steps
    return bool(every) and (trainer.global_step % every == 0 or bool(trainer.should_stop))


def _world_size(module: L.LightningModule) -> int:
    """The processes of the Trainer ``module`` is attached to, 1 when it is used without one (a benchmark)."""
    try:
        return module.trainer.world_size
    except RuntimeError:  # Lightning's "is not attached to a `Trainer`"
        return 1


def sharded_root(strategy) -> torch.nn.Module | None:
    """The root ``FullyShardedDataParallel`` module of an FSDP strategy (Lightning keeps it as
    ``strategy.model``), or None under any other strategy."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = getattr(strategy, "model", None)
    return model if isinstance(model, FullyShardedDataParallel) else None


def masked_lm_loss(logits: Tensor, labels: Tensor, accuracy: bool = True) -> tuple[Tensor, Tensor | None]:
    """Cross entropy and accuracy over labelled slots; ``labels`` is -100 where nothing is predicted.

    logits: (B, K, V); labels: (B, K). The loss is taken in float32 (bf16 logits lose precision in
    the log-sum-exp: under autocast ``cross_entropy`` runs in float32 whatever its input). No boolean indexing,
    so no host-device sync. ``accuracy`` False: no argmax over (B, K, V), and None for the accuracy.
    """
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    if not accuracy:
        return loss, None
    valid = labels != -100
    correct = (logits.argmax(-1) == labels) & valid
    acc = correct.sum() / valid.sum().clamp(min=1)
    return loss, acc


def with_metrics(metrics: dict[str, Tensor], **values: Tensor | None) -> dict[str, Tensor]:
    """``metrics`` with ``values`` added, leaving out those not computed this step (None)."""
    metrics.update({k: v for k, v in values.items() if v is not None})
    return metrics
