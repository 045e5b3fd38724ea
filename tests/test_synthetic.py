"""The known-answer testbed: synthetic sources are seeded and deterministic, their floors are exact
(against brute-force enumeration on a tiny chain), and a run on one logs them next to its losses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from datamodules.synthetic import SyntheticSource, SyntheticSpec, synthetic_tokenizer
from tests.helpers import mentions


@pytest.mark.parametrize("kind", ["chain", "topics", "chain+topics"])
def test_posterior_equals_brute_force_enumeration(kind):
    """P(x_t | every visible symbol) by forward-backward equals summing the joint over every filling of
    the hidden positions (4 symbols, 5 positions, 2 or 3 hidden, 3 topics)."""
    source = SyntheticSource(SyntheticSpec(kind=kind, symbols=4, successors=2, topics=3, topic_size=2, seed=3))
    x = source.sample(6, 5, seed=1)
    hidden = np.zeros_like(x, dtype=bool)
    hidden[:, [1, 2]] = True
    hidden[0, 4] = True
    post = source.posterior(x, hidden)
    for b in range(len(x)):
        slots = np.where(hidden[b])[0]
        joint = {}
        for fill in itertools.product(range(4), repeat=len(slots)):
            seq = x[b].copy()
            seq[slots] = fill
            p = 0.0
            for z in range(source.n_topics):
                q = source.topic_prior[z] * source.initial[z, seq[0]]
                for t in range(1, 5):
                    q *= source.transition[z, seq[t - 1], seq[t]]
                p += q
            joint[fill] = p
        total = sum(joint.values())
        for j, t in enumerate(slots):
            brute = [sum(p for f, p in joint.items() if f[j] == v) / total for v in range(4)]
            np.testing.assert_allclose(post[b, t], brute, atol=1e-12)


def test_floors_of_the_default_chain():
    source = SyntheticSource(SyntheticSpec.parse("synthetic:chain"))
    floors = source.floors(64, 0.15)
    p = source.marginal()
    assert floors["unigram_entropy"] == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert 5.0 < floors["unigram_entropy"] < np.log(256)  # near-uniform stationary distribution
    assert 0.0 < floors["bayes_mlm_loss"] < 0.2  # 4 successors: neighbours nearly pin a symbol down
    topics = SyntheticSource(SyntheticSpec.parse("synthetic:topics")).floors(64, 0.15, n_sequences=64)
    assert 1.0 < topics["bayes_mlm_loss"] < topics["unigram_entropy"]  # the bag of words helps, order cannot


def test_sources_are_seeded():
    a = SyntheticSource(SyntheticSpec.parse("synthetic:chain+topics,seed=1")).examples(4, 16, seed=7)
    b = SyntheticSource(SyntheticSpec.parse("synthetic:chain+topics,seed=1")).examples(4, 16, seed=7)
    c = SyntheticSource(SyntheticSpec.parse("synthetic:chain+topics,seed=2")).examples(4, 16, seed=7)
    assert a == b and a["input_ids"] != c["input_ids"]
    row = a["input_ids"][0]
    assert row[0] == 2 and row[-1] == 3 and min(row[1:-1]) >= 5  # [CLS] symbols [SEP]
    tokenizer = synthetic_tokenizer(SyntheticSpec(symbols=256), 512)
    assert len(tokenizer) == 512 and tokenizer.mask_token_id == 4 and tokenizer.convert_ids_to_tokens(5) == "s0"


@pytest.mark.parametrize("spec, facts", [
    ("synthetic:grid", ("grid", "chain", "topics")),  # the source given, the ones there are
    ("synthetic:chain,symbols=abc", ("symbols=abc", "symbols")),
    ("synthetic:chain,colour=3", ("colour=3", "symbols", "successors")),  # the setting given, the ones there are
    ("synthetic:chain,symbols=4,successors=8", ("successors", 8, "symbols", 4)),
])
def test_bad_specs_are_one_line_errors(spec, facts):
    with pytest.raises(ValueError) as info:
        SyntheticSpec.parse(spec)
    assert "\n" not in str(info.value)
    mentions(str(info.value), *facts)


def test_a_run_logs_the_floors_next_to_its_losses(tmp_path, cache_dir, one_thread):
    from experiments.config import parse
    from experiments.run.pretrain import pretrain

    result = pretrain(parse(["--config", "tiny", "--data.dataset", "synthetic:chain", "--data.vocab_size", "512",
                             "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--run_dir",
                             str(tmp_path / "run"), "--wandb", "false", "--trainer.enable_progress_bar", "false"]))
    floors = SyntheticSource(SyntheticSpec.parse("synthetic:chain")).floors(64, 0.15)
    assert result.val["val/unigram_entropy"] == pytest.approx(floors["unigram_entropy"], rel=1e-6)
    assert result.val["val/bayes_mlm_loss"] == pytest.approx(floors["bayes_mlm_loss"], rel=1e-6)
    assert result.val["val/mlm_loss"] > floors["unigram_entropy"]  # 3 steps: still above the unigram level
