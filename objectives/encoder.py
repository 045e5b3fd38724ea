"""Encoder sizes and the Hugging Face configs built from them.

The encoder is a plain Hugging Face ELECTRA model (``ElectraModel`` under ``ElectraForMaskedLM`` or
``ElectraForPreTraining``), so whatever isoflop trains loads with ``from_pretrained`` anywhere.
Sizes follow the ELECTRA paper, Table 6 (Clark et al. 2020, arXiv 2003.10555); ``tiny`` is ours,
for tests and CPU demos.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from transformers import ElectraConfig


@dataclass(frozen=True)
class EncoderSize:
    """The shape of one transformer encoder (what FLOPs and memory depend on)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    embedding_size: int

    def scaled(self, hidden_fraction: float = 1.0, layers_fraction: float = 1.0) -> "EncoderSize":
        """A generator-sized copy: hidden width and depth scaled, heads = hidden // 64 (at least 1),
        FFN = 4 x hidden, embedding width unchanged (it is shared with the discriminator)."""
        hidden = max(1, round(self.hidden_size * hidden_fraction))
        return EncoderSize(
            hidden_size=hidden,
            num_layers=max(1, round(self.num_layers * layers_fraction)),
            num_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
            embedding_size=self.embedding_size,
        )


# Paper Table 6. Heads = hidden // 64, FFN = 4 x hidden.
SIZES: dict[str, EncoderSize] = {
    "tiny": EncoderSize(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=256, embedding_size=64),
    "small": EncoderSize(hidden_size=256, num_layers=12, num_heads=4, intermediate_size=1024, embedding_size=128),
    "base": EncoderSize(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, embedding_size=768),
    "large": EncoderSize(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, embedding_size=1024),
}

# The paper's generator width as a fraction of the discriminator's (Table 6; Small uses 1/4, not
# the 1:1 of the released "Small++" checkpoints).
GENERATOR_HIDDEN_FRACTION: dict[str, float] = {"tiny": 0.25, "small": 0.25, "base": 1 / 3, "large": 0.25}

# The paper's mask probability by size (Table 6).
MASK_PROB: dict[str, float] = {"tiny": 0.15, "small": 0.15, "base": 0.15, "large": 0.25}


def resolve_size(
    size: str,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    embedding_size: int | None = None,
) -> EncoderSize:
    """A named size with any field overridden; raises a one-line error for an unknown name."""
    if size not in SIZES:
        raise ValueError(f"unknown encoder size {size!r}: choose one of {', '.join(SIZES)}")
    overrides = {
        k: v
        for k, v in dict(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            embedding_size=embedding_size,
        ).items()
        if v is not None
    }
    shape = replace(SIZES[size], **overrides)
    if shape.hidden_size % shape.num_heads:
        raise ValueError(
            f"hidden_size {shape.hidden_size} is not divisible by num_heads {shape.num_heads}: change one of them"
        )
    return shape


def electra_config(
    shape: EncoderSize,
    vocab_size: int,
    max_position_embeddings: int = 512,
    dropout: float = 0.1,
    pad_token_id: int = 0,
    attn_implementation: str = "sdpa",
) -> ElectraConfig:
    """The Hugging Face config of an encoder of this shape (GELU, init std 0.02, 2 token types)."""
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

