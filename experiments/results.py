"""The results of a comparison: its table (results.csv, results.md), its plots, and reading a finished
comparison directory back (the notebook does).

Every function here reads the *rows* a comparison produces, one per run: its name and objective, what
its pre-training did (steps, tokens, FLOPs, final validation loss), its validation curve, and its
downstream results per task.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from datamodules.cache import write_atomic


def summary_of(result: dict) -> dict:
    """The columns of a run in the results table, from its saved result."""
    return {"steps": result["steps"], "tokens": result["tokens"], "flops": result["flops"],
            "val_loss": (result.get("val") or {}).get("val/loss", result.get("val_loss"))}


def validation_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, training FLOPs, validation loss) of every validation of a run, from its CSV log (each
    validation row carries the training FLOPs it was taken at)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        # One point per step, the last logged: a leg that crashed after its last checkpoint logged steps
        # that the resumed leg logs again.
        points = {int(r["step"]): (int(r["step"]), float(r["train/flops"]), float(r["val/loss"]))
                  for r in csv.DictReader(f) if r.get("val/loss")}
    return [points[step] for step in sorted(points)]


def load_rows(out_dir: str | Path) -> list[dict]:
    """The rows of a finished comparison directory (what ``compare`` returned), for the notebook."""
    out = Path(out_dir)
    settings = json.loads((out / "compare.json").read_text())
    rows = []
    for run in settings["runs"]:
        run_dir = out / run["name"]
        legacy = run_dir / "pretrain_done.json"  # written by isoflop before result.json
        summary = summary_of(json.loads((run_dir / "result.json" if not legacy.exists() else legacy).read_text()))
        tasks = json.loads((run_dir / "finetune" / "results.json").read_text())
        rows.append({"name": run["name"], "objective": run["objective"], **summary,
                     "curve": validation_curve(run_dir), "tasks": tasks})
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if abs(v) >= 1e5 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def write_tables(rows: list[dict], out: Path, budget: float) -> None:
    """results.csv and results.md: one row per run."""
    task_names = [t for t in rows[0]["tasks"] if t != "average"] if rows else []
    header = ["run", "objective", "steps", "tokens", "flops", "budget_frac", "val_loss"]
    header += [f"{t}_{s}" for t in task_names for s in ("median", "min", "max")] + ["average"]
    table = []
    for r in rows:
        line = [r["name"], r["objective"], r["steps"], r["tokens"], r["flops"],
                r["flops"] / budget if r["flops"] else None, r["val_loss"]]
        line += [r["tasks"].get(t, {}).get(s) for t in task_names for s in ("median", "min", "max")]
        table.append(line + [r["tasks"].get("average", {}).get("median")])
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *table])
    write_atomic(out / "results.csv", buffer.getvalue())

    md = [f"# Compute-matched comparison\n\nBudget: {budget:.3e} training FLOPs per objective.\n"]
    cols = ["run", "steps", "tokens", "FLOPs", "val loss"] + [f"{t} (median [min, max])" for t in task_names] + ["average"]
    md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["name"], _fmt(r["steps"]), _fmt(r["tokens"]), _fmt(r["flops"]), _fmt(r["val_loss"])]
        for t in task_names:
            task = r["tasks"].get(t, {})
            cells.append(f"{_fmt(task.get('median'))} [{_fmt(task.get('min'))}, {_fmt(task.get('max'))}]")
        cells.append(_fmt(r["tasks"].get("average", {}).get("median")))
        md.append("| " + " | ".join(cells) + " |")
    md.append("\nval loss is each objective's own training loss on held-out text (not comparable across "
              "objectives); downstream scores are medians over fine-tuning seeds, in points.\n")
    write_atomic(out / "results.md", "\n".join(md))


def plot_validation(rows: list[dict]):
    """Each run's validation loss against training FLOPs (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.5 * max(1, len(rows)), 3.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        if r["curve"]:
            ax.plot([f for _, f, _ in r["curve"]], [v for _, _, v in r["curve"]], marker="o")
        ax.set(title=r["name"], xlabel="training FLOPs", ylabel="validation loss (own objective)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_downstream(rows: list[dict]):
    """Each run's median downstream score per task, with min-max bars (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    task_names = list(rows[0]["tasks"]) if rows else []
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
    return fig


def write_plots(rows: list[dict], out: Path) -> None:
    """val_loss_vs_flops.png and downstream.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, fig in (("val_loss_vs_flops.png", plot_validation(rows)), ("downstream.png", plot_downstream(rows))):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        write_atomic(out / name, buffer.getvalue())
