"""``isoflop compare``: pre-train several objectives to the same FLOPs budget, then judge them downstream.

For each objective, on the same data, tokenizer and seed: pre-train until the budget is spent
(``isoflop pretrain --flops_budget``), export it, fine-tune it on the downstream tasks over several
seeds, and collect everything into one directory::

    OUT/results.csv, OUT/results.md    one row per objective: steps, tokens, FLOPs, final validation
                                       loss, each task's median and spread, the average
    OUT/val_loss_vs_flops.png           validation curves against training FLOPs
    OUT/downstream.png                  downstream score per objective
    OUT/<run>/                          each run: csv/ and wandb/ logs, checkpoints/, export/, finetune/

A rerun skips what is finished (an export, a fine-tuning results table) and resumes an interrupted
pre-training from its last checkpoint. With no arguments it compares MLM and ELECTRA at the tiny size
on the embedded corpus and its offline downstream tasks: minutes on a CPU.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from experiments.budget import CONFIG_DIR, load_preset, objective_from_preset, resolve_budget

DEFAULT_OBJECTIVES = ["objectives.MaskedLM", "objectives.ReplacedTokenDetection"]

# Fine-tuning peak learning rate by encoder size: the paper's 3e-4 (Small) and 1e-4 (Base), 5e-5 at
# Large (as BERT-Large); tiny encoders need a larger step to move in a few hundred updates.
FINETUNE_LEARNING_RATE = {"tiny": 2e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}


@dataclass
class RunSpec:
    """One pre-training run of a comparison: a name, an objective class path and its settings."""

    name: str
    objective: str
    init_args: dict = field(default_factory=dict)


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _last(rows: list[dict[str, str]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return values[-1] if values else None


def run_summary(run_dir: Path) -> dict:
    """Steps, tokens, FLOPs and validation curve of a finished run, from its CSV log."""
    rows = _read_metrics(run_dir)
    flops = _last(rows, "train/flops")
    steps = max((int(r["step"]) for r in rows if r.get("train/flops")), default=0) + 1 if flops else 0
    curve = [(int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]
    return {"steps": steps, "tokens": _last(rows, "train/tokens"), "flops": flops,
            "val_loss": curve[-1][1] if curve else None, "curve": curve}


def compare(
    objectives: list[str] | None = None,
    size: str = "tiny",
    config: str = "default",
    budget: str | None = None,
    budget_steps: int = 600,
    tasks: str = "offline",
    seeds: int = 3,
    out_dir: str = "runs/compare",
    data_dir: str | None = None,
    finetune_max_train_examples: int | None = None,
    finetune_epochs: int | None = None,
    finetune_learning_rate: float | None = None,
    flops_convention: str = "actual",
    wandb: bool = True,
    overrides: list[str] | None = None,
    runs: list[RunSpec] | None = None,
) -> list[dict]:
    """Pre-train each objective to one FLOPs budget, fine-tune each, and tabulate and plot the results.

    Args:
        objectives: objective class paths (or preset names); default MLM and ELECTRA.
        size: encoder size for every objective given by class path (``tiny``, ``small``, ``base``, ``large``).
        config: the shared pre-training preset (data, tokenizer, trainer): a name in experiments/configs or a YAML file.
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
        flops_convention: ``actual`` or ``paper`` FLOPs accounting for the budget.
        wandb: log every run to wandb as well (one group per comparison; offline without network).
        overrides: extra ``isoflop pretrain`` arguments for every run (e.g. ``--data.batch_size=16``).
        runs: explicit run specs (used by sweeps); replaces ``objectives``.
    """
    from experiments.cli import available_objectives, main as isoflop_main, resolve_config
    from experiments.export import export_checkpoint
    from experiments.finetune import average, finetune

    out = Path(out_dir)
    config_path = resolve_config(config)
    if runs is None:
        runs = [spec_for(o, size) for o in (objectives or DEFAULT_OBJECTIVES)]
    known = available_objectives()
    for run in runs:  # every check before any compute
        if run.objective not in known:
            raise ValueError(f"unknown objective {run.objective!r}; available: {', '.join(sorted(known))}")
    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"run names must be unique, got {[r.name for r in runs]}")
    # The shared preset as every run will see it (overrides applied): data shape, default size.
    base = apply_overrides(load_preset(config_path), overrides or [])
    base_size = base.get("model", {}).get("init_args", {}).get("size", size)
    if budget is None:
        data = base.get("data", {})

        def step_cost(run: RunSpec) -> float:
            model = {"class_path": run.objective, "init_args": {**base["model"].get("init_args", {}), **run.init_args}}
            return objective_from_preset({"model": model}).flops_per_batch(
                data.get("batch_size", 32), data.get("max_seq_length", 128), flops_convention)

        budget_flops = max(step_cost(run) for run in runs) * budget_steps
    else:
        budget_flops = resolve_budget(budget, flops_convention)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({
        "runs": [r.__dict__ for r in runs], "config": config_path, "budget_flops": budget_flops,
        "flops_convention": flops_convention, "tasks": tasks, "seeds": seeds}, indent=2) + "\n")
    group = f"compare-{out.resolve().name}"
    print(f"[compare] budget {budget_flops:.3e} FLOPs ({flops_convention}) for {', '.join(r.name for r in runs)}", flush=True)

    rows = []
    for run in runs:
        run_dir = out / run.name
        export_dir = run_dir / "export"
        done = run_dir / "pretrain_done.json"
        if not done.exists():
            args = ["pretrain", "--config", config_path, "--model", run.objective, "--run_dir", str(run_dir),
                    "--flops_budget", repr(budget_flops), "--flops_convention", flops_convention,
                    "--wandb", str(wandb).lower(), "--wandb_group", group, "--checkpoint_every", "100"]
            for key, value in run.init_args.items():
                args += [f"--model.init_args.{key}", json.dumps(value) if not isinstance(value, str) else value]
            args += list(overrides or [])
            last = run_dir / "checkpoints" / "last.ckpt"
            if last.exists():
                print(f"[compare] {run.name}: resuming from {last}", flush=True)
                args += ["--ckpt_path", str(last)]
            else:
                print(f"[compare] {run.name}: pre-training", flush=True)
            isoflop_main(args)
            done.write_text(json.dumps(run_summary(run_dir) | {"curve": None}) + "\n")
        if not (export_dir / "config.json").exists():
            for line in export_checkpoint(run_dir / "checkpoints" / "last.ckpt", export_dir, overwrite=True):
                print(f"[compare] {line}", flush=True)
        else:
            print(f"[compare] {run.name}: pre-training done, skipped", flush=True)
        ft_dir = run_dir / "finetune"
        run_size = run.init_args.get("size") or base_size
        if (ft_dir / "results.json").exists():
            print(f"[compare] {run.name}: fine-tuning done, skipped", flush=True)
            results = json.loads((ft_dir / "results.json").read_text())
        else:
            task_results = finetune(str(export_dir), tasks=tasks, seeds=seeds, out_dir=str(ft_dir), data_dir=data_dir,
                                    max_train_examples=finetune_max_train_examples, epochs=finetune_epochs,
                                    learning_rate=finetune_learning_rate or FINETUNE_LEARNING_RATE[run_size],
                                    wandb=wandb)
            results = {name: {"metric": r.metric, "median": r.median, "min": r.min, "max": r.max, "std": r.std,
                              "scores": list(r.scores.values())} for name, r in task_results.items()}
            avg = average(task_results)
            if avg is not None:
                results["average"] = {"metric": avg.metric, "median": avg.median, "min": avg.min, "max": avg.max,
                                      "std": avg.std, "scores": list(avg.scores.values())}
            (ft_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        rows.append({"name": run.name, "objective": run.objective, **run_summary(run_dir), "tasks": results})

    write_tables(rows, out, budget_flops)
    write_plots(rows, out)
    return rows


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """A preset with ``--a.b=v`` / ``--a.b v`` command-line overrides applied (``init_args`` as in YAML),
    so the default budget is computed for the runs as they will really be configured."""
    import copy

    import yaml

    config = copy.deepcopy(config)
    items, i = [], 0
    while i < len(overrides):
        arg = overrides[i]
        if arg.startswith("--") and "=" in arg:
            items.append(arg[2:].split("=", 1))
        elif arg.startswith("--") and i + 1 < len(overrides):
            items.append((arg[2:], overrides[i + 1]))
            i += 1
        i += 1
    for key, value in items:
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


def spec_for(objective: str, size: str) -> RunSpec:
    """A run spec from a class path (at ``size``) or a preset name (its own model settings)."""
    if (CONFIG_DIR / f"{objective}.yaml").exists():
        model = load_preset(objective)["model"]
        return RunSpec(objective, model["class_path"], dict(model.get("init_args", {})))
    if "." not in objective:
        objective = f"objectives.{objective}"
    return RunSpec(objective.rsplit(".", 1)[-1], objective, {"size": size})


def write_tables(rows: list[dict], out: Path, budget: float) -> None:
    """results.csv and results.md: one row per run."""
    task_names = [t for t in rows[0]["tasks"] if t != "average"] if rows else []
    header = ["run", "objective", "steps", "tokens", "flops", "budget_frac", "val_loss"]
    for t in task_names:
        header += [f"{t}_median", f"{t}_min", f"{t}_max"]
    header += ["average"]
    table = []
    for r in rows:
        line = [r["name"], r["objective"], r["steps"], r["tokens"], r["flops"],
                r["flops"] / budget if r["flops"] else None, r["val_loss"]]
        for t in task_names:
            task = r["tasks"].get(t, {})
            line += [task.get("median"), task.get("min"), task.get("max")]
        line += [r["tasks"].get("average", {}).get("median")]
        table.append(line)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3e}" if abs(v) >= 1e5 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    md = [f"# Compute-matched comparison\n\nBudget: {budget:.3e} training FLOPs per objective.\n"]
    cols = ["run", "steps", "tokens", "FLOPs", "val loss"] + [f"{t} (median [min, max])" for t in task_names] + ["average"]
    md.append("| " + " | ".join(cols) + " |")
    md.append("|" + "---|" * len(cols))
    for r, line in zip(rows, table):
        cells = [r["name"], fmt(r["steps"]), fmt(r["tokens"]), fmt(r["flops"]), fmt(r["val_loss"])]
        for t in task_names:
            task = r["tasks"].get(t, {})
            cells.append(f"{fmt(task.get('median'))} [{fmt(task.get('min'))}, {fmt(task.get('max'))}]")
        cells.append(fmt(r["tasks"].get("average", {}).get("median")))
        md.append("| " + " | ".join(cells) + " |")
    md.append("\nval loss is each objective's own training loss on held-out text (not comparable across "
              "objectives); downstream scores are medians over fine-tuning seeds, in points.\n")
    (out / "results.md").write_text("\n".join(md))


def write_plots(rows: list[dict], out: Path) -> None:
    """val_loss_vs_flops.png and downstream.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.5 * max(1, len(rows)), 3.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        per_step = r["flops"] / r["steps"] if r["flops"] and r["steps"] else 0.0
        if r["curve"]:
            x = [step * per_step for step, _ in r["curve"]]
            ax.plot(x, [v for _, v in r["curve"]], marker="o")
        ax.set_title(r["name"])
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("validation loss (own objective)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "val_loss_vs_flops.png", dpi=100)
    plt.close(fig)

    task_names = [t for t in rows[0]["tasks"]] if rows else []
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(task_names) * max(1, len(rows)) / 2, 3.5))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        med = [r["tasks"].get(t, {}).get("median", math.nan) for t in task_names]
        lo = [m - r["tasks"].get(t, {}).get("min", m) for t, m in zip(task_names, med)]
        hi = [r["tasks"].get(t, {}).get("max", m) - m for t, m in zip(task_names, med)]
        ax.bar([j + i * width for j in range(len(task_names))], med, width, yerr=[lo, hi], capsize=3, label=r["name"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(task_names))], task_names)
    ax.set_ylabel("score (median over seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "downstream.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``isoflop compare``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="isoflop compare", description=(__doc__ or "").split("\n\n")[0])
    parser.add_function_arguments(compare, skip={"runs"})
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k != "__path__"}
    try:
        compare(**kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"isoflop compare: error: {err}") from None
    return 0
