"""Pre-training data read as a stream: for corpora larger than the machine's disk or memory.

``PretrainingDataModule(streaming=True)`` reads its documents as a Hugging Face ``IterableDataset``
(the hub with ``streaming=True``, local files, a ``save_to_disk`` directory or the embedded corpus) and
tokenises and packs them on the fly, in the DataLoader's workers, with the same :class:`Packer` as the
cached path. Nothing is tokenised ahead of time and no epoch length is needed: the stream repeats
itself pass after pass and training ends at ``max_steps`` or the FLOPs budget.

Shards: the source's own, ``IterableDataset.num_shards`` (:meth:`StreamSource.num_shards`): one per
file for local files and the hub (``datasets`` shards a stream by its data files), one per Arrow file
that ``save_to_disk`` wrote for a saved dataset or the embedded corpus. A document is named by its shard
and its index in the shard, so everything below is the same whatever the number of ranks and workers.

Which documents a worker reads (:class:`PackedStream`): the ``S = world_size x max(1, num_workers)``
(rank, worker) pairs are slots (slot ``rank x workers + worker``), and a run is in one of two modes,
fixed by the source and ``S`` (:meth:`PackedStream.reads_shards`):

* **by shard**, when the source has at least ``S`` shards (and no ``max_documents``): shard ``i`` belongs
  to slot ``i mod S``, and each slot opens and reads only its own shards (``IterableDataset.shard``; for
  local files it loads only its own files). Reading costs one pass over the corpus, whatever ``S``. With
  ``num_shards`` a multiple of ``S`` (and shards of similar sizes) the slots get equal shares; otherwise
  the first ``num_shards mod S`` slots get one shard more. Each slot then goes through its own shards
  pass after pass at its own pace, so the documents of a smaller share come round more often.
* **by document**, the fallback, when there are fewer shards than slots (a single file, say), or when
  ``max_documents`` is set (the first N documents of the source are found only by reading it from its
  start): the training documents of a pass are numbered in the pass's order (``j = 0, 1, ...``) and
  document ``j`` belongs to slot ``j mod S``. Every slot reads the whole stream (all shards, in order) and
  keeps its share: reading costs ``S`` passes, tokenising and packing one.

Either way ranks and workers never read the same document, and a slot's documents depend on nothing but
the data, the seed and ``S``. Shuffling (``shuffle_buffer`` > 1) is a buffer shuffle seeded by the seed
and the pass (by shard: and the slot, whose shards are also read in an order shuffled for each pass).
The ``j``-th document of a slot's pass has the position ``j x S + slot`` (by document: its position in
the pass), unique within a pass; each slot packs its documents in chunks of :data:`CHUNK_DOCUMENTS`,
seeded by the pass and the position of the chunk's first document, so the same data and settings give
the same examples.

Resuming: every example carries its slot's position after it (pass, chunk, examples of the chunk
taken); the datamodule records the position of each batch the training loop consumes
(``on_before_batch_transfer``), and a checkpoint holds every rank's positions. A resumed stream starts
each slot where it stopped (the slot's documents before it are read again, not packed), and deals the
slots to the workers rotated so that the loader's round-robin over workers continues with the batch
that would have come next: the resumed run reads exactly the batches the uninterrupted run would have
read.

Held out for validation (materialised, a fixed list): the first documents of the source's
``validation`` split, or, without one, in every shard the documents whose index in the shard is a
multiple of ``round(1 / val_fraction)`` (0, k, 2k, ...; with a single shard, every k-th document of
the source), packed until ``max_val_examples``, reading the shards in order and no further than the
source's first ``sample_documents`` documents. The rule names a document by its shard and its index
there, which every slot knows of the documents it reads in either mode, so no pass ever trains on a
held-out document, and the validation set is the same whatever the number of ranks and workers.
The tokenizer, unless given, is trained on the first ``sample_documents`` training documents of the
source (its shards in order).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

CHUNK_DOCUMENTS = 256  # documents packed together (the cached path packs 256-document batches too)
_READ = 512  # documents read from the source at a time
_ID_SHIFT = 20  # example_id = (position of the chunk's first document << 20) | ordinal of the example in it


def _iterable(dataset):
    """A map-style dataset as a stream of one shard per Arrow file ``save_to_disk`` wrote: both split the
    rows contiguously into equal parts, so shard ``i`` is file ``i`` (and is only ever memory-mapped)."""
    return dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset.cache_files), len(dataset))))


@dataclass(frozen=True)
class StreamSource:
    """Where the documents come from, re-opened in every worker (an ``IterableDataset`` does not cross
    processes well): ``kind`` is ``hub``, ``files``, ``disk`` or ``embedded``."""

    kind: str
    text_column: str = "text"
    name: str | None = None
    config: str | None = None
    files: tuple[str, ...] = ()
    fmt: str | None = None
    cache_dir: str | None = None

    def open(self, split: str = "train"):
        """The split as a ``datasets.IterableDataset``, or None when the source has no such split."""
        import datasets

        if self.kind == "files":
            return self._load_files(self.files) if split == "train" else None
        if self.kind == "embedded":
            from datamodules.corpus import load_corpus

            return _iterable(load_corpus(self.cache_dir)) if split == "train" else None
        if self.kind == "disk":
            loaded = datasets.load_from_disk(self.name)
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            return _iterable(splits[split]) if split in splits else None
        try:
            return datasets.load_dataset(self.name, self.config, split=split, streaming=True)
        except ValueError as err:  # datasets: 'Bad split: validation. Available splits: [...]'
            if split != "train" and "split" in str(err).lower():
                return None
            raise

    def _load_files(self, files: Sequence[str]):
        import datasets

        return datasets.load_dataset(self.fmt, data_files=list(files), split="train", streaming=True)

    def num_shards(self) -> int:
        """The training split's shards: one per local file (known without opening any), else the
        stream's ``num_shards``."""
        if self.kind == "files":
            return len(self.files)
        stream = self.open()
        return max(1, stream.num_shards) if stream is not None else 1

    def shards(self, indices: Sequence[int] | None = None, split: str = "train") -> Iterator[tuple[int, Any]]:
        """``(i, shard i alone as a stream)`` for the listed shards of a split, in that order (None: all of
        them in order). Local files: only the listed files are loaded, for opening a stream reads the head
        of its first file (to learn its columns)."""
        if self.kind == "files" and indices is not None and split == "train":
            if not indices:
                return
            stream = self._load_files([self.files[i] for i in indices])
            if stream.num_shards != len(indices):  # num_shards() counted one per file, without opening them
                raise ValueError(f"datasets opened {len(indices)} data file(s) as {stream.num_shards} shard(s), not one"
                                 " per file: pass a single file to read it by document, or another datasets version")
            for j, i in enumerate(indices):
                yield i, stream.shard(num_shards=len(indices), index=j) if len(indices) > 1 else stream
            return
        stream = self.open(split)
        if stream is None:
            return
        count = max(1, stream.num_shards)
        for i in range(count) if indices is None else indices:
            yield i, stream.shard(num_shards=count, index=i) if count > 1 else stream

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the text (for the tokenizer's cache key)."""
        if self.kind == "files":
            stats = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in self.files]
            return {"source": "files", "files": stats}
        if self.kind == "embedded":
            from datamodules.corpus import corpus_fingerprint

            return {"source": "embedded", **corpus_fingerprint(self.cache_dir)}
        return {"source": self.kind, "name": self.name, "config": self.config}


def _shard_texts(stream, text_column: str) -> Iterator[str]:
    """Every text of one shard in its order, empty ones too (they keep the others' indices)."""
    if text_column not in (stream.column_names or [text_column]):
        raise ValueError(f"the data has no column {text_column!r} (it has {', '.join(stream.column_names)}): "
                         "set --data.text_column")
    for batch in stream.select_columns([text_column]).iter(batch_size=_READ):
        yield from batch[text_column]


def held_out(index_in_shard: int, holdout_every: int | None) -> bool:
    """Whether a document is validation's: its index in its shard is a multiple of ``holdout_every``."""
    return bool(holdout_every) and index_in_shard % holdout_every == 0


def read_documents(source: StreamSource, split: str = "train") -> Iterator[tuple[int, int, str]]:
    """``(index in the source, index in its shard, text)`` of every document of a split, its shards read in
    order; empty texts keep their indices but are skipped."""
    offset = 0
    for _, stream in source.shards(split=split):
        size = 0
        for size, text in enumerate(_shard_texts(stream, source.text_column), 1):
            if text:
                yield offset + size - 1, size - 1, text
        offset += size


def training_documents(source: StreamSource, holdout_every: int | None, max_documents: int | None) -> Iterator[
        tuple[int, str]]:
    """``(index in the source, text)`` of the training documents, the shards in order: without those held
    out for validation (:func:`held_out`), and only the first ``max_documents`` of them."""
    kept = 0
    for index, in_shard, text in read_documents(source):
        if held_out(in_shard, holdout_every):
            continue
        if max_documents is not None and kept >= max_documents:
            return
        kept += 1
        yield index, text


def shard_documents(source: StreamSource, shards: Sequence[int], holdout_every: int | None) -> Iterator[str]:
    """The training texts of the listed shards, read in that order (only those shards are opened)."""
    for _, stream in source.shards(shards):
        for index, text in enumerate(_shard_texts(stream, source.text_column)):
            if text and not held_out(index, holdout_every):
                yield text


def shuffled(documents: Iterator[Any], buffer: int, seed: int) -> Iterator[Any]:
    """A buffer shuffle (as ``datasets``' streaming shuffle): a pure function of the input and ``seed``."""
    if buffer <= 1:
        yield from documents
        return
    rng, pool = random.Random(seed), []
    for doc in documents:
        if len(pool) < buffer:
            pool.append(doc)
            continue
        i = rng.randrange(buffer)
        yield pool[i]
        pool[i] = doc
    rng.shuffle(pool)
    yield from pool


def validation_examples(source: StreamSource, packer, holdout_every: int | None, max_examples: int | None,
                        max_documents: int) -> list[dict]:
    """The held-out examples: the source's validation split, else its held-out documents (:func:`held_out`,
    among its first ``max_documents``), packed in chunks as training is, until ``max_examples``."""
    if holdout_every:
        docs = ((index, index, text) for index, in_shard, text in read_documents(source)
                if held_out(in_shard, holdout_every))
    else:  # numbered in the order read
        docs = ((read, index, text) for read, (index, _, text) in enumerate(read_documents(source, "validation")))
    examples: list[dict] = []
    chunk: list[tuple[int, str]] = []

    def enough() -> bool:
        return max_examples is not None and len(examples) >= max_examples

    for limit, index, text in docs:
        if enough() or limit >= max_documents:
            break
        chunk.append((index, text))
        if len(chunk) == CHUNK_DOCUMENTS:
            examples += _rows(packer({packer.text_column: [t for _, t in chunk]}, [chunk[0][0]]))
            chunk = []
    if chunk and not enough():
        examples += _rows(packer({packer.text_column: [t for _, t in chunk]}, [chunk[0][0]]))
    return examples[:max_examples] if max_examples is not None else examples


def _rows(columns: dict[str, list]) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]


class PackedStream(IterableDataset):
    """Packed examples of one rank's slots, forever (pass after pass), resumable (module docstring).

    Every example is the cached path's (``input_ids``, ``token_type_ids``, ``special_tokens_mask``,
    ``word_ids``) plus ``example_id`` (unique within a pass: the position of its chunk's first document
    and its ordinal in the chunk) and ``stream_position``, ``(slot, pass, chunk, taken)``: where its
    slot resumes after it.

    Args:
        source: where the documents come from.
        packer: the :class:`~datamodules.pretraining.Packer` (tokenizer and packing settings).
        holdout_every: in every shard, the documents at indices that are multiples of this are
            validation's (None: the source has a validation split).
        shuffle_buffer: documents shuffled in a buffer of this size, seeded by ``seed`` and the pass.
        seed: the data seed.
        max_documents: only the first N training documents (the slots then split by document).
        rank, world_size: this process's rank and the number of ranks.
    """

    def __init__(self, source: StreamSource, packer, holdout_every: int | None, shuffle_buffer: int, seed: int,
                 max_documents: int | None = None, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.source, self.packer, self.holdout_every = source, packer, holdout_every
        self.shuffle_buffer, self.seed, self.max_documents = shuffle_buffer, seed, max_documents
        self.rank, self.world_size = rank, world_size
        self.num_shards = source.num_shards()  # here, once: not in every worker
        self.positions: dict[int, tuple[int, int, int]] = {}  # slot -> (pass, chunk, taken) to resume at
        self.rotation = 0  # worker w serves local slot (w + rotation) mod workers

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        slot = self.rank * workers + (worker + self.rotation) % workers
        return self.examples(slot, self.world_size * workers)

    def reads_shards(self, slots: int) -> bool:
        """Whether each of ``slots`` slots reads only its own shards (else every slot reads the whole stream
        and keeps every ``slots``-th document): at least as many shards as slots, and no ``max_documents``."""
        return self.max_documents is None and self.num_shards >= slots

    def shards_of(self, slot: int, slots: int) -> list[int]:
        """The shards a slot reads when :meth:`reads_shards`: ``i`` with ``i mod slots == slot``."""
        return list(range(slot, self.num_shards, slots))

    def documents(self, slot: int, slots: int, pass_: int) -> Iterator[str]:
        """The texts of the slot's training documents in one pass, in the pass's order."""
        if self.reads_shards(slots):
            shards = self.shards_of(slot, slots)
            if self.shuffle_buffer > 1:  # the slot's shards in another order every pass, as datasets' shuffle does
                random.Random(f"shards {self.seed} {pass_} {slot}").shuffle(shards)
            docs = shard_documents(self.source, shards, self.holdout_every)
            yield from shuffled(docs, self.shuffle_buffer, (self.seed * 1_000_003 + pass_) * 1_000_003 + slot)
            return
        docs = shuffled(training_documents(self.source, self.holdout_every, self.max_documents),
                        self.shuffle_buffer, self.seed * 1_000_003 + pass_)
        for position, (_, text) in enumerate(docs):
            if position % slots == slot:
                yield text

    def chunks(self, slot: int, slots: int, pass_: int) -> Iterator[tuple[int, list[str]]]:
        """``(position of its first document, texts)`` of the slot's chunks in one pass; the slot's ``j``-th
        document has the position ``j x slots + slot`` (by document: its position in the pass)."""
        chunk: list[str] = []
        first = 0
        for j, text in enumerate(self.documents(slot, slots, pass_)):
            if not chunk:
                first = j * slots + slot
            chunk.append(text)
            if len(chunk) == CHUNK_DOCUMENTS:
                yield first, chunk
                chunk = []
        if chunk:
            yield first, chunk

    def examples(self, slot: int, slots: int) -> Iterator[dict]:
        """The slot's examples from its saved position on, pass after pass."""
        pass_, start_chunk, taken = self.positions.get(slot, (0, 0, 0))
        while True:
            produced = False
            for number, (first, texts) in enumerate(self.chunks(slot, slots, pass_)):
                if number < start_chunk:
                    continue  # packed before the resume point: read past, not packed again
                rows = _rows(self.packer({self.packer.text_column: texts}, [(pass_ << 40) + first]))
                for k in range(taken if number == start_chunk else 0, len(rows)):
                    produced = True
                    yield {**rows[k], "example_id": (first << _ID_SHIFT) | k,
                           "stream_position": (slot, pass_, number, k + 1)}
            if not produced and start_chunk == 0 and taken == 0:
                raise ValueError(self._starved(slot, slots))
            pass_, start_chunk, taken = pass_ + 1, 0, 0

    def _starved(self, slot: int, slots: int) -> str:
        if self.reads_shards(slots):
            return (f"the stream gives no training example to slot {slot} of {slots} (rank x worker): its shards "
                    f"{self.shards_of(slot, slots)} of {self.num_shards} hold no training document; use fewer ranks "
                    "or --data.num_workers, or shards that all hold documents")
        return (f"the stream gives no training example to slot {slot} of {slots} (rank x worker): too few "
                "documents for this many ranks and --data.num_workers")


class StreamTracker:
    """The positions of the batches the training loop has consumed on this rank, for checkpoints
    (:meth:`state`), and the resume of a stream from them (:meth:`resume`)."""

    def __init__(self):
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.batches = 0

    def consumed(self, position) -> None:
        slot, *rest = (int(v) for v in position)
        self.positions[slot] = tuple(rest)
        self.batches += 1

    def state(self, world_size: int, workers: int) -> dict:
        return {"positions": {str(k): list(v) for k, v in self.positions.items()}, "batches": self.batches,
                "world_size": world_size, "workers": workers}

    def load(self, state: dict, world_size: int, workers: int) -> None:
        if (state.get("world_size"), state.get("workers")) != (world_size, workers):
            raise ValueError(f"the checkpoint's stream was split over {state.get('world_size')} process(es) x "
                             f"{state.get('workers')} worker(s), this run's over {world_size} x {workers}: resume a "
                             "streaming run with the same --trainer.devices, --trainer.num_nodes and --data.num_workers")
        self.positions = {int(k): tuple(v) for k, v in state["positions"].items()}
        self.batches = int(state["batches"])

    def resume(self, stream: PackedStream, workers: int) -> None:
        stream.positions = dict(self.positions)
        stream.rotation = self.batches % max(1, workers)


def source_of(hp, data_files: list[str] | None, fmt: str | None, cache_dir: Path) -> StreamSource:
    """The :class:`StreamSource` of a datamodule's settings."""
    if data_files is not None:
        return StreamSource("files", hp.text_column, files=tuple(data_files), fmt=fmt)
    if hp.dataset is None:
        return StreamSource("embedded", hp.text_column, cache_dir=str(cache_dir))
    path = Path(hp.dataset)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return StreamSource("disk", hp.text_column, name=str(path.resolve()))
    return StreamSource("hub", hp.text_column, name=hp.dataset, config=hp.dataset_config)
