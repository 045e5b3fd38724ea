"""The command line: every shipped preset parses and trains one step; export; bad input."""

import json
from pathlib import Path

import pytest
import yaml

from experiments.cli import CONFIG_DIR, main

PRESETS = sorted(CONFIG_DIR.glob("*.yaml"))


def run_preset(preset: Path, run_dir: Path, cache_dir: Path, *extra: str) -> None:
    config = yaml.safe_load(preset.read_text())
    args = ["pretrain", "--config", str(preset), "--run_dir", str(run_dir), "--data.cache_dir", str(cache_dir),
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true", "--trainer.log_every_n_steps", "1",
            *extra]
    if config["model"]["init_args"].get("size") != "tiny":
        # Real sizes keep their encoder; the data shrinks (and is the embedded corpus: tests are offline).
        args += ["--data.dataset", "null", "--data.dataset_config", "null", "--data.max_seq_length", "32",
                 "--data.batch_size", "2", "--data.max_documents", "300", "--data.num_workers", "0",
                 "--data.num_proc", "null", "--data.max_val_examples", "4", "--trainer.enable_checkpointing", "false"]
    assert main(args) == 0


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_one_step(preset, tmp_path, cache_dir):
    run_preset(preset, tmp_path / "run", cache_dir)
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    if "tiny" in preset.stem or preset.stem == "default":  # real sizes skip the multi-GB checkpoint write
        assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_preset_arguments_match_signatures():
    """Every key a preset sets is a constructor argument (a typo would otherwise fail at run time)."""
    import inspect

    from datamodules import PretrainingDataModule
    from experiments.sweep import accepted_args
    from objectives.base import import_class

    data_args = set(inspect.signature(PretrainingDataModule).parameters)
    for preset in PRESETS:
        config = yaml.safe_load(preset.read_text())
        model_args = accepted_args(import_class(config["model"]["class_path"]))
        assert set(config["model"]["init_args"]) <= model_args, preset.name
        assert set(config.get("data", {})) <= data_args, preset.name


def test_default_run_and_export(tmp_path, cache_dir, capsys):
    """The tiny preset trains, logs CSV and an offline wandb run, and exports a loadable model."""
    from transformers import AutoModelForMaskedLM

    run = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny-mlm", "--run_dir", str(run), "--data.cache_dir", str(cache_dir),
                 "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false"]) == 0
    assert list((run / "wandb").glob("offline-run-*"))
    config = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert config["config"]["model"]["class_path"] == "objectives.MaskedLM"  # the resolved config is logged
    ckpt = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    assert "exported MaskedLM" in capsys.readouterr().out
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == model.config.vocab_size == 1024
    with pytest.raises(SystemExit, match="isoflop export: error: .* exists and is not empty"):
        main(["export", str(ckpt), str(tmp_path / "hf")])


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", "tiny-mlm", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["mask_style"] == "bert"
    assert printed["data"]["max_seq_length"] == 64


def test_unknown_objective_lists_available():
    with pytest.raises(SystemExit, match=r"unknown objective 'objectives\.NoSuchThing'; available: .*objectives\.MaskedLM"):
        main(["pretrain", "--config", "tiny-mlm", "--model", "objectives.NoSuchThing"])


def test_unknown_preset():
    with pytest.raises(SystemExit, match="config 'no-such-preset' not found.*presets: .*tiny-mlm"):
        main(["pretrain", "--config", "no-such-preset"])


def test_seq_above_position_limit_fails_before_training(tmp_path, cache_dir):
    with pytest.raises(ValueError, match="max_seq_length 128 exceeds the encoder's position limit 64"):
        main(["pretrain", "--config", "tiny-mlm", "--data.max_seq_length", "128", "--run_dir", str(tmp_path),
              "--data.cache_dir", str(cache_dir)])
    assert not list(tmp_path.rglob("*.ckpt"))


def test_export_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="isoflop export: error: checkpoint .*nope.ckpt' not found"):
        main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
