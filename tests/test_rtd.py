"""ELECTRA and its relatives: corruption, labels, gradient paths, tying, training, export, bad input."""

import warnings

import lightning as L
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, ElectraForMaskedLM, ElectraForPreTraining

from objectives import AllTokensMLM, Electra15, MLMPlusRTD, ReplaceMLM, ReplacedTokenDetection
from objectives.base import DETECTION
from objectives.generator import GDESEmbedding
from tests.conftest import TINY_SEQ, TINY_VOCAB
from tests.helpers import mentions

GENERATOR_OBJECTIVES = [ReplacedTokenDetection, Electra15, ReplaceMLM, AllTokensMLM, MLMPlusRTD]


def tiny(cls=ReplacedTokenDetection, tokenizer=None, **kwargs):
    model = cls(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, **kwargs)
    model.configure_model()
    if tokenizer is not None:
        model.attach_tokenizer(tokenizer)
    return model


@pytest.fixture
def batch(tiny_data):
    return next(iter(tiny_data.train_dataloader()))


def test_corruption_only_at_masked_positions(tiny_data, batch):
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer)
    c, metrics = model.corrupt(batch, torch.Generator().manual_seed(0))
    original = batch["input_ids"]
    changed = c.corrupted != original
    assert not (changed & ~c.masked.chosen).any()  # nothing outside the chosen positions changes
    assert torch.equal(c.replaced, changed)  # label == (corrupted != original)
    # the discriminator sees the samples, not the generator's [MASK]ed input (85% [MASK] there)
    assert (c.corrupted == model.mask_token_id).sum() < 0.05 * c.masked.chosen.sum()
    assert 0 < metrics["replaced_frac"] <= model.mask_prob + 0.02
    # an untrained generator samples almost never the original: most chosen tokens are replaced
    assert c.replaced.sum() > 0.8 * c.masked.chosen.sum()


def test_generator_predicting_originals_gives_no_replacements(tiny_data, batch, monkeypatch):
    """If the generator always predicts the original token, every label is 0 ("original")."""
    model = tiny(tokenizer=tiny_data.tokenizer)
    seen = {}
    choose = model.choose_positions

    def record(b, g):
        seen["masked"] = choose(b, g)
        return seen["masked"]

    def oracle(gen, hidden):
        originals = seen["masked"].gather(batch["input_ids"])  # (B, K)
        return torch.nn.functional.one_hot(originals, TINY_VOCAB).float() * 1e4

    monkeypatch.setattr(model, "choose_positions", record)
    monkeypatch.setattr(model, "mlm_logits", oracle)
    c, metrics = model.corrupt(batch, None)
    assert c.masked.chosen.any()
    assert not c.replaced.any()
    assert metrics["replaced_frac"] == 0
    assert metrics["gen_acc"] == 1


def test_disallow_correct_replaces_every_chosen_token(tiny_data, batch):
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer, disallow_correct=True)
    c, _ = model.corrupt(batch, None)
    assert torch.equal(c.replaced, c.masked.chosen)


def disc_grads(model, batch):
    """Gradients that the discriminator loss alone puts on each parameter."""
    model.zero_grad(set_to_none=True)
    metrics = model.compute(batch, torch.Generator().manual_seed(0))
    metrics["disc_loss"].backward()
    return {id(p): p.grad for p in model.parameters()}


@pytest.mark.parametrize("sharing", ["none", "embeddings", "gdes"])
def test_discriminator_gradient_paths(tiny_data, batch, sharing):
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer, embedding_sharing=sharing)
    grads = disc_grads(model, batch)
    shared = {id(p) for p in model.discriminator.parameters()}
    for name, p in model.generator.named_parameters():
        grad = grads[id(p)]
        reached = grad is not None and grad.abs().sum() > 0
        if sharing == "embeddings" and id(p) in shared:
            if "word_embeddings" in name or "LayerNorm" in name:
                assert reached, f"shared {name} got no gradient"
        else:
            assert not reached, f"{sharing}: discriminator loss reached generator parameter {name}"
    if sharing == "gdes":
        assert grads[id(model.discriminator.electra.embeddings.word_embeddings.delta)].abs().sum() > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gumbel_sampling_draws_from_the_softmax(temperature):
    """Replacements follow softmax(logits / temperature), also from bf16 logits: a sign or temperature
    mistake in the Gumbel-max trick, or noise drawn in half precision, samples another distribution."""
    from objectives.generator import gumbel_sample

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    expected = torch.softmax(logits / temperature, -1)
    n = 200_000  # standard error of a share at most 0.0012: the tolerance is 4 of them
    for dtype in (torch.float32, torch.bfloat16):
        samples = gumbel_sample(logits.to(dtype).expand(n, 5), temperature, torch.Generator().manual_seed(0))
        share = torch.bincount(samples, minlength=5).float() / n
        assert torch.allclose(share, expected, atol=0.005), (dtype, share, expected)


def test_generator_gets_no_gradient_through_sampling(tiny_data, batch):
    """With separate embeddings, the total ELECTRA loss moves the generator only through its MLM loss."""
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer, embedding_sharing="none", gen_weight=0.0)
    model.compute(batch, None)["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.generator.parameters())


def test_tied_parameters_are_one_tensor():
    model = tiny(embedding_sharing="embeddings")
    words = model.discriminator.electra.embeddings.word_embeddings.weight
    assert model.generator.electra.embeddings is model.discriminator.electra.embeddings  # LayerNorm too
    assert model.generator.generator_lm_head.weight is words
    assert model.generator.electra.embeddings_project is not model.discriminator.electra.embeddings_project \
        if hasattr(model.discriminator.electra, "embeddings_project") else True
    n_unique = len({id(p) for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))  # parameters() lists shared ones once
    # a module swap followed by re-tying points the output matrix at the new table
    model.generator.electra.embeddings.word_embeddings = torch.nn.Embedding(TINY_VOCAB, model.shape.embedding_size)
    model.tie_output_embeddings()
    assert model.generator.generator_lm_head.weight is model.generator.electra.embeddings.word_embeddings.weight

    same = tiny(embedding_sharing="all", generator_hidden_fraction=1.0)
    assert same.generator.electra is same.discriminator.electra
    assert same.generator.generator_lm_head.weight is same.discriminator.electra.embeddings.word_embeddings.weight


def test_gdes_starts_from_the_generator_table():
    model = tiny(embedding_sharing="gdes")
    words = model.discriminator.electra.embeddings.word_embeddings
    assert isinstance(words, GDESEmbedding)
    assert torch.equal(words.weight, model.generator.electra.embeddings.word_embeddings.weight)
    assert words.shared is model.generator.electra.embeddings.word_embeddings


def val_metrics(model, dm, batches=3):
    model.eval()
    out = {}
    with torch.no_grad():
        for i, b in enumerate(dm.val_dataloader()):
            if i == batches:
                break
            metrics = model.compute(b, model.validation_rng(i))
            metrics.pop(DETECTION, None)
            for k, v in metrics.items():
                out[k] = out.get(k, 0) + v.item() / batches
    model.train()
    return out


@pytest.mark.parametrize("cls", GENERATOR_OBJECTIVES, ids=lambda c: c.__name__)
def test_loss_falls(cls, tiny_data, tmp_path):
    L.seed_everything(0)
    model = tiny(cls, tokenizer=tiny_data.tokenizer, learning_rate=3e-3, warmup_fraction=0.1)
    before = val_metrics(model, tiny_data)
    trainer = L.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, tiny_data)
    after = val_metrics(model, tiny_data)
    assert after["loss"] < 0.9 * before["loss"], (before["loss"], after["loss"])


@pytest.mark.parametrize("cls", GENERATOR_OBJECTIVES, ids=lambda c: c.__name__)
def test_bf16_autocast_finite(cls, tiny_data, batch):
    torch.manual_seed(0)
    model = tiny(cls, tokenizer=tiny_data.tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metrics = model.compute(batch, None)
    metrics.pop(DETECTION, None)
    assert all(torch.isfinite(v) for v in metrics.values()), metrics
    assert metrics["loss"].dtype == torch.float32


@pytest.mark.parametrize("sharing", ["embeddings", "gdes"])
def test_export_round_trip(tiny_data, batch, tmp_path, sharing):
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer, embedding_sharing=sharing).eval()
    with torch.no_grad():  # move the GDES delta off zero so materialising it matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.export(tmp_path / "out")
    disc = AutoModelForPreTraining.from_pretrained(tmp_path / "out").eval()
    gen = AutoModelForMaskedLM.from_pretrained(tmp_path / "out" / "generator").eval()
    assert isinstance(disc, ElectraForPreTraining) and isinstance(gen, ElectraForMaskedLM)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    with torch.no_grad():
        torch.testing.assert_close(disc(**inputs).logits, model.discriminator(**inputs).logits, rtol=1e-4, atol=1e-4)
        hidden = model.generator.electra(**inputs).last_hidden_state
        ours = model.mlm_logits(model.generator, hidden)
        torch.testing.assert_close(gen(**inputs).logits, ours, rtol=1e-4, atol=1e-4)


def test_mlm_plus_rtd_exports_its_mlm_head(tiny_data, batch, tmp_path):
    torch.manual_seed(0)
    model = tiny(MLMPlusRTD, tokenizer=tiny_data.tokenizer).eval()
    model.export(tmp_path / "out")
    mlm = AutoModelForMaskedLM.from_pretrained(tmp_path / "out" / "discriminator_mlm").eval()
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    with torch.no_grad():
        hidden = model.discriminator.electra(**inputs).last_hidden_state
        torch.testing.assert_close(mlm(**inputs).logits, model.mlm_logits(model.discriminator_mlm, hidden),
                                   rtol=1e-4, atol=1e-4)


def test_two_stage(tiny_data, batch):
    torch.manual_seed(0)
    model = tiny(tokenizer=tiny_data.tokenizer, generator_hidden_fraction=1.0, two_stage=True)
    first = model.compute(batch, None)
    assert "disc_loss" not in first and torch.equal(first["loss"], first["gen_loss"])
    with torch.no_grad():
        model.generator.electra.encoder.layer[0].output.dense.weight.add_(1.0)
    model.start_discriminator_stage()
    assert torch.equal(model.discriminator.electra.encoder.layer[0].output.dense.weight,
                       model.generator.electra.encoder.layer[0].output.dense.weight)
    assert not model.generator.generator_predictions.dense.weight.requires_grad
    assert model.discriminator.electra.embeddings.word_embeddings.weight.requires_grad  # its own copy, trained
    second = model.compute(batch, None)
    assert "disc_loss" in second and int(model.stage) == 2


@pytest.mark.parametrize("uniform", [False, True], ids=["generator", "uniform"])
def test_short_run_on_embedded_corpus(tiny_data, tmp_path, uniform):
    """The replaced fraction lies in (0, mask_prob]; the discriminator learns to detect replacements.

    With the learned generator, a tiny model in a few dozen CPU steps only learns the label prior
    (its samples are unigram-like and need context to spot), so its accuracy is that of always
    answering "original"; with uniformly random replacements it beats that baseline within the run.
    The learned-generator gap is not a short-run artefact of this test: tiny discriminators trained
    for up to 12,000 steps (several widths, head counts, learning rates, sequence lengths, mask rates
    and sharing modes), and a plain transformers discriminator against fixed unigram replacements,
    all stayed at the prior (see rtd/objectives.rst, "Reading the discriminator's metrics").
    """
    L.seed_everything(0)
    model = tiny(tokenizer=tiny_data.tokenizer, learning_rate=3e-3, warmup_fraction=0.1, uniform_generator=uniform)
    trainer = L.Trainer(max_steps=250 if uniform else 60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, tiny_data)
    m = val_metrics(model, tiny_data)
    # chosen share: round(p x n) / n per row, which rounding can put a little above p
    chosen = torch.cat([model.choose_positions(b).chosen.float().sum(1) / b["attention_mask"].sum(1)
                        for b in tiny_data.val_dataloader()]).mean().item()
    # (replaced_frac averages batches, chosen rows: with uniform replacements, which almost never repeat the
    # original token, the two agree to about 0.1%, so allow 1% between the two averages)
    assert 0 < m["replaced_frac"] <= 1.01 * chosen and chosen < model.mask_prob + 0.01
    baseline = 1 - m["replaced_frac"]  # always answering "original"
    if uniform:
        assert m["disc_acc"] > baseline + 0.005, m
        assert m["disc_precision"] > 0.5, m
    else:
        assert m["disc_acc"] >= baseline - 0.002, m
        assert "gen_acc" in m and m["gen_acc"] > 0.02, m  # the generator learns as it goes


def test_wide_generator_warns():
    with pytest.warns(UserWarning) as record:
        tiny(generator_hidden_fraction=1.5)
    said = [str(w.message) for w in record if "generator_hidden_fraction" in str(w.message)]
    assert len(said) == 1
    mentions(said[0], 1.5)


def test_all_sharing_needs_equal_sizes():
    with pytest.raises(ValueError) as info:
        tiny(embedding_sharing="all", generator_hidden_fraction=0.25)
    mentions(str(info.value), "embedding_sharing", "all", "generator_hidden_fraction", "generator_layers_fraction", 0.25)


def test_two_stage_needs_equal_sizes():
    with pytest.raises(ValueError) as info:
        tiny(two_stage=True, generator_hidden_fraction=0.25)
    mentions(str(info.value), "two_stage", "generator_hidden_fraction", "generator_layers_fraction")


def test_unknown_sharing_mode():
    with pytest.raises(ValueError) as info:
        tiny(embedding_sharing="weights")
    mentions(str(info.value), "embedding_sharing", "weights", "none", "embeddings", "all", "gdes")  # and the choices


def test_default_generator_fraction_follows_the_paper():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = ReplacedTokenDetection(size="small", vocab_size=100)
        base = ReplacedTokenDetection(size="base", vocab_size=100, max_position_embeddings=16)
    assert small.generator_shape.hidden_size == 64 and small.generator_shape.num_heads == 1
    assert base.generator_shape.hidden_size == 256 and base.generator_shape.num_layers == 12
    assert small.generator_shape.embedding_size == small.shape.embedding_size == 128
