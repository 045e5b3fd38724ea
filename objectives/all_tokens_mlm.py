"""All-Tokens MLM: predict the identity of every input token from generator-corrupted input.

The paper's ablation (section 3.2, Table 5: GLUE 84.3, closing most of the gap to ELECTRA's 85.0)
with its copy mechanism: a sigmoid gate D(x, t) gives the probability that token t of the input is
original, and the prediction mixes "copy the input token" with the MLM softmax:

    p(x_t = w) = D(x, t) * 1[w == input_t] + (1 - D(x, t)) * softmax(logits_t)[w]

The loss is -log p(original token) over all non-pad tokens. This needs full-vocabulary logits at
every position, (B, L, V): the objective's nature, and the reason it costs more than MLM per step.

With DeBERTa encoders and ``enhanced_mask_decoder`` (the default) the main network's hidden states are its
enhanced mask decoder's output at every position (the official decoder's equations, applied to all L tokens
instead of the masked ones), and both the MLM head and the copy gate read them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from objectives.flops import encoder_flops, mlm_head_flops, train_multiplier
from objectives.replace_mlm import ReplaceMLM


class AllTokensMLM(ReplaceMLM):
    """MLM over all tokens of the generator-corrupted input, with the paper's copy mechanism: Replace
    MLM (same networks and corruption) that predicts every token, not only the masked ones.

    Args:
        size: main network size preset: ``tiny``, ``small``, ``base`` or ``large``.
        **kwargs: every setting of :class:`objectives.replace_mlm.ReplaceMLM` (mask_style, generator
            settings, the shared settings).
    """

    def __init__(self, size: str = "small", **kwargs):
        super().__init__(size=size, **kwargs)

    def build_main(self):
        # The copy gate D(x, t): hidden -> 1 logit per token.
        self.copy_gate = nn.Linear(self.shape.hidden_size, 1)
        nn.init.normal_(self.copy_gate.weight, std=0.02)
        nn.init.zeros_(self.copy_gate.bias)
        return super().build_main()

    def main_flops(self, batch_size: int, seq_len: int, convention: str) -> float:
        """The main network (with its enhanced mask decoder if any), its MLM head on every token and the copy gate,
        forward and backward."""
        gate = 2 * self.shape.hidden_size * seq_len  # the copy gate, Linear(h, 1) on every token
        per_sequence = mlm_head_flops(self.shape, self.vocab_size, seq_len, convention) + gate
        forward = encoder_flops(self.shape, self.vocab_size, seq_len, convention, batch_size) + batch_size * per_sequence
        forward += self.decoder_flops(self.shape, batch_size, seq_len, convention)
        return train_multiplier(convention) * forward

    def compute(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> dict[str, Tensor]:
        corruption, metrics = self.corrupt(batch, rng)
        original, corrupted = batch["input_ids"], corruption.corrupted  # (B, L)
        hidden = self.mlm_hidden(self.mlm, batch, corrupted)  # (B, L, H), the EMD's output if any
        logits = self.mlm_logits(self.mlm, hidden).float()  # (B, L, V)
        gate = self.copy_gate(hidden).squeeze(-1).float()  # (B, L), logit of D(x, t)
        log_p_softmax = logits.log_softmax(-1).gather(-1, original.unsqueeze(-1)).squeeze(-1)  # (B, L)
        log_copy, log_no_copy = F.logsigmoid(gate), F.logsigmoid(-gate)
        # The copy term counts only where the input token is the original one.
        log_p = torch.where(
            ~corruption.replaced,
            torch.logaddexp(log_copy, log_no_copy + log_p_softmax),
            log_no_copy + log_p_softmax,
        )
        weights = batch["attention_mask"].float()
        n = weights.sum()
        metrics["mlm_loss"] = -(log_p * weights).sum() / n
        metrics["loss"] = self.generator_loss(metrics) + metrics["mlm_loss"]
        if self.full_metrics:
            # Accuracy of the mixed prediction: copy wins when D > the softmax's best alternative.
            predict = torch.where(torch.sigmoid(gate) > 0.5, corrupted, logits.argmax(-1))
            metrics["mlm_acc"] = ((predict == original).float() * weights).sum() / n
        return metrics
