"""The pre-training data, shared by every objective and knowing nothing about any of them.

Documents (a Hugging Face dataset, local text/JSON/Parquet files, or the embedded CPython-docs
corpus) are split into sentences, tokenised, and packed ELECTRA-style into examples
``[CLS] A [SEP] B [SEP]`` of up to ``max_seq_length`` tokens, with ``token_type_ids`` 0 for the
first segment and 1 for the second. Sentences run on across documents so that short documents do
not leave examples mostly padding. Each example also carries ``special_tokens_mask`` and
``word_ids`` (the word each token belongs to, -1 for special tokens) so that objectives can mask
whole words; the datamodule never masks anything itself.

Tokenisation and packing go through ``datasets.map`` (batched, multi-process, cached under an
explicit fingerprint of source, tokenizer and settings), so a second run reuses the cache; or, with
``streaming=True``, happen on the fly in the loader's workers (``datamodules.streaming``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.batch import DEFAULT_BATCH_SIZE, split_global_batch
from datamodules.cache import default_cache_dir
from datamodules.files import COMPRESSIONS, FORMATS, check_data_files, data_format
from datamodules.sampler import ResumableSampler
from datamodules.streaming import PackedStream, StreamTracker, source_of, training_documents, validation_examples
from datamodules.synthetic import SyntheticSpec, is_synthetic, synthetic_tokenizer
from datamodules.synthetic_hmm import make_source
from datamodules.tokenizer import cached_wordpiece, load_tokenizer, tokenizer_hash

PACK_VERSION = "pack-3"  # pack-3: examples filled to max_seq_length; with short_seq_prob 0 no short last example
# Sentence boundary: end punctuation followed by space and an upper-case letter or digit, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n+")


def split_sentences(text: str) -> list[str]:
    """Split a document into sentences (a simple rule; ELECTRA's corpus is one sentence per line)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def resolve_data_files(data_files: str | list[str]) -> list[str]:
    """Expand globs; one-line error naming what was looked for when nothing matches."""
    patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"no data file matches {pattern!r} (looked in {os.path.abspath(os.path.dirname(pattern) or '.')})")
        found += matches
    formats = {data_format(f) for f in found}
    if None in formats or len(formats) != 1:
        raise ValueError(f"data_files must all be one of {', '.join(sorted(FORMATS))} files (text and JSON may end "
                         f"in {', '.join(sorted(COMPRESSIONS))}), of one format, got {found[:5]}")
    return found


class Packer:
    """Turns a batch of documents into packed examples (a picklable callable for ``datasets.map``)."""

    def __init__(self, tokenizer, text_column: str, max_seq_length: int, short_seq_prob: float,
                 single_segment_prob: float, seed: int):
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.max_len = max_seq_length
        self.short_seq_prob = short_seq_prob
        self.single_segment_prob = single_segment_prob
        self.seed = seed
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        # Seeded by the batch's first document: the same data and settings give the same examples.
        rng = random.Random(self.seed * 1_000_003 + indices[0])
        sentences = [s for text in batch[self.text_column] if text for s in split_sentences(text)]
        out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "special_tokens_mask": [], "word_ids": []}
        if not sentences:
            return out
        enc = self.tokenizer(sentences, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False)
        chunk: list[tuple[list[int], list[int]]] = []
        length, target = 0, self._target(rng)
        for i, ids in enumerate(enc["input_ids"]):
            if not ids:
                continue
            words = [-1 if w is None else w for w in enc.word_ids(i)]
            for start in range(0, len(ids), self.max_len - 3):  # split over-long sentences
                chunk.append((ids[start:start + self.max_len - 3], words[start:start + self.max_len - 3]))
                length += len(chunk[-1][0])
                if length >= target - 2:  # enough for [CLS] A [SEP] B [SEP], and for [CLS] A [SEP] alone
                    self._emit(chunk, target, rng, out)
                    chunk, length, target = [], 0, self._target(rng)
        if chunk and self.short_seq_prob > 0:
            # The documents' last sentences fill less than an example. Kept (padded) where short examples are
            # wanted anyway; dropped where every example is full (at most one example's tokens per batch of
            # documents), so that training batches carry no padding and attention needs no mask.
            self._emit(chunk, target, rng, out)
        return out

    def _target(self, rng: random.Random) -> int:
        # Mostly full-length examples; a few short ones so the model also sees short inputs.
        return rng.randint(5, self.max_len) if rng.random() < self.short_seq_prob else self.max_len

    def _emit(self, chunk, target: int, rng: random.Random, out: dict[str, list]) -> None:
        first_target = 10**9 if rng.random() < self.single_segment_prob else (target - 3) // 2
        a: list[tuple[list[int], list[int]]] = []
        b: list[tuple[list[int], list[int]]] = []
        a_len = 0
        for sentence in chunk:
            if not b and (not a or a_len + len(sentence[0]) < first_target):
                a.append(sentence)
                a_len += len(sentence[0])
            else:
                b.append(sentence)
        if b and sum(len(s[0]) for s in a) >= self.max_len - 3:
            a, b = a + b, []  # no room for B and its [SEP]: A alone fills the example
        ids_a, words_a = self._concat(a, 0)
        ids_a, words_a = ids_a[: self.max_len - 2], words_a[: self.max_len - 2]
        n_words = max(words_a, default=-1) + 1
        ids_b, words_b = self._concat(b, n_words)
        room = max(0, self.max_len - len(ids_a) - 3)
        ids_b, words_b = ids_b[:room], words_b[:room]
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        ids = [cls] + ids_a + [sep]
        types = [0] * len(ids)
        word_ids = [-1] + words_a + [-1]
        if ids_b:
            ids += ids_b + [sep]
            types += [1] * (len(ids_b) + 1)
            word_ids += words_b + [-1]
        special = [1 if t in self.special_ids else 0 for t in ids]
        # Special tokens have no word (-1); other tokens without a word id (-2) become words of their own.
        word_ids = [-1 if s else (w if w >= 0 else -2) for w, s in zip(word_ids, special)]
        out["input_ids"].append(ids)
        out["token_type_ids"].append(types)
        out["special_tokens_mask"].append(special)
        out["word_ids"].append(word_ids)

    @staticmethod
    def _concat(sentences, offset: int) -> tuple[list[int], list[int]]:
        """Concatenate sentences, renumbering word ids so each word in the example is unique."""
        ids: list[int] = []
        words: list[int] = []
        for s_ids, s_words in sentences:
            ids += s_ids
            words += [offset + w if w >= 0 else -1 for w in s_words]
            offset = max(words, default=offset - 1) + 1
        return ids, words


def collate(examples: list[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int = 8,
            length: int | None = None) -> dict[str, Any]:
    """Pad a list of packed examples to ``length``, or to the longest (rounded up to a multiple of 8, for
    tensor cores).

    Returns (B, L) tensors: input_ids, token_type_ids, attention_mask (long), special_tokens_mask
    (bool) and word_ids (long, -1 for special tokens and padding; unique per word within a row); ``padded``,
    a Python bool: whether any row has padding; and,
    when the examples carry them, ``example_id`` (B,) and the stream position of the last example
    (``stream_position``, which the datamodule takes off before the batch reaches the model).
    """
    lengths = [len(e["input_ids"]) for e in examples]
    L_ = length if length is not None else -(-max(lengths) // pad_to_multiple_of) * pad_to_multiple_of
    B = len(examples)
    input_ids = np.full((B, L_), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((B, L_), dtype=np.int64)
    attention_mask = np.zeros((B, L_), dtype=np.int64)
    special = np.zeros((B, L_), dtype=bool)
    word_ids = np.full((B, L_), -1, dtype=np.int64)
    for i, (e, n) in enumerate(zip(examples, lengths)):
        input_ids[i, :n] = e["input_ids"]
        token_type_ids[i, :n] = e["token_type_ids"]
        attention_mask[i, :n] = 1
        special[i, :n] = e["special_tokens_mask"]
        w = np.asarray(e["word_ids"], dtype=np.int64)
        # Pieces without a word id (-2) become words of their own, numbered after the real words.
        lone = w == -2
        w[lone] = w.max(initial=-1) + 1 + np.arange(lone.sum())
        word_ids[i, :n] = w
    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "special_tokens_mask": torch.from_numpy(special),
        "word_ids": torch.from_numpy(word_ids),
    }
    # Known here, on the host: whether any row is padded. Objectives run attention without a mask on a
    # batch that is not (objectives.base.PretrainingObjective.attention_mask), which lets SDPA take its
    # flash kernel and needs no device-side check of the mask.
    batch["padded"] = bool(min(lengths) < L_)
    if "example_id" in examples[0]:
        batch["example_id"] = torch.tensor([e["example_id"] for e in examples], dtype=torch.long)
    if "stream_position" in examples[-1]:
        batch["stream_position"] = examples[-1]["stream_position"]
    return batch


class Indexed(torch.utils.data.Dataset):
    """A map-style dataset whose examples also carry their index (``example_id``): which examples a rank
    trained on can be told from its batches."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "example_id": index}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        rows = self.dataset.__getitems__(indices)
        return [{**row, "example_id": i} for row, i in zip(rows, indices)]


class PretrainingDataModule(L.LightningDataModule):
    """Packed ``[CLS] A [SEP] B [SEP]`` examples for pre-training, from any text source.

    Args:
        dataset: a Hugging Face dataset name (e.g. ``Salesforce/wikitext``), a directory written by
            ``datasets.save_to_disk``, or a synthetic source with known floors, ``synthetic:KIND[,key=value...]``
            (``chain``, ``topics``, ``chain+topics``, ``hmm``; see ``datamodules.synthetic``). ``None`` and no
            ``data_files``: the embedded CPython-docs corpus.
        dataset_config: the dataset's configuration (e.g. ``wikitext-103-raw-v1``).
        data_files: local ``.txt`` (one document per line), ``.json``/``.jsonl`` or ``.parquet`` files
            (paths or globs) with a ``text_column``.
        text_column: the column that holds the document text.
        tokenizer: a tokenizer name or path to load; ``None`` trains a WordPiece tokenizer on the
            training split (cached on disk and reused).
        vocab_size: size of the trained tokenizer's vocabulary (must equal the encoder's).
        lowercase: lower-case and strip accents before WordPiece (the paper's uncased setting).
        max_seq_length: longest example in tokens, [CLS] and [SEP]s included.
        batch_size: examples per device in one forward and backward pass, the micro-batch (default 32).
            Without ``global_batch_size`` the global batch is this x devices x nodes x
            ``trainer.accumulate_grad_batches``. With it: unset, the global batch is dealt over the processes
            (and over the accumulation, when one is given); given, the accumulation makes up the rest. A
            ``global_batch_size`` given without ``batch_size`` (on the command line, in a preset file or in a
            sweep's settings) replaces the ``batch_size`` of the preset below it.
        global_batch_size: examples in one optimiser step over every device and accumulated batch, as the
            papers give their batch (ELECTRA, Table 6: 128, 256 and 2048 for Small, Base and Large). The
            per-device batch and ``trainer.accumulate_grad_batches`` are derived from it and the number of
            processes (devices x nodes) before the run starts (``datamodules.batch.split_global_batch``); one
            that does not split evenly, or an accumulation (other than 1) that disagrees, is an error. Unset
            (the default): the global batch is ``batch_size`` x processes x accumulation.
        val_fraction: share of documents held out for validation when the source has no validation split.
        max_val_examples: cap on validation examples (validation then costs little beside training).
        short_seq_prob: share of examples packed to a random shorter length (ELECTRA's official
            ``build_pretraining_dataset.py`` uses 0.05, BERT's 0.1). 0 (the default) fills every training example
            to ``max_seq_length``: batches then hold no padding, and the encoders run attention with no mask
            (flash attention on GPUs). Any other value pads short examples, and nearly every batch then needs
            an attention mask (at 0.05 and batch 128, all but 0.1% of them): on a GPU, SDPA's slower
            masked kernels instead of flash.
        single_segment_prob: share of examples with one segment only (no B).
        seed: seed for the split, packing and shuffling; the same seed gives the same order.
        num_workers: DataLoader worker processes.
        num_proc: processes for tokenisation and packing (``None``: one).
        cache_dir: where the corpus, tokenizers and packed data are cached (default ``$ISOFLOP_CACHE``
            or ``~/.cache/isoflop``).
        max_documents: use only the first N training documents (quick experiments).
        streaming: read the source as a stream (``datamodules.streaming``): tokenised and packed on the fly in
            the loader's workers, split by rank and worker, resumable; for corpora larger than the machine.
            Training then has no epochs: it ends at ``max_steps`` or the FLOPs budget.
        sample_documents: streaming: the first N training documents train the tokenizer (when none is
            given); at most this many documents are read for the validation examples.
        shuffle_buffer: streaming: documents are shuffled in a buffer of this size, seeded by ``seed`` and
            the pass over the stream (0: the source's order).
    """

    def __init__(
        self,
        dataset: str | None = None,
        dataset_config: str | None = None,
        data_files: list[str] | str | None = None,
        text_column: str = "text",
        tokenizer: str | None = None,
        vocab_size: int = 30522,
        lowercase: bool = True,
        max_seq_length: int = 128,
        batch_size: int | None = None,
        global_batch_size: int | None = None,
        val_fraction: float = 0.02,
        max_val_examples: int | None = 1024,
        short_seq_prob: float = 0.0,
        single_segment_prob: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        max_documents: int | None = None,
        streaming: bool = False,
        sample_documents: int = 100_000,
        shuffle_buffer: int = 10_000,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs its whole resolved configuration instead
        if max_seq_length < 8:
            raise ValueError(f"max_seq_length must be at least 8, got {max_seq_length}")
        if not 0.0 <= short_seq_prob < 1.0:
            raise ValueError(f"short_seq_prob must lie in [0, 1), got {short_seq_prob}: 0 fills every example")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if global_batch_size is not None and global_batch_size < 1:
            raise ValueError(f"global_batch_size must be at least 1, got {global_batch_size}")
        if batch_size is None and global_batch_size is None:
            self.hparams.batch_size = DEFAULT_BATCH_SIZE
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        if dataset is not None and data_files is not None:
            raise ValueError("give either dataset or data_files, not both")
        if sample_documents < 1:
            raise ValueError(f"sample_documents must be at least 1, got {sample_documents}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be 0 or more, got {shuffle_buffer}")
        if streaming and is_synthetic(dataset):
            raise ValueError("streaming reads a text source; a synthetic dataset is generated in memory: drop "
                             "--data.streaming")
        # A synthetic source is parsed (and a bad one refused) now; it has its own tokenizer.
        self.synthetic = make_source(SyntheticSpec.parse(dataset)) if is_synthetic(dataset) else None
        if self.synthetic is not None and tokenizer is not None:
            raise ValueError("a synthetic dataset brings its own vocabulary: leave --data.tokenizer unset")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        # Bad local paths and bad files (empty, not UTF-8, malformed, no text) fail here, at
        # construction, before anything is computed or cached.
        self.data_files = resolve_data_files(data_files) if data_files is not None else None
        if self.data_files is not None:
            fmt = data_format(self.data_files[0])
            check_data_files(self.data_files, fmt, text_column, self.cache_dir)
        self._resume: dict | None = None  # where the next training epoch starts (resume_at)
        self.stream_source = None  # streaming: a datamodules.streaming.StreamSource
        self.holdout_every: int | None = None  # streaming without a validation split: every k-th document of each shard
        self.tracker = StreamTracker()  # streaming: positions of the consumed training batches
        self.train_sampler: ResumableSampler | None = None
        self._tokenizer = None
        self.fingerprint: dict[str, Any] = {}
        self.train_dataset = None
        self.val_dataset = None

    # -- sources -------------------------------------------------------------------------------

    def _load_documents(self):
        """(train, validation or None) document datasets, plus a fingerprint of the source."""
        import datasets

        hp = self.hparams
        if self.data_files is not None:
            fmt = data_format(self.data_files[0])
            ds = datasets.load_dataset(fmt, data_files=self.data_files, split="train")
            fp = {"source": "files", "files": self.data_files, "fingerprint": ds._fingerprint}
            splits = {"train": ds}
        elif hp.dataset is None:
            from datamodules.corpus import corpus_fingerprint, load_corpus

            ds = load_corpus(self.cache_dir)
            fp = {"source": "embedded", **corpus_fingerprint(self.cache_dir)}
            splits = {"train": ds}
        elif os.path.isdir(hp.dataset) and (Path(hp.dataset) / "dataset_info.json").exists() or (
            os.path.isdir(hp.dataset) and (Path(hp.dataset) / "dataset_dict.json").exists()
        ):
            loaded = datasets.load_from_disk(hp.dataset)
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            fp = {"source": "disk", "path": os.path.abspath(hp.dataset), "fingerprint": splits["train"]._fingerprint}
        else:
            try:
                loaded = datasets.load_dataset(hp.dataset, hp.dataset_config)
            except Exception as err:  # datasets raises many types; all mean "could not get it"
                raise ValueError(
                    f"could not load dataset {hp.dataset!r} (config {hp.dataset_config!r}) from the Hugging Face hub "
                    f"or a local directory: {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
                    "Check the name, or pass local files with --data.data_files"
                ) from None
            splits = dict(loaded)
            if "train" not in splits:
                raise ValueError(f"dataset {hp.dataset!r} has no 'train' split (it has {', '.join(splits)})")
            fp = {"source": "hub", "name": hp.dataset, "config": hp.dataset_config, "fingerprint": splits["train"]._fingerprint}
        train = splits["train"]
        if hp.text_column not in train.column_names:
            raise ValueError(f"the data has no column {hp.text_column!r} (it has {', '.join(train.column_names)}): set --data.text_column")
        val = splits.get("validation")
        if val is None:
            parts = train.train_test_split(test_size=hp.val_fraction, seed=hp.seed, shuffle=True)
            train, val = parts["train"], parts["test"]
        if hp.max_documents is not None:
            train = train.select(range(min(hp.max_documents, len(train))))
        return train, val, fp

    # -- tokenizer -----------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The tokenizer, loaded or trained (and cached) on first use."""
        if self._tokenizer is None:
            self._prepare_tokenizer()
        return self._tokenizer

    def _prepare_tokenizer(self, train_docs=None, source_fp=None) -> None:
        hp = self.hparams
        if self.synthetic is not None:
            self._tokenizer = synthetic_tokenizer(self.synthetic.spec, hp.vocab_size)
            return
        if hp.tokenizer is not None:
            self._tokenizer = load_tokenizer(hp.tokenizer)
            return
        if hp.streaming:
            self._stream_tokenizer()
            return
        if train_docs is None:
            train_docs, _, source_fp = self._load_documents()
        column = hp.text_column
        if not any(t and t.strip() for start in range(0, len(train_docs), 1000)
                   for t in train_docs[start:start + 1000][column]):
            # Before training: a tokenizer trained on nothing would stay in the cache.
            raise ValueError(f"the training documents have no text in column {column!r} (all empty or blank): "
                             "check the data source or set --data.text_column")

        def texts():
            for start in range(0, len(train_docs), 1000):
                yield from (t for t in train_docs[start:start + 1000][column] if t)

        self._tokenizer = cached_wordpiece(
            texts, {"source": source_fp, "documents": len(train_docs)}, self.cache_dir, hp.vocab_size, hp.lowercase,
        )

    def _stream_tokenizer(self) -> None:
        """A WordPiece trained on the first ``sample_documents`` training documents of the stream (cached)."""
        hp, source = self.hparams, self._stream_source()

        def texts():
            for n, (_, text) in enumerate(training_documents(source, self.holdout_every, hp.max_documents)):
                if n >= hp.sample_documents:
                    return
                yield text

        key = {"source": source.fingerprint(), "streaming": {"sample": hp.sample_documents,
                                                             "holdout_every": self.holdout_every,
                                                             "holdout": "index in shard",
                                                             "max_documents": hp.max_documents}}
        self._tokenizer = cached_wordpiece(texts, key, self.cache_dir, hp.vocab_size, hp.lowercase)

    def _stream_source(self):
        """The stream's source, opened once here to find whether it has a validation split (else every
        ``round(1 / val_fraction)``-th document is held out)."""
        if self.stream_source is None:
            hp = self.hparams
            fmt = data_format(self.data_files[0]) if self.data_files else None
            source = source_of(hp, self.data_files, fmt, self.cache_dir)
            try:
                has_validation = source.open("validation") is not None
            except Exception as err:  # datasets raises many types; all mean "could not get it"
                raise ValueError(f"could not open {source.name or source.kind!r} as a stream: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
            self.holdout_every = None if has_validation else max(2, round(1 / hp.val_fraction))
            self.stream_source = source
        return self.stream_source

    def tokenizer_vocab_size(self) -> int:
        """The vocabulary size the tokenizer will have, known without training it."""
        if self.hparams.tokenizer is None:
            return self.hparams.vocab_size
        return len(self.tokenizer)

    # -- packing -------------------------------------------------------------------------------

    def _pack(self, docs, split: str, source_fp: dict):
        hp = self.hparams
        tok = self.tokenizer
        settings = {k: hp[k] for k in ("max_seq_length", "short_seq_prob", "single_segment_prob", "seed", "text_column")}
        blob = json.dumps({"source": source_fp, "docs": docs._fingerprint, "split": split, "tok": tokenizer_hash(tok),
                           "settings": settings, "v": PACK_VERSION}, sort_keys=True, default=str)
        fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        if (hp.num_proc or 1) > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers each tokenise
        packer = self._packer()
        return docs.map(
            packer,
            batched=True,
            batch_size=256,
            with_indices=True,
            remove_columns=docs.column_names,
            num_proc=hp.num_proc,
            new_fingerprint=fingerprint,
            desc=f"Packing {split} examples",
        )

    def _build(self) -> None:
        if self.synthetic is not None:
            self._build_synthetic()
            return
        if self.hparams.streaming:
            self._build_streaming()
            return
        train_docs, val_docs, source_fp = self._load_documents()
        if self._tokenizer is None:
            self._prepare_tokenizer(train_docs, source_fp)
        self.fingerprint = source_fp
        self.train_dataset = self._pack(train_docs, "train", source_fp)
        val = self._pack(val_docs, "validation", source_fp)
        if self.hparams.max_val_examples is not None and len(val) > self.hparams.max_val_examples:
            val = val.select(range(self.hparams.max_val_examples))
        self.val_dataset = val
        if len(self.train_dataset) == 0:
            raise ValueError("the training data produced no examples: is the text column empty?")

    def _packer(self) -> Packer:
        hp = self.hparams
        return Packer(self.tokenizer, hp.text_column, hp.max_seq_length, hp.short_seq_prob, hp.single_segment_prob,
                      hp.seed)

    def _build_streaming(self) -> None:
        """The stream (packed on the fly in the loader's workers) and the materialised validation examples."""
        hp = self.hparams
        source = self._stream_source()
        packer = self._packer()
        self.fingerprint = {**source.fingerprint(), "streaming": True}
        val = validation_examples(source, packer, self.holdout_every, hp.max_val_examples, hp.sample_documents)
        if not val:
            raise ValueError("the stream gives no validation example: is the text column empty?")
        self.val_dataset = val
        self.train_dataset = PackedStream(source, packer, self.holdout_every, hp.shuffle_buffer, hp.seed,
                                          hp.max_documents)

    def _build_synthetic(self) -> None:
        """Examples drawn from the synthetic source: disjoint seeds for training and validation."""
        import datasets

        hp, spec = self.hparams, self.synthetic.spec
        self._prepare_tokenizer()
        n_val = hp.max_val_examples or 1024
        self.train_dataset = datasets.Dataset.from_dict(
            self.synthetic.examples(spec.train_examples, hp.max_seq_length, seed=2 * spec.seed + hp.seed * 1_000_003))
        self.val_dataset = datasets.Dataset.from_dict(
            self.synthetic.examples(n_val, hp.max_seq_length, seed=2 * spec.seed + 1 + hp.seed * 1_000_003))
        self.fingerprint = {"source": "synthetic", **spec.settings()}

    def floors(self, mask_prob: float) -> dict[str, float]:
        """The reference levels of the data at a masking rate. A synthetic source has exact ones
        (``unigram_entropy`` and ``bayes_mlm_loss``, :mod:`datamodules.synthetic`). On text,
        ``unigram_entropy`` is the loss at masked positions of a model that ignores the context and
        predicts the training text's token frequencies: the cross-entropy of the validation tokens
        (special tokens left out, as masking leaves them out) under the add-one smoothed unigram of the
        first :data:`UNIGRAM_TOKENS` training tokens (of the validation tokens themselves when
        streaming)."""
        if self.synthetic is not None:
            return self.synthetic.floors(self.hparams.max_seq_length, mask_prob)
        if self.val_dataset is None or self._tokenizer is None:
            return {}
        val = _token_ids(self.val_dataset)
        train = val if self.hparams.streaming else _token_ids(self.train_dataset)
        return {"unigram_entropy": unigram_cross_entropy(train, val, len(self.tokenizer), self.tokenizer.all_special_ids)}

    def prepare_data(self) -> None:
        # Runs on one process per node: build the corpus, tokenizer and packed caches once.
        if self.train_dataset is None:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        self._split_global_batch()
        if self.train_dataset is None:
            self._build()  # loads from the caches prepare_data wrote
        if self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"data_fingerprint": self.fingerprint})

    def training_examples(self) -> int | None:
        """How many packed training examples one epoch reads, once the data is built (``prepare_data`` or
        ``setup``); ``None`` before that, and when streaming (a stream has no epochs)."""
        if self.hparams.streaming or self.train_dataset is None:
            return None
        return len(self.train_dataset)

    def describe_source(self) -> str:
        """The training text in a few words, for messages: the hub dataset (and its configuration), the local
        files, the synthetic source or the embedded corpus, and the ``max_documents`` cut if any."""
        hp = self.hparams
        if self.data_files is not None:
            files = self.data_files
            text = files[0] if len(files) == 1 else f"{files[0]} and {len(files) - 1} more file(s)"
        elif hp.dataset is None:
            text = "the embedded CPython-docs corpus"
        else:
            text = hp.dataset + (f" ({hp.dataset_config})" if hp.dataset_config else "")
        cut = f", its first {hp.max_documents} documents" if hp.max_documents is not None and self.synthetic is None \
            else ""
        return text + cut

    def _split_global_batch(self) -> None:
        """With ``global_batch_size`` and a trainer: the per-device batch, derived from the trainer's processes
        and accumulation when not given, else checked against them. (``isoflop`` derives both before the run
        starts, experiments.run.budget.split_batch; this serves a datamodule given to a Trainer directly.)"""
        hp = self.hparams
        if hp.global_batch_size is None or self.trainer is None:
            return
        _, world, accumulate = self._layout()
        batch_size, needed = split_global_batch(hp.global_batch_size, world, hp.batch_size, accumulate)
        if needed != accumulate:
            raise ValueError(f"the Trainer accumulates {accumulate} batch(es), but --data.global_batch_size "
                             f"{hp.global_batch_size} with --data.batch_size {batch_size} on {world} process(es) needs "
                             f"{needed}: give the Trainer accumulate_grad_batches={needed}")
        hp.batch_size = batch_size

    # -- loaders -------------------------------------------------------------------------------

    def _collate(self, examples):
        return collate(examples, self.tokenizer.pad_token_id)

    def _train_collate(self, examples):
        # Training batches are always max_seq_length long: every rank's batch has one shape, so the FLOPs
        # of a step are known on every rank without asking the others (experiments.run.callbacks.FlopsBudget).
        return collate(examples, self.tokenizer.pad_token_id, length=self.hparams.max_seq_length)

    def resume_at(self, state: dict) -> None:
        """Start the next training loader at a saved position (:meth:`ResumableSampler.load_state_dict`):
        a resumed run reads the batch it would have read next, not the epoch's first ones."""
        self._resume = dict(state)
        if self.train_sampler is not None:
            self.train_sampler.load_state_dict(self._resume)

    def _layout(self) -> tuple[int, int, int]:
        """(rank, world size, batches per optimiser step) of the trainer this datamodule serves."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 1
        accumulate = trainer.accumulate_grad_batches if isinstance(trainer.accumulate_grad_batches, int) else 1
        return trainer.global_rank, trainer.world_size, accumulate

    def train_dataloader(self) -> DataLoader:
        # A seeded order per epoch, split across ranks by the sampler itself (pre-training runs with
        # use_distributed_sampler=False), resumable mid-epoch. The loader's own generator only seeds
        # workers; being private, creating an iterator takes nothing from the global RNG.
        if self.hparams.streaming:
            return self._stream_loader()
        rank, world, accumulate = self._layout()
        hp = self.hparams
        self.train_sampler = ResumableSampler(len(self.train_dataset), hp.batch_size, hp.seed, rank, world, accumulate)
        if len(self.train_sampler) == 0:
            raise ValueError(f"the training data has {len(self.train_dataset)} examples, fewer than one optimiser step "
                             f"({hp.batch_size} x {world} ranks x {accumulate} accumulated): lower --data.batch_size "
                             "or add data")
        if self._resume is not None:
            self.train_sampler.load_state_dict(self._resume)
            self._resume = None
        return DataLoader(
            Indexed(self.train_dataset),
            batch_size=hp.batch_size,
            sampler=self.train_sampler,
            drop_last=True,
            generator=torch.Generator().manual_seed(hp.seed),
            collate_fn=self._train_collate,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=self._pin_memory(),
        )

    def _pin_memory(self) -> bool:
        """Page-locked batches when training on a CUDA device: Lightning then copies them to the device
        without blocking the host (``non_blocking``), overlapping the copy with the step."""
        device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)  # no Trainer: the CPU
        return device is not None and device.type == "cuda"

    def _stream_loader(self) -> DataLoader:
        """The stream of this rank, its workers dealt its slots (rotated to continue a resumed run)."""
        rank, world, _ = self._layout()
        hp = self.hparams
        stream = self.train_dataset
        stream.rank, stream.world_size = rank, world
        self.tracker.resume(stream, hp.num_workers)
        if hp.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each worker tokenises
        return DataLoader(stream, batch_size=hp.batch_size, collate_fn=self._train_collate, num_workers=hp.num_workers,
                          generator=torch.Generator().manual_seed(hp.seed), pin_memory=self._pin_memory())

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Called on the batch the training loop is about to train on (not on batches prefetched ahead).
        if isinstance(batch, dict) and "stream_position" in batch:
            self.tracker.consumed(batch.pop("stream_position"))
        return batch

    def state_dict(self) -> dict:
        """Streaming: every rank's stream positions (gathered: every rank saves a checkpoint together)."""
        if not self.hparams.streaming:
            return {}
        _, world, _ = self._layout()
        state = self.tracker.state(world, self.hparams.num_workers)
        states = [state]
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * world
            torch.distributed.all_gather_object(states, state)
        return {"stream": states}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self.hparams.streaming or "stream" not in state_dict:
            return
        rank, world, _ = self._layout()
        states = state_dict["stream"]
        if len(states) != world:
            raise ValueError(f"the checkpoint's stream was read by {len(states)} process(es), this run has {world}: "
                             "resume a streaming run on the same number of processes")
        self.tracker.load(states[rank], world, self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        # A private generator: validating takes nothing from the global RNG that training draws masks from.
        return DataLoader(
            self.val_dataset,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            generator=torch.Generator().manual_seed(self.hparams.seed),
            collate_fn=self._collate,
            num_workers=self.hparams.num_workers,
        )


# Training tokens counted for the unigram reference level of text data (a few seconds at most).
UNIGRAM_TOKENS = 2_000_000


def _token_ids(examples) -> "np.ndarray":
    """The token ids of up to :data:`UNIGRAM_TOKENS` tokens of packed examples (a Dataset or a list of dicts)."""
    import numpy as np

    rows, total = [], 0
    for example in (examples if isinstance(examples, list) else examples.select_columns(["input_ids"])):
        rows.append(np.asarray(example["input_ids"], dtype=np.int64))
        total += len(rows[-1])
        if total >= UNIGRAM_TOKENS:
            break
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def unigram_cross_entropy(train: "np.ndarray", val: "np.ndarray", vocab_size: int, special_ids) -> float:
    """Cross-entropy (nats) of the non-special tokens of ``val`` under the add-one smoothed unigram
    distribution of the non-special tokens of ``train``."""
    import numpy as np

    special = np.zeros(vocab_size, dtype=bool)
    special[[i for i in special_ids if 0 <= i < vocab_size]] = True
    counts = np.bincount(train[train < vocab_size], minlength=vocab_size).astype(np.float64) + 1.0
    counts[special] = 0.0
    log_p = np.log(np.where(special, 1.0, counts / counts.sum()))
    seen = np.bincount(val[val < vocab_size], minlength=vocab_size).astype(np.float64)
    seen[special] = 0.0
    return float(-(seen * log_p).sum() / max(seen.sum(), 1.0))
