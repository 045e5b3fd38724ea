"""Known-answer downstream tasks on the synthetic sources: ask an encoder for the source's hidden structure.

A synthetic source (:mod:`datamodules.synthetic`) hides what produced each sequence, and its exact posterior
is computable, so a task that asks for it has a known best score, as ``val/bayes_mlm_loss`` is for the loss:

``synth-topic`` / ``synth-topic-probe`` (sequence classification, for ``topics`` and ``chain+topics``)
    Which topic produced the sequence. Ceiling: the accuracy of the argmax of the exact topic posterior
    given the whole sequence (:meth:`datamodules.synthetic.SyntheticSource.topic_posterior`).
``synth-state`` / ``synth-state-probe`` (token classification, for ``hmm``)
    The latent state of every position. Ceiling: the accuracy of the per-position argmax of the
    forward-backward posterior (:meth:`datamodules.synthetic_hmm.HiddenMarkovSource.state_posterior`).
    (The chain's symbols have no hidden class: only ``hmm`` has states.)

The ``-probe`` tasks freeze the encoder and train a linear head (on [CLS], or on every token), as
``docpkg-probe``; the others fine-tune the encoder too.

**Which source.** A task reads the source the encoder was pre-trained on: the ``data.dataset`` of the
export's ``isoflop.json`` (:mod:`experiments.run.provenance`), with the pre-training sequence length. So
``isoflop compare --data.dataset synthetic:hmm --finetune.tasks [synth-state-probe]`` asks each encoder about
its own source, and nothing is said twice. An encoder without that record (a random-initialised twin, another
tool's) gets one with :func:`record_source`. A source without the asked structure (``synth-state`` on
``topics``) is a one-line error before any compute.

**Data.** Splits of :data:`SPLIT_SIZES` sequences of ``min(pre-training length, --max_seq_length, the encoder's
positions) - 2`` symbols, ``[CLS] x_1 ... x_n [SEP]`` as in pre-training. They are drawn from the same source
with held-out seeds: ``numpy.random.SeedSequence([TASK_ENTROPY, source seed, split index])``, whose entropy is
three words, while pre-training draws with single integers (``2 seed + 1000003 data_seed`` for training, one
more for validation, ``7919 seed + 1`` for the floors), so the streams are disjoint.

**Chance and ceiling.** Every example carries the Bayes-optimal labeller's answer (``bayes_labels``); the
model scores it with the same metric code as its own predictions and logs it as ``val/bayes_accuracy``, with
``val/chance_accuracy``, the share of the most frequent class among the evaluated labels. Both travel into
the fine-tuning's results (``experiments.finetuning.scores``) and compare's results.md, which shows each score
as the share of the gap from chance to the ceiling that the encoder closed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics import Metric, MetricCollection

from datamodules.cache import write_atomic
from datamodules.synthetic import SourceFloors, SyntheticSpec, is_synthetic
from datamodules.synthetic_hmm import make_source
from downstream.classifier import SequenceClassification, task_metrics
from downstream.data import TaskDataModule
from downstream.tasks import SYNTHETIC_TASKS, TaskSpec, get_task
from downstream.token_classifier import IGNORE, TokenClassification

SPLIT_SIZES = {"train": 2000, "validation": 1000, "test": 1000}
SPLITS = tuple(SPLIT_SIZES)
TASK_ENTROPY = 0x5EED7A5C  # the first word of every task split's seed: no pre-training seed has three words
# What each task asks for, and the source kinds that have it.
HIDDEN = {"synth-topic": "topic", "synth-state": "state"}
KINDS_WITH = {"topic": ("topics", "chain+topics"), "state": ("hmm",)}


def is_synthetic_task(spec: TaskSpec) -> bool:
    return spec.name in SYNTHETIC_TASKS


def hidden_of(spec: TaskSpec) -> str:
    """``topic`` or ``state``: what a synthetic task asks for."""
    return HIDDEN[spec.dataset]


# -- the source ------------------------------------------------------------------------------------


def encoder_source(encoder: str) -> tuple[SyntheticSpec, int | None]:
    """The synthetic source an encoder was pre-trained on and its sequence length, from ``isoflop.json``."""
    path = Path(encoder).expanduser() / "isoflop.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"the synthetic tasks read the source the encoder was pre-trained on, from its isoflop.json; "
                         f"{encoder!r} has none (an isoflop export has one; for another encoder write it with "
                         "downstream.synthetic_tasks.record_source)") from None
    data = record.get("data") or {}
    dataset = data.get("dataset")
    if not is_synthetic(dataset):
        raise ValueError(f"the synthetic tasks need an encoder pre-trained on a synthetic source; {encoder!r} was "
                         f"pre-trained on {dataset or data.get('source') or 'text'!r} (its isoflop.json)")
    return SyntheticSpec.parse(dataset), (data.get("hyper_parameters") or {}).get("max_seq_length")


def check_source(spec: TaskSpec, source: SyntheticSpec) -> None:
    """One line when the source has not the structure the task asks for."""
    hidden = hidden_of(spec)
    if source.kind not in KINDS_WITH[hidden]:
        raise ValueError(f"task {spec.name} asks for each {'sequence' if hidden == 'topic' else 'position'}'s "
                         f"{hidden}, which synthetic:{source.kind} has not: it needs an encoder pre-trained on "
                         f"{' or '.join('synthetic:' + k for k in KINDS_WITH[hidden])}")


def resolved_spec(task: str, encoder: str) -> tuple[TaskSpec, SyntheticSpec, int | None]:
    """A synthetic task's spec with its number of classes (the source's topics or states), the source, and the
    pre-training sequence length."""
    spec = get_task(task)
    source, length = encoder_source(encoder)
    check_source(spec, source)
    classes = source.topics if hidden_of(spec) == "topic" else source.states
    return dataclasses.replace(spec, num_labels=classes), source, length


def record_source(directory: str | Path, dataset: str, max_seq_length: int) -> None:
    """Write the ``isoflop.json`` the synthetic tasks read into an encoder directory that has none (a
    random-initialised twin): its data settings only, as an export records them."""
    SyntheticSpec.parse(dataset)  # a bad source fails here, not at fine-tuning
    record = {"format": "isoflop-provenance", "data": {"source": "synthetic", "dataset": dataset,
                                                       "hyper_parameters": {"dataset": dataset,
                                                                            "max_seq_length": max_seq_length}},
              "not_recorded": {"*": "written by downstream.synthetic_tasks.record_source: the data settings only"}}
    write_atomic(Path(directory) / "isoflop.json", json.dumps(record, indent=2) + "\n")


# -- the data --------------------------------------------------------------------------------------


def split_seed(source: SyntheticSpec, split: str) -> np.random.SeedSequence:
    """The held-out seed of a task split (disjoint from pre-training's: see the module docstring)."""
    return np.random.SeedSequence([TASK_ENTROPY, source.seed, SPLITS.index(split)])


def draw_examples(source: SourceFloors, hidden: str, n_examples: int, length: int, seed) -> dict[str, np.ndarray]:
    """``symbols`` (B, n), the true ``label`` (topic (B,) or states (B, n)) and the Bayes-optimal labeller's
    ``bayes_label``: the argmax of the exact posterior given every symbol of the sequence."""
    symbols, latent = source.draw(n_examples, length, seed)
    post = source.topic_posterior(symbols) if hidden == "topic" else source.state_posterior(symbols)
    return {"symbols": symbols, "label": latent, "bayes_label": post.argmax(-1)}


def reference_levels(labels: np.ndarray, bayes: np.ndarray) -> dict[str, float]:
    """``chance`` (the share of the most frequent label) and ``ceiling`` (the Bayes-optimal labeller's accuracy)
    of evaluation examples, as shares; labels :data:`IGNORE` left out."""
    kept = labels != IGNORE
    counts = np.bincount(labels[kept].ravel())
    return {"chance": float(counts.max() / counts.sum()), "ceiling": float((bayes[kept] == labels[kept]).mean())}


class SyntheticTaskDataModule(TaskDataModule):
    """A synthetic task's splits (train, validation, test), drawn from the encoder's pre-training source.

    Takes :class:`~downstream.data.TaskDataModule`'s arguments (``data_dir`` and ``data_files`` are not read).
    Batches: ``input_ids`` and ``attention_mask`` ``(B, T)`` (every example has one length: no padding),
    ``labels`` and ``bayes_labels``: ``(B,)`` topics, or ``(B, T)`` states with :data:`IGNORE` at [CLS] and [SEP].
    """

    def __init__(self, encoder: str, task: str = "synth-topic-probe", **options: Any) -> None:
        super().__init__(encoder, task=task, **options)
        self.spec, self.source_spec, self.pretrain_length = resolved_spec(task, encoder)
        self.source = make_source(self.source_spec)

    def length(self) -> int:
        """Symbols per example: the pre-training length, within ``max_seq_length`` and the encoder's positions."""
        from transformers import AutoConfig

        positions = getattr(AutoConfig.from_pretrained(self.encoder), "max_position_embeddings", None)
        limits = [x for x in (self.pretrain_length, self.max_seq_length, positions) if x]
        return min(limits) - 2

    def load_raw(self) -> datasets.DatasetDict:
        """Draw the splits (cheap: the posteriors are vectorised over the batch); checks the vocabulary first."""
        if self._raw is None:
            self.symbol_ids()
            hidden, n = hidden_of(self.spec), self.length()
            self._raw = datasets.DatasetDict({
                split: datasets.Dataset.from_dict({k: v.tolist() for k, v in draw_examples(
                    self.source, hidden, size, n, split_seed(self.source_spec, split)).items()})
                for split, size in SPLIT_SIZES.items()})
        return self._raw

    def symbol_ids(self) -> np.ndarray:
        """(N,) the encoder's token id of every symbol ``s0, s1, ...``; one line if its vocabulary lacks one."""
        tokenizer = self.tokenizer
        ids = np.array(tokenizer.convert_tokens_to_ids([f"s{v}" for v in range(self.source_spec.symbols)]))
        if tokenizer.unk_token_id is not None and (ids == tokenizer.unk_token_id).any():
            raise ValueError(f"encoder {self.encoder!r}: its tokenizer lacks the symbols of "
                             f"synthetic:{self.source_spec.kind} (s0 ... s{self.source_spec.symbols - 1})")
        return ids

    def _tokenize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        """``[CLS] x_1 ... x_n [SEP]`` ids, labels (per position: IGNORE at the special tokens)."""
        symbols = np.asarray(ds["symbols"])
        B = len(symbols)
        tok = self.tokenizer
        ids = np.concatenate([np.full((B, 1), tok.cls_token_id), self.symbol_ids()[symbols],
                              np.full((B, 1), tok.sep_token_id)], axis=1)
        columns = {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()}
        for name, target in (("label", "labels"), ("bayes_label", "bayes_labels")):
            values = np.asarray(ds[name])
            if values.ndim == 2:  # per position: nothing to score at [CLS] and [SEP]
                values = np.pad(values, ((0, 0), (1, 1)), constant_values=IGNORE)
            columns[target] = values.tolist()
        return datasets.Dataset.from_dict(columns)

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, collate_fn=_stack, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


def _stack(features: list[dict[str, list]]) -> dict[str, torch.Tensor]:
    """A batch of equal-length examples as tensors."""
    return {k: torch.tensor([f[k] for f in features]) for k in features[0]}


# -- the models: the score, chance and the ceiling ---------------------------------------------------------


class MajorityShare(Metric):
    """The accuracy of always answering the most frequent class of the labels seen (:data:`IGNORE` left out)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, labels: torch.Tensor) -> None:
        kept = labels[labels != IGNORE]
        self.counts += torch.bincount(kept, minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1)


class KnownAnswer:
    """What a model of a synthetic task adds: its classes from the source (:meth:`task_spec`), and after each dev
    pass ``val/bayes_accuracy`` (the Bayes-optimal labeller's ``bayes_labels`` scored by the same metric code as
    the model's predictions) and ``val/chance_accuracy`` (:class:`MajorityShare`)."""

    def task_spec(self, task: str, encoder: str) -> TaskSpec:
        return resolved_spec(task, encoder)[0]

    def add_references(self) -> None:
        self.bayes_metrics = self.metric_collection()
        self.chance_metric = MajorityShare(self.spec.num_labels)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx, dataloader_idx)
        self.bayes_metrics.update(batch["bayes_labels"], batch["labels"])
        self.chance_metric.update(batch["labels"])

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        for name, value in self.bayes_metrics.compute().items():
            self.log(f"val/bayes_{name}", value)
        self.log("val/chance_accuracy", self.chance_metric.compute())
        self.bayes_metrics.reset()
        self.chance_metric.reset()


class SyntheticSequenceClassification(KnownAnswer, SequenceClassification):
    """:class:`~downstream.classifier.SequenceClassification` on ``synth-topic`` (its arguments), with chance and
    the Bayes ceiling logged next to the score."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_references()

    def metric_collection(self) -> MetricCollection:
        return task_metrics(self.spec)


class SyntheticTokenClassification(KnownAnswer, TokenClassification):
    """:class:`~downstream.token_classifier.TokenClassification` on ``synth-state`` (its arguments), with chance and
    the Bayes ceiling logged next to the score."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_references()


# -- what fine-tuning runs for a task ----------------------------------------------------------------------


def synthetic_model(spec: TaskSpec) -> type[SequenceClassification] | None:
    """The LightningModule fine-tuning runs for a synthetic task (the known-answer models); None for another."""
    if not is_synthetic_task(spec):
        return None
    return SyntheticTokenClassification if hidden_of(spec) == "state" else SyntheticSequenceClassification
