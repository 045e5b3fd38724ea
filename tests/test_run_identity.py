"""Run identity comes from one table (experiments.config.role): every option of the pre-training parser has
a role, and each role changes a run's directory and its resume the way the table says."""

from __future__ import annotations

import inspect
import signal

import pytest

from experiments import config
from experiments.cli import main
from experiments.errors import UsageError
from experiments.run import rundir
from experiments.run.prepare import prepare
from objectives import discover
from tests.helpers import SIGNAL_CALLBACK, mentions, signalling

ROLES = {config.TRAINS, config.LENGTH, config.LAYOUT, config.RUN}
TINY = ["--config", "tiny", "--wandb", "false"]


def test_every_option_of_the_parser_has_a_role():
    """Walks every option the pre-training parser has, every objective's settings, and every argument of
    Lightning's Trainer and of the datamodule: a new one fails here until the table classifies it."""
    from lightning.pytorch import Trainer

    from datamodules.pretraining import PretrainingDataModule

    keys = list(config.parser().get_defaults().keys())
    keys += [f"model.init_args.{name}" for cls in discover().values() for name in config.accepted_args(cls)]
    keys += ["model.class_path", "config"]
    unclassified = []
    for key in keys:
        try:
            assert config.role(key) in ROLES, key
        except KeyError:
            unclassified.append(key)
    assert not unclassified, f"options without a role in experiments.config: {unclassified}"
    trainer_args = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    assert trainer_args == set(config.TRAINER_ROLES) | set(config.TRAINER_FORCED)
    data_args = set(inspect.signature(PretrainingDataModule.__init__).parameters) - {"self"}
    assert data_args == set(config.DATA_ROLES)
    parsed = set(config.parser().get_defaults().keys())
    assert not {f"trainer.{k}" for k in config.TRAINER_FORCED} & parsed  # forced: not offered


def name_of(*extra: str, cwd) -> str:
    return prepare([*TINY, *extra]).run_dir.name


@pytest.mark.parametrize("option, value", [
    ("--trainer.log_every_n_steps", "1"), ("--compile", "true"), ("--peak_flops", "1e12"),
    ("--trainer.enable_progress_bar", "false"), ("--trainer.val_check_interval", "10"),
    ("--trainer.limit_val_batches", "1"), ("--checkpoint_every", "3"), ("--data.num_workers", "1"),
    (SIGNAL_CALLBACK, None),
])
def test_run_options_keep_the_run(option, value, tmp_path, monkeypatch, cache_dir):
    """``run`` options (logging and validation cadence, compile, the MFU peak, progress bars ...) keep the
    run's directory and its identity."""
    monkeypatch.chdir(tmp_path)
    extra = [option] if value is None else [option, value]
    assert config.role(option.lstrip("-").split("+=")[0]) == config.RUN
    assert name_of(*extra, cwd=tmp_path) == name_of(cwd=tmp_path)


def test_layout_keeps_the_run_at_the_same_global_batch(tmp_path, monkeypatch, cache_dir):
    """``layout``: two processes of 8 sequences are the run of one process of 16; another global batch is not."""
    monkeypatch.chdir(tmp_path)
    one = prepare(TINY)
    two = prepare([*TINY, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--data.batch_size", "8"])
    assert two.run_dir == one.run_dir and rundir.identity(two.dumped) == rundir.identity(one.dumped)
    assert name_of("--data.batch_size", "8", cwd=tmp_path) != one.run_dir.name


@pytest.mark.parametrize("option, value, setting", [
    ("--data.max_seq_length", "32", "data.max_seq_length"), ("--seed_everything", "1", "seed_everything"),
    ("--model.init_args.mask_prob", "0.2", "model.init_args.mask_prob"),
    ("--trainer.precision", "bf16-mixed", "trainer.precision"),
    ("--model", "objectives.ReplacedTokenDetection", "model.class_path")])
def test_what_a_run_trains_is_its_identity(option, value, setting, tmp_path, monkeypatch, cache_dir):
    """``trains``: another directory; the same directory given explicitly is refused, naming the setting."""
    monkeypatch.chdir(tmp_path)
    assert name_of(option, value, cwd=tmp_path) != name_of(cwd=tmp_path)
    run_dir = tmp_path / "run"
    rundir.write_run_info(run_dir, prepare([*TINY, "--run_dir", str(run_dir)]).dumped)
    with pytest.raises(UsageError) as info:
        prepare([*TINY, "--run_dir", str(run_dir), option, value])
    mentions(str(info.value), str(run_dir), setting, value)  # the directory, the setting, its new value


def test_length_names_the_run_and_needs_reschedule_to_change(tmp_path, monkeypatch, cache_dir):
    """``length``: another directory name; in the same directory, refused unless --reschedule true."""
    monkeypatch.chdir(tmp_path)
    assert name_of("--trainer.max_steps", "7", cwd=tmp_path) != name_of(cwd=tmp_path)
    run_dir = tmp_path / "run"
    rundir.write_run_info(run_dir, prepare([*TINY, "--run_dir", str(run_dir)]).dumped)
    with pytest.raises(UsageError) as info:
        prepare([*TINY, "--run_dir", str(run_dir), "--trainer.max_steps", "7"])
    mentions(str(info.value), str(run_dir), "max_steps", 7, "--reschedule")
    assert prepare([*TINY, "--run_dir", str(run_dir), "--trainer.max_steps", "7", "--reschedule", "true"]).plan


STOPPED = [*TINY, "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
           "--trainer.enable_progress_bar", "false", "--checkpoint_every", "100"]


@pytest.mark.parametrize("added", [["--trainer.log_every_n_steps", "1"], ["--compile", "true"]],
                         ids=["log_every_n_steps", "compile"])
def test_a_resume_with_an_added_run_option_continues_the_same_directory(added, tmp_path, monkeypatch, cache_dir,
                                                                         one_thread):
    """Stopped by SIGTERM at step 3 (a callback signals its own process there), then the same command with an
    added run option: the same default directory, resumed from step 3, finished at step 6."""
    monkeypatch.chdir(tmp_path)
    with signalling(3):
        assert main(["pretrain", *STOPPED, SIGNAL_CALLBACK]) == 128 + signal.SIGTERM
    (first,) = (tmp_path / "runs").iterdir()
    import torch

    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    resumed = prepare([*STOPPED, *added])
    assert resumed.run_dir.resolve() == first.resolve() and resumed.plan.checkpoint is not None
    if added[0] == "--compile":
        return  # compiling on a CPU takes minutes: the decision is what this test is about
    assert main(["pretrain", *STOPPED, *added]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [first.name]
    import json

    assert json.loads((first / "result.json").read_text())["steps"] == 6
