"""Fine-tuning a pre-trained encoder for extractive question answering (SQuAD 1.1 and 2.0).

The model is Hugging Face's ``*ForQuestionAnswering`` head (``ElectraForQuestionAnswering``,
``BertForQuestionAnswering``: one linear layer from each token's final hidden state to a start and an end
logit) on the bare encoder that :func:`downstream.classifier.load_encoder` loads, so that the checks on the
encoder (no missing and no non-finite weights) and the optimiser recipe (official ELECTRA: layer-wise decay,
schedule, no bias correction; :class:`~downstream.classifier.EncoderFineTuning`) are those of GLUE. As in the
official ELECTRA code (google-research/electra, ``finetune/qa/qa_tasks.py``, ``get_prediction_module``), the
logits are masked to the context window and [CLS] (``answer_mask``), and the loss is the mean of the start and
end cross entropies.

SQuAD 2.0 adds, by default, the official answerability classifier (``answerable_classifier``,
``answerable_uses_start_logits``): the [CLS] vector and the start-probability-weighted average of the token
vectors -> dense(512) -> GELU -> dense(1), the logit that the *question* is unanswerable (its label is the
question's, also on windows of an answerable question that miss the answer), trained with sigmoid cross
entropy at weight 0.5; a question's no-answer score is the smallest of its features' logits, and ``""`` is
predicted above -2.75 (``qa_na_threshold``). ``answerable_classifier=False`` uses BERT's null score instead,
the [CLS] span's ``start[0] + end[0]`` minus the best span's, with threshold 0. Either way the dev scores at
the best threshold (``best_f1``, ``best_exact``) are reported too, as the official v2 evaluation does.

A difference from the official code, on purpose: its end logits are conditioned on the start
(``joint_prediction``, a beam of 20 starts, each with its own end distribution); here start and end are
independent, as in BERT and Hugging Face. New layers start as BERT's (normal, std 0.02; zero bias), not
TensorFlow's Glorot default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream.classifier import EncoderFineTuning
from downstream.squad import SquadEvalSet
from downstream.tasks import get_task


class QuestionAnswering(EncoderFineTuning):
    """A pre-trained encoder plus a linear start/end head, fine-tuned on SQuAD.

    Logs ``train/loss``, and after each dev pass ``val/loss`` and ``val/<metric>`` for the task's metrics (fractions;
    ``isoflop finetune`` reports points): ``f1``, ``exact``, and for SQuAD 2.0 ``HasAns_*``, ``NoAns_*`` and
    ``best_*``; the best thresholds as ``qa/best_f1_thresh`` and ``qa/best_exact_thresh``.
    """

    def __init__(
        self,
        encoder: str,
        task: str = "squad",
        learning_rate: float = 1e-4,
        layerwise_lr_decay: float | None = None,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.1,
        adam_epsilon: float = 1e-6,
        adam_bias_correction: bool = False,
        lr_schedule: str = "electra",
        n_best_size: int = 20,
        max_answer_length: int = 30,
        answerable_classifier: bool = True,
        answerable_weight: float = 0.5,
        null_score_threshold: float | None = None,
    ) -> None:
        """
        Args:
            encoder: Checkpoint directory (``save_pretrained`` / ``isoflop export``) or hub name; loaded with ``AutoModel``.
            task: ``squad`` (SQuAD 1.1) or ``squad2`` (SQuAD 2.0).
            learning_rate: Peak learning rate of the head; layers below get ``learning_rate * decay**depth`` (as GLUE's).
            layerwise_lr_decay: Each depth further from the head multiplies the rate by this; 1.0 turns it off. None: the
                official value for the encoder (0.8; 0.9 ELECTRA-Large; 1.0 DeBERTa).
            weight_decay: Decoupled AdamW weight decay, not applied to biases and LayerNorm weights.
            warmup_fraction: Fraction of the training steps in the schedule's warm-up.
            adam_epsilon: AdamW epsilon (ELECTRA: 1e-6).
            adam_bias_correction: Adam's bias correction; False (default) as the official ``AdamWeightDecayOptimizer``.
            lr_schedule: ``electra`` (default), ``linear`` or ``deberta`` (``objectives.optim``).
            n_best_size: Best start and end positions per feature searched for the answer (official: 20).
            max_answer_length: Longest answer, in tokens (official: 30).
            answerable_classifier: SQuAD 2.0: train the official answerability classifier and predict "no answer" from
                it; False: BERT's null score ([CLS] span) instead. SQuAD 1.1 has none.
            answerable_weight: Weight of the answerability loss (official: 0.5).
            null_score_threshold: SQuAD 2.0: answer "" when the no-answer score exceeds this. None: the official value
                for the approach, -2.75 with the classifier (``qa_na_threshold``), 0 with the null score (BERT's).
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task)
        if self.spec.group != "squad":
            raise ValueError(f"task {task!r} is not a question-answering task (squad, squad2)")
        if n_best_size < 1 or max_answer_length < 1:
            raise ValueError(f"n_best_size and max_answer_length must be at least 1, got {n_best_size}, {max_answer_length}")
        self.init_encoder(encoder, layerwise_lr_decay, lr_schedule)
        self.encoder.train()  # from_pretrained returns eval mode: dropout would stay off
        hidden = self.encoder.config.hidden_size
        self.qa_outputs = nn.Linear(hidden, 2)  # (start, end) logit per token
        # The official answerability head: [CLS] and the start-weighted token average -> 512 -> GELU -> 1.
        self.answerable = nn.Sequential(nn.Linear(2 * hidden, 512), nn.GELU(), nn.Linear(512, 1)) \
            if answerable_classifier and self.spec.name == "squad2" else None
        self.null_score_threshold = (-2.75 if self.answerable is not None else 0.0) \
            if null_score_threshold is None else float(null_score_threshold)
        for layer in [self.qa_outputs, *(self.answerable or ())]:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=getattr(self.encoder.config, "initializer_range", 0.02))
                nn.init.zeros_(layer.bias)
        self._eval_outputs: list[tuple[torch.Tensor, ...]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Start and end logits ``(B, T)`` in float32, -1e4 outside ``answer_mask`` (the context window and [CLS];
        without one, outside the attention mask), and the answerability logit ``(B,)`` (None without the head)."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        mask = batch.get("answer_mask", batch["attention_mask"] != 0)  # (B, T)
        logits = self.qa_outputs(hidden).float().masked_fill(~mask[..., None], -1e4)  # (B, T, 2)
        start, end = logits[..., 0], logits[..., 1]
        if self.answerable is None:
            return start, end, None
        start_repr = (start.softmax(-1).to(hidden.dtype)[..., None] * hidden).sum(1)  # (B, H)
        answerable = self.answerable(torch.cat([hidden[:, 0], start_repr], -1)).squeeze(-1).float()  # (B,)
        return start, end, answerable

    def _loss(self, batch: dict[str, torch.Tensor], start: torch.Tensor, end: torch.Tensor,
              answerable: torch.Tensor | None) -> torch.Tensor:
        loss = (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2
        if answerable is not None:
            impossible = batch["is_impossible"].float()
            loss = loss + self.hparams.answerable_weight * F.binary_cross_entropy_with_logits(answerable, impossible)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, *self(batch))
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        start, end, answerable = self(batch)
        self.log("val/loss", self._loss(batch, start, end, answerable), on_epoch=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        answerable = torch.zeros_like(start[:, 0]) if answerable is None else answerable
        self._eval_outputs.append((batch["feature_index"], start, end, answerable))

    def on_validation_epoch_end(self) -> None:
        dataset = self.trainer.val_dataloaders.dataset
        if not isinstance(dataset, SquadEvalSet):
            raise TypeError(f"QuestionAnswering is evaluated on a SquadEvalSet, got {type(dataset).__name__}")
        start, end, answerable = self._gather_logits(len(dataset))
        scores = dataset.score(start, end, n_best_size=self.hparams.n_best_size,
                               max_answer_length=self.hparams.max_answer_length,
                               null_score_threshold=self.null_score_threshold,
                               answerable_logits=answerable if self.answerable is not None else None)
        for name in self.spec.metrics:
            if name in scores:  # fractions, as GLUE's metrics: isoflop finetune reports x100
                self.log(f"val/{name}", scores[name] / 100)
        for name in ("best_f1_thresh", "best_exact_thresh"):
            if name in scores:
                self.log(f"qa/{name}", float(scores[name]) if np.isfinite(scores[name]) else 0.0)

    def _gather_logits(self, n_features: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Every feature's start and end logits (each cut to its tokens) and answerability logit, in feature order,
        over all processes."""
        outputs, self._eval_outputs = self._eval_outputs, []
        width = max(o[1].shape[1] for o in outputs)
        index, answerable = torch.cat([o[0] for o in outputs]), torch.cat([o[3] for o in outputs])  # (N,), (N,)
        start = torch.cat([F.pad(o[1], (0, width - o[1].shape[1]), value=-1e4) for o in outputs])  # (N, width)
        end = torch.cat([F.pad(o[2], (0, width - o[2].shape[1]), value=-1e4) for o in outputs])
        if self.trainer.world_size > 1:
            # Same number of batches on every rank (the distributed sampler pads); widths may differ.
            width = int(self.all_gather(torch.tensor(width, device=start.device)).max())
            start, end = (F.pad(x, (0, width - x.shape[1]), value=-1e4) for x in (start, end))
            index, start, end, answerable = (self.all_gather(x).flatten(0, 1) for x in (index, start, end, answerable))
        start_np, end_np, index_np = start.detach().cpu().numpy(), end.detach().cpu().numpy(), index.cpu().numpy()
        rows = np.full(n_features, -1)
        rows[index_np] = np.arange(len(index_np))  # a feature seen twice (sampler padding): either copy
        if (rows < 0).any():
            raise RuntimeError(f"{int((rows < 0).sum())} of {n_features} dev features got no prediction")
        lengths = [len(ids) for ids in self.trainer.val_dataloaders.dataset.columns["input_ids"]]
        return ([start_np[r, :n] for r, n in zip(rows, lengths)], [end_np[r, :n] for r, n in zip(rows, lengths)],
                answerable.detach().cpu().numpy()[rows])

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> Any:
        """The batch's ``feature_index`` ``(B,)``, start and end logits ``(B, T)`` and answerability logit ``(B,)``
        (None without the head)."""
        return (batch["feature_index"], *self(batch))
