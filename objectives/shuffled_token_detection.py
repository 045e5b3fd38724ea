"""Shuffled-token detection (Panda et al. 2021, "Shuffled-token Detection for Refining Pre-trained
RoBERTa", NAACL Student Research Workshop).

A share of each sequence's tokens is permuted among their own positions, and a discriminator learns to
tell, for every token, whether it moved. The "replacements" come from the sequence itself, so the
objective needs no generator, and a token that lands on a copy of itself counts as original, as in
ELECTRA. The discriminator and its head are the encoder family's replaced-token-detection network
(``ElectraForPreTraining``, or DeBERTa's), so export is a plain ``save_pretrained``. (This file is the worked example of the documentation's "Adding an
objective" page.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from objectives.base import PretrainingObjective
from objectives.flops import disc_head_flops, encoder_flops, train_multiplier
from objectives.masking import MaskedPositions
from objectives.rtd import rtd_loss


class ShuffledTokenDetection(PretrainingObjective):
    """Detect which tokens were shuffled among themselves.

    Args:
        size: discriminator size preset: ``tiny``, ``small``, ``base`` or ``large``.
        **kwargs: the shared settings of :class:`objectives.base.PretrainingObjective`; ``mask_prob`` is the
            share of non-pad tokens that are shuffled, ``whole_word`` shuffles the pieces of whole words.
    """

    def __init__(self, size: str = "small", **kwargs):
        super().__init__(size=size, **kwargs)
        self.track_detection()

    def build_networks(self) -> None:
        self.discriminator = self.family.discriminator(self.encoder_config())

    def shuffle(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> tuple[MaskedPositions, Tensor]:
        """The chosen positions, and the input with their tokens permuted within each row: (B, L)."""
        original = batch["input_ids"]  # (B, L)
        masked = self.choose_positions(batch, rng)  # (B, K) slots, the valid ones first
        tokens = masked.gather(original)  # (B, K)
        # A random order of each row's valid slots; filler slots sort last and are never written back.
        keys = torch.rand(tokens.shape, device=tokens.device, generator=rng).masked_fill(~masked.valid, 2.0)
        return masked, masked.scatter(original, tokens.gather(1, keys.argsort(dim=1)))

    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        masked, shuffled = self.shuffle(batch, rng)
        replaced = shuffled != batch["input_ids"]  # (B, L): a token on a copy of itself is original
        logits = self.discriminator(
            input_ids=shuffled, attention_mask=self.attention_mask(batch), token_type_ids=batch["token_type_ids"]
        ).logits  # (B, L)
        loss, metrics = rtd_loss(logits, replaced, batch["attention_mask"], self.full_metrics)
        if self.full_metrics:
            metrics["replaced_frac"] = replaced.sum() / batch["attention_mask"].sum()
        return {"loss": loss, **metrics}

    def flops_per_batch(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        """The discriminator and its head on every token, forward and backward (shuffling is free)."""
        forward = encoder_flops(self.shape, self.vocab_size, seq_len, convention, batch_size) + batch_size * disc_head_flops(
            self.shape, seq_len, convention)
        return train_multiplier(convention) * forward

    def export(self, out_dir: str | Path) -> None:
        """``out_dir``: the discriminator (``ElectraForPreTraining`` or DeBERTa's) with its tokenizer."""
        self.discriminator.save_pretrained(out_dir)
        self.save_tokenizer(out_dir)
