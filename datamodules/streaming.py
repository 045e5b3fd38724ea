"""Pre-training data read as a stream: for corpora larger than the machine's disk or memory.

``PretrainingDataModule(streaming=True)`` reads its documents as a Hugging Face ``IterableDataset``
(the hub with ``streaming=True``, local files, a ``save_to_disk`` directory or the embedded corpus) and
tokenises and packs them on the fly, in the DataLoader's workers, with the same :class:`Packer` as the
cached path. Nothing is tokenised ahead of time and no epoch length is needed: the stream repeats
itself pass after pass and training ends at ``max_steps`` or the FLOPs budget.

Which documents a worker reads (:class:`PackedStream`): the training documents of a pass are numbered in
the pass's order (``j = 0, 1, ...``) and document ``j`` belongs to slot ``j mod S``, where the
``S = world_size x max(1, num_workers)`` slots are the (rank, worker) pairs. So ranks and workers never
read the same document, and the split depends on nothing but the document order and ``S``. Each slot
packs its documents in chunks of :data:`CHUNK_DOCUMENTS`, seeded by the chunk's position, so the same
data and settings give the same examples. (Every worker reads the whole stream and keeps its share:
reading costs ``S`` times one pass, tokenising and packing once.)

Resuming: every example carries its slot's position after it (pass, chunk, examples of the chunk
taken); the datamodule records the position of each batch the training loop consumes
(``on_before_batch_transfer``), and a checkpoint holds every rank's positions. A resumed stream starts
each slot where it stopped, and deals the slots to the workers rotated so that the loader's round-robin
over workers continues with the batch that would have come next: the resumed run reads exactly the
batches the uninterrupted run would have read.

Held out for validation (materialised, a fixed list): the first documents of the source's
``validation`` split, or, without one, every ``round(1 / val_fraction)``-th document of the training
stream (by its index in the source, so no pass ever trains on them), packed until ``max_val_examples``.
The tokenizer, unless given, is trained on the first ``sample_documents`` training documents.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

CHUNK_DOCUMENTS = 256  # documents packed together (the cached path packs 256-document batches too)
_READ = 512  # documents read from the source at a time
_ID_SHIFT = 20  # example_id = (position of the chunk's first document << 20) | ordinal of the example in it


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
            return datasets.load_dataset(self.fmt, data_files=list(self.files), split="train", streaming=True) \
                if split == "train" else None
        if self.kind == "embedded":
            from datamodules.corpus import load_corpus

            return load_corpus(self.cache_dir).to_iterable_dataset() if split == "train" else None
        if self.kind == "disk":
            loaded = datasets.load_from_disk(self.name)
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            return splits[split].to_iterable_dataset() if split in splits else None
        try:
            return datasets.load_dataset(self.name, self.config, split=split, streaming=True)
        except ValueError as err:  # datasets: 'Bad split: validation. Available splits: [...]'
            if split != "train" and "split" in str(err).lower():
                return None
            raise

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the text (for the tokenizer's cache key)."""
        if self.kind == "files":
            stats = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in self.files]
            return {"source": "files", "files": stats}
        if self.kind == "embedded":
            from datamodules.corpus import corpus_fingerprint

            return {"source": "embedded", **corpus_fingerprint(self.cache_dir)}
        return {"source": self.kind, "name": self.name, "config": self.config}


def read_documents(source: StreamSource, split: str = "train") -> Iterator[tuple[int, str]]:
    """``(index in the source, text)`` of every document of a split, in the source's order; empty texts
    keep their index but are skipped."""
    stream = source.open(split)
    if stream is None:
        return
    if source.text_column not in (stream.column_names or [source.text_column]):
        raise ValueError(f"the data has no column {source.text_column!r} (it has {', '.join(stream.column_names)}): "
                         "set --data.text_column")
    index = 0
    for batch in stream.select_columns([source.text_column]).iter(batch_size=_READ):
        for text in batch[source.text_column]:
            if text:
                yield index, text
            index += 1


def training_documents(source: StreamSource, holdout_every: int | None, max_documents: int | None) -> Iterator[
        tuple[int, str]]:
    """The training documents in the source's order: without those held out for validation (every
    ``holdout_every``-th by source index), and only the first ``max_documents`` of them."""
    kept = 0
    for index, text in read_documents(source):
        if holdout_every and index % holdout_every == 0:
            continue
        if max_documents is not None and kept >= max_documents:
            return
        kept += 1
        yield index, text


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
    """The held-out examples: the source's validation split, else its held-out documents (among its
    first ``max_documents``), packed in chunks as training is, until ``max_examples``."""
    if holdout_every:
        docs = (d for d in read_documents(source) if d[0] % holdout_every == 0)
    else:
        docs = read_documents(source, "validation")
    examples: list[dict] = []
    chunk: list[tuple[int, str]] = []

    def enough() -> bool:
        return max_examples is not None and len(examples) >= max_examples

    for read, (index, text) in enumerate(docs):
        if enough() or (index if holdout_every else read) >= max_documents:
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
        holdout_every: every this-many-th source document is validation's (None: the source has a
            validation split).
        shuffle_buffer: documents shuffled in a buffer of this size, seeded by ``seed`` and the pass.
        seed: the data seed.
        max_documents: only the first N training documents.
        rank, world_size: this process's rank and the number of ranks.
    """

    def __init__(self, source: StreamSource, packer, holdout_every: int | None, shuffle_buffer: int, seed: int,
                 max_documents: int | None = None, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.source, self.packer, self.holdout_every = source, packer, holdout_every
        self.shuffle_buffer, self.seed, self.max_documents = shuffle_buffer, seed, max_documents
        self.rank, self.world_size = rank, world_size
        self.positions: dict[int, tuple[int, int, int]] = {}  # slot -> (pass, chunk, taken) to resume at
        self.rotation = 0  # worker w serves local slot (w + rotation) mod workers

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        slot = self.rank * workers + (worker + self.rotation) % workers
        return self.examples(slot, self.world_size * workers)

    def chunks(self, slot: int, slots: int, pass_: int) -> Iterator[tuple[int, list[str]]]:
        """``(position of its first document, texts)`` of the slot's chunks in one pass."""
        docs = shuffled(training_documents(self.source, self.holdout_every, self.max_documents),
                        self.shuffle_buffer, self.seed * 1_000_003 + pass_)
        chunk: list[str] = []
        first = 0
        for position, (_, text) in enumerate(docs):
            if position % slots != slot:
                continue
            if not chunk:
                first = position
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
                raise ValueError(f"the stream gives no training example to slot {slot} of {slots} (rank x worker): "
                                 "too few documents for this many ranks and --data.num_workers")
            pass_, start_chunk, taken = pass_ + 1, 0, 0


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
