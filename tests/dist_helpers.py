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


class HostSync(Exception):
    """A host-device synchronisation inside a training step that logs nothing (tests.dist_helpers.NoSyncGuard)."""


def _syncs(func, args) -> str | None:
    """The name of ``func`` when calling it with ``args`` reads a device value back to the host (or makes a
    shape that depends on one), else None."""
    import torch

    name = getattr(func, "__name__", str(func))
    if name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select",
                "nonzero_static", "unique", "argwhere", "masked_scatter"):
        return name
    if name == "__getitem__" and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
            return "boolean-mask indexing"
    return None


class NoSyncGuard(Callback):
    """Fails on any call that reads a device value back to the host (``Tensor.item``, ``tolist``, ``__bool__``,
    ``nonzero``, boolean-mask indexing ...) inside every training step whose metrics are not logged: from the
    first ``on_train_batch_start`` hook (it puts itself first among the callbacks) to the module's own
    ``on_train_batch_end``, which Lightning runs after every callback's; so the forward, the backward, every
    callback and the optimiser step, not the data loading between steps. Through a ``TorchFunctionMode``. A
    call found raises :class:`HostSync` (the run fails with its name); :attr:`last` is the guard of the last
    run, with the steps it checked."""

    last: "NoSyncGuard | None" = None

    def __init__(self):
        import torch.overrides

        guard = self

        class Mode(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                what = _syncs(func, args)
                if what is not None:
                    raise HostSync(f"{what} in training step {guard.step}, which logs nothing")
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.active = False
        self.step = 0
        self.checked: list[int] = []
        NoSyncGuard.last = self

    def setup(self, trainer, pl_module, stage: str) -> None:
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)  # the first on_train_batch_start hook
        end = pl_module.on_train_batch_end

        def stop_then_end(*args, **kwargs):
            self.stop()
            return end(*args, **kwargs)

        pl_module.on_train_batch_end = stop_then_end  # the last on_train_batch_end hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.step = trainer.global_step + 1
        if not pl_module.logs_at(self.step):
            self.mode.__enter__()
            self.active = True
            self.checked.append(self.step)

    def stop(self) -> None:
        if self.active:
            self.mode.__exit__(None, None, None)
            self.active = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stop()


def spread_finetune_main(spec_path: str) -> None:
    """One rank of ``tests.test_finetune_ranks``: the fine-tuning stage of a multi-process comparison alone, on the
    exports that ``spec_path`` (JSON: runs, tasks, seeds, options, folder) names. With ``WORLD_SIZE`` 2, the ranks
    join a gloo process group (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``), start the fine-tuning as
    :func:`experiments.comparison.compare.compare` does and close the group before fine-tuning. A job named by
    ``$ISOFLOP_TEST_FAIL_JOB`` (``task-seedK`` of the first run) fails on the rank that runs it. Rank 0 writes
    every run's gathered scores and its wall time to ``folder/scores.json``."""
    import torch.distributed as dist

    from experiments.finetuning import spread
    from experiments.finetuning.finetune import Jobs
    from experiments.run.ranks import World

    spec = json.loads(Path(spec_path).read_text())
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    world = World()
    if size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=size)
        world = World(rank=rank, size=size, local_rank=rank, group=dist.new_group(backend="gloo"))
    jobs = spread.jobs_of([tuple(r) for r in spec["runs"]], spec["tasks"], spec["seeds"])
    folder = Path(spec["folder"])
    beat = spread.start(jobs, world, folder)
    world.close()
    fail = os.environ.get("ISOFLOP_TEST_FAIL_JOB")
    if fail:
        run_one = Jobs.run_one

        def failing(self, name, seed, **run):
            if f"{name}-seed{seed}" == fail and self.encoder == jobs[0].export:
                raise RunError(f"injected failure in {fail}")
            return run_one(self, name, seed, **run)

        Jobs.run_one = failing
    began = time.monotonic()
    spread.spread(jobs, beat, world, spec["options"], folder)
    if world.is_zero:
        scores = {name: {task: {"scores": r.scores, "others": r.others}
                         for task, r in spread.gather([j for j in jobs if j.name == name]).items()}
                  for name, _, _ in spec["runs"]}
        (folder / "scores.json").write_text(json.dumps({"scores": scores, "wall_s": time.monotonic() - began}))


if __name__ == "__main__":
    import sys

    spread_finetune_main(sys.argv[1])
