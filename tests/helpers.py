"""Test helpers: a callback that a subprocess run can load by class path (``--trainer.callbacks+=tests.helpers.X``),
and the checks the tests make of a command's messages (values and names, not wording)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal

from lightning.pytorch import Callback

# The environment that arms SignalAtStep: the step, the signal's name, and the rank(s) that send it.
SIGNAL_AT = "ISOFLOP_TEST_SIGNAL_AT"
SIGNAL_NAME = "ISOFLOP_TEST_SIGNAL"
SIGNAL_RANK = "ISOFLOP_TEST_SIGNAL_RANK"
SIGNAL_CALLBACK = "--trainer.callbacks+=tests.helpers.SignalAtStep"


def signal_env(step: int, name: str = "SIGTERM", rank: int | str = 0) -> dict[str, str]:
    """The environment variables that make :class:`SignalAtStep` send ``name`` at ``step`` on ``rank``."""
    return {SIGNAL_AT: str(step), SIGNAL_NAME: name, SIGNAL_RANK: str(rank)}


@contextlib.contextmanager
def signalling(step: int, name: str = "SIGTERM", rank: int | str = 0):
    """While the block runs, :class:`SignalAtStep` in this process sends ``name`` at ``step`` on ``rank``."""
    saved = {key: os.environ.get(key) for key in (SIGNAL_AT, SIGNAL_NAME, SIGNAL_RANK)}
    os.environ.update(signal_env(step, name, rank))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class SignalAtStep(Callback):
    """Sends a signal to its own process at the end of optimiser step ``$ISOFLOP_TEST_SIGNAL_AT`` (the step
    count after the update, ``trainer.global_step``, as a stopped run reports it), as a scheduler's signal
    would arrive, but at a step fixed in advance: no reading of the output, no waiting.

    ``$ISOFLOP_TEST_SIGNAL``: the signal's name (default SIGTERM). ``$ISOFLOP_TEST_SIGNAL_RANK``: the global rank
    that sends it to its own process (default 0, the process a user or scheduler started; ``all``: every rank).
    Unset ``$ISOFLOP_TEST_SIGNAL_AT``: the callback does nothing, so the same command, run again without the
    variable, resumes undisturbed. Only at a step boundary (not between accumulated micro-batches), and at
    most once per process. Python runs the handler before the next callback, so isoflop's handler has
    recorded the signal when its own callback (after the user's) looks at this step. Draws no random numbers.
    """

    def __init__(self):
        self._step_before = 0
        self._sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        at = os.environ.get(SIGNAL_AT)
        if at is None or self._sent or trainer.global_step == self._step_before or trainer.global_step != int(at):
            return
        rank = os.environ.get(SIGNAL_RANK, "0")
        if rank != "all" and int(rank) != trainer.global_rank:
            return
        self._sent = True
        os.kill(os.getpid(), getattr(signal, os.environ.get(SIGNAL_NAME, "SIGTERM")))


# ---------------------------------------------------------------------------------------------
# Messages: the facts they carry (names, values, paths), not their wording
# ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")


def numbers(text: str) -> list[float]:
    """Every number written in ``text`` (``7``, ``-1``, ``0.2``, ``1.000e+00``), not digits inside a name."""
    return [float(m.group()) for m in _NUMBER.finditer(text)]


def mentions(text: str, *facts: str | int | float) -> None:
    """Assert that ``text`` carries every fact: a string as a whole term (an option, a value, a path: not
    inside a longer name), a number as a value written anywhere in it in any format (``1`` matches
    ``1.000e+00``)."""
    for fact in facts:
        if isinstance(fact, (int, float)) and not isinstance(fact, bool):
            assert any(math.isclose(v, fact, rel_tol=1e-9, abs_tol=1e-12) for v in numbers(text)), \
                f"the value {fact} is not in: {text}"
        else:
            pattern = rf"(?<![\w-]){re.escape(str(fact))}(?![\w])"
            assert re.search(pattern, text), f"{fact!r} is not in: {text}"


def error_line(err: str, command: str | None, last: bool = False) -> str:
    """The one line ``isoflop COMMAND`` printed on stderr for an error (``last``: the last line, after other
    output such as progress bars), checked for its prefix ``isoflop COMMAND: error: ``."""
    lines = err.strip().splitlines()
    if not last:
        assert len(lines) == 1, err
    line = lines[-1]
    prefix = f"isoflop {command}: error: " if command else "isoflop: error: "
    assert line.startswith(prefix), line
    return line
