"""Token classification: a pre-trained encoder plus a linear head on every token's vector, as POS tagging.

The recipe is :class:`~downstream.classifier.SequenceClassification`'s, inherited rather than copied: the
optimiser (ELECTRA's Adam with decoupled weight decay, layer-wise learning rates at the official depths,
the schedule), the dropout before the head and its initialisation, and the probe (a frozen encoder in eval
mode, only the head trains). What differs is the head's input, every position instead of [CLS], and what is
scored: labels are ``(B, T)`` with :data:`IGNORE` where no label belongs ([CLS], [SEP], padding), which the
loss and the accuracy leave out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy

from downstream.classifier import SequenceClassification
from downstream.tasks import TaskSpec

# The label of a position that is not scored (PyTorch's cross-entropy default ignore_index).
IGNORE = -100


def token_metrics(spec: TaskSpec) -> MetricCollection:
    """``accuracy`` over the labelled positions (labels :data:`IGNORE` left out). Update it with predicted
    class ids and labels, both ``(B, T)``."""
    return MetricCollection({"accuracy": Accuracy(task="multiclass", num_classes=spec.num_labels, ignore_index=IGNORE)})


class TokenClassification(SequenceClassification):
    """A pre-trained encoder plus a linear head on every token, fine-tuned (or probed) on one token task.

    Takes :class:`~downstream.classifier.SequenceClassification`'s arguments. Logs ``train/loss`` and
    ``val/loss``, ``val/accuracy`` (token accuracy over the labelled positions), ``test/...`` likewise.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_metrics = nn.ModuleList([self.metric_collection() for _ in self.spec.val_splits])
        self.test_metrics = self.metric_collection()

    def metric_collection(self) -> MetricCollection:
        """A fresh collection of this task's metrics, token-level."""
        return token_metrics(self.spec)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, T, num_labels)`` from a tokenised batch."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.spec.probe):
            hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        return self.classifier(self.dropout(hidden))  # (B, T, num_labels)

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Class ids ``(B, T)`` from logits ``(B, T, num_labels)``."""
        return logits.argmax(dim=-1)

    def _loss_and_preds(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch).float()  # (B, T, C), losses in float32 under mixed precision
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
        return loss, self._predictions(logits)
