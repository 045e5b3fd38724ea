"""FLOPs budgets: training stops at the budget, resume continues the count, the schedule spans it."""

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from experiments.budget import preset_step_flops, resolve_budget
from experiments.callbacks import FlopsBudget
from experiments.cli import main
from objectives import MaskedLM, ReplacedTokenDetection
from objectives.flops import PAPER_BUDGETS, total_training_flops
from tests.conftest import TINY_SEQ, TINY_VOCAB


def tiny(cls=MaskedLM):
    model = cls(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ)
    return model


def trainer(tmp_path, budget, callbacks=(), **kwargs):
    counter = FlopsBudget(budget)
    return counter, L.Trainer(max_steps=kwargs.pop("max_steps", -1), max_epochs=-1, logger=False,
                              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                              callbacks=[counter, *callbacks], default_root_dir=tmp_path,
                              enable_checkpointing=bool(callbacks), **kwargs)


@pytest.mark.parametrize("cls", [MaskedLM, ReplacedTokenDetection], ids=lambda c: c.__name__)
def test_stops_within_one_step_of_budget(cls, tiny_data, tmp_path):
    L.seed_everything(0)
    model = tiny(cls)
    step = model.flops_per_batch(16, TINY_SEQ)  # packed batches are full length
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
    step = model.flops_per_batch(16, TINY_SEQ)
    budget = 9.5 * step
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    counter, t = trainer(tmp_path, budget, [ckpt], max_steps=4)  # "interrupted" after 4 steps
    t.fit(model, tiny_data)
    assert counter.total == pytest.approx(4 * step)
    counter2, t2 = trainer(tmp_path, budget, [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    t2.fit(tiny(), tiny_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert t2.global_step == 10
    assert counter2.total == pytest.approx(10 * step)


def test_resolve_budget():
    assert resolve_budget(2e12) == 2e12
    assert resolve_budget("3.5e15") == 3.5e15
    assert resolve_budget("tiny-rtd:100") == pytest.approx(100 * preset_step_flops("tiny-rtd"))
    with pytest.raises(ValueError, match="bad FLOPs budget 'lots'"):
        resolve_budget("lots")
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve_budget("nope:10")


@pytest.mark.parametrize("preset", sorted(PAPER_BUDGETS))
def test_presets_reproduce_the_paper_accounting(preset):
    """Our YAML presets, in the paper convention, give the accounting of reference section 4."""
    b = PAPER_BUDGETS[preset]
    ours = preset_step_flops(preset, "paper", batch=b.batch, seq=b.seq_len) * b.steps
    assert ours == pytest.approx(total_training_flops(preset, b, convention="paper"), rel=1e-9)


def test_flops_command(capsys):
    assert main(["flops", "--preset", "electra-small", "--steps", "1000000", "--batch", "128", "--seq", "128",
                 "--convention", "paper"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("total training FLOPs: ")
    assert float(last.split(": ")[1]) == pytest.approx(1.294e18, rel=1e-3)  # the paper's ~1.3e18
    assert main(["flops", "--preset", "bert-small", "--steps", "1450000", "--batch", "128", "--seq", "128"]) == 0
    assert "convention actual" in capsys.readouterr().out


def test_electra_small_step_costs_about_1_3_bert_small():
    ratio = preset_step_flops("electra-small", "paper") / preset_step_flops("bert-small", "paper")
    assert 1.25 < ratio < 1.4
