"""Every mistake in a command costs one line: a table of bad inputs across pretrain, export, flops,
finetune, compare and sweep, each checked for its exit code, a one-line message that names the option
or file, no traceback, nothing already written changed, and (all but a few) nothing built."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from tests.helpers import error_line, mentions

P = ["pretrain", "--config", "tiny"]
SMALL = ["--trainer.max_steps", "2", "--wandb", "false", "--trainer.enable_progress_bar", "false",
         "--data.max_documents", "200", "--trainer.limit_val_batches", "1"]
C = ["compare", "--config", "tiny", "--out_dir", "{ws}/cmp"]

# (id, argv, exit code, the facts the one line must carry: the option, the value given, the file, the choices).
# A string is a whole term of the line, a number a value written in it in any format (tests.helpers.mentions).
# {ws}: the workspace, the command's working directory; {nan_weight}: the weight made NaN in nan.ckpt.
CASES = [
    ("unknown-objective", P + ["--model", "objectives.NoSuchThing"], 2, ("--model", "objectives.NoSuchThing",
                                                                         "objectives.MaskedLM")),
    ("option-typo", P + ["--trainer.max_stepz", "3"], 2, ("--trainer.max_stepz", "--trainer.max_steps")),
    ("not-an-int", P + ["--data.batch_size", "abc"], 2, ("--data.batch_size", "abc", "int")),
    ("batch-size-0", P + ["--data.batch_size", "0"], 2, ("--data.batch_size", 0)),
    ("checkpoint-every-0", P + ["--checkpoint_every", "0"], 2, ("--checkpoint_every", 0)),
    ("budget-below-one-step", P + ["--budget", "1"], 2, ("--budget", 1)),
    ("budget-not-a-number", P + ["--budget", "lots"], 2, ("--budget", "lots")),
    ("budget-unknown-preset", P + ["--budget", "nope:10"], 2, ("--budget", "nope")),
    ("unknown-preset", ["pretrain", "--config", "nope"], 2, ("nope", "tiny")),
    ("yaml-typo", ["pretrain", "--config", "{ws}/typo.yaml"], 2, ("sise", "size")),
    ("yaml-broken", ["pretrain", "--config", "{ws}/broken.yaml"], 2, ("{ws}/broken.yaml", "YAML")),
    ("model-setting-typo", P + ["--model.init_args.sizee", "tiny"], 2, ("--model.init_args.sizee", "size")),
    ("model-size", P + ["--model.init_args.size", "huge"], 2, ("--model.init_args.size", "huge", "tiny")),
    ("nested-not-a-float", P + ["--model", "objectives.ReplacedTokenDetection", "--model.init_args.generator_hidden_fraction",
                                "x"], 2, ("--model.init_args.generator_hidden_fraction", "x", "float")),
    ("vocab-twice", P + ["--model.init_args.vocab_size", "512"], 2, ("--model.init_args.vocab_size", "--data.vocab_size")),
    ("empty-jsonl", P + ["--data.data_files", "{ws}/empty.jsonl"], 2, ("{ws}/empty.jsonl",)),
    ("binary-text", P + ["--data.data_files", "{ws}/binary.txt"], 2, ("{ws}/binary.txt", 3, "UTF-8")),  # line 3
    ("malformed-jsonl", P + ["--data.data_files", "{ws}/malformed.jsonl"], 2, ("{ws}/malformed.jsonl", 2, "JSON")),
    ("blank-corpus", P + ["--data.data_files", "{ws}/blank.txt"], 2, ("{ws}/blank.txt",)),
    ("no-such-files", P + ["--data.data_files", "{ws}/nope/*.txt"], 2, ("{ws}/nope/*.txt",)),
    ("no-text-column", P + ["--data.data_files", "{ws}/nocol.jsonl"], 2, ("--data.text_column", "{ws}/nocol.jsonl", "text",
                                                                         "body")),
    ("not-parquet", P + ["--data.data_files", "{ws}/bad.parquet"], 2, ("{ws}/bad.parquet", "Parquet")),
    ("seq-above-positions", P + ["--data.max_seq_length", "128"], 2, ("max_seq_length", 128, 64)),
    # found only when the data is loaded, inside the run: the run directory made for it is removed again
    ("hub-dataset-offline", P + SMALL + ["--data.dataset", "nope/nothing", "--run_dir", "{ws}/hubrun"], 2,
     ("nope/nothing", "--data.data_files")),
    ("ckpt-missing", P + ["--ckpt_path", "{ws}/missing.ckpt"], 2, ("{ws}/missing.ckpt",)),
    ("ckpt-truncated", P + ["--ckpt_path", "{ws}/cut.ckpt"], 2, ("{ws}/cut.ckpt", "truncated")),
    ("resume-truncated", P + SMALL + ["--run_dir", "{ws}/broken-run"], 2, ("{ws}/broken-run/checkpoints/last.ckpt",
                                                                          "truncated")),
    ("skip-nonfinite-negative", P + ["--skip_nonfinite", "-1"], 2, ("--skip_nonfinite", -1)),
    ("bad-convention", P + ["--flops_convention", "nope"], 2, ("--flops_convention", "nope", "paper", "actual")),
    ("not-a-bool", P + ["--wandb", "maybe"], 2, ("--wandb", "maybe", "bool")),
    ("missing-value", P + ["--trainer.max_steps"], 2, ("--trainer.max_steps",)),
    ("resume-longer", P + SMALL[2:] + ["--trainer.max_steps", "5", "--run_dir", "{ws}/okrun"], 2,
     ("{ws}/okrun", "max_steps", 2, 5, "--reschedule")),
    ("resume-other-config", P + SMALL + ["--model.init_args.mask_prob", "0.2", "--run_dir", "{ws}/okrun"], 2,
     ("{ws}/okrun", "model.init_args.mask_prob", "None", 0.2)),  # the setting, its value there and here
    ("export-missing", ["export", "{ws}/nope.ckpt", "{ws}/out"], 2, ("{ws}/nope.ckpt",)),
    ("export-into-file", ["export", "{ws}/okrun/checkpoints/last.ckpt", "{ws}/some-file.txt"], 2, ("{ws}/some-file.txt",)),
    ("export-truncated", ["export", "{ws}/cut.ckpt", "{ws}/out"], 2, ("{ws}/cut.ckpt", "truncated")),
    ("export-nan", ["export", "{ws}/nan.ckpt", "{ws}/out"], 2, ("{ws}/nan.ckpt", "{nan_weight}", "non-finite")),
    ("export-foreign", ["export", "{ws}/foreign.ckpt", "{ws}/out"], 2, ("{ws}/foreign.ckpt", "'isoflop'")),  # metadata key
    ("export-nonempty", ["export", "{ws}/okrun/checkpoints/last.ckpt", "{ws}/export"], 2, ("{ws}/export", "empty")),
    ("export-no-args", ["export"], 2, ("checkpoint", "out_dir")),
    ("flops-no-length", ["flops", "--config", "tiny", "--trainer.max_steps", "-1"], 2, ("--trainer.max_steps", "--budget")),
    ("flops-batch", ["flops", "--config", "tiny", "--data.batch_size", "0"], 2, ("--data.batch_size", 0)),
    ("flops-seq", ["flops", "--config", "tiny", "--data.max_seq_length", "100000"], 2, ("max_seq_length", 100000, 64)),
    ("flops-preset", ["flops", "--config", "nope"], 2, ("nope", "tiny")),
    ("flops-convention", ["flops", "--config", "tiny", "--flops_convention", "x"], 2, ("--flops_convention", "x")),
    ("finetune-local-typo", ["finetune", "--encoder", "runs/nope", "--tasks", "offline"], 2, ("runs/nope",)),
    ("finetune-glue-offline", ["finetune", "--encoder", "{ws}/export", "--tasks", "mrpc"], 2,
     ("mrpc", "HF_DATASETS_OFFLINE", "--data_dir")),
    ("finetune-unknown-task", ["finetune", "--encoder", "{ws}/export", "--tasks", "mrcp"], 2, ("mrcp", "mrpc")),
    ("finetune-nan-encoder", ["finetune", "--encoder", "{ws}/nan-export", "--tasks", "offline"], 2,
     ("{ws}/nan-export", "non-finite")),
    # (the line names neither --seeds nor the 0 it was given: see the report of this change)
    ("finetune-no-seeds", ["finetune", "--encoder", "{ws}/export", "--seeds", "0"], 2, ("seeds",)),
    ("finetune-option-typo", ["finetune", "--encodr", "x"], 2, ("--encodr", "--encoder")),
    ("finetune-data-dir", ["finetune", "--encoder", "{ws}/export", "--tasks", "mrpc", "--data_dir", "{ws}/nope"], 2,
     ("data_dir", "{ws}/nope")),
    ("compare-task-typo", C + ["--finetune.tasks", "mrcp"], 2, ("mrcp", "mrpc")),
    ("compare-objective", C + ["--objectives", "[objectives.Nope]"], 2, ("objectives.Nope", "objectives.MaskedLM")),
    ("compare-budget", C + ["--budget", "1"], 2, ("--budget", 1)),
    ("compare-batch", C + ["--data.batch_size", "0"], 2, ("--data.batch_size", 0)),
    ("compare-glue-offline", C + ["--finetune.tasks", "mrpc"], 2, ("mrpc", "HF_DATASETS_OFFLINE")),
    ("compare-seeds", C + ["--finetune.seeds", "0"], 2, ("--finetune.seeds", 0)),
    ("compare-option-typo", C + ["--budget_stepz", "3"], 2, ("--budget_stepz", "--budget_steps")),
    ("compare-pretrain-seeds", C + ["--pretrain_seeds", "0"], 2, ("--pretrain_seeds", 0)),
    ("compare-one-rung", C + ["--budgets", "1e13"], 2, ("--budgets", 1e13)),
    ("compare-budget-and-budgets", C + ["--budget", "1e13", "--budgets", "[1e13, 3e13]"], 2, ("--budget", "--budgets")),
    ("compare-comma-list", C + ["--budgets", "1e13,3e13"], 2, ("--budgets", "1e13,3e13", "[1e13, 3e13]")),
    ("compare-bad-rung", C + ["--budgets", "[1e13, lots]"], 2, ("--budgets", "lots")),
    ("compare-small-rung", C + ["--budgets", "[1, 1e13]"], 2, ("--budgets", 1)),
    ("compare-model", C + ["--model", "objectives.Electra15"], 2, ("--model", "objectives.Electra15", "--objectives")),
    ("sweep-unknown", ["sweep", "nope"], 2, ("nope", "generator-size")),
    ("sweep-part", ["sweep", "{ws}/part.yaml"], 2, ("{ws}/part.yaml", "grids")),
    ("sweep-grid-key", ["sweep", "{ws}/key.yaml"], 2, ("mask_rate",)),
    ("sweep-bad-run", ["sweep", "{ws}/batch.yaml", "--out_dir", "{ws}/sw"], 2, ("--data.batch_size", 0)),
    ("sweep-no-args", ["sweep"], 2, ("grid_file",)),
    ("sweep-bad-override", ["sweep", "generator-size", "--dry_run", "true", "--data.batch_size", "0"], 2,
     ("--data.batch_size", 0)),
    ("unknown-command", ["pretrian"], 2, ("pretrian", "pretrain")),
]


def _write_inputs(ws: Path) -> None:
    (ws / "typo.yaml").write_text("model:\n  class_path: objectives.MaskedLM\n  init_args:\n    sise: tiny\n")
    (ws / "broken.yaml").write_text("model:\n  class_path: objectives.MaskedLM\n  bad: [\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "binary.txt").write_bytes(b"hello world\nsecond line\n\xff\xfe bad\n")
    (ws / "malformed.jsonl").write_text('{"text": "a b c"}\n{"text": "x" oops}\n')
    (ws / "blank.txt").write_text("\n\n   \n\n")
    (ws / "nocol.jsonl").write_text('{"body": "some text"}\n')
    (ws / "bad.parquet").write_text("not parquet")
    (ws / "some-file.txt").write_text("keep me\n")
    (ws / "runs").mkdir()
    (ws / "part.yaml").write_text("grids: {objective: [objectives.MaskedLM]}\n")
    (ws / "key.yaml").write_text("config: tiny\ngrid: {objective: [objectives.MaskedLM], mask_rate: [0.1]}\n")
    (ws / "batch.yaml").write_text("config: tiny\npretrain: {data: {batch_size: 0}}\ngrid: {objective: [objectives.MaskedLM]}\n")


def _write_checkpoints(ws: Path) -> None:
    """A good run and export, and broken copies: truncated, NaN, foreign."""
    assert main(P + SMALL + ["--run_dir", str(ws / "okrun")]) == 0
    good = ws / "okrun" / "checkpoints" / "last.ckpt"
    assert main(["export", str(good), str(ws / "export")]) == 0
    data = good.read_bytes()
    (ws / "cut.ckpt").write_bytes(data[: len(data) // 2])  # a name that does not say what is wrong with it
    broken = ws / "broken-run" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "last.ckpt").write_bytes(data[: len(data) // 3])
    checkpoint = torch.load(good, weights_only=False)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], float("nan"))
    torch.save(checkpoint, ws / "nan.ckpt")
    (ws / "nan-weight.txt").write_text(name)
    torch.save({"state_dict": {}}, ws / "foreign.ckpt")
    from safetensors.torch import load_file, save_file

    nan_export = ws / "nan-export"
    subprocess.run(["cp", "-r", str(ws / "export"), str(nan_export)], check=True)
    weights_file = next(nan_export.glob("*.safetensors"))
    weights = load_file(weights_file)
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, weights_file)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cache_dir, one_thread):
    ws = tmp_path_factory.mktemp("ws")
    _write_inputs(ws)
    _write_checkpoints(ws)
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content, and every directory."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty isoflop cache: a case that built any data (corpus, tokenizer) would leave it there."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("ISOFLOP_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_costs_one_line(case, workspace, empty_cache, monkeypatch, capsys):
    _, argv, code, facts = case
    argv = [a.replace("{ws}", str(workspace)) for a in argv]
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    command = argv[0] if argv[0] in ("pretrain", "export", "flops", "finetune", "compare", "sweep") else None
    line = error_line(err, command)  # one line, "isoflop COMMAND: error: ..."
    nan_weight = (workspace / "nan-weight.txt").read_text()
    mentions(line, *(f.replace("{ws}", str(workspace)).replace("{nan_weight}", nan_weight) if isinstance(f, str) else f
                     for f in facts))
    assert snapshot(workspace) == before  # nothing written, changed or deleted (no run directory either)
    assert set(os.listdir(empty_cache)) <= {"checked-files"}  # no corpus, tokenizer or packed data was built


def test_cases_cover_every_command():
    commands = {c[1][0] for c in CASES}
    assert {"pretrain", "export", "flops", "finetune", "compare", "sweep"} <= commands and len(CASES) >= 30


ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("argv, facts", [(["flops", "--config", "tiny", "--data.batch_size", "0"], ("--data.batch_size", 0)),
                                         (["pretrain", "--config", "tiny", "--trainer.max_stepz", "3"],
                                          ("--trainer.max_stepz",))], ids=["flops", "pretrain"])
def test_real_process_prints_one_line_and_exits_2(argv, facts, cache_dir):
    """In a real process: the exit status, and nothing else on stderr (no warnings, no usage text)."""
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**ENV, "ISOFLOP_CACHE": str(cache_dir)})
    assert proc.returncode == 2
    mentions(error_line(proc.stderr, argv[0]), *facts)


def test_debug_shows_the_traceback(monkeypatch):
    """``--debug`` anywhere, or ISOFLOP_DEBUG=1, re-raises the error instead of the one line."""
    with pytest.raises(ValueError, match="max_seq_length 100000"):
        main(["flops", "--config", "tiny", "--data.max_seq_length", "100000", "--debug"])
    monkeypatch.setenv("ISOFLOP_DEBUG", "1")
    with pytest.raises(ValueError, match="--checkpoint_every"):
        main(["pretrain", "--config", "tiny", "--checkpoint_every", "0"])


def test_result_of_the_ok_run_is_recorded(workspace):
    """The fixture's run finished: result.json holds its RunResult, and rerunning reports it without training."""
    result = json.loads((workspace / "okrun" / "result.json").read_text())
    assert result["finished"] and result["steps"] == 2
