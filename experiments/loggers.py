"""Loggers every isoflop command uses: CSV always, wandb by default, never hanging.

CSV files are the local record that later tools (``isoflop compare``, the notebook) read. wandb is
on by default; it goes offline by itself when there are no credentials or the server cannot be
reached, so a run on a machine without network still writes a wandb directory that
``wandb sync`` can upload later.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

WANDB_PROJECT = "isoflop"

# Third-party lines that every run would print and that tell a user nothing about it.
_NOISE = (
    "💡 Tip:",  # Lightning advertising its cloud logger
    "GPU available:", "TPU available:", "HPU available:",  # isoflop's run summary names the device in use
    "Loading `train_dataloader` to estimate",  # a remark on Lightning's internals
    "`Trainer.fit` stopped:",  # every isoflop command says how far each run got, in its own words
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


def quiet() -> None:
    """Silence third-party noise on every run: Lightning's tips, a torch ``_pytree`` deprecation that
    Lightning triggers on each step's outputs, and wandb's warning about a setting Lightning passes."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def _has_wandb_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(timeout: float = 3.0) -> str:
    """``online``, ``offline`` or ``disabled``: what wandb can do here, decided without hanging.

    ``WANDB_MODE`` wins when set. Otherwise: no credentials means offline; credentials but no TCP
    connection to the server within ``timeout`` seconds means offline too.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return "offline" if mode == "dryrun" else mode
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base).hostname or "api.wandb.ai"
    if not _has_wandb_credentials(host):
        return "offline"
    port = urlparse(base).port or (443 if base.startswith("https") else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "online"
    except OSError:
        return "offline"


def make_loggers(
    save_dir: str | os.PathLike,
    name: str,
    *,
    wandb: bool = True,
    group: str | None = None,
    project: str = WANDB_PROJECT,
    tags: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> list[Logger]:
    """CSV logger in ``save_dir/name`` and, unless ``wandb=False``, a wandb logger beside it.

    The wandb run directory is ``save_dir/wandb`` (offline runs land there for ``wandb sync``). Every
    run makes its loggers here, so this is also where third-party noise is silenced (:func:`quiet`).
    """
    quiet()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [CSVLogger(save_dir=str(save_dir), name=name, version="")]
    if wandb:
        mode = wandb_mode()
        if mode != "disabled":
            import wandb as wandb_lib

            # Bounded waits: a broken network never stalls a training run.
            settings = wandb_lib.Settings(init_timeout=60, finish_timeout=60, silent=True)
            logger = WandbLogger(
                name=name,
                save_dir=str(save_dir),
                project=os.environ.get("WANDB_PROJECT", project),
                group=group,
                tags=tags,
                offline=mode == "offline",
                settings=settings,
            )
            # Lightning passes anonymous=None, which wandb (>= 0.19) warns about on every run.
            logger._wandb_init.pop("anonymous", None)
            if config:
                logger.log_hyperparams(config)
            loggers.append(logger)
    return loggers


def finish_loggers(loggers: list[Logger]) -> None:
    """Close wandb runs, so the next run in the same process (a sweep, a comparison) gets its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
