"""Loggers every isoflop command uses: CSV always, wandb by default, never hanging.

CSV files are the local record that later tools (``isoflop compare``, the notebook) read. wandb is
on by default; it goes offline by itself when there are no credentials or the server cannot be
reached, so a run on a machine without network still writes a wandb directory that
``wandb sync`` can upload later.
"""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from datamodules.cache import temporary_sibling, write_atomic

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
    Lightning triggers on each step's outputs, wandb's warning about a setting Lightning passes, and
    Lightning's resume warnings that do not apply to isoflop's resumable runs."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Resuming: the data position is restored by isoflop's own sampler and callback (experiments.run.resume),
    # which Lightning cannot see; and a resumed run's checkpoint directory holds its checkpoints, of course.
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


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


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer without its truncation: an existing ``metrics.csv`` is continued.

    Lightning's writer deletes ``metrics.csv`` when it starts in a non-empty directory (a resumed run
    would lose every row before the stop) and rewrites it in place when a new column appears (a crash
    then can leave it empty). Here rows are appended, and rolled back if the append fails (a full disk);
    a new column rewrites the file whole under a temporary name and renames it, keeping every earlier
    row. ``hparams.yaml`` is written the same way.
    """

    def __init__(self, log_dir: str) -> None:  # noqa: D107 -- no super().__init__: it would delete the file
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, float]] = []
        self.log_dir = log_dir
        self._fs = get_filesystem(log_dir)
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        os.makedirs(log_dir, exist_ok=True)
        self.metrics_keys: list[str] = self._header()

    def _header(self) -> list[str]:
        if not os.path.isfile(self.metrics_file_path):
            return []
        with open(self.metrics_file_path, newline="") as f:
            return next(csv.reader(f), [])

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        tmp = temporary_sibling(path)
        try:
            save_hparams_to_yaml(tmp, self.hparams)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def save(self) -> None:
        if not self.metrics:
            return
        path = self.metrics_file_path
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        if new_keys or not os.path.isfile(path):
            keys = sorted(set(self.metrics_keys) | new_keys)
            rows = []
            if os.path.isfile(path):
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows + self.metrics)
            write_atomic(path, buffer.getvalue())
            self.metrics_keys = keys  # only once the file has them
        else:
            size = os.path.getsize(path)
            try:
                with open(path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                os.truncate(path, size)  # the rows before stay exactly as they were
                raise
        self.metrics = []


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, continuing ``metrics.csv`` across resumes instead of truncating it
    (:class:`_AppendingWriter`). Rows logged after a run's last checkpoint by a leg that then crashed
    are logged again by the resumed leg; readers keep the last row of each step
    (:func:`experiments.comparison.results.validation_curve` does)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def make_loggers(
    save_dir: str | os.PathLike,
    name: str,
    *,
    wandb: bool = True,
    group: str | None = None,
    project: str = WANDB_PROJECT,
    tags: list[str] | None = None,
    config: dict[str, Any] | None = None,
    append: bool = False,
) -> list[Logger]:
    """CSV logger in ``save_dir/name`` and, unless ``wandb=False``, a wandb logger beside it.

    ``append``: continue an existing ``metrics.csv`` (a resumed pre-training, :class:`AppendingCSVLogger`)
    instead of starting it afresh.

    The wandb run directory is ``save_dir/wandb`` (offline runs land there for ``wandb sync``). Every
    run makes its loggers here, so this is also where third-party noise is silenced (:func:`quiet`).
    """
    quiet()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    csv_class = AppendingCSVLogger if append else CSVLogger
    loggers: list[Logger] = [csv_class(save_dir=str(save_dir), name=name, version="")]
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
