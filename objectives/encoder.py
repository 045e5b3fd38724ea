"""Encoder shapes, the paper's sizes, and the Hugging Face configs built from them.

The encoder is a plain Hugging Face ELECTRA model (``ElectraModel`` under ``ElectraForMaskedLM`` or
``ElectraForPreTraining``), so whatever isoflop trains loads with ``from_pretrained`` anywhere.
Sizes follow the ELECTRA paper, Table 6 (Clark et al. 2020, arXiv 2003.10555); ``tiny`` is ours,
for tests and CPU demos. :class:`EncoderShape` is the one record of an encoder's shape: the networks
are built from it and the FLOPs (``objectives.flops``) are counted from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class EncoderShape:
    """The shape of one transformer encoder: what its weights, FLOPs and memory depend on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    embedding_size: int

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "embedding_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: change one of them"
            )

    @classmethod
    def paper(cls, hidden_size: int, num_layers: int, embedding_size: int) -> EncoderShape:
        """The paper's shape rule (Table 6): heads = hidden // 64 (at least 1), FFN = 4 x hidden."""
        return cls(hidden_size, num_layers, max(1, hidden_size // 64), 4 * hidden_size, embedding_size)

    def scaled(self, hidden_fraction: float = 1.0, layers_fraction: float = 1.0) -> EncoderShape:
        """A generator for this encoder (paper section 3.2, Table 6): hidden width and depth scaled by
        the given fractions with the paper's shape rule, embedding width unchanged (the embeddings are
        shared). Fractions of 1 return this very shape, heads and FFN included."""
        if (hidden_fraction, layers_fraction) == (1.0, 1.0):
            return self
        return EncoderShape.paper(
            max(1, round(self.hidden_size * hidden_fraction)),
            max(1, round(self.num_layers * layers_fraction)),
            self.embedding_size,
        )


# Paper Table 6 (heads = hidden // 64, FFN = 4 x hidden); tiny is ours.
SIZES: dict[str, EncoderShape] = {
    "tiny": EncoderShape(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=256, embedding_size=64),
    "small": EncoderShape.paper(256, 12, 128),
    "base": EncoderShape.paper(768, 12, 768),
    "large": EncoderShape.paper(1024, 24, 1024),
}

# The paper's generator width as a fraction of the discriminator's (Table 6; Small uses 1/4, not
# the 1:1 of the released "Small++" checkpoints).
GENERATOR_HIDDEN_FRACTION: dict[str, float] = {"tiny": 0.25, "small": 0.25, "base": 1 / 3, "large": 0.25}

# The paper's mask probability by size (Table 6).
MASK_PROB: dict[str, float] = {"tiny": 0.15, "small": 0.15, "base": 0.15, "large": 0.25}

# Paper Table 6 learning rates; tiny is ours (a small model on a CPU wants a larger step).
LEARNING_RATE: dict[str, float] = {"tiny": 2e-3, "small": 5e-4, "base": 2e-4, "large": 2e-4}


def check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown encoder size {size!r}: choose one of {', '.join(SIZES)}")


def resolve_size(
    size: str,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    embedding_size: int | None = None,
) -> EncoderShape:
    """A named size with any field overridden; a one-line error for an unknown name or a bad shape."""
    check_size(size)
    overrides = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                     intermediate_size=intermediate_size, embedding_size=embedding_size)
    return replace(SIZES[size], **{k: v for k, v in overrides.items() if v is not None})


def electra_config(
    shape: EncoderShape,
    vocab_size: int,
    max_position_embeddings: int = 512,
    dropout: float = 0.1,
    pad_token_id: int = 0,
    attn_implementation: str = "sdpa",
):
    """The Hugging Face ``ElectraConfig`` of an encoder of this shape (GELU, init std 0.02, 2 token types)."""
    from transformers import ElectraConfig

    config = ElectraConfig(
        vocab_size=vocab_size,
        embedding_size=shape.embedding_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=pad_token_id,
    )
    # SDPA attention: fused kernels on GPU, and what transformers picks for ELECTRA anyway.
    config._attn_implementation = attn_implementation
    return config
