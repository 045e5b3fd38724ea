"""``isoflop bench`` runs, compares with the plain loops and prints its table; every argument error is
one line. No timing assertions: speed is measured by the command, not by tests."""

import re

import pytest
import torch

from experiments.measure.bench import plain_flops, random_batch
from experiments.cli import main
from objectives import MaskedLM, ReplacedTokenDetection

TINY = ["--size", "tiny", "--batch", "2", "--seq", "16", "--vocab", "64", "--steps", "1", "--rounds", "1"]


def test_bench_prints_ratios_and_columns(capsys, one_thread):
    assert main(["bench", *TINY, "--objectives", "MaskedLM", "ReplacedTokenDetection", "--peak_flops", "1e12"]) == 0
    out = capsys.readouterr().out
    for column in ("tokens/s", "range", "ms/step", "own GFLOP", "GFLOP/s", "MFU", "peak GB", "vs plain"):
        assert column in out
    assert "peak 1000.0 GFLOP/s for MFU (given by the user" in out
    rows = [line.split() for line in out.splitlines() if re.search(r"\b(isoflop|plain)\b\s+\d", line)]
    assert [r[0] for r in rows] == ["MaskedLM", "plain", "ReplacedTokenDetection", "plain"]
    assert all(re.fullmatch(r"\d+\.\d\dx", r[-1]) for r in rows[0::2])  # the speed-up, on isoflop's line
    assert all(r[-2].endswith("%") for r in rows[1::2])  # plain rows: MFU then peak GB, no ratio


def test_objectives_without_a_plain_loop_print_dashes(capsys, one_thread):
    assert main(["bench", *TINY, "--objectives", "AllTokensMLM"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("AllTokensMLM"))
    assert row.split()[-1] == "--"


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (["--seq", "4"], "argument --seq: must be at least 8"),
    (["--size", "huge"], "argument --size: invalid choice: 'huge'"),
    (["--objectives", "Nope"], "argument --objectives: unknown objective 'Nope'; available: objectives."),
    (["--device", "tpu9"], "argument --device:"),
    (["--peak_flops", "-3"], "argument --peak_flops: must be positive"),
    (["--steps", "x"], "argument --steps: 'x' is not an integer"),
])
def test_argument_errors_are_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("isoflop bench: error: ") and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_plain_loops_do_more_arithmetic():
    """Full-vocabulary logits at every position: the plain steps multiply more than the objectives."""
    for cls in (MaskedLM, ReplacedTokenDetection):
        model = cls(size="small")
        assert plain_flops(model, 16, 128) > model.flops_per_batch(16, 128, "actual")


def test_random_batch_is_a_full_packed_batch():
    batch = random_batch(3, 16, 64, torch.device("cpu"))
    assert batch["input_ids"].shape == (3, 16) and batch["attention_mask"].all()
    assert batch["special_tokens_mask"].sum() == 9 and (batch["input_ids"][~batch["special_tokens_mask"]] >= 10).all()
