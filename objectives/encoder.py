"""Encoder families, their sizes, and the Hugging Face networks built from them, in one place.

Every objective trains plain Hugging Face models, so whatever isoflop trains loads with
``from_pretrained`` anywhere. Which family is one setting (``encoder``), not a fork of the objective:

``electra`` (default)
    ELECTRA/BERT encoders with learned absolute positions (``ElectraModel`` under ``ElectraForMaskedLM``
    and ``ElectraForPreTraining``). Sizes from the ELECTRA paper, Table 6 (Clark et al. 2020, arXiv
    2003.10555).
``deberta-v2``
    DeBERTa-v2 encoders with disentangled relative-position attention (content-to-position and
    position-to-content, bucketed relative positions, no absolute position input) as DeBERTa-v3 uses
    them (He et al. 2021, arXiv 2111.09543; official configs ``experiments/language_model/rtd_*.json``
    of microsoft/DeBERTa): ``DebertaV2Model`` under ``DebertaV2ForMaskedLM`` (or, with DeBERTa's enhanced
    mask decoder, :class:`objectives.deberta.DebertaV2ForMaskedLMWithEMD`) and, for replaced token
    detection, :class:`DebertaV2ForReplacedTokenDetection`.

A family says how to build each network from an :class:`EncoderShape`, where its backbone and heads
are, and its paper defaults (sizes, generator shape). A third family (BERT, ConvBERT) is one more
:class:`EncoderFamily` subclass in :data:`FAMILIES`. ``tiny`` sizes are ours, for tests and CPU demos.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class EncoderShape:
    """The shape of one transformer encoder: what its weights, FLOPs and memory depend on.

    ``relative_span``: 0 for absolute positions (ELECTRA/BERT); for disentangled relative attention
    (DeBERTa) the number of relative-position buckets on each side, so each layer attends over
    ``2 x relative_span`` relative-position embeddings.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    embedding_size: int
    relative_span: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "embedding_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.relative_span < 0:
            raise ValueError(f"relative_span must be >= 0, got {self.relative_span}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: change one of them"
            )

    @classmethod
    def paper(cls, hidden_size: int, num_layers: int, embedding_size: int, relative_span: int = 0) -> EncoderShape:
        """The papers' shape rule (ELECTRA Table 6, DeBERTa-v3 configs): heads = hidden // 64 (at least 1),
        FFN = 4 x hidden."""
        return cls(hidden_size, num_layers, max(1, hidden_size // 64), 4 * hidden_size, embedding_size, relative_span)

    def scaled(self, hidden_fraction: float = 1.0, layers_fraction: float = 1.0) -> EncoderShape:
        """A generator for this encoder: hidden width and depth scaled by the given fractions with the
        paper's shape rule, embedding width and attention kind unchanged (the embeddings are shared).
        Fractions of 1 return this very shape, heads and FFN included."""
        if (hidden_fraction, layers_fraction) == (1.0, 1.0):
            return self
        hidden = max(1, round(self.hidden_size * hidden_fraction))
        layers = max(1, round(self.num_layers * layers_fraction))
        if hidden_fraction == 1.0:  # full width (DeBERTa-v3's generator): keep the heads and FFN exactly
            return replace(self, num_layers=layers)
        return EncoderShape.paper(hidden, layers, self.embedding_size, self.relative_span)


class EncoderFamily:
    """How to build and address one Hugging Face encoder family (subclasses fill in the specifics).

    Attributes:
        name: the value of the objectives' ``encoder`` setting.
        sizes: named shapes.
        generator_fraction: per size, the paper's generator (hidden fraction, layers fraction).
        mask_prob: per size, the paper's share of masked tokens.
        learning_rate: per size, the paper's peak pre-training learning rate.
        finetune_learning_rate: per size, the peak fine-tuning learning rate of the family's own recipe.
        enhanced_mask_decoder: whether the family's masked LMs have an enhanced-mask-decoder variant (DeBERTa's;
            see ``masked_lm``).
    """

    name: str
    sizes: dict[str, EncoderShape]
    generator_fraction: dict[str, tuple[float, float]]
    mask_prob: dict[str, float]
    learning_rate: dict[str, float]
    finetune_learning_rate: dict[str, float]
    enhanced_mask_decoder: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for table in ("generator_fraction", "mask_prob", "learning_rate", "finetune_learning_rate"):
            missing = set(cls.sizes) - set(getattr(cls, table))
            if missing:  # every size of every family has every setting: caught at import, not mid-comparison
                raise TypeError(f"{cls.__name__}.{table} lacks the size(s) {', '.join(sorted(missing))}")

    def size_of(self, hidden_size: int, num_layers: int) -> str | None:
        """The named size with this hidden width and depth (how an exported encoder is recognised), or None."""
        for name, shape in self.sizes.items():
            if (shape.hidden_size, shape.num_layers) == (hidden_size, num_layers):
                return name
        return None

    def config(self, shape: EncoderShape, vocab_size: int, max_position_embeddings: int, dropout: float,
               pad_token_id: int = 0):
        """The Hugging Face config of an encoder of this shape."""
        raise NotImplementedError

    def masked_lm(self, config, enhanced_mask_decoder: bool = False):
        """A masked-LM network (backbone + MLM head whose output matrix is tied to the word embeddings);
        ``enhanced_mask_decoder``: DeBERTa's EMD where the family has one (ignored by the others)."""
        raise NotImplementedError

    def discriminator(self, config):
        """A replaced-token-detection network (backbone + a head giving one logit per token, ``.logits``)."""
        raise NotImplementedError

    def mlm_head(self, model) -> tuple[Any, Any, Any]:
        """(transform, output-matrix holder, bias) of a masked-LM network's head: logits are
        ``linear(transform(hidden), words, bias)``; ``holder.weight`` is the (tied) output matrix."""
        raise NotImplementedError

    def disc_head(self, model):
        """The discriminator head of a replaced-token-detection network: (B, L, H) -> (B, L) logits."""
        raise NotImplementedError

    def share_embeddings(self, generator_backbone, main_backbone) -> None:
        """Make the generator use the main network's embeddings (the ``embeddings`` sharing mode)."""
        raise NotImplementedError


class ElectraFamily(EncoderFamily):
    name = "electra"
    # Paper Table 6 (heads = hidden // 64, FFN = 4 x hidden); tiny is ours.
    sizes = {
        "tiny": EncoderShape(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=256, embedding_size=64),
        "small": EncoderShape.paper(256, 12, 128),
        "base": EncoderShape.paper(768, 12, 768),
        "large": EncoderShape.paper(1024, 24, 1024),
    }
    # Table 6: generator 1/4 of the discriminator's width (1/3 at Base), same depth. Not the 1:1 of the
    # released "Small++" checkpoints.
    generator_fraction = {"tiny": (0.25, 1.0), "small": (0.25, 1.0), "base": (1 / 3, 1.0), "large": (0.25, 1.0)}
    mask_prob = {"tiny": 0.15, "small": 0.15, "base": 0.15, "large": 0.25}
    learning_rate = {"tiny": 2e-3, "small": 5e-4, "base": 2e-4, "large": 2e-4}  # tiny: a CPU wants a larger step
    # Fine-tuning (paper Table 7): 3e-4 Small, 1e-4 Base, 5e-5 Large; tiny encoders need a larger step to move
    # in a few hundred updates.
    finetune_learning_rate = {"tiny": 2e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}

    def config(self, shape, vocab_size, max_position_embeddings, dropout, pad_token_id=0):
        from transformers import ElectraConfig

        config = ElectraConfig(
            vocab_size=vocab_size, embedding_size=shape.embedding_size, hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
            intermediate_size=shape.intermediate_size, hidden_act="gelu", hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout, max_position_embeddings=max_position_embeddings,
            type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=pad_token_id,
            attn_implementation="sdpa",  # fused kernels on GPU, and what transformers picks for ELECTRA anyway
        )
        return config

    def masked_lm(self, config, enhanced_mask_decoder: bool = False):
        # No decoder to add: the official EMD with absolute positions in the input is the last layer itself.
        from transformers import ElectraForMaskedLM

        return ElectraForMaskedLM(config)

    def discriminator(self, config):
        from transformers import ElectraForPreTraining

        return ElectraForPreTraining(config)

    def mlm_head(self, model):
        return model.generator_predictions, model.generator_lm_head, model.generator_lm_head.bias

    def disc_head(self, model):
        return model.discriminator_predictions

    def share_embeddings(self, generator_backbone, main_backbone) -> None:
        # ELECTRA shares the whole embedding block (word, position and token-type tables and the
        # LayerNorm) at embedding_size; each network projects it to its own width (paper section 3.2).
        generator_backbone.embeddings = main_backbone.embeddings


class DebertaV2Family(EncoderFamily):
    name = "deberta-v2"
    # DeBERTa-v3 (official rtd_xsmall/small/base/large.json): 64-dimensional heads, FFN 4 x hidden,
    # 256 position buckets, embeddings at the hidden width; tiny is ours (32 buckets for 64-token inputs).
    sizes = {
        "tiny": EncoderShape(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, embedding_size=64,
                             relative_span=32),
        "xsmall": EncoderShape.paper(384, 12, 384, relative_span=256),
        "small": EncoderShape.paper(768, 6, 768, relative_span=256),
        "base": EncoderShape.paper(768, 12, 768, relative_span=256),
        "large": EncoderShape.paper(1024, 24, 1024, relative_span=256),
    }
    # The generator has the discriminator's width and half its depth (official rtd_*.json).
    generator_fraction = dict.fromkeys(sizes, (1.0, 0.5))
    mask_prob = dict.fromkeys(sizes, 0.15)
    # Official experiments/language_model/rtd.sh: 3e-4 (xsmall), 1e-4 (base, large); small as base.
    learning_rate = {"tiny": 2e-3, "xsmall": 3e-4, "small": 1e-4, "base": 1e-4, "large": 1e-4}
    # Fine-tuning on MNLI, official experiments/glue/mnli.sh: 4.5e-5 (v3-xsmall, v3-small), 1.5e-5 (v3-base),
    # 7e-6 (v3-large); tiny as ELECTRA's.
    finetune_learning_rate = {"tiny": 2e-3, "xsmall": 4.5e-5, "small": 4.5e-5, "base": 1.5e-5, "large": 7e-6}
    enhanced_mask_decoder = True

    def config(self, shape, vocab_size, max_position_embeddings, dropout, pad_token_id=0):
        from transformers import DebertaV2Config

        return DebertaV2Config(
            vocab_size=vocab_size, embedding_size=shape.embedding_size, hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
            intermediate_size=shape.intermediate_size, hidden_act="gelu", hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout, max_position_embeddings=max_position_embeddings,
            type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7, pad_token_id=pad_token_id,
            relative_attention=True, position_buckets=shape.relative_span, max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
            legacy=True,  # the MLM head projects to the embedding width, so a narrow generator can share a wide table
        )

    def masked_lm(self, config, enhanced_mask_decoder: bool = False):
        if enhanced_mask_decoder:  # the official MaskedLanguageModel's EnhancedMaskDecoder
            from objectives.deberta import DebertaV2ForMaskedLMWithEMD

            return DebertaV2ForMaskedLMWithEMD(config)
        from transformers import DebertaV2ForMaskedLM

        return DebertaV2ForMaskedLM(config)

    def discriminator(self, config):
        from objectives.deberta import DebertaV2ForReplacedTokenDetection

        return DebertaV2ForReplacedTokenDetection(config)

    def mlm_head(self, model):
        return model.cls.predictions.transform, model.cls.predictions.decoder, model.cls.predictions.bias

    def disc_head(self, model):
        return model.mask_predictions

    def share_embeddings(self, generator_backbone, main_backbone) -> None:
        # DeBERTa-v3 shares the token embedding table only (official rtd_task.py, RTDModel: "es" and "gdes"
        # tie word_embeddings; its encoders have no absolute positions). The LayerNorm and the projection
        # sit after the table at each network's own width, so they stay separate.
        generator_backbone.embeddings.word_embeddings = main_backbone.embeddings.word_embeddings


FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in (ElectraFamily(), DebertaV2Family())}


def family(name: str) -> EncoderFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def resolve_size(
    encoder: str,
    size: str,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    embedding_size: int | None = None,
) -> EncoderShape:
    """A family's named size with any field overridden; a one-line error for an unknown name or a bad shape."""
    fam = family(encoder)
    if size not in fam.sizes:
        raise ValueError(f"unknown {encoder} size {size!r}: choose one of {', '.join(fam.sizes)}")
    overrides = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                     intermediate_size=intermediate_size, embedding_size=embedding_size)
    return replace(fam.sizes[size], **{k: v for k, v in overrides.items() if v is not None})
