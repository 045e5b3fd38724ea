"""``isoflop finetune``: judge a pre-trained encoder by its downstream scores, the ELECTRA way.

For each task, fine-tune the same checkpoint with several seeds and report the median over seeds
(the paper: "the median of 10 fine-tuning runs"), plus min, max and standard deviation, and the
average over tasks of the medians (the GLUE score; WNLI is left out of it).

    isoflop finetune --encoder runs/electra-small/export --tasks glue --seeds 10
    isoflop finetune --encoder DIR --tasks mrpc,rte --data_dir ~/glue_data --seeds 3
    isoflop finetune --encoder DIR --tasks offline --max_steps 200      # no network needed

Writes to ``out_dir``: ``results.csv`` and ``results.md`` (one row per task: headline metric,
median, min, max, std, n_seeds and each seed's score, then an ``average`` row), ``metrics.csv``
(every metric of every run, long format) and, per run, ``<task>/seed<k>/metrics.csv`` from the CSV
logger (plus a wandb run, grouped by encoder and task). Scores are in GLUE points (x100).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from datamodules.cache import write_atomic
from downstream.classifier import SequenceClassification, check_encoder
from downstream.data import TaskDataModule
from downstream.tasks import TaskSpec, resolve_tasks
from experiments.run.loggers import finish_loggers, make_loggers


@dataclass
class TaskResult:
    """The scores of one task over seeds, in GLUE points (x100).

    Attributes:
        task: Task name, or ``average`` for the mean over tasks.
        metric: Headline metric name (``accuracy``, ``mcc``, ``spearman`` ...).
        scores: Headline score per seed.
        others: Every other metric (``f1``, ``pearson``, ``accuracy_mismatched`` ...) per seed.
        median_override: Reported instead of the median of ``scores`` (the average row: the mean
            of the task medians, which is not the median of the per-seed averages).
    """

    task: str
    metric: str
    scores: dict[int, float] = field(default_factory=dict)
    others: dict[str, dict[int, float]] = field(default_factory=dict)
    median_override: float | None = None

    @property
    def median(self) -> float:
        if self.median_override is not None:
            return self.median_override
        return statistics.median(self.scores.values())

    @property
    def min(self) -> float:
        return min(self.scores.values())

    @property
    def max(self) -> float:
        return max(self.scores.values())

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        values = list(self.scores.values())
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def n_seeds(self) -> int:
        return len(self.scores)


def encoder_tag(encoder: str) -> str:
    """A short name for an encoder directory: its last two path components (``electra-small-export``)."""
    path = Path(encoder).expanduser()
    parts = (path.resolve() if path.exists() else path).parts[-2:]
    return "-".join(p.strip("/\\") for p in parts if p.strip("/\\")) or "encoder"


def average(results: dict[str, TaskResult], include_wnli: bool = False) -> TaskResult | None:
    """The paper's average: mean over tasks of each task's median headline score (WNLI excluded).

    Its ``scores`` are per-seed averages over tasks (for the spread); its median is the mean of
    the task medians, which is what GLUE tables report.
    """
    tasks = [r for name, r in results.items() if include_wnli or name != "wnli"]
    if not tasks:
        return None
    seeds = set.intersection(*(set(r.scores) for r in tasks))
    per_seed = {s: statistics.fmean(r.scores[s] for r in tasks) for s in sorted(seeds)}
    return TaskResult(
        "average", "mean of task medians", per_seed, median_override=statistics.fmean(r.median for r in tasks)
    )


def write_results(results: dict[str, TaskResult], out_dir: str | Path, header: str = "") -> None:
    """``results.csv`` and ``results.md`` (tasks, then the ``average`` row) and ``metrics.csv`` in ``out_dir``.

    Each file is written whole and renamed into place (:func:`datamodules.cache.write_atomic`):
    they are rewritten after every task, and a crash or kill mid-write must not leave a truncated
    table where the previous, complete one was.
    """
    out = Path(out_dir)
    rows = list(results.values())
    avg = average(results)
    if avg is not None:
        rows.append(avg)
    seeds = sorted({s for r in rows for s in r.scores})
    columns = ["task", "metric", "median", "min", "max", "std", "n_seeds", *[f"seed_{s}" for s in seeds]]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(columns)
    for r in rows:
        per_seed = [f"{r.scores[s]:.4f}" if s in r.scores else "" for s in seeds]
        stats = [f"{v:.4f}" for v in (r.median, r.min, r.max, r.std)]
        writer.writerow([r.task, r.metric, *stats, r.n_seeds, *per_seed])
    write_atomic(out / "results.csv", table.getvalue())

    lines = [header, ""] if header else []
    lines += [
        "| task | metric | median | min | max | std | seeds | per-seed scores |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        per_seed = " ".join(f"{r.scores[s]:.1f}" for s in sorted(r.scores))
        lines.append(
            f"| {r.task} | {r.metric} | {r.median:.2f} | {r.min:.2f} | {r.max:.2f} | {r.std:.2f} | {r.n_seeds} | {per_seed} |"
        )
    others = [(r.task, name, statistics.median(v.values())) for r in results.values() for name, v in r.others.items()]
    if others:
        lines += ["", "Other metrics (median over seeds):", "", "| task | metric | median |", "|---|---|---:|"]
        lines += [f"| {task} | {name} | {value:.2f} |" for task, name, value in others]
    write_atomic(out / "results.md", "\n".join(lines) + "\n")

    # Every metric of every run, long format, for later analysis.
    long = io.StringIO()
    writer = csv.writer(long)
    writer.writerow(["task", "seed", "metric", "value"])
    for r in results.values():
        for name, per_seed in {r.metric: r.scores, **r.others}.items():
            writer.writerows([r.task, seed, name, f"{value:.4f}"] for seed, value in sorted(per_seed.items()))
    write_atomic(out / "metrics.csv", long.getvalue())


# Where finetune()'s parameters go: every task's datamodule, every run's training, and the record
# (config.json, and each run's logged config; tasks and seeds as resolved).
_DATA_OPTIONS = ("data_dir", "cache_dir", "max_length", "batch_size", "both_orders", "max_train_examples",
                 "max_eval_examples", "num_workers")
_RUN_OPTIONS = ("max_steps", "learning_rate", "layerwise_lr_decay", "weight_decay", "warmup_fraction", "accelerator",
                "devices", "precision", "wandb", "progress_bar")
_RECORDED = ("encoder", "tasks", "seeds", "data_dir", "epochs", "max_steps", "max_train_examples", "max_eval_examples",
             "batch_size", "max_length", "learning_rate", "layerwise_lr_decay", "weight_decay", "warmup_fraction",
             "both_orders", "precision")


def finetune(
    encoder: str,
    tasks: list[str] | str = "glue",
    seeds: int | list[int] = 10,
    out_dir: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    epochs: int | None = None,
    max_steps: int = -1,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    learning_rate: float = 1e-4,
    layerwise_lr_decay: float = 0.8,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    both_orders: bool = True,
    accelerator: str = "auto",
    devices: int | str = 1,
    precision: str = "32-true",
    num_workers: int = 0,
    wandb: bool = True,
    progress_bar: bool = False,
) -> dict[str, TaskResult]:
    """Fine-tune one encoder on downstream tasks over several seeds; report the median per task.

    Args:
        encoder: Checkpoint directory with its tokenizer (``isoflop export`` output or any ``save_pretrained`` dir).
        tasks: ``glue`` (all GLUE tasks but WNLI), ``offline`` (the suite that measures pre-training: docpkg-probe, docpair), a task name, or a comma list.
        seeds: Number of fine-tuning seeds (0..n-1), or an explicit list of seeds.
        out_dir: Output directory; default ``runs/finetune/<encoder's last two path parts>``.
        data_dir: Local GLUE files (``<data_dir>/<task>/train.tsv``, ``validation.tsv``, hub column names);
            default: download ``nyu-mll/glue`` from the Hugging Face hub.
        cache_dir: Cache for the embedded corpus and the offline tasks (default ``$ISOFLOP_CACHE`` or ``~/.cache/isoflop``).
        epochs: Epochs for every task; default each task's own (3; RTE and STS-B 10).
        max_steps: Stop each run after this many optimiser steps, or at the end of its epochs if sooner
            (-1: run the epochs); for quick runs.
        max_train_examples: Use only this many training examples per task (a fixed subset); for quick runs.
        max_eval_examples: Use only this many examples per dev split (a fixed subset); for quick runs.
        batch_size: Training batch size.
        max_length: Maximum tokens per example (both sentences together).
        learning_rate: Peak learning rate (head); ELECTRA: 1e-4 Base, 3e-4 Small.
        layerwise_lr_decay: Learning-rate factor per layer of distance from the head (ELECTRA: 0.8).
        weight_decay: AdamW weight decay (not on biases and LayerNorm).
        warmup_fraction: Fraction of steps with linear warmup (then linear decay to 0).
        both_orders: Also train MRPC and STS-B on swapped sentence pairs.
        accelerator: Lightning accelerator (auto, cpu, gpu ...).
        devices: Devices per run.
        precision: Lightning precision (32-true, bf16-mixed ...).
        num_workers: DataLoader workers.
        wandb: Log each run to wandb too (offline by itself without credentials or network).
        progress_bar: Show Lightning's progress bar.

    Returns:
        Results per task name (in GLUE points, x100); ``average(results)`` gives the GLUE-style mean.
    """
    options = dict(locals())  # the parameters by name, dealt out below with the tuples above
    # Every check (task names, seeds, encoder, data files and columns) before any training compute.
    names = resolve_tasks(tasks)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list")
    modules = _prepare_tasks(encoder, names, **{k: options[k] for k in _DATA_OPTIONS})
    out = Path(out_dir) if out_dir else Path("runs") / "finetune" / encoder_tag(encoder)
    settings = {**{k: options[k] for k in _RECORDED}, "tasks": names, "seeds": seed_list}
    write_atomic(out / "config.json", json.dumps(settings, indent=2) + "\n")
    run = {k: options[k] for k in _RUN_OPTIONS}
    results: dict[str, TaskResult] = {}
    for name, dm in modules.items():
        results[name] = _run_task(dm, seed_list, encoder=encoder, out=out, settings=settings, epochs=epochs, **run)
        # After every task, so a crash keeps what is done.
        write_results(results, out, f"Fine-tuning `{encoder}` (median over seeds, GLUE points)")
    return results


def _prepare_tasks(encoder: str, names: list[str], **data_options: Any) -> dict[str, TaskDataModule]:
    """Check the encoder and build every task's datamodule, loading and checking its raw data.

    Runs before any training: a missing tokenizer, file, column or a bad label then fails in one
    line, not after hours of fine-tuning the tasks before it. ``data_options`` are
    :class:`~downstream.data.TaskDataModule` arguments.
    """
    check_encoder(encoder)
    modules: dict[str, TaskDataModule] = {}
    for name in names:
        dm = TaskDataModule(encoder, task=name, **data_options)
        dm.load_raw()  # raises on missing files, columns or bad labels
        modules[name] = dm
    return modules


def _run_task(
    dm: TaskDataModule, seed_list: list[int], *, encoder: str, out: Path, settings: dict, epochs: int | None,
    **run: Any,
) -> TaskResult:
    """Every seed of one task (tokenised once); ``epochs`` None means the task's own.
    ``run`` holds :func:`_run_one`'s training options."""
    spec = dm.spec
    dm.setup("fit")
    result = TaskResult(spec.name, spec.metric)
    for seed in seed_list:
        metrics = _run_one(
            dm, spec, seed, encoder=encoder, out=out, settings=settings, epochs=epochs or spec.epochs, **run
        )
        result.scores[seed] = metrics[spec.metric]
        for key, value in metrics.items():
            if key != spec.metric:
                result.others.setdefault(key, {})[seed] = value
        print(f"[finetune] {spec.name} seed {seed}: {spec.metric} {metrics[spec.metric]:.2f}", flush=True)
    return result


def _run_one(
    dm: TaskDataModule, spec: TaskSpec, seed: int, *, encoder: str, out: Path, settings: dict, epochs: int,
    max_steps: int, learning_rate: float, layerwise_lr_decay: float, weight_decay: float, warmup_fraction: float,
    accelerator: str, devices: int | str, precision: str, wandb: bool, progress_bar: bool,
) -> dict[str, float]:
    """One fine-tuning run; returns every dev metric after training, in GLUE points."""
    L.seed_everything(seed, workers=True, verbose=False)  # head init, dropout and data order
    model = SequenceClassification(
        encoder, task=spec.name, learning_rate=spec.learning_rate or learning_rate, layerwise_lr_decay=layerwise_lr_decay,
        weight_decay=weight_decay, warmup_fraction=warmup_fraction,
    )
    loggers = make_loggers(
        out, f"{spec.name}/seed{seed}", wandb=wandb, group=f"{encoder_tag(encoder)}-{spec.name}",
        config={**settings, "task": spec.name, "seed": seed},
    )
    train_loader = dm.train_dataloader()
    trainer = L.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        logger=loggers,
        gradient_clip_val=1.0,  # ELECTRA clips the global gradient norm at 1
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(train_loader), max_steps if max_steps > 0 else 50)),
        default_root_dir=str(out),
    )
    with warnings.catch_warnings():
        # ELECTRA evaluates once, after training: fit gets no dev loader on purpose.
        warnings.filterwarnings("ignore", message=".*val_dataloader.*")
        # A probe's encoder is in eval mode on purpose (frozen features): Lightning's warning says so.
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        trainer.fit(model, train_dataloaders=train_loader)
    trainer.validate(model, dataloaders=dm.val_dataloader(), verbose=False)
    metrics = {
        key.removeprefix("val/"): 100 * float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("val/") and not key.startswith("val/loss")
    }
    for logger in loggers:
        logger.finalize("success")
    finish_loggers(loggers)  # else the next seed's wandb logger would reuse this run
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``isoflop finetune``; returns the process exit code (errors are reported, in one
    line, by :func:`experiments.cli.main`)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from experiments.config import parse_args

    parser = ArgumentParser(
        prog="isoflop finetune",
        description=(finetune.__doc__ or "").split("\n\n")[0],
        default_env=False,
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_function_arguments(finetune, as_group=False)
    cfg = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    kwargs = {k: v for k, v in cfg.as_dict().items() if k not in ("config", "__path__")}
    results = finetune(**kwargs)
    out = Path(kwargs.get("out_dir") or Path("runs") / "finetune" / encoder_tag(kwargs["encoder"]))
    print((out / "results.md").read_text() if (out / "results.md").exists() else results)
    return 0


if __name__ == "__main__":
    sys.exit(main())  # errors with tracebacks: `isoflop finetune` reports them in one line
