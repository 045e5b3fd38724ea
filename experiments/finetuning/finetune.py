"""``isoflop finetune``: judge a pre-trained encoder by its downstream scores, the ELECTRA way.

For each task, fine-tune the same checkpoint with several seeds and report the median over seeds
(the paper: "the median of 10 fine-tuning runs"), plus min, max and standard deviation, and the
average over tasks of the medians (the GLUE score; WNLI is left out of it).

    isoflop finetune --encoder runs/electra-small/export --tasks glue --seeds 10
    isoflop finetune --encoder DIR --tasks mrpc,rte --data_dir ~/glue_data --seeds 3
    isoflop finetune --encoder DIR --tasks offline --max_steps 200      # no network needed
    isoflop finetune --encoder DIR --tasks glue --data_dir ~/glue_data --predict_test true   # + GLUE test files
    isoflop finetune --encoder DIR --tasks data/mytask/                   # your own CSV/JSONL task
    isoflop finetune --encoder DIR --tasks squad2 --data_dir ~/squad     # SQuAD 2.0 (downstream.squad)

Writes to ``out_dir``: ``results.csv`` and ``results.md`` (one row per task: headline metric,
median, min, max, std, n_seeds and each seed's score, then an ``average`` row), ``metrics.csv``
(every metric of every run, long format) and, per run, ``<task>/seed<k>/metrics.csv`` from the CSV
logger (plus a wandb run of job type ``finetune``, grouped by encoder, tagged with the task, the seed and the
export's provenance). Scores are in GLUE points (x100). With ``predict_test``, GLUE's submission files too
(:mod:`experiments.finetuning.predict`).
"""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L

from datamodules.cache import write_atomic
from downstream.classifier import (
    SequenceClassification,
    check_encoder,
    check_layerwise_lr_decay,
    official_layerwise_lr_decay,
)
from downstream.data import TaskDataModule
from downstream.own import describe_own_task
from downstream.qa import QuestionAnswering
from downstream.squad import SquadDataModule
from downstream.synthetic_tasks import SyntheticTaskDataModule, is_synthetic_task, synthetic_model
from downstream.tasks import TaskSpec, get_task, resolve_tasks
from experiments.finetuning.predict import (
    median_seed,
    save_seed_predictions,
    seed_predictions_path,
    write_test_predictions,
)
from experiments.finetuning.scores import TaskResult, write_results
from experiments.run.loggers import (
    export_name,
    export_tags,
    finish_loggers,
    make_loggers,
    tag,
    user_tags,
)
from experiments.run.provenance import read_record
from objectives.optim import check_schedule


def encoder_tag(encoder: str) -> str:
    """A short name for an encoder directory: its last two path components (``electra-small-export``)."""
    path = Path(encoder).expanduser()
    parts = (path.resolve() if path.exists() else path).parts[-2:]
    return "-".join(p.strip("/\\") for p in parts if p.strip("/\\")) or "encoder"


# Where finetune()'s parameters go: every task's datamodule, every run's training, and the record
# (config.json, and each run's logged config; tasks and seeds as resolved).
_DATA_OPTIONS = ("data_dir", "cache_dir", "max_seq_length", "batch_size", "both_orders", "max_train_examples",
                 "max_eval_examples", "num_workers", "predict_test")
_RUN_OPTIONS = ("max_steps", "learning_rate", "layerwise_lr_decay", "weight_decay", "warmup_fraction",
                "adam_bias_correction", "lr_schedule", "accelerator", "devices", "precision", "wandb", "progress_bar",
                "wandb_project", "wandb_entity", "wandb_tags", "wandb_group")
_RECORDED = ("encoder", "tasks", "seeds", "data_dir", "epochs", "max_steps", "max_train_examples", "max_eval_examples",
             "batch_size", "max_seq_length", "learning_rate", "layerwise_lr_decay", "weight_decay", "warmup_fraction",
             "adam_bias_correction", "lr_schedule", "both_orders", "precision", "predict_test")


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
    max_seq_length: int | None = None,
    learning_rate: float | None = None,
    layerwise_lr_decay: float | None = None,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    adam_bias_correction: bool = False,
    lr_schedule: str = "electra",
    both_orders: bool = True,
    predict_test: bool = False,
    accelerator: str = "auto",
    devices: int | str = 1,
    precision: str = "32-true",
    num_workers: int = 0,
    wandb: bool = True,
    progress_bar: bool = False,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    wandb_tags: list[str] | None = None,
    wandb_group: str | None = None,
) -> dict[str, TaskResult]:
    """Fine-tune one encoder on downstream tasks over several seeds; report the median per task.

    Args:
        encoder: Checkpoint directory with its tokenizer (``isoflop export`` output or any ``save_pretrained`` dir).
        tasks: ``glue`` (all GLUE tasks but WNLI), ``offline`` (the suite that measures pre-training: docpkg-probe,
            docpair), a task name, a directory of your own data as a path (``data/mytask/``: ``downstream.own``), or a list.
        seeds: Number of fine-tuning seeds (0..n-1), or an explicit list of seeds.
        out_dir: Output directory; default ``runs/finetune/<encoder's last two path parts>``.
        data_dir: Local GLUE files (``<data_dir>/<task>/train.tsv``, ``validation.tsv``) and SQuAD JSON; default: the hub.
        cache_dir: Cache for the embedded corpus and the offline tasks (default ``$ISOFLOP_CACHE`` or ``~/.cache/isoflop``).
        epochs: Epochs for every task; default each task's own (3; RTE and STS-B 10).
        max_steps: Stop each run after this many optimiser steps or its epochs, what comes first (-1: epochs).
        max_train_examples: Use only this many training examples per task (a fixed subset); for quick runs.
        max_eval_examples: Use only this many examples per dev split (a fixed subset); for quick runs.
        batch_size: Training batch size.
        max_seq_length: Maximum tokens per example; default: the task's own (the official 128; SQuAD 512).
        learning_rate: Peak learning rate (of the head); default: the encoder family's own for the encoder's size
            (``objectives.encoder``: ELECTRA paper Table 7, DeBERTa-v3's MNLI recipe), 1e-4 for another shape.
        layerwise_lr_decay: Learning-rate factor per depth from the head (official ``_get_layer_lrs``); 1.0 turns it
            off. Default: the official value: 0.8, 0.9 at ELECTRA-Large (``configure_finetuning.py``), 1.0 for DeBERTa.
        weight_decay: AdamW weight decay (not on biases and LayerNorm).
        warmup_fraction: Fraction of steps in the schedule's warm-up.
        adam_bias_correction: Adam's bias correction; default false, as the official ``AdamWeightDecayOptimizer``.
        lr_schedule: ``electra`` (default; the official ``create_optimizer``'s), ``linear`` or ``deberta``.
        both_orders: Also train MRPC and STS-B on swapped sentence pairs.
        predict_test: Predict each task's test split with the seed of median dev score into GLUE's submission files,
            ``out_dir/glue-test/`` and ``glue-test.zip`` (own tasks: ``test-predictions/``); :mod:`experiments.finetuning.predict`.
        accelerator: Lightning accelerator (auto, cpu, gpu ...).
        devices: Devices per run.
        precision: Lightning precision (32-true, bf16-mixed ...).
        num_workers: DataLoader workers.
        wandb: Log each run to wandb too (offline by itself without credentials or network).
        progress_bar: Show Lightning's progress bar.
        wandb_project: wandb project (default: WANDB_PROJECT, else isoflop).
        wandb_entity: wandb entity (team or user) that owns the project (default: your own).
        wandb_tags: wandb tags for every run, besides isoflop's (task:, finetune-seed:, an export's objective: ...).
        wandb_group: wandb group of every run (default: the encoder's short name; compare: the comparison's).

    Returns: results per task name (in GLUE points, x100); ``average(results)`` gives the GLUE-style mean.
    """
    options = dict(locals())  # the parameters by name, dealt out with the tuples above
    modules, seed_list, out, settings = _prepare(options)  # every check before any training compute
    run = {k: options[k] for k in _RUN_OPTIONS}
    results: dict[str, TaskResult] = {}
    for name, dm in modules.items():
        results[name] = _run_task(dm, seed_list, encoder=encoder, out=out, settings=settings, epochs=epochs, **run)
        write_results(results, out, f"Fine-tuning `{encoder}` (median over seeds, GLUE points)")
    return results


def _prepare(options: dict) -> tuple[dict[str, TaskDataModule], list[int], Path, dict]:
    """:func:`finetune`'s checks (task names, seeds, optimiser settings, encoder, data files and columns), its tasks'
    datamodules, seeds, output directory and recorded settings (``config.json``, written); ``options`` are its
    arguments, the family's learning rate and layer-wise decay filled in."""
    encoder = options["encoder"]
    names, seed_list = resolve_tasks(options["tasks"]), _seed_list(options["seeds"])
    _check_optimiser(options)
    modules = _prepare_tasks(encoder, names, **{k: options[k] for k in _DATA_OPTIONS})
    out = Path(options["out_dir"]) if options["out_dir"] else Path("runs") / "finetune" / encoder_tag(encoder)
    _family_defaults(encoder, options)
    settings = {**{k: options[k] for k in _RECORDED}, "tasks": names, "seeds": seed_list}
    write_atomic(out / "config.json", json.dumps(settings, indent=2) + "\n")
    return modules, seed_list, out, settings


class Jobs:
    """One encoder's fine-tuning as separate (task, seed) runs, for a caller that deals them out (the ranks of a
    comparison: :mod:`experiments.finetuning.spread`). The checks and settings are :func:`finetune`'s (``kwargs``
    are its options), each task's data is loaded and tokenised once, at its first job, and every job is
    :func:`_run_one` called as :func:`finetune` calls it: a job's scores are those of the same task and seed
    in :func:`finetune`, and its logs go where :func:`finetune` puts them (``out_dir/<task>/seed<k>``)."""

    def __init__(self, encoder: str, out_dir: str | Path, **kwargs: Any):
        bound = inspect.signature(finetune).bind(encoder, out_dir=str(out_dir), **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        self.encoder, self.out, self.epochs = encoder, Path(out_dir), options["epochs"]
        self.names, self.seeds = resolve_tasks(options["tasks"]), _seed_list(options["seeds"])
        _check_optimiser(options)
        check_encoder(encoder)
        _family_defaults(encoder, options)
        self.settings = {**{k: options[k] for k in _RECORDED}, "tasks": self.names, "seeds": self.seeds}
        self.run = {k: options[k] for k in _RUN_OPTIONS}
        self.data = {k: options[k] for k in _DATA_OPTIONS}
        self.modules: dict[str, TaskDataModule | SquadDataModule] = {}

    def module(self, name: str) -> TaskDataModule | SquadDataModule:
        """Task ``name``'s datamodule, loaded, checked and tokenised at its first use."""
        if name not in self.modules:
            dm = task_datamodule(self.encoder, name, **self.data)
            dm.load_raw()
            dm.setup("fit")
            self.modules[name] = dm
        return self.modules[name]

    def run_one(self, name: str, seed: int, **run: Any) -> dict[str, float]:
        """Fine-tune on task ``name`` with ``seed``: every dev metric, in GLUE points. ``run`` overrides training
        options (``accelerator``, ``devices``: the rank's own device)."""
        dm = self.module(name)
        return _run_one(dm, dm.spec, seed, encoder=self.encoder, out=self.out, settings=self.settings,
                        epochs=self.epochs or dm.spec.epochs, **{**self.run, **run})

    def write(self, results: dict[str, TaskResult]) -> None:
        """``config.json`` and the tables :func:`finetune` writes, for ``results`` gathered from the jobs."""
        write_atomic(self.out / "config.json", json.dumps(self.settings, indent=2) + "\n")
        write_results(results, self.out, f"Fine-tuning `{self.encoder}` (median over seeds, GLUE points)")
        for name, result in results.items():
            _record_own_task(get_task(name), self.out)
            if self.data["predict_test"]:  # the jobs kept each seed's test predictions
                _write_test_predictions(get_task(name), result, self.out)


def _check_optimiser(options: dict) -> None:
    """One-line errors for a bad layer-wise decay or schedule, before any compute."""
    check_layerwise_lr_decay(options["layerwise_lr_decay"])
    check_schedule(options["lr_schedule"])


def _family_defaults(encoder: str, options: dict) -> None:
    """Fill the learning rate and the layer-wise decay left unset (None) in ``options`` with the encoder family's
    own, and say which."""
    if options["learning_rate"] is None:
        options["learning_rate"], why = family_learning_rate(encoder)
        print(f"[finetune] learning rate {options['learning_rate']:g} ({why})", flush=True)
    if options["layerwise_lr_decay"] is None:
        options["layerwise_lr_decay"], why = family_layerwise_lr_decay(encoder)
        print(f"[finetune] layer-wise learning-rate decay {options['layerwise_lr_decay']:g} ({why})", flush=True)


def _seed_list(seeds: int | list[int]) -> list[int]:
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError(f"seeds must be at least 1 (or a non-empty list of seeds), got {seeds!r}")
    return seed_list


def family_learning_rate(encoder: str) -> tuple[float, str]:
    """The fine-tuning learning rate of an encoder's family for its size (``objectives.encoder``), recognised
    from its ``config.json`` (model type, hidden width and depth), and why; 1e-4 for another shape."""
    from objectives.encoder import FAMILIES

    try:
        config = json.loads((Path(encoder).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return 1e-4, "the encoder has no readable config.json: the ELECTRA paper's Base rate"
    family = FAMILIES.get(str(config.get("model_type", "")).replace("_", "-"))
    size = family.size_of(config.get("hidden_size"), config.get("num_hidden_layers")) if family else None
    if size is None:
        return 1e-4, f"no isoflop size has this {config.get('model_type')} encoder's shape: the ELECTRA paper's Base rate"
    return family.finetune_learning_rate[size], f"{family.name} {size}'s fine-tuning rate"


def family_layerwise_lr_decay(encoder: str) -> tuple[float, str]:
    """The layer-wise learning-rate decay of the official fine-tuning of an encoder's family, from its config,
    and why (:func:`downstream.classifier.official_layerwise_lr_decay`). The encoder must have passed
    :func:`~downstream.classifier.check_encoder` (its config loads)."""
    from transformers import AutoConfig

    return official_layerwise_lr_decay(AutoConfig.from_pretrained(encoder))


def task_datamodule(encoder: str, name: str, **data_options: Any) -> TaskDataModule | SquadDataModule:
    """Task ``name``'s datamodule: :class:`~downstream.squad.SquadDataModule` for SQuAD (given the options it takes),
    :class:`~downstream.synthetic_tasks.SyntheticTaskDataModule` for a known-answer task on a synthetic source,
    :class:`~downstream.data.TaskDataModule` otherwise; a ``max_seq_length`` of None leaves the module's default."""
    spec = get_task(name)
    cls = SquadDataModule if spec.group == "squad" else SyntheticTaskDataModule if is_synthetic_task(spec) \
        else TaskDataModule
    params = inspect.signature(cls).parameters  # a subclass passing **options on takes TaskDataModule's
    accepted = inspect.signature(TaskDataModule).parameters \
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else params
    return cls(encoder, task=name, **{k: v for k, v in data_options.items()
                                      if k in accepted and not (k == "max_seq_length" and v is None)})


def _prepare_tasks(encoder: str, names: list[str], **data_options: Any) -> dict[str, TaskDataModule | SquadDataModule]:
    """Check the encoder and build every task's datamodule, loading and checking its raw data.

    Runs before any training: a missing tokenizer, file, column or a bad label then fails in one
    line, not after hours of fine-tuning the tasks before it. ``data_options`` are
    :class:`~downstream.data.TaskDataModule` arguments.
    """
    check_encoder(encoder)
    modules: dict[str, TaskDataModule | SquadDataModule] = {}
    for name in names:
        dm = task_datamodule(encoder, name, **data_options)
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
    _record_own_task(spec, out)
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
    if getattr(dm, "test_raw", None):
        _write_test_predictions(spec, result, out)
    return result


def _record_own_task(spec: TaskSpec, out: Path) -> None:
    """A user's own task: what it was taken to be (columns, type, class ids) in ``out/<task>/task.json``."""
    if spec.group == "own":
        write_atomic(out / spec.name / "task.json", json.dumps(describe_own_task(spec.dataset), indent=2) + "\n")


def _write_test_predictions(spec: TaskSpec, result: TaskResult, out: Path) -> None:
    """The median seed's test predictions of a task as the benchmark's files (:mod:`experiments.finetuning.predict`)."""
    folder = write_test_predictions(spec, result, out)
    if folder is not None:
        print(f"[finetune] {spec.name} test predictions (seed {median_seed(result)}, the median dev score): {folder}",
              flush=True)


def _run_one(
    dm: TaskDataModule, spec: TaskSpec, seed: int, *, encoder: str, out: Path, settings: dict, epochs: int,
    max_steps: int, learning_rate: float, layerwise_lr_decay: float | None, weight_decay: float, warmup_fraction: float,
    adam_bias_correction: bool, lr_schedule: str, accelerator: str, devices: int | str, precision: str, wandb: bool,
    progress_bar: bool, wandb_project: str | None = None, wandb_entity: str | None = None,
    wandb_tags: list[str] | None = None, wandb_group: str | None = None,
) -> dict[str, float]:
    """One fine-tuning run; returns every dev metric after training, in GLUE points."""
    L.seed_everything(seed, workers=True, verbose=False)  # head init, dropout and data order
    model = (synthetic_model(spec) or (QuestionAnswering if spec.group == "squad" else SequenceClassification))(
        encoder, task=spec.name, learning_rate=spec.learning_rate or learning_rate, layerwise_lr_decay=layerwise_lr_decay,
        weight_decay=weight_decay, warmup_fraction=warmup_fraction, adam_bias_correction=adam_bias_correction,
        lr_schedule=lr_schedule,
    )
    record = read_record(encoder)  # an isoflop export's provenance: its run, objective and step, for wandb
    loggers = make_loggers(
        out, f"{spec.name}/seed{seed}", wandb=wandb, group=wandb_group or encoder_tag(encoder), job_type="finetune",
        project=wandb_project, entity=wandb_entity,
        run_name=f"{export_name(record, encoder_tag(encoder))}/{spec.name}/seed{seed}",
        tags=[*export_tags(record), tag("task", spec.name), tag("finetune-seed", seed), *user_tags(wandb_tags)],
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
    if getattr(dm, "test_raw", None) and trainer.is_global_zero:  # --predict_test: this seed's test predictions
        save_seed_predictions(model, dm, seed_predictions_path(out, spec.name, seed))
    metrics = {
        key.removeprefix("val/"): 100 * float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("val/") and not key.startswith("val/loss")
    }
    for logger in loggers:
        logger.finalize("success")
    finish_loggers(loggers)  # else the next seed's wandb logger would reuse this run
    return metrics


def build_parser():
    """``isoflop finetune``'s options: :func:`finetune`'s arguments, and ``--config`` for a YAML file of them."""
    from jsonargparse import ActionConfigFile

    from experiments.config import new_parser

    parser = new_parser("isoflop finetune", (finetune.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_function_arguments(finetune, as_group=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``isoflop finetune``; returns the process exit code (errors are reported, in one
    line, by :func:`experiments.cli.main`)."""
    from experiments.config import as_list, parse_args

    cfg = parse_args(build_parser(), sys.argv[1:] if argv is None else list(argv))
    kwargs = {k: v for k, v in cfg.as_dict().items() if k not in ("config", "__path__")}
    kwargs["tasks"] = as_list(kwargs["tasks"], "--tasks")
    results = finetune(**kwargs)
    out = Path(kwargs.get("out_dir") or Path("runs") / "finetune" / encoder_tag(kwargs["encoder"]))
    print((out / "results.md").read_text() if (out / "results.md").exists() else results)
    return 0


if __name__ == "__main__":
    sys.exit(main())  # errors with tracebacks: `isoflop finetune` reports them in one line
