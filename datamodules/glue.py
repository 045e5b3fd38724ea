"""GLUE (and isoflop's offline tasks) as a LightningDataModule for fine-tuning encoders.

The tasks, their columns and metrics follow the GLUE benchmark (https://gluebenchmark.com) as the
ELECTRA paper (Clark et al. 2020) reports it::

    | task  | input                    | labels | headline metric (others logged)  | epochs |
    |-------|--------------------------|--------|----------------------------------|--------|
    | cola  | sentence                 | 2      | Matthews correlation             | 3      |
    | sst2  | sentence                 | 2      | accuracy                         | 3      |
    | mrpc  | sentence1, sentence2     | 2      | accuracy (F1)                    | 3      |
    | stsb  | sentence1, sentence2     | 0..5   | Spearman (Pearson), MSE on y / 5 | 10     |
    | qqp   | question1, question2     | 2      | accuracy (F1)                    | 3      |
    | mnli  | premise, hypothesis      | 3      | matched accuracy (mismatched)    | 3      |
    | qnli  | question, sentence       | 2      | accuracy                         | 3      |
    | rte   | sentence1, sentence2     | 2      | accuracy                         | 10     |
    | wnli  | sentence1, sentence2     | 2      | accuracy (not in the average)    | 3      |

Data comes from the Hugging Face hub (``datasets.load_dataset("nyu-mll/glue", task)``) or from
local files with the hub's column names (``.tsv``, ``.csv``, ``.json``, ``.jsonl``, ``.parquet``),
so a machine without network can fine-tune on a copy. The offline tasks built from the embedded
corpus (``docpkg``, ``docpair``; see :mod:`datamodules.downstream`) go through the same class.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import pandas as pd
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

HUB_PATH = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    """What a sequence-classification task is: its inputs, labels, metrics and recipe.

    Attributes:
        name: Task name as used on the command line (``mrpc``).
        text_columns: One column (single-sentence task) or two (sentence-pair task).
        num_labels: Number of classes; 1 means regression (STS-B).
        metrics: Metric names logged as ``val/<name>``; the first is the headline metric.
        epochs: Fine-tuning epochs of ELECTRA's recipe.
        label_names: Class names, index = label id (lets local files spell labels as text).
        val_splits: Dev splits; the first is the headline (MNLI: matched, then mismatched).
        both_orders: Whether ``both_orders`` augmentation applies (MRPC, STS-B: symmetric pairs).
        label_scale: Multiplier on the label (STS-B's 0..5 similarity becomes a 0..1 target).
        test_has_labels: Whether the ``test`` split is labelled (not on GLUE; yes offline).
        group: ``glue`` or ``offline``: which average the task belongs to.
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    epochs: int = 3
    label_names: tuple[str, ...] = ()
    val_splits: tuple[str, ...] = ("validation",)
    both_orders: bool = False
    label_scale: float = 1.0
    test_has_labels: bool = False
    group: str = "glue"

    @property
    def metric(self) -> str:
        """The headline metric (what the GLUE average uses)."""
        return self.metrics[0]

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def metric_suffix(self, val_index: int) -> str:
        """Key suffix of a dev split's metrics: "" for the headline split, ``_mismatched`` for MNLI's second."""
        if val_index == 0:
            return ""
        return "_" + self.val_splits[val_index].removeprefix("validation_")


_BINARY_ENTAIL = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", ("sentence",), 2, ("mcc",), label_names=("unacceptable", "acceptable")),
        TaskSpec("sst2", ("sentence",), 2, ("accuracy",), label_names=("negative", "positive")),
        TaskSpec("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"),
                 label_names=("not_equivalent", "equivalent"), both_orders=True),
        TaskSpec("stsb", ("sentence1", "sentence2"), 1, ("spearman", "pearson"), epochs=10,
                 both_orders=True, label_scale=1 / 5),
        TaskSpec("qqp", ("question1", "question2"), 2, ("accuracy", "f1"),
                 label_names=("not_duplicate", "duplicate")),
        TaskSpec("mnli", ("premise", "hypothesis"), 3, ("accuracy",),
                 label_names=("entailment", "neutral", "contradiction"),
                 val_splits=("validation_matched", "validation_mismatched")),
        TaskSpec("qnli", ("question", "sentence"), 2, ("accuracy",), label_names=_BINARY_ENTAIL),
        TaskSpec("rte", ("sentence1", "sentence2"), 2, ("accuracy",), epochs=10, label_names=_BINARY_ENTAIL),
        # WNLI's label order on the hub is the reverse of RTE's/QNLI's.
        TaskSpec("wnli", ("sentence1", "sentence2"), 2, ("accuracy",), label_names=("not_entailment", "entailment")),
    )
}


def all_tasks() -> dict[str, TaskSpec]:
    """Every task name accepted anywhere a GLUE task name is: GLUE's, then the offline ones."""
    # Imported here, not at the top: downstream.py imports TaskSpec from this module.
    from datamodules.downstream import OFFLINE_TASKS

    return {**GLUE_TASKS, **OFFLINE_TASKS}


def get_task(name: str) -> TaskSpec:
    """The spec of one task; an unknown name raises a ValueError listing the valid ones."""
    tasks = all_tasks()
    key = name.strip().lower().replace("-", "")
    if key not in tasks:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(tasks)}")
    return tasks[key]


# --------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------

_EXTENSIONS = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
# File stems accepted for each split (GLUE's own downloads say "dev", the hub says "validation").
_SPLIT_STEMS = {
    "train": ("train",),
    "validation": ("validation", "dev"),
    "validation_matched": ("validation_matched", "dev_matched"),
    "validation_mismatched": ("validation_mismatched", "dev_mismatched"),
    "test": ("test",),
}


def _read_table(path: Path) -> pd.DataFrame:
    """Read one local file. Text columns stay text: "NA" or "null" in a sentence is a word, not missing."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        # QUOTE_NONE for TSV: GLUE sentences contain unbalanced quotes that must stay as they are.
        sep, quoting = ("\t", 3) if suffix == ".tsv" else (",", 0)
        return pd.read_csv(path, sep=sep, quoting=quoting, dtype=str, keep_default_na=False)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        with open(path) as f:
            is_array = f.read(4096).lstrip().startswith("[")  # records array, else JSON lines
        return pd.read_json(path, lines=not is_array, dtype=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use one of {', '.join(_EXTENSIONS)})")


def find_local_files(spec: TaskSpec, data_dir: str | os.PathLike) -> dict[str, Path]:
    """Locate a task's split files under ``data_dir``.

    Looks in ``data_dir/<task>/`` (also GLUE's own folder names such as ``SST-2``, ``STS-B``,
    matched ignoring case and dashes) and then in ``data_dir`` itself, for ``train.<ext>`` and each
    dev split (``validation.<ext>`` or ``dev.<ext>``; MNLI: ``validation_matched`` /
    ``dev_matched`` and ``..._mismatched``).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} is not a directory")
    candidates = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower().replace("-", "") == spec.name]
    candidates.append(root)
    for folder in candidates:
        files: dict[str, Path] = {}
        for split in ("train", *spec.val_splits, "test"):
            for stem in _SPLIT_STEMS[split]:
                hits = [folder / f"{stem}{ext}" for ext in _EXTENSIONS if (folder / f"{stem}{ext}").is_file()]
                if hits:
                    files[split] = hits[0]
                    break
        if "train" in files:
            missing = [s for s in spec.val_splits if s not in files]
            if missing:
                raise FileNotFoundError(
                    f"{folder}: task {spec.name} has train data but no {' / '.join(missing)} file "
                    f"(expected e.g. {missing[0]}.tsv)"
                )
            return files
    raise FileNotFoundError(
        f"no train file for task {spec.name} under {root} (looked for train{{{','.join(_EXTENSIONS)}}} "
        f"in {', '.join(str(c) for c in candidates)})"
    )


def _to_label_ids(values: list[Any], spec: TaskSpec, where: str) -> list[float] | list[int]:
    """Labels as floats (regression) or class ids; class names are accepted where the task has them."""
    if spec.is_regression:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: column 'label' must hold numbers for task {spec.name}") from None
    names = {n: i for i, n in enumerate(spec.label_names)}
    out: list[int] = []
    for v in values:
        if isinstance(v, str) and v.strip() in names:
            out.append(names[v.strip()])
            continue
        try:
            label = int(float(v))
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: label {v!r} is neither a class id nor one of {list(spec.label_names)}"
            ) from None
        if not 0 <= label < spec.num_labels:
            raise ValueError(
                f"{where}: label {label} outside 0..{spec.num_labels - 1} for task {spec.name} "
                "(unlabelled test splits use -1)"
            )
        out.append(label)
    return out


def _check_columns(columns: list[str], spec: TaskSpec, where: str) -> None:
    for column in (*spec.text_columns, "label"):
        if column not in columns:
            raise ValueError(
                f"{where}: missing column {column!r} (task {spec.name} needs "
                f"{', '.join((*spec.text_columns, 'label'))}; found {', '.join(map(str, columns)) or 'none'})"
            )


def load_local_split(path: str | os.PathLike, spec: TaskSpec) -> datasets.Dataset:
    """One split from a local file, checked and normalised to ``text columns + label``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found (task {spec.name})")
    frame = _read_table(path)
    _check_columns(list(frame.columns), spec, str(path))
    table: dict[str, list] = {c: [("" if v is None else str(v)) for v in frame[c].tolist()] for c in spec.text_columns}
    table["label"] = _to_label_ids(frame["label"].tolist(), spec, str(path))
    return datasets.Dataset.from_dict(table)


def _normalise_hub_split(ds: datasets.Dataset, spec: TaskSpec, where: str) -> datasets.Dataset:
    _check_columns(ds.column_names, spec, where)
    ds = ds.select_columns([*spec.text_columns, "label"])
    if not spec.is_regression:
        # Hub labels are ClassLabel ids already; still reject -1 (unlabelled) rows loudly.
        _to_label_ids(sorted(set(ds["label"])), spec, where)
    return ds


# --------------------------------------------------------------------------------------------
# The datamodule
# --------------------------------------------------------------------------------------------


class GlueDataModule(L.LightningDataModule):
    """One GLUE task (or offline task), tokenised with the encoder's own tokenizer.

    Batches are dicts ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the encoder has
    segment embeddings), each ``(B, T)`` padded to the longest sequence in the batch, and ``labels``
    ``(B,)``: class ids, or float targets for regression (STS-B: similarity / 5). There is one dev
    dataloader per entry of ``spec.val_splits`` (two for MNLI: matched, mismatched).
    """

    def __init__(
        self,
        encoder: str,
        task: str = "sst2",
        data_dir: str | None = None,
        data_files: dict[str, str] | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        both_orders: bool = True,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        """
        Args:
            encoder: Checkpoint directory (or hub name) whose tokenizer is used: ``AutoTokenizer.from_pretrained(encoder)``.
            task: A GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or an offline one (docpkg, docpair).
            data_dir: Local GLUE files (hub column names): ``data_dir/<task>/train.tsv`` and ``validation.tsv``
                (or ``dev``; MNLI ``validation_matched``/``validation_mismatched``); tsv, csv, json, jsonl or
                parquet. None loads ``nyu-mll/glue`` from the Hugging Face hub.
            data_files: Explicit files per split (``{"train": ..., "validation": ...}``); overrides ``data_dir``.
            max_length: Truncate inputs (both segments together) to this many tokens.
            batch_size: Training batch size (per device).
            eval_batch_size: Dev batch size; defaults to ``batch_size``.
            both_orders: Add each training pair in swapped order too, for the symmetric tasks (MRPC, STS-B), as ELECTRA does.
            max_train_examples: Keep only this many training examples (a fixed random subset, before both_orders); for quick runs.
            max_eval_examples: Keep only this many examples of each dev/test split (a fixed random subset).
            num_workers: DataLoader worker processes.
            cache_dir: Where offline tasks are built and cached (default: the corpus cache, ``$ISOFLOP_CACHE``).
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task)
        self.encoder = encoder
        self.data_dir = data_dir
        self.data_files = dict(data_files) if data_files else None
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.both_orders = both_orders
        self.max_train_examples = max_train_examples
        self.max_eval_examples = max_eval_examples
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self._raw: datasets.DatasetDict | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, datasets.Dataset] = {}

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.encoder)
        return self._tokenizer

    # -- raw data ---------------------------------------------------------------------------

    def splits(self) -> tuple[str, ...]:
        """Splits this module uses: train, the dev splits, and test where it is labelled."""
        return ("train", *self.spec.val_splits, *(("test",) if self.spec.test_has_labels else ()))

    def load_raw(self) -> datasets.DatasetDict:
        """Load and check the untokenised splits (columns, labels); cheap to call again.

        Raises a ValueError naming the file and column when a local file lacks a column the task
        needs, so that bad input fails before any training compute.
        """
        if self._raw is not None:
            return self._raw
        spec = self.spec
        raw: dict[str, datasets.Dataset] = {}
        if spec.group == "offline":
            from datamodules.downstream import load_offline_task

            built = load_offline_task(spec.name, cache_dir=self.cache_dir)
            raw = {split: built[split] for split in self.splits()}
        elif self.data_files or self.data_dir:
            files = dict(self.data_files) if self.data_files else find_local_files(spec, self.data_dir)
            for split in ("train", *spec.val_splits):
                if split not in files:
                    raise ValueError(f"task {spec.name}: no file given for split {split!r} (got {sorted(files)})")
                raw[split] = load_local_split(files[split], spec)
        else:
            hub = datasets.load_dataset(HUB_PATH, spec.name)
            for split in ("train", *spec.val_splits):
                raw[split] = _normalise_hub_split(hub[split], spec, f"{HUB_PATH}/{spec.name}:{split}")
        self._raw = datasets.DatasetDict(raw)
        return self._raw

    # -- Lightning hooks --------------------------------------------------------------------

    def prepare_data(self) -> None:
        # Runs on one process per node: downloads the hub copy / builds the offline task cache.
        self.load_raw()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # tokenise once, even when a Trainer calls setup per fit/validate
            return
        raw = self.load_raw()
        for split in self.splits():
            ds = raw[split]
            limit = self.max_train_examples if split == "train" else self.max_eval_examples
            if limit is not None and limit < len(ds):
                # A fixed subset, independent of the fine-tuning seed, so all seeds see the same data.
                ds = ds.shuffle(seed=0).select(range(limit))
            if split == "train" and self.both_orders and self.spec.both_orders:
                a, b = self.spec.text_columns
                swapped = ds.map(lambda ex: {a: ex[b], b: ex[a]}, desc="both orders")
                ds = datasets.concatenate_datasets([ds, swapped])
            self.datasets[split] = self._tokenize(ds, split)

    def _tokenize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        spec, tokenizer = self.spec, self.tokenizer
        config = AutoConfig.from_pretrained(self.encoder)
        # Segment ids only where the encoder has segment embeddings (BERT/ELECTRA: 2; RoBERTa: 1).
        with_types = getattr(config, "type_vocab_size", 1) > 1 and len(spec.text_columns) == 2
        max_length = self.max_length
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and positions < max_length:
            # A small pre-training preset may have fewer positions than GLUE's usual 128.
            warnings.warn(f"max_length {max_length} > the encoder's {positions} positions; truncating to {positions}")
            max_length = positions

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = [batch[c] for c in spec.text_columns]
            enc = tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=with_types)
            keep = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            keep["labels"] = [y * spec.label_scale for y in batch["label"]] if spec.is_regression else batch["label"]
            return keep

        from datamodules.tokenizer import tokenizer_hash

        # An explicit fingerprint (the closure cannot be hashed) lets datasets reuse cached maps.
        key = f"{ds._fingerprint}|{tokenizer_hash(tokenizer)}|{max_length}|{with_types}|{spec.name}|{split}"
        return ds.map(
            encode,
            batched=True,
            remove_columns=ds.column_names,
            new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
            desc=f"tokenizing {spec.name}:{split}",
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            # Pads each batch to its own longest sequence (dynamic padding).
            collate_fn=DataCollatorWithPadding(self.tokenizer),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(split, train=False) for split in self.spec.val_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader:
        if not self.spec.test_has_labels:
            raise ValueError(f"task {self.spec.name} has no labelled test split (GLUE test labels are hidden)")
        return self._loader("test", train=False)
