"""Helpers of the multi-process and streaming tests, loadable by class path in a subprocess
(``--trainer.callbacks+=tests.dist_helpers.RecordBatches``)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from lightning.pytorch import Callback

from experiments.errors import RunError


class RecordBatches(Callback):
    """Appends, for every training batch, the step, the rank, the examples' ids (``example_id``) and a hash of
    the tokens to ``$ISOFLOP_TEST_RECORD/rank<r>.jsonl``: what each rank actually trained on."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        folder = os.environ.get("ISOFLOP_TEST_RECORD")
        if not folder:
            return
        ids = batch["input_ids"].cpu()
        row = {"step": trainer.global_step, "rank": trainer.global_rank,
               "ids": batch["example_id"].tolist() if "example_id" in batch else None,
               "tokens": hashlib.sha1(ids.numpy().tobytes()).hexdigest()}
        path = Path(folder) / f"rank{trainer.global_rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class FailOnRank(Callback):
    """Raises on rank ``$ISOFLOP_TEST_FAIL_RANK`` after step ``$ISOFLOP_TEST_FAIL_AT`` (a rank that fails alone);
    the other ranks first sleep ``$ISOFLOP_TEST_OTHERS_SLEEP`` seconds there (0 by default), as a rank busy
    between two collectives would, so that the failed rank is long gone before they next need it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if str(trainer.global_step) != os.environ.get("ISOFLOP_TEST_FAIL_AT"):
            return
        if str(trainer.global_rank) == os.environ.get("ISOFLOP_TEST_FAIL_RANK"):
            raise RunError(f"injected failure at step {trainer.global_step}")
        time.sleep(float(os.environ.get("ISOFLOP_TEST_OTHERS_SLEEP", "0")))


def read_records(folder: Path) -> list[dict]:
    """Every recorded batch of every rank."""
    return [json.loads(line) for path in sorted(Path(folder).glob("rank*.jsonl")) for line in path.read_text().splitlines()]
