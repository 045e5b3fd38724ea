"""FLOPs budgets: training stops at the budget, resume continues the count, the schedule spans it;
``isoflop flops`` reports what the objectives count."""

import math

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from experiments.run.callbacks import FlopsBudget
from experiments.cli import main
from experiments.run.budget import preset_config, step_flops
from objectives import MaskedLM, ReplacedTokenDetection
from tests.conftest import TINY_SEQ, TINY_VOCAB


def tiny(cls=MaskedLM):
    return cls(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ)


def trainer(tmp_path, budget, callbacks=(), **kwargs):
    counter = FlopsBudget(budget)
    return counter, L.Trainer(max_steps=kwargs.pop("max_steps", -1), max_epochs=-1, logger=kwargs.pop("logger", False),
                              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                              callbacks=[counter, *callbacks], default_root_dir=tmp_path,
                              enable_checkpointing=bool(callbacks), **kwargs)


@pytest.mark.parametrize("cls", [MaskedLM, ReplacedTokenDetection], ids=lambda c: c.__name__)
def test_stops_within_one_step_of_budget(cls, tiny_data, tmp_path):
    L.seed_everything(0)
    model = tiny(cls)
    step = model.step_flops(16, TINY_SEQ)  # packed batches are full length
    budget = 7.5 * step
    counter, t = trainer(tmp_path, budget)
    t.fit(model, tiny_data)
    assert t.global_step == 8
    assert budget <= counter.total < budget + step
    assert model.scheduled_steps == 8  # the LR schedule spans the budget
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # and ends at 0


def test_resume_continues_the_count(tiny_data, tmp_path):
    L.seed_everything(0)
    model = tiny()
    step = model.step_flops(16, TINY_SEQ)
    budget = 9.5 * step
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    counter, t = trainer(tmp_path, budget, [ckpt], max_steps=4)  # "interrupted" after 4 steps
    t.fit(model, tiny_data)
    assert counter.total == pytest.approx(4 * step)
    counter2, t2 = trainer(tmp_path, budget, [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    t2.fit(tiny(), tiny_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert t2.global_step == 10
    assert counter2.total == pytest.approx(10 * step)


def test_two_stage_counts_each_stage_at_its_own_cost():
    model = ReplacedTokenDetection(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, two_stage=True,
                                   generator_hidden_fraction=1.0)
    first = model.step_flops(16, TINY_SEQ)
    assert model.phase == 1 and first == model.generator_flops(16, TINY_SEQ, "actual", trained=True)
    model._stage = 2  # what start_discriminator_stage sets
    second = model.step_flops(16, TINY_SEQ)
    assert model.phase == 2 and second > first
    assert second == (model.generator_flops(16, TINY_SEQ, "actual", trained=False)
                      + model.discriminator_flops(16, TINY_SEQ, "actual"))


def total(out: str) -> float:
    """The total of ``isoflop flops``'s report (its last line)."""
    return float(out.strip().splitlines()[-1].rsplit(" ", 1)[-1])


def test_flops_command(capsys):
    """``isoflop flops`` takes pretrain's options: a preset at its own steps, batch and length, any of them
    overridden, or the steps a budget buys."""
    assert main(["flops", "--config", "electra-small", "--flops_convention", "paper"]) == 0
    assert total(capsys.readouterr().out) == pytest.approx(1.294e18, rel=1e-3)  # the paper's script: 1.29e18
    assert main(["flops", "--config", "bert-small", "--trainer.max_steps", "1.45e6"]) == 0
    assert total(capsys.readouterr().out) == pytest.approx(1.550e18, rel=1e-3)  # actual: backward = 2 x forward
    assert main(["flops", "--config", "bert-small", "--trainer.max_steps", "1", "--data.batch_size", "64",
                 "--trainer.accumulate_grad_batches", "2"]) == 0
    per_step = total(capsys.readouterr().out)
    assert per_step == pytest.approx(1.550e18 / 1.45e6, rel=1e-3)  # the same global batch of 128
    assert main(["flops", "--config", "bert-small", "--budget", "electra-small:1000"]) == 0
    out = capsys.readouterr().out
    steps = int(next(line for line in out.splitlines() if line.startswith("steps")).split()[1])
    budget = step_flops(preset_config("electra-small")) * 1000
    assert steps == math.ceil(budget / per_step) > 1000  # an ELECTRA-Small step costs more than a BERT-Small one
    assert total(out) == pytest.approx(steps * per_step, rel=1e-3)


def test_metrics_are_logged_on_log_steps_and_at_the_budget_stop(tiny_data, tmp_path):
    """Training metrics reach the logger every ``log_every_n_steps`` and at the step a budget stops on
    (which is no multiple of it), as when every step logged; the other steps spend no host time on
    ``self.log``."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0)
    model = tiny(ReplacedTokenDetection)
    budget = 6.5 * model.step_flops(16, TINY_SEQ)  # stops after step 7
    counter, t = trainer(tmp_path, budget, logger=CSVLogger(tmp_path, name="csv", version=""), log_every_n_steps=3)
    t.fit(model, tiny_data)
    assert t.global_step == 7
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [2, 5, 6]  # 0-based: steps 3 and 6, and the last
    assert float(rows[-1]["train/flops"]) == pytest.approx(counter.total)
    assert all(r["train/disc_loss"] and r["train/tokens"] for r in rows)


def test_with_gradient_accumulation_the_logged_rows_are_lightnings(tiny_data, tmp_path, monkeypatch):
    """With ``accumulate_grad_batches=2`` the CSV holds the rows, steps and values Lightning's own rule writes
    (the same run logging on every batch, Lightning deciding what to write): every ``log_every_n_steps``
    optimiser steps and at the budget's stop, never for the micro-batch that does not step; and the
    objective logs on those batches only. isoflop's CSV logger writes the very bytes Lightning's does."""
    import csv

    import experiments.run.callbacks as callbacks
    import objectives.base as base
    from lightning.pytorch.loggers import CSVLogger

    from experiments.run.loggers import AppendingCSVLogger

    def run(name, *loggers):
        L.seed_everything(0)
        model = tiny(ReplacedTokenDetection)
        logged = []
        log_dict = model.log_dict
        model.log_dict = lambda *args, **kwargs: (logged.append(model.global_step), log_dict(*args, **kwargs))
        budget = 13 * model.step_flops(16, TINY_SEQ)  # two micro-batches a step: stops after step 7
        counter, t = trainer(tmp_path, budget, logger=[CSVLogger(tmp_path, name=name, version=""), *loggers],
                             log_every_n_steps=3, accumulate_grad_batches=2)
        t.fit(model, tiny_data)
        assert t.global_step == 7
        with open(tmp_path / name / "metrics.csv") as f:
            return list(csv.DictReader(f)), logged

    rows, logged = run("gated", AppendingCSVLogger(tmp_path, name="isoflop", version=""))
    assert (tmp_path / "isoflop" / "metrics.csv").read_bytes() == (tmp_path / "gated" / "metrics.csv").read_bytes()
    assert [int(r["step"]) for r in rows] == [2, 5, 6]  # 0-based: steps 3 and 6, and the budget's stop
    assert logged == [3, 6, 7]  # not on the first micro-batch of those steps
    monkeypatch.setattr(base, "logs_this_step", lambda trainer, stepped: True)
    monkeypatch.setattr(callbacks, "logs_this_step", lambda trainer, stepped: True)
    every_batch, logged = run("every_batch")
    assert len(logged) == 14
    assert rows == every_batch
