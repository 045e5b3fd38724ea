"""Analytic training FLOPs per sequence for an encoder and the ELECTRA-family objectives.

Two named conventions (``CONVENTIONS``):

``paper``
    The ELECTRA paper's own accounting (Clark et al. 2020, Table 1 / Table 8), exactly as
    section 4 of ``shared/reference/electra.md`` lists it: a dense matmul costs 2mn per token;
    backward costs the same as forward, so training = 2 x forward; embedding lookups are charged
    as dense one-hot multiplies; element-wise ops have per-element constants (dropout 4,
    LayerNorm 5, GELU 8, softmax 5); the MLM output is charged on a fixed fraction 0.15625 of the
    tokens whatever the mask probability; the ELECTRA generator is charged as a separate model
    with its own (dense) embedding cost even though it shares the embeddings. Use this to compare
    with figures in the literature.

``actual``
    What isoflop's implementation really multiplies, in the modern convention (backward = 2 x
    forward, so training = 3 x forward), counting matrix multiplies only: 2mn per weight
    application, the two attention matmuls QK^T and AV at 2*s*h each per token, embedding lookups
    are gathers (0 FLOPs) and element-wise ops are 0. This is what
    ``torch.utils.flop_counter.FlopCounterMode`` reports for a training step (it counts
    mm/addmm/bmm/sdpa/conv only; tests/test_flops.py checks the match). The MLM head runs only on
    the ``n_masked`` gathered positions, the discriminator head on every token. Caveat: on GPU,
    where SDPA runs a fused kernel, FlopCounterMode charges the attention backward 2.5 x its
    forward (it includes the recomputation of the scores), so it reports a little more than this
    formula there; on CPU the math path is counted and the match is exact.

Figures this module gives for the paper's configurations (computed from the formulas below,
nothing hard-coded; ``paper`` total = 2 x forward x batch x steps, ``actual`` = 3 x ...). The
``reference`` column is ``shared/reference/electra.md`` section 4 (paper Table 1); the Large
budgets (seq 512, batch 2048, 400k steps) come from its Table 6 and it lists no figure for them.

=============  =========================  ========  =========  =========  ====
configuration  budget (seq/batch/steps)   paper     reference  actual     mask
=============  =========================  ========  =========  =========  ====
BERT-Small     128 / 128 / 1.45M          1.419e18  ~1.4e18    1.545e18   0.15
ELECTRA-Small  128 / 128 / 1M             1.294e18  ~1.3e18    1.150e18   0.15
BERT-Base      512 / 256 / 1M             6.428e19  ~6.4e19    7.706e19   0.15
ELECTRA-Base   512 / 256 / 766k           6.425e19  ~6.4e19    6.705e19   0.15
BERT-Large     512 / 2048 / 400k          6.135e20  --         8.436e20   0.25
ELECTRA-Large  512 / 2048 / 400k          7.118e20  --         9.098e20   0.25
=============  =========================  ========  =========  =========  ====

(``actual`` uses the default n_masked = round(mask_prob x seq): 19, 77 and 128 positions.) As a
further check outside the reference, the paper's Table 8 gives 3.1e21 for ELECTRA-1.75M (Large,
1.75M steps); this module gives 3.114e21.

One ELECTRA step costs 1.322 x a BERT step at Small size in the paper convention (the reference's
"about 1.32"), 1.305 x at Base and 1.160 x at Large. In the actual convention the ratios are only
1.079, 1.136 and 1.078: the paper charges the generator a dense one-hot embedding (2 x e x V per
token, the bulk of a small generator's count), while the real lookup is a free gather. So at equal
*actual* compute BERT gets far fewer extra steps than the paper's accounting suggests.

Composing other objectives: every objective is a sum of ``train_multiplier(convention) x`` the
forward pieces it back-propagates through (``encoder_flops``, ``mlm_head_flops``,
``disc_head_flops``) plus the forward-only pieces (x 1). For example, a discriminator that also
carries an MLM head on the masked positions::

    rtd = training_flops("rtd", disc, gen, seq_len, convention=c)
    extra = train_multiplier(c) * mlm_head_flops(disc, n_masked, c)

and an MLM that predicts every token is ``train_multiplier(c) * (encoder_flops(shape, s, c) +
mlm_head_flops(shape, s, c))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Convention = Literal["paper", "actual"]
CONVENTIONS: tuple[str, ...] = ("paper", "actual")
KINDS: tuple[str, ...] = ("mlm", "rtd")

# Uncased WordPiece vocabulary of BERT and ELECTRA (reference section 1).
PAPER_VOCAB_SIZE = 30522

# The paper's accounting charges the MLM output on a fixed share of the tokens, 0.15625 = 20/128
# (the official max_predictions_per_seq at seq 128), "also for 25% masking" (reference section 4).
PAPER_MLM_FRACTION = 0.15625

# Per-element costs of element-wise ops in the paper's accounting (reference section 4).
DROPOUT_FLOPS = 4
LAYER_NORM_FLOPS = 5
GELU_FLOPS = 8
SOFTMAX_FLOPS = 5


def check_convention(convention: str) -> None:
    """Raise a one-line ValueError for a convention that is not in ``CONVENTIONS``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")


def train_multiplier(convention: str) -> float:
    """Training FLOPs / forward FLOPs: 2 in the paper's accounting (backward counted the same as
    forward, reference section 4), 3 in the modern one (backward = grad wrt inputs + grad wrt
    weights, each as costly as the forward)."""
    check_convention(convention)
    return 2.0 if convention == "paper" else 3.0


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOPs of one encoder (Hugging Face ``ElectraModel``) depend on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    embedding_size: int
    vocab_size: int

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "embedding_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderShape.{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def paper(cls, hidden_size: int, num_layers: int, embedding_size: int, vocab_size: int = PAPER_VOCAB_SIZE) -> "EncoderShape":
        """The paper's shape rule (Table 6): heads = hidden // 64 (at least 1), FFN = 4 x hidden."""
        return cls(hidden_size, num_layers, max(1, hidden_size // 64), 4 * hidden_size, embedding_size, vocab_size)

    @classmethod
    def from_size(cls, size: Any, vocab_size: int) -> "EncoderShape":
        """From anything with ``hidden_size, num_layers, num_heads, intermediate_size,
        embedding_size`` attributes (e.g. ``objectives.encoder.EncoderSize``)."""
        return cls(size.hidden_size, size.num_layers, size.num_heads, size.intermediate_size, size.embedding_size, vocab_size)

    @classmethod
    def from_config(cls, config: Any) -> "EncoderShape":
        """From a Hugging Face ``ElectraConfig`` (or ``BertConfig``: no ``embedding_size`` means
        embeddings at the hidden width)."""
        return cls(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            embedding_size=getattr(config, "embedding_size", None) or config.hidden_size,
            vocab_size=config.vocab_size,
        )


# --------------------------------------------------------------------------------------------
# Forward pieces, per sequence of seq_len tokens.
# --------------------------------------------------------------------------------------------


def embedding_flops(shape: EncoderShape, seq_len: int, convention: str) -> float:
    """Forward FLOPs of the embedding block and the projection to the hidden width."""
    check_convention(convention)
    _check_positive(seq_len=seq_len)
    h, e, v, s = shape.hidden_size, shape.embedding_size, shape.vocab_size, seq_len
    if convention == "actual":
        # Word, position and token-type lookups are gathers (0); the LayerNorm, dropout and sums
        # are element-wise (0). Only the Linear(e, h) projection multiplies, and only when e != h.
        per_token = 2 * e * h if e != h else 0
        return float(per_token * s)
    terms = [
        2 * e * v,  # main_multiply: the word lookup as a dense one-hot multiply
        2 * e * (s + 2),  # tok_type_and_position: as a dense multiply over s + 2 rows
        2 * e,  # add_tok_type_and_position
        LAYER_NORM_FLOPS * e,  # emb_layer_norm
        DROPOUT_FLOPS * e,  # emb_dropout
    ]
    if e != h:
        terms += [
            2 * h * e,  # hidden_kernel: the projection Linear(e, h)
            h,  # hidden_bias
        ]
    return float(sum(terms) * s)


def layer_flops(shape: EncoderShape, seq_len: int, convention: str) -> float:
    """Forward FLOPs of one transformer layer over a sequence of seq_len tokens."""
    check_convention(convention)
    _check_positive(seq_len=seq_len)
    h, i, heads, s = shape.hidden_size, shape.intermediate_size, shape.num_heads, seq_len
    if convention == "actual":
        terms = [
            3 * 2 * h * h,  # Q, K, V projections
            2 * s * h,  # QK^T: s scores per head of width h/heads, over all heads
            2 * s * h,  # attention-weighted sum of V
            2 * h * h,  # attention output projection
            2 * h * i,  # FFN in
            2 * i * h,  # FFN out
        ]
        return float(sum(terms) * s)
    # The paper's list, per token (reference section 4). The official code charges the softmax,
    # the attention dropout and the score scaling per head ("heads"), not per score element.
    terms = [
        3 * 2 * h * h,  # kqv
        3 * h,  # kqv_bias
        2 * h * s,  # attention_scores
        SOFTMAX_FLOPS * s * heads,  # attn_softmax
        DROPOUT_FLOPS * s * heads,  # attention_dropout
        s * heads,  # attention_scale
        2 * h * s,  # attention_weighted_avg_values
        2 * h * h,  # attn_output
        h,  # attn_output_bias
        DROPOUT_FLOPS * h,  # attn_output_dropout
        h,  # attn_output_residual
        LAYER_NORM_FLOPS,  # attn_output_layer_norm: 5, not 5h, as the official code counts it
        2 * h * i,  # intermediate
        GELU_FLOPS * i,  # intermediate_act
        i,  # intermediate_bias
        2 * h * i,  # output
        h,  # output_bias
        DROPOUT_FLOPS * h,  # output_dropout
        h,  # output_residual
        LAYER_NORM_FLOPS * h,  # output_layer_norm
    ]
    return float(sum(terms) * s)


def encoder_flops(shape: EncoderShape, seq_len: int, convention: str) -> float:
    """Forward FLOPs of the whole encoder (embeddings, projection, all layers) per sequence."""
    return embedding_flops(shape, seq_len, convention) + shape.num_layers * layer_flops(shape, seq_len, convention)


def mlm_head_flops(shape: EncoderShape, n_predicted: float, convention: str) -> float:
    """Forward FLOPs of the MLM head (dense(h -> e) -> GELU -> LayerNorm -> tied output e -> V)
    applied to ``n_predicted`` positions of one sequence.

    ``n_predicted`` is taken as given in both conventions; the paper's fixed 0.15625 share is
    applied by ``training_flops`` (see ``predicted_positions``)."""
    check_convention(convention)
    if n_predicted < 0:
        raise ValueError(f"n_predicted must be >= 0, got {n_predicted}")
    h, e, v = shape.hidden_size, shape.embedding_size, shape.vocab_size
    if convention == "actual":
        per_position = 2 * h * e + 2 * e * v  # Linear(h, e), then the tied Linear(e, V)
        return float(per_position * n_predicted)
    terms = [
        2 * h * e,  # hidden: dense(h -> e)
        e,  # hidden_bias
        GELU_FLOPS * e,  # hidden_act
        LAYER_NORM_FLOPS * e,  # layer_norm
        2 * e * v,  # output: tied matrix e -> V
        SOFTMAX_FLOPS * v,  # softmax
        2 * v,  # target (the reference's "target 2V")
    ]
    return float(sum(terms) * n_predicted)


def disc_head_flops(shape: EncoderShape, n_tokens: float, convention: str) -> float:
    """Forward FLOPs of the discriminator head (dense(h) -> GELU -> dense(1)) on ``n_tokens``
    positions of one sequence (all of them for ELECTRA)."""
    check_convention(convention)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    h = shape.hidden_size
    if convention == "actual":
        per_token = 2 * h * h + 2 * h  # Linear(h, h), then Linear(h, 1)
        return float(per_token * n_tokens)
    terms = [
        2 * h * h,  # hidden
        h,  # hidden_bias
        GELU_FLOPS * h,  # hidden_act
        2 * h,  # logits
    ]
    return float(sum(terms) * n_tokens)


def predicted_positions(seq_len: int, convention: str, *, mask_prob: float = 0.15, n_masked: float | None = None) -> float:
    """How many positions per sequence the MLM head is charged for.

    ``paper``: always 0.15625 x seq_len (the official accounting's fixed share; ``mask_prob`` and
    ``n_masked`` are ignored so the literature's figures come out). ``actual``: ``n_masked`` when
    given, else round(mask_prob x seq_len), at least 1 (the count ``objectives.masking`` chooses
    per full-length row). Objectives that run the head on a fixed gather of K slots, filler
    included (``masking.max_predictions``), should pass ``n_masked=K``."""
    check_convention(convention)
    _check_positive(seq_len=seq_len)
    if convention == "paper":
        return PAPER_MLM_FRACTION * seq_len
    if n_masked is not None:
        if n_masked < 0:
            raise ValueError(f"n_masked must be >= 0, got {n_masked}")
        return float(n_masked)
    return float(max(1, round(mask_prob * seq_len)))


def forward_flops(
    kind: str,
    discriminator: EncoderShape,
    generator: EncoderShape | None,
    seq_len: int,
    *,
    mask_prob: float = 0.15,
    n_masked: float | None = None,
    convention: str = "paper",
) -> float:
    """Forward FLOPs per sequence of one training step of ``kind`` (see ``training_flops``)."""
    return _objective(kind, discriminator, generator, seq_len, mask_prob, n_masked, convention)[0]


def training_flops(
    kind: str,
    discriminator: EncoderShape,
    generator: EncoderShape | None,
    seq_len: int,
    *,
    mask_prob: float = 0.15,
    n_masked: float | None = None,
    convention: str = "paper",
) -> float:
    """Training FLOPs (forward + backward) per sequence.

    kind ``mlm``: BERT. ``discriminator`` is the trained encoder with an MLM head; ``generator``
    must be None.
    kind ``rtd``: ELECTRA. The discriminator (encoder + head on every token) plus the generator
    (encoder + MLM head on the masked positions), both trained; sampling is free.

    Per the reference, in the ``paper`` convention the generator is charged as a separate model
    with its own dense embedding cost even though the embeddings are tied.
    """
    return _objective(kind, discriminator, generator, seq_len, mask_prob, n_masked, convention)[1]


def _objective(
    kind: str,
    disc: EncoderShape,
    gen: EncoderShape | None,
    seq_len: int,
    mask_prob: float,
    n_masked: float | None,
    convention: str,
) -> tuple[float, float]:
    """(forward, training) FLOPs per sequence. Every part listed here is back-propagated."""
    check_convention(convention)
    if kind not in KINDS:
        raise ValueError(f"unknown objective kind {kind!r}: choose one of {', '.join(KINDS)}")
    n_pred = predicted_positions(seq_len, convention, mask_prob=mask_prob, n_masked=n_masked)
    if kind == "mlm":
        if gen is not None:
            raise ValueError("kind 'mlm' takes no generator: pass generator=None")
        forward = encoder_flops(disc, seq_len, convention) + mlm_head_flops(disc, n_pred, convention)
    else:
        if gen is None:
            raise ValueError("kind 'rtd' needs a generator shape")
        forward = (
            encoder_flops(disc, seq_len, convention)
            + disc_head_flops(disc, seq_len, convention)
            + encoder_flops(gen, seq_len, convention)
            + mlm_head_flops(gen, n_pred, convention)
        )
    return forward, train_multiplier(convention) * forward


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


# --------------------------------------------------------------------------------------------
# The paper's configurations (reference sections 1 and 4): shapes and training budgets only.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSetup:
    """An objective with its network shapes: what ``training_flops`` needs besides the sequence."""

    kind: str
    discriminator: EncoderShape
    generator: EncoderShape | None = None
    mask_prob: float = 0.15


@dataclass(frozen=True)
class Budget:
    """A training budget: optimiser steps, sequences per step, tokens per sequence."""

    steps: int
    batch: int
    seq_len: int


def _paper_setup(kind: str, hidden: int, layers: int, embedding: int, gen_hidden: int | None, mask_prob: float) -> ModelSetup:
    disc = EncoderShape.paper(hidden, layers, embedding)
    # The generator: same depth, a fraction of the width, the shared embedding width.
    gen = EncoderShape.paper(gen_hidden, layers, embedding) if gen_hidden is not None else None
    return ModelSetup(kind, disc, gen, mask_prob)


# Table 6 sizes; BERT baselines use the discriminator's shape with an MLM head.
PAPER_PRESETS: dict[str, ModelSetup] = {
    "bert-small": _paper_setup("mlm", 256, 12, 128, None, 0.15),
    "electra-small": _paper_setup("rtd", 256, 12, 128, 64, 0.15),
    "bert-base": _paper_setup("mlm", 768, 12, 768, None, 0.15),
    "electra-base": _paper_setup("rtd", 768, 12, 768, 256, 0.15),
    "bert-large": _paper_setup("mlm", 1024, 24, 1024, None, 0.25),
    "electra-large": _paper_setup("rtd", 1024, 24, 1024, 256, 0.25),
}

# The budgets behind the reference's FLOPs checks (section 4) and, for Large, Table 6.
PAPER_BUDGETS: dict[str, Budget] = {
    "bert-small": Budget(steps=1_450_000, batch=128, seq_len=128),
    "electra-small": Budget(steps=1_000_000, batch=128, seq_len=128),
    "bert-base": Budget(steps=1_000_000, batch=256, seq_len=512),
    "electra-base": Budget(steps=766_000, batch=256, seq_len=512),
    "bert-large": Budget(steps=400_000, batch=2048, seq_len=512),
    "electra-large": Budget(steps=400_000, batch=2048, seq_len=512),
}


def resolve_preset(name: str) -> ModelSetup:
    """A preset from ``PAPER_PRESETS``; a one-line ValueError names the valid ones."""
    if name not in PAPER_PRESETS:
        raise ValueError(f"unknown FLOPs preset {name!r}: choose one of {', '.join(PAPER_PRESETS)}")
    return PAPER_PRESETS[name]


def total_training_flops(setup: ModelSetup | str, budget: Budget, *, convention: str = "paper", n_masked: float | None = None) -> float:
    """Training FLOPs of a whole run: per-sequence training FLOPs x batch x steps."""
    setup = resolve_preset(setup) if isinstance(setup, str) else setup
    per_seq = training_flops(
        setup.kind, setup.discriminator, setup.generator, budget.seq_len,
        mask_prob=setup.mask_prob, n_masked=n_masked, convention=convention,
    )
    return per_seq * budget.batch * budget.steps


def format_report(
    setup: ModelSetup | str,
    *,
    steps: int,
    batch: int,
    seq_len: int,
    convention: str = "paper",
    n_masked: float | None = None,
) -> str:
    """A small text table of a run's FLOPs; the last line is ``total training FLOPs: 1.234e+18``.

    ``setup`` is a ``ModelSetup`` or a preset name (``PAPER_PRESETS``)."""
    check_convention(convention)
    name = setup if isinstance(setup, str) else setup.kind
    setup = resolve_preset(setup) if isinstance(setup, str) else setup
    _check_positive(steps=steps, batch=batch)
    args = (setup.kind, setup.discriminator, setup.generator, seq_len)
    kwargs = dict(mask_prob=setup.mask_prob, n_masked=n_masked, convention=convention)
    forward = forward_flops(*args, **kwargs)
    train = training_flops(*args, **kwargs)
    step = train * batch
    total = step * steps
    rows = [
        ("per-sequence forward", forward),
        ("per-sequence training", train),
        ("per-step training", step),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [
        f"{name}: kind {setup.kind}, convention {convention} (training = "
        f"{train_multiplier(convention):g} x forward), seq {seq_len}, batch {batch}, steps {steps}",
        *(f"{label:<{width}}  {value:.4e}" for label, value in rows),
        f"total training FLOPs: {total:.3e}",
    ]
    return "\n".join(lines)
