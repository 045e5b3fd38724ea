"""Downstream score against pre-training FLOPs within each run of a comparison (``--eval_every_flops``).

The ELECTRA paper plots GLUE score against pre-training FLOPs along its runs (Figure 3, right: ELECTRA against BERT
as training goes on). With ``--eval_every_flops X`` (or ``--eval_every_steps N``) each pre-training run saves its
weights every ``X`` FLOPs, and at its start (:mod:`experiments.run.curve`); ``isoflop compare`` exports each such
point to ``<run>/curve/step-<N>/export`` and fine-tunes it there (``.../finetune``) with the comparison's own
fine-tuning (tasks, seeds, recipe), spread over the ranks as the final exports are. The run's final export is the
last point of its curve. Then, per budget::

    OUT/curve.csv, OUT/curve.md     one row per run and point: step, FLOPs, tokens, each task's median and range
                                    over the fine-tuning seeds, the average
    OUT/downstream_vs_flops.png     one panel per task (and the average): median score against training FLOPs per
                                    run, the fine-tuning seeds' range shaded, the majority-class baseline dashed

Every point costs one fine-tuning of every task and seed: a curve of ``k`` points costs ``k + 1`` times the
fine-tuning of the comparison without it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from datamodules.cache import write_atomic
from experiments.errors import UsageError
from experiments.run.curve import CURVE_DIR, run_points

POINTS_DIR = "curve"  # <run_dir>/curve/step-<N>/{export,finetune}
MAX_POINTS = 50


def check_points(every_flops: float | None, budget: float, steps: list[int], every_steps: int | None) -> None:
    """One-line errors, before any compute, for a curve with no point inside the run or too many to fine-tune:
    ``steps`` are the runs' step counts at ``budget``."""
    if every_flops is not None:
        count, what = int(budget // every_flops), f"--eval_every_flops {every_flops:.3g}"
    elif every_steps is not None:
        count, what = max(steps) // every_steps, f"--eval_every_steps {every_steps}"
    else:
        return
    if count < 1:
        raise UsageError(f"{what} gives no point before the end of the runs (budget {budget:.3e} FLOPs, "
                         f"{max(steps)} steps at most): give a smaller interval")
    if count > MAX_POINTS:
        raise UsageError(f"{what} gives {count} points per run, each fine-tuned on every task and seed: give an "
                         f"interval that makes at most {MAX_POINTS}")


def point_dir(run_dir: Path, step: int) -> Path:
    return run_dir / POINTS_DIR / f"step-{step}"


def export_points(run_dir: Path, final_step: int) -> list[str]:
    """Export every curve checkpoint of a run before its final step not exported yet (rank 0); lines saying what."""
    from experiments.run.export import export_checkpoint

    lines = []
    for point in run_points(run_dir):
        target = point_dir(run_dir, point["step"]) / "export"
        if point["step"] >= final_step or (target / "config.json").exists():
            continue
        export_checkpoint(run_dir / CURVE_DIR / point["checkpoint"], target, overwrite=True)
        lines.append(f"exported the curve point at step {point['step']} ({point['flops']:.3e} FLOPs) to {target}")
    return lines


def exported_points(run_dir: Path) -> list[dict]:
    """A run's curve points that are exported (:func:`export_points`), by step."""
    return [p for p in run_points(run_dir) if (point_dir(run_dir, p["step"]) / "export" / "config.json").exists()]


def curve_exports(name: str, run_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, export directory, fine-tuning directory) of each exported curve point of run ``name``."""
    return [(f"{name} at step {p['step']}", point_dir(run_dir, p["step"]) / "export",
             point_dir(run_dir, p["step"]) / "finetune") for p in exported_points(run_dir)]


def row_points(row: dict, points: list[tuple[dict, dict]]) -> list[dict]:
    """A run's curve: each (point, its fine-tuning results), then its final export (``row``), by FLOPs."""
    curve = [{"step": p["step"], "flops": p["flops"], "tokens": p["tokens"], "tasks": results} for p, results in points]
    curve.append({"step": row["steps"], "flops": row["flops"], "tokens": row["tokens"], "tasks": row["tasks"]})
    return sorted(curve, key=lambda p: p["flops"])


def curve_tasks(rows: list[dict]) -> list[str]:
    """The tasks of the curves, the average last (when there are several tasks)."""
    names = list(dict.fromkeys(t for r in rows for p in r.get("points", []) for t in p["tasks"]))
    tasks = [t for t in names if t != "average"]
    return tasks + (["average"] if "average" in names and len(tasks) > 1 else [])


def curve_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(header, lines) of curve.csv: one line per run and point."""
    tasks = curve_tasks(rows)
    header = ["run", "group", "seed", "step", "flops", "tokens"] + [f"{t}_{s}" for t in tasks
                                                                     for s in ("median", "min", "max")]
    lines = []
    for r in rows:
        for p in r.get("points", []):
            line = [r["name"], r.get("group", r["name"]), r.get("seed", 0), p["step"], p["flops"], p["tokens"]]
            line += [p["tasks"].get(t, {}).get(s) for t in tasks for s in ("median", "min", "max")]
            lines.append(line)
    return header, lines


def curve_markdown(rows: list[dict]) -> str:
    """curve.md: each run's median score per task (and the average) at each point of its curve."""
    tasks = curve_tasks(rows)
    md = ["# Downstream score against pre-training FLOPs", "",
          "Each point is the run's weights at that many training FLOPs, exported and fine-tuned with the comparison's "
          "own fine-tuning: the median over fine-tuning seeds (min to max in curve.csv); the last point of each run "
          "is its final export.", "",
          "| run | step | FLOPs | tokens | " + " | ".join(tasks) + " |",
          "|---|---:|---:|---:|" + "---:|" * len(tasks)]
    for r in rows:
        for p in r.get("points", []):
            scores = [p["tasks"].get(t, {}).get("median") for t in tasks]
            md.append(f"| {r['name']} | {p['step']} | {p['flops']:.3e} | {p['tokens']} | "
                      + " | ".join("-" if s is None else f"{s:.1f}" for s in scores) + " |")
    return "\n".join(md) + "\n"


def plot_curves(rows: list[dict]):
    """downstream_vs_flops.png: one panel per task (and the average), each run's median against training FLOPs
    with its fine-tuning seeds' range shaded, and the task's majority-class baseline dashed."""
    import matplotlib.pyplot as plt

    from experiments.comparison.results import majority_baseline

    tasks = curve_tasks(rows)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in rows:
            points = [p for p in r.get("points", []) if task in p["tasks"]]
            x = [p["flops"] for p in points]
            line, = ax.plot(x, [p["tasks"][task]["median"] for p in points], marker="o", label=r["name"])
            ax.fill_between(x, [p["tasks"][task]["min"] for p in points], [p["tasks"][task]["max"] for p in points],
                            color=line.get_color(), alpha=0.15)
        majority = majority_baseline(task) if task != "average" else None
        if majority is not None:
            ax.axhline(majority, color="black", linestyle="--", linewidth=1, label="majority class")
        ax.set(title=task, xlabel="pre-training FLOPs", ylabel="score (median over fine-tuning seeds)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_curves(rows: list[dict], out: Path) -> list[str]:
    """curve.csv, curve.md, curve.json and downstream_vs_flops.png of a budget whose rows have curves (``points``);
    the names of the files written (none without curves)."""
    from experiments.comparison.results import save_figure

    if not any(len(r.get("points", [])) > 1 for r in rows):
        return []
    header, lines = curve_table(rows)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *lines])
    write_atomic(out / "curve.csv", buffer.getvalue())
    write_atomic(out / "curve.md", curve_markdown(rows))
    write_atomic(out / "curve.json", json.dumps([{"name": r["name"], "points": r.get("points", [])} for r in rows],
                                                indent=2) + "\n")
    save_figure(plot_curves(rows), out / "downstream_vs_flops.png")
    return ["curve.md", "curve.csv", "downstream_vs_flops.png"]
