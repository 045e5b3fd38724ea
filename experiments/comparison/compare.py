"""``isoflop compare``: pre-train several objectives to the same FLOPs budget, then judge them downstream.

For each objective, on the same data, tokenizer and seed: pre-train until the budget is spent
(:func:`experiments.run.pretrain.pretrain` with a FLOPs budget), export it, fine-tune it on the downstream
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
pre-training from its last checkpoint, exactly (:mod:`experiments.run.rundir`): a comparison stopped by a
signal is continued by running the same command again. With no arguments it compares MLM and ELECTRA
at the tiny size on the embedded corpus and its offline downstream tasks: minutes on a CPU.

On several processes (``--trainer.devices``, ``--trainer.num_nodes``, ``--trainer.strategy``; a plain
command, ``torchrun`` or ``srun``) the ranks are started once (:mod:`experiments.run.ranks`) and every rank
takes part in every pre-training run; rank 0 exports each run behind a barrier, and once the last
pre-training is done the other ranks leave and rank 0 fine-tunes, tabulates and plots, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import Namespace

from datamodules.cache import write_atomic
from experiments.errors import RunError, UsageError
from experiments.comparison.results import summary_of, validation_curve, write_plots, write_tables

DEFAULT_OBJECTIVES = ["objectives.MaskedLM", "objectives.ReplacedTokenDetection"]

# Fine-tuning peak learning rate by encoder size: the paper's 3e-4 (Small) and 1e-4 (Base), 5e-5 at
# Large (as BERT-Large); tiny encoders need a larger step to move in a few hundred updates.
FINETUNE_LEARNING_RATE = {"tiny": 2e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}

# The pre-training options a comparison shares (the rest it sets per run: run_dir, budget, resume).
SHARED_RUN_OPTIONS = ("wandb", "flops_convention", "checkpoint_every", "skip_nonfinite", "reschedule")


@dataclass
class RunSpec:
    """One pre-training run of a comparison: a name, an objective class path and its own settings
    (laid over the comparison's shared configuration); ``group`` names the objective over pre-training
    seeds (default: the name) and ``seed`` is the run's pre-training seed index."""

    name: str
    objective: str
    init_args: dict = field(default_factory=dict)
    group: str | None = None
    seed: int = 0


def spec_for(objective: str) -> RunSpec:
    """A run spec from a class path (``objectives.X`` or ``X``) or a preset name (its model settings)."""
    from experiments import presets

    if objective in presets.names():
        model = presets.load(objective)["model"]
        return RunSpec(objective, model["class_path"], dict(model.get("init_args") or {}))
    path = objective if "." in objective else f"objectives.{objective}"
    return RunSpec(path.rsplit(".", 1)[-1], path, {})


def with_seeds(runs: list[RunSpec], pretrain_seeds: int) -> list[RunSpec]:
    """Each run repeated over ``pretrain_seeds`` pre-training seeds: ``NAME`` alone for one seed (so a
    comparison's directories do not change), ``NAME-seedK`` for several, all in the group ``NAME``."""
    if pretrain_seeds < 1:
        raise UsageError(f"--pretrain_seeds must be at least 1, got {pretrain_seeds}")
    return [RunSpec(r.name if pretrain_seeds == 1 else f"{r.name}-seed{k}", r.objective, r.init_args,
                    r.group or r.name, k) for r in runs for k in range(pretrain_seeds)]


def plan(base: Namespace, runs: list[RunSpec], out: Path) -> list[tuple[RunSpec, Namespace]]:
    """Each run's full configuration, parsed and checked before any compute. A run of seed index ``k``
    pre-trains with ``seed_everything`` + ``k`` (weights, masks, sampling, dropout and data order)."""
    from experiments.config import parse
    from objectives import resolve

    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"run names must be unique, got {[r.name for r in runs]}")
    configs = []
    for run in runs:
        resolve(run.objective)  # an unknown objective lists the available ones
        settings = {"model": {"class_path": run.objective, "init_args": run.init_args}, "run_dir": str(out / run.name),
                    "seed_everything": int(base.seed_everything or 0) + run.seed}
        configs.append((run, parse(settings, base=base)))
    return configs


@dataclass
class Rung:
    """One budget of a comparison (one rung of an isoFLOP ladder): its directory, runs and FLOPs."""

    out: Path
    configs: list[tuple[RunSpec, Namespace]]
    budget: float = 0.0
    summaries: list[dict] = field(default_factory=list)


def compare(
    base: Namespace,
    objectives: list[str] | None = None,
    budget: str | None = None,
    budget_steps: int = 600,
    budgets: str | None = None,
    pretrain_seeds: int = 1,
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
        budgets: an isoFLOP ladder instead of one budget: a comma list of budgets (each a number or
            PRESET:STEPS, e.g. ``1e13,3e13,1e14``). The whole comparison runs at each, in
            ``OUT/budget-<FLOPs>/``; ``OUT/ladder.md`` and ``OUT/ladder.png`` put each objective's
            downstream score and own validation loss against FLOPs, with the crossover budgets.
        pretrain_seeds: pre-training seeds per objective (the fine-tuning seeds are nested in each);
            the statistics pool them, resampling pre-training seeds first.
        tasks: downstream tasks: ``offline`` (no network), ``glue``, a task name or a comma list.
        seeds: fine-tuning seeds per task and pre-trained encoder (the median is reported).
        out_dir: output directory; a rerun skips finished runs and resumes interrupted ones.
        data_dir: local GLUE files, for ``tasks=glue`` without network.
        finetune_max_train_examples: cap on fine-tuning examples per task (quick runs).
        finetune_epochs: fine-tuning epochs for every task (default: each task's own).
        finetune_learning_rate: fine-tuning peak learning rate; default by size (tiny 2e-3, small 3e-4,
            base 1e-4, large 5e-5).

    Returns:
        The rows of the comparison (of the last budget of a ladder); ``[]`` on every rank but rank 0.
    """
    from downstream.tasks import resolve_tasks
    from experiments.run import ranks

    out = Path(out_dir)
    task_names = resolve_tasks(tasks)  # every check before any compute
    check_tasks(task_names, data_dir, seeds)
    ranks.check_launch(base.trainer, "compare")
    specs = with_seeds(runs or [spec_for(o) for o in objectives or DEFAULT_OBJECTIVES], pretrain_seeds)
    rungs = plan_rungs(base, specs, out, budget, budget_steps, budgets)
    with ranks.started(base.trainer) as world:  # every rank, for every pre-training run
        for rung in rungs:
            if world.is_zero:
                write_settings(rung, base.flops_convention, task_names, seeds, pretrain_seeds)
            rung.summaries = [pretrain_once(run, cfg, world) for run, cfg in rung.configs]
    if not world.is_zero:
        return []  # the other ranks leave; rank 0 fine-tunes, tabulates and plots, once
    finetune_args = dict(tasks=task_names, seeds=seeds, data_dir=data_dir, max_train_examples=finetune_max_train_examples,
                         epochs=finetune_epochs, learning_rate=finetune_learning_rate, wandb=base.wandb)
    reference = paper_reference(base.flops_convention)
    ladder = [(rung, finish(rung, finetune_args, reference)) for rung in rungs]
    if budgets is not None:
        write_ladder(ladder, out)
    return ladder[-1][1]


def plan_rungs(base: Namespace, specs: list[RunSpec], out: Path, budget: str | None, budget_steps: int,
               budgets: str | None) -> list[Rung]:
    """Every budget's runs, each configuration checked and its budget set, before any compute."""
    convention, group = base.flops_convention, f"compare-{out.resolve().name}"
    if budgets is None:
        rung = Rung(out, plan(base, specs, out))
        rung.budget = check_budget(rung.configs, budget, budget_steps, convention, group)
        return [rung]
    if budget is not None:
        raise UsageError("give --budget or --budgets, not both")
    from experiments.run.budget import resolve_budget

    values = [b.strip() for b in str(budgets).split(",") if b.strip()]
    flops = sorted({resolve_budget(b, convention) for b in values})
    if len(flops) < 2:
        raise UsageError(f"--budgets needs at least two different budgets (a comma list), got {budgets!r}")
    rungs = []
    for value in flops:
        rung_out = out / f"budget-{value:.3g}".replace("+", "")
        rung = Rung(rung_out, plan(base, specs, rung_out))
        rung.budget = check_budget(rung.configs, repr(value), budget_steps, convention, f"{group}-{rung_out.name}",
                                   option="--budgets item")
        rungs.append(rung)
    return rungs


def write_settings(rung: Rung, convention: str, task_names: list[str], seeds: int, pretrain_seeds: int) -> None:
    """OUT/compare.json: what the comparison at this budget runs (the notebook reads it back)."""
    rung.out.mkdir(parents=True, exist_ok=True)
    write_atomic(rung.out / "compare.json", json.dumps({
        "runs": [r.__dict__ for r, _ in rung.configs], "budget_flops": rung.budget, "flops_convention": convention,
        "tasks": task_names, "seeds": seeds, "pretrain_seeds": pretrain_seeds}, indent=2) + "\n")
    names = ", ".join(dict.fromkeys(r.group or r.name for r, _ in rung.configs))
    print(f"[compare] budget {rung.budget:.3e} FLOPs ({convention}) for {names}"
          + (f", {pretrain_seeds} pre-training seeds each" if pretrain_seeds > 1 else ""), flush=True)


def finish(rung: Rung, finetune_args: dict, reference: tuple[str, float] | None) -> list[dict]:
    """Fine-tune every run of a budget, then write its table and plots (rank 0 only)."""
    rows = []
    for (run, cfg), summary in zip(rung.configs, rung.summaries):
        results = finetune_once(run, cfg, finetune_args)
        rows.append({"name": run.name, "objective": run.objective, "group": run.group or run.name, "seed": run.seed,
                     **summary, "curve": validation_curve(Path(cfg.run_dir)), "tasks": results})
    write_tables(rows, rung.out, rung.budget, reference)
    write_plots(rows, rung.out)
    print(f"[compare] results in {rung.out}: results.md, results.csv, val_loss_vs_flops.png, downstream.png",
          flush=True)
    return rows


def write_ladder(ladder: list[tuple[Rung, list[dict]]], out: Path) -> None:
    """OUT/ladder.md, OUT/ladder.png and OUT/ladder.json (the budgets' directories, for the notebook)."""
    from experiments.comparison.results import ladder_markdown, plot_ladder, save_figure

    steps = [(rung.budget, rows) for rung, rows in ladder]
    write_atomic(out / "ladder.md", ladder_markdown(steps))
    save_figure(plot_ladder(steps), out / "ladder.png")
    write_atomic(out / "ladder.json", json.dumps({"budgets": [
        {"budget_flops": rung.budget, "dir": rung.out.name} for rung, _ in ladder]}, indent=2) + "\n")
    print(f"[compare] isoFLOP ladder in {out}: ladder.md, ladder.png", flush=True)


# The paper's smallest point, against which every budget is stated: ELECTRA-Small (paper Table 1: 1M steps of
# 128 x 128 tokens, 1.4e18 FLOPs) trained for 1/16 of its schedule, the left end of the paper's compute curves
# (Figure 1): 62,500 steps.
PAPER_REFERENCE = ("ELECTRA-Small at 1/16 of its schedule", "electra-small:62500")


def paper_reference(convention: str) -> tuple[str, float] | None:
    """(name, FLOPs) of :data:`PAPER_REFERENCE` in the comparison's convention."""
    from experiments.run.budget import resolve_budget

    try:
        return PAPER_REFERENCE[0], resolve_budget(PAPER_REFERENCE[1], convention)
    except (UsageError, ValueError):
        return None


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
                 group: str, option: str = "--budget") -> float:
    """The comparison's budget in FLOPs (set in every run's configuration), after checking that every
    run's configuration is sound (``preflight``), that the budget buys at least one step of every run,
    and that a run directory left by an earlier invocation holds the same run (``rundir.plan``)."""
    from experiments.run import rundir
    from experiments.run.budget import resolve_budget, step_flops
    from experiments.config import dump
    from experiments.run.pretrain import preflight

    if budget_steps < 1:
        raise UsageError(f"--budget_steps must be at least 1, got {budget_steps}")
    for _, cfg in configs:
        cfg.flops_budget, cfg.wandb_group = None, group
        preflight(cfg)
    steps = {run.name: step_flops(cfg, convention) for run, cfg in configs}
    budget_flops = max(steps.values()) * budget_steps if budget is None else resolve_budget(budget, convention)
    for name, one_step in steps.items():
        if budget_flops < one_step:
            raise UsageError(f"{option} {budget} ({budget_flops:.3e} FLOPs) is less than one training step of {name} "
                             f"({one_step:.3e} FLOPs, {convention} convention)")
    for _, cfg in configs:
        cfg.flops_budget = repr(budget_flops)
        rundir.plan(Path(cfg.run_dir), dump(cfg), None, cfg.reschedule)
    return budget_flops


def pretrain_once(run: RunSpec, cfg: Namespace, world) -> dict:
    """Pre-train (every rank) and export (rank 0) a run, unless a previous invocation did; an interrupted
    one resumes from its last checkpoint (:func:`experiments.run.pretrain.pretrain` does, finding it in the
    run's directory). Rank 0's view of the run directory decides for every rank."""
    from experiments.run import rundir
    from experiments.config import dump
    from experiments.run.export import export_checkpoint
    from experiments.run.pretrain import RunResult, pretrain

    run_dir, export_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "export"
    done = world.broadcast(rundir.plan(run_dir, dump(cfg), None, cfg.reschedule).finished if world.is_zero else None)
    if done is not None:
        _say(world, f"[compare] {run.name}: pre-training done, skipped")
        result = RunResult.from_json(done)
    else:
        _say(world, f"[compare] {run.name}: pre-training")
        result = pretrain(cfg)
        if not result.finished:
            raise RunError(f"pre-training of {run.name} stopped before its budget (see {run_dir})")
    if world.is_zero and not (export_dir / "config.json").exists():
        for line in export_checkpoint(run_dir / "checkpoints" / "last.ckpt", export_dir, overwrite=True):
            print(f"[compare] {line}", flush=True)
    world.barrier(f"the export of {run.name}")
    return summary_of(result.to_json())


def _say(world, text: str) -> None:
    if world.is_zero:
        print(text, flush=True)


def finetune_once(run: RunSpec, cfg: Namespace, finetune_args: dict) -> dict:
    """Fine-tune a run's export on the tasks, unless a previous invocation did; the results per task."""
    from experiments.finetuning.finetune import average, finetune

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
