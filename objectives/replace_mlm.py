"""Replace MLM: masked language modelling whose masked positions hold generator samples, not [MASK].

The paper's ablation (section 3.2, Table 5: GLUE 82.4) that tests how much of BERT's deficit comes
from the pre-train/fine-tune mismatch of the [MASK] token: the main network predicts the original
token at the chosen positions, but its input there is a plausible sample from the generator. A DeBERTa main
network predicts through the enhanced mask decoder, as the generator does (``enhanced_mask_decoder``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from objectives.base import masked_lm_loss, with_metrics
from objectives.flops import encoder_flops, mlm_head_flops, train_multiplier
from objectives.generator import GeneratorObjective


class ReplaceMLM(GeneratorObjective):
    """MLM on generator-corrupted input.

    Args:
        size: main network size preset: ``tiny``, ``small``, ``base`` or ``large``.
        mask_style: how the generator's input is masked: ``electra`` (85/15) or ``bert`` (80/10/10).
        **kwargs: generator settings of :class:`objectives.generator.GeneratorObjective` and the shared
            settings of :class:`objectives.base.PretrainingObjective`.
    """

    def __init__(self, size: str = "small", mask_style: str = "electra", **kwargs):
        super().__init__(size=size, mask_style=mask_style, **kwargs)

    def build_main(self) -> PreTrainedModel:
        # The main network: an MLM on corrupted input (with DeBERTa's enhanced mask decoder when uses_emd).
        self.mlm = self.family.masked_lm(self.encoder_config(), enhanced_mask_decoder=self.uses_emd)
        return self.mlm

    @property
    def main_network(self) -> PreTrainedModel:
        return self.mlm

    def main_flops(self, batch_size: int, seq_len: int, convention: str) -> float:
        """The main network (with its enhanced mask decoder if any) and its MLM head on the K chosen slots, forward
        and backward."""
        n = self.predicted_positions(seq_len, convention)
        forward = encoder_flops(self.shape, self.vocab_size, seq_len, convention, batch_size) + batch_size * mlm_head_flops(
            self.shape, self.vocab_size, n, convention)
        forward += self.decoder_flops(self.shape, batch_size, seq_len, convention)
        return train_multiplier(convention) * forward

    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        corruption, metrics = self.corrupt(batch, rng)
        hidden = self.mlm_hidden(self.mlm, batch, corruption.corrupted)  # (B, L, H), through the EMD if any
        logits = self.mlm_logits(self.mlm, corruption.masked.gather(hidden))  # (B, K, V)
        metrics["mlm_loss"], acc = masked_lm_loss(logits, corruption.labels, accuracy=self.full_metrics)
        with_metrics(metrics, mlm_acc=acc)
        metrics["loss"] = self.generator_loss(metrics) + metrics["mlm_loss"]
        return metrics
