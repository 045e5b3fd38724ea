"""Each objective's `actual` FLOPs agree with torch's own count of its real training step."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import objectives
from objectives.base import PretrainingObjective
from objectives.flops import CONVENTIONS

OBJECTIVES = [c for c in vars(objectives).values()
              if isinstance(c, type) and issubclass(c, PretrainingObjective) and c is not PretrainingObjective]
VOCAB, B, L = 512, 4, 64


def full_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, VOCAB, (B, L), generator=g)
    special = torch.zeros(B, L, dtype=torch.bool)
    special[:, 0] = special[:, L // 2] = special[:, -1] = True
    ids[special] = 3
    words = torch.where(special, -1, torch.arange(L).expand(B, L))
    return {"input_ids": ids, "attention_mask": torch.ones(B, L, dtype=torch.long),
            "token_type_ids": (torch.arange(L) > L // 2).long().expand(B, L).clone(),
            "special_tokens_mask": special, "word_ids": words}


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_actual_flops_match_flop_counter(cls):
    torch.manual_seed(0)
    model = cls(size="tiny", vocab_size=VOCAB, max_position_embeddings=L)
    model.mask_token_id.fill_(4)
    counter = FlopCounterMode(display=False)
    with counter:
        model.compute(full_batch(), None)["loss"].backward()
    measured = counter.get_total_flops()
    predicted = model.flops_per_batch(B, L, "actual")
    assert abs(predicted - measured) / measured < 0.10, (cls.__name__, predicted, measured)


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_flops_in_both_conventions(cls):
    model = cls(size="tiny", vocab_size=VOCAB, max_position_embeddings=L)
    for convention in CONVENTIONS:
        assert model.flops_per_sequence(L, convention) > 0
    with pytest.raises(ValueError, match="unknown FLOPs convention"):
        model.flops_per_sequence(L, "kaplan")
