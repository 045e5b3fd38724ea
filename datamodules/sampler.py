"""The order of pre-training examples: seeded per epoch, split across ranks, and resumable mid-epoch.

A run stopped in the middle of an epoch must resume with the very batch it would have read next,
not replay the epoch's first batches; so the order is a pure function of (seed, epoch), and the
position in it is state that a checkpoint carries. The sampler does the rank split itself (Lightning's
``use_distributed_sampler`` is off for pre-training), so that split is part of the same function.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Indices of one rank's share of each epoch, in a seeded order, from a resumable position.

    Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)`` (:meth:`order`), cut to a whole
    number of optimiser steps (``batch_size x world_size x accumulate`` examples; the rest is dropped, as
    ``drop_last``), and dealt out in blocks: loader batch ``k`` of rank ``r`` is positions
    ``k x G + r x batch_size`` to ``k x G + (r + 1) x batch_size - 1`` of the order, ``G = batch_size x
    world_size``. So the examples of an optimiser step, and which micro-batch each belongs to, depend on
    ``world_size x accumulate`` only: two ranks without accumulation read exactly the micro-batches one
    process reads with ``accumulate = 2``, and after ``n`` batches on every rank the first
    ``n x G`` positions are consumed, whatever the rank count.

    :meth:`load_state_dict` with ``{"epoch": e, "position": p}`` makes the next iteration start epoch
    ``e`` at global position ``p`` (a multiple of the global batch); later epochs start at 0. ``len()``
    stays the whole epoch's share, as Lightning counts batches of a resumed epoch from its start.

    Args:
        size: examples in the dataset.
        batch_size: examples per batch on each rank.
        seed: seed of the order; the same seed gives the same order on any machine.
        rank: this process's global rank.
        world_size: number of ranks.
        accumulate: batches per optimiser step on each rank (Lightning's ``accumulate_grad_batches``);
            epochs end on a step boundary, so no step is cut short.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 accumulate: int = 1):
        if batch_size < 1 or world_size < 1 or accumulate < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler settings: batch_size {batch_size}, rank {rank}, world_size {world_size}, "
                             f"accumulate {accumulate}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.epoch = 0
        self._start = 0  # global position the next iteration starts at (a resumed epoch's consumed examples)
        self._generator: torch.Generator | None = None
        self._generator_epoch = -1
        self._order: torch.Tensor | None = None

    @property
    def global_batch(self) -> int:
        """Examples of one loader batch over all ranks."""
        return self.batch_size * self.world_size

    @property
    def step_batch(self) -> int:
        """Examples of one optimiser step over all ranks: the unit an epoch is cut to."""
        return self.global_batch * self.accumulate

    def __len__(self) -> int:
        return (self.size // self.step_batch) * self.accumulate * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch starts at its beginning."""
        if epoch != self.epoch:
            self.epoch, self._start = epoch, 0

    def order(self, epoch: int) -> torch.Tensor:
        """The whole epoch's order over all ranks (cut to whole optimiser steps).

        It is the order isoflop's shuffled loader gave before this sampler existed (a generator seeded
        with ``seed`` that, each epoch, draws a worker seed and then a permutation), so single-process
        runs reproduce their earlier results; here it is computed from (seed, epoch) alone. The
        generator's state after the last epoch computed is kept, so epochs in sequence cost one
        permutation each."""
        if self._generator is None or self._generator_epoch > epoch:
            self._generator, self._generator_epoch = torch.Generator().manual_seed(self.seed), -1
        while self._generator_epoch < epoch:
            torch.empty((), dtype=torch.int64).random_(generator=self._generator)  # the loader's worker seed
            self._order = torch.randperm(self.size, generator=self._generator)
            self._generator_epoch += 1
        return self._order[:(self.size // self.step_batch) * self.step_batch]

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0  # the resume position applies to one iteration only
        order = self.order(self.epoch)[start:]
        # Loader batch k of every rank is one block of G = batch_size x world_size positions; rank r takes
        # the r-th slice of batch_size in each block.
        return iter(order.view(-1, self.world_size, self.batch_size)[:, self.rank].reshape(-1).tolist())

    def state_dict(self, consumed_batches: int = 0) -> dict:
        """The position after ``consumed_batches`` batches of the current epoch on every rank. The count
        comes from the training loop: the sampler's own iteration runs ahead of it (loader workers and
        prefetching draw indices before their batches are trained on)."""
        return {"epoch": self.epoch, "position": int(consumed_batches) * self.global_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume epoch ``state["epoch"]`` at global position ``state["position"]`` (rounded down to a
        whole optimiser step, should the number of ranks have changed)."""
        position = int(state["position"])
        self.epoch, self._start = int(state["epoch"]), position - position % self.step_batch
