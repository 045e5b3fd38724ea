"""FLOPs accounting: the paper's figures (reference section 4) and the real count of a training step."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import ElectraConfig, ElectraModel

from objectives.flops import (
    CONVENTIONS,
    PAPER_BUDGETS,
    PAPER_PRESETS,
    Budget,
    EncoderShape,
    disc_head_flops,
    embedding_flops,
    encoder_flops,
    format_report,
    mlm_head_flops,
    total_training_flops,
    train_multiplier,
    training_flops,
)

# ---------------------------------------------------------------------------------------------
# paper convention: shared/reference/electra.md section 4
# ---------------------------------------------------------------------------------------------

REFERENCE_TOTALS = {
    "bert-small": 1.4e18,
    "electra-small": 1.3e18,
    "bert-base": 6.4e19,
    "electra-base": 6.4e19,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_TOTALS))
def test_paper_totals_match_reference(name):
    total = total_training_flops(name, PAPER_BUDGETS[name], convention="paper")
    assert total == pytest.approx(REFERENCE_TOTALS[name], rel=0.03)


def test_paper_large_sizes_are_consistent():
    bert = total_training_flops("bert-large", PAPER_BUDGETS["bert-large"], convention="paper")
    electra = total_training_flops("electra-large", PAPER_BUDGETS["electra-large"], convention="paper")
    assert 1e20 < bert < electra < 1e22
    # Paper Table 8 (outside the reference): ELECTRA-1.75M, the Large model trained 1.75M steps, 3.1e21.
    long_run = Budget(steps=1_750_000, batch=2048, seq_len=512)
    assert total_training_flops("electra-large", long_run, convention="paper") == pytest.approx(3.1e21, rel=0.03)


def _step(name: str, convention: str) -> float:
    setup, budget = PAPER_PRESETS[name], PAPER_BUDGETS[name]
    per_seq = training_flops(
        setup.kind, setup.discriminator, setup.generator, budget.seq_len,
        mask_prob=setup.mask_prob, convention=convention,
    )
    return per_seq * budget.batch


def test_electra_small_step_costs_1_32_bert_small_steps():
    assert _step("electra-small", "paper") / _step("bert-small", "paper") == pytest.approx(1.32, rel=0.01)


def test_paper_generator_is_charged_its_dense_embedding():
    # The generator of ELECTRA-Small: heads = max(1, 64 // 64), FFN 4 x 64, shared embedding width.
    gen = PAPER_PRESETS["electra-small"].generator
    assert (gen.hidden_size, gen.num_heads, gen.intermediate_size, gen.embedding_size) == (64, 1, 256, 128)
    dense_lookup = 2 * 128 * 30522 * 128  # 2 x e x V per token, 128 tokens
    assert dense_lookup < embedding_flops(gen, 128, "paper") < 1.01 * dense_lookup
    # Actually the lookups are gathers: only the projection Linear(128, 64) multiplies.
    assert embedding_flops(gen, 128, "actual") == 2 * 128 * 64 * 128


def test_paper_mlm_head_share_ignores_mask_prob():
    shape = PAPER_PRESETS["bert-base"].discriminator
    a = training_flops("mlm", shape, None, 512, mask_prob=0.15, convention="paper")
    b = training_flops("mlm", shape, None, 512, mask_prob=0.25, n_masked=300, convention="paper")
    assert a == b
    assert training_flops("mlm", shape, None, 512, mask_prob=0.25, convention="actual") > training_flops(
        "mlm", shape, None, 512, mask_prob=0.15, convention="actual"
    )


def test_training_is_2x_or_3x_forward():
    assert train_multiplier("paper") == 2.0
    assert train_multiplier("actual") == 3.0
    setup = PAPER_PRESETS["electra-base"]
    d, g = setup.discriminator, setup.generator
    for c in CONVENTIONS:
        n = 0.15625 * 512 if c == "paper" else 77
        forward = encoder_flops(d, 512, c) + disc_head_flops(d, 512, c) + encoder_flops(g, 512, c) + mlm_head_flops(g, n, c)
        assert training_flops("rtd", d, g, 512, convention=c) == pytest.approx(train_multiplier(c) * forward)


# ---------------------------------------------------------------------------------------------
# errors and the report
# ---------------------------------------------------------------------------------------------


def test_unknown_convention_is_a_one_line_error():
    shape = PAPER_PRESETS["bert-small"].discriminator
    calls = [
        lambda: encoder_flops(shape, 128, "kaplan"),
        lambda: mlm_head_flops(shape, 20, "kaplan"),
        lambda: disc_head_flops(shape, 128, "kaplan"),
        lambda: training_flops("mlm", shape, None, 128, convention="kaplan"),
        lambda: train_multiplier("kaplan"),
        lambda: format_report("bert-small", steps=1, batch=1, seq_len=128, convention="kaplan"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"'kaplan'.*paper, actual") as info:
            call()
        assert "\n" not in str(info.value)


def test_unknown_kind_and_preset_and_missing_generator():
    shape = PAPER_PRESETS["bert-small"].discriminator
    with pytest.raises(ValueError, match="mlm, rtd"):
        training_flops("gan", shape, None, 128)
    with pytest.raises(ValueError, match="generator"):
        training_flops("rtd", shape, None, 128)
    with pytest.raises(ValueError, match="electra-small"):
        format_report("electra-huge", steps=1, batch=1, seq_len=128)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_format_report_ends_with_total(convention):
    report = format_report("electra-small", steps=1_000_000, batch=128, seq_len=128, convention=convention)
    last = report.splitlines()[-1]
    match = re.fullmatch(r"total training FLOPs: (\d\.\d{3}e[+-]\d{2})", last)
    assert match, report
    expected = total_training_flops("electra-small", PAPER_BUDGETS["electra-small"], convention=convention)
    assert float(match.group(1)) == pytest.approx(expected, rel=1e-3)
    assert "per-sequence forward" in report and "per-step training" in report
    if convention == "paper":
        assert last == "total training FLOPs: 1.294e+18"


# ---------------------------------------------------------------------------------------------
# actual convention against torch's FlopCounterMode on a real forward + backward
# ---------------------------------------------------------------------------------------------

BATCH, SEQ, N_MASKED = 2, 64, 10


def _tiny_config(**overrides) -> ElectraConfig:
    kwargs = dict(
        vocab_size=1000, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=128, attn_implementation="sdpa",
    )
    kwargs.update(overrides)
    return ElectraConfig(**kwargs)


class _MLMHead(nn.Module):
    """dense(h -> e) -> GELU -> LayerNorm -> output tied to the word embeddings (plus a bias)."""

    def __init__(self, encoder: ElectraModel):
        super().__init__()
        cfg = encoder.config
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.norm = nn.LayerNorm(cfg.embedding_size)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.word_embeddings = encoder.embeddings.word_embeddings

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(x, self.word_embeddings.weight, self.bias)


def _positions(generator: torch.Generator) -> torch.Tensor:
    """(B, N_MASKED) distinct positions per row."""
    return torch.stack([torch.randperm(SEQ, generator=generator)[:N_MASKED] for _ in range(BATCH)])


def _gather(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))


def _count(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = ElectraModel(_tiny_config()).train()
    ids = torch.randint(0, 1000, (BATCH, SEQ))
    return model, ids


def test_actual_matches_flop_counter_encoder(tiny):
    model, ids = tiny

    def step():
        model(input_ids=ids).last_hidden_state.square().mean().backward()

    counted = _count(step)
    predicted = BATCH * train_multiplier("actual") * encoder_flops(EncoderShape.from_config(model.config), SEQ, "actual")
    assert counted == pytest.approx(predicted, rel=0.10)


def test_actual_matches_flop_counter_encoder_with_mlm_head(tiny):
    model, ids = tiny
    head = _MLMHead(model)
    positions = _positions(torch.Generator().manual_seed(1))
    labels = _gather(ids.unsqueeze(-1), positions).squeeze(-1)

    def step():
        hidden = model(input_ids=ids).last_hidden_state
        logits = head(_gather(hidden, positions))
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()

    counted = _count(step)
    shape = EncoderShape.from_config(model.config)
    predicted = BATCH * training_flops("mlm", shape, None, SEQ, n_masked=N_MASKED, convention="actual")
    assert predicted == BATCH * 3 * (encoder_flops(shape, SEQ, "actual") + mlm_head_flops(shape, N_MASKED, "actual"))
    assert counted == pytest.approx(predicted, rel=0.10)


def test_actual_matches_flop_counter_rtd_step():
    """Generator (projection 32 -> 16) trained on the masked input, sampling under no_grad, then
    the discriminator with its head on every token: the whole ELECTRA step."""
    torch.manual_seed(0)
    disc = ElectraModel(_tiny_config()).train()
    gen = ElectraModel(_tiny_config(hidden_size=16, num_attention_heads=1, intermediate_size=64)).train()
    gen.embeddings = disc.embeddings  # shared embedding block, as in the reference section 2 item 9
    gen_head = _MLMHead(gen)
    disc_head = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
    ids = torch.randint(5, 1000, (BATCH, SEQ))
    positions = _positions(torch.Generator().manual_seed(2))
    masked = ids.scatter(1, positions, 4)

    def step():
        logits = gen_head(_gather(gen(input_ids=masked).last_hidden_state, positions))
        gen_loss = F.cross_entropy(logits.flatten(0, 1), _gather(ids.unsqueeze(-1), positions).flatten())
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=logits.float()).sample()
        corrupted = ids.scatter(1, positions, sampled)
        disc_logits = disc_head(disc(input_ids=corrupted).last_hidden_state).squeeze(-1)
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits, (corrupted != ids).float())
        (gen_loss + 50 * disc_loss).backward()

    counted = _count(step)
    predicted = BATCH * training_flops(
        "rtd", EncoderShape.from_config(disc.config), EncoderShape.from_config(gen.config), SEQ,
        n_masked=N_MASKED, convention="actual",
    )
    assert counted == pytest.approx(predicted, rel=0.10)
