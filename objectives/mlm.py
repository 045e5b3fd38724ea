"""BERT's masked language modelling (Devlin et al. 2019), the baseline of the ELECTRA paper.

Choose positions, corrupt them (80% [MASK], 10% random, 10% kept), and predict the original token
at the chosen positions only. The encoder and head are the family's Hugging Face masked LM
(``ElectraForMaskedLM``: hidden -> dense(embedding) -> GELU -> LayerNorm -> output matrix tied to the
word embeddings, the same architecture as the paper's BERT baseline; or ``DebertaV2ForMaskedLM``, by default
with DeBERTa's enhanced mask decoder: :class:`objectives.deberta.DebertaV2ForMaskedLMWithEMD`), so export is a
plain ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from objectives.base import PretrainingObjective, masked_lm_loss, with_metrics
from objectives.flops import encoder_flops, mlm_head_flops, train_multiplier
from objectives.masking import MaskedPositions, apply_mask


class MaskedLM(PretrainingObjective):
    """Masked language modelling (BERT).

    Args:
        size: encoder size preset: ``tiny``, ``small``, ``base`` or ``large`` (DeBERTa also ``xsmall``).
        mask_style: ``bert`` (80/10/10, the paper's BERT baseline), ``electra`` (85/15/0) or ``deberta`` (all [MASK]).
        **kwargs: the shared settings of :class:`objectives.base.PretrainingObjective`
            (encoder, vocab_size, mask_prob, whole_word, learning_rate, warmup_fraction, ...).
    """

    def __init__(self, size: str = "small", mask_style: str = "bert", **kwargs):
        super().__init__(size=size, mask_style=mask_style, **kwargs)

    def build_networks(self) -> None:
        self.model = self.family.masked_lm(self.encoder_config(), enhanced_mask_decoder=self.uses_emd)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor,
                masked: MaskedPositions) -> Tensor:
        """MLM logits at the chosen positions: (B, K, V) (through the enhanced mask decoder if the network has one)."""
        batch = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}  # attention_mask: None or (B, L)
        hidden = self.mlm_hidden(self.model, batch, input_ids)  # (B, L, H)
        return self.mlm_logits(self.model, masked.gather(hidden))

    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        original = batch["input_ids"]  # (B, L)
        masked = self.choose_positions(batch, rng)
        inputs = apply_mask(original, masked, self.mask_token_id, self.vocab_size, self.mask_style, rng=rng)
        logits = self(inputs, self.attention_mask(batch), batch["token_type_ids"], masked)  # (B, K, V)
        labels = torch.where(masked.valid, masked.gather(original), -100)  # (B, K)
        loss, acc = masked_lm_loss(logits, labels, accuracy=self.full_metrics)
        return with_metrics({"loss": loss, "mlm_loss": loss}, mlm_acc=acc)

    def flops_per_batch(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        """The encoder (with its enhanced mask decoder if any) and the MLM head on the K chosen slots, forward and
        backward."""
        n = self.predicted_positions(seq_len, convention)
        forward = encoder_flops(self.shape, self.vocab_size, seq_len, convention, batch_size) + batch_size * mlm_head_flops(
            self.shape, self.vocab_size, n, convention)
        forward += self.decoder_flops(self.shape, batch_size, seq_len, convention)
        return train_multiplier(convention) * forward

    def export(self, out_dir: str | Path) -> None:
        """``out_dir``: the masked LM with its tokenizer. ``AutoModelForMaskedLM`` loads it; with the enhanced mask
        decoder, as a plain ``DebertaV2ForMaskedLM`` without it (``DebertaV2ForMaskedLMWithEMD.from_pretrained`` gives
        the network as trained)."""
        self.model.save_pretrained(out_dir)
        self.save_tokenizer(out_dir)
