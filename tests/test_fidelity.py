"""Fidelity to the official recipes: the optimiser without bias correction against the official update rule,
the official schedules, a truly frozen generator in two-stage training, decoupled generator/discriminator
clipping, and the presets that claim the paper's recipe."""

import copy as copy_module
import math
import re

import lightning as L
import pytest
import torch

from experiments import presets
from objectives import MaskedLM
from objectives.optim import BIAS_FREE_STEP, AdamWeightDecay, schedule
from tests.helpers import mentions
from tests.test_rtd import tiny


# The official optimisers' weight-decay exclusions, by name: ELECTRA's create_optimizer (model/optimization.py,
# exclude_from_weight_decay, matched with re.search) and DeBERTa's create_xoptimizer
# (DeBERTa/training/optimizer_utils.py, no_decay, matched as substrings).
ELECTRA_NO_DECAY = ["LayerNorm", "layer_norm", "bias"]
DEBERTA_NO_DECAY = ["bias", "LayerNorm.weight"]


def official_decays(name: str) -> bool:
    return not any(re.search(r, name) for r in ELECTRA_NO_DECAY)


@pytest.mark.parametrize("encoder", ["electra", "deberta-v2"])
def test_weight_decay_exclusions_are_the_official_ones(encoder):
    model = tiny(encoder=encoder)
    rule = ELECTRA_NO_DECAY if encoder == "electra" else DEBERTA_NO_DECAY
    for group in model.optimizer_groups():
        for name in group["param_names"]:
            official = not any(r in name for r in rule)
            assert (group["weight_decay"] > 0) == official, (name, group["name"])


def test_adam_without_bias_correction_is_the_official_update(tiny_data):
    """Ten steps of the objective's own optimiser and schedule against the update rule of ELECTRA's
    AdamWeightDecayOptimizer (model/optimization.py, _apply_gradients) and create_optimizer's learning rate,
    written out here: the same parameters to float tolerance. torch's AdamW (with bias correction) is not."""
    torch.manual_seed(0)
    steps, lr, warmup, wd, eps = 10, 1e-2, 3, 0.01, 1e-6
    results = {}
    for correction in (False, True):
        torch.manual_seed(0)
        model = tiny(tokenizer=tiny_data.tokenizer, learning_rate=lr, adam_bias_correction=correction,
                     lr_schedule="electra", warmup_fraction=warmup / steps, weight_decay=wd, dropout=0.0)
        model.scheduled_steps = steps
        config = model.configure_optimizers()
        optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        assert isinstance(optimizer, AdamWeightDecay) != correction
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        ref = {n: p.detach().clone().double() for n, p in named}
        m = {n: torch.zeros_like(v) for n, v in ref.items()}
        v = {n: torch.zeros_like(x) for n, x in ref.items()}
        batches = iter(tiny_data.train_dataloader())
        for t in range(steps):
            optimizer.zero_grad()
            model.compute(next(batches), torch.Generator().manual_seed(t))["loss"].backward()
            rate = lr * (1 - t / steps) * min(1.0, t / warmup)  # create_optimizer, global_step t before the update
            for n, p in named:
                if p.grad is None:
                    continue
                g = p.grad.double()
                m[n] = 0.9 * m[n] + 0.1 * g
                v[n] = 0.999 * v[n] + 0.001 * g * g
                update = m[n] / (v[n].sqrt() + eps)
                if official_decays(n):
                    update = update + wd * ref[n]
                ref[n] = ref[n] - rate * update
            optimizer.step()
            scheduler.step()
        results[correction] = max((p.detach().double() - ref[n]).abs().max().item() for n, p in named)
    assert results[False] < 1e-5, results
    assert results[True] > 1e-3, results  # the bias-corrected update is measurably another one


def test_official_schedules():
    total, warmup = 100, 10
    electra = schedule("electra", total, warmup / total)
    deberta = schedule("deberta", total, warmup / total)
    linear = schedule("linear", total, warmup / total)
    assert electra(0) == 0.0 and deberta(0) == 0.0 and linear(0) == pytest.approx(0.1)
    assert electra(5) == pytest.approx(0.95 * 0.5) and deberta(5) == pytest.approx(0.5)
    assert electra(10) == pytest.approx(0.9) and deberta(10) == pytest.approx(0.9) and linear(10) == 1.0
    assert electra(60) == pytest.approx(0.4) and deberta(60) == pytest.approx(0.4)
    assert linear(60) == pytest.approx(40 / 90)
    assert electra(100) == deberta(100) == linear(100) == 0.0
    staged = schedule("linear", total, warmup / total, stages=[40, 60])
    assert staged(0) == pytest.approx(1 / 4) and staged(39) == pytest.approx(1 / 36)
    assert staged(40) == pytest.approx(1 / 6) and staged(46) == 1.0  # stage 2: its own warm-up of 6 steps
    with pytest.raises(ValueError) as info:
        tiny(MaskedLM, lr_schedule="cosine")
    mentions(str(info.value), "lr_schedule", "cosine", "linear", "electra", "deberta")


def test_high_beta_without_bias_correction_is_refused():
    with pytest.raises(ValueError) as info:
        tiny(MaskedLM, adam_betas=(0.9, 0.999999), adam_bias_correction=False)
    mentions(str(info.value), "adam_betas", "adam_bias_correction", 0.99999)


class Snapshot(L.Callback):
    """The generator's parameters when stage 2 begins, and every later learning rate."""

    def __init__(self):
        self.generator, self.rates = None, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        step = trainer.global_step
        if step == module.stage_one_steps():  # before the module's own hook switches stages
            self.generator = {k: v.detach().clone() for k, v in module.generator.state_dict().items()}
            self.discriminator_before = {k: v.detach().clone() for k, v in module.discriminator.state_dict().items()}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.rates[trainer.global_step] = optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("sharing", ["none", "embeddings"])
def test_two_stage_freezes_the_whole_generator(tiny_data, tmp_path, sharing):
    """Paper section 3.2: the generator's weights stay frozen in stage 2, its embeddings included, bitwise;
    the discriminator starts as the generator's copy and trains; the learning rate warms up again."""
    L.seed_everything(0)
    model = tiny(tokenizer=tiny_data.tokenizer, generator_hidden_fraction=1.0, two_stage=True,
                 embedding_sharing=sharing, warmup_fraction=0.25, adam_bias_correction=False)
    snap = Snapshot()
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[snap])
    trainer.fit(model, tiny_data)
    assert int(model.stage) == 2 and snap.generator is not None
    after = model.generator.state_dict()
    assert after.keys() == snap.generator.keys()
    for key, value in snap.generator.items():
        assert torch.equal(after[key], value), key  # not one bit moved in stage 2
    words = "electra.embeddings.word_embeddings.weight"
    assert model.discriminator.electra.embeddings.word_embeddings.weight is not model.generator.electra.embeddings.word_embeddings.weight
    assert not torch.equal(model.discriminator.state_dict()[words], snap.generator[words])  # the copy trained on
    assert not torch.equal(model.discriminator.state_dict()[words], snap.discriminator_before[words])
    # Adam without bias correction under Trainer.fit (gradients computed in the step's closure): every state at
    # the offset; the generator's four stage-1 updates, the discriminator's four of stage 2
    generator = {id(p) for p in model.generator.parameters()}
    for param, state in trainer.optimizers[0].state.items():
        assert float(state["step"]) == BIAS_FREE_STEP + 4, id(param) in generator
    # each stage of 4 steps: warm-up of 1 step, then decay; stage 2 restarts at the peak
    assert snap.rates[0] == pytest.approx(model.learning_rate) and snap.rates[4] == pytest.approx(model.learning_rate)
    assert snap.rates[3] == pytest.approx(model.learning_rate / 3)


def clipped_generator_grads(tiny_data, decoupled: bool, disc_weight: float, sharing: str = "gdes"):
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer, decoupled_training=decoupled, disc_weight=disc_weight,
                 embedding_sharing=sharing, max_grad_norm=0.5, dropout=0.0)
    model.trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    batch = next(iter(tiny_data.train_dataloader()))
    model.scheduled_steps = 10
    optimizer = model.configure_optimizers()["optimizer"]
    model.compute(batch, torch.Generator().manual_seed(0))["loss"].backward()
    model.configure_gradient_clipping(optimizer)
    generator = {id(p) for p in model.generator.parameters()}
    gen = [p.grad.clone() for p in model.generator.parameters() if p.grad is not None]
    disc = [p.grad for p in model.parameters() if id(p) not in generator and p.grad is not None]
    norm = lambda grads: torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()  # noqa: E731
    return gen, norm(gen), norm(disc)


def test_decoupled_training_clips_each_network_by_its_own_norm(tiny_data):
    gen50, gen_norm, disc_norm = clipped_generator_grads(tiny_data, True, 50.0)
    assert gen_norm == pytest.approx(0.5, rel=1e-4) and disc_norm == pytest.approx(0.5, rel=1e-4)
    gen5, _, _ = clipped_generator_grads(tiny_data, True, 5.0)
    for a, b in zip(gen50, gen5):  # the discriminator's loss weight no longer scales the generator's update
        torch.testing.assert_close(a, b)
    joint50, joint_gen, joint_disc = clipped_generator_grads(tiny_data, False, 50.0)
    assert math.hypot(joint_gen, joint_disc) == pytest.approx(0.5, rel=1e-4) and joint_gen < 0.1
    with pytest.raises(ValueError) as info:
        tiny(decoupled_training=True, uniform_generator=True)
    mentions(str(info.value), "decoupled_training", "uniform_generator")


@pytest.mark.parametrize("name", [n for n in presets.names() if n.split("-")[0] in ("electra", "bert", "deberta")])
def test_paper_presets_take_the_official_optimiser(name):
    args = presets.load(name)["model"]["init_args"]
    assert args["adam_bias_correction"] is False
    assert args["lr_schedule"] == ("deberta" if name.startswith("deberta") else "electra")
    assert args.get("decoupled_training", False) == name.startswith("deberta")


def test_adam_without_bias_correction_resumes_exactly():
    """Its state (step counts at the offset) goes through state_dict and load_state_dict: a resumed optimiser
    takes the same next step as the one that kept running."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(4)]

    def run(optimizer, params, steps):
        for g in steps:
            for p, gp in zip(params, g):
                p.grad = gp.clone()
            optimizer.step()

    running = AdamWeightDecay(weights, lr=1e-2, fused=True)
    run(running, weights, grads[:3])
    copy = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    resumed = AdamWeightDecay(copy, lr=1e-2, fused=True)
    resumed.load_state_dict(copy_module.deepcopy(running.state_dict()))  # as from a checkpoint file
    assert resumed.state_dict()["state"][0]["step"].item() == 2**23 + 3
    run(running, weights, grads[3:])
    run(resumed, copy, grads[3:])
    for a, b in zip(weights, copy):
        assert torch.equal(a, b)
