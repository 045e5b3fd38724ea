"""Fine-tuning a pre-trained encoder on one classification or regression task, ELECTRA's way.

Every objective is judged by the same downstream recipe, the official ELECTRA code's
(google-research/electra: ``configure_finetuning.py``, ``run_finetuning.py`` and
``model/optimization.py``'s ``create_optimizer`` and ``_get_layer_lrs``; paper appendix A): the [CLS]
vector -> dropout 0.1 -> linear (no pooler); Adam with decoupled weight decay 0.01 (not on LayerNorm
and biases), betas 0.9/0.999, eps 1e-6 and no bias correction (``AdamWeightDecayOptimizer``); learning
rate 1e-4 with layer-wise decay 0.8 (0.9 for Large; none for DeBERTa encoders, as DeBERTa's official
fine-tuning) at the official depths; the official schedule, linear decay from step 0 times a warm-up
ramp over 10% of the steps. MSE on STS-B's rescaled score, cross entropy elsewhere. The optimiser and schedules are pre-training's own (:mod:`objectives.optim`),
with a learning rate per depth; ``adam_bias_correction`` and ``lr_schedule`` choose torch's AdamW and
the other schedules.

The encoder is whatever ``AutoModel.from_pretrained(dir)`` returns: for an isoflop export or any
``save_pretrained`` directory of ``ElectraForPreTraining`` / ``ElectraForMaskedLM`` /
``BertForMaskedLM`` that is the bare encoder, with the pre-training head's weights left behind.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from downstream.tasks import TaskSpec, get_task
from objectives.optim import adamw_with_schedule, check_schedule
from objectives.optim import parameter_groups as adamw_groups

# Files any Hugging Face tokenizer is saved as; at least one must be in an encoder directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

# GLUE's metrics by name (what TaskSpec.metrics lists). Binary F1 is of the positive class, as
# GLUE's own scorer (sklearn's f1_score) computes it for MRPC and QQP.
_METRICS: dict[str, Any] = {
    "accuracy": lambda n: Accuracy(task="multiclass", num_classes=n),
    "f1": lambda n: F1Score(task="binary"),
    "macro_f1": lambda n: F1Score(task="multiclass", num_classes=n, average="macro"),
    "mcc": lambda n: MatthewsCorrCoef(task="binary" if n == 2 else "multiclass", num_classes=n),
    "pearson": lambda n: PearsonCorrCoef(),
    "spearman": lambda n: SpearmanCorrCoef(),
}


def task_metrics(spec: TaskSpec) -> MetricCollection:
    """A fresh metric collection for one task, keyed by metric name.

    Update it with ``(preds, labels)``: predicted class ids ``(B,)`` for classification, predicted
    scores ``(B,)`` for regression.
    """
    with warnings.catch_warnings():
        # Spearman keeps every prediction to rank them: fine at GLUE's dev-set sizes, no need to warn.
        warnings.filterwarnings("ignore", message=".*will save all targets and predictions.*")
        metrics: dict[str, Metric] = {name: _METRICS[name](spec.num_labels) for name in spec.metrics}
    return MetricCollection(metrics)


# --------------------------------------------------------------------------------------------
# Checks on an encoder directory
# --------------------------------------------------------------------------------------------


def check_encoder(encoder: str) -> None:
    """Fail fast, in one line, on an encoder directory that cannot be fine-tuned.

    Checks that the directory exists, holds a config and a tokenizer, that the tokenizer's vocabulary
    has exactly as many entries as the encoder's embedding matrix, and that no weight is NaN or infinite
    (:func:`check_finite_weights`). A name that looks like a path (``runs/nope`` where ``runs/`` exists)
    is reported missing, not looked up on the hub. Raises FileNotFoundError or ValueError.
    """
    path = Path(encoder).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"encoder {encoder!r} is a file; give the directory written by save_pretrained / isoflop export")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"encoder directory {encoder!r} has no config.json (not a save_pretrained directory)")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"encoder directory {encoder!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES[:3])}); "
                "save it beside the model with tokenizer.save_pretrained(dir)"
            )
    elif os.path.isabs(encoder) or encoder.startswith((".", "~")) or encoder.count("/") > 1 \
            or encoder.endswith(("/", os.sep)) or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()):
        # A path (runs/nope: runs/ is a directory here), not a hub name: no download attempt.
        raise FileNotFoundError(f"encoder directory {encoder!r} not found")
    # Otherwise a hub name ("google/electra-small-discriminator"): let transformers resolve it.
    try:
        config = AutoConfig.from_pretrained(encoder)
        tokenizer = AutoTokenizer.from_pretrained(encoder)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot load encoder {encoder!r}: {str(err).strip().splitlines()[0]}") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) != vocab:
        raise ValueError(
            f"encoder {encoder!r}: tokenizer has {len(tokenizer)} tokens but the model's embedding matrix has "
            f"{vocab} rows; they must match (was the tokenizer saved from the same run?)"
        )
    if path.is_dir():
        check_finite_weights(path)


def check_finite_weights(directory: str | os.PathLike) -> None:
    """Refuse, in one line, a ``save_pretrained`` directory with a NaN or infinite weight (a diverged
    run's): fine-tuning it would report a score for garbage. Reads the safetensors files (memory-mapped)."""
    from safetensors import safe_open

    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                _refuse_nonfinite(weights.get_tensor(name), name, directory)


def _refuse_nonfinite(tensor: torch.Tensor, name: str, encoder) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"encoder {str(encoder)!r} has non-finite weights ({name} holds NaN or infinite values): "
                         "its pre-training diverged; fine-tune an earlier checkpoint's export")


def load_encoder(encoder: str) -> PreTrainedModel:
    """The bare encoder of a checkpoint, without a pooler; refuses checkpoints with missing weights."""
    # The pre-training head's weights are always "unexpected" here; transformers' load report and
    # progress bar would print that for every seed, so they are muted and the missing keys, the
    # only real problem, are checked below.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(encoder, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    # BERT checkpoints from an MLM run have no trained pooler and ELECTRA's recipe uses none;
    # dropping it also keeps DDP from seeing parameters that never get a gradient.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    for name, tensor in model.state_dict().items():
        _refuse_nonfinite(tensor, name, encoder)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        # A renamed or foreign checkpoint would otherwise fine-tune a randomly initialised encoder.
        raise ValueError(
            f"encoder {encoder!r}: {len(missing)} encoder weights missing from the checkpoint "
            f"(e.g. {', '.join(missing[:3])}); it would fine-tune from random weights"
        )
    return model


def encoder_layers(encoder: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers and its dotted name (``encoder.layer`` for BERT/ELECTRA)."""
    inner = getattr(encoder, "encoder", None)
    if isinstance(getattr(inner, "layer", None), nn.ModuleList):
        return "encoder.layer", inner.layer
    # Other layouts: the first ModuleList called layer/layers/h.
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers", "h"):
            return name, module
    raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__} (no encoder.layer list)")


def official_layerwise_lr_decay(config: Any) -> tuple[float, str]:
    """The layer-wise learning-rate decay of the official fine-tuning of an encoder's family, and why.

    ``config``: the encoder's Hugging Face config (its ``model_type``, ``hidden_size`` and
    ``num_hidden_layers``). ELECTRA's ``configure_finetuning.py`` sets ``layerwise_lr_decay`` 0.8, and
    0.9 for ``model_size`` "large": an ELECTRA encoder of the Large shape (:data:`objectives.encoder.FAMILIES`,
    ``size_of``) gets 0.9. DeBERTa's official fine-tuning (microsoft/DeBERTa, ``DeBERTa/training/optimizer_utils.py``,
    ``create_xoptimizer``) gives every parameter the one learning rate: 1.0 (no decay) for DeBERTa encoders.
    Any other encoder (BERT, an ELECTRA of another shape) gets ELECTRA's 0.8.
    """
    from objectives.encoder import FAMILIES

    model_type = str(getattr(config, "model_type", "") or "").replace("_", "-")
    if model_type in ("deberta", "deberta-v2"):
        return 1.0, "DeBERTa's official fine-tuning has no layer-wise decay"
    fam = FAMILIES.get(model_type)
    size = fam.size_of(getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)) \
        if fam is not None and fam.name == "electra" else None
    if size == "large":
        return 0.9, "the official ELECTRA fine-tuning's for Large (configure_finetuning.py)"
    return 0.8, "the official ELECTRA fine-tuning's (configure_finetuning.py)"


def check_layerwise_lr_decay(layerwise_lr_decay: float | None) -> None:
    """Refuse a decay of 0 or below (None: the official value for the encoder); 1.0 turns the decay off."""
    if layerwise_lr_decay is not None and not layerwise_lr_decay > 0:
        raise ValueError(f"layerwise_lr_decay must be above 0 (1.0 turns the decay off; none: the official value "
                         f"for the encoder), got {layerwise_lr_decay}")


# --------------------------------------------------------------------------------------------
# The LightningModule
# --------------------------------------------------------------------------------------------


class EncoderFineTuning(L.LightningModule):
    """What every fine-tuning module shares: the encoder (:func:`load_encoder`) and the official ELECTRA optimiser.

    A subclass saves its hyperparameters (``learning_rate``, ``weight_decay``, ``warmup_fraction``, ``adam_epsilon``,
    ``adam_bias_correction``, ``lr_schedule``) and calls :meth:`init_encoder`; every parameter outside
    ``self.encoder`` is its task head, trained at the full learning rate.
    """

    def init_encoder(self, encoder: str, layerwise_lr_decay: float | None, lr_schedule: str) -> None:
        """Check the optimiser settings, load ``self.encoder`` and resolve ``self.layerwise_lr_decay`` (None: the
        official value for this encoder, :func:`official_layerwise_lr_decay`)."""
        check_layerwise_lr_decay(layerwise_lr_decay)
        check_schedule(lr_schedule)
        self.encoder = load_encoder(encoder)
        self.layerwise_lr_decay = official_layerwise_lr_decay(self.encoder.config)[0] \
            if layerwise_lr_decay is None else float(layerwise_lr_decay)

    # -- optimiser --------------------------------------------------------------------------

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups with the official ELECTRA fine-tuning's layer-wise learning rates.

        The depths of ``_get_layer_lrs`` (google-research/electra, ``model/optimization.py``): with n layers,
        the embeddings (with the embedding projection, and any other encoder parameter outside the layer
        list) are at depth 0, layer i (0-based) at depth i + 1, the task head at depth n + 2, and a group's
        rate is ``learning_rate * layerwise_lr_decay ** (n + 2 - depth)``: the head ``decay**0``, the top
        layer ``decay**2``, layer i ``decay**(n + 1 - i)``, the embeddings ``decay**(n + 2)``. Depth n + 1
        holds nothing (BERT's pooler's place; ELECTRA's fine-tuning has no pooler), so the top layer's
        rate is ``decay**2``, not ``decay``, of the head's, as in the official code.
        Each depth is split in two groups: with weight decay, and without it for biases and
        LayerNorm weights (every 1-d parameter). Groups are named ``head``, ``layer.<i>``,
        ``embeddings``, with ``/no_decay`` appended for the second kind; ``param_names`` lists each
        group's parameters (for inspection; the optimiser drops it).
        """
        hp = self.hparams
        decay = self.layerwise_lr_decay
        prefix, layers = encoder_layers(self.encoder)
        n_layers = len(layers)

        def lr_of(pname: str) -> tuple[str, float]:
            if not pname.startswith("encoder."):
                name, depth = "head", n_layers + 2
            else:
                rest = pname[len("encoder."):]
                if rest.startswith(prefix + "."):
                    index = int(rest[len(prefix) + 1:].split(".", 1)[0])
                    name, depth = f"layer.{index}", index + 1
                else:
                    name, depth = "embeddings", 0
            return name, hp.learning_rate * decay ** (n_layers + 2 - depth)

        return adamw_groups(self.named_parameters(), hp.weight_decay, lr_of=lr_of)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam with decoupled weight decay (betas 0.9, 0.999) over :meth:`parameter_groups`, without bias
        correction unless ``adam_bias_correction`` (then ``torch.optim.AdamW``), under ``lr_schedule``
        (default ``electra``, the official: the first update has rate 0), stepped every optimiser step.
        The schedule multiplies each group's own rate, so the layer-wise ratios hold throughout."""
        hp = self.hparams
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return adamw_with_schedule(
            self.parameter_groups(),
            lr=hp.learning_rate,
            betas=(0.9, 0.999),
            eps=hp.adam_epsilon,
            total_steps=total,
            warmup_fraction=hp.warmup_fraction,
            bias_correction=hp.adam_bias_correction,
            lr_schedule=hp.lr_schedule,
        )


class SequenceClassification(EncoderFineTuning):
    """A pre-trained encoder plus a linear head on [CLS], fine-tuned on one task.

    Logs ``train/loss``, and after each dev pass ``val/loss`` and ``val/<metric>`` for the task's
    metrics (MNLI's mismatched dev set as ``val/<metric>_mismatched``); ``test/...`` likewise for
    tasks with a labelled test split.
    """

    def __init__(
        self,
        encoder: str,
        task: str = "sst2",
        learning_rate: float = 1e-4,
        layerwise_lr_decay: float | None = None,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.1,
        adam_epsilon: float = 1e-6,
        classifier_dropout: float = 0.1,
        adam_bias_correction: bool = False,
        lr_schedule: str = "electra",
    ) -> None:
        """
        Args:
            encoder: Checkpoint directory (``save_pretrained`` / ``isoflop export``) or hub name; loaded with ``AutoModel``.
            task: Task name (GLUE or offline); sets the number of labels, the loss and the metrics.
            learning_rate: Peak learning rate of the task head; the top encoder layer gets ``learning_rate * decay**2``
                (the official depths, :meth:`parameter_groups`). ELECTRA: 1e-4 (Base), 3e-4 (Small), 5e-5 (Large).
            layerwise_lr_decay: Each depth further from the head multiplies the rate by this; 1.0 turns the decay
                off. None: the official value for the encoder (:func:`official_layerwise_lr_decay`): ELECTRA's 0.8,
                0.9 for an ELECTRA-Large-shaped encoder, 1.0 for DeBERTa (its official fine-tuning has no decay).
            weight_decay: Decoupled AdamW weight decay, not applied to biases and LayerNorm weights.
            warmup_fraction: Fraction of the training steps in the schedule's warm-up.
            adam_epsilon: AdamW epsilon (ELECTRA: 1e-6).
            classifier_dropout: Dropout on the [CLS] vector before the linear head.
            adam_bias_correction: Adam's bias correction (``torch.optim.AdamW``). False (default): the official
                ELECTRA fine-tuning's ``AdamWeightDecayOptimizer``, which has none (``objectives.optim.AdamWeightDecay``).
            lr_schedule: ``electra`` (default; the official ``create_optimizer``'s: linear decay from step 0 times
                the warm-up ramp ``min(1, step / warmup)``, so the first update has rate 0), ``linear`` (warm-up from
                the first step, then linear decay from the peak to 0) or ``deberta`` (DeBERTa's ``warmup_linear``);
                see ``objectives.optim``.
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = self.task_spec(task, encoder)
        self.init_encoder(encoder, layerwise_lr_decay, lr_schedule)
        # from_pretrained returns the model in eval mode, and Lightning keeps each module's mode:
        # without this, fine-tuning would run with the encoder's dropout switched off. A probe's
        # encoder stays frozen and in eval mode: fixed features, only the head trains.
        if self.spec.probe:
            self.encoder.requires_grad_(False)
        else:
            self.encoder.train()
        hidden = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(hidden, self.spec.num_labels)
        # BERT's initialisation for the new head: N(0, 0.02), zero bias.
        std = getattr(self.encoder.config, "initializer_range", 0.02)
        nn.init.normal_(self.classifier.weight, std=std)
        nn.init.zeros_(self.classifier.bias)
        self.val_metrics = nn.ModuleList([task_metrics(self.spec) for _ in self.spec.val_splits])
        self.test_metrics = task_metrics(self.spec)

    def task_spec(self, task: str, encoder: str) -> TaskSpec:
        """The spec of ``task``; a subclass whose classes depend on the encoder (the synthetic tasks' topics or
        states: :mod:`downstream.synthetic_tasks`) resolves them here."""
        return get_task(task)

    # -- forward and loss -------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, num_labels)`` (``(B, 1)`` for regression) from a tokenised batch."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.spec.probe):
            hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        cls = hidden[:, 0]  # (B, H): the [CLS] position
        return self.classifier(self.dropout(cls))  # (B, num_labels)

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Regression scores or class ids ``(B,)`` from logits ``(B, num_labels)``."""
        return logits.squeeze(-1).float() if self.spec.is_regression else logits.argmax(dim=-1)

    def _loss_and_preds(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch).float()  # losses in float32 under mixed precision
        labels = batch["labels"]
        if self.spec.is_regression:
            loss = F.mse_loss(logits.squeeze(-1), labels.float())
        else:
            loss = F.cross_entropy(logits, labels)
        return loss, self._predictions(logits)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_preds(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, preds = self._loss_and_preds(batch)
        self.val_metrics[dataloader_idx].update(preds, batch["labels"])
        suffix = self.spec.metric_suffix(dataloader_idx)
        self.log(
            f"val/loss{suffix}", loss, on_epoch=True, sync_dist=True, add_dataloader_idx=False, batch_size=batch["labels"].shape[0]
        )

    def on_validation_epoch_end(self) -> None:
        for i, metrics in enumerate(self.val_metrics):
            # torchmetrics gathers its states across processes inside compute().
            for name, value in metrics.compute().items():
                self.log(f"val/{name}{self.spec.metric_suffix(i)}", value, add_dataloader_idx=False)
            metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, preds = self._loss_and_preds(batch)
        self.test_metrics.update(preds, batch["labels"])
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["labels"].shape[0])

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metrics.compute().items():
            self.log(f"test/{name}", value)
        self.test_metrics.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Predicted class ids (or regression scores) ``(B,)``; labels are not needed."""
        return self._predictions(self(batch))
