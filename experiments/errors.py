"""isoflop's own errors, and the one way the command reports a failure: one line and an exit code.

Exit codes of every ``isoflop`` command:

- 0: done;
- 1: a runtime failure (a non-finite loss, an I/O error such as a full disk during a run);
- 2: a usage error (bad arguments, configuration or input files), found before any compute is spent;
- 128 + N: stopped by signal N (SIGINT 130, SIGUSR1 138, SIGTERM 143), with a checkpoint to resume
  from when one was taken: rerunning the same command resumes. A non-zero code tells a scheduler
  the job did not finish, so it is requeued instead of counted as done.

The message is one line, ``isoflop <command>: error: ...``; ``--debug`` anywhere on the command line
or ``ISOFLOP_DEBUG=1`` re-raises instead, with the traceback. An exception not listed here is a bug in
isoflop: it too is one line (exit code 1), naming the exception and saying to rerun with ``--debug`` for
the traceback. This module is pure Python: the command line uses it before torch is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator


class UsageError(ValueError):
    """A mistake in what the user gave (an option, a configuration, a file): exit code 2."""


class CorruptCheckpoint(UsageError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


class RunError(RuntimeError):
    """A run that started and failed (exit code 1); the message says what is kept."""


class NonFiniteError(RunError):
    """A non-finite loss or gradient norm stopped training."""


class Preempted(BaseException):
    """A signal (SIGTERM, SIGINT, SIGUSR1) stopped the command at a safe point.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    ``step`` and ``checkpoint`` say how far a pre-training got and where it can resume from."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None):
        super().__init__(signum, step, checkpoint)
        self.signum, self.step, self.checkpoint = int(signum), step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        where = f" at step {self.step}" if self.step is not None else ""
        saved = f"; checkpoint {self.checkpoint}" if self.checkpoint else ""
        return f"stopped by {name}{where}{saved}; rerun the same command to resume"


# Usage errors: what the user gave was wrong; nothing was computed. (FileNotFoundError and the other
# OSError subclasses here name a path the user gave; any other OSError is a runtime I/O failure.)
_USAGE = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
          argparse.ArgumentError)
_USAGE_NAMES = ("MisconfigurationException",)  # Lightning's, matched by name: this module imports no Lightning
# torch.distributed's errors when another rank is gone (its connection closed, a collective timed out): a
# runtime failure of this rank, reported in one line; the rank that failed first prints its own.
_RUN_NAMES = ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")


def exit_code(err: BaseException) -> int:
    """The exit code of an error the command reports in one line (1 for a bug: an exception isoflop does not
    expect)."""
    if isinstance(err, Preempted):
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(err, _USAGE) or any(c.__name__ in _USAGE_NAMES for c in type(err).__mro__):
        return 2
    return 1


def expected(err: BaseException) -> bool:
    """Whether isoflop knows ``err`` (a usage error, a runtime failure, a signal, a lost rank), as opposed
    to a bug."""
    return (isinstance(err, (Preempted, KeyboardInterrupt, RunError, OSError) + _USAGE) or lost_rank(err)
            or any(c.__name__ in _USAGE_NAMES for c in type(err).__mro__))


def lost_rank(err: BaseException) -> bool:
    """Whether ``err`` is torch.distributed's news that another rank is gone (NCCL's DistBackendError, gloo's
    RuntimeError "Connection closed by peer"): this rank's failure is then a consequence, not the cause."""
    if any(c.__name__ in _RUN_NAMES for c in type(err).__mro__):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("gloo/" in text or "closed by peer" in text or "reset by peer" in text)


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def option_error(option: str) -> Iterator[None]:
    """A ``ValueError`` raised in the block as a mistake in ``option``: ``--objectives: unknown objective ...``."""
    try:
        yield
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None


def say(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write: stderr is unbuffered, so ``print`` would write the
    text and the newline separately, and the ranks of a job sharing one stderr could join their lines."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report(command: str, err: BaseException) -> str:
    """The line ``isoflop <command>`` prints for ``err`` (naming the rank, when it is not the first of a
    job of several processes: which rank failed is what the reader of a job's log needs)."""
    rank = process_rank()
    prefix = f"isoflop {command}" + (f" (rank {rank})" if rank else "")
    if isinstance(err, Preempted):
        return f"{prefix}: {err}"
    if isinstance(err, KeyboardInterrupt):
        return f"{prefix}: interrupted (SIGINT)"
    text = one_line(err) or type(err).__name__
    if not expected(err):
        return (f"{prefix}: error: internal error, a bug in isoflop ({type(err).__name__}: {text[:300]}): rerun with "
                "--debug for the traceback, and report it")
    if lost_rank(err):
        text = f"lost another rank of the job (it failed or was stopped: see its own error): {text[:300]}"
    if isinstance(err, OSError) and not isinstance(err, _USAGE) and err.filename and str(err.filename) not in text:
        text += f" ({err.filename})"
    return f"{prefix}: error: {text}"


def process_rank() -> str:
    """This process's rank in a job of several, from the variables its launcher set (torchrun: ``RANK``;
    SLURM: ``SLURM_PROCID``; a rank Lightning started: ``LOCAL_RANK``, and ``NODE_RANK`` on other nodes);
    "" for the first process or a single one."""
    env = os.environ
    rank = env.get("RANK") or (env.get("SLURM_PROCID") if env.get("SLURM_NTASKS", "1") != "1" else None)
    if rank is not None:
        return "" if rank == "0" else rank
    local, node = env.get("LOCAL_RANK", "0"), env.get("NODE_RANK", "0")
    if node != "0":
        return f"{local} of node {node}"
    return "" if local == "0" else local


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is on the command line (anywhere) or ``ISOFLOP_DEBUG`` is set; ``argv`` without it."""
    env = os.environ.get("ISOFLOP_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return env or "--debug" in argv, [a for a in argv if a != "--debug"]


def _raise_preempted(signum, frame) -> None:
    raise Preempted(signum)


_raise_preempted.isoflop = True  # so the training callback knows it is not a handler to chain


def handled_signals() -> list[int]:
    """The signals that stop a command cleanly. SIGUSR1 is left alone inside a SLURM job: there it is
    the warning signal of Lightning's auto-requeue, whose handler Lightning installs only where none is."""
    signals = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGUSR1") and not os.environ.get("SLURM_JOB_ID"):
        signals.append(signal.SIGUSR1)
    return signals


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM, SIGINT and SIGUSR1 raise :class:`Preempted` wherever the command
    is (data building, validation, fine-tuning). Pre-training replaces these handlers while it trains
    (:class:`experiments.run.callbacks.Preemption`), to stop at a step boundary with a checkpoint instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in handled_signals()}
    for s in previous:
        signal.signal(s, _raise_preempted)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
