"""One wandb view of a comparison: its summary run, and a report of it on request.

Every run of ``isoflop compare`` logs to one wandb group, ``compare-<OUT's name>`` (every budget of a ladder
too): the pre-training runs with job type ``pretrain``, the fine-tuning runs (every task, seed and curve point)
with job type ``finetune``, each tagged ``objective:``, ``encoder:``, ``budget:``, ``seed:`` (and the fine-tuning's
``task:``, ``finetune-seed:``, ``pretrain-step:``), then the user's ``--wandb_tags``. Once the tables and plots are
written, a run of job type ``summary`` (:func:`log_summary`) logs into the same group:

- each budget's results table (``results.csv``) as a ``wandb.Table`` (``results``; ``<budget>/results`` on a
  ladder), and its curve table (``curve``) when the runs have curves (``--eval_every_flops``);
- every plot of the comparison (``plots/<name>``) as an image;
- the tables, ``results.md`` and the settings as an artifact of type ``comparison`` (``<group>-results``), and,
  with ``--wandb_log_exports true``, each run's export as an artifact of type ``model``;
- each objective's average downstream score in the run's summary.

``--wandb_report true`` then creates a wandb report of the comparison (the validation loss of every
pre-training run against training FLOPs, the results table) through ``wandb-workspaces``
(``pip install 'isoflop[report]'``), when wandb is online; offline or without the package it says it skipped
(an offline comparison's runs are uploaded later with ``wandb sync OUT/**/wandb/offline-run-*``; the report is
then made from the synced runs with the same command).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

SUMMARY_JOB = "summary"
TABLE_FILES = ("results.md", "results.csv", "compare.json", "curve.md", "curve.csv", "curve.json")
LADDER_FILES = ("ladder.md", "ladder.json", "ladder.png")


def group_name(out: Path) -> str:
    """The wandb group of a comparison writing to ``out``: ``compare-<out's name>``."""
    return f"compare-{out.resolve().name}"


def _number(value: str) -> Any:
    """A CSV cell as a number where it is one (wandb tables sort and plot numbers), else the text."""
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return value


def read_table(path: Path) -> tuple[list[str], list[list]]:
    """(header, rows) of a CSV file, numbers as floats."""
    with path.open(newline="") as f:
        lines = list(csv.reader(f))
    return lines[0], [[_number(v) for v in line] for line in lines[1:]]


def summary_payload(budgets: list[tuple[Path, list[dict]]], out: Path) -> tuple[dict[str, Path], dict[str, Path],
                                                                                    dict[str, float]]:
    """What the summary run logs, from the files of a comparison: (tables by key -> CSV file, images by key ->
    PNG file, summary values by key). ``budgets``: (each budget's directory, its rows); keys carry the budget's
    directory name on a ladder."""
    ladder = len(budgets) > 1
    tables: dict[str, Path] = {}
    images: dict[str, Path] = {}
    summary: dict[str, float] = {}
    for rung_dir, rows in budgets:
        prefix = f"{rung_dir.name}/" if ladder else ""
        for name in ("results", "curve"):
            if (rung_dir / f"{name}.csv").exists():
                tables[f"{prefix}{name}"] = rung_dir / f"{name}.csv"
        for png in sorted(rung_dir.glob("*.png")):
            images[f"{prefix}plots/{png.stem}"] = png
        for row in rows:
            average = (row.get("tasks") or {}).get("average") or {}
            if average.get("median") is not None:
                summary[f"{prefix}{row['name']}/average"] = float(average["median"])
    if ladder and (out / "ladder.png").exists():
        images["plots/ladder"] = out / "ladder.png"
    return tables, images, summary


def artifact_files(budgets: list[tuple[Path, list[dict]]], out: Path) -> list[tuple[Path, str]]:
    """(file, name in the artifact) of every table, plot and settings file of a comparison."""
    files = []
    for rung_dir, _ in budgets:
        for path in sorted([*(rung_dir / n for n in TABLE_FILES), *rung_dir.glob("*.png")]):
            if path.exists():
                files.append((path, str(path.relative_to(out))))
    files += [(out / n, n) for n in LADDER_FILES if len(budgets) > 1 and (out / n).exists()]
    return files


def log_summary(out: Path, budgets: list[tuple[Path, list[dict]]], *, group: str, project: str | None = None,
                entity: str | None = None, tags: list[str] | None = None,
                exports: dict[str, Path] | None = None) -> Path | None:
    """Log a comparison's summary run (this module's docstring) into ``group``; ``exports`` (run name -> export
    directory) are logged as model artifacts. Returns the run's local directory, or None when wandb is disabled."""
    import wandb

    from experiments.run.loggers import user_tags, wandb_mode, wandb_project
    from experiments.run.model_card import kebab

    mode = wandb_mode()
    if mode == "disabled":
        return None
    tables, images, summary = summary_payload(budgets, out)
    run = wandb.init(project=wandb_project(project), entity=entity, group=group, job_type=SUMMARY_JOB,
                     name=f"{SUMMARY_JOB}-{out.resolve().name}", tags=[SUMMARY_JOB, *user_tags(tags)], dir=str(out),
                     mode=mode, config={"out_dir": str(out), "budgets": [str(d.name) for d, _ in budgets]},
                     settings=wandb.Settings(init_timeout=60, finish_timeout=60, silent=True))
    try:
        logged: dict[str, Any] = {}
        for key, path in tables.items():
            header, rows = read_table(path)
            logged[key] = wandb.Table(columns=header, data=rows)
        logged.update({key: wandb.Image(str(path)) for key, path in images.items()})
        run.log(logged)
        run.summary.update(summary)
        artifact = wandb.Artifact(f"{kebab(group)}-results", type="comparison",
                                  description=f"isoflop compare: the tables and plots of {out.resolve().name}")
        for path, name in artifact_files(budgets, out):
            artifact.add_file(str(path), name=name)
        run.log_artifact(artifact)
        for name, directory in (exports or {}).items():
            model = wandb.Artifact(f"{kebab(group)}-{kebab(name)}", type="model",
                                   description=f"isoflop export of {name} (Hugging Face directories, model cards)")
            model.add_dir(str(directory))
            run.log_artifact(model)
        local = Path(run.dir).parent
    finally:
        wandb.finish()
    return local


def build_report(group: str, project: str | None = None, entity: str | None = None, tables: list[str] | None = None):
    """The wandb report of a comparison (``wandb_workspaces.reports.v2.Report``, not saved): the validation loss
    of its pre-training runs against training FLOPs, their training loss, and the summary run's tables."""
    import wandb_workspaces.reports.v2 as wr

    from experiments.run.loggers import wandb_project

    project = wandb_project(project)
    where = {"project": project, **({"entity": entity} if entity else {})}
    pretraining = wr.Runset(**where, name="pre-training", filters=f"Group = '{group}' and JobType = 'pretrain'")
    summary = wr.Runset(**where, name="summary", filters=f"Group = '{group}' and JobType = '{SUMMARY_JOB}'")
    return wr.Report(
        **where, title=f"isoflop: {group}",
        description="Pre-training objectives compared at equal training FLOPs (isoflop compare).",
        blocks=[
            wr.H1(f"Comparison {group}"),
            wr.P("Each objective pre-trained to the same FLOPs budget, then fine-tuned downstream over several seeds. "
                 "Losses of different objectives are different quantities: compare each against its own reference "
                 "(results.md), and the objectives by their downstream scores."),
            wr.PanelGrid(runsets=[pretraining], panels=[
                wr.LinePlot(title="validation loss against training FLOPs", x="train/flops", y=["val/loss"]),
                wr.LinePlot(title="training loss against training FLOPs", x="train/flops", y=["train/loss"]),
            ]),
            wr.H2("Downstream"),
            wr.PanelGrid(runsets=[summary], panels=[wr.WeavePanelSummaryTable(table_name=name)
                                                    for name in (tables or ["results"])]),
        ])


def make_report(group: str, project: str | None = None, entity: str | None = None,
                tables: list[str] | None = None) -> str:
    """Create and save the report of :func:`build_report` when wandb is online and ``wandb-workspaces`` is
    installed; a line saying what was done (the report's URL) or why it was skipped."""
    import importlib.util

    from experiments.run.loggers import wandb_mode

    mode = wandb_mode()
    if mode != "online":
        return (f"wandb report skipped: wandb is {mode} (WANDB_MODE, no credentials or no network); sync the runs "
                "with `wandb sync` and run the same command online to make it")
    if importlib.util.find_spec("wandb_workspaces") is None:
        return "wandb report skipped: it needs wandb-workspaces (pip install 'isoflop[report]')"
    report = build_report(group, project, entity, tables)
    report.save()
    return f"wandb report: {report.url}"
