"""Synthetic corpora whose statistics are known exactly: a known-answer testbed for pre-training.

``--data.dataset synthetic:KIND[,key=value...]`` replaces text with sequences drawn, seeded and on the
fly, from a small generative model, so the best achievable losses are known and can be logged next to
the real ones:

``chain``
    A sparse first-order Markov chain over ``symbols`` symbols: each symbol allows ``successors`` next
    symbols, with probabilities drawn once from a flat Dirichlet. Structure that needs word order: a
    masked symbol is predictable from its neighbours.
``topics``
    A mixture of ``topics`` topics, each a distribution over a random ``topic_size`` symbols (flat
    Dirichlet weights); a sequence draws one topic and then its symbols independently. Structure that
    needs no word order: a masked symbol is predictable from the bag of the others.
``chain+topics``
    Both: a sequence draws a topic, and each next symbol follows the chain re-weighted by the topic
    (``P(v | u, z) ∝ A[u, v] (w_z[v] + 1/symbols)``).
``hmm``
    A hidden Markov model (:mod:`datamodules.synthetic_hmm`): ``states`` latent states, each allowing
    ``successors`` next states, each emitting symbols from its own ``emission_size`` symbols, so that
    supports overlap and a symbol does not give its state away. A hidden state per position: what the
    token task of :mod:`downstream.synthetic_tasks` asks for.

Every example is ``[CLS] x_1 ... x_n [SEP]`` (one segment, ``n = max_seq_length - 2``), each symbol a
word of its own. The vocabulary is the five special tokens, the symbols ``s0, s1, ...``, then
``[unusedN]`` up to ``vocab_size``, wrapped as a Hugging Face tokenizer so exports load as usual.

Floors (:meth:`SyntheticSource.floors`), what the losses are compared with:

``unigram_entropy``
    The entropy of the symbol distribution: the MLM loss of a model that ignores context.
``bayes_mlm_loss``
    The Bayes-optimal MLM loss at masked positions given every unmasked symbol of the sequence
    (masked positions hidden, as ``[MASK]``), computed exactly by forward-backward over the chain with
    the topic marginalised (a posterior over topics for ``topics``; over the latent states for ``hmm``,
    the masked positions' emissions summed over), averaged over the validation
    sequences with the objective's masking rate. With BERT's 80/10/10 masking a model also sees some
    chosen tokens (kept or random), so there it is an upper bound on what is achievable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datamodules.tokenizer import SPECIAL_TOKENS

KINDS = ("chain", "topics", "chain+topics", "hmm")
# The settings only the hidden Markov source reads, and those only the others read (left out of fingerprints).
HMM_ONLY, NOT_HMM = ("states", "emission_size"), ("topics", "topic_size")
PREFIX = "synthetic:"
N_SPECIAL = len(SPECIAL_TOKENS)
CLS, SEP = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")


def is_synthetic(dataset: str | None) -> bool:
    return dataset is not None and dataset.startswith(PREFIX)


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic source: its kind and its parameters (all with defaults)."""

    kind: str = "chain"
    symbols: int = 256
    successors: int = 4
    topics: int = 32
    topic_size: int = 32
    states: int = 16
    emission_size: int = 64
    train_examples: int = 20000
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> SyntheticSpec:
        """``synthetic:chain,symbols=256,successors=4`` (the ``synthetic:`` prefix optional)."""
        body = text.removeprefix("synthetic:")
        kind, *pairs = [p.strip() for p in body.split(",") if p.strip()] or ["chain"]
        if kind not in KINDS:
            raise ValueError(f"unknown synthetic source {kind!r} in {text!r}: choose one of {', '.join(KINDS)}")
        fields = {f for f in cls.__dataclass_fields__ if f != "kind"}
        values = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key not in fields or not value.strip().lstrip("-").isdigit():
                raise ValueError(f"bad synthetic setting {pair!r} in {text!r}: use key=integer with key one of "
                                 f"{', '.join(sorted(fields))}")
            values[key] = int(value)
        spec = cls(kind=kind, **values)
        spec.check()
        return spec

    def check(self) -> None:
        for name in ("symbols", "successors", "topics", "topic_size", "states", "emission_size", "train_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic {name} must be at least 1, got {getattr(self, name)}")
        if self.kind == "hmm":
            if self.successors > self.states or self.emission_size > self.symbols:
                raise ValueError(f"synthetic hmm: successors ({self.successors}) cannot exceed states ({self.states}) "
                                 f"nor emission_size ({self.emission_size}) symbols ({self.symbols})")
        elif self.successors > self.symbols or self.topic_size > self.symbols:
            raise ValueError(f"synthetic successors ({self.successors}) and topic_size ({self.topic_size}) cannot "
                             f"exceed symbols ({self.symbols})")

    def settings(self) -> dict:
        """The settings that define this kind of source (a data fingerprint): those of the other kinds left out,
        so that a source's fingerprint does not change when a setting it never reads is added."""
        unused = NOT_HMM if self.kind == "hmm" else HMM_ONLY
        return {k: v for k, v in self.__dict__.items() if k not in unused}


class SourceFloors:
    """What every synthetic source shares: examples and exact floors, from its :meth:`draw`, :meth:`marginal`
    and :meth:`posterior` (:class:`SyntheticSource`, :class:`datamodules.synthetic_hmm.HiddenMarkovSource`)."""

    spec: SyntheticSpec

    def draw(self, n_sequences: int, length: int, seed) -> tuple[np.ndarray, np.ndarray]:
        """(symbols (B, n), the hidden variables that produced them), with a seed of their own."""
        raise NotImplementedError

    def marginal(self) -> np.ndarray:
        """(N,) the distribution of a symbol at a random position."""
        raise NotImplementedError

    def posterior(self, symbols: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """(B, n, N): P(x_t = v | every visible symbol of its sequence), exactly."""
        raise NotImplementedError

    def sample(self, n_sequences: int, length: int, seed) -> np.ndarray:
        """(n_sequences, length) symbol ids, drawn from the model with a seed of their own (an int, or
        anything ``numpy.random.default_rng`` takes)."""
        return self.draw(n_sequences, length, seed)[0]

    def examples(self, n_sequences: int, seq_len: int, seed: int) -> dict[str, list]:
        """Packed-example columns (as ``PretrainingDataModule`` makes them) of ``[CLS] x_1..x_n [SEP]``."""
        symbols = self.sample(n_sequences, seq_len - 2, seed) + N_SPECIAL
        n = seq_len - 2
        ids = np.concatenate([np.full((n_sequences, 1), CLS), symbols, np.full((n_sequences, 1), SEP)], axis=1)
        special = [1] + [0] * n + [1]
        words = [-1] + list(range(n)) + [-1]
        return {"input_ids": ids.tolist(), "token_type_ids": [[0] * seq_len] * n_sequences,
                "special_tokens_mask": [special] * n_sequences, "word_ids": [words] * n_sequences}

    # -- floors ------------------------------------------------------------------------------------

    def unigram_entropy(self) -> float:
        p = self.marginal()
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())

    def bayes_mlm_loss(self, symbols: np.ndarray, hidden: np.ndarray) -> float:
        """Mean of -log P(x_t | visible symbols) over the hidden positions."""
        post = self.posterior(symbols, hidden)
        p = np.take_along_axis(post, symbols[..., None], axis=-1)[..., 0]
        return float(-np.log(np.clip(p[hidden], 1e-300, None)).mean())

    def floors(self, seq_len: int, mask_prob: float, n_sequences: int = 256, seed: int = 1) -> dict[str, float]:
        """The floors of this source at a masking rate: ``unigram_entropy`` and ``bayes_mlm_loss`` (on
        ``n_sequences`` held-out sequences, round(mask_prob x n) hidden positions each, as masking
        chooses them)."""
        rng = np.random.default_rng(seed)
        n = seq_len - 2
        symbols = self.sample(n_sequences, n, seed=self.spec.seed * 7919 + seed)
        k = max(1, int(np.floor(mask_prob * seq_len + 0.5)))
        order = rng.random((n_sequences, n)).argsort(1)
        hidden = np.zeros((n_sequences, n), dtype=bool)
        np.put_along_axis(hidden, order[:, :k], True, axis=1)
        return {"unigram_entropy": self.unigram_entropy(), "bayes_mlm_loss": self.bayes_mlm_loss(symbols, hidden)}


@dataclass
class SyntheticSource(SourceFloors):
    """The generative model of a :class:`SyntheticSpec` (``chain``, ``topics``, ``chain+topics``): its tables,
    samples, and exact floors."""

    spec: SyntheticSpec
    transition: np.ndarray = field(init=False)  # (T, N, N) per topic (T = 1 without topics), rows sum to 1
    initial: np.ndarray = field(init=False)  # (T, N) distribution of the first symbol per topic
    topic_prior: np.ndarray = field(init=False)  # (T,)

    def __post_init__(self) -> None:
        s, n = self.spec, self.spec.symbols
        rng = np.random.default_rng(s.seed)
        chain = np.zeros((n, n))
        for u in range(n):
            allowed = rng.choice(n, size=s.successors, replace=False)
            chain[u, allowed] = rng.dirichlet(np.ones(s.successors))
        topics = np.zeros((s.topics, n))
        for z in range(s.topics):
            support = rng.choice(n, size=s.topic_size, replace=False)
            topics[z, support] = rng.dirichlet(np.ones(s.topic_size))
        if s.kind == "chain":
            self.transition = chain[None]
        elif s.kind == "topics":
            self.transition = np.repeat(topics[:, None, :], n, axis=1)  # i.i.d. draws: every row is the topic
        else:
            weighted = chain[None] * (topics[:, None, :] + 1.0 / n)
            self.transition = weighted / weighted.sum(-1, keepdims=True)
        self.topic_prior = np.full(len(self.transition), 1.0 / len(self.transition))
        self.initial = np.stack([_stationary(t) for t in self.transition])

    @property
    def n_topics(self) -> int:
        return len(self.transition)

    def draw(self, n_sequences: int, length: int, seed) -> tuple[np.ndarray, np.ndarray]:
        """(symbols (B, n), the topic of each sequence (B,)), drawn with a seed of their own."""
        rng = np.random.default_rng(seed)
        z = rng.choice(self.n_topics, size=n_sequences, p=self.topic_prior)
        out = np.empty((n_sequences, length), dtype=np.int64)
        out[:, 0] = _draw(self.initial[z].cumsum(-1), rng)
        cumulative = self.transition.cumsum(-1)  # once, not once per position: the same sums, row by row
        for t in range(1, length):
            out[:, t] = _draw(cumulative[z, out[:, t - 1]], rng)
        return out, z

    def marginal(self) -> np.ndarray:
        """(N,) the distribution of a symbol at a random position (the stationary mixture)."""
        return self.topic_prior @ self.initial

    def topic_posterior(self, symbols: np.ndarray) -> np.ndarray:
        """(B, T): P(topic | every symbol of the sequence), exactly: the prior times the chain's likelihood of
        the whole sequence under each topic, normalised (in log space)."""
        with np.errstate(divide="ignore"):  # a topic that cannot produce the sequence gets log 0
            log_t, log_i = np.log(self.transition), np.log(self.initial)
            log_p = log_i[:, symbols[:, 0]] + log_t[:, symbols[:, :-1], symbols[:, 1:]].sum(-1)  # (T, B)
            log_w = np.log(self.topic_prior)[:, None] + log_p
        w = np.exp(log_w - log_w.max(0))
        return (w / w.sum(0)).T

    def _forward(self, evidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rescaled forward pass of every topic's chain: alpha (n, T, B, N) and the topics' log weights
        ``log P(z) P(visible | z)`` (T, B)."""
        B, n, _ = evidence.shape
        alpha = np.empty((n, self.n_topics, B, evidence.shape[-1]))  # by position first: contiguous blocks
        log_z = np.zeros((self.n_topics, B))
        a = self.initial[:, None, :] * evidence[None, :, 0]  # (T, B, N)
        with np.errstate(divide="ignore"):  # a topic that cannot produce the visible symbols gets log 0
            for t in range(n):
                if t:
                    a = np.matmul(a, self.transition) * evidence[None, :, t]  # (T, B, N) @ (T, N, N), in BLAS
                norm = a.sum(-1, keepdims=True)
                log_z += np.log(norm[..., 0])
                a = a / np.where(norm > 0, norm, 1.0)
                alpha[t] = a
            return alpha, np.log(self.topic_prior)[:, None] + log_z

    def posterior(self, symbols: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """(B, n, N): P(x_t = v | every visible symbol of its sequence), exactly.

        ``symbols`` (B, n) ids, ``hidden`` (B, n) bool. Forward-backward over the chain of each topic,
        with hidden positions summed over, rescaled at every step (no underflow); topics are
        marginalised with their posterior given the visible symbols.
        """
        B, n = symbols.shape
        N, T = self.spec.symbols, self.n_topics
        evidence = np.where(hidden[..., None], 1.0, np.eye(N)[symbols])  # (B, n, N)
        alpha, log_w = self._forward(evidence)
        w = np.exp(log_w - log_w.max(0))
        w = (w / w.sum(0))[..., None]  # (T, B, 1): the topics' posterior weights, known after the forward pass
        post = np.empty((B, n, N))
        beta = np.ones((T, B, N))
        for t in range(n - 1, -1, -1):
            p = alpha[t] * beta
            p = p / np.where(p.sum(-1, keepdims=True) > 0, p.sum(-1, keepdims=True), 1.0)
            post[:, t] = (w * p).sum(0)
            beta = np.matmul(evidence[None, :, t] * beta, self.transition.transpose(0, 2, 1))
            beta = beta / np.where(beta.sum(-1, keepdims=True) > 0, beta.sum(-1, keepdims=True), 1.0)
        return post


def _draw(cumulative: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of (B, N) cumulative probabilities."""
    u = rng.random(len(cumulative))[:, None] * cumulative[:, -1:]
    return (cumulative < u).sum(-1).clip(max=cumulative.shape[-1] - 1)


def _stationary(transition: np.ndarray, steps: int = 100_000) -> np.ndarray:
    """The stationary distribution of a row-stochastic matrix: power iteration of the lazy chain
    (I + T) / 2, which has the same stationary distribution and never oscillates, from uniform."""
    p = np.full(len(transition), 1.0 / len(transition))
    for _ in range(steps):
        nxt = 0.5 * (p + p @ transition)
        if np.abs(nxt - p).max() < 1e-15:
            return nxt
        p = nxt
    return p


def synthetic_tokenizer(spec: SyntheticSpec, vocab_size: int):
    """The source's vocabulary as a Hugging Face tokenizer: specials, ``s0..``, then ``[unusedN]``."""
    from transformers import ElectraTokenizerFast

    if vocab_size < N_SPECIAL + spec.symbols:
        raise ValueError(f"vocab_size {vocab_size} is too small for {spec.symbols} synthetic symbols: set "
                         f"--data.vocab_size to at least {N_SPECIAL + spec.symbols}")
    pieces = SPECIAL_TOKENS + [f"s{i}" for i in range(spec.symbols)]
    pieces += [f"[unused{i}]" for i in range(vocab_size - len(pieces))]
    return ElectraTokenizerFast(vocab={p: i for i, p in enumerate(pieces)}, do_lower_case=True)
