"""``isoflop bench`` runs, compares with the plain loops and prints its table; every argument error is
one line. No timing assertions: speed is measured by the command, not by tests."""

import re

import pytest
import torch

from experiments.measure.bench import plain_flops, random_batch
from experiments.cli import main
from objectives import MaskedLM, ReplacedTokenDetection
from tests.helpers import error_line, mentions

TINY = ["--size", "tiny", "--batch_size", "2", "--max_seq_length", "16", "--vocab_size", "64", "--steps_per_round", "1",
        "--rounds", "1"]


def test_bench_prints_ratios_and_columns(capsys, one_thread):
    assert main(["bench", *TINY, "--objectives", "[MaskedLM, ReplacedTokenDetection]", "--peak_flops", "1e12"]) == 0
    out = capsys.readouterr().out
    for column in ("tokens/s", "range", "ms/step", "own GFLOP", "GFLOP/s", "MFU", "peak GB", "vs plain"):
        assert column in out
    (peak,) = [line for line in out.splitlines() if line.startswith("peak ")]
    mentions(peak, 1e12 / 1e9, "--peak_flops")  # the peak MFU is computed against, in GFLOP/s, and where it came from
    rows = [line.split() for line in out.splitlines() if re.search(r"\b(isoflop|plain)\b\s+\d", line)]
    assert [r[0] for r in rows] == ["MaskedLM", "plain", "ReplacedTokenDetection", "plain"]
    assert all(re.fullmatch(r"\d+\.\d\dx", r[-1]) for r in rows[0::2])  # the speed-up, on isoflop's line
    assert all(r[-2].endswith("%") for r in rows[1::2])  # plain rows: MFU then peak GB, no ratio


def test_objectives_without_a_plain_loop_print_dashes(capsys, one_thread):
    assert main(["bench", *TINY, "--objectives", "AllTokensMLM"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("AllTokensMLM"))
    assert row.split()[-1] == "--"


@pytest.mark.parametrize("args, facts", [
    (["--batch_size", "0"], ("--batch_size", 0)), (["--max_seq_length", "4"], ("--max_seq_length", 4)),
    (["--size", "huge"], ("--size", "huge")), (["--objectives", "Nope"], ("--objectives", "Nope")),
    (["--objectives", "MaskedLM,Nope"], ("--objectives", "[MaskedLM, Nope]")), (["--device", "tpu9"], ("--device", "tpu9")),
    (["--peak_flops", "-3"], ("--peak_flops", -3)), (["--steps_per_round", "x"], ("--steps_per_round", "x")),
    (["--precision", "16-mixed"], ("--precision", "16-mixed")),
])
def test_argument_errors_are_one_line(args, facts, capsys):
    """Exit 2 and one line that names the option and the value given, before any model is built."""
    assert main(["bench", *args]) == 2
    mentions(error_line(capsys.readouterr().err, "bench"), *facts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    mentions(error_line(capsys.readouterr().err, "bench"), "--device", "cuda")


def test_plain_loops_do_more_arithmetic():
    """Full-vocabulary logits at every position: the plain steps multiply more than the objectives."""
    for cls in (MaskedLM, ReplacedTokenDetection):
        model = cls(size="small")
        assert plain_flops(model, 16, 128) > model.flops_per_batch(16, 128, "actual")


def test_random_batch_is_a_full_packed_batch():
    batch = random_batch(3, 16, 64, torch.device("cpu"))
    assert batch["input_ids"].shape == (3, 16) and batch["attention_mask"].all()
    assert batch["special_tokens_mask"].sum() == 9 and (batch["input_ids"][~batch["special_tokens_mask"]] >= 10).all()
