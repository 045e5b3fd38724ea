"""Several processes, for real: two CPU ranks (gloo) launched by Lightning or by torchrun train exactly what
one process trains at the same global batch, read disjoint examples, count the same tokens and FLOPs; a
comparison on two ranks gives one table and one export per objective; a failing rank ends the job with
its error; the strategies this machine cannot run fail in one line before any compute; a sharded
checkpoint exports the same Hugging Face directories as a single file.

FSDP itself is not run here: torch's FSDP needs a CUDA (or other accelerator) device and refuses a
CPU ("FSDP needs a non-CPU accelerator device"), and Lightning refuses ``strategy="fsdp"`` with
``accelerator="cpu"``; its sharded checkpoints are tested through their on-disk format instead."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from tests.dist_helpers import read_records
from tests.helpers import SIGNAL_CALLBACK, error_line, mentions, signalling
from tests.test_reliability import ENV, max_difference, weights

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds: a hang fails the test instead of the suite
RECORD = "--trainer.callbacks+=tests.dist_helpers.RecordBatches"
PRETRAIN = ["pretrain", "--config", "tiny", "--model", "objectives.ReplacedTokenDetection", "--data.max_documents", "200",
            "--wandb", "false", "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "3",
            "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "6", RECORD]
TWO_CPUS = ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]


def environment(cache_dir: Path, **extra: str) -> dict:
    return {**os.environ, **ENV, "ISOFLOP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), **extra}


def launch(argv: list[str], cache_dir: Path, cwd: Path, torchrun: bool = False, **extra: str):
    """``isoflop ARGV`` in new processes (Lightning's launcher starts the second rank, or torchrun both)."""
    start = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
             "--master_port", str(29400 + os.getpid() % 500)] if torchrun else [sys.executable]
    began = time.monotonic()
    proc = subprocess.run([*start, "-m", "experiments.cli", *argv], env=environment(cache_dir, **extra), cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)
    print(f"{' '.join(argv[:1])} {'torchrun' if torchrun else 'lightning'}: rc {proc.returncode}, "
          f"{time.monotonic() - began:.1f} s")
    return proc


def launch_slurm(argv: list[str], cache_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``isoflop ARGV`` as ``srun --ntasks 2`` starts it on one node: two processes with SLURM's variables
    (Lightning's SLURMEnvironment reads them); both ranks' output (rank 0's first: each rank prints the
    fine-tuning jobs it runs) and the first non-zero return code."""
    job = str(3000 + os.getpid() % 1000)  # Lightning derives the rendezvous port from the job id
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": job, "SLURM_JOB_NAME": "isoflop-test", "SLURM_NODELIST": "127.0.0.1"}
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.cli", *argv], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=environment(cache_dir, **slurm, SLURM_PROCID=str(k), SLURM_LOCALID=str(k)))
             for k in (0, 1)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    codes = [p.returncode for p in procs]
    return subprocess.CompletedProcess(argv, next((c for c in codes if c), 0), outputs[0][0] + outputs[1][0],
                                       outputs[0][1] + outputs[1][1])


def in_process(argv: list[str], record: Path | None = None) -> int:
    """``isoflop ARGV`` in this process, recording its batches under ``record``."""
    if record is not None:
        os.environ["ISOFLOP_TEST_RECORD"] = str(record)
    try:
        return main(argv)
    finally:
        os.environ.pop("ISOFLOP_TEST_RECORD", None)


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def logged(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, train/tokens, train/flops) of every training row of a run's CSV log."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [(int(r["step"]), float(r["train/tokens"]), float(r["train/flops"])) for r in csv.DictReader(f)
                if r.get("train/loss")]


def per_step(records: list[dict]) -> dict[int, list[list[int]]]:
    """The examples of every step, micro-batch by micro-batch (over ranks, in rank order)."""
    steps: dict[int, list[list[int]]] = {}
    for r in sorted(records, key=lambda r: (r["step"], r["rank"])):
        steps.setdefault(r["step"], []).append(r["ids"])
    return steps


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir, one_thread):
    """One process, batches of 8 accumulated twice: a global batch of 16, as two ranks of 8."""
    base = tmp_path_factory.mktemp("one")
    assert in_process([*PRETRAIN, "--data.batch_size", "8", "--trainer.accumulate_grad_batches", "2",
                       "--run_dir", str(base / "run")], base / "record") == 0
    return base


def test_two_ranks_train_what_one_process_trains(one_process, tmp_path, cache_dir):
    """DDP on two CPU processes (Lightning's launcher), batches of 8 per rank, against one process
    accumulating two batches of 8: the same examples in every step, disjoint between the ranks; the same
    logged tokens and FLOPs; the same weights after 6 steps (to float tolerance)."""
    run_dir = tmp_path / "run"
    proc = launch([*PRETRAIN, *TWO_CPUS, "--data.batch_size", "8", "--run_dir", str(run_dir)], cache_dir, tmp_path,
                  ISOFLOP_TEST_RECORD=str(tmp_path / "record"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_records(tmp_path / "record")
    one = read_records(one_process / "record")
    ranks = [{i for r in two if r["rank"] == k for i in r["ids"]} for k in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6 * 8 and not ranks[0] & ranks[1]  # disjoint, each its own 48
    assert per_step(two) == per_step(one)  # rank k trains the k-th micro-batch of each step
    mine, reference = result(run_dir), result(one_process / "run")
    assert (mine["steps"], mine["tokens"], mine["flops"]) == (reference["steps"], reference["tokens"], reference["flops"])
    assert logged(run_dir) == logged(one_process / "run")  # every logged row of tokens and FLOPs
    difference = max_difference(weights(one_process / "run"), weights(run_dir))
    print(f"two ranks vs one process: tokens {mine['tokens']} / {reference['tokens']}, FLOPs {mine['flops']:.6e} / "
          f"{reference['flops']:.6e}, max weight difference {difference:.3e}, rank 0 / 1 examples {len(ranks[0])} / "
          f"{len(ranks[1])}, shared {len(ranks[0] & ranks[1])}")
    assert difference < 1e-5
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if "-v" in n or n.startswith(".")]  # written once, whole


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory, cache_dir, one_thread):
    """One process, batches of 16: the same global batch again, in one batch per step."""
    base = tmp_path_factory.mktemp("sixteen")
    assert in_process([*PRETRAIN, "--data.batch_size", "16", "--run_dir", str(base / "run")], base / "record") == 0
    return base


def test_one_process_at_the_same_global_batch_counts_the_same(one_process, sixteen):
    """One process with batches of 16 (no accumulation): the same examples per step, tokens and FLOPs."""
    ours, reference = result(sixteen / "run"), result(one_process / "run")
    assert ours["tokens"] == reference["tokens"] and ours["steps"] == reference["steps"]
    assert ours["flops"] == pytest.approx(reference["flops"], rel=1e-12)
    steps = per_step(read_records(sixteen / "record"))
    assert {s: [sorted(i)] for s, (i,) in steps.items()} == \
        {s: [sorted(a + b)] for s, (a, b) in per_step(read_records(one_process / "record")).items()}


def test_a_run_resumes_on_another_world_size(sixteen, tmp_path, cache_dir, one_thread):
    """Stopped by SIGTERM at step 3 on one process (16 sequences a step), resumed by the same command on two
    (8 each): the same run directory is continued, every step trains the uninterrupted run's examples, and
    the tokens and FLOPs are the uninterrupted run's."""
    from experiments.config import dump, parse
    from experiments.run import rundir

    run_dir = tmp_path / "run"
    with signalling(3):  # the helper signals its own process at step 3
        assert in_process([*PRETRAIN, SIGNAL_CALLBACK, "--data.batch_size", "16", "--run_dir", str(run_dir)],
                          tmp_path / "record") == 128 + signal.SIGTERM
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    two = [*PRETRAIN, SIGNAL_CALLBACK, *TWO_CPUS, "--data.batch_size", "8", "--run_dir", str(run_dir)]
    notice = rundir.check_layout(run_dir, dump(parse(two[1:])))  # what the resumed run says of the new layout
    assert notice is not None
    mentions(notice, 1, 16, 2, 8)  # processes x sequences before, and now
    proc = launch(two, cache_dir, tmp_path, ISOFLOP_TEST_RECORD=str(tmp_path / "record"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert notice in proc.stdout
    trained = {}
    for r in read_records(tmp_path / "record"):  # the stopped leg fetched step 4's batch too: the last records win
        trained.setdefault(r["step"], {})[r["rank"]] = sorted(r["ids"])
    reference = {s: sorted(i) for s, (i,) in per_step(read_records(sixteen / "record")).items()}
    assert {s: sorted(sum(by_rank.values(), [])) for s, by_rank in trained.items()} == reference
    assert (result(run_dir)["tokens"], result(run_dir)["flops"]) == (result(sixteen / "run")["tokens"],
                                                                   result(sixteen / "run")["flops"])


COMPARE = ["compare", "--budget_steps", "3", "--finetune.seeds", "1", "--finetune.tasks", "docpair", "--finetune.epochs", "1",
           "--finetune.max_train_examples", "16", "--config", "tiny", "--data.max_documents", "200",
           "--data.max_val_examples", "8", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
           "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--wandb", "false"]


def table(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open() as f:
        return {r["run"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def compare_one(tmp_path_factory, cache_dir, one_thread):
    """The comparison on one process, at the global batch of the two-rank ones (8)."""
    out = tmp_path_factory.mktemp("compare-one") / "out"
    assert main([*COMPARE, "--out_dir", str(out), "--data.batch_size", "8"]) == 0
    return out


@pytest.mark.parametrize("how", ["lightning-launcher", "torchrun", "slurm"])
def test_compare_on_two_ranks(how, compare_one, tmp_path, cache_dir):
    """``isoflop compare`` on two CPU ranks, started by Lightning's launcher, by torchrun or as SLURM's srun
    starts them: one table, one export per objective, each step of work once, and per objective the FLOPs
    and steps of the one-process comparison at the same global batch."""
    out = tmp_path / "out"
    argv = [*COMPARE, *TWO_CPUS, "--data.batch_size", "4", "--out_dir", str(out)]
    if how == "slurm":
        proc = launch_slurm(argv, cache_dir, tmp_path)
    else:
        proc = launch(argv, cache_dir, tmp_path, torchrun=how == "torchrun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, reference = table(out), table(compare_one)
    assert set(ours) == set(reference) == {"MaskedLM", "ReplacedTokenDetection"}
    for name in ours:
        assert (ours[name]["steps"], ours[name]["tokens"]) == (reference[name]["steps"], reference[name]["tokens"])
        assert float(ours[name]["flops"]) == pytest.approx(float(reference[name]["flops"]), rel=1e-12), name
        assert (out / name / "export" / "config.json").is_file()
        assert json.loads((out / name / "result.json").read_text())["flops"] == float(ours[name]["flops"])
    print({name: (ours[name]["steps"], ours[name]["flops"], reference[name]["flops"]) for name in ours})
    assert sorted(p.name for p in out.iterdir() if not p.is_dir()) == sorted(p.name for p in compare_one.iterdir()
                                                                             if not p.is_dir())
    printed = proc.stdout.splitlines()
    for once in ("[compare] MaskedLM: pre-training", "[compare] exported MaskedLM to", "[finetune] docpair seed 0",
                 "[compare] results in"):
        assert sum(line.startswith(once) for line in printed) == (2 if once.startswith("[finetune]") else 1), once
    assert not [p for p in out.rglob(".*tmp*")]  # no half-written file or directory left by any rank


def test_a_failing_rank_ends_the_comparison_with_its_error(tmp_path, cache_dir):
    """Rank 1 fails alone in the first pre-training while rank 0 is busy for 8 s before its next collective: the
    job ends (no rank waits: a hang would run into TIMEOUT) with rank 1's line, then rank 0's, and exit code 1.
    Lightning's own child observer would have SIGKILLed rank 0 in those 8 s (it polls every 5 s), leaving
    exit code -9 and no line of rank 0: the observer is replaced (experiments.run.ranks.watch)."""
    proc = launch([*COMPARE, *TWO_CPUS, "--data.batch_size", "4", "--out_dir", str(tmp_path / "out"),
                   "--trainer.callbacks+=tests.dist_helpers.FailOnRank"], cache_dir, tmp_path,
                  ISOFLOP_TEST_FAIL_RANK="1", ISOFLOP_TEST_FAIL_AT="2", ISOFLOP_TEST_OTHERS_SLEEP="8")
    assert proc.returncode == 1, proc.stderr[-3000:]  # a runtime failure
    ones = [line for line in proc.stderr.splitlines() if line.startswith("isoflop compare (rank 1): error: ")]
    zeros = [line for line in proc.stderr.splitlines() if line.startswith("isoflop compare: error: ")]
    assert len(ones) == 1 and len(zeros) == 1, proc.stderr[-3000:]
    assert ones[0].endswith(": injected failure at step 2")  # the error FailOnRank raised, passed on whole
    mentions(zeros[0], "rank")  # rank 0's own line: it lost the other rank
    assert "Forcefully terminating" not in proc.stderr
    assert not (tmp_path / "out" / "results.csv").exists()


def test_strategies_this_machine_cannot_run_fail_before_compute(tmp_path, capsys):
    """DeepSpeed is an optional extra (not installed here), FSDP needs CUDA: one line each, exit 2, nothing
    built or written; so does a torchrun launch whose process count the configuration does not match."""
    argv = ["pretrain", "--config", "tiny", "--wandb", "false", "--run_dir", str(tmp_path / "run")]
    if importlib.util.find_spec("deepspeed") is None:
        assert main([*argv, "--trainer.strategy", "deepspeed_stage_2"]) == 2
        mentions(error_line(capsys.readouterr().err, "pretrain"), "--trainer.strategy", "deepspeed_stage_2",
                 "isoflop[deepspeed]", "ddp")  # the option and value, what to install, what to use instead
    if not torch.cuda.is_available():
        assert main([*argv, "--trainer.strategy", "fsdp", "--trainer.devices", "2"]) == 2
        mentions(error_line(capsys.readouterr().err, "pretrain"), "--trainer.strategy", "fsdp", "CUDA", "ddp")
    torchrun = {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "GROUP_RANK": "0",
                "LOCAL_WORLD_SIZE": "2"}  # what torchrun --nproc_per_node 2 sets, seen from its first process
    os.environ.update(torchrun)
    try:
        assert main(["compare", "--config", "tiny", "--out_dir", str(tmp_path / "out")]) == 2
    finally:
        for name in torchrun:
            os.environ.pop(name)
    # the processes started, the options that say how many there should be, and how many they make
    mentions(error_line(capsys.readouterr().err, "compare"), 2, "--trainer.devices", "--trainer.num_nodes", 1)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_a_sharded_checkpoint_exports_what_its_full_checkpoint_does(one_process, tmp_path):
    """FSDP's sharded format (Lightning's ``state_dict_type="sharded"``: torch.distributed.checkpoint shards of
    the weights and optimiser state, the rest in ``meta.pt``), written here without FSDP from a real run's
    checkpoint, is consolidated by ``isoflop export`` into the same Hugging Face directories."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    full = torch.load(one_process / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    sharded = tmp_path / "last.ckpt"
    state = {"model": full.pop("state_dict"), **{f"optimizer_{i}": o for i, o in enumerate(full.pop("optimizer_states"))}}
    dcp.save(state, checkpoint_id=sharded, no_dist=True)
    torch.save(full, sharded / "meta.pt")
    assert main(["export", str(one_process / "run" / "checkpoints" / "last.ckpt"), str(tmp_path / "from-file")]) == 0
    assert main(["export", str(sharded), str(tmp_path / "from-shards")]) == 0
    files = sorted(p.relative_to(tmp_path / "from-file") for p in (tmp_path / "from-file").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "from-shards") for p in (tmp_path / "from-shards").rglob("*")
                           if p.is_file())
    for name in files:
        a, b = tmp_path / "from-file" / name, tmp_path / "from-shards" / name
        if name.suffix == ".safetensors":
            x, y = load_file(a), load_file(b)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        elif name.name == "isoflop.json":  # the same checkpoint's provenance; only the sharded one has no run directory
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for key in ("objective", "encoder", "flops", "tokenizer", "network"):
                assert x[key] == y[key], (name, key)
            assert (x["training"]["steps"], x["training"]["tokens"]) == (y["training"]["steps"], y["training"]["tokens"])
        elif name.name != "README.md":  # the card: written from isoflop.json
            assert a.read_bytes() == b.read_bytes(), name


def test_resuming_on_another_world_size(tmp_path, cache_dir):
    """The same global batch split otherwise (2 x 8 instead of 1 x 16) is the same run: same directory
    name, accepted on resume; another global batch is another run, refused in one line before compute."""
    from experiments.config import dump, parse
    from experiments.run import rundir
    from experiments.run.prepare import prepare

    def config(*extra: str):
        return parse(["--config", "tiny", "--wandb", "false", *extra])

    one, two = config("--data.batch_size", "16"), config(*TWO_CPUS, "--data.batch_size", "8")
    os.environ.pop("ISOFLOP_RUN_DIR", None)
    assert prepare(two).run_dir == prepare(one).run_dir
    run_dir = tmp_path / "run"
    rundir.write_run_info(run_dir, dump(one))
    assert rundir.plan(run_dir, dump(two), None, False).finished is None
    mentions(rundir.check_layout(run_dir, dump(two)), 1, 16, 2, 8)  # processes x sequences before, and now
    with pytest.raises(ValueError) as info:
        rundir.plan(run_dir, dump(config(*TWO_CPUS, "--data.batch_size", "16")), None, False)
    mentions(str(info.value), str(run_dir), "global_batch", 16, 32)  # the setting, its value there and here


def test_sweep_takes_trainer_and_data_options_for_every_run(monkeypatch, capsys):
    """``isoflop sweep GRID --trainer.* --data.*`` lays the options over the grid's pre-training settings of every
    run; any other option is refused in one line."""
    import experiments.comparison.compare

    seen = {}

    def fake_compare(base, **kwargs):
        seen.update(devices=base.trainer.devices, strategy=base.trainer.strategy, batch=base.data.batch_size,
                    runs=len(kwargs["runs"]))
        return []

    monkeypatch.setattr(experiments.comparison.compare, "compare", fake_compare)
    assert main(["sweep", "generator-size", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                 "--data.batch_size", "4"]) == 0
    assert str(seen["devices"]) == "2" and seen["strategy"] == "ddp" and seen["batch"] == 4 and seen["runs"] >= 3
    assert main(["sweep", "generator-size", "--model.init_args.size", "small"]) == 2
    mentions(error_line(capsys.readouterr().err, "sweep"), "--model.init_args.size")


def test_clipping_under_fsdp_goes_through_the_root_module(monkeypatch):
    """Under FSDP each rank holds a shard of the gradient, so the global norm must be clipped by the root
    FSDP module (which sums the shards' norms); under any other strategy the objective clips its whole
    gradient itself. FSDP cannot run here (it needs CUDA); the GPU check runs it for real."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision

    import objectives.base as base
    from experiments.measure.bench import random_batch
    from objectives import ReplacedTokenDetection

    torch.manual_seed(0)
    model = ReplacedTokenDetection(size="tiny", vocab_size=64, max_position_embeddings=16, max_grad_norm=0.5)
    model.configure_model()
    model.mask_token_id.fill_(4)
    model.compute(random_batch(2, 16, 64, torch.device("cpu")), None)["loss"].backward()
    params = [p for p in model.parameters() if p.grad is not None]
    before = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert before > 0.5
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(model=model), precision_plugin=Precision(),
                                     gradient_clip_val=None, gradient_clip_algorithm=None)
    assert base.sharded_root(model._trainer.strategy) is None

    calls = []
    monkeypatch.setattr(base, "sharded_root", lambda strategy: SimpleNamespace(clip_grad_norm_=calls.append))
    model.configure_gradient_clipping(None)
    assert calls == [0.5]  # FSDP's root clipped; nothing else touched the gradients
    assert torch.equal(torch.nn.utils.get_total_norm([p.grad for p in params]), before)

    monkeypatch.undo()
    model.configure_gradient_clipping(SimpleNamespace(param_groups=[{"params": params}]))
    assert torch.nn.utils.get_total_norm([p.grad for p in params]) == pytest.approx(0.5, rel=1e-4)


def test_networks_are_built_on_the_cpu_or_on_meta(monkeypatch):
    """Whatever device context the strategy builds the networks under (the GPU under one device or DDP, none
    under FSDP), the initial weights are drawn on the CPU, so one seed gives one draw under every strategy
    (checked on a GPU: FSDP and one device start from the same weights); a meta context still builds
    shapes only, with no memory."""
    from objectives import ReplacedTokenDetection

    def build():
        torch.manual_seed(0)
        model = ReplacedTokenDetection(size="tiny", vocab_size=64, max_position_embeddings=16)
        model.configure_model()
        return model

    with torch.device("meta"):
        assert {p.device.type for p in build().parameters()} == {"meta"}
    reference = build().state_dict()
    seen = []
    real = torch.get_default_device
    monkeypatch.setattr(torch, "get_default_device", lambda: seen.append(real()) or torch.device("cuda"))
    drawn = build().state_dict()  # a context the CPU machine cannot make: the draw is still the CPU's
    assert seen and drawn.keys() == reference.keys() and all(torch.equal(drawn[k], reference[k]) for k in drawn)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_deepspeed_installed_but_no_gpu_fails_before_compute(tmp_path, capsys, monkeypatch):
    """With DeepSpeed installed (pretended here) but no CUDA device, Lightning would stop with a traceback
    once the data is built; isoflop says it in one line first, and writes nothing."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    argv = ["pretrain", "--config", "tiny", "--wandb", "false", "--run_dir", str(tmp_path / "run"),
            "--trainer.strategy", "deepspeed_stage_2"]
    assert main(argv) == 2
    mentions(error_line(capsys.readouterr().err, "pretrain"), "--trainer.strategy", "deepspeed_stage_2", "CUDA", "ddp")
    assert not (tmp_path / "run").exists()


WATCHED = """
import subprocess, sys, time
from experiments.run.ranks import Watch
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit({child})"])
Watch([child], grace={grace}, period=0.05).start()
time.sleep({busy})
sys.exit(5)  # this process ends by itself
"""


def watched(child: int, grace: float, busy: float) -> subprocess.CompletedProcess:
    """A process that started one rank (exiting with ``child``) and is busy for ``busy`` seconds, watched."""
    return subprocess.run([sys.executable, "-c", WATCHED.format(child=child, grace=grace, busy=busy)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)


def test_the_watch_ends_a_job_whose_first_rank_outlives_a_failed_rank_only_after_the_grace():
    """A rank that failed leaves the first one the grace to end by itself with its own code (5 here); one that
    does not (it would wait in a collective for ever) is ended with exit code 1 and a line naming the rank and how
    it ended; a rank that ended well changes nothing. Lightning's observer, which the watch replaces in both its
    launchers, would have SIGKILLed the first process in every case with a failed rank."""
    from experiments.run import ranks

    ranks.use_isoflop_watch()
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as trainer_launcher

    assert fabric_launcher._launch_process_observer is ranks.watch
    assert trainer_launcher._launch_process_observer is ranks.watch
    assert watched(child=1, grace=5.0, busy=1.0).returncode == 5  # ended by itself within the grace
    assert watched(child=0, grace=0.2, busy=1.0).returncode == 5  # the other rank ended well
    stuck = watched(child=3, grace=0.2, busy=30.0)
    assert stuck.returncode == 1
    line = error_line(stuck.stderr, None)
    mentions(line, "local rank 1", "exit code 3", "0.2")
