"""One downstream task (GLUE or offline) as a LightningDataModule for fine-tuning an encoder.

Where the raw splits come from is decided per task: the offline tasks are built from the embedded
corpus (:mod:`downstream.offline`), GLUE tasks come from local files or the hub
(:mod:`downstream.glue`). From there on every task is handled alike: tokenised with the encoder's
own tokenizer, batched with dynamic padding, one dev loader per dev split.
"""

from __future__ import annotations

import hashlib
import warnings

import datasets
import lightning as L
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from datamodules.tokenizer import tokenizer_hash
from downstream.glue import load_hub_task, load_local_task
from downstream.offline import load_offline_task
from downstream.own import load_own_task
from downstream.submission import load_test_splits
from downstream.tasks import get_task


# (encoder, max_seq_length) pairs already warned about truncation in this process.
_TRUNCATION_WARNED: set[tuple[str, int]] = set()


class TaskDataModule(L.LightningDataModule):
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
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        both_orders: bool = True,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        predict_test: bool = False,
    ) -> None:
        """
        Args:
            encoder: Checkpoint directory (or hub name) whose tokenizer is used: ``AutoTokenizer.from_pretrained(encoder)``.
            task: A GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), an offline one (docpkg, docpkg-probe, docpair),
                or a directory of your own data written as a path (:mod:`downstream.own`).
            data_dir: Local GLUE files (hub column names): ``data_dir/<task>/train.tsv`` and ``validation.tsv``
                (or ``dev``; MNLI ``validation_matched``/``validation_mismatched``); tsv, csv, json, jsonl or
                parquet. None loads ``nyu-mll/glue`` from the Hugging Face hub.
            data_files: Explicit files per split (``{"train": ..., "validation": ...}``); overrides ``data_dir``.
            max_seq_length: Truncate inputs (both segments together) to this many tokens.
            batch_size: Training batch size (per device).
            eval_batch_size: Dev batch size; defaults to ``batch_size``.
            both_orders: Add each training pair in swapped order too, for the symmetric tasks (MRPC, STS-B), as ELECTRA does.
            max_train_examples: Keep only this many training examples (a fixed random subset, before both_orders); for quick runs.
            max_eval_examples: Keep only this many examples of each dev/test split (a fixed random subset).
            num_workers: DataLoader worker processes.
            cache_dir: Where offline tasks are built and cached (default: isoflop's cache, ``$ISOFLOP_CACHE``).
            predict_test: Also load the unlabelled test splits (:func:`downstream.submission.load_test_splits`: every
                row, whatever ``max_eval_examples``) for :meth:`predict_dataloaders`.
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task)
        self.encoder = encoder
        self.data_dir = data_dir
        self.data_files = dict(data_files) if data_files else None
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.both_orders = both_orders
        self.max_train_examples = max_train_examples
        self.max_eval_examples = max_eval_examples
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.predict_test = predict_test
        self.test_raw: dict[str, datasets.Dataset] = {}  # unlabelled test splits, with their ``idx``
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
        if spec.group == "offline":
            built = load_offline_task(spec.dataset, cache_dir=self.cache_dir)
            raw = {split: built[split] for split in self.splits()}
        elif spec.group == "own":
            raw = load_own_task(spec.dataset)
        elif self.data_files or self.data_dir:
            raw = load_local_task(spec, self.data_dir, self.data_files)
        else:
            raw = load_hub_task(spec)
        if self.predict_test:
            self.test_raw = load_test_splits(spec, self.data_dir)
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
        for split, ds in self.test_raw.items():  # whole: a submission needs every row
            self.datasets[f"predict_{split}"] = self._tokenize(ds, f"predict_{split}")

    def _tokenize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        spec, tokenizer = self.spec, self.tokenizer
        config = AutoConfig.from_pretrained(self.encoder)
        # Segment ids only where the encoder has segment embeddings (BERT/ELECTRA: 2; RoBERTa: 1).
        with_types = getattr(config, "type_vocab_size", 1) > 1 and len(spec.text_columns) == 2
        max_seq_length = self.max_seq_length
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and positions < max_seq_length:
            # A small pre-training preset may have fewer positions than GLUE's usual 128. Said once per
            # encoder and length: compare fine-tunes every task and seed of an encoder in one process.
            if (self.encoder, max_seq_length) not in _TRUNCATION_WARNED:
                _TRUNCATION_WARNED.add((self.encoder, max_seq_length))
                warnings.warn(f"max_seq_length {max_seq_length} > the encoder's {positions} positions; truncating to {positions}")
            max_seq_length = positions

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = [batch[c] for c in spec.text_columns]
            enc = tokenizer(*texts, truncation=True, max_length=max_seq_length, return_token_type_ids=with_types)
            keep = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            keep["labels"] = [y * spec.label_scale for y in batch["label"]] if spec.is_regression else batch["label"]
            return keep

        # An explicit fingerprint (the closure cannot be hashed) lets datasets reuse cached maps. No
        # progress bar: dev sets take a fraction of a second, and every task, split and encoder has one.
        key = f"{ds._fingerprint}|{tokenizer_hash(tokenizer)}|{max_seq_length}|{with_types}|{spec.name}|{split}"
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            return ds.map(encode, batched=True, remove_columns=ds.column_names,
                          new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16])
        finally:
            if bars:
                datasets.enable_progress_bars()

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

    def predict_dataloaders(self) -> dict[str, DataLoader]:
        """One loader per unlabelled test split (``predict_test``), in file order; their ``idx`` in :attr:`test_raw`."""
        return {split: self._loader(f"predict_{split}", train=False) for split in self.test_raw}
