"""Streaming pre-training data: ranks and workers read disjoint documents (checked on the text itself), and a
run stopped by a signal resumes its stream with the next examples, on two ranks of two workers each."""

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
