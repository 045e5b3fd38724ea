"""``isoflop compare``: pre-train several objectives to the same FLOPs budget, then judge them downstream.

For each objective, on the same data, tokenizer and seed: pre-train until the budget is spent
(:func:`experiments.pretrain.pretrain` with a FLOPs budget), export it, fine-tune it on the downstream
tasks over several seeds, and collect everything into one directory::

    OUT/results.csv, OUT/results.md    one row per objective: steps, tokens, FLOPs, final validation
                                       loss, each task's median and spread, the average
    OUT/val_loss_vs_flops.png           validation curves against training FLOPs
    OUT/downstream.png                  downstream score per objective
    OUT/<run>/                          each run: csv/ and wandb/ logs, checkpoints/, export/, finetune/

Every run starts from one pre-training configuration (``--config``, default ``default``, with any
``--trainer.*``, ``--data.*`` and ``--model.init_args.*`` overrides); only the objective changes, and
the objective's settings that the shared configuration names carry over. Every run's configuration,
the budget and the tasks are checked before the first pre-training starts. A rerun skips what is
finished (a pre-training, an export, a fine-tuning results table) and resumes an interrupted
pre-training from its last checkpoint, exactly (:mod:`experiments.rundir`): a comparison stopped by a
signal is continued by running the same command again. With no arguments it compares MLM and ELECTRA
at the tiny size on the embedded corpus and its offline downstream tasks: minutes on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import Namespace

from datamodules.cache import write_atomic
from experiments.errors import RunError, UsageError
from experiments.results import summary_of, validation_curve, write_plots, write_tables

DEFAULT_OBJECTIVES = ["objectives.MaskedLM", "objectives.ReplacedTokenDetection"]

# Fine-tuning peak learning rate by encoder size: the paper's 3e-4 (Small) and 1e-4 (Base), 5e-5 at
# Large (as BERT-Large); tiny encoders need a larger step to move in a few hundred updates.
FINETUNE_LEARNING_RATE = {"tiny": 2e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}

# The pre-training options a comparison shares (the rest it sets per run: run_dir, budget, resume).
SHARED_RUN_OPTIONS = ("wandb", "flops_convention", "checkpoint_every", "skip_nonfinite", "reschedule")


@dataclass
class RunSpec:
    """One pre-training run of a comparison: a name, an objective class path and its own settings
    (laid over the comparison's shared configuration)."""

    name: str
    objective: str
    init_args: dict = field(default_factory=dict)


def spec_for(objective: str) -> RunSpec:
    """A run spec from a class path (``objectives.X`` or ``X``) or a preset name (its model settings)."""
    from experiments import presets

    if objective in presets.names():
        model = presets.load(objective)["model"]
        return RunSpec(objective, model["class_path"], dict(model.get("init_args") or {}))
    path = objective if "." in objective else f"objectives.{objective}"
    return RunSpec(path.rsplit(".", 1)[-1], path, {})


def plan(base: Namespace, runs: list[RunSpec], out: Path) -> list[tuple[RunSpec, Namespace]]:
    """Each run's full configuration, parsed and checked before any compute."""
    from experiments.config import parse
    from objectives import resolve

    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"run names must be unique, got {[r.name for r in runs]}")
    configs = []
    for run in runs:
        resolve(run.objective)  # an unknown objective lists the available ones
        settings = {"model": {"class_path": run.objective, "init_args": run.init_args}, "run_dir": str(out / run.name)}
        configs.append((run, parse(settings, base=base)))
    return configs


def compare(
    base: Namespace,
    objectives: list[str] | None = None,
    budget: str | None = None,
    budget_steps: int = 600,
    tasks: str = "offline",
    seeds: int = 3,
    out_dir: str = "runs/compare",
    data_dir: str | None = None,
    finetune_max_train_examples: int | None = None,
    finetune_epochs: int | None = None,
    finetune_learning_rate: float | None = None,
    runs: list[RunSpec] | None = None,
) -> list[dict]:
    """Pre-train each objective to one FLOPs budget, fine-tune each, and tabulate and plot the results.

    Args:
        base: the shared pre-training configuration (:func:`experiments.config.parse`).
        objectives: objective class paths (or preset names); default MLM and ELECTRA.
        budget: the FLOPs budget: a number or PRESET:STEPS. Default: what the most expensive objective
            per step takes for ``budget_steps`` steps (every other objective then takes more steps).
        budget_steps: steps of the most expensive objective that make the default budget.
        tasks: downstream tasks: ``offline`` (no network), ``glue``, a task name or a comma list.
        seeds: fine-tuning seeds per task (the median is reported).
        out_dir: output directory; a rerun skips finished runs and resumes interrupted ones.
        data_dir: local GLUE files, for ``tasks=glue`` without network.
        finetune_max_train_examples: cap on fine-tuning examples per task (quick runs).
        finetune_epochs: fine-tuning epochs for every task (default: each task's own).
        finetune_learning_rate: fine-tuning peak learning rate; default by size (tiny 2e-3, small 3e-4,
            base 1e-4, large 5e-5).
        runs: explicit run specs (used by sweeps); replaces ``objectives``.
    """
    from downstream.tasks import resolve_tasks

    out = Path(out_dir)
    task_names = resolve_tasks(tasks)  # every check before any compute
    check_tasks(task_names, data_dir, seeds)
    configs = plan(base, runs or [spec_for(o) for o in objectives or DEFAULT_OBJECTIVES], out)
    convention = base.flops_convention
    budget_flops = check_budget(configs, budget, budget_steps, convention, f"compare-{out.resolve().name}")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.json", json.dumps({
        "runs": [r.__dict__ for r, _ in configs], "budget_flops": budget_flops, "flops_convention": convention,
        "tasks": task_names, "seeds": seeds}, indent=2) + "\n")
    print(f"[compare] budget {budget_flops:.3e} FLOPs ({convention}) for {', '.join(r.name for r, _ in configs)}",
          flush=True)
    finetune_args = dict(tasks=task_names, seeds=seeds, data_dir=data_dir, max_train_examples=finetune_max_train_examples,
                         epochs=finetune_epochs, learning_rate=finetune_learning_rate, wandb=base.wandb)
    rows = []
    for run, cfg in configs:
        summary = pretrain_once(run, cfg)
        results = finetune_once(run, cfg, finetune_args)
        rows.append({"name": run.name, "objective": run.objective, **summary, "curve": validation_curve(Path(cfg.run_dir)),
                     "tasks": results})
    write_tables(rows, out, budget_flops)
    write_plots(rows, out)
    print(f"[compare] results in {out}: results.md, results.csv, val_loss_vs_flops.png, downstream.png", flush=True)
    return rows


def check_tasks(task_names: list[str], data_dir: str | None, seeds: int) -> None:
    """Every downstream task's data can be had, before any pre-training: local GLUE files under
    ``data_dir``, or the hub (offline, a one-line error says to use ``--data_dir``)."""
    from downstream.glue import find_local_files, load_hub_task
    from downstream.tasks import get_task

    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    for name in task_names:
        spec = get_task(name)
        if spec.group == "glue" and data_dir:
            find_local_files(spec, data_dir)
        elif spec.group == "glue":
            load_hub_task(spec)  # from the hub's cache, or downloaded now rather than after the pre-training


def check_budget(configs: list[tuple[RunSpec, Namespace]], budget: str | None, budget_steps: int, convention: str,
                 group: str) -> float:
    """The comparison's budget in FLOPs (set in every run's configuration), after checking that every
    run's configuration is sound (``preflight``), that the budget buys at least one step of every run,
    and that a run directory left by an earlier invocation holds the same run (``rundir.plan``)."""
    from experiments import rundir
    from experiments.budget import resolve_budget, step_flops
    from experiments.config import dump
    from experiments.pretrain import preflight

    if budget_steps < 1:
        raise UsageError(f"--budget_steps must be at least 1, got {budget_steps}")
    for _, cfg in configs:
        cfg.flops_budget, cfg.wandb_group = None, group
        preflight(cfg)
    steps = {run.name: step_flops(cfg, convention) for run, cfg in configs}
    budget_flops = max(steps.values()) * budget_steps if budget is None else resolve_budget(budget, convention)
    for name, one_step in steps.items():
        if budget_flops < one_step:
            raise UsageError(f"--budget {budget} ({budget_flops:.3e} FLOPs) is less than one training step of {name} "
                             f"({one_step:.3e} FLOPs, {convention} convention)")
    for _, cfg in configs:
        cfg.flops_budget = repr(budget_flops)
        rundir.plan(Path(cfg.run_dir), dump(cfg), None, cfg.reschedule)
    return budget_flops


def pretrain_once(run: RunSpec, cfg: Namespace) -> dict:
    """Pre-train and export a run, unless a previous invocation did; an interrupted one resumes from its
    last checkpoint (:func:`experiments.pretrain.pretrain` does, finding it in the run's directory)."""
    from experiments import rundir
    from experiments.config import dump
    from experiments.export import export_checkpoint
    from experiments.pretrain import RunResult, pretrain

    run_dir, export_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "export"
    done = rundir.plan(run_dir, dump(cfg), None, cfg.reschedule).finished
    if done is not None:
        print(f"[compare] {run.name}: pre-training done, skipped", flush=True)
        result = RunResult.from_json(done)
    else:
        print(f"[compare] {run.name}: pre-training", flush=True)
        result = pretrain(cfg)
        if not result.finished:
            raise RunError(f"pre-training of {run.name} stopped before its budget (see {run_dir})")
    if not (export_dir / "config.json").exists():
        for line in export_checkpoint(run_dir / "checkpoints" / "last.ckpt", export_dir, overwrite=True):
            print(f"[compare] {line}", flush=True)
    return summary_of(result.to_json())


def finetune_once(run: RunSpec, cfg: Namespace, finetune_args: dict) -> dict:
    """Fine-tune a run's export on the tasks, unless a previous invocation did; the results per task."""
    from experiments.finetune import average, finetune

    ft_dir = Path(cfg.run_dir) / "finetune"
    if (ft_dir / "results.json").exists():
        print(f"[compare] {run.name}: fine-tuning done, skipped", flush=True)
        return json.loads((ft_dir / "results.json").read_text())
    args = dict(finetune_args)
    args["learning_rate"] = args["learning_rate"] or FINETUNE_LEARNING_RATE[cfg.model.init_args.size]
    task_results = finetune(str(Path(cfg.run_dir) / "export"), out_dir=str(ft_dir), **args)
    avg = average(task_results)
    results = {name: {"metric": r.metric, "median": r.median, "min": r.min, "max": r.max, "std": r.std,
                      "scores": list(r.scores.values())}
               for name, r in {**task_results, **({"average": avg} if avg is not None else {})}.items()}
    write_atomic(ft_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def build_parser():
    """``isoflop compare``'s options: the shared pre-training configuration (``--config``, ``--trainer.*``,
    ``--model.*``, ``--data.*``, as ``isoflop pretrain``) and the comparison's own."""
    from experiments.config import build_parser as pretrain_parser

    parser = pretrain_parser(prog="isoflop compare", run_options=SHARED_RUN_OPTIONS)
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_function_arguments(compare, skip={"base", "runs"}, as_group=False)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``isoflop compare``."""
    import inspect

    from experiments.config import DEFAULT_PRESET, parse, parse_args

    if not any(a.split("=", 1)[0] == "--config" for a in argv):
        argv = ["--config", DEFAULT_PRESET, *argv]
    args = parse_args(build_parser(), argv).as_dict()
    own = {k: args[k] for k in inspect.signature(compare).parameters if k not in ("base", "runs")}
    shared = {k: args[k] for k in ("seed_everything", "trainer", "model", "data", *SHARED_RUN_OPTIONS)}
    compare(parse(shared), **own)
    return 0
