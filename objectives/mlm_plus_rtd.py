"""MLM + RTD: ELECTRA whose discriminator also carries an MLM head on positions of its own.

After the generator's corruption, a second, disjoint set of positions (``disc_mask_prob`` of the
non-pad tokens, never ones the generator filled) is set to [MASK] in the discriminator's input.
The discriminator then (a) classifies every other non-pad token as original or replaced and
(b) predicts the original token at its own [MASK] positions with an MLM head tied to its word
embeddings. Total loss = gen_weight x generator MLM + disc_weight x RTD + mlm_weight x MLM.

The discriminator's MLM head reads the discriminator's own last hidden states, also on DeBERTa encoders with
``enhanced_mask_decoder``: the official code has no such objective, and a decoder there would add absolute
positions and two passes of the discriminator's last layer to a network kept for fine-tuning without them. The
generator still uses the decoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from objectives.base import masked_lm_loss, with_metrics
from objectives.flops import mlm_head_flops, train_multiplier
from objectives.generator import materialised_copy
from objectives.masking import choose_positions
from objectives.rtd import ReplacedTokenDetection, rtd_loss


class MLMPlusRTD(ReplacedTokenDetection):
    """Replaced token detection plus masked language modelling in one discriminator.

    Args:
        size: discriminator size preset: ``tiny``, ``small``, ``base`` or ``large``.
        disc_mask_prob: share of non-pad tokens the discriminator sees as [MASK] and predicts.
        mlm_weight: weight of the discriminator's MLM loss in the total.
        **kwargs: every setting of :class:`objectives.rtd.ReplacedTokenDetection` (disc_weight,
            generator_hidden_fraction, embedding_sharing, ...).
    """

    def __init__(self, size: str = "small", disc_mask_prob: float = 0.15, mlm_weight: float = 1.0, **kwargs):
        super().__init__(size=size, **kwargs)
        if self.hparams.two_stage:
            raise ValueError("MLMPlusRTD does not support two_stage: use ReplacedTokenDetection for two-stage training")
        if not 0.0 < disc_mask_prob < 1.0 - self.mask_prob:
            raise ValueError(f"disc_mask_prob must lie in (0, 1 - mask_prob), got {disc_mask_prob}")

    def build_networks(self) -> None:
        super().build_networks()
        # The discriminator's MLM head: a masked LM of the family whose encoder is the discriminator's (plain: no
        # enhanced mask decoder, see the module's docstring).
        self.discriminator_mlm = self.family.masked_lm(self.encoder_config(), enhanced_mask_decoder=False)
        setattr(self.discriminator_mlm, self.discriminator_mlm.base_model_prefix, self.discriminator.base_model)
        self.tie_output_embeddings()

    def main_flops(self, batch_size: int, seq_len: int, convention: str) -> float:
        """ELECTRA's discriminator plus its MLM head on its own K' slots, forward and backward."""
        n = self.predicted_positions(seq_len, convention, self.hparams.disc_mask_prob)
        head = train_multiplier(convention) * batch_size * mlm_head_flops(self.shape, self.vocab_size, n, convention)
        return super().main_flops(batch_size, seq_len, convention) + head

    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        corruption, metrics = self.corrupt(batch, rng)
        # The discriminator's own positions: chosen among tokens the generator did not touch.
        own = choose_positions(
            batch["attention_mask"],
            batch["special_tokens_mask"] | corruption.masked.chosen,
            self.hparams.disc_mask_prob,
            rng=rng,
        )
        disc_input = torch.where(own.chosen, self.mask_token_id, corruption.corrupted)  # (B, L), no host sync
        hidden = self.encode(self.discriminator, batch, disc_input)  # (B, L, H)
        rtd_logits = self.family.disc_head(self.discriminator)(hidden)  # (B, L)
        weights = batch["attention_mask"].bool() & ~own.chosen  # [MASK]ed tokens are neither original nor replaced
        disc_loss, disc_metrics = rtd_loss(rtd_logits, corruption.replaced, weights, self.full_metrics)
        metrics.update(disc_metrics)
        labels = torch.where(own.valid, own.gather(batch["input_ids"]), -100)  # (B, K')
        mlm_logit = self.mlm_logits(self.discriminator_mlm, own.gather(hidden))  # (B, K', V)
        metrics["mlm_loss"], acc = masked_lm_loss(mlm_logit, labels, accuracy=self.full_metrics)
        with_metrics(metrics, mlm_acc=acc)
        hp = self.hparams
        metrics["loss"] = self.generator_loss(metrics) + hp.disc_weight * disc_loss + hp.mlm_weight * metrics["mlm_loss"]
        return metrics

    def export(self, out_dir: str | Path) -> None:
        """As ELECTRA, plus ``out_dir/discriminator_mlm``: the discriminator with its MLM head."""
        super().export(out_dir)
        materialised_copy(self.discriminator_mlm).save_pretrained(Path(out_dir) / "discriminator_mlm")
        self.save_tokenizer(Path(out_dir) / "discriminator_mlm")
