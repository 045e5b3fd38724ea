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
- ``embeddings`` (default): ELECTRA shares one embedding block (word, position and token-type tables
  and the embedding LayerNorm) at ``embedding_size``, and each network projects it to its own width;
  DeBERTa-v3 shares the word table. The generator's output matrix is the shared word matrix.
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
from transformers import PreTrainedModel

from objectives.base import PretrainingObjective, masked_lm_loss, with_metrics
from objectives.flops import encoder_flops, mlm_head_flops, train_multiplier
from objectives.masking import MaskedPositions, apply_mask

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


def gumbel_sample(logits: Tensor, temperature: float = 1.0, rng: torch.Generator | None = None,
                  exclude: Tensor | None = None) -> Tensor:
    """Sample token ids from softmax(logits / temperature) with the Gumbel-max trick, in float32.

    float32 because Gumbel noise in half precision saturates (-log(-log(u)) of a rounded u) and the
    argmax then picks badly; the known NaN failures of fp16 ELECTRA ports come from here.

    One float32 buffer of the logits' size and no other: uniform noise u drawn into it becomes Gumbel(0, 1)
    noise -log(-log u) in place, and argmax(logits / T + G) = argmax(logits + T x G) for T > 0, so the
    temperature scales the noise in place and the logits (bf16 under mixed precision) are added into the
    buffer without a float32 copy of their own. (Drawing Exp(1) variates instead, ``exponential_``, saves
    one log but took 2.3x as long on the CPU: 315 against 139 ms at 16 x 20 x 30,522 on one thread.) ``exclude`` (B, K): a token id per slot that must not be sampled (``disallow_correct``),
    written into the buffer as -inf instead of into a copy of the logits. (Under ``--compile`` the whole
    chain fuses into one kernel.)
    """
    noise = torch.rand(logits.shape, device=logits.device, generator=rng).clamp_(1e-9, 1.0 - 1e-9)
    noise.log_().neg_().log_().neg_()  # Gumbel(0, 1)
    if temperature != 1.0:
        noise.mul_(temperature)
    noise.add_(logits)
    if exclude is not None:
        noise.scatter_(-1, exclude.unsqueeze(-1), float("-inf"))
    return noise.argmax(dim=-1)


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

    A subclass builds its main network (the one kept for downstream tasks) in ``build_main`` and returns
    it from ``main_network``; building the generator, embedding sharing, corruption, the generator's
    FLOPs and export are done here. Generator and main network are of one encoder family.

    Args:
        generator_hidden_fraction: generator width as a fraction of the main network's; ``None``: the
            paper's value for the family and size (ELECTRA: 1/4, 1/3 at Base; DeBERTa-v3: 1).
        generator_layers_fraction: generator depth as a fraction of the main network's; ``None``: the
            paper's value (ELECTRA: 1; DeBERTa-v3: 1/2).
        embedding_sharing: ``none``, ``embeddings`` (default), ``all`` (same sizes only) or ``gdes``.
        gen_weight: weight of the generator's MLM loss in the total.
        temperature: sampling temperature of the generator's softmax (paper: 1).
        disallow_correct: never sample the original token at a chosen position.
        uniform_generator: replace chosen tokens with uniformly random ones (no generator network).
    """

    def __init__(
        self,
        generator_hidden_fraction: float | None = None,
        generator_layers_fraction: float | None = None,
        embedding_sharing: str = "embeddings",
        gen_weight: float = 1.0,
        temperature: float = 1.0,
        disallow_correct: bool = False,
        uniform_generator: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        paper_hidden, paper_layers = self.family.generator_fraction[self.hparams.size]
        fraction = paper_hidden if generator_hidden_fraction is None else generator_hidden_fraction
        layers_fraction = paper_layers if generator_layers_fraction is None else generator_layers_fraction
        if embedding_sharing not in SHARING_MODES:
            raise ValueError(f"unknown embedding_sharing {embedding_sharing!r}: choose one of {', '.join(SHARING_MODES)}")
        if fraction <= 0 or layers_fraction <= 0:
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
        self.generator_shape = self.shape.scaled(fraction, layers_fraction)
        if embedding_sharing == "all" and self.generator_shape != self.shape:
            raise ValueError(
                "embedding_sharing 'all' shares every weight, so it needs a generator of the discriminator's size: "
                f"set generator_hidden_fraction and generator_layers_fraction to 1 (got {fraction} and {layers_fraction})"
            )
        self.embedding_sharing = embedding_sharing
        self.uniform_generator = uniform_generator

    def build_networks(self) -> None:
        self.generator = None if self.uniform_generator else self.family.masked_lm(
            self.encoder_config(self.generator_shape), enhanced_mask_decoder=self.uses_emd)
        emd = self.uses_emd and self.generator is not None
        positions = self.generator.base_model.embeddings.position_embeddings if emd else None
        self.share_embeddings(self.build_main())
        if positions is not None:
            # Sharing 'all' swaps the generator's backbone for the discriminator's: the decoder's position table
            # goes with it (the discriminator only looks it up; it adds no absolute position to its input).
            self.generator.base_model.embeddings.position_embeddings = positions

    @abc.abstractmethod
    def build_main(self) -> PreTrainedModel:
        """Create the main network (as an attribute named after its role) and return it."""

    @property
    @abc.abstractmethod
    def main_network(self) -> PreTrainedModel:
        """The network trained on the corrupted input and kept for downstream tasks."""

    def share_embeddings(self, main: PreTrainedModel) -> None:
        """Tie the generator to ``main`` by ``embedding_sharing`` (call once ``main`` is built)."""
        if self.generator is None:
            return
        gen, base = self.generator.base_model, main.base_model
        if self.embedding_sharing == "embeddings":
            self.family.share_embeddings(gen, base)
        elif self.embedding_sharing == "all":
            setattr(self.generator, self.generator.base_model_prefix, base)
        elif self.embedding_sharing == "gdes":
            base.embeddings.word_embeddings = GDESEmbedding(gen.embeddings.word_embeddings)
        self.tie_output_embeddings()

    def tie_output_embeddings(self) -> None:
        """Point each masked-LM output matrix at its network's word table. Needed after any module swap:
        otherwise the generator stays tied to an orphaned matrix (a known re-implementation bug)."""
        for model in self.modules():
            if model is self or not isinstance(model, PreTrainedModel):
                continue
            try:
                _, output, bias = self.family.mlm_head(model)
            except AttributeError:  # not a masked LM (a discriminator)
                continue
            output.bias = bias  # one bias (DeBERTa's decoder keeps its own reference to it)
            words = model.base_model.embeddings.word_embeddings
            if isinstance(words, GDESEmbedding):
                # Its MLM head reads the computed table (shared + delta) through mlm_logits; the
                # head's own matrix is never used, so it takes no gradient (and DDP ignores it).
                # Export ties it to the materialised table.
                output.weight.requires_grad_(False)
                continue
            output.weight = words.weight

    @property
    def trains_generator(self) -> bool:
        """Whether this step trains the generator (objectives with a frozen-generator phase override it)."""
        return not self.uniform_generator

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
                hidden = self.mlm_hidden(self.generator, batch, gen_input)  # (B, L, H_g), through the EMD if any
                gen_logits = self.mlm_logits(self.generator, masked.gather(hidden))  # (B, K, V)
            metrics["gen_loss"], acc = masked_lm_loss(gen_logits, labels, accuracy=self.full_metrics)
            with_metrics(metrics, gen_acc=acc)
            with torch.no_grad():
                exclude = labels.clamp(min=0) if self.hparams.disallow_correct else None
                sampled = gumbel_sample(gen_logits.detach(), self.hparams.temperature, rng, exclude)  # (B, K)
        corrupted = masked.scatter(original, sampled)
        replaced = corrupted != original  # padding and unchosen positions are never replaced
        if self.full_metrics:
            metrics["replaced_frac"] = replaced.sum() / batch["attention_mask"].sum()
        return Corruption(masked, corrupted, replaced, labels, gen_logits), metrics

    def generator_loss(self, metrics: dict[str, Tensor]) -> Tensor:
        """The weighted generator loss when this step trains the generator, else 0."""
        if not self.trains_generator:
            return torch.zeros((), device=self.device)
        return self.hparams.gen_weight * metrics["gen_loss"]

    # -- FLOPs ----------------------------------------------------------------------------------------

    def generator_flops(self, batch_size: int, seq_len: int, convention: str, trained: bool | None = None) -> float:
        """FLOPs of the generator on a batch (its encoder, its enhanced mask decoder if any, and its MLM head;
        sampling is free): forward and backward while it trains (``trained``, default: this step's state), forward
        only when frozen."""
        if self.uniform_generator:
            return 0.0
        trained = self.trains_generator if trained is None else trained
        gen, v = self.generator_shape, self.vocab_size
        n = self.predicted_positions(seq_len, convention)
        forward = encoder_flops(gen, v, seq_len, convention, batch_size) + batch_size * mlm_head_flops(gen, v, n, convention)
        forward += self.decoder_flops(gen, batch_size, seq_len, convention)
        return (train_multiplier(convention) if trained else 1.0) * forward

    @abc.abstractmethod
    def main_flops(self, batch_size: int, seq_len: int, convention: str) -> float:
        """Training FLOPs of the main network on a batch (each objective's own)."""

    def flops_per_batch(self, batch_size: int, seq_len: int, convention: str = "actual") -> float:
        return self.generator_flops(batch_size, seq_len, convention) + self.main_flops(batch_size, seq_len, convention)

    # -- export --------------------------------------------------------------------------------------

    def export(self, out_dir: str | Path) -> None:
        """``out_dir``: the main network with the tokenizer (what downstream tasks load);
        ``out_dir/generator``: the generator as the family's masked LM with the tokenizer."""
        out_dir = Path(out_dir)
        materialised_copy(self.main_network).save_pretrained(out_dir)
        self.save_tokenizer(out_dir)
        if self.generator is not None:
            materialised_copy(self.generator).save_pretrained(out_dir / "generator")
            self.save_tokenizer(out_dir / "generator")
