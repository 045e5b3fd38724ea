"""The fine-tuning stage of a multi-process comparison (experiments.finetuning.spread), for real: two gloo CPU
processes deal the fine-tuning runs of two tiny exports (2 tasks x 2 seeds each) between them and give the scores of
one process's ``finetune``, each run logged where one process logs it; a job that fails on one rank ends both with
its name and a non-zero exit code, instead of a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.finetuning.finetune import finetune
from experiments.finetuning.spread import jobs_of, mine, rank_devices
from tests.test_finetune import FIXTURES, make_tiny_checkpoint
from tests.test_reliability import ENV

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180
TASKS, SEEDS = ["stsb", "mrpc"], [0, 1]  # STS-B: correlations, no ties at 50%
OPTIONS = {"tasks": TASKS, "seeds": SEEDS, "data_dir": str(FIXTURES), "epochs": 1, "batch_size": 8,
           "max_seq_length": 64, "wandb": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, str]:
    """Two tiny exports, made once: an ELECTRA discriminator and a BERT."""
    base = tmp_path_factory.mktemp("exports")
    return {name: make_tiny_checkpoint(base / name, model=model)
            for name, model in (("electra", "electra-pretraining"), ("bert", "bert-mlm"))}


@pytest.fixture(scope="module")
def one_process(exports, tmp_path_factory, one_thread) -> tuple[dict, float]:
    """Each export fine-tuned by ``finetune`` in this process (one intra-op thread, as the ranks below): the scores,
    as the ranks' scores.json writes them, and the wall time."""
    out = tmp_path_factory.mktemp("one")
    began = time.monotonic()
    results = {name: finetune(path, out_dir=str(out / name), **OPTIONS) for name, path in exports.items()}
    wall = time.monotonic() - began
    scores = {name: {task: {"scores": r.scores, "others": r.others} for task, r in per_task.items()}
              for name, per_task in results.items()}
    return json.loads(json.dumps(scores)), wall  # the keys as JSON has them


def launch(exports: dict[str, str], out: Path, **extra: str) -> list[subprocess.CompletedProcess]:
    """Two ranks of tests.dist_helpers.spread_finetune_main over the exports, in a gloo process group."""
    runs = [(name, path, str(out / name)) for name, path in exports.items()]
    spec = out / "spec.json"
    out.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"runs": runs, "tasks": TASKS, "seeds": SEEDS, "options": OPTIONS,
                                "folder": str(out / ".ranks")}))
    port = str(29900 + os.getpid() % 90)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.dist_helpers", str(spec)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **ENV, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port, "RANK": str(k), "LOCAL_RANK": str(k), "WORLD_SIZE": "2",
                                   **extra})
             for k in (0, 1)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outputs)]


def test_two_ranks_fine_tune_what_one_process_does(exports, one_process, tmp_path):
    """8 jobs over 2 ranks, 4 each; the gathered scores (every metric of every task and seed) equal one process's
    exactly: each job seeds itself as finetune does, and both run with one intra-op thread. Rank 1's runs write
    their own logs (Lightning's rank-zero-only loggers, on the rank that read RANK=1)."""
    procs = launch(exports, tmp_path)
    for k, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {k}: {proc.stderr[-3000:]}"
    reference, one_wall = one_process
    got = json.loads((tmp_path / ".ranks" / "scores.json").read_text())
    print(f"fine-tuning 8 jobs: one process {one_wall:.1f} s, two processes {got['wall_s']:.1f} s")
    assert got["scores"] == reference
    assert len({v for task in reference.values() for r in task.values() for v in r["scores"].values()}) > 2
    jobs = jobs_of([(name, path, tmp_path / name) for name, path in exports.items()], TASKS, SEEDS)
    for rank in (0, 1):
        for job in mine(jobs, rank, 2):
            assert json.loads(job.result.read_text())["rank"] == rank
            assert (job.ft_dir / job.task / f"seed{job.seed}" / "metrics.csv").is_file(), job
    assert sum("[finetune] " in line and " seed " in line for line in procs[1].stdout.splitlines()) == 4


def test_a_failed_job_ends_every_rank_naming_it(exports, tmp_path):
    """The job mrpc seed 1 of the first export (job 3: rank 1's second) fails: rank 1 fails with its error, rank 0
    fails naming the job and rank 1, and neither hangs."""
    procs = launch(exports, tmp_path, ISOFLOP_TEST_FAIL_JOB="mrpc-seed1")
    assert procs[1].returncode != 0 and "injected failure in mrpc-seed1" in procs[1].stderr
    assert procs[0].returncode != 0, procs[0].stderr[-3000:]
    # rank 0 fails waiting ("... failed on rank 1: ...") or before its next job ("rank 0 stopped: ..."), as timing has it
    assert "fine-tuning job electra mrpc seed 1 failed" in procs[0].stderr, procs[0].stderr[-3000:]
    assert "rank 1: injected failure in mrpc-seed1" in procs[0].stderr
    assert not (tmp_path / ".ranks" / "scores.json").exists()


def test_each_rank_fine_tunes_on_its_own_device():
    """On GPUs a job's Trainer takes the local rank's GPU (or the only one a rank sees); on a CPU, the CPU."""
    assert rank_devices("cpu", 1) == {"accelerator": "cpu", "devices": 1}
    import torch

    if not torch.cuda.is_available():
        assert rank_devices("auto", 1) == {"accelerator": "cpu", "devices": 1}
        assert rank_devices("gpu", 1) == {"accelerator": "gpu", "devices": [0]}  # no GPU seen: the first
