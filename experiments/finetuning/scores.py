"""Fine-tuning scores: one task's scores over seeds (:class:`TaskResult`), the GLUE-style average over
tasks, and the tables a fine-tuning writes (``results.csv``, ``results.md``, ``metrics.csv``)."""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.cache import write_atomic


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

    @property
    def levels(self) -> dict[str, float]:
        """A known-answer task's ``chance`` and Bayes ``ceiling`` (:mod:`downstream.synthetic_tasks`: medians over
        seeds of ``chance_accuracy`` and ``bayes_accuracy``, the same on every seed), in points; {} for another."""
        pairs = (("chance", "chance_accuracy"), ("ceiling", "bayes_accuracy"))
        return {key: statistics.median(self.others[m].values()) for key, m in pairs if self.others.get(m)}


def gap_share(score: float | None, chance: float | None, ceiling: float | None) -> float | None:
    """The share of the gap from chance to the Bayes ceiling that a score closed: 0 at chance, 1 at the ceiling
    (None without both levels, or when the ceiling is no better than chance)."""
    if score is None or chance is None or ceiling is None or ceiling <= chance:
        return None
    return (score - chance) / (ceiling - chance)


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
    lines += _known_answers(results)
    write_atomic(out / "results.md", "\n".join(lines) + "\n")

    # Every metric of every run, long format, for later analysis.
    long = io.StringIO()
    writer = csv.writer(long)
    writer.writerow(["task", "seed", "metric", "value"])
    for r in results.values():
        for name, per_seed in {r.metric: r.scores, **r.others}.items():
            writer.writerows([r.task, seed, name, f"{value:.4f}"] for seed, value in sorted(per_seed.items()))
    write_atomic(out / "metrics.csv", long.getvalue())


def _known_answers(results: dict[str, TaskResult]) -> list[str]:
    """results.md's lines on the known-answer tasks: each median with chance, the ceiling and the gap share."""
    known = [(r, r.levels) for r in results.values() if len(r.levels) == 2]
    if not known:
        return []
    lines = ["", "Known-answer tasks: the median as the share of the gap from chance to the Bayes ceiling it closed "
             "(0: chance, 1: the ceiling):", "", "| task | median | chance | ceiling | gap share |",
             "|---|---:|---:|---:|---:|"]
    for r, v in known:
        share = gap_share(r.median, v["chance"], v["ceiling"])
        lines.append(f"| {r.task} | {r.median:.2f} | {v['chance']:.2f} | {v['ceiling']:.2f} | "
                     f"{'-' if share is None else f'{share:.2f}'} |")
    return lines
