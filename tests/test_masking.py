"""Masking: where, how many, and what replaces the chosen tokens."""

import math

import pytest
import torch

from objectives.masking import MASK_STYLES, apply_mask, check_mask_args, choose_positions, max_predictions
from tests.helpers import mentions

MASK_ID, VOCAB = 4, 1000


def make_batch(B=64, L=128, seed=0):
    """Rows of random length with [CLS] ... [SEP] ... [SEP] and padding; words of 1-4 pieces."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(L // 4, L + 1, (B,), generator=g)
    attention = (torch.arange(L)[None] < lengths[:, None]).long()
    special = torch.zeros(B, L, dtype=torch.bool)
    special[:, 0] = True
    special[torch.arange(B), lengths - 1] = True
    special[torch.arange(B), lengths // 2] = True
    input_ids = torch.randint(10, VOCAB, (B, L), generator=g)
    input_ids[special] = 3
    input_ids[attention == 0] = 0
    word_ids = torch.full((B, L), -1)
    for b in range(B):  # test fixture only
        w, left = -1, 0
        for t in range(L):
            if attention[b, t] and not special[b, t]:
                if left == 0:
                    w, left = w + 1, int(torch.randint(1, 5, (1,), generator=g))
                word_ids[b, t] = w
                left -= 1
    return input_ids, attention, special, word_ids


@pytest.mark.parametrize("whole_word", [False, True])
def test_never_special_or_padding(whole_word):
    ids, att, special, words = make_batch()
    m = choose_positions(att, special, 0.15, word_ids=words if whole_word else None)
    assert not (m.chosen & special).any()
    assert not (m.chosen & (att == 0)).any()


@pytest.mark.parametrize("p", [0.15, 0.25, 0.5])
def test_exact_count_without_replacement(p):
    ids, att, special, _ = make_batch()
    m = choose_positions(att, special, p)
    n = att.sum(1)
    expected = torch.clamp(torch.floor(p * n + 0.5), min=1).long()
    assert torch.equal(m.chosen.sum(1), expected)
    # the gather index lists each chosen position exactly once (no replacement) within K slots
    assert m.positions.shape[1] == max_predictions(att.shape[1], p)
    for b in range(ids.shape[0]):
        pos = m.positions[b][m.valid[b]]
        assert len(set(pos.tolist())) == len(pos) == int(m.chosen[b].sum())
        assert m.chosen[b, pos].all()


def test_at_least_one_position():
    att = torch.zeros(2, 16, dtype=torch.long)
    att[:, :4] = 1
    special = torch.zeros(2, 16, dtype=torch.bool)
    special[:, 0] = special[:, 3] = True
    m = choose_positions(att, special, 0.01)
    assert m.chosen.sum(1).tolist() == [1, 1]


def test_whole_words_masked_together():
    ids, att, special, words = make_batch(seed=1)
    m = choose_positions(att, special, 0.15, word_ids=words)
    assert m.chosen.any()
    for b in range(ids.shape[0]):
        for w in words[b].unique().tolist():
            if w < 0:
                continue
            in_word = m.chosen[b][words[b] == w]
            assert in_word.all() or not in_word.any(), f"word {w} of row {b} partly masked"
    # the count stays near the target: at least the target minus a skipped word, at most K
    n = att.sum(1)
    target = torch.floor(0.15 * n + 0.5)
    counts = m.chosen.sum(1)
    assert (counts <= m.positions.shape[1]).all()
    assert (counts.float().mean() - target.mean()).abs() < 2.0


@pytest.mark.parametrize("style", ["bert", "electra"])
def test_replacement_split(style):
    ids, att, special, _ = make_batch(B=256, L=128, seed=2)
    g = torch.Generator().manual_seed(0)
    m = choose_positions(att, special, 0.15, rng=g)
    out = apply_mask(ids, m, MASK_ID, VOCAB, style, rng=g)
    # unchosen positions never change
    assert torch.equal(out[~m.chosen], ids[~m.chosen])
    chosen = m.chosen
    total = chosen.sum().item()
    masked = (out[chosen] == MASK_ID).sum().item() / total
    kept = (out[chosen] == ids[chosen]).sum().item() / total
    random = 1 - masked - kept
    p_mask, p_random = MASK_STYLES[style]
    tol = 3 * math.sqrt(0.25 / total)  # 3 standard errors
    assert abs(masked - p_mask) < tol
    assert abs(random - p_random) < tol + 1e-9
    assert abs(kept - (1 - p_mask - p_random)) < tol


def test_deterministic_with_generator():
    ids, att, special, _ = make_batch()
    a = choose_positions(att, special, 0.15, rng=torch.Generator().manual_seed(5))
    b = choose_positions(att, special, 0.15, rng=torch.Generator().manual_seed(5))
    c = choose_positions(att, special, 0.15, rng=torch.Generator().manual_seed(6))
    assert torch.equal(a.chosen, b.chosen)
    assert not torch.equal(a.chosen, c.chosen)


def test_scatter_gather_round_trip():
    ids, att, special, _ = make_batch()
    m = choose_positions(att, special, 0.15)
    updates = torch.full_like(m.positions, 7)
    out = m.scatter(ids, updates)
    assert torch.equal(out != ids, m.chosen & (ids != 7))
    assert torch.equal(m.gather(out)[m.valid], updates[m.valid])


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_bad_mask_prob(p):
    with pytest.raises(ValueError) as info:
        check_mask_args(p, "bert")
    mentions(str(info.value), "mask_prob", p)


def test_bad_style():
    with pytest.raises(ValueError) as info:
        check_mask_args(0.15, "span")
    mentions(str(info.value), "mask_style", "span", *MASK_STYLES)  # the value given, and the choices
