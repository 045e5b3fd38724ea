"""The global batch of a pre-training run and its split: the examples of one optimiser step over every
process, ``global batch = per-device batch x processes x accumulated batches``.

A run states the global batch (``global_batch_size``), as the ELECTRA paper's hyperparameters do (Clark et
al. 2020, Table 6: 128, 256 and 2048 for Small, Base and Large) and as the official trainers read theirs
(microsoft/DeBERTa ``DeBERTa/training/trainer.py``, ``DistributedTrainer.train``: one batch of
``train_batch_size`` dealt over the ranks); the per-device batch and the accumulation follow from it and
the number of processes (:func:`split_global_batch`). Without a global batch the per-device batch is the
setting, as it always was, :data:`DEFAULT_BATCH_SIZE` when unset.
"""

from __future__ import annotations

# The per-device batch when neither it nor a global batch is given.
DEFAULT_BATCH_SIZE = 32

_PROCESSES = "processes (--trainer.devices x --trainer.num_nodes)"


def split_global_batch(global_batch: int, processes: int, batch_size: int | None = None,
                       accumulate: int = 1) -> tuple[int, int]:
    """``(per-device batch, accumulated batches)`` that make ``global_batch`` on ``processes`` processes.

    - ``batch_size`` unset: the per-device batch is ``global_batch / (processes x accumulate)``; with
      ``accumulate`` 1 (Lightning's default, no accumulation) the global batch is simply dealt over the
      processes.
    - ``batch_size`` given (the micro-batch a device holds): the accumulation is
      ``global_batch / (batch_size x processes)``; an ``accumulate`` other than 1 must be that number (1 reads
      as "not given": it is Lightning's default).

    A global batch that does not split so is a one-line ``ValueError`` naming the numbers and what to change.
    """
    if global_batch < 1:
        raise ValueError(f"--data.global_batch_size must be at least 1, got {global_batch}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--data.batch_size must be at least 1, got {batch_size}")
    if accumulate < 1:
        raise ValueError(f"--trainer.accumulate_grad_batches must be at least 1, got {accumulate}")
    if batch_size is None:
        share = processes * accumulate
        if global_batch % share:
            over = f"{processes} {_PROCESSES}" + (f" x {accumulate} accumulated batches "
                                                  "(--trainer.accumulate_grad_batches)" if accumulate > 1 else "")
            raise ValueError(f"--data.global_batch_size {global_batch} does not split evenly over {over}: give a "
                             f"global batch that is a multiple of {share}, or other devices"
                             + (" or accumulation" if accumulate > 1 else ""))
        return global_batch // share, accumulate
    if global_batch % processes:
        raise ValueError(f"--data.global_batch_size {global_batch} does not split evenly over {processes} "
                         f"{_PROCESSES}: give a global batch that is a multiple of {processes}, or other devices")
    per_device = global_batch // processes
    if per_device % batch_size:
        raise ValueError(f"--data.global_batch_size {global_batch} is not a multiple of --data.batch_size {batch_size} "
                         f"x {processes} {_PROCESSES} = {batch_size * processes}: give a --data.batch_size that "
                         f"divides {per_device} (the global batch per process), or leave it unset")
    derived = per_device // batch_size
    if accumulate not in (1, derived):
        raise ValueError(f"--trainer.accumulate_grad_batches {accumulate} disagrees with --data.global_batch_size "
                         f"{global_batch} = --data.batch_size {batch_size} x {processes} {_PROCESSES} x {derived} "
                         f"accumulated batches: leave --trainer.accumulate_grad_batches unset (it is derived) or "
                         f"set it to {derived}")
    return batch_size, derived
