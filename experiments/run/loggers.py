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
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from datamodules.cache import temporary_sibling, write_atomic
from experiments.private_api import drop_wandb_anonymous

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
    Lightning triggers on each step's outputs, and Lightning's resume warnings that do not apply to
    isoflop's resumable runs. (wandb's warning about a setting Lightning passes is avoided where the
    wandb logger is made, :func:`make_loggers`.)"""
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


class _AppendingWriter:
    """The files of :class:`CSVLogger`: ``metrics.csv`` and ``hparams.yaml`` in ``log_dir``, in the format of
    Lightning's ``CSVLogger`` (a ``step`` column and one column per metric, in sorted order; one row per
    ``log_metrics`` call, nothing merged; a value missing from a row left empty), written safely.

    ``append`` (a resumed pre-training): an existing ``metrics.csv`` is continued, where Lightning's writer
    deletes it (a resumed run would lose every row before the stop). Otherwise (fine-tuning) an existing
    ``metrics.csv`` is deleted here, and the file starts afresh, as Lightning's does. Rows are appended,
    and rolled back if the append fails (a full disk); a new column rewrites the file whole under a
    temporary name and renames it (where Lightning rewrites it in place, which a crash can leave empty),
    keeping every earlier row. ``hparams.yaml`` is replaced the same way. Rows not yet saved stay in
    :attr:`metrics` when a save fails.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str, append: bool = True) -> None:
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        os.makedirs(log_dir, exist_ok=True)
        if not append and os.path.isfile(self.metrics_file_path):
            os.remove(self.metrics_file_path)
        self.metrics_keys: list[str] = self._header()

    def _header(self) -> list[str]:
        if not os.path.isfile(self.metrics_file_path):
            return []
        with open(self.metrics_file_path, newline="") as f:
            return next(csv.reader(f), [])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record one row (saved by :meth:`save`): the values as numbers (a tensor's ``item()``), and ``step``
        (default: the number of rows waiting to be saved)."""
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

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


class CSVLogger(Logger):
    """isoflop's CSV logger: ``<save_dir>/<name>/metrics.csv`` and ``hparams.yaml`` beside it, the files
    Lightning's ``CSVLogger`` writes for ``version=""``, written by :class:`_AppendingWriter` (on the first
    rank only, as Lightning's loggers are).

    Args:
        save_dir: the directory holding the logger's directory.
        name: the logger's directory in ``save_dir``.
        version: a further subdirectory ("": none).
        append: continue an existing ``metrics.csv`` (a resumed run) instead of starting it afresh.
        flush_logs_every_n_steps: write the rows every so many steps when :meth:`log_metrics` is called
            directly (a Trainer saves after each of its own calls anyway).
    """

    def __init__(self, save_dir: str | os.PathLike, name: str = "csv", version: str = "", append: bool = False,
                 flush_logs_every_n_steps: int = 100):
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._append = append
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._writer: _AppendingWriter | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root_dir, self._version)

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        """The writer of the files (created on first use: that is when a non-appending logger deletes an
        earlier ``metrics.csv``)."""
        if self._writer is None:
            self._writer = _AppendingWriter(self.log_dir, append=self._append)
        return self._writer

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.experiment.log_hparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if step is None:
            step = len(self.experiment.metrics)
        self.experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._writer is not None:  # a rank or process that never logged has nothing to write
            self.save()


class AppendingCSVLogger(CSVLogger):
    """:class:`CSVLogger` continuing ``metrics.csv`` across resumes instead of truncating it
    (:class:`_AppendingWriter`). Rows logged after a run's last checkpoint by a leg that then crashed
    are logged again by the resumed leg; readers keep the last row of each step
    (:func:`experiments.comparison.results.validation_curve` does)."""

    def __init__(self, save_dir: str | os.PathLike, name: str = "csv", version: str = "",
                 flush_logs_every_n_steps: int = 100):
        super().__init__(save_dir, name, version, append=True, flush_logs_every_n_steps=flush_logs_every_n_steps)


def wandb_project(project: str | None = None) -> str:
    """The wandb project: the one given (``--wandb_project``), else ``WANDB_PROJECT``, else ``isoflop``."""
    return project or os.environ.get("WANDB_PROJECT") or WANDB_PROJECT


def tag(key: str, value: Any) -> str:
    """A wandb tag ``key:value`` (a float in 3 significant digits), within wandb's 64 characters."""
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return f"{key}:{text}"[:64]


def user_tags(tags: list[str] | str | None) -> list[str]:
    """``--wandb_tags`` as a list (one tag may be given bare), each within wandb's 64 characters."""
    items = [tags] if isinstance(tags, str) else list(tags or [])
    return [str(t)[:64] for t in items if str(t).strip()]


def pretrain_tags(cfg, budget: float | None) -> list[str]:
    """A pre-training run's wandb tags: its objective, encoder family and size, FLOPs budget and seed, then the
    user's (``--wandb_tags``)."""
    model = cfg.model.get("init_args") or {}
    tags = [tag("objective", cfg.model.class_path.rsplit(".", 1)[-1])]
    if model.get("encoder") and model.get("size"):
        tags.append(tag("encoder", f"{model.get('encoder')}-{model.get('size')}"))
    if budget is not None:
        tags.append(tag("budget", float(budget)))
    tags.append(tag("seed", cfg.get("seed_everything") or 0))
    return tags + user_tags(cfg.get("wandb_tags"))


def export_tags(record: dict) -> list[str]:
    """The wandb tags of a fine-tuning of an isoflop export, from its provenance (:func:`experiments.run.provenance.read_record`): the
    objective, encoder, budget, pre-training seed and the step of the weights (a point of a curve, or the end)."""
    if not record:
        return []
    encoder_info, training = record.get("encoder") or {}, record.get("training") or {}
    tags = [tag("objective", (record.get("objective") or {}).get("name"))]
    if encoder_info.get("family") and encoder_info.get("size"):
        tags.append(tag("encoder", f"{encoder_info['family']}-{encoder_info['size']}"))
    if (record.get("flops") or {}).get("budget") is not None:
        tags.append(tag("budget", float(record["flops"]["budget"])))
    if training.get("seed_everything") is not None:
        tags.append(tag("seed", training["seed_everything"]))
    if training.get("steps") is not None:
        tags.append(tag("pretrain-step", training["steps"]))
    return tags


def export_name(record: dict, fallback: str) -> str:
    """A short name for the weights of an export in wandb run names: ``<run>@step<N>`` from its provenance (the run
    directory's name and the step), else ``fallback``."""
    run_dir, steps = record.get("run_dir"), (record.get("training") or {}).get("steps")
    return f"{Path(run_dir).name}@step{steps}" if run_dir and steps is not None else fallback


def make_loggers(
    save_dir: str | os.PathLike,
    name: str,
    *,
    wandb: bool = True,
    group: str | None = None,
    project: str | None = None,
    entity: str | None = None,
    tags: list[str] | None = None,
    job_type: str | None = None,
    run_name: str | None = None,
    config: dict[str, Any] | None = None,
    append: bool = False,
) -> list[Logger]:
    """CSV logger in ``save_dir/name`` and, unless ``wandb=False``, a wandb logger beside it.

    ``append``: continue an existing ``metrics.csv`` (a resumed pre-training, :class:`AppendingCSVLogger`)
    instead of starting it afresh. The wandb run goes to ``project`` (:func:`wandb_project`) of ``entity`` (None:
    the user's default), in ``group``, with ``job_type`` (``pretrain``, ``finetune``) and ``tags``, named
    ``run_name`` (default ``name``).

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
                name=run_name or name,
                save_dir=str(save_dir),
                project=wandb_project(project),
                entity=entity,
                group=group,
                job_type=job_type,
                tags=list(dict.fromkeys(tags or [])) or None,
                offline=mode == "offline",
                settings=settings,
            )
            drop_wandb_anonymous(logger)  # a wandb warning on every run, about an argument Lightning always passes
            if config:
                logger.log_hyperparams(config)
            loggers.append(logger)
    return loggers


def finish_loggers(loggers: list[Logger]) -> None:
    """Close the wandb run (``wandb.finish()``), so the next run in the same process (a sweep, a comparison)
    gets its own. A ``WandbLogger`` logs to the process's one current run (``wandb.run``, which it
    creates, or reuses when there is one), so that is the run to close; on a rank without one (every
    rank but the first), nothing is done."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()
