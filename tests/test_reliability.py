"""Reliability: a real signal stops a real run at a step boundary and the resumed run ends bitwise equal to
the uninterrupted one; a non-finite loss stops a run and keeps the last good checkpoint; a failed write
leaves the previous checkpoint and metrics intact; a changed length is refused or rescheduled."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from tests.helpers import SIGNAL_CALLBACK, error_line, mentions, signal_env, signalling

STEPS = 30  # 200 documents make 229 examples: 14 batches of 16 per epoch, so 30 steps cross two epochs
BASE = ["pretrain", "--config", "tiny", "--data.max_documents", "200", "--wandb", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "5", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1"]


def command(steps: int, run_dir: Path, *extra: str, checkpoint_every: int = 2) -> list[str]:
    return [*BASE, "--trainer.max_steps", str(steps), "--checkpoint_every", str(checkpoint_every), "--run_dir",
            str(run_dir), *extra]


# The signal tests' command: checkpoints every 7 steps besides the one the signal saves. The helper callback
# (tests.helpers.SignalAtStep) is on the command line of the uninterrupted run too, so that every run is the same
# command; it signals its own process only where the test sets its environment (helpers.signal_env).
ARGS = [*BASE, "--trainer.max_steps", str(STEPS), "--checkpoint_every", "7", SIGNAL_CALLBACK]
ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
REPO = Path(__file__).resolve().parents[1]


def rows(run_dir: Path) -> list[dict]:
    """The CSV log's rows, less the throughput columns (wall-clock measurements, which no two runs share)."""
    from experiments.run.throughput import KEYS

    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in KEYS} for r in csv.DictReader(f)]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir, one_thread):
    """The uninterrupted run (bitwise reproducible on a CPU)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main([*ARGS, "--run_dir", str(run_dir)]) == 0
    return run_dir


def signalled(argv: list[str], step: int, name: str, cache_dir: Path, cwd: Path, rank: int | str = 0,
              **extra: str) -> subprocess.CompletedProcess:
    """``isoflop ARGV`` in a new process whose rank ``rank`` sends itself the signal ``name`` at the end of step
    ``step`` (``SignalAtStep`` must be on the command line): its exit status and output once it has ended."""
    env = {**os.environ, **ENV, **signal_env(step, name, rank), "ISOFLOP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO),
           **extra}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def stop_line(err: str, command: str) -> str:
    """The last line of the first (or only) rank that reports a stop by a signal: ``isoflop COMMAND: ...``, not an
    error (other ranks' lines say ``isoflop COMMAND (rank N): ...``)."""
    prefix = f"isoflop {command}: "
    lines = [line for line in err.strip().splitlines() if line.startswith(prefix)]
    assert lines, err[-3000:]
    assert not lines[-1].startswith(prefix + "error: "), lines[-1]
    return lines[-1]


@pytest.mark.parametrize("name, step, process", [("SIGTERM", 14, "new"), ("SIGTERM", 20, "this"), ("SIGINT", 5, "this"),
                                                 ("SIGUSR1", 9, "this")],
                         ids=["sigterm-end-of-epoch", "sigterm-mid-epoch", "sigint-at-validation", "sigusr1"])
def test_signal_saves_at_the_step_and_the_resume_is_exact(name, step, process, reference, tmp_path, cache_dir, one_thread,
                                                          capsys):
    """The run signals itself at the end of ``step`` (in a new process: its exit status; the others in this
    one): exit code 128 + N, a checkpoint of that step, the log up to it; the same command resumes, bitwise."""
    signum = getattr(signal, name)
    run_dir = tmp_path / "run"
    argv = [*ARGS, "--run_dir", str(run_dir)]
    if process == "new":
        stopped = signalled(argv, step, name, cache_dir, Path.cwd())
        code, err = stopped.returncode, stopped.stderr
    else:
        with signalling(step, name):
            code = main(argv)
        err = capsys.readouterr().err
    assert code == 128 + signum, err[-3000:]
    mentions(stop_line(err, "pretrain"), name, step, f"{run_dir}/checkpoints/last.ckpt")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == step and not (run_dir / "result.json").exists()
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary files left
    logged = rows(run_dir)
    assert max(int(r["step"]) for r in logged if r.get("train/loss")) == step - 1  # logged up to the stop (0-based)

    assert main(argv) == 0  # the same command resumes
    difference = max_difference(weights(reference), weights(run_dir))
    print(f"{name} at step {step}: max weight difference after resume {difference}")
    assert difference == 0.0
    assert rows(run_dir) == rows(reference)  # every row, the ones before the stop kept, none twice
    assert rows(run_dir)[:len(logged)] == logged


NAN_STEP = 5


@pytest.fixture
def nan_at_step(monkeypatch):
    """Make the training loss NaN at step NAN_STEP (1-based) of every run in this process."""
    from objectives.mlm import MaskedLM

    compute = MaskedLM.compute

    def poisoned(self, batch, rng):
        metrics = compute(self, batch, rng)
        if rng is None and self.trainer.global_step == NAN_STEP - 1:  # training (validation passes its rng)
            metrics = {**metrics, "loss": metrics["loss"] * float("nan")}
        return metrics

    monkeypatch.setattr(MaskedLM, "compute", poisoned)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(nan_at_step, tmp_path, cache_dir, one_thread,
                                                                         capsys):
    run_dir = tmp_path / "run"
    argv = command(10, run_dir)
    assert main(argv) == 1
    # (before the line: the data's progress bars, if built here)
    line = error_line(capsys.readouterr().err, "pretrain", last=True)
    mentions(line, "train/loss", "nan", NAN_STEP, f"{run_dir}/checkpoints/last.ckpt")
    good = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert good["global_step"] == NAN_STEP - 1
    assert all(torch.isfinite(t).all() for t in good["state_dict"].values() if t.is_floating_point())
    assert all(r["train/loss"] != "nan" for r in rows(run_dir) if r.get("train/loss"))
    assert not (run_dir / "result.json").exists()

    # Exporting a checkpoint with NaN weights is refused, and nothing is written.
    good["state_dict"]["model.electra.embeddings.word_embeddings.weight"][0, 0] = float("nan")
    torch.save(good, tmp_path / "nan.ckpt")
    assert main(["export", str(tmp_path / "nan.ckpt"), str(tmp_path / "hf")]) == 2
    mentions(error_line(capsys.readouterr().err, "export"), str(tmp_path / "nan.ckpt"),
             "model.electra.embeddings.word_embeddings.weight", 1)  # the weight, and how many of its values
    assert not (tmp_path / "hf").exists()

    # Opting in to skipping: the same command with --skip_nonfinite 1 resumes and steps over the bad step.
    assert main([*argv, "--skip_nonfinite", "1"]) == 0
    reported = [line for line in capsys.readouterr().out.splitlines() if "train/loss" in line and "nan" in line]
    assert len(reported) == 1  # the skipped step, printed once
    mentions(reported[0], NAN_STEP)
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 10
    assert all(torch.isfinite(t).all() for t in final["state_dict"].values() if t.is_floating_point())
    skipped = [(int(r["step"]), float(r["train/skipped_steps"])) for r in rows(run_dir) if r.get("train/skipped_steps")]
    assert skipped[0] == (NAN_STEP - 1, 1.0) and {count for _, count in skipped} == {1.0}  # a running count


def test_a_nonfinite_step_between_log_steps_is_never_applied_and_ends_the_run(nan_at_step, tmp_path, cache_dir,
                                                                               one_thread, capsys):
    """Logging every 10 steps, the check reads nothing back before step 10 (no host sync): the NaN step 5 is
    skipped on the device, and the run stops at its next read, the checkpoint of step 6, which is then not
    written (last.ckpt stays step 4's), with exit 1 and a line naming step 5. With --skip_nonfinite 1 the same
    run ends well, the bad step reported once and never applied."""
    run_dir = tmp_path / "run"
    argv = [*command(10, run_dir), "--trainer.log_every_n_steps", "10"]
    assert main(argv) == 1
    mentions(error_line(capsys.readouterr().err, "pretrain", last=True), "train/loss", "nan", NAN_STEP,
             f"{run_dir}/checkpoints/last.ckpt")
    good = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert good["global_step"] == NAN_STEP - 1
    assert not (run_dir / "result.json").exists() and not (run_dir / "export").exists()

    skipping = tmp_path / "skipping"
    assert main([*command(10, skipping), "--trainer.log_every_n_steps", "10", "--skip_nonfinite", "1"]) == 0
    reported = [line for line in capsys.readouterr().out.splitlines() if "train/loss" in line and "nan" in line]
    assert len(reported) == 1
    mentions(reported[0], NAN_STEP)
    final = torch.load(skipping / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 10
    assert all(torch.isfinite(t).all() for t in final["state_dict"].values() if t.is_floating_point())


class DiskFull(OSError):
    def __init__(self):
        super().__init__(errno.ENOSPC, "No space left on device")


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, cache_dir, one_thread, monkeypatch, capsys):
    """A full disk in the middle of saving: the run fails with exit 1 and one line; last.ckpt and the
    metrics are as they were (the metrics only grew), and no temporary file is left."""
    import experiments.run.checkpoints as checkpoints

    run_dir = tmp_path / "run"
    argv = command(8, run_dir, SIGNAL_CALLBACK)
    with signalling(4):  # the helper signals its own process at step 4
        assert main(argv) == 128 + signal.SIGTERM
    last = run_dir / "checkpoints" / "last.ckpt"
    before, metrics_before = last.read_bytes(), (run_dir / "csv" / "metrics.csv").read_bytes()
    save = torch.save

    def half_then_full(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise DiskFull()

    monkeypatch.setattr(checkpoints.torch, "save", half_then_full)
    capsys.readouterr()
    assert main(argv) == 1  # the resumed run fails at its first save, at step 6
    mentions(error_line(capsys.readouterr().err, "pretrain", last=True), errno.ENOSPC)  # the error number
    assert last.read_bytes() == before
    assert (run_dir / "csv" / "metrics.csv").read_bytes().startswith(metrics_before)
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(["last.ckpt", "epoch=0-step=4.ckpt"])


def test_atomic_checkpoint_io_and_csv_writer_roll_back(tmp_path, monkeypatch):
    """Unit level: an exception in the middle of a checkpoint, an appended CSV row or a CSV rewrite."""
    from experiments.run.checkpoints import AtomicCheckpointIO
    from experiments.run.loggers import _AppendingWriter

    io_ = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io_.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise DiskFull()

    with pytest.raises(DiskFull):
        io_.save_checkpoint({"step": 2, "w": torch.zeros(1000), "bad": Unpicklable()}, path)
    assert path.read_bytes() == good and os.listdir(path.parent) == ["last.ckpt"]
    assert io_.load_checkpoint(path)["step"] == 1

    writer = _AppendingWriter(str(tmp_path / "csv"))
    writer.log_metrics({"a": 1.0}, step=0)
    writer.save()
    content = (tmp_path / "csv" / "metrics.csv").read_bytes()
    real_writerows = csv.DictWriter.writerows

    def one_row_then_full(self, rows_):
        real_writerows(self, list(rows_)[:1])
        raise DiskFull()

    monkeypatch.setattr(csv.DictWriter, "writerows", one_row_then_full)
    for metrics in ({"a": 2.0}, {"b": 3.0}):  # an append, then a rewrite for a new column
        writer.log_metrics(metrics, step=1)
        with pytest.raises(DiskFull):
            writer.save()
        writer.metrics = []
        assert (tmp_path / "csv" / "metrics.csv").read_bytes() == content
    assert os.listdir(tmp_path / "csv") == ["metrics.csv"]
    monkeypatch.undo()
    resumed = _AppendingWriter(str(tmp_path / "csv"))  # a resumed run continues the file
    resumed.log_metrics({"a": 4.0, "c": 5.0}, step=2)
    resumed.save()
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        assert [dict(r) for r in csv.DictReader(f)] == [{"a": "1.0", "c": "", "step": "0"},
                                                        {"a": "4.0", "c": "5.0", "step": "2"}]


def test_a_changed_length_is_rescheduled_on_request(tmp_path, cache_dir, one_thread, monkeypatch, capsys):
    """A run of 10 steps stopped at step 6, resumed with max_steps 14: refused, then with --reschedule the
    learning rate goes linearly from its value at step 6 to 0 at step 14. A finished run is not extended."""
    run_dir = tmp_path / "run"
    callback = SIGNAL_CALLBACK
    with signalling(6):  # the helper signals its own process at step 6
        assert main(command(10, run_dir, callback)) == 128 + signal.SIGTERM
    longer = command(14, run_dir, callback)
    capsys.readouterr()
    assert main(longer) == 2
    mentions(error_line(capsys.readouterr().err, "pretrain"), str(run_dir), "max_steps", 10, 14, "--reschedule")
    assert main([*longer, "--reschedule", "true"]) == 0
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    keeper = next(v for k, v in final["callbacks"].items() if k.startswith("ScheduleKeeper"))
    # warmup int(0.01 x 10) = 0 steps, so the multiplier at step 6 of 10 was (10 - 6) / 10 = 0.4
    assert keeper["total"] == 14 and keeper["anchor"]["step"] == 6 and keeper["anchor"]["end"] == 14
    assert keeper["anchor"]["multipliers"] == pytest.approx([0.4] * len(keeper["anchor"]["multipliers"]))
    assert final["global_step"] == 14 and final["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0
    finished = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and "wandb" not in p.parts}
    assert main([*longer, "--reschedule", "true"]) == 0  # rerunning the finished command trains nothing
    assert {p: p.read_bytes() for p in finished} == finished  # no checkpoint, log row or result written
    capsys.readouterr()
    assert main([*command(20, run_dir, callback), "--reschedule", "true"]) == 2  # no continuation at a rate of 0
    mentions(error_line(capsys.readouterr().err, "pretrain"), str(run_dir), "max_steps", 14)


def test_linear_decay_from_the_resume_point():
    from experiments.run.resume import _linear_to_zero

    schedule = _linear_to_zero(0.5, start=6, end=10)
    assert [schedule(s) for s in (6, 7, 8, 10, 11)] == [0.5, 0.375, 0.25, 0.0, 0.0]


def test_sampler_splits_ranks_and_resumes_mid_epoch():
    from datamodules.sampler import ResumableSampler

    full = [list(ResumableSampler(103, 4, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(f) == 32 for f in full) and len({i for f in full for i in f}) == 96  # disjoint, drop_last
    assert len(ResumableSampler(103, 4, seed=1, rank=0, world_size=3)) == 32
    resumed = ResumableSampler(103, 4, seed=1, rank=2, world_size=3)
    resumed.load_state_dict(ResumableSampler(103, 4, seed=1, rank=2, world_size=3).state_dict(consumed_batches=5))
    assert list(resumed) == full[2][5 * 4:]  # the batch it would have read next, not the epoch's first
    assert list(resumed) == full[2]  # and the next iteration is a whole epoch again
    resumed.set_epoch(1)
    assert list(resumed) != full[2] and sorted(resumed) != sorted(full[2])  # another order (and rank share)


def test_default_run_directory_is_the_configuration(monkeypatch, cache_dir):
    from experiments.run.prepare import prepare

    monkeypatch.delenv("ISOFLOP_RUN_DIR", raising=False)
    name = prepare(["--config", "tiny"]).run_dir
    assert prepare(["--config", "tiny", "--wandb", "false", "--trainer.enable_progress_bar", "false"]).run_dir == name
    other = prepare(["--config", "tiny", "--trainer.max_steps", "7"]).run_dir
    assert name.parent == other.parent == Path("runs") and name != other
    assert name.name.startswith("maskedlm-tiny-") and len(name.name) == len("maskedlm-tiny-") + 8


def test_two_ranks_stop_at_the_same_step_and_resume_exactly(tmp_path, cache_dir):
    """DDP on two CPU processes (gloo): SIGTERM to the first process at step 5; the ranks agree at the next
    collective (every log_every_n_steps = 2 steps), both save and stop at step 6, and the resumed run (each
    rank restoring its own RNG states and data share) ends bitwise equal to the uninterrupted one."""
    env = {**os.environ, **ENV, "ISOFLOP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO)}
    ddp = [*BASE, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
           "--trainer.max_steps", "12", "--trainer.log_every_n_steps", "2", SIGNAL_CALLBACK]
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    cli = [sys.executable, "-m", "experiments.cli"]
    assert subprocess.run([*cli, *ddp, "--run_dir", str(reference)], env=env, capture_output=True,
                          timeout=300).returncode == 0
    stopped = signalled([*ddp, "--run_dir", str(run_dir)], 5, "SIGTERM", cache_dir, Path.cwd(), rank=0)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert max(int(r["step"]) for r in rows(run_dir) if r.get("train/loss")) == 6 - 1  # logged up to the stop
    # Rank 0's line (rank 1 prints its own, "isoflop pretrain (rank 1): ...", if it gets to it before the job ends)
    mentions(stop_line(stopped.stderr, "pretrain"), "SIGTERM", 6, f"{run_dir}/checkpoints/last.ckpt")
    assert subprocess.run([*cli, *ddp, "--run_dir", str(run_dir)], env=env, capture_output=True,
                          timeout=300).returncode == 0  # the same command resumes
    assert max_difference(weights(reference), weights(run_dir)) == 0.0
    assert rows(run_dir) == rows(reference)
