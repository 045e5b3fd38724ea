"""Each objective's `actual` FLOPs equal torch's own count of its real training step."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench import random_batch
from objectives import discover
from objectives.flops import CONVENTIONS

OBJECTIVES = list(discover().values())
VOCAB, B, L = 512, 4, 64


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_actual_flops_match_flop_counter(cls):
    torch.manual_seed(0)
    model = cls(size="tiny", vocab_size=VOCAB, max_position_embeddings=L)
    model.mask_token_id.fill_(4)
    batch = random_batch(B, L, VOCAB, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        model.compute(batch, None)["loss"].backward()
    measured = counter.get_total_flops()
    predicted = model.step_flops(B, L, "actual")
    assert abs(predicted - measured) / measured < 0.10, (cls.__name__, predicted, measured)


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_flops_in_both_conventions(cls):
    model = cls(size="tiny", vocab_size=VOCAB, max_position_embeddings=L)
    for convention in CONVENTIONS:
        assert model.flops_per_sequence(L, convention) > 0
    with pytest.raises(ValueError, match="unknown FLOPs convention"):
        model.flops_per_sequence(L, "kaplan")
