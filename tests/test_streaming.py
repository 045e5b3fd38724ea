"""Streaming pre-training data: ranks and workers read disjoint documents (checked on the text itself), and a
run stopped by a signal resumes its stream with the next examples, on two ranks of two workers each; with a
sharded source (8 files), each (rank, worker) slot opens only its own files and a stopped stream resumes
with exactly the next batches."""

from __future__ import annotations

import json
import random
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.dist_helpers import read_records
from tests.helpers import SIGNAL_CALLBACK
from tests.test_distributed import launch
from tests.test_reliability import signalled

DOCUMENTS = 400
WORDS = ("the river carries light stone across wide valleys while small birds sing over green hills and old "
         "towns keep quiet gardens near bright water under clear evening skies").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Documents whose every sentence names its document (``Docmark17 ...``), so the text of any packed
    example tells which documents it came from."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("w") as f:
        for i in range(DOCUMENTS):
            sentences = [f"Docmark{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "."
                         for _ in range(rng.randint(1, 4))]
            f.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    return path


def documents_of(batch, tokenizer) -> list[set[int]]:
    """The documents each example of a batch holds text of."""
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        text = tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True).replace(" ", "")
        out.append({int(m) for m in re.findall(r"docmark(\d+)", text)})
    return out


def test_two_ranks_of_two_workers_read_disjoint_documents(corpus, cache_dir):
    """Each (rank, worker) slot of 2 x 2 reads exactly the training documents at positions = its slot mod 4,
    none of the documents held out for validation, and no document another slot reads."""
    from datamodules import PretrainingDataModule

    dm = PretrainingDataModule(data_files=str(corpus), vocab_size=512, max_seq_length=32, batch_size=4, streaming=True,
                               num_workers=2, shuffle_buffer=0, val_fraction=0.1, max_val_examples=8,
                               cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.holdout_every == 10 and len(dm.val_dataset) == 8
    training = [i for i in range(DOCUMENTS) if i % 10]  # the held-out documents are 0, 10, 20, ...
    seen: dict[int, set[int]] = {}
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, accumulate_grad_batches=1)
        batches = iter(dm.train_dataloader())
        for _ in range(8):
            batch = next(batches)
            assert batch["input_ids"].shape == (4, 32)
            slot = batch["stream_position"][0]
            for docs in documents_of(batch, dm.tokenizer):
                assert docs, "an example without text"
                seen.setdefault(slot, set()).update(docs)
    assert sorted(seen) == [0, 1, 2, 3]
    for slot, docs in seen.items():
        assert {training.index(d) % 4 for d in docs} == {slot}, slot  # its share, and only its share
    assert not {d for docs in seen.values() for d in docs if d % 10 == 0}  # validation's documents never trained on
    print({slot: len(docs) for slot, docs in seen.items()}, "documents per slot, pairwise disjoint")


def test_a_stopped_stream_resumes_with_the_next_examples(corpus, tmp_path, cache_dir):
    """Two ranks (DDP, gloo) of two loader workers each, stopped by SIGTERM at step 3 of 6, then the same
    command: on every rank the resumed run starts with the very batch the stopped run had fetched next (each
    worker continues its own slot, and the slots are dealt to the workers so that their round-robin goes
    on), not with the stream's first examples, and goes on with examples it never trained on."""
    argv = ["pretrain", "--config", "tiny", "--data.data_files", str(corpus), "--data.streaming", "true",
            "--data.num_workers", "2", "--data.shuffle_buffer", "64", "--data.batch_size", "4",
            "--data.max_val_examples", "8", "--wandb", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", "6", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.strategy", "ddp", "--trainer.callbacks+=tests.dist_helpers.RecordBatches",
            SIGNAL_CALLBACK, "--run_dir", str(tmp_path / "run")]
    # SIGTERM to the first process at the end of step 3; the ranks agree at that step (log_every_n_steps = 1)
    stopped = signalled(argv, 3, "SIGTERM", cache_dir, tmp_path, rank=0, ISOFLOP_TEST_RECORD=str(tmp_path / "stopped"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3
    streams = saved["PretrainingDataModule"]["stream"]  # every rank's positions, gathered
    assert [(s["world_size"], s["workers"], s["batches"], len(s["positions"])) for s in streams] == [(2, 2, 3, 2)] * 2
    resumed = launch(argv, cache_dir, tmp_path, ISOFLOP_TEST_RECORD=str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def batches(folder: Path) -> dict[int, dict[int, str]]:
        out: dict[int, dict[int, str]] = {}
        for r in read_records(folder):
            out.setdefault(r["rank"], {})[r["step"]] = r["tokens"]
        return out

    before, after = batches(tmp_path / "stopped"), batches(tmp_path / "resumed")
    for rank in (0, 1):
        assert sorted(before[rank]) == [0, 1, 2, 3] and sorted(after[rank]) == [3, 4, 5]
        # step 4's batch: fetched by the stopped run (not trained on), and the resumed run's first
        assert after[rank][3] == before[rank][3] and after[rank][3] != before[rank][0]
        assert not {after[rank][4], after[rank][5]} & set(before[rank].values())  # then examples never trained on
    assert not set(before[0].values()) & set(before[1].values())  # the ranks' batches differ


# -- sharded sources: each (rank, worker) slot reads only its own shards ---------------------------

SHARDS, PER_SHARD = 8, 40


def marks(texts) -> set[int]:
    """The documents (``Docmark`` numbers) some texts hold."""
    return {int(m) for text in texts for m in re.findall(r"Docmark(\d+)", text)}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, cache_dir):
    """Eight JSONL files of 40 documents each (document ``i`` of file ``f`` names itself ``Docmark{100 f + i}``)
    read as a stream, holding out every 10th document of each file; and the files."""
    from datamodules import PretrainingDataModule

    rng, folder = random.Random(1), tmp_path_factory.mktemp("shards")
    files = [folder / f"part{f}.jsonl" for f in range(SHARDS)]
    for f, path in enumerate(files):
        path.write_text("".join(json.dumps({"text": f"Docmark{100 * f + i} " + " ".join(
            rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "."}) + "\n" for i in range(PER_SHARD)))
    dm = PretrainingDataModule(data_files=[str(p) for p in files], vocab_size=512, max_seq_length=32, batch_size=4,
                               streaming=True, num_workers=2, shuffle_buffer=16, val_fraction=0.1,
                               max_val_examples=8, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    return dm, files


class RecordingPacker:
    """The stream's packer, recording the pass and the texts of every chunk it packs."""

    def __init__(self, packer):
        self.packer, self.text_column, self.chunks = packer, packer.text_column, []

    def __call__(self, columns, indices):
        self.chunks.append((indices[0] >> 40, list(columns[self.text_column])))
        return self.packer(columns, indices)


def one_pass(stream, rank: int, world: int, workers: int, worker: int, monkeypatch) -> tuple[set[str], set[int]]:
    """The files one (rank, worker) slot opens while it packs its first pass, and the documents of that pass."""
    import builtins

    from datamodules import streaming

    opened, real_open = set(), builtins.open

    def spying(file, *args, **kwargs):
        if str(file).endswith(".jsonl"):
            opened.add(Path(file).name)
        return real_open(file, *args, **kwargs)

    recorder = RecordingPacker(stream.packer)
    monkeypatch.setattr(stream, "packer", recorder)
    monkeypatch.setattr(streaming, "get_worker_info", lambda: SimpleNamespace(num_workers=workers, id=worker))
    stream.rank, stream.world_size, stream.positions, stream.rotation = rank, world, {}, 0
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", spying)
        for example in iter(stream):
            if example["stream_position"][1] == 1:  # the next pass began: the first is all packed
                break
    return opened, marks(t for pass_, texts in recorder.chunks if pass_ == 0 for t in texts)


@pytest.mark.parametrize("world, workers", [(2, 2), (1, 3)])
def test_each_slot_reads_only_its_own_shards(sharded, world, workers, monkeypatch):
    """8 files over 2 ranks x 2 workers (2 files a slot) or 1 x 3 (3, 3 and 2): slot s opens only the files
    i = s mod slots, packs only their training documents, and the slots' passes are disjoint and together
    hold every training document (none of the held-out ones: index in the file a multiple of 10)."""
    dm, files = sharded
    stream, slots = dm.train_dataset, world * workers
    assert stream.num_shards == SHARDS and stream.reads_shards(slots)
    training = {100 * f + i for f in range(SHARDS) for i in range(PER_SHARD) if i % 10}
    seen: dict[int, set[int]] = {}
    for rank in range(world):
        for worker in range(workers):
            slot = rank * workers + worker
            opened, docs = one_pass(stream, rank, world, workers, worker, monkeypatch)
            own = list(range(slot, SHARDS, slots))
            assert opened == {files[i].name for i in own}, (slot, opened)
            assert {d // 100 for d in docs} == set(own) and docs, slot
            assert not docs & {d for other in seen.values() for d in other}, slot  # disjoint
            seen[slot] = docs
    assert set().union(*seen.values()) == training  # every training document, once a pass
    held_out = marks(dm.tokenizer.decode(e["input_ids"], skip_special_tokens=True).replace(" ", "").replace(
        "docmark", "Docmark") for e in dm.val_dataset)
    assert held_out and all(d % 100 % 10 == 0 for d in held_out)  # validation's: every 10th of each file


def test_a_sharded_stream_resumes_with_the_next_batches(sharded):
    """2 ranks x 2 real loader workers, by shard: a run stopped after 3 batches and resumed from the positions
    its checkpoint holds reads on every rank exactly batches 4 to 7 of the uninterrupted run."""
    from datamodules.streaming import StreamTracker

    dm, _ = sharded
    uninterrupted, saved = {}, []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, accumulate_grad_batches=1)
        dm.tracker = StreamTracker()
        batches = iter(dm.train_dataloader())
        uninterrupted[rank] = []
        for step in range(7):
            uninterrupted[rank].append(dm.on_before_batch_transfer(next(batches), 0))
            if step == 2:
                saved.append(dm.state_dict()["stream"][0])  # this rank's positions at the checkpoint
        del batches
    assert [s["batches"] for s in saved] == [3, 3]
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, accumulate_grad_batches=1)
        dm.tracker = StreamTracker()
        dm.load_state_dict({"stream": saved})
        batches = iter(dm.train_dataloader())
        for step in range(3, 7):
            batch, expected = next(batches), uninterrupted[rank][step]
            assert torch.equal(batch["input_ids"], expected["input_ids"]), (rank, step)
            assert torch.equal(batch["example_id"], expected["example_id"]), (rank, step)
        del batches
    first = {int(i) for b in uninterrupted[0] for i in b["example_id"]}
    assert not first & {int(i) for b in uninterrupted[1] for i in b["example_id"]}  # the ranks' examples differ


def test_a_saved_dataset_is_sharded_by_its_arrow_files(tmp_path):
    """A ``save_to_disk`` directory of 8 Arrow files is a stream of 8 shards, shard i being file i; every 10th
    document of a shard (by its index there) is validation's, never a training one."""
    import datasets

    from datamodules.streaming import StreamSource, read_documents, shard_documents

    datasets.Dataset.from_dict({"text": [f"doc{i}" for i in range(80)]}).save_to_disk(tmp_path / "saved", num_shards=8)
    source = StreamSource("disk", name=str(tmp_path / "saved"))
    assert source.num_shards() == 8
    for shard in range(8):
        assert list(shard_documents(source, [shard], 10)) == [f"doc{10 * shard + k}" for k in range(1, 10)]
    assert [(i, k) for i, k, _ in read_documents(source)][9:12] == [(9, 9), (10, 0), (11, 1)]
