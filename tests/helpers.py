"""Test helpers that a subprocess run can load by class path (``--trainer.callbacks+=tests.helpers.X``)."""

from __future__ import annotations

import os
import signal
import sys
import time

from lightning.pytorch import Callback


class PauseAtStep(Callback):
    """Prints ``STEP n`` after every optimiser step (on the first rank) and, at step ``$ISOFLOP_TEST_PAUSE_AT``, waits a moment,
    so that a test reading the output can signal the process at a known step; at ``$ISOFLOP_TEST_KILL_AT``
    it sends SIGTERM to its own process (for in-process tests). Draws no random numbers."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.is_global_zero:  # one line per step, in one write (ranks share the output pipe)
            sys.stdout.write(f"STEP {trainer.global_step}\n")
            sys.stdout.flush()
        if str(trainer.global_step) == os.environ.get("ISOFLOP_TEST_PAUSE_AT"):
            time.sleep(float(os.environ.get("ISOFLOP_TEST_PAUSE_S", "1.5")))
        if str(trainer.global_step) == os.environ.get("ISOFLOP_TEST_KILL_AT"):
            os.kill(os.getpid(), signal.SIGTERM)
