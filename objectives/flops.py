"""Analytic FLOPs of the pieces every objective is made of; each objective sums the pieces it runs.

An objective's training FLOPs per sequence is ``train_multiplier(convention) x`` the forward pieces it
back-propagates through (:func:`encoder_flops`, :func:`mlm_head_flops`, :func:`disc_head_flops`) plus
the pieces it only runs forward (a frozen generator) x 1. Each objective writes that sum in its own
``flops_per_batch``; budgets, ``train/flops``, ``isoflop flops``, ``compare`` and the tables below
all ask the objective, so there is one FLOPs path.

Two named conventions (``CONVENTIONS``):

``paper``
    The ELECTRA paper's own accounting (Clark et al. 2020, Tables 1 and 8), as the official code
    counts it (``flops_computation.py``, ``TransformerHparams.get_block_flops``,
    ``get_embedding_flops``, ``get_binary_classification_flops`` and ``get_electra_train_flops``):
    a dense matmul costs 2mn per token; backward costs the same as forward, so training = 2 x forward;
    embedding lookups are charged as dense one-hot multiplies; element-wise ops have per-element
    constants (dropout 4, LayerNorm 5, GELU 8, softmax 5); the MLM output is charged on a fixed
    0.15625 of the tokens whatever the mask probability; the ELECTRA generator is charged as a
    separate model with its own dense embedding cost even though it shares the embeddings. Use this
    to compare with figures in the literature.

``actual``
    What isoflop's implementation really multiplies, in the modern convention (backward = 2 x
    forward, so training = 3 x forward), counting matrix multiplies only: 2mn per weight application,
    the two attention matmuls QK^T and AV at 2*s*h each per token; embedding lookups are gathers
    (0 FLOPs) and element-wise ops are 0. This is what ``torch.utils.flop_counter.FlopCounterMode``
    reports for a training step (it counts mm/addmm/bmm/sdpa/conv only; ``tests/test_objective_flops.py``
    checks the match for every objective). MLM heads are charged on the K slots they really run on
    (``masking.max_predictions``), the discriminator head on every token. Caveat: on GPU, where SDPA
    runs a fused kernel, FlopCounterMode charges the attention backward 2.5 x its forward (it includes
    the recomputation of the scores), so it reports a little more than this formula there; on CPU the
    math path is counted and the match is exact.

The paper's configurations, as the shipped presets give them (``experiments/configs``: steps
``trainer.max_steps``, global batch ``data.global_batch_size``, sequence ``data.max_seq_length``), each
computed by its objective through this module (``experiments.run.budget.flops_table`` writes this
table; a test checks that it is the one below). *published* is the paper's figure (Table 1; Table 8
for ELECTRA-400K, the Large model at 400k steps); the paper's BERT-Large (Table 8, 1.9e20) is BERT's
own batch 256 x 1M steps, not this preset's budget.

.. flops-table-start

=============  ===================  =========  =========  =========  ============
preset         seq / batch / steps  paper      published  actual     actual/paper
=============  ===================  =========  =========  =========  ============
bert-small     128 / 128 / 1450000  1.419e+18  1.4e18     1.550e+18  1.092
electra-small  128 / 128 / 1000000  1.294e+18  1.4e18     1.153e+18  0.891
bert-base      512 / 256 / 1000000  6.428e+19  6.4e19     7.706e+19  1.199
electra-base   512 / 256 / 766000   6.425e+19  6.4e19     6.705e+19  1.044
bert-large     512 / 2048 / 400000  6.135e+20  --         8.355e+20  1.362
electra-large  512 / 2048 / 400000  7.118e+20  7.1e20     9.098e+20  1.278
=============  ===================  =========  =========  =========  ============

.. flops-table-end

The paper's ELECTRA-Small figure from its own script is 1.29e18; Table 1 rounds both Small models to
1.4e18 ("comparable compute"). One ELECTRA step costs 1.32 x a BERT step at Small size in the
``paper`` convention and only about 1.08 x in ``actual``: the paper charges the generator a dense
one-hot embedding (2 x e x V per token, the bulk of a small generator's count), while the real lookup
is a free gather. So at equal *actual* compute BERT gets far fewer extra steps than the paper's
accounting suggests.
"""

from __future__ import annotations

from typing import Literal

from objectives.encoder import EncoderShape

Convention = Literal["paper", "actual"]
CONVENTIONS: tuple[str, ...] = ("paper", "actual")

# The paper's accounting charges the MLM output on a fixed share of the tokens, 0.15625 = 20/128, also for 25%
# masking: the default ``output_frac`` of the official ``flops_computation.py``'s ``TransformerHparams`` (the
# pre-training code itself predicts int((0.15 + 0.005) x 128) = 19 positions at length 128,
# ``configure_pretraining.py``).
PAPER_MLM_FRACTION = 0.15625

# Per-element costs of element-wise ops in the paper's accounting (official ``flops_computation.py``).
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
    forward), 3 in the modern one (backward = grad wrt inputs + grad wrt weights, each as costly as
    the forward)."""
    check_convention(convention)
    return 2.0 if convention == "paper" else 3.0


def _check_absolute(shape: EncoderShape) -> None:
    if shape.relative_span:
        raise ValueError("the paper FLOPs convention counts ELECTRA/BERT encoders (absolute positions) only, as the "
                         "ELECTRA paper does; use the actual convention for relative-position (DeBERTa) encoders")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


# --------------------------------------------------------------------------------------------
# Forward pieces, per sequence of seq_len tokens.
# --------------------------------------------------------------------------------------------


def embedding_flops(shape: EncoderShape, vocab_size: int, seq_len: int, convention: str) -> float:
    """Forward FLOPs of the embedding block and the projection to the hidden width, per sequence."""
    check_convention(convention)
    _check_positive(seq_len=seq_len, vocab_size=vocab_size)
    h, e, v, s = shape.hidden_size, shape.embedding_size, vocab_size, seq_len
    if convention == "actual":
        # Word, position and token-type lookups are gathers (0); the LayerNorm, dropout and sums
        # are element-wise (0). Only the Linear(e, h) projection multiplies, and only when e != h.
        return float((2 * e * h if e != h else 0) * s)
    _check_absolute(shape)
    terms = [
        2 * e * v,  # main_multiply: the word lookup as a dense one-hot multiply
        2 * e * (s + 2),  # tok_type_and_position: as a dense multiply over s + 2 rows
        2 * e,  # add_tok_type_and_position
        LAYER_NORM_FLOPS * e,  # emb_layer_norm
        DROPOUT_FLOPS * e,  # emb_dropout
    ]
    if e != h:
        terms += [2 * h * e, h]  # hidden_kernel (the projection Linear(e, h)) and hidden_bias
    return float(sum(terms) * s)


def layer_flops(shape: EncoderShape, seq_len: int, convention: str, batch_size: int = 1) -> float:
    """Forward FLOPs of one transformer layer over ``batch_size`` sequences of ``seq_len`` tokens.

    Disentangled relative attention (DeBERTa, ``shape.relative_span > 0``) adds, per token, the
    content-to-position and position-to-content products against the ``2 x relative_span``
    relative-position embeddings, and, once per forward pass whatever the batch, the projection of those
    embeddings by the query and key matrices (shared with the content projections, as DeBERTa-v3 does).
    """
    check_convention(convention)
    _check_positive(seq_len=seq_len, batch_size=batch_size)
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
        per_forward = 0
        if shape.relative_span:
            r = 2 * shape.relative_span  # relative-position embeddings attended over
            terms += [2 * h * r, 2 * h * r]  # content-to-position and position-to-content scores
            per_forward = 2 * (2 * r * h * h)  # the embeddings through the query and key projections
        return float(sum(terms) * s * batch_size + per_forward)
    _check_absolute(shape)
    # The official get_block_flops, per token. It charges the softmax, the attention dropout and the
    # score scaling per head ("heads"), not per score element, and the first LayerNorm as 5, not 5h.
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
        LAYER_NORM_FLOPS,  # attn_output_layer_norm
        2 * h * i,  # intermediate
        GELU_FLOPS * i,  # intermediate_act
        i,  # intermediate_bias
        2 * h * i,  # output
        h,  # output_bias
        DROPOUT_FLOPS * h,  # output_dropout
        h,  # output_residual
        LAYER_NORM_FLOPS * h,  # output_layer_norm
    ]
    return float(sum(terms) * s * batch_size)


def encoder_flops(shape: EncoderShape, vocab_size: int, seq_len: int, convention: str, batch_size: int = 1) -> float:
    """Forward FLOPs of the whole encoder (embeddings, projection, all layers) over ``batch_size``
    sequences."""
    return batch_size * embedding_flops(shape, vocab_size, seq_len, convention) + shape.num_layers * layer_flops(
        shape, seq_len, convention, batch_size)


def mlm_head_flops(shape: EncoderShape, vocab_size: int, n_predicted: float, convention: str) -> float:
    """Forward FLOPs of the MLM head (dense(h -> e) -> GELU -> LayerNorm -> tied output e -> V) on
    ``n_predicted`` positions of one sequence (see :func:`predicted_positions` for how many)."""
    check_convention(convention)
    if n_predicted < 0:
        raise ValueError(f"n_predicted must be >= 0, got {n_predicted}")
    h, e, v = shape.hidden_size, shape.embedding_size, vocab_size
    if convention == "actual":
        return float((2 * h * e + 2 * e * v) * n_predicted)  # Linear(h, e), then the tied Linear(e, V)
    terms = [
        2 * h * e,  # hidden_kernel: dense(h -> e)
        e,  # hidden_bias
        GELU_FLOPS * e,  # hidden_activation
        LAYER_NORM_FLOPS * e,  # hidden_layernorm
        2 * e * v,  # main_multiply: tied matrix e -> V
        SOFTMAX_FLOPS * v,  # output_softmax
        2 * v,  # output_target_word
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
        return float((2 * h * h + 2 * h) * n_tokens)  # Linear(h, h), then Linear(h, 1)
    terms = [2 * h * h, h, GELU_FLOPS * h, 2 * h]  # hidden, hidden_bias, hidden_act, logits
    return float(sum(terms) * n_tokens)


def predicted_positions(seq_len: int, convention: str, n_slots: int) -> float:
    """Positions per sequence an MLM head is charged for: the ``n_slots`` static slots it really runs
    on in ``actual`` (``masking.max_predictions``: filler slots are computed too), the paper's fixed
    0.15625 x seq_len in ``paper`` (whatever the mask probability)."""
    check_convention(convention)
    _check_positive(seq_len=seq_len)
    if n_slots < 0:
        raise ValueError(f"n_slots must be >= 0, got {n_slots}")
    return PAPER_MLM_FRACTION * seq_len if convention == "paper" else float(n_slots)


def emd_flops(shape: EncoderShape, seq_len: int, convention: str, batch_size: int = 1) -> float:
    """Forward FLOPs the enhanced mask decoder adds to a masked LM of ``shape`` over ``batch_size`` sequences:
    the last layer runs twice over all ``seq_len`` tokens instead of once (``objectives.deberta.DebertaV2ForMaskedLMWithEMD.emd_hidden``
    skips its ordinary pass, whose output no loss reads), so one :func:`layer_flops` more, the
    relative embeddings' projection included (per call), plus, when ``embedding_size != hidden_size``, the
    projection of the ``seq_len`` position vectors (once per call: they are the same for every sequence).
    Back-propagated like the rest of the network (``train_multiplier``)."""
    projection = 2 * shape.embedding_size * shape.hidden_size * seq_len if shape.embedding_size != shape.hidden_size else 0
    return layer_flops(shape, seq_len, convention, batch_size) + projection
