"""The ELECTRA paper's FLOPs accounting, written out on its own, as the reference that the objectives'
``paper``-convention FLOPs are checked against.

It follows the official code (google-research/electra ``flops_computation.py``: ``TransformerHparams``
``get_block_flops``, ``get_embedding_flops``, ``get_binary_classification_flops``, ``get_train_flops``
and ``get_electra_train_flops``) term by term, keyed by the two kinds of model the paper counts
(``mlm``: BERT; ``rtd``: ELECTRA, discriminator plus a generator charged as a separate model). It does
not import ``objectives.flops``: the two agree because both follow the paper, not because one calls
the other.
"""

from __future__ import annotations

from dataclasses import dataclass

VOCAB = 30522
OUTPUT_FRACTION = 0.15625  # the share of tokens with an MLM output softmax, whatever the mask rate


def block(h: int, s: int) -> float:
    """One transformer layer, forward, per sequence (heads = h // 64, FFN 4h)."""
    i, heads = 4 * h, max(1, h // 64)
    per_token = (6 * h * h + 3 * h + 2 * h * s + 5 * s * heads + 4 * s * heads + s * heads + 2 * h * s
                 + 2 * h * h + h + 4 * h + h + 5 + 2 * h * i + 8 * i + i + 2 * h * i + h + 4 * h + h + 5 * h)
    return per_token * s


def input_embedding(h: int, e: int, s: int) -> float:
    """Dense one-hot word lookup, token-type and position as a dense multiply, sum, LayerNorm,
    dropout, and the projection to the hidden width when e != h; forward, per sequence."""
    per_token = 2 * e * VOCAB + 2 * e * (s + 2) + 2 * e + 5 * e + 4 * e
    if e != h:
        per_token += 2 * h * e + h
    return per_token * s


def mlm_output(h: int, e: int, s: int) -> float:
    """The MLM head and its softmax on 0.15625 of the tokens; forward, per sequence."""
    per_token = 2 * e * VOCAB + 2 * h * e + e + 8 * e + 5 * e + 5 * VOCAB + 2 * VOCAB
    return OUTPUT_FRACTION * per_token * s


def discriminator_head(h: int, s: int) -> float:
    return (2 * h * h + h + 8 * h + 2 * h) * s


def train_flops(h: int, layers: int, e: int, s: int, batch: int, steps: float, discriminator: bool) -> float:
    """A network's training FLOPs: 2 x forward (backward counted as forward)."""
    forward = layers * block(h, s) + input_embedding(h, e, s)
    forward += discriminator_head(h, s) if discriminator else mlm_output(h, e, s)
    return 2 * batch * steps * forward


@dataclass(frozen=True)
class PaperRun:
    kind: str  # "mlm" or "rtd"
    hidden: int
    layers: int
    embedding: int
    seq: int
    batch: int
    steps: float
    generator_hidden: int | None = None

    def total(self) -> float:
        if self.kind == "mlm":
            return train_flops(self.hidden, self.layers, self.embedding, self.seq, self.batch, self.steps, False)
        disc = train_flops(self.hidden, self.layers, self.embedding, self.seq, self.batch, self.steps, True)
        gen = train_flops(self.generator_hidden, self.layers, self.embedding, self.seq, self.batch, self.steps, False)
        return disc + gen


# The configurations of the shipped presets (paper Table 6 sizes; budgets as the presets give them).
PAPER_RUNS = {
    "bert-small": PaperRun("mlm", 256, 12, 128, 128, 128, 1_450_000),
    "electra-small": PaperRun("rtd", 256, 12, 128, 128, 128, 1_000_000, generator_hidden=64),
    "bert-base": PaperRun("mlm", 768, 12, 768, 512, 256, 1_000_000),
    "electra-base": PaperRun("rtd", 768, 12, 768, 512, 256, 766_000, generator_hidden=256),
    "bert-large": PaperRun("mlm", 1024, 24, 1024, 512, 2048, 400_000),
    "electra-large": PaperRun("rtd", 1024, 24, 1024, 512, 2048, 400_000, generator_hidden=256),
}
