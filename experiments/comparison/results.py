"""The results of a comparison: its statistics, its table (results.csv, results.md), its plots, and
reading a finished comparison directory back (the notebook does).

Every function here reads the *rows* a comparison produces, one per pre-training run: its name, the
objective (``group``: the runs of one objective over pre-training seeds share it) and pre-training seed,
what its pre-training did (steps, tokens, FLOPs, the final validation metrics), its validation curve,
and its downstream scores per task and fine-tuning seed.

Statistics (:func:`aggregate`): per objective and task, the median over every (pre-training seed,
fine-tuning seed) score and a 95% bootstrap interval of that median; and a paired comparison of each
objective against the first (the median of the score differences at the same pre-training and
fine-tuning seeds, with its interval). The bootstrap resamples pre-training seeds, then fine-tuning
seeds within them, because the fine-tuning runs of one pre-trained encoder are not independent. With
three seeds an interval is wide and rough: read it as "this comparison cannot tell", not as a test.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import random
from pathlib import Path

from datamodules.cache import write_atomic
from experiments.finetuning.scores import gap_share

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
# A discriminator "learned no more than its prior" when its validation AUROC is under this and its
# accuracy over the all-original baseline under PRIOR_GAIN (a share, so 0.001 = 0.1 points).
PRIOR_AUROC, PRIOR_GAIN = 0.55, 0.001
DOCS_PAGE = "rtd/objectives.rst, 'Reading the discriminator's metrics' (the documentation's Objectives page)"


# The settings an objective's recipe is told by, where the official recipes and the defaults can differ
# (rtd/fidelity.rst): results.md lists them per objective, so a reader sees which recipe each arm ran.
RECIPE = ("encoder", "size", "mask_style", "mask_prob", "learning_rate", "warmup_fraction", "lr_schedule",
          "adam_bias_correction", "disc_weight", "generator_hidden_fraction", "generator_layers_fraction",
          "embedding_sharing", "enhanced_mask_decoder", "decoupled_training", "two_stage")


def recipe_of(config: dict) -> dict:
    """The :data:`RECIPE` settings of a run's resolved configuration (``run.json``'s ``config``)."""
    init = (config.get("model") or {}).get("init_args") or {}
    recipe = {k: init[k] for k in RECIPE if k in init}
    if recipe.get("encoder") != "deberta-v2":
        recipe.pop("enhanced_mask_decoder", None)  # DeBERTa's only: it changes nothing for ELECTRA encoders
    return recipe


def summary_of(result: dict) -> dict:
    """The columns of a run in the results table, from its saved result (experiments.run.pretrain.RunResult)."""
    val = dict(result.get("val") or {})
    return {"steps": result["steps"], "tokens": result["tokens"], "flops": result["flops"],
            "val_loss": val.get("val/loss", result.get("val_loss")), "val": val, "machine": result.get("machine", "")}


def validation_curve(run_dir: Path) -> list[dict]:
    """Every validation of a run, from its CSV log: ``step``, ``flops`` (the training FLOPs it was taken
    at) and each ``val/*`` metric."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        # One point per step, the last logged: a leg that crashed after its last checkpoint logged steps
        # that the resumed leg logs again.
        points = {int(r["step"]): {"step": int(r["step"]), "flops": float(r["train/flops"]),
                                   **{k: float(v) for k, v in r.items() if k.startswith("val/") and v not in ("", None)}}
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
        info = run_dir / "run.json"
        recipe = recipe_of(json.loads(info.read_text()).get("config", {})) if info.exists() else {}
        rows.append({"name": run["name"], "objective": run["objective"], "group": run.get("group", run["name"]),
                     "seed": run.get("seed", 0), **summary, "curve": validation_curve(run_dir), "tasks": tasks,
                     "recipe": recipe})
    return rows


def load_ladder(out_dir: str | Path) -> list[tuple[float, list[dict]]]:
    """(budget, rows) of every budget of a finished ladder (``compare --budgets``), for the notebook."""
    out = Path(out_dir)
    rungs = json.loads((out / "ladder.json").read_text())["budgets"]
    return [(r["budget_flops"], load_rows(out / r["dir"])) for r in rungs]


# -- statistics ------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def bootstrap_median(nested: list[list[float]], seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high) of the pooled values of ``nested`` (one list per pre-training seed), with a
    percentile interval from a two-level bootstrap: pre-training seeds, then the values within each."""
    pooled = [v for inner in nested for v in inner]
    if not pooled:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    stats = []
    for _ in range(BOOTSTRAP_SAMPLES):
        sample = []
        for inner in (rng.choice(nested) for _ in nested):
            sample += [rng.choice(inner) for _ in inner]
        stats.append(median(sample))
    stats.sort()
    tail = (1 - LEVEL) / 2
    return median(pooled), stats[int(tail * len(stats))], stats[min(len(stats) - 1, int((1 - tail) * len(stats)))]


def card_scores(results: dict) -> dict:
    """One run's downstream scores for its export's model card (:func:`experiments.run.model_card.add_downstream`),
    from its fine-tuning's ``results.json``: per task (the average too) the headline metric, the scores per
    fine-tuning seed, their mean, and their median with the 95% bootstrap interval results.md gives
    (:func:`bootstrap_median`, here over one pre-training seed)."""
    tasks = {}
    for task, result in results.items():
        scores = [float(s) for s in result.get("scores") or []]
        if not scores:
            continue
        med, lo, hi = bootstrap_median([scores])
        tasks[task] = {"metric": result.get("metric"), "scores": scores, "seeds": len(scores),
                       "mean": sum(scores) / len(scores), "median": med, "lo": lo, "hi": hi}
    return {"tasks": tasks, "level": LEVEL, "interval": "percentile bootstrap of the median over the fine-tuning seeds",
            "source": "isoflop compare: finetune/results.json of this run"}


def task_scores(rows: list[dict], task: str) -> dict[int, list[float]]:
    """Pre-training seed -> fine-tuning scores (in fine-tuning seed order) of ``task`` in a group's rows."""
    return {r.get("seed", 0): list(r["tasks"].get(task, {}).get("scores", [])) for r in rows}


def paired(a: dict[int, list[float]], b: dict[int, list[float]]) -> list[list[float]]:
    """Differences b - a at the same (pre-training seed, fine-tuning seed), one list per pre-training seed."""
    return [[y - x for x, y in zip(a[s], b[s])] for s in sorted(set(a) & set(b)) if a[s] and b[s]]


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per objective (row group, in order of first appearance): the pre-training figures of its
    first seed, its validation metrics (medians over seeds), and per task the median, interval and the
    paired difference against the first objective."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("group", r["name"]), []).append(r)
    task_names = [t for t in rows[0]["tasks"]] if rows else []
    first = next(iter(groups.values()), [])
    out = []
    for name, members in groups.items():
        entry = {k: members[0][k] for k in ("objective", "steps", "tokens", "flops", "val_loss")}
        entry.update(name=name, seeds=len(members), curve=members[0].get("curve", []), recipe=members[0].get("recipe", {}),
                     machines=[m["machine"] for m in members if m.get("machine")])
        keys = {k for m in members for k in m.get("val", {})}
        entry["val"] = {k: median([m["val"][k] for m in members if k in m.get("val", {})]) for k in keys}
        entry["tasks"] = {}
        for task in task_names:
            scores = task_scores(members, task)
            med, lo, hi = bootstrap_median(list(scores.values()))
            diff = paired(task_scores(first, task), scores) if members is not first else []
            d_med, d_lo, d_hi = bootstrap_median(diff) if diff else (None, None, None)
            base = members[0]["tasks"].get(task, {})
            chance, ceiling = (_level(members, task, k) for k in ("chance", "ceiling"))  # known-answer tasks only
            majority = majority_baseline(task)
            entry["tasks"][task] = {"metric": base.get("metric"), "median": med, "lo": lo, "hi": hi,
                                    "n": sum(map(len, scores.values())),
                                    "majority": chance if majority is None else majority,
                                    "diff": d_med, "diff_lo": d_lo, "diff_hi": d_hi, "chance": chance,
                                    "ceiling": ceiling, "gap_share": gap_share(med, chance, ceiling)}
        out.append(entry)
    return out


def _level(rows: list[dict], task: str, key: str) -> float | None:
    """A known-answer task's ``chance`` or ``ceiling`` (experiments.finetuning.scores.TaskResult.levels) over a
    group's runs (the median: every run of one source has the same), None for another task."""
    values = [r["tasks"].get(task, {}).get(key) for r in rows]
    values = [v for v in values if v is not None]
    return median(values) if values else None


@functools.lru_cache(maxsize=None)
def majority_baseline(task: str, cache_dir: str | None = None) -> float | None:
    """The dev accuracy of always answering the most frequent class, in points, for an offline task (its
    data is on every machine); None for GLUE and the average."""
    from downstream.tasks import OFFLINE_TASKS

    if task not in OFFLINE_TASKS:
        return None
    from collections import Counter

    from downstream.offline import load_offline_task

    labels = Counter(load_offline_task(OFFLINE_TASKS[task].dataset, cache_dir)["validation"]["label"])
    return 100 * max(labels.values()) / sum(labels.values())


def prior_only(val: dict) -> bool | None:
    """Whether a run's discriminator learned no more than its label prior (None: no discriminator)."""
    if "val/disc_auroc" not in val:
        return None
    return val["val/disc_auroc"] < PRIOR_AUROC and val.get("val/disc_gain", 0.0) < PRIOR_GAIN


# -- the table ---------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if abs(v) >= 1e5 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def write_tables(rows: list[dict], out: Path, budget: float, reference: tuple[str, float] | None = None) -> None:
    """results.csv (one line per objective, with every statistic) and results.md (the table, the
    discriminator diagnostics, the budget beside ``reference``: (name, FLOPs) of a paper run)."""
    entries = aggregate(rows)
    task_names = [t for t in entries[0]["tasks"] if t != "average"] if entries else []
    header = ["run", "objective", "seeds", "steps", "tokens", "flops", "budget_frac", "val_loss", "disc_auroc",
              "disc_gain", "disc_loss", "disc_label_entropy", "prior_only"]
    stats = ("median", "lo", "hi", "diff", "diff_lo", "diff_hi", "majority", "ceiling", "gap_share")
    header += [f"{t}_{s}" for t in task_names for s in stats] + ["average", "average_lo", "average_hi"]
    table = []
    for e in entries:
        v = e["val"]
        line = [e["name"], e["objective"], e["seeds"], e["steps"], e["tokens"], e["flops"],
                e["flops"] / budget if e["flops"] else None, e["val_loss"], v.get("val/disc_auroc"),
                v.get("val/disc_gain"), v.get("val/disc_loss"), v.get("val/disc_label_entropy"), prior_only(v)]
        line += [e["tasks"][t].get(s) for t in task_names for s in stats]
        avg = e["tasks"].get("average", {})
        table.append(line + [avg.get("median"), avg.get("lo"), avg.get("hi")])
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *table])
    write_atomic(out / "results.csv", buffer.getvalue())
    write_atomic(out / "results.md", markdown(entries, task_names, budget, reference))


def markdown(entries: list[dict], task_names: list[str], budget: float, reference: tuple[str, float] | None) -> str:
    """results.md: the budget, the table, and what each discriminator learned, in words."""
    seeds = entries[0]["seeds"] if entries else 1
    md = ["# Compute-matched comparison", "", f"Budget: {budget:.3e} training FLOPs per objective."]
    if reference:
        md.append(f"That is 1/{reference[1] / budget:,.0f} of {reference[0]} ({reference[1]:.2e} FLOPs), the "
                  "smallest point of the ELECTRA paper: results this far below it need not carry over.")
    machines = list(dict.fromkeys(m for e in entries for m in e.get("machines", [])))
    if machines:
        md += ["", "Pre-trained on " + " and ".join(machines) + ". The same command trains on the same data and "
               "tokenizer everywhere, but float arithmetic differs between CPUs, thread counts and GPUs: another "
               "machine's figures differ by run-to-run variance."]
    cols = ["objective", "steps", "FLOPs", "val loss", "disc AUROC", "disc gain (points)"]
    cols += [f"{t} (median [95% CI])" for t in task_names] + ["average"]
    md += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in entries:
        v = e["val"]
        gain = v.get("val/disc_gain")
        cells = [e["name"], _fmt(e["steps"]), _fmt(e["flops"]), _fmt(e["val_loss"]), _fmt(v.get("val/disc_auroc")),
                 "-" if gain is None else f"{100 * gain:+.2f}"]
        cells += [_interval(e["tasks"][t]) for t in task_names]
        md.append("| " + " | ".join(cells + [_interval(e["tasks"].get("average", {}))]) + " |")
    md += ["", f"Downstream scores are in points: the median over {seeds} pre-training seed(s) x the fine-tuning "
               "seeds, with a 95% bootstrap interval of that median. val loss is each objective's own loss on "
               "held-out text (not comparable across objectives)."]
    md += _gap_shares(entries, task_names)
    md += _at_chance(entries, task_names) + _differences(entries, task_names) + _plateau(entries) + _diagnostics(entries)
    md += _recipes(entries)
    return "\n".join(md) + "\n"


def _recipes(entries: list[dict]) -> list[str]:
    """A line per objective with the settings its recipe is told by (:data:`RECIPE`; unset ones left out)."""
    lines = []
    for e in entries:
        recipe = {k: v for k, v in e.get("recipe", {}).items() if v is not None}
        if recipe:
            lines.append(f"- {e['name']}: " + ", ".join(f"{k} {str(v).lower() if isinstance(v, bool) else v}"
                                                         for k, v in recipe.items()))
    if not lines:
        return []
    return ["", "## Recipes", "", "The settings each objective ran with where recipes differ (masking, optimiser, "
            "schedule, generator; unset ones take the objective's defaults); the documentation's Fidelity page "
            "(rtd/fidelity.rst) holds them against the official code.", "", *lines]


# A task "no encoder reaches" when every objective's median is within this many points of its majority baseline.
AT_CHANCE = 2.0


def _at_chance(entries: list[dict], task_names: list[str]) -> list[str]:
    """A line per task on which every objective scores at its majority-class baseline."""
    from downstream.tasks import TASK_NOTES

    lines = []
    for t in task_names:
        majority = entries[0]["tasks"][t].get("majority") if entries else None
        medians = [e["tasks"][t].get("median") for e in entries]
        if majority is None or any(m is None or abs(m - majority) > AT_CHANCE for m in medians):
            continue
        note = f" ({TASK_NOTES[t]})" if t in TASK_NOTES else ""
        lines.append(f"- {t}: every objective is within {AT_CHANCE:g} points of the majority baseline ({majority:.1f}): "
                     f"none of these encoders learned what the task needs{note}.")
    return ["", "## Tasks no encoder here reaches", "", *lines] if lines else []


def _gap_shares(entries: list[dict], task_names: list[str]) -> list[str]:
    """A line per known-answer task (downstream.synthetic_tasks): each objective's median as the share of the gap
    from chance to the Bayes ceiling that its encoder closed."""
    lines = []
    for t in task_names:
        first = entries[0]["tasks"][t] if entries else {}
        if first.get("ceiling") is None or first.get("chance") is None:
            continue
        shares = ", ".join(f"{e['name']} {_fmt(e['tasks'][t].get('gap_share'))}" for e in entries)
        lines.append(f"- {t} (chance {first['chance']:.1f}, Bayes ceiling {first['ceiling']:.1f}): {shares}.")
    return ["", "## Share of the gap from chance to the Bayes ceiling", "",
            "On the known-answer tasks the best possible score is known exactly: (median - chance) / (ceiling - "
            "chance), 0 at chance, 1 at the ceiling.", "", *lines] if lines else []


def _interval(task: dict) -> str:
    if task.get("median") is None:
        return "-"
    return f"{_fmt(task['median'])} [{_fmt(task.get('lo'))}, {_fmt(task.get('hi'))}]"


def _differences(entries: list[dict], task_names: list[str]) -> list[str]:
    if len(entries) < 2:
        return []
    lines = ["", f"## Paired differences against {entries[0]['name']}", "",
             "Median of the score differences at the same seeds, in points, with a 95% bootstrap interval; an "
             "interval that contains 0 means this comparison cannot tell the two apart.", ""]
    for e in entries[1:]:
        parts = [f"{t} {e['tasks'][t]['diff']:+.1f} [{e['tasks'][t]['diff_lo']:+.1f}, {e['tasks'][t]['diff_hi']:+.1f}]"
                 for t in task_names if e["tasks"][t].get("diff") is not None]
        lines.append(f"- {e['name']}: " + (", ".join(parts) or "-"))
    return lines


# A masked LM (or a generator) is "on the unigram plateau" while its loss is within this many nats of the
# unigram level: it predicts token frequencies and little of the context (rtd/testbed.rst).
PLATEAU_NATS = 0.5


def _plateau(entries: list[dict]) -> list[str]:
    """A line per run whose masked-LM (or generator) loss and the data's unigram level were logged."""
    lines = []
    for e in entries:
        v = e["val"]
        key = next((k for k in ("val/mlm_loss", "val/gen_loss") if k in v), None)
        if key is None or "val/unigram_entropy" not in v:
            continue
        loss, level = v[key], v["val/unigram_entropy"]
        what = "the masked LM" if key == "val/mlm_loss" else "the generator"
        verdict = ("is still on the unigram plateau: it predicts token frequencies and little of the context"
                   if level - loss < PLATEAU_NATS else "has left the unigram plateau")
        lines.append(f"- {e['name']}: {what} {verdict} (loss {loss:.3f} against a unigram level of {level:.3f} nats).")
    return ["", "## What the masked LMs learned", "", *lines, "", "See the documentation's testbed page "
            "(rtd/testbed.rst) for what gets small encoders off the plateau."] if lines else []


def _diagnostics(entries: list[dict]) -> list[str]:
    lines = []
    for e in entries:
        v, verdict = e["val"], prior_only(e["val"])
        if verdict is None:
            continue
        numbers = (f"AUROC {v['val/disc_auroc']:.3f}, accuracy {100 * v.get('val/disc_gain', 0):+.2f} points over "
                   f"answering 'original' everywhere, loss {v.get('val/disc_loss', math.nan):.4f} against a label "
                   f"entropy of {v.get('val/disc_label_entropy', math.nan):.4f}")
        if verdict:
            lines.append(f"- {e['name']}: the discriminator learned no more than its label prior ({numbers}). Its "
                         f"encoder is judged downstream all the same; see {DOCS_PAGE}.")
        else:
            lines.append(f"- {e['name']}: the discriminator learned beyond its label prior ({numbers}).")
    return ["", "## What the discriminators learned", "", *lines] if lines else []


# -- the plots -----------------------------------------------------------------------------------------

# Each loss component and the reference it is read against: the loss of a model that learned nothing
# beyond its prior (the unigram entropy for a masked LM, the label entropy for a discriminator).
COMPONENTS = {"val/mlm_loss": "val/unigram_entropy", "val/gen_loss": "val/unigram_entropy",
              "val/disc_loss": "val/disc_label_entropy"}


def plot_validation(rows: list[dict]):
    """Each objective's validation loss components against training FLOPs, each beside its reference
    line (not the weighted sum, which says nothing): one panel per objective and component."""
    import matplotlib.pyplot as plt

    entries = aggregate(rows)
    panels = [(e, k) for e in entries for k in COMPONENTS if any(k in p for p in e["curve"])]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.3), squeeze=False)
    for ax, (e, key) in zip(axes[0], panels):
        points = [p for p in e["curve"] if key in p]
        ax.plot([p["flops"] for p in points], [p[key] for p in points], marker="o", label=key.removeprefix("val/"))
        reference = COMPONENTS[key]
        level = next((p[reference] for p in reversed(e["curve"]) if reference in p), e["val"].get(reference))
        if level is not None:
            ax.axhline(level, color="grey", linestyle="--", label=reference.removeprefix("val/"))
        if "val/bayes_mlm_loss" in e["val"] and key != "val/disc_loss":
            ax.axhline(e["val"]["val/bayes_mlm_loss"], color="green", linestyle=":", label="Bayes floor")
        ax.set(title=e["name"], xlabel="training FLOPs", ylabel=key.removeprefix("val/"))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_downstream(rows: list[dict]):
    """Each objective's median downstream score per task with its 95% interval, and each task's
    majority-class baseline (dashed)."""
    import matplotlib.pyplot as plt

    entries = aggregate(rows)
    task_names = list(entries[0]["tasks"]) if entries else []
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(task_names) * max(1, len(entries)) / 2, 3.5))
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries):
        med = [e["tasks"][t]["median"] for t in task_names]
        lo = [m - e["tasks"][t]["lo"] for t, m in zip(task_names, med)]
        hi = [e["tasks"][t]["hi"] - m for t, m in zip(task_names, med)]
        ax.bar([j + i * width for j in range(len(task_names))], med, width, yerr=[lo, hi], capsize=3, label=e["name"])
    for j, t in enumerate(task_names):
        majority = entries[0]["tasks"][t].get("majority") if entries else None
        if majority is not None:
            ax.hlines(majority, j - width / 2, j + width * (len(entries) - 0.5), colors="black", linestyles="--")
    ax.set_xticks([j + width * (len(entries) - 1) / 2 for j in range(len(task_names))], task_names)
    ax.set_ylabel("score (median, 95% interval)")
    ax.set_title("dashed: majority-class baseline", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(rows: list[dict], out: Path) -> None:
    """val_loss_vs_flops.png and downstream.png."""
    for name, fig in (("val_loss_vs_flops.png", plot_validation(rows)), ("downstream.png", plot_downstream(rows))):
        save_figure(fig, out / name)


def save_figure(fig, path: Path) -> None:
    """A figure as a PNG, written atomically (matplotlib picks a non-interactive backend by itself
    on a machine without a display)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


# -- isoFLOP ladders -----------------------------------------------------------------------------------


def crossover(budgets: list[float], diffs: list[float]) -> float | None:
    """The budget where a score difference (objective minus the first, one per budget, budgets
    increasing) changes sign, interpolated linearly in log-budget between the two budgets around the
    first change; None when it keeps one sign."""
    for (b1, d1), (b2, d2) in zip(zip(budgets, diffs), zip(budgets[1:], diffs[1:])):
        if d1 == 0:
            return b1
        if d1 * d2 < 0:
            return math.exp(math.log(b1) + (math.log(b2) - math.log(b1)) * d1 / (d1 - d2))
    return budgets[-1] if diffs and diffs[-1] == 0 else None


def crossover_interval(budgets: list[float], paired_diffs: list[list[list[float]]],
                       seed: int = 0) -> tuple[float | None, float | None, float | None, float]:
    """The crossover of the median paired differences (one nested list per budget: pre-training seeds,
    then fine-tuning seeds), with a 95% bootstrap interval over the resampled seeds, and the share of
    resamples in which the curves cross at all."""
    point = crossover(budgets, [median([v for inner in d for v in inner]) for d in paired_diffs])
    rng = random.Random(seed)
    found = []
    for _ in range(BOOTSTRAP_SAMPLES):
        resampled = []
        for nested in paired_diffs:
            sample = [v for inner in (rng.choice(nested) for _ in nested) for v in (rng.choice(inner) for _ in inner)]
            resampled.append(median(sample))
        found.append(crossover(budgets, resampled))
    hits = sorted(f for f in found if f is not None)
    share = len(hits) / len(found)
    if not hits:
        return point, None, None, share
    tail = (1 - LEVEL) / 2
    return point, hits[int(tail * len(hits))], hits[min(len(hits) - 1, int((1 - tail) * len(hits)))], share


def ladder_rows(aggregated: list[tuple[float, list[dict]]], task: str = "average") -> list[dict]:
    """One line per (objective, budget) from each budget's :func:`aggregate` entries: the score of ``task``
    (median and interval) and the objective's own final validation loss."""
    out = []
    for budget, entries in aggregated:
        for e in entries:
            t = e["tasks"].get(task, {})
            out.append({"budget": budget, "objective": e["name"], "flops": e["flops"], "val_loss": e["val_loss"],
                        "median": t.get("median"), "lo": t.get("lo"), "hi": t.get("hi")})
    return out


def ladder_tasks(steps: list[tuple[float, list[dict]]]) -> list[str]:
    """The tasks of a ladder: each downstream task, then the average (when there is one)."""
    rows = steps[0][1] if steps else []
    return list(rows[0]["tasks"]) if rows else []


def ladder_markdown(steps: list[tuple[float, list[dict]]], tasks: list[str] | None = None) -> str:
    """ladder.md: per task, the scores at every budget and each objective's crossover with the first."""
    budgets = [b for b, _ in steps]
    aggregated = [(b, aggregate(rows)) for b, rows in steps]  # the bootstraps once, for every task
    md = ["# isoFLOP ladder", "", "Downstream score (median [95% CI], points) and own final validation loss of each "
          "objective at each budget; the crossover is where an objective's paired difference against the first "
          "changes sign (interpolated in log FLOPs, with a 95% bootstrap interval)."]
    for task in tasks or ladder_tasks(steps):
        lines = ladder_rows(aggregated, task)
        names = list(dict.fromkeys(r["objective"] for r in lines))
        md += ["", f"## {task}", "", "| objective | " + " | ".join(f"{b:.2e} FLOPs" for b in budgets) + " |",
               "|---|" + "---|" * len(budgets)]
        for name in names:
            cells = [f"{r['median']:.1f} [{r['lo']:.1f}, {r['hi']:.1f}] (loss {r['val_loss']:.3f})"
                     for r in lines if r["objective"] == name]
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md.append("")
        medians = {(r["budget"], r["objective"]): r["median"] for r in lines}
        for name in names[1:]:
            md.append(_crossover_line(steps, budgets, task, names[0], name, medians, _majority(aggregated, task)))
    return "\n".join(md) + "\n"


def _crossover_line(steps, budgets: list[float], task: str, first: str, name: str, medians: dict,
                    majority: float | None) -> str:
    diffs = [paired(task_scores(_group(rows, first), task), task_scores(_group(rows, name), task)) for _, rows in steps]
    point, lo, hi, share = crossover_interval(budgets, diffs)
    if point is None:
        return (f"- {name} against {first}: no crossover within the ladder (the curves cross in {100 * share:.0f}% of "
                "the bootstrap resamples).")
    interval = f"[{lo:.2e}, {hi:.2e}]" if lo is not None else "[-]"
    return (f"- {name} against {first}: crosses at {point:.2e} FLOPs, 95% interval {interval} (the curves cross in "
            f"{100 * share:.0f}% of the bootstrap resamples){_at_chance_near(point, budgets, medians, (first, name), majority)}.")


def _at_chance_near(point: float, budgets: list[float], medians: dict, names: tuple[str, str],
                    majority: float | None) -> str:
    """Words for a crossover next to a budget where both objectives score at the majority-class baseline
    (within :data:`AT_CHANCE` points): the order of two chance-level scores is noise, not a change in
    which objective learns the task."""
    if majority is None:
        return ""
    around = next(((b, nxt) for b, nxt in zip(budgets, budgets[1:]) if b <= point <= nxt), (point,))
    for b in around:
        scores = [medians.get((b, n)) for n in names]
        if all(m is not None and abs(m - majority) <= AT_CHANCE for m in scores):
            return (f"; at {b:.2e} FLOPs both are within {AT_CHANCE:g} points of the majority baseline ({majority:.1f}), "
                    "so this crossing involves chance-level scores, not a change in which objective learns the task")
    return ""


def _majority(aggregated: list[tuple[float, list[dict]]], task: str) -> float | None:
    """The task's majority-class baseline, from a ladder's aggregated entries (None for the average)."""
    return next((e["tasks"][task].get("majority") for e in aggregated[0][1]), None) if aggregated else None


def _group(rows: list[dict], name: str) -> list[dict]:
    return [r for r in rows if r.get("group", r["name"]) == name]


def plot_ladder(steps: list[tuple[float, list[dict]]], tasks: list[str] | None = None):
    """Each objective's downstream score per task (with its interval) and own validation loss against its
    training FLOPs, on log axes: the question of the ELECTRA paper's Figure 1, asked of any objectives."""
    import matplotlib.pyplot as plt

    tasks = tasks or ladder_tasks(steps)
    aggregated = [(b, aggregate(rows)) for b, rows in steps]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4 * (len(tasks) + 1), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lines = ladder_rows(aggregated, task)
        for name in dict.fromkeys(r["objective"] for r in lines):
            mine = [r for r in lines if r["objective"] == name]
            ax.errorbar([r["flops"] for r in mine], [r["median"] for r in mine],
                        yerr=[[r["median"] - r["lo"] for r in mine], [r["hi"] - r["median"] for r in mine]],
                        marker="o", capsize=3, label=name)
        majority = _majority(aggregated, task)
        if majority is not None:
            ax.axhline(majority, color="black", linestyle="--", linewidth=0.8, label="majority class")
        ax.set(xscale="log", xlabel="training FLOPs", ylabel="score (median, 95% CI)", title=task)
    loss_ax = axes[0][-1]
    lines = ladder_rows(aggregated, tasks[0]) if tasks else []
    for name in dict.fromkeys(r["objective"] for r in lines):
        mine = [r for r in lines if r["objective"] == name]
        loss_ax.plot([r["flops"] for r in mine], [r["val_loss"] for r in mine], marker="o", label=name)
    loss_ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="own final validation loss",
                title="validation loss")
    for ax in axes[0]:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
