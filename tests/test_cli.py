"""The command line: every shipped preset parses and trains one step, every objective trains on the
tiny preset, export, the resolved configuration, a fast ``--help``, and one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments import presets
from experiments.cli import main
from objectives import class_path, discover
from tests.helpers import error_line, mentions, numbers

PRESETS = presets.names()
OBJECTIVES = list(discover().values())
QUICK = ["--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true",
         "--trainer.log_every_n_steps", "1", "--wandb", "false"]


def run(argv):
    """Exit code of ``isoflop ARGV`` (argument errors raise SystemExit inside the parsers)."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def size_of(preset: str) -> str | None:
    return presets.load(preset)["model"]["init_args"].get("size")


# One step of a large preset (335M parameters: their initialisation and optimiser state alone) costs more on a
# CPU than every other preset's step together; they are checked as every run is before it starts instead.
LARGE = [p for p in PRESETS if size_of(p) == "large"]


def preset_args(preset: str, run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    args = ["pretrain", "--config", preset, "--run_dir", str(run_dir), "--data.cache_dir", str(cache_dir),
            "--trainer.max_steps", "1", *QUICK, *extra]
    if size_of(preset) != "tiny":
        # Real sizes keep their encoder; the data shrinks (and is the embedded corpus: tests are offline),
        # and so does the vocabulary (DeBERTa-v3's 128,100 entries would be most of the step's time). Their
        # presets state the paper's global batch: a global batch of 2 (a per-device batch of 2 alone would
        # be accumulated up to the paper's batch).
        args += ["--data.dataset", "null", "--data.dataset_config", "null", "--data.max_seq_length", "32",
                 "--data.global_batch_size", "2", "--data.max_documents", "300", "--data.num_workers", "0",
                 "--data.num_proc", "null", "--data.max_val_examples", "4", "--trainer.enable_checkpointing", "false",
                 "--data.vocab_size", "4096"]
    return args


def run_preset(preset: str, run_dir: Path, cache_dir: Path, *extra: str) -> int:
    return main(preset_args(preset, run_dir, cache_dir, *extra))


@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in LARGE])
def test_preset_runs_one_step(preset, tmp_path, cache_dir, one_thread):
    assert run_preset(preset, tmp_path / "run", cache_dir) == 0
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    if size_of(preset) == "tiny":  # real sizes skip the multi-GB checkpoint
        assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("preset", LARGE)
def test_large_preset_passes_the_checks_of_a_run(preset, tmp_path, cache_dir):
    """A large preset goes through what ``pretrain`` checks before any compute (options, data, the objective
    built on the meta device, one step's FLOPs), with the size of the paper's Large models: 24 layers of
    width 1024 (ELECTRA, Table 6), about 335M parameters with BERT's vocabulary."""
    from experiments.run.budget import meta_objective
    from experiments.run.prepare import check

    checked = check(preset_args(preset, tmp_path / "run", cache_dir)[1:])
    assert checked.step_flops > 0 and not (tmp_path / "run").exists()
    objective = meta_objective(checked.config)
    with torch.device("meta"):
        objective.build_networks()
    encoder = objective.discriminator if hasattr(objective, "discriminator") else objective.model
    config = encoder.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (24, 1024, 4096)
    body = sum(p.numel() for name, p in encoder.base_model.named_parameters() if "word_embeddings" not in name)
    with_bert_vocabulary = body + 30522 * 1024
    assert 330e6 < with_bert_vocabulary < 340e6, with_bert_vocabulary


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_every_objective_trains_on_the_tiny_preset(cls, tmp_path, cache_dir, one_thread):
    """The tiny preset is MaskedLM; --model swaps the objective and keeps the shared settings."""
    assert run_preset("tiny", tmp_path / "run", cache_dir, "--model", class_path(cls), "--trainer.max_steps", "2") == 0
    config = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())["config"]
    assert config["model"]["class_path"] == class_path(cls)
    assert config["model"]["init_args"]["size"] == "tiny" and config["data"]["vocab_size"] == 1024


def test_default_run_and_export(tmp_path, cache_dir, capsys, one_thread):
    """The tiny preset trains, logs CSV and an offline wandb run, and exports a loadable model."""
    from transformers import AutoModelForMaskedLM

    run_dir = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny", "--run_dir", str(run_dir), "--data.cache_dir", str(cache_dir),
                 "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar",
                 "false"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / "result.json").read_text())
    mentions(out, str(run_dir))  # what the user needs to know: where the run is, and what it cost (4 digits)
    assert not rereads(out), out  # 4 steps x 16 of the 3,000 documents' examples: no warning
    assert any(math.isclose(v, result["flops"], rel_tol=1e-3) for v in numbers(out)), out
    assert list((run_dir / "wandb").glob("offline-run-*"))
    config = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert config["config"]["model"]["class_path"] == "objectives.MaskedLM"  # the resolved config is logged
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    mentions(capsys.readouterr().out, "MaskedLM", str(tmp_path / "hf"))  # what was exported, and where
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == model.config.vocab_size == 1024
    capsys.readouterr()  # (from_pretrained's progress bar)
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 2  # not over a non-empty directory
    mentions(error_line(capsys.readouterr().err, "export"), str(tmp_path / "hf"))


def rereads(out: str) -> list[str]:
    """The lines of a run's output that warn of a corpus read many times over."""
    return [line for line in out.splitlines() if line.startswith("[pretrain] warning")]


@pytest.mark.parametrize("length", [["--budget", "tiny:16"], ["--trainer.max_steps", "16"]], ids=["budget", "steps"])
def test_a_run_that_rereads_its_corpus_says_so_before_training(length, tmp_path, cache_dir, capsys, one_thread):
    """60 documents pack into a few dozen examples of 64 tokens; 16 steps of 16 (a budget's steps, or max_steps)
    read them more than 4 times over: one line, with the run's plan (before the first step), with the steps, the
    examples read and what to change."""
    assert run_preset("tiny", tmp_path / "run", cache_dir, "--data.max_documents", "60", *length,
                      "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false") == 0
    out = capsys.readouterr().out
    [line] = rereads(out)
    lines = out.splitlines()
    plan_end = max(i for i, text in enumerate(lines) if text.startswith(("device:", "budget:")))
    assert lines.index(line) == plan_end + 1  # printed with the run's plan, before training
    mentions(line, 16, 16 * 16, 60, "--budget", "--data.streaming")
    assert max(numbers(line.split("times")[0])) > 4  # the passes over the data it reads


def test_validation_is_logged_once_per_point(tmp_path, cache_dir, one_thread):
    """Before training, every val_check_interval steps, and at the end, each once, with the training
    FLOPs and tokens it was taken at."""
    import csv

    run_dir = tmp_path / "run"
    assert run_preset("tiny", run_dir, cache_dir, "--trainer.max_steps", "5", "--trainer.val_check_interval", "2") == 0
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    step = float(next(r["train/flops"] for r in rows if r.get("train/flops") and not r.get("val/loss")))
    val_flops = [float(r["train/flops"]) for r in rows if r.get("val/loss")]
    assert val_flops == pytest.approx([0, 2 * step, 4 * step, 5 * step])
    assert [float(r["train/tokens"]) for r in rows if r.get("val/loss")][0] == 0


def test_print_config(capsys):
    assert run(["pretrain", "--config", "tiny", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["mask_style"] == "bert"
    assert printed["data"]["max_seq_length"] == 64
    assert printed["data"]["vocab_size"] == 1024 and "vocab_size" not in printed["model"]["init_args"]  # linked


def test_vocabulary_is_set_once(capsys):
    assert run(["pretrain", "--config", "tiny", "--model.init_args.vocab_size", "512"]) == 2
    mentions(error_line(capsys.readouterr().err, "pretrain"), "--model.init_args.vocab_size", "--data.vocab_size")


def test_unknown_objective_and_preset(capsys):
    assert run(["pretrain", "--config", "tiny", "--model", "objectives.NoSuchThing"]) == 2
    mentions(error_line(capsys.readouterr().err, "pretrain"), "objectives.NoSuchThing")
    assert run(["pretrain", "--config", "no-such-preset"]) == 2
    mentions(error_line(capsys.readouterr().err, "pretrain"), "no-such-preset", *PRESETS)  # and the presets there are


def test_seq_above_position_limit_fails_before_training(tmp_path, cache_dir, capsys):
    assert run(["pretrain", "--config", "tiny", "--data.max_seq_length", "128", "--run_dir", str(tmp_path / "run"),
                "--data.cache_dir", str(cache_dir)]) == 2
    mentions(error_line(capsys.readouterr().err, "pretrain", last=True), "max_seq_length", 128, 64)  # and the limit
    assert not list(tmp_path.rglob("*.ckpt"))


def test_export_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    mentions(error_line(capsys.readouterr().err, "export"), str(tmp_path / "nope.ckpt"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["nope"]])
def test_help_version_and_unknown_commands_import_nothing_heavy(argv):
    """``isoflop --help``, ``--version`` and an unknown command answer without torch, Lightning, transformers
    or datasets."""
    code = ("import sys; from experiments.cli import main\n"
            "try: main(sys.argv[1:])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out


def test_top_level_help_and_version_are_plain_text(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert not any(mark in text for mark in ("``", ":class:", ":func:", ":mod:", "experiments."))
    for command in ("pretrain", "compare", "sweep", "finetune", "export", "flops", "bench"):
        assert f"\n  {command} " in text
    assert main(["--version"]) == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.split() == ["isoflop", version("isoflop")]


def test_trainer_help_shows_isoflops_defaults_and_no_forced_options(capsys):
    """Lightning's docstrings say "Default: 2" where isoflop's default is 0; the help shows isoflop's, in plain
    text, and the options isoflop sets itself are not offered."""
    assert run(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    block = text[text.index("\n  --trainer.num_sanity_val_steps NUM") + 1:]
    block = block[:block.index("\n  --", 1)]
    assert "default: 0" in block and "Default: ``2``" not in block and "2``" not in block
    assert ":paramref:" not in text and ":class:" not in text
    assert "--trainer.use_distributed_sampler" not in text and "--trainer.default_root_dir" not in text
    assert run(["pretrain", "--trainer.use_distributed_sampler", "true"]) == 2


def test_a_bug_is_one_line_with_a_hint_and_debug_shows_the_traceback(monkeypatch, capsys):
    """An exception isoflop does not expect is a bug: one line, exit 1, and a hint to rerun with --debug."""
    from experiments import cli

    def broken(argv):
        raise KeyError("xsmall")

    monkeypatch.setitem(cli.COMMANDS, "compare", broken)
    assert main(["compare"]) == 1
    err = capsys.readouterr().err
    mentions(error_line(err, "compare"), "KeyError", "xsmall", "--debug")  # the exception, its value, the way to see more
    with pytest.raises(KeyError):
        main(["compare", "--debug"])


def test_whole_numbers_in_scientific_notation_are_counts():
    from experiments.config import parse, plain_numbers

    assert plain_numbers(["--trainer.max_steps", "1e3", "--budget=1.5e15", "--model.init_args.learning_rate", "2e-4",
                          "--data.max_documents", "2.5e0"]) == \
        ["--trainer.max_steps", "1000", "--budget=1500000000000000", "--model.init_args.learning_rate", "2e-4",
         "--data.max_documents", "2.5e0"]
    assert parse(["--config", "tiny", "--trainer.max_steps", "1e3"]).trainer.max_steps == 1000


@pytest.mark.parametrize("argv, option", [
    (["compare", "--model", "objectives.Electra15"], "--objectives"),
    (["compare", "--model=objectives.Electra15"], "--objectives"),
    (["compare", "--objectives", "objectives.MaskedLM,objectives.Electra15"], "[objectives.MaskedLM, objectives.Electra15]"),
    (["finetune", "--encoder", "x", "--tasks", "mrpc,rte"], "[mrpc, rte]"),
])
def test_compare_model_is_refused_and_lists_are_written_one_way(argv, option, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert option in error_line(err, argv[0])
