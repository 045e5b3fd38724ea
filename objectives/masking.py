"""Dynamic masking, on the device, per batch, for every masked-input objective.

Position choice (paper section 2; official code ``pretrain/pretrain_helpers.py``, ``mask``):
- never special tokens ([CLS], [SEP], [MASK]) or padding;
- per sequence, count = round(mask_prob x non-pad tokens), at least 1, without replacement;
- optionally whole words: a word's pieces are chosen together (word ids come from the datamodule).

Then each chosen position is replaced according to a style (step 2):
- ``bert``: 80% [MASK], 10% a random token, 10% kept (the paper's BERT baseline);
- ``electra``: 85% [MASK], 15% kept, no random token;
- ``deberta``: 100% [MASK] (DeBERTa-v3's generator input).

Everything is tensor code with static shapes: no host-device synchronisation, no Python loop over
tokens. The number of chosen positions per row is at most ``max_predictions(seq_len)``, so heads
that only look at chosen positions work on a fixed ``(B, K)`` gather instead of a ragged boolean
index (which would force a sync to learn its size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# (share of chosen positions set to [MASK], share set to a random token); the rest keep their token.
# bert: the BERT paper's; electra: ELECTRA's generator input (official configure_pretraining.py, keep 15%);
# deberta: every chosen position [MASK] (DeBERTa-v3's official rtd_task.py: NGramMaskGenerator(keep_prob=0, mask_prob=1)).
MASK_STYLES: dict[str, tuple[float, float]] = {"bert": (0.8, 0.1), "electra": (0.85, 0.0), "deberta": (1.0, 0.0)}


def check_mask_args(mask_prob: float, mask_style: str) -> None:
    """One-line errors for bad masking settings, raised at construction, before any compute."""
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}: the paper uses 0.15 (0.25 at Large size)")
    if mask_style not in MASK_STYLES:
        raise ValueError(f"unknown mask_style {mask_style!r}: choose one of {', '.join(MASK_STYLES)}")


def max_predictions(seq_len: int, mask_prob: float, whole_word: bool = False) -> int:
    """Static upper bound K on chosen positions per row.

    Token-level masking chooses round(p x n) <= ceil(p x L) positions. Whole-word masking may overshoot
    the target by part of a word, so it gets a quarter more room; words that would not fit are skipped.
    """
    k = math.ceil(mask_prob * seq_len)
    if whole_word:
        k += math.ceil(k / 4)
    return max(1, min(seq_len, k))


@dataclass
class MaskedPositions:
    """Which positions were chosen, as a dense mask and as a fixed-size gather index.

    chosen:    (B, L) bool, True where a position was chosen.
    positions: (B, K) long, the chosen positions of each row first (in increasing order), then filler.
    valid:     (B, K) bool, False for filler slots.
    """

    chosen: Tensor
    positions: Tensor
    valid: Tensor

    def gather(self, values: Tensor) -> Tensor:
        """``values`` (B, L, ...) at the chosen positions: (B, K, ...)."""
        index = self.positions
        if values.dim() > 2:
            index = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
        return values.gather(1, index)

    def scatter(self, values: Tensor, updates: Tensor) -> Tensor:
        """Copy of ``values`` (B, L) with ``updates`` (B, K) written at the valid chosen positions."""
        kept = values.gather(1, self.positions)
        return values.scatter(1, self.positions, torch.where(self.valid, updates, kept))


def choose_positions(
    attention_mask: Tensor,
    special_tokens_mask: Tensor,
    mask_prob: float,
    *,
    word_ids: Tensor | None = None,
    max_per_row: int | None = None,
    rng: torch.Generator | None = None,
) -> MaskedPositions:
    """Choose positions to mask: exactly round(mask_prob x non-pad tokens) per row (at least 1).

    Args:
        attention_mask: (B, L), 1 for real tokens, 0 for padding.
        special_tokens_mask: (B, L), 1 for [CLS]/[SEP]/other special tokens.
        mask_prob: share of non-pad tokens to choose.
        word_ids: (B, L) long, the word index of each token (unique within a row, in [0, L)), -1 for
            special tokens and padding. When given, a word's pieces are chosen together.
        max_per_row: the static bound K (default ``max_predictions(L, mask_prob, word_ids is not None)``).
        rng: a torch random-number generator for reproducible masks (validation); the global RNG otherwise.
    """
    B, L = attention_mask.shape
    device = attention_mask.device
    whole_word = word_ids is not None
    K = max_per_row or max_predictions(L, mask_prob, whole_word)
    candidate = attention_mask.bool() & ~special_tokens_mask.bool()  # (B, L)
    arange = torch.arange(L, device=device)
    if word_ids is None:
        word_ids = torch.where(candidate, arange.expand(B, L), -1)
    candidate = candidate & (word_ids >= 0)
    word = word_ids.clamp(min=0)  # (B, L), index into per-word tables of size L

    # Target count per row: round half up of p x n, at least 1, at most the number of candidates.
    n_tokens = attention_mask.sum(dim=1)
    target = torch.floor(mask_prob * n_tokens + 0.5).long().clamp(min=1)
    target = torch.minimum(target, candidate.sum(dim=1))  # (B,)

    # A random permutation of words per row: each word's rank, unique, so that sorting tokens by
    # (word rank, position) keeps every word's pieces contiguous.
    word_score = torch.rand(B, L, device=device, generator=rng)
    word_rank = word_score.argsort(dim=1).argsort(dim=1)  # (B, L)
    key = word_rank.gather(1, word) * L + arange  # (B, L), unique per row
    key = torch.where(candidate, key, L * L + arange)  # non-candidates sort last
    order = key.argsort(dim=1)
    token_rank = torch.empty_like(order).scatter_(1, order, arange.expand(B, L))  # rank of each token

    # A word is chosen iff it starts before the target is reached and ends within K.
    big = torch.full((B, L), L * L, device=device, dtype=torch.long)
    first = big.scatter_reduce(1, word, torch.where(candidate, token_rank, L * L), "amin")
    last = torch.zeros_like(big).scatter_reduce(1, word, torch.where(candidate, token_rank, 0), "amax")
    chosen = candidate & (first.gather(1, word) < target[:, None]) & (last.gather(1, word) < K)

    # Fixed-size gather index: chosen positions first, in position order (stable sort).
    positions = chosen.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :K]
    valid = chosen.gather(1, positions)
    return MaskedPositions(chosen=chosen, positions=positions, valid=valid)


def apply_mask(
    input_ids: Tensor,
    masked: MaskedPositions,
    mask_token_id: int | Tensor,
    vocab_size: int,
    style: str = "bert",
    *,
    rng: torch.Generator | None = None,
) -> Tensor:
    """The masked input (B, L): chosen positions become [MASK], a random token, or stay, per style.

    Random tokens are drawn uniformly from the vocabulary, as in BERT.
    """
    p_mask, p_random = MASK_STYLES[style]
    u = torch.rand(input_ids.shape, device=input_ids.device, generator=rng)
    out = torch.where(masked.chosen & (u < p_mask), mask_token_id, input_ids)
    if p_random > 0:
        random_tokens = torch.randint(
            vocab_size, input_ids.shape, device=input_ids.device, generator=rng, dtype=input_ids.dtype
        )
        out = torch.where(masked.chosen & (u >= p_mask) & (u < p_mask + p_random), random_tokens, out)
    return out
