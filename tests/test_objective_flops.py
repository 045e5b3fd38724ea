"""Each objective's `actual` FLOPs equal torch's own count of its real training step, for every
encoder family (DeBERTa's relative attention included)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.measure.bench import random_batch
from objectives import discover
from objectives.encoder import FAMILIES
from objectives.flops import CONVENTIONS
from tests.helpers import mentions

OBJECTIVES = list(discover().values())
VOCAB, B, L = 512, 4, 64


@pytest.mark.parametrize("encoder", list(FAMILIES))
@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_actual_flops_match_flop_counter(cls, encoder):
    torch.manual_seed(0)
    model = cls(size="tiny", encoder=encoder, vocab_size=VOCAB, max_position_embeddings=L)
    model.configure_model()
    model.mask_token_id.fill_(4)
    batch = random_batch(B, L, VOCAB, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        model.compute(batch, None)["loss"].backward()
    # On the CPU the attention is counted as the matmuls it runs, so the match is exact (see flops.py).
    assert model.step_flops(B, L, "actual") == pytest.approx(counter.get_total_flops(), rel=1e-9)


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_flops_in_both_conventions(cls):
    model = cls(size="tiny", vocab_size=VOCAB, max_position_embeddings=L)
    for convention in CONVENTIONS:
        assert model.flops_per_batch(B, L, convention) > 0
    with pytest.raises(ValueError) as info:
        model.flops_per_batch(B, L, "kaplan")
    mentions(str(info.value), "kaplan", *CONVENTIONS)
    deberta = cls(size="tiny", encoder="deberta-v2", vocab_size=VOCAB, max_position_embeddings=L)
    with pytest.raises(ValueError) as info:
        deberta.flops_per_batch(B, L, "paper")
    mentions(str(info.value), "paper", "actual")  # the convention refused, the one to use
