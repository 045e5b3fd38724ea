"""The global batch as a setting (``--data.global_batch_size``): the per-device batch and the accumulation it
is split into, from the number of processes, are today's explicit settings of the same global batch (the same
configuration, step FLOPs and run directory); trained for real, on one process and on two CPU ranks, it trains
what those explicit settings train (the same examples in every step, tokens, FLOPs and weights); a global batch
that does not split, or an accumulation that disagrees, is one line before anything is built; ``isoflop flops``
and ``isoflop compare`` count the same global batch whatever the devices.

The two-rank runs reuse tests/test_distributed.py's launcher and one-process reference runs (explicit
settings, recorded batch by batch)."""

from __future__ import annotations

import pytest

from datamodules.batch import split_global_batch
from experiments.cli import main
from experiments.run import rundir
from tests.dist_helpers import read_records
from tests.helpers import error_line, mentions
from tests.test_distributed import PRETRAIN, TWO_CPUS, in_process, launch, logged, per_step, result
from tests.test_distributed import one_process, sixteen  # noqa: F401 (fixtures: the explicit runs compared with)
from tests.test_reliability import max_difference, weights

TINY = ["--config", "tiny", "--wandb", "false"]
GLOBAL = ["--data.global_batch_size", "16"]
THREE_CPUS = ["--trainer.devices", "3", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]


@pytest.mark.parametrize("global_batch, processes, batch_size, accumulate, split", [
    (16, 1, None, 1, (16, 1)),  # dealt over the processes, no accumulation
    (16, 2, None, 1, (8, 1)),
    (16, 2, None, 2, (4, 2)),  # an accumulation given: the per-device batch makes up the rest
    (16, 2, 4, 1, (4, 2)),  # a micro-batch given: the accumulation makes up the rest
    (16, 2, 4, 2, (4, 2)),  # ... and an accumulation that agrees
    (2048, 16, 32, 1, (32, 4)),  # ELECTRA-Large's batch on two nodes of 8 GPUs, 32 per GPU
])
def test_the_split_of_a_global_batch(global_batch, processes, batch_size, accumulate, split):
    assert split_global_batch(global_batch, processes, batch_size, accumulate) == split
    per_device, accumulated = split
    assert per_device * processes * accumulated == global_batch


def test_a_datamodule_given_to_a_trainer_splits_its_global_batch(cache_dir):
    """Used as a library (a Trainer built by hand, no isoflop configuration), the datamodule splits its global
    batch over the trainer's processes and accumulation at setup, and refuses a trainer whose accumulation
    does not make it up, naming the numbers."""
    from types import SimpleNamespace

    from datamodules.pretraining import PretrainingDataModule

    def data(accumulate: int, **batch):
        dm = PretrainingDataModule(dataset="synthetic:chain", vocab_size=512, max_seq_length=16,
                                   cache_dir=str(cache_dir), **batch)
        dm.trainer = SimpleNamespace(global_rank=1, world_size=2, accumulate_grad_batches=accumulate, loggers=[])
        return dm

    dm = data(2, global_batch_size=16)
    dm.setup("fit")
    assert dm.hparams.batch_size == 4 and len(next(iter(dm.train_dataloader()))["input_ids"]) == 4
    for accumulate in (1, 2):  # 2 x 2 processes x 1 or 2 accumulated is not 16: 4 would be
        with pytest.raises(ValueError) as info:
            data(accumulate, global_batch_size=16, batch_size=2).setup("fit")
        mentions(str(info.value), "accumulate_grad_batches", accumulate, 16, 2, 4)


# (the global batch given, today's explicit settings of the same run, the split both make)
LAYOUTS = {
    "one process": (GLOBAL, ["--data.batch_size", "16"], (16, 1)),
    "two processes": ([*TWO_CPUS, *GLOBAL], [*TWO_CPUS, "--data.batch_size", "8"], (8, 1)),
    "two processes, micro-batch 4": ([*TWO_CPUS, *GLOBAL, "--data.batch_size", "4"],
                                     [*TWO_CPUS, "--data.batch_size", "4", "--trainer.accumulate_grad_batches", "2"],
                                     (4, 2)),
    "two processes, micro-batch 4, accumulation 2": (
        [*TWO_CPUS, *GLOBAL, "--data.batch_size", "4", "--trainer.accumulate_grad_batches", "2"],
        [*TWO_CPUS, "--data.batch_size", "4", "--trainer.accumulate_grad_batches", "2"], (4, 2)),
    "one process, accumulation 2": ([*GLOBAL, "--trainer.accumulate_grad_batches", "2"],
                                    ["--data.batch_size", "8", "--trainer.accumulate_grad_batches", "2"], (8, 2)),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_global_batch_is_split_into_the_explicit_settings(layout, tmp_path, monkeypatch, cache_dir):
    """Prepared as a run is (every check, its budget and directory, nothing built), a global batch of 16 is
    the per-device batch and accumulation written out by hand: the same FLOPs per step, identity, layout and
    run directory (a run started one way resumes the other way)."""
    from experiments.run.prepare import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ISOFLOP_RUN_DIR", raising=False)
    given, explicit, split = LAYOUTS[layout]
    ours, theirs = prepare([*TINY, *given]), prepare([*TINY, *explicit])
    for run in (ours, theirs):
        assert (run.config.data.batch_size, run.config.trainer.accumulate_grad_batches) == split
        assert rundir.global_batch(run.dumped) == 16
    assert ours.step_flops == theirs.step_flops
    assert rundir.identity(ours.dumped) == rundir.identity(theirs.dumped)
    assert rundir.layout(ours.dumped) == rundir.layout(theirs.dumped)
    assert ours.run_dir == theirs.run_dir and not ours.run_dir.exists()


def test_a_global_batch_given_alone_replaces_the_per_device_batch_below_it(tmp_path):
    """Whatever layer gives ``global_batch_size`` without ``batch_size`` (the command line, a preset file laid
    over another, a dict of settings as ``isoflop sweep`` lays them), the per-device batch of the preset below
    (tiny's 16) goes and the global batch is dealt over the processes; a layer that gives only ``batch_size``
    keeps the global batch below it and sets the micro-batch."""
    from experiments.config import parse
    from experiments.run.budget import split_batch

    preset = tmp_path / "global.yaml"
    preset.write_text("data:\n  global_batch_size: 16\n")
    configs = {"command line": parse([*TINY, *TWO_CPUS, *GLOBAL]),
               "preset file": parse([*TINY, "--config", str(preset), *TWO_CPUS]),
               "settings": parse({"data": {"global_batch_size": 16}}, base=parse([*TINY, *TWO_CPUS]))}
    for how, config in configs.items():
        assert (config.data.global_batch_size, config.data.batch_size) == (16, None), how
        assert split_batch(config).data.batch_size == 8, how
        micro = parse({"data": {"batch_size": 4}}, base=config)
        assert (micro.data.global_batch_size, micro.data.batch_size) == (16, 4), how
        assert split_batch(micro).trainer.accumulate_grad_batches == 2, how
    both = parse([*TINY, *GLOBAL, "--data.batch_size", "4"])
    assert (both.data.global_batch_size, both.data.batch_size) == (16, 4)


def test_without_a_global_batch_nothing_changes(tmp_path, monkeypatch, cache_dir):
    """No global batch: the per-device batch and accumulation as given (the preset's batch, or 32 when nothing
    sets it), and neither the run's identity nor its length holds the new setting (a run's directory name is
    what it was)."""
    from experiments.config import parse
    from experiments.run.prepare import check, prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ISOFLOP_RUN_DIR", raising=False)
    run = prepare([*TINY, "--trainer.accumulate_grad_batches", "3"])
    assert (run.config.data.batch_size, run.config.trainer.accumulate_grad_batches) == (16, 3)
    assert rundir.global_batch(run.dumped) == 48
    assert not [k for k in {**rundir.identity(run.dumped), **rundir.length(run.dumped)} if "global_batch_size" in k]
    unset = parse(TINY)
    unset.data.batch_size = None
    checked = check(unset)
    assert (checked.config.data.batch_size, checked.config.trainer.accumulate_grad_batches) == (32, 1)


def test_a_global_batch_trains_the_explicit_run_on_one_process(sixteen, tmp_path, one_thread):  # noqa: F811
    """``--data.global_batch_size 16`` on one process against ``--data.batch_size 16``: the same examples in
    every step, the same logged tokens and FLOPs, the same weights."""
    run_dir = tmp_path / "run"
    assert in_process([*PRETRAIN, *GLOBAL, "--run_dir", str(run_dir)], tmp_path / "record") == 0
    assert per_step(read_records(tmp_path / "record")) == per_step(read_records(sixteen / "record"))
    mine, reference = result(run_dir), result(sixteen / "run")
    assert [mine[k] for k in ("steps", "tokens", "flops")] == [reference[k] for k in ("steps", "tokens", "flops")]
    assert logged(run_dir) == logged(sixteen / "run")
    assert max_difference(weights(sixteen / "run"), weights(run_dir)) < 1e-6


def micro_batches(records: list[dict]) -> dict[int, list[list[int]]]:
    """The examples of every step as its micro-batches, whichever rank and in whichever order trained them."""
    return {step: sorted(sorted(ids) for ids in batches) for step, batches in per_step(records).items()}


@pytest.fixture(scope="module")
def four_times_four(tmp_path_factory, cache_dir, one_thread):
    """One process, batches of 4 accumulated four times: the micro-batches two ranks of 4 accumulating twice
    train (the sampler deals them, StepSeeds seeds them by their place in the step)."""
    base = tmp_path_factory.mktemp("four")
    assert in_process([*PRETRAIN, "--data.batch_size", "4", "--trainer.accumulate_grad_batches", "4",
                       "--run_dir", str(base / "run")], base / "record") == 0
    return base


@pytest.mark.parametrize("extra, per_rank, reference", [
    ([], 8, "one_process"),  # 16 = 8 per rank: tests/test_distributed.py's explicit 2 x 8 trains one_process's run
    (["--data.batch_size", "4"], 4, "four_times_four"),  # 16 = 4 per rank x 2 accumulated (derived)
], ids=["8 per rank", "4 per rank, 2 accumulated"])
def test_a_global_batch_trains_the_explicit_run_on_two_ranks(extra, per_rank, reference, request, tmp_path,
                                                              cache_dir):
    """``--data.global_batch_size 16`` on two CPU ranks (Lightning's launcher), dealt as 8 per rank, or as a
    micro-batch of 4 with the accumulation derived, against the explicit settings of the same micro-batches on
    one process (8 x 2 accumulated, 4 x 4 accumulated): the same micro-batches in every step, the ranks'
    disjoint; the same tokens and FLOPs, logged and final; the same weights (to float tolerance: the gradient
    sums differ in order)."""
    one = request.getfixturevalue(reference)
    run_dir = tmp_path / "run"
    proc = launch([*PRETRAIN, *TWO_CPUS, *GLOBAL, *extra, "--run_dir", str(run_dir)], cache_dir, tmp_path,
                  ISOFLOP_TEST_RECORD=str(tmp_path / "record"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mentions(proc.stdout, "step: 16 sequences")  # the run's own summary of its global batch
    two = read_records(tmp_path / "record")
    ranks = [{i for r in two if r["rank"] == k for i in r["ids"]} for k in (0, 1)]
    assert {len(r["ids"]) for r in two} == {per_rank} and len(ranks[0]) == len(ranks[1]) == 6 * 8
    assert not ranks[0] & ranks[1]
    assert micro_batches(two) == micro_batches(read_records(one / "record"))
    mine, theirs = result(run_dir), result(one / "run")
    assert (mine["steps"], mine["tokens"], mine["flops"]) == (theirs["steps"], theirs["tokens"], theirs["flops"])
    assert logged(run_dir) == logged(one / "run")
    difference = max_difference(weights(one / "run"), weights(run_dir))
    print(f"global batch 16 on two ranks ({per_rank} per rank) vs {reference}: tokens {mine['tokens']}, FLOPs "
          f"{mine['flops']:.6e} / {theirs['flops']:.6e}, max weight difference {difference:.3e}")
    assert difference < 1e-5


@pytest.mark.parametrize("command, extra, facts", [
    ("pretrain", [*THREE_CPUS, *GLOBAL], ("--data.global_batch_size", 16, 3)),  # 16 over 3 processes
    ("pretrain", [*GLOBAL, "--data.batch_size", "3"], ("--data.global_batch_size", 16, "--data.batch_size", 3)),
    ("pretrain", [*TWO_CPUS, *GLOBAL, "--data.batch_size", "4", "--trainer.accumulate_grad_batches", "3"],
     ("--trainer.accumulate_grad_batches", 3, 2)),  # the accumulation given, and the one that makes 16
    ("pretrain", ["--data.global_batch_size", "0"], ("--data.global_batch_size", 0)),
    ("flops", [*THREE_CPUS, *GLOBAL], ("--data.global_batch_size", 16, 3)),
    ("compare", [*THREE_CPUS, *GLOBAL, "--budget_steps", "1"], ("--data.global_batch_size", 16, 3)),
])
def test_a_global_batch_that_does_not_split_is_one_line_before_compute(command, extra, facts, tmp_path, capsys,
                                                                        monkeypatch, cache_dir):
    """A global batch that does not split evenly over the processes, a micro-batch that does not divide it,
    an accumulation that disagrees: one line naming the numbers, exit code 2, before any data is built (the
    comparison: before any rank is started) and with nothing written."""
    from datamodules.pretraining import PretrainingDataModule

    def built(*args, **kwargs):
        raise AssertionError("data built before the error")

    monkeypatch.setattr(PretrainingDataModule, "_build", built)
    where = ["--out_dir", str(tmp_path / "out")] if command == "compare" else ["--run_dir", str(tmp_path / "run")]
    assert main([command, *TINY, *extra, *where]) == 2
    mentions(error_line(capsys.readouterr().err, command), *facts)
    assert not list(tmp_path.iterdir())


def test_flops_and_compare_count_the_global_batch_whatever_the_devices(capsys, cache_dir):
    """``isoflop flops`` with the ELECTRA-Small preset prints the same global batch, steps and FLOPs on one
    process, on two, and on two with a micro-batch of 16 (4 accumulated); ``isoflop compare`` gives every
    objective's run the split of the global batch, and the one-process step FLOPs."""
    from experiments.comparison.compare import check_runs, spec_for
    from experiments.config import parse

    outputs = []
    for extra in ([], TWO_CPUS, [*TWO_CPUS, "--data.batch_size", "16"]):
        assert main(["flops", "--config", "electra-small", "--budget", "1e16", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    mentions(outputs[0].splitlines()[0], "global batch 128 x 128 tokens")
    specs = [spec_for("objectives.MaskedLM"), spec_for("objectives.ReplacedTokenDetection")]
    one = check_runs(parse([*TINY, *GLOBAL]), specs)
    two = check_runs(parse([*TINY, *TWO_CPUS, *GLOBAL, "--data.batch_size", "4"]), specs)
    for (spec, alone), (_, split) in zip(one, two):
        assert (alone.config.data.batch_size, alone.config.trainer.accumulate_grad_batches) == (16, 1), spec.name
        assert (split.config.data.batch_size, split.config.trainer.accumulate_grad_batches) == (4, 2), spec.name
        assert split.step_flops == pytest.approx(alone.step_flops, rel=1e-12), spec.name
