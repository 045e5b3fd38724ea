"""Generator-based corruption, shared by ELECTRA and the objectives the paper compares it with.

Steps 1-6 of replaced token detection (paper section 2, Figure 2; official code ``run_pretraining.py``,
``PretrainingModel._get_fake_data``, and ``pretrain/pretrain_helpers.py``, ``mask``): choose positions, mask them, run a
small MLM generator on the masked input, sample replacements from its softmax with Gumbel-max in
float32 under no_grad (no gradient reaches the generator through sampling), write the samples into
the original tokens, and label a token "replaced" iff it differs from the original. What the main
network does with the corrupted input (detect replacements, predict originals, ...) is each
objective's own business, in its own file.

Also here: the generator/main-network pair, with the paper's embedding-sharing modes:

- ``none``: separate embeddings.
- ``embeddings`` (default): one embedding block (word, position and token-type tables and the
  embedding LayerNorm) at ``embedding_size``; each network projects it to its own width; the
  generator's output matrix is the shared word matrix.
- ``all``: same-size networks share every encoder weight (the paper's tying study).
- ``gdes``: DeBERTa-v3's gradient-disentangled sharing: the main network's word table is
  stop_gradient(generator table) + a zero-initialised delta, so its loss never moves the shared table.
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ElectraForMaskedLM, PreTrainedModel

from objectives.base import PretrainingObjective, masked_lm_loss
from objectives.encoder import GENERATOR_HIDDEN_FRACTION
from objectives.flops import encoder_flops, mlm_head_flops, train_multiplier
from objectives.masking import MaskedPositions, apply_mask
from objectives.mlm import mlm_logits

SHARING_MODES = ("none", "embeddings", "all", "gdes")


class GDESEmbedding(nn.Module):
    """Word embeddings as stop_gradient(shared table) + delta (DeBERTa-v3, He et al. 2021).

    The delta starts at zero, so at initialisation the main network sees the generator's table.
    """

    def __init__(self, shared: nn.Embedding):
        super().__init__()
        self.shared = shared
        self.delta = nn.Parameter(torch.zeros_like(shared.weight))

    @property
    def weight(self) -> Tensor:
        return self.shared.weight.detach() + self.delta

    def forward(self, input_ids: Tensor) -> Tensor:
        return F.embedding(input_ids, self.weight, self.shared.padding_idx)


@dataclass
class Corruption:
    """One batch's corruption.

    masked:     the chosen positions.
    corrupted:  (B, L) original tokens with the generator's samples at the chosen positions.
    replaced:   (B, L) bool, corrupted != original (a sample equal to the original is "real").
    labels:     (B, K) original tokens at the chosen positions, -100 in filler slots.
    gen_logits: (B, K, V) generator logits at the chosen positions (None for a uniform generator).
    """

    masked: MaskedPositions
    corrupted: Tensor
    replaced: Tensor
    labels: Tensor
    gen_logits: Tensor | None


def gumbel_sample(logits: Tensor, temperature: float = 1.0, rng: torch.Generator | None = None) -> Tensor:
    """Sample token ids from softmax(logits / temperature) with the Gumbel-max trick, in float32.

    float32 because Gumbel noise in half precision saturates (-log(-log(u)) of a rounded u) and the
    argmax then picks badly; the known NaN failures of fp16 ELECTRA ports come from here.
    """
    logits = logits.float() / temperature
    u = torch.rand(logits.shape, device=logits.device, generator=rng).clamp_(1e-9, 1.0 - 1e-9)
    return (logits - torch.log(-torch.log(u))).argmax(dim=-1)


def materialised_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A fresh Hugging Face model of the same class with GDES tables materialised (table + delta) and
    no module shared with anything else, ready for ``save_pretrained``."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, GDESEmbedding):
            state[f"{name}.weight"] = module.weight.detach().clone()
    for key, value in model.state_dict().items():
        if ".word_embeddings.shared." not in key and not key.endswith(".word_embeddings.delta"):
            state[key] = value
    fresh = type(model)(model.config)
    fresh.load_state_dict(state, strict=False)  # the tied output matrix is restored by tying
    fresh.tie_weights()
    return fresh


class GeneratorObjective(PretrainingObjective):
    """Base of objectives that corrupt their input with a small MLM generator (not an objective itself).

    A subclass builds its main network (the one kept for downstream tasks), returns it from
    ``main_network`` and calls ``share_embeddings`` on it; corruption, embedding sharing, the
    generator's FLOPs and export are done here.

    Args:
        generator_hidden_fraction: generator width as a fraction of the main network's; ``None``: the
            paper's value for the size (1/4 Small and Large, 1/3 Base).
        generator_layers_fraction: generator depth as a fraction of the main network's (paper: 1).
        embedding_sharing: ``none``, ``embeddings`` (default), ``all`` (same sizes only) or ``gdes``.
        gen_weight: weight of the generator's MLM loss in the total.
        temperature: sampling temperature of the generator's softmax (paper: 1).
        disallow_correct: never sample the original token at a chosen position.
        uniform_generator: replace chosen tokens with uniformly random ones (no generator network).
    """

    def __init__(
        self,
        generator_hidden_fraction: float | None = None,
        generator_layers_fraction: float = 1.0,
        embedding_sharing: str = "embeddings",
        gen_weight: float = 1.0,
        temperature: float = 1.0,
        disallow_correct: bool = False,
        uniform_generator: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        size = self.hparams.size
        fraction = GENERATOR_HIDDEN_FRACTION[size] if generator_hidden_fraction is None else generator_hidden_fraction
        if embedding_sharing not in SHARING_MODES:
            raise ValueError(f"unknown embedding_sharing {embedding_sharing!r}: choose one of {', '.join(SHARING_MODES)}")
        if fraction <= 0 or generator_layers_fraction <= 0:
            raise ValueError("generator_hidden_fraction and generator_layers_fraction must be positive")
        if fraction > 1:
            warnings.warn(
                f"generator_hidden_fraction {fraction} makes the generator wider than the discriminator: the ELECTRA "
                "paper found generators 1/4 to 1/2 of the discriminator's size work best, and too strong a generator "
                "makes the discriminator's task too hard (it collapses)",
                stacklevel=2,
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.generator_shape = self.shape.scaled(fraction, generator_layers_fraction)
        if embedding_sharing == "all" and self.generator_shape != self.shape:
            raise ValueError(
                "embedding_sharing 'all' shares every weight, so it needs a generator of the discriminator's size: "
                f"set generator_hidden_fraction and generator_layers_fraction to 1 (got {fraction} and {generator_layers_fraction})"
            )
        self.embedding_sharing = embedding_sharing
        self.uniform_generator = uniform_generator
        self.generator = None if uniform_generator else ElectraForMaskedLM(self.encoder_config(self.generator_shape))

    @property
    @abc.abstractmethod
    def main_network(self) -> PreTrainedModel:
        """The network trained on the corrupted input and kept for downstream tasks."""

    def share_embeddings(self, main: PreTrainedModel) -> None:
        """Tie the generator to ``main`` by ``embedding_sharing`` (call once ``main`` is built)."""
        if self.generator is None:
            return
        gen, base = self.generator.electra, main.electra
        if self.embedding_sharing == "embeddings":
            gen.embeddings = base.embeddings
        elif self.embedding_sharing == "all":
            self.generator.electra = base
        elif self.embedding_sharing == "gdes":
            base.embeddings.word_embeddings = GDESEmbedding(gen.embeddings.word_embeddings)
        self.tie_output_embeddings()

    def tie_output_embeddings(self) -> None:
        """Point each MLM output matrix at its network's word table. Needed after any module swap:
        otherwise the generator stays tied to an orphaned matrix (a known re-implementation bug)."""
        for model in self.modules():
            if isinstance(model, ElectraForMaskedLM):
                words = model.electra.embeddings.word_embeddings
                if isinstance(words, GDESEmbedding):
                    # Its MLM head reads the computed table (shared + delta) through mlm_logits; the
                    # head's own matrix is never used, so it takes no gradient (and DDP ignores it).
                    # Export ties it to the materialised table.
                    model.generator_lm_head.weight.requires_grad_(False)
                    continue
                model.generator_lm_head.weight = words.weight

    # -- corruption --------------------------------------------------------------------------------

    @property
    def trains_generator(self) -> bool:
        """Whether this step trains the generator (objectives with a frozen-generator phase override it)."""
        return self.generator is not None

    def corrupt(self, batch: dict[str, Tensor], rng: torch.Generator | None) -> tuple[Corruption, dict[str, Tensor]]:
        """Steps 1-6 of RTD; returns the corruption and the generator's loss and metrics. A frozen
        generator runs under no_grad: it only samples, and its loss is logged, not optimised."""
        original = batch["input_ids"]  # (B, L)
        masked = self.choose_positions(batch, rng)
        labels = torch.where(masked.valid, masked.gather(original), -100)  # (B, K)
        metrics: dict[str, Tensor] = {}
        gen_logits = None
        if self.generator is None:
            sampled = torch.randint(self.vocab_size, labels.shape, device=original.device, generator=rng)
        else:
            gen_input = apply_mask(original, masked, self.mask_token_id, self.vocab_size, self.mask_style, rng=rng)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains_generator):
                hidden = self.generator.electra(
                    input_ids=gen_input, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
                ).last_hidden_state  # (B, L, H_g)
                gen_logits = mlm_logits(self.generator, masked.gather(hidden))  # (B, K, V)
            metrics["gen_loss"], metrics["gen_acc"] = masked_lm_loss(gen_logits, labels)
            with torch.no_grad():
                logits = gen_logits.detach().float()
                if self.hparams.disallow_correct:
                    logits = logits.scatter(-1, labels.clamp(min=0).unsqueeze(-1), float("-inf"))
                sampled = gumbel_sample(logits, self.hparams.temperature, rng)  # (B, K)
        corrupted = masked.scatter(original, sampled)
        replaced = corrupted != original  # padding and unchosen positions are never replaced
        metrics["replaced_frac"] = replaced.sum() / batch["attention_mask"].sum()
        return Corruption(masked, corrupted, replaced, labels, gen_logits), metrics

    def generator_loss(self, metrics: dict[str, Tensor]) -> Tensor:
        """The weighted generator loss when this step trains the generator, else 0."""
        if not self.trains_generator:
            return torch.zeros((), device=self.device)
        return self.hparams.gen_weight * metrics["gen_loss"]

    # -- FLOPs ----------------------------------------------------------------------------------------

    def generator_flops(self, seq_len: int, convention: str, trained: bool | None = None) -> float:
        """FLOPs of the generator per sequence (its encoder and MLM head; sampling is free): forward
        and backward while it trains (``trained``, default: this step's state), forward only when frozen."""
        if self.generator is None:
            return 0.0
        trained = self.trains_generator if trained is None else trained
        gen, v = self.generator_shape, self.vocab_size
        n = self.predicted_positions(seq_len, convention)
        forward = encoder_flops(gen, v, seq_len, convention) + mlm_head_flops(gen, v, n, convention)
        return (train_multiplier(convention) if trained else 1.0) * forward

    @abc.abstractmethod
    def main_flops(self, seq_len: int, convention: str) -> float:
        """Training FLOPs of the main network per sequence (each objective's own)."""

    def flops_per_sequence(self, seq_len: int, convention: str = "actual") -> float:
        return self.generator_flops(seq_len, convention) + self.main_flops(seq_len, convention)

    # -- export --------------------------------------------------------------------------------------

    def export(self, out_dir: str | Path) -> None:
        """``out_dir``: the main network with the tokenizer (what downstream tasks load);
        ``out_dir/generator``: the generator as ``ElectraForMaskedLM`` with the tokenizer."""
        out_dir = Path(out_dir)
        materialised_copy(self.main_network).save_pretrained(out_dir)
        self.save_tokenizer(out_dir)
        if self.generator is not None:
            materialised_copy(self.generator).save_pretrained(out_dir / "generator")
            self.save_tokenizer(out_dir / "generator")
