"""ELECTRA: replaced token detection (Clark et al., ICLR 2020, arXiv 2003.10555).

A small generator (an MLM) fills the masked positions with plausible samples; the discriminator,
the network kept for downstream tasks, classifies every token of the corrupted input as original
or replaced. Total loss = gen_weight x generator MLM loss + disc_weight x discriminator loss
(1 and 50 in the paper). Corruption (steps 1-6) lives in ``objectives/generator.py``; the
discriminator's loss and the two-stage option are here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from objectives.base import DETECTION
from objectives.flops import disc_head_flops, encoder_flops, train_multiplier
from objectives.generator import Corruption, GeneratorObjective


def rtd_loss(logits: Tensor, replaced: Tensor, weights: Tensor, full: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """Sigmoid cross entropy of "replaced" over the weighted tokens, with the metrics that say whether
    the discriminator learned more than its label prior.

    logits: (B, L) discriminator logits; replaced: (B, L) bool labels; weights: (B, L) 0/1 (which
    tokens count: all non-pad tokens for ELECTRA). Float32, no boolean indexing (no host sync).

    Metrics: ``disc_loss``; ``disc_acc``, ``disc_precision``, ``disc_recall``; ``disc_gain``, the
    accuracy over the all-original baseline (``1 -`` the replaced share of the scored tokens: what
    answering "original" everywhere scores); ``disc_label_entropy``, the binary entropy of that share
    (what ``disc_loss`` is when only the prior is learned); and, under ``DETECTION``, the per-token
    scores and labels that validation turns into an AUROC. ``full`` False: ``disc_loss`` alone (a training
    step that logs nothing).
    """
    weights = weights.float()
    target = replaced.float()
    per_token = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    n = weights.sum().clamp(min=1)
    loss = (per_token * weights).sum() / n
    if not full:
        return loss, {"disc_loss": loss}
    said = logits > 0  # "replaced"
    predicted = said.float() * weights
    true_pos = (predicted * target).sum()
    positives = (target * weights).sum()
    share = (positives / n).clamp(1e-7, 1 - 1e-7)  # replaced share of the scored tokens
    acc = ((said == replaced).float() * weights).sum() / n
    metrics = {
        "disc_loss": loss,
        "disc_acc": acc,
        "disc_precision": true_pos / predicted.sum().clamp(min=1),
        "disc_recall": true_pos / positives.clamp(min=1),
        "disc_gain": acc - (1 - share),
        "disc_label_entropy": -(share * share.log() + (1 - share) * (1 - share).log()),
        DETECTION: (logits.detach().float(), replaced, weights.bool()),
    }
    return loss, metrics


class ReplacedTokenDetection(GeneratorObjective):
    """ELECTRA (replaced token detection).

    Args:
        size: discriminator size preset: ``tiny``, ``small``, ``base`` or ``large``.
        mask_style: ``electra`` (85% [MASK], 15% kept; the paper's) or ``bert`` (80/10/10).
        disc_weight: weight of the discriminator loss (the paper's lambda = 50; DeBERTa-v3 uses 10).
        two_stage: train the generator alone first, then initialise the discriminator from it and
            train the discriminator with the generator frozen (paper section 3.2; needs equal sizes). The
            generator is frozen whole, embeddings included, so the two networks share no weights: the
            discriminator's encoder, embeddings included, starts as a copy of the generator's (``none`` and
            ``embeddings`` sharing give the same run). Each stage runs the whole learning-rate schedule
            (its own warm-up and decay).
        two_stage_fraction: share of training steps spent in the generator-only stage.
        decoupled_training: optimise the generator and the discriminator as two optimisers would
            (DeBERTa-v3's ``--decoupled_training``, official ``DeBERTa/apps/tasks/rtd_task.py``): each
            network's gradients clipped by their own global norm (the shared embeddings go with the
            generator), so the discriminator's large gradients no longer shrink the generator's update.
            False: ELECTRA's one joint loss with one clipping norm (official ``run_pretraining.py``).
        **kwargs: generator settings of :class:`objectives.generator.GeneratorObjective`
            (generator_hidden_fraction, embedding_sharing, temperature, disallow_correct, ...) and the
            shared settings of :class:`objectives.base.PretrainingObjective`.
    """

    def __init__(
        self,
        size: str = "small",
        mask_style: str = "electra",
        disc_weight: float = 50.0,
        two_stage: bool = False,
        two_stage_fraction: float = 0.5,
        decoupled_training: bool = False,
        **kwargs,
    ):
        super().__init__(size=size, mask_style=mask_style, **kwargs)
        self.track_detection()
        if decoupled_training and (self.uniform_generator or self.embedding_sharing == "all"):
            why = "uniform_generator has no generator" if self.uniform_generator else \
                "embedding_sharing 'all' makes them one network"
            raise ValueError(f"decoupled_training optimises the generator apart from the discriminator, and {why}: "
                             "drop one of the two")
        if two_stage:
            if self.uniform_generator or self.generator_shape != self.shape:
                raise ValueError(
                    "two_stage initialises the discriminator from the generator, so they must have the same size: "
                    "set generator_hidden_fraction and generator_layers_fraction to 1 (and uniform_generator false)"
                )
            if self.embedding_sharing not in ("none", "embeddings"):
                raise ValueError(
                    f"two_stage copies the generator into the discriminator, which embedding_sharing "
                    f"{self.embedding_sharing!r} does not allow: use 'none' or 'embeddings'"
                )
            if not 0.0 < two_stage_fraction < 1.0:
                raise ValueError(f"two_stage_fraction must lie in (0, 1), got {two_stage_fraction}")
        # 1: generator only (two-stage), 2: the discriminator stage (always 2 without two_stage).
        # A buffer so a resumed run knows which stage it is in; mirrored in a Python int so the
        # training step never reads a device value.
        self._clipping_sets: list[list[Tensor]] | None = None  # decoupled_training's, once the networks exist
        self.register_buffer("stage", torch.tensor(1 if two_stage else 2))
        self._stage = 1 if two_stage else 2

    def share_embeddings(self, main: PreTrainedModel) -> None:
        """As :meth:`GeneratorObjective.share_embeddings`, except under two-stage training, where nothing is
        shared (the generator is frozen whole in stage 2 while the discriminator trains; stage 2 copies the
        generator's encoder, embeddings included, into the discriminator instead)."""
        if self.hparams.two_stage:
            self.tie_output_embeddings()
            return
        super().share_embeddings(main)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.decoupled_training and "fsdp" in type(self.trainer.strategy).__name__.lower():
            raise ValueError("decoupled_training clips the generator's and the discriminator's gradients each by its "
                             "own norm, which FSDP's sharded clipping cannot do: use --trainer.strategy ddp")

    def build_main(self) -> PreTrainedModel:
        self.discriminator = self.family.discriminator(self.encoder_config())
        return self.discriminator

    @property
    def main_network(self) -> PreTrainedModel:
        return self.discriminator

    def disc_loss_mask(self, batch: dict[str, Tensor], corruption: Corruption) -> Tensor:
        """(B, L): which tokens the discriminator loss covers: all non-pad tokens ([CLS] and [SEP] included)."""
        return batch["attention_mask"]

    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        corruption, metrics = self.corrupt(batch, rng)
        if self._stage == 1:
            metrics["loss"] = self.generator_loss(metrics)
            return metrics
        logits = self.discriminator(
            input_ids=corruption.corrupted, attention_mask=self.attention_mask(batch), token_type_ids=batch["token_type_ids"]
        ).logits  # (B, L)
        disc_loss, disc_metrics = rtd_loss(logits, corruption.replaced, self.disc_loss_mask(batch, corruption),
                                           self.full_metrics)
        metrics.update(disc_metrics)
        metrics["loss"] = self.hparams.disc_weight * disc_loss + self.generator_loss(metrics)
        return metrics

    def scheduled_flops_per_batch(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        if not self.hparams.two_stage:
            return self.flops_per_batch(batch_size, seq_len, convention)
        f = self.hparams.two_stage_fraction  # share of steps in the generator-only stage
        first = self.generator_flops(batch_size, seq_len, convention, trained=True)
        second = self.generator_flops(batch_size, seq_len, convention, trained=False) + self.discriminator_flops(
            batch_size, seq_len, convention)
        return f * first + (1 - f) * second

    def discriminator_flops(self, batch_size: int, seq_len: int, convention: str) -> float:
        """The discriminator and its head on every token, forward and backward."""
        forward = encoder_flops(self.shape, self.vocab_size, seq_len, convention, batch_size) + batch_size * disc_head_flops(
            self.shape, seq_len, convention)
        return train_multiplier(convention) * forward

    def main_flops(self, batch_size: int, seq_len: int, convention: str) -> float:
        if self._stage == 1:  # two-stage, first stage: the discriminator does not run
            return 0.0
        return self.discriminator_flops(batch_size, seq_len, convention)

    @property
    def phase(self) -> int:
        """The stage: 1 is the generator-only stage of two-stage training, 2 the discriminator stage (always 2 without two-stage)."""
        return self._stage

    @property
    def trains_generator(self) -> bool:
        # Two-stage training freezes the generator in its second stage: it then only samples.
        return not self.uniform_generator and not (self.hparams.two_stage and self._stage == 2)

    # -- two-stage training ------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._stage = int(self.stage)
        if self.hparams.two_stage and self._stage == 2:
            self.freeze_generator()  # resumed in the second stage: the freeze is not in the checkpoint

    def on_load_checkpoint(self, checkpoint) -> None:
        super().on_load_checkpoint(checkpoint)
        self._stage = int(checkpoint["state_dict"].get("stage", torch.tensor(self._stage)))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._stage == 1 and self.global_step >= self.stage_one_steps():
            self.start_discriminator_stage()

    def stage_one_steps(self) -> int:
        """Optimiser steps of the generator-only stage of two-stage training."""
        return int(self.hparams.two_stage_fraction * self.total_steps())

    def schedule_stages(self) -> list[int] | None:
        """Two-stage training runs the learning-rate schedule once per stage (each its own warm-up and decay), as
        the paper's two trainings of n steps each (section 3.2)."""
        if not self.hparams.two_stage:
            return None
        first = self.stage_one_steps()
        return [first, self.total_steps() - first]

    def start_discriminator_stage(self) -> None:
        """Initialise the discriminator's encoder (embeddings included) from the generator's and freeze the generator.
        The discriminator's parameters have had no gradient yet, so their Adam state starts here."""
        # Everything but the generator's own absolute-position table (its enhanced mask decoder's, DeBERTa), which
        # the discriminator has no use for: it adds no absolute position to its input.
        loaded = self.discriminator.base_model.load_state_dict(self.generator.base_model.state_dict(), strict=False)
        left = [k for k in loaded.unexpected_keys if not (self.uses_emd and k == "embeddings.position_embeddings.weight")]
        if loaded.missing_keys or left:
            raise RuntimeError(f"two-stage training cannot copy the generator into the discriminator: missing "
                               f"{loaded.missing_keys}, unexpected {left}")
        self.freeze_generator()
        self.stage.fill_(2)
        self._stage = 2

    def freeze_generator(self) -> None:
        """No more updates to any generator parameter (two-stage shares none with the discriminator). Their
        gradients stay None, so AdamW skips them: no decay, no momentum."""
        self.generator.requires_grad_(False)

    # -- decoupled training ------------------------------------------------------------------------

    def clipping_sets(self) -> list[list[Tensor]] | None:
        """Under ``decoupled_training``: the generator's parameters (shared ones included) and all the others,
        each clipped by its own global norm. Worked out once (the networks do not change during training);
        parameters without a gradient are left out at clipping."""
        if not self.hparams.decoupled_training:
            return None
        if self._clipping_sets is None:
            own = list(self.generator.parameters())
            generator = {id(p) for p in own}
            self._clipping_sets = [own, [p for p in self.parameters() if id(p) not in generator]]
        return self._clipping_sets
