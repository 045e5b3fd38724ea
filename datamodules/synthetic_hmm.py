"""The hidden Markov source, ``synthetic:hmm``: a latent state behind every symbol, known exactly.

``states`` latent states (16) follow a sparse Markov chain: each state allows ``successors`` (4) next
states, with probabilities drawn once from a flat Dirichlet. Each state emits symbols from its own
``emission_size`` (64) random symbols of the ``symbols`` (256), with flat-Dirichlet weights, so that the
supports overlap: a symbol alone often leaves its state open, and its neighbours settle it. The first
state is drawn from the chain's stationary distribution, so every position has the same marginal.

Everything the other kinds give (:class:`datamodules.synthetic.SourceFloors`: examples, the floors
``unigram_entropy`` and ``bayes_mlm_loss``) comes from the same three pieces: :meth:`draw`,
:meth:`marginal` and :meth:`posterior`, the last by forward-backward over the states (Rabiner 1989, "A
tutorial on hidden Markov models", section III.A), rescaled at every step, with the masked positions'
evidence set to 1 (summed over). :meth:`state_posterior` is the posterior over each position's state:
what the token task of :mod:`downstream.synthetic_tasks` asks an encoder for, and its Bayes ceiling.

Tables and samples are drawn with numpy Generators from fixed seeds (the spec's ``seed`` for the tables,
the caller's for samples): the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datamodules.synthetic import SourceFloors, SyntheticSource, SyntheticSpec, _draw, _stationary


def sparse_stochastic(rng: np.random.Generator, rows: int, columns: int, support: int) -> np.ndarray:
    """(rows, columns): each row a flat-Dirichlet distribution over ``support`` random columns."""
    out = np.zeros((rows, columns))
    for r in range(rows):
        out[r, rng.choice(columns, size=support, replace=False)] = rng.dirichlet(np.ones(support))
    return out


def forward_backward(initial: np.ndarray, transition: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """(B, n, S) posterior marginals ``P(s_t | evidence)`` of a Markov chain over S states.

    ``initial`` (S,), ``transition`` (S, S) rows summing to 1, ``evidence`` (B, n, S): ``P(x_t | s_t)`` of what is
    observed at each position (1 where nothing is). The forward and backward messages are rescaled at every step
    (sums of 1), so long sequences do not underflow; the whole batch moves together, one position per step.
    """
    B, n, S = evidence.shape
    alpha = np.empty((n, B, S))
    a = initial[None] * evidence[:, 0]
    for t in range(n):
        if t:
            a = (a @ transition) * evidence[:, t]  # (B, S) @ (S, S)
        norm = a.sum(-1, keepdims=True)
        a = a / np.where(norm > 0, norm, 1.0)
        alpha[t] = a
    post = np.empty((B, n, S))
    beta = np.ones((B, S))
    for t in range(n - 1, -1, -1):
        p = alpha[t] * beta
        post[:, t] = p / np.where(p.sum(-1, keepdims=True) > 0, p.sum(-1, keepdims=True), 1.0)
        beta = (evidence[:, t] * beta) @ transition.T
        beta = beta / np.where(beta.sum(-1, keepdims=True) > 0, beta.sum(-1, keepdims=True), 1.0)
    return post


@dataclass
class HiddenMarkovSource(SourceFloors):
    """The hidden Markov model of a ``hmm`` :class:`~datamodules.synthetic.SyntheticSpec`: its tables, samples
    with their states, the exact state and symbol posteriors, and (inherited) the floors."""

    spec: SyntheticSpec
    transition: np.ndarray = field(init=False)  # (S, S) the states' chain, rows sum to 1
    emission: np.ndarray = field(init=False)  # (S, N) each state's symbol distribution
    initial: np.ndarray = field(init=False)  # (S,) the chain's stationary distribution

    def __post_init__(self) -> None:
        s = self.spec
        rng = np.random.default_rng(s.seed)
        self.transition = sparse_stochastic(rng, s.states, s.states, s.successors)
        self.emission = sparse_stochastic(rng, s.states, s.symbols, s.emission_size)
        self.initial = _stationary(self.transition)

    def draw(self, n_sequences: int, length: int, seed) -> tuple[np.ndarray, np.ndarray]:
        """(symbols (B, n), the state of every position (B, n)), drawn with a seed of their own: the states'
        path first, then every position's symbol from its state's emission."""
        rng = np.random.default_rng(seed)
        states = np.empty((n_sequences, length), dtype=np.int64)
        states[:, 0] = _draw(np.broadcast_to(self.initial.cumsum(), (n_sequences, len(self.initial))), rng)
        cumulative = self.transition.cumsum(-1)
        for t in range(1, length):
            states[:, t] = _draw(cumulative[states[:, t - 1]], rng)
        symbols = _draw(self.emission.cumsum(-1)[states.ravel()], rng).reshape(states.shape)
        return symbols.astype(np.int64), states

    def marginal(self) -> np.ndarray:
        """(N,) the distribution of a symbol at any position (the stationary states' emissions)."""
        return self.initial @ self.emission

    def state_posterior(self, symbols: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
        """(B, n, S): P(s_t = s | every visible symbol of its sequence), by forward-backward. ``symbols`` (B, n)
        ids; ``hidden`` (B, n) bool marks positions whose symbol is not seen (None: every symbol is)."""
        evidence = self.emission.T[symbols]  # (B, n, S): P(x_t | s_t = s)
        if hidden is not None:
            evidence = np.where(hidden[..., None], 1.0, evidence)
        return forward_backward(self.initial, self.transition, evidence)

    def posterior(self, symbols: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """(B, n, N): P(x_t = v | every visible symbol of its sequence), exactly: at a hidden position the state
        posterior times the emissions, at a visible one the symbol itself."""
        post = self.state_posterior(symbols, hidden) @ self.emission
        seen = np.eye(self.spec.symbols)[symbols]
        return np.where(hidden[..., None], post, seen)


def make_source(spec: SyntheticSpec) -> SourceFloors:
    """The generative model of a spec: the hidden Markov source for ``hmm``, else
    :class:`~datamodules.synthetic.SyntheticSource` (``chain``, ``topics``, ``chain+topics``)."""
    return HiddenMarkovSource(spec) if spec.kind == "hmm" else SyntheticSource(spec)
