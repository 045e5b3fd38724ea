"""DeBERTa-v2's replaced-token-detection network, which Hugging Face transformers does not ship.

:class:`DebertaV2ForReplacedTokenDetection` is a ``DebertaV2Model`` with DeBERTa-v3's discriminator head,
named as the official code names it (microsoft/DeBERTa ``DeBERTa/apps/models/replaced_token_detection_model.py``,
``LMMaskPredictionHead``: ``mask_predictions.LayerNorm``, ``.dense``, ``.classifer``), so the head's
weights sit where the published DeBERTa-v3 discriminator checkpoints keep them. An export loads with
``AutoModel.from_pretrained(dir)`` as a plain ``DebertaV2Model`` (the head is left behind, as for
fine-tuning) and with ``DebertaV2ForReplacedTokenDetection.from_pretrained(dir)`` as the whole discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DebertaV2Model, DebertaV2PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput


class DebertaV2RTDHead(nn.Module):
    """One logit per token: LayerNorm([CLS] state + token state) -> dense(h) -> activation -> dense(1)
    (official ``LMMaskPredictionHead``; ``classifer`` is the official spelling)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifer = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        states = self.LayerNorm(hidden[:, :1] + hidden)  # (B, L, H): every token sees the [CLS] state
        return self.classifer(self.transform_act_fn(self.dense(states))).squeeze(-1)  # (B, L)


@dataclass
class RTDOutput(ModelOutput):
    logits: torch.FloatTensor | None = None


class DebertaV2ForReplacedTokenDetection(DebertaV2PreTrainedModel):
    """A DeBERTa-v2 encoder with DeBERTa-v3's replaced-token-detection head."""

    def __init__(self, config):
        super().__init__(config)
        self.deberta = DebertaV2Model(config)
        self.mask_predictions = DebertaV2RTDHead(config)
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, **kwargs) -> RTDOutput:
        hidden = self.deberta(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              **kwargs).last_hidden_state
        return RTDOutput(logits=self.mask_predictions(hidden))
