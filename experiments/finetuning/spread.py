"""Fine-tuning jobs dealt over the ranks of a multi-process comparison.

After the pre-training, every fine-tuning run of a comparison (one export x one task x one seed: a *job*) runs in
one process, as a single-device Lightning run on that rank's own device (:func:`rank_devices`): job ``i`` of the
list :func:`jobs_of` makes runs on rank ``i % world size``. The process group of the pre-training is gone by then
(:meth:`experiments.run.ranks.World.close`), so no fine-tuning joins it, and the ranks meet through files in the
comparison's directory, which every rank must see (one machine, or a shared file system, as for the exports):

- each job's metrics are written, whole and renamed into place, to ``<run>/finetune/jobs/<task>-seed<k>.json``
  (a rerun skips the jobs that have theirs);
- a job that fails writes ``<task>-seed<k>.error`` (its rank and one-line error) before its rank fails: rank 0
  then fails with a :class:`~experiments.errors.RunError` naming the job, and every other rank stops before its
  next job;
- every rank touches ``OUT/.ranks/rank<k>.alive`` every :data:`BEAT_S` seconds (:class:`Heartbeat`): a rank that
  is gone without a word (killed) fails rank 0 :data:`STALE_S` seconds later, not never.

Rank 0 waits for every job (:func:`wait_for`), then gathers each run's jobs into the results of one process
(:func:`gather`). Each job seeds itself as :func:`~experiments.finetuning.finetune.finetune` does (the head, the
dropout, the data order), so the scores are those of one process with the same number of intra-op threads.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.cache import write_atomic
from experiments.errors import RunError, one_line
from experiments.finetuning.scores import TaskResult

if TYPE_CHECKING:
    from experiments.run.ranks import World

# How often a rank says it is alive, and how long rank 0 waits for a rank that stopped saying so.
BEAT_S = 10.0
STALE_S = 180.0
# How often rank 0 looks for the jobs' files.
POLL_S = 1.0


@dataclass(frozen=True)
class Job:
    """One fine-tuning run of a comparison: run ``name``'s ``export`` on ``task`` with ``seed``, logged under
    ``ft_dir`` (the run's ``finetune/`` directory)."""

    name: str
    export: str
    ft_dir: Path
    task: str
    seed: int

    @property
    def stem(self) -> Path:
        return self.ft_dir / "jobs" / f"{self.task}-seed{self.seed}"

    @property
    def result(self) -> Path:
        return self.stem.with_suffix(".json")

    @property
    def error(self) -> Path:
        return self.stem.with_suffix(".error")

    def __str__(self) -> str:
        return f"{self.name} {self.task} seed {self.seed}"


def jobs_of(runs: list[tuple[str, str, Path]], tasks: list[str], seeds: list[int]) -> list[Job]:
    """Every job of ``runs`` (name, export directory, fine-tuning directory), run by run, task by task, seed by
    seed: the order of one process."""
    return [Job(name, export, Path(ft_dir), task, seed) for name, export, ft_dir in runs for task in tasks
            for seed in seeds]


def mine(jobs: list[Job], rank: int, size: int) -> list[Job]:
    """The jobs of ``rank`` among ``size`` ranks: every ``size``-th, from the ``rank``-th."""
    return jobs[rank::size]


def rank_devices(accelerator: str, local_rank: int) -> dict[str, Any]:
    """The Trainer's ``accelerator`` and ``devices`` of a fine-tuning job on a rank: its local rank's GPU (the
    only one when each rank sees one), or the CPU."""
    import torch

    if str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count()
        return {"accelerator": "gpu", "devices": [local_rank if local_rank < count else 0]}
    return {"accelerator": "cpu" if str(accelerator) == "auto" else accelerator, "devices": 1}


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Lightning's idea of this process's rank set to 0 for the block: a single-device run on rank 1 writes its own
    logs (Lightning's loggers write on rank 0 only, and the rank it read from the environment stays)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    before = getattr(rank_zero_only, "rank", 0)
    rank_zero_only.rank = 0
    try:
        yield
    finally:
        rank_zero_only.rank = before


def failure(jobs: list[Job]) -> Job | None:
    """The first of ``jobs`` that failed (has an error marker), if any."""
    return next((job for job in jobs if job.error.exists()), None)


def run_mine(jobs: list[Job], rank: int, size: int, local_rank: int, options: dict) -> None:
    """Run this rank's jobs (``options``: those of :func:`~experiments.finetuning.finetune.finetune`), skipping those
    done; a failed job leaves its error marker and fails this rank; another's failure stops it before its next."""
    from experiments.finetuning.finetune import Jobs

    runners: dict[str, Jobs] = {}
    device = rank_devices(options.get("accelerator", "auto"), local_rank)
    for job in mine(jobs, rank, size):
        if job.result.exists():
            continue
        failed = failure(jobs)
        if failed is not None:
            raise RunError(f"rank {rank} stopped: fine-tuning job {failed} failed "
                           f"({failed.error.read_text().strip()})")
        try:
            if job.export not in runners:
                runners[job.export] = Jobs(job.export, job.ft_dir, **options)
            with alone():
                metrics = runners[job.export].run_one(job.task, job.seed, **device)
        except Exception as err:
            write_atomic(job.error, f"rank {rank}: {one_line(str(err) or type(err).__name__)}\n")
            raise
        write_atomic(job.result, json.dumps({"rank": rank, "metrics": metrics}, indent=2) + "\n")
        spec = runners[job.export].module(job.task).spec
        print(f"[finetune] {job.task} seed {job.seed}: {spec.metric} {metrics[spec.metric]:.2f} ({job.name}, rank "
              f"{rank})", flush=True)


class Heartbeat(threading.Thread):
    """Touches ``folder/rank<k>.alive`` now and every :data:`BEAT_S` seconds until stopped (a daemon: it ends with
    the process), so that rank 0 can tell a slow rank from a lost one."""

    def __init__(self, folder: Path, rank: int):
        super().__init__(daemon=True, name="isoflop-heartbeat")
        self.path, self.stopped = Path(folder) / f"rank{rank}.alive", threading.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def run(self) -> None:
        while not self.stopped.wait(BEAT_S):
            self.path.touch()

    def stop(self) -> None:
        self.stopped.set()


def clear_failures(jobs: list[Job], folder: Path) -> None:
    """Rank 0, before the ranks start: remove a previous invocation's error markers and heartbeats."""
    for job in jobs:
        job.error.unlink(missing_ok=True)
    for beat in Path(folder).glob("rank*.alive"):
        beat.unlink(missing_ok=True)


def wait_for(jobs: list[Job], size: int, folder: Path, stale_s: float = STALE_S) -> None:
    """Rank 0: until every job has its result. A job's error marker, or a rank with jobs left whose heartbeat
    is older than ``stale_s``, fails it in one line."""
    while True:
        failed = failure(jobs)
        if failed is not None:
            raise RunError(f"fine-tuning job {failed} failed on {failed.error.read_text().strip()}")
        left = [(k, job) for k in range(size) for job in mine(jobs, k, size) if not job.result.exists()]
        if not left:
            return
        for rank, job in left:
            beat = Path(folder) / f"rank{rank}.alive"
            age = time.time() - beat.stat().st_mtime if beat.exists() else float("inf")
            if age > stale_s:
                raise RunError(f"rank {rank} is gone (no heartbeat for {min(age, 1e9):.0f} s) before fine-tuning job "
                               f"{job} ended; its results so far are kept, a rerun does the rest")
        time.sleep(POLL_S)


def gather(jobs: list[Job]) -> dict[str, TaskResult]:
    """One run's results per task from its jobs' files, as one process's :func:`finetune` returns them."""
    from downstream.tasks import get_task

    results: dict[str, TaskResult] = {}
    for job in jobs:
        metric = get_task(job.task).metric
        result = results.setdefault(job.task, TaskResult(job.task, metric))
        metrics = json.loads(job.result.read_text())["metrics"]
        result.scores[job.seed] = metrics[metric]
        for key, value in metrics.items():
            if key != metric:
                result.others.setdefault(key, {})[job.seed] = value
    return results


def start(jobs: list[Job], world: World, folder: Path) -> Heartbeat:
    """Every rank, while the ranks of the pre-training still meet: rank 0 removes a previous invocation's error
    markers and heartbeats (from ``folder``), every rank waits for that, then starts its heartbeat."""
    if world.is_zero:
        clear_failures(jobs, folder)
    world.barrier("the start of the fine-tuning")
    beat = Heartbeat(folder, world.rank)
    beat.start()
    return beat


def spread(jobs: list[Job], beat: Heartbeat, world: World, options: dict, folder: Path) -> None:
    """Every rank runs its share of ``jobs`` (:func:`run_mine`), each a single-device run on its own device; rank 0
    then waits for them all (:func:`wait_for`: a failed job or a lost rank fails it in one line)."""
    try:
        run_mine(jobs, world.rank, world.size, world.local_rank, options)
        if world.is_zero:
            wait_for(jobs, world.size, folder)
    finally:
        beat.stop()
