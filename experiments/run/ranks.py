"""The processes of one ``isoflop compare`` (or ``isoflop sweep``): started once, by Lightning, and kept
for every pre-training run of the comparison.

A comparison pre-trains several objectives one after the other, each with its own ``Trainer``. Were
each ``Trainer`` to launch its ranks, a plain command would start new processes for every run (and
each would re-run the whole comparison). So :func:`started` starts them once, before the first run,
through Lightning's own launcher and cluster environments (``lightning.fabric.Fabric.launch``: a plain
command starts the other local ranks by re-running the command line; under ``torchrun`` or SLURM's
``srun`` the ranks exist already and are found), and initialises the process group with Lightning's
backend choice. Every later ``Trainer`` then finds ``LOCAL_RANK`` in the environment and the process
group initialised, and reuses both: every rank takes part in every pre-training run.

Beside the training's process group there is one small gloo group for the comparison's own
bookkeeping (:meth:`World.barrier`, :meth:`World.broadcast`), which works whatever the training's
backend (NCCL) and waits with a timeout, so no rank waits forever. When the pre-training is done
(:meth:`World.close`), the process group is destroyed: each rank then fine-tunes its share of the runs as
single-device runs (:mod:`experiments.finetuning.spread`, which meets through files), and rank 0 gathers,
tabulates and plots alone.

The process that started the other ranks watches them (:func:`watch`, in place of Lightning's own child
observer): a rank that fails makes this one fail too, on its own, with its own line, as soon as a collective
finds the rank gone; only if it has not ended :data:`GRACE_S` later (stuck in a collective that cannot
notice, as NCCL's can) does the watch end the job, in one line and with exit code 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from experiments.errors import RunError, UsageError, one_line, say

# How long a rank waits for the others at a barrier of the comparison (an export, say) before failing.
WAIT = timedelta(hours=1)
# How long the process that started the other ranks gives them to stop by themselves when it fails, and
# how long its watch gives it to end by itself when one of them failed.
GRACE_S = 30.0
# How long it first lets them end by themselves after its own error (they fail at their next collective).
SETTLE_S = 10.0
# How often the watch looks at the ranks this process started.
POLL_S = 1.0
# Strategies whose launcher spawns a function instead of re-running the command line.
SPAWNING = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_false_spawn", "xla", "spawn")


@dataclass
class World:
    """This process's place among the comparison's ranks (one rank when nothing was launched)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # this rank's place on its machine (its GPU)
    group: Any = None  # the gloo group of barrier() and broadcast()
    procs: list[subprocess.Popen] = field(default_factory=list)  # the ranks this process started, if any

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def barrier(self, what: str) -> None:
        """Wait until every rank is here (at most :data:`WAIT`); a lost rank fails this one in one line."""
        if self.size == 1 or self.group is None:
            return
        import torch.distributed as dist

        try:
            dist.monitored_barrier(group=self.group, timeout=WAIT, wait_all_ranks=True)
        except RuntimeError as err:
            raise RunError(f"rank {self.rank} waited in vain for the other ranks at {what}: "
                           f"{one_line(str(err).splitlines()[0] if str(err) else type(err).__name__)}") from None

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a decision taken once, from rank 0's view of the files)."""
        if self.size == 1 or self.group is None:
            return value
        import torch.distributed as dist

        box = [value]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group)
        except RuntimeError as err:
            raise RunError(f"rank {self.rank} lost the other ranks: {one_line(str(err).splitlines()[0])}") from None
        return box[0]

    def close(self) -> None:
        """After the last pre-training: every rank meets, then the process group goes, so that each rank
        fine-tunes as a single process (its metrics must not wait for the other ranks)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        self.barrier("the end of the pre-training")
        if dist.is_initialized():
            dist.destroy_process_group()
        self.group = None
        stop_watching()  # the other ranks leave now: what they do no longer concerns this process

    def abandon(self) -> None:
        """On a failure: drop the bookkeeping group, so that ranks waiting in it fail now, not in an hour."""
        if self.group is not None:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group(self.group)
            self.group = None

    def stop_children(self, signum: int | None) -> None:
        """On a failure of the process that started them: stop them. After a signal (``signum``), pass it on at
        once (a preempted rank finishes its step and saves). After an error, first give them :data:`SETTLE_S`
        to end by themselves: they fail at their next collective with their own line, which a signal could cut
        off. Then the signal (SIGTERM after an error), :data:`GRACE_S` more, and a kill."""
        stop_watching()  # this process ends them now, and says why
        alive = [p for p in self.procs if p.poll() is None]
        if signum is None:
            _wait_for(alive, SETTLE_S)
            signum = signal.SIGTERM
        for proc in alive:
            if proc.poll() is None:
                proc.send_signal(signum)
        _wait_for(alive, GRACE_S)
        for proc in alive:
            if proc.poll() is None:
                proc.kill()


def _wait_for(procs: list[subprocess.Popen], seconds: float) -> None:
    """Until every one of ``procs`` has ended, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)


class Watch(threading.Thread):
    """Watches the ranks this process started. When one ends with a non-zero code, this process is given
    ``grace`` seconds to end by itself (it fails on its own at the next collective, with its own line, and
    ends the others: :meth:`World.stop_children`); if it is still running then, the watch says so in one
    line, kills the other ranks and ends this process with exit code 1."""

    def __init__(self, procs: list[subprocess.Popen], grace: float = GRACE_S, period: float = POLL_S):
        super().__init__(daemon=True, name="isoflop-rank-watch")  # ends with the process
        self.procs, self.grace, self.period = list(procs), grace, period
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            codes = [p.poll() for p in self.procs]
            if all(code == 0 for code in codes):
                return
            failed = next((k for k, code in enumerate(codes) if code), None)
            if failed is None:
                continue
            if self.stopped.wait(self.grace):
                return
            rank = failed + 1  # the launcher's children are local ranks 1, 2, ...
            say(f"isoflop: error: local rank {rank} ended with {describe_exit(codes[failed])} and this rank had not "
                f"stopped {self.grace:g} s later (it waits for that rank in a collective): ending the job; "
                f"rank {rank}'s own error, if it had time to write one, is above")
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
            os._exit(1)  # the line is out: say() flushes

    def stop(self) -> None:
        self.stopped.set()


_WATCHES: list[Watch] = []


def watch(procs: list[subprocess.Popen]) -> None:
    """Start watching ``procs``, the ranks this process just started (called by Lightning's launchers in place
    of their own observer: :func:`experiments.private_api.replace_child_observer`)."""
    if procs:
        _WATCHES.append(Watch(procs))
        _WATCHES[-1].start()


def stop_watching() -> None:
    """Stop every watch of this process: its ranks may now end as they will."""
    while _WATCHES:
        _WATCHES.pop().stop()


def use_isoflop_watch() -> None:
    """Have the ranks Lightning starts for this process watched by :func:`watch` instead of Lightning's own
    observer, which SIGKILLs this process the moment another rank exits non-zero (as a failing or preempted
    rank does by design), before this one can say why it ends."""
    from experiments.private_api import replace_child_observer

    replace_child_observer(watch)


def describe_exit(code: int) -> str:
    """``exit code 1``, ``signal SIGKILL`` (a ``Popen.returncode``)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def count_processes(devices: Any, num_nodes: Any, accelerator: Any = "auto") -> int:
    """Processes a Trainer with these settings runs as: devices per node x nodes (``auto`` and ``-1``
    mean every visible GPU, or one process on a CPU)."""
    nodes = int(num_nodes or 1)
    if isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    text = str(devices).strip()
    if text.lstrip("-").isdigit() and int(text) > 0:
        return int(text) * nodes
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) * nodes
    import torch

    gpus = torch.cuda.device_count() if str(accelerator) in ("auto", "gpu", "cuda") else 0
    return max(1, gpus) * nodes


def processes(trainer) -> int:
    """Processes of a run's ``trainer`` configuration (a Namespace or dict of Trainer arguments)."""
    get = trainer.get if isinstance(trainer, dict) else lambda k, d=None: getattr(trainer, k, d)
    return count_processes(get("devices", "auto"), get("num_nodes", 1), get("accelerator", "auto"))


def strategy_name(strategy: Any) -> str:
    """``ddp``, ``fsdp``, ``deepspeed_stage_2`` ... or a strategy's class path, lower-cased."""
    if isinstance(strategy, str):
        return strategy.lower()
    path = strategy.get("class_path") if isinstance(strategy, dict) else getattr(strategy, "class_path", None)
    return str(path or type(strategy).__name__).lower()


def launched_processes() -> int:
    """How many processes a scheduler or ``torchrun`` started for this job (1 when none did), as
    Lightning's own cluster environments read it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", "1"))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def check_launch(trainer, command: str) -> None:
    """One-line errors, before any compute, for a launch that would run the job several times over (each
    process of ``torchrun`` or ``srun`` thinking it is alone) or that a comparison cannot keep its ranks
    through (a spawning strategy)."""
    wanted, given = processes(trainer), launched_processes()
    if given > 1 and wanted != given:
        raise UsageError(f"{given} processes were started (torchrun or srun) but --trainer.devices x --trainer.num_nodes "
                         f"makes {wanted}: give the processes per node as --trainer.devices and the nodes as "
                         "--trainer.num_nodes")
    strategy = strategy_name(getattr(trainer, "strategy", "auto"))
    if wanted > 1 and command in ("compare", "sweep") and strategy in SPAWNING:
        raise UsageError(f"--trainer.strategy {strategy}: isoflop {command} starts its ranks by re-running the command; "
                         "use ddp, fsdp or deepspeed_stage_2")


def _start(trainer) -> World:
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    accelerator = trainer.accelerator if isinstance(trainer.accelerator, str) else "auto"
    fabric = Fabric(accelerator=accelerator, devices=trainer.devices, num_nodes=trainer.num_nodes or 1,
                    strategy=DDPStrategy())
    use_isoflop_watch()
    fabric.launch()  # the other local ranks, re-running this command, or those torchrun / srun started
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=WAIT)
    from experiments.private_api import launched_processes

    procs = launched_processes(fabric.strategy.launcher)
    return World(rank=fabric.global_rank, size=fabric.world_size, local_rank=fabric.local_rank, group=group,
                 procs=procs)


@contextlib.contextmanager
def started(trainer) -> Iterator[World]:
    """The comparison's ranks for the block, from the ``trainer`` configuration every pre-training run uses
    (each run is given them: :func:`experiments.run.pretrain.pretrain`); one rank, and nothing started, when
    it asks for one process. On a failure in the process that started the others, they are stopped too."""
    world = _start(trainer) if processes(trainer) > 1 else World()
    try:
        yield world
        world.close()
    except BaseException as err:
        world.abandon()
        if world.procs:
            world.stop_children(getattr(err, "signum", None))
        raise
