"""Encoder families: every objective and sharing mode on both families, the DeBERTa-v3 shapes, export
round trips of both networks of both families (logits equal after reload), and fine-tuning an exported
DeBERTa discriminator on an offline task."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, DebertaV2ForMaskedLM

from experiments.measure.bench import random_batch
from objectives import MaskedLM, ReplacedTokenDetection, discover
from objectives.deberta import DebertaV2ForReplacedTokenDetection
from objectives.encoder import FAMILIES, family
from objectives.generator import GDESEmbedding, GeneratorObjective
from tests.conftest import TINY_SEQ, TINY_VOCAB

GENERATOR_OBJECTIVES = [c for c in discover().values() if issubclass(c, GeneratorObjective)]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tiny(cls=ReplacedTokenDetection, encoder="deberta-v2", **kwargs):
    model = cls(size="tiny", encoder=encoder, vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, **kwargs)
    model.configure_model()
    return model


def test_deberta_v3_shapes_follow_the_official_configs():
    """xsmall 12 x 384, small 6 x 768, base 12 x 768, large 24 x 1024; 64-dim heads, FFN 4h, 256 buckets;
    generator of the same width and half the depth (microsoft/DeBERTa rtd_*.json)."""
    sizes = FAMILIES["deberta-v2"].sizes
    expected = {"xsmall": (384, 12, 6), "small": (768, 6, 12), "base": (768, 12, 12), "large": (1024, 24, 16)}
    for name, (h, layers, heads) in expected.items():
        shape = sizes[name]
        assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.intermediate_size) == (h, layers, heads, 4 * h)
        assert shape.relative_span == 256 and shape.embedding_size == h
    with torch.device("meta"):
        model = ReplacedTokenDetection(size="xsmall", encoder="deberta-v2", vocab_size=1000)
        model.configure_model()
    assert model.generator_shape == type(model.shape)(384, 6, 6, 1536, 384, 256)
    config = model.discriminator.config
    assert config.position_biased_input is False and config.relative_attention and config.pos_att_type == ["p2c", "c2p"]
    assert config.position_buckets == 256 and config.type_vocab_size == 0


@pytest.mark.parametrize("sharing", ["none", "embeddings", "all", "gdes"])
@pytest.mark.parametrize("encoder", list(FAMILIES))
def test_every_sharing_mode_on_every_family(encoder, sharing):
    torch.manual_seed(0)
    extra = dict(generator_hidden_fraction=1.0, generator_layers_fraction=1.0) if sharing == "all" else {}
    model = tiny(encoder=encoder, embedding_sharing=sharing, **extra)
    model.mask_token_id.fill_(4)
    gen, disc = model.generator.base_model, model.discriminator.base_model
    gen_words, disc_words = gen.embeddings.word_embeddings, disc.embeddings.word_embeddings
    if sharing == "none":
        assert gen_words is not disc_words
    elif sharing == "embeddings":
        assert gen_words is disc_words
    elif sharing == "all":
        assert gen is disc
    else:
        assert isinstance(disc_words, GDESEmbedding) and disc_words.shared is gen_words
    _, output, _ = family(encoder).mlm_head(model.generator)
    if sharing != "gdes":
        assert output.weight is gen_words.weight  # the generator's output matrix is its (shared) table
    metrics = model.compute(random_batch(4, TINY_SEQ, TINY_VOCAB, torch.device("cpu")), None)
    metrics["loss"].backward()
    assert torch.isfinite(metrics["loss"])
    if sharing == "gdes":  # the discriminator loss reaches the delta, never the shared table through it
        assert disc_words.delta.grad is not None and disc_words.delta.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", GENERATOR_OBJECTIVES, ids=lambda c: c.__name__)
def test_generator_objectives_run_on_deberta(cls):
    torch.manual_seed(0)
    model = tiny(cls)
    model.mask_token_id.fill_(4)
    loss = model.compute(random_batch(4, TINY_SEQ, TINY_VOCAB, torch.device("cpu")), None)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert isinstance(model.generator, DebertaV2ForMaskedLM)  # with the enhanced mask decoder: a subclass


def _perturb(model) -> None:
    """Move every weight (the GDES delta off zero too), so a round trip that drops one would show."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


@pytest.mark.parametrize("sharing", ["embeddings", "gdes"])
@pytest.mark.parametrize("encoder", list(FAMILIES))
def test_export_round_trip_both_networks(tiny_data, tmp_path, encoder, sharing):
    torch.manual_seed(0)
    model = tiny(encoder=encoder, embedding_sharing=sharing).eval()
    model.attach_tokenizer(tiny_data.tokenizer)
    _perturb(model)
    model.export(tmp_path / "out")
    batch = next(iter(tiny_data.val_dataloader()))
    inputs = {k: batch[k] for k in INPUTS}
    backbone = AutoModel.from_pretrained(tmp_path / "out").eval()  # what fine-tuning loads
    generator = AutoModelForMaskedLM.from_pretrained(tmp_path / "out" / "generator").eval()
    if encoder == "deberta-v2":
        discriminator = DebertaV2ForReplacedTokenDetection.from_pretrained(tmp_path / "out").eval()
    else:
        from transformers import AutoModelForPreTraining

        discriminator = AutoModelForPreTraining.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(discriminator(**inputs).logits, model.discriminator(**inputs).logits)
        torch.testing.assert_close(backbone(**inputs).last_hidden_state,
                                   model.discriminator.base_model(**inputs).last_hidden_state)
        hidden = model.generator.base_model(**inputs).last_hidden_state
        torch.testing.assert_close(generator(**inputs).logits, model.mlm_logits(model.generator, hidden))


@pytest.mark.parametrize("encoder", list(FAMILIES))
def test_masked_lm_export_round_trip(tiny_data, tmp_path, encoder):
    torch.manual_seed(0)
    model = tiny(MaskedLM, encoder=encoder).eval()
    model.attach_tokenizer(tiny_data.tokenizer)
    _perturb(model)
    model.export(tmp_path / "out")
    batch = next(iter(tiny_data.val_dataloader()))
    inputs = {k: batch[k] for k in INPUTS}
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        hidden = model.model.base_model(**inputs).last_hidden_state
        torch.testing.assert_close(hf(**inputs).logits, model.mlm_logits(model.model, hidden))


def test_finetune_an_exported_deberta_discriminator(tiny_data, tmp_path, cache_dir, one_thread):
    """The export fine-tunes through the same harness as any encoder: the backbone loads, no weight is
    missing, and a short run on docpkg lands above the majority class."""
    from experiments.finetuning import finetune as ft

    torch.manual_seed(0)
    model = tiny(embedding_sharing="gdes")
    model.attach_tokenizer(tiny_data.tokenizer)
    model.export(tmp_path / "export")
    results = ft.finetune(str(tmp_path / "export"), tasks="docpkg", seeds=1, out_dir=str(tmp_path / "ft"),
                          cache_dir=str(cache_dir), max_steps=150, epochs=20, max_seq_length=48, batch_size=32,
                          learning_rate=2e-3, layerwise_lr_decay=1.0, wandb=False)
    assert results["docpkg"].median > 100 / 10 + 10  # ten balanced classes: majority about 12


# ---------------------------------------------------------------------------------------------
# The plateau, on the synthetic chain (datamodules.synthetic): 256 symbols, 4 successors each.
# ---------------------------------------------------------------------------------------------

CHAIN = ["--config", "tiny", "--data.dataset", "synthetic:chain", "--data.vocab_size", "512",
         "--data.max_val_examples", "128", "--trainer.limit_val_batches", "8", "--trainer.enable_progress_bar",
         "false", "--model.init_args.learning_rate", "2e-3", "--model.init_args.warmup_fraction", "0.05",
         "--wandb", "false"]


def run_on_chain(tmp_path, name: str, steps: int, *extra: str) -> dict[str, float]:
    from experiments.config import parse
    from experiments.run.pretrain import pretrain

    result = pretrain(parse([*CHAIN, "--run_dir", str(tmp_path / name), "--trainer.max_steps", str(steps),
                             "--trainer.val_check_interval", str(steps), *extra]))
    assert result.finished and result.steps == steps
    return result.val


def test_deberta_leaves_the_unigram_plateau_that_electra_sits_on(tmp_path, cache_dir, one_thread):
    """Tiny MaskedLM, 800 steps of 16 x 64 tokens: the DeBERTa encoder's validation MLM loss falls far
    below the unigram entropy (5.23; Bayes floor 0.09), while the ELECTRA encoder's is still within 10% of it.

    Measured on an AMD EPYC CPU (AVX2, torch 2.13, one thread), --seed_everything 0 / 1 / 2: DeBERTa 1.33 /
    1.10 / 1.49 (bound 0.4 x 5.23 = 2.09), ELECTRA 4.848 / 4.843 / 4.857 (bound 0.9 x 5.23 = 4.71: 0.14 nats
    of margin, ten times the spread over seeds). Elsewhere: DeBERTa 1.50, ELECTRA 4.86."""
    electra = run_on_chain(tmp_path, "electra", 800)
    deberta = run_on_chain(tmp_path, "deberta", 800, "--model.init_args.encoder", "deberta-v2")
    unigram = electra["val/unigram_entropy"]
    assert unigram == pytest.approx(deberta["val/unigram_entropy"]) and electra["val/bayes_mlm_loss"] < 0.2
    assert electra["val/mlm_loss"] > 0.9 * unigram, electra
    assert deberta["val/mlm_loss"] < 0.4 * unigram, deberta


def test_deberta_rtd_discriminator_learns_beyond_its_prior(tmp_path, cache_dir, one_thread):
    """Tiny ReplacedTokenDetection on DeBERTa encoders with shared embeddings and the learned generator
    (half the discriminator's width, lambda 50): after 1,200 steps the validation AUROC is above 0.6, the loss
    below the label entropy, and the accuracy above the all-original baseline.

    Validation AUROC after 1,200 steps, measured on an AMD EPYC CPU (AVX2, torch 2.13, one thread), by
    (--seed_everything, --data.seed): (0, 0) 0.750 (this test), (1, 0) 0.767, (2, 0) 0.717, (0, 1) 0.889,
    (0, 2) 0.866: mean 0.80, standard deviation 0.07 over seeds (elsewhere: 0.82 at 1,000 steps, 0.86 at 1,500).
    Float results differ between CPUs and diverge over training, so another machine draws from this spread:
    0.6 is 0.12 (1.6 standard deviations) under the lowest of them, and still above 0.55, under which
    experiments.comparison.results calls a discriminator prior-only, and far above the 0.5 of one that learned
    nothing (on these 8,192 validation tokens, about 7% replaced, chance AUROC has a standard error of about
    0.013). Loss over label entropy in those runs: 0.84 / 0.84 / 0.93 / 0.69 / 0.70. The accuracy gain is
    thin: +0.35 / +0.15 / +0.02 / +0.44 / +0.71 points (at (2, 0), two tokens of 8,192)."""
    val = run_on_chain(tmp_path, "rtd", 1200, "--model", "objectives.ReplacedTokenDetection",
                       "--model.init_args.encoder", "deberta-v2", "--model.init_args.embedding_sharing", "embeddings",
                       "--model.init_args.generator_hidden_fraction", "0.5",
                       "--model.init_args.generator_layers_fraction", "1.0")
    assert val["val/disc_auroc"] > 0.6, val  # measured 0.72 to 0.89 over five seeds (see above)
    assert val["val/disc_gain"] > 0, val
    assert val["val/disc_loss"] < val["val/disc_label_entropy"], val
