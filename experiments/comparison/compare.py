"""``isoflop compare``: pre-train several objectives to the same FLOPs budget, then judge them downstream.

For each objective, on the same data, tokenizer and seed: pre-train until the budget is spent
(:func:`experiments.run.pretrain.pretrain` with a FLOPs budget), export it, fine-tune it on the downstream
tasks over several seeds, and collect everything into one directory::

    OUT/results.csv, OUT/results.md    one row per objective: steps, tokens, FLOPs, final validation
                                       loss, each task's median and spread, the average
    OUT/val_loss_vs_flops.png           validation curves against training FLOPs
    OUT/downstream.png                  downstream score per objective
    OUT/<run>/                          each run: csv/ and wandb/ logs, checkpoints/, export/, finetune/

Each export's directories hold a model card (``README.md``) and the run's provenance (``isoflop.json``,
:mod:`experiments.run.model_card`); once a run is fine-tuned, its main network's card is rewritten with its
downstream scores. ``--push_to_hub ORG/PREFIX`` then publishes every export, one Hugging Face repository per
network (:mod:`experiments.run.hub`), after checking the names, the token and the Hub before any compute.

``--eval_every_flops X`` adds a curve of downstream score against pre-training FLOPs within each run
(:mod:`experiments.comparison.curves`: ``curve.md``, ``curve.csv``, ``downstream_vs_flops.png``). Every run, pre-training
and fine-tuning, logs to one wandb group, and a summary run logs the tables, plots and artifacts
(:mod:`experiments.comparison.wandb_view`; ``--wandb_report`` for a report).

Every run starts from one pre-training configuration (``--config``, default ``default``, with any
``--trainer.*``, ``--data.*`` and ``--model.init_args.*`` overrides); only the objective changes, and
the objective's settings that the shared configuration names carry over. Fine-tuning takes the options of
``isoflop finetune`` as ``--finetune.*`` (``--finetune.tasks``, ``--finetune.seeds`` ...); its learning rate is
each encoder family's own for the size (:mod:`objectives.encoder`) unless ``--finetune.learning_rate`` says.

Every run is prepared once, before the first pre-training starts (:func:`experiments.run.prepare.check`
and :meth:`~experiments.run.prepare.CheckedRun.prepare`: configuration, checks, budget, run directory), and
so are the tasks; ``--dry_run`` stops there and lists what would run. A rerun skips what is finished (a
pre-training, an export, a fine-tuning results table) and resumes an interrupted pre-training from its
last checkpoint, exactly: a comparison stopped by a signal is continued by running the same command again.
With no arguments it compares MLM and ELECTRA at the tiny size on the embedded corpus and its offline
downstream tasks: minutes on a CPU.

On several processes (``--trainer.devices``, ``--trainer.num_nodes``, ``--trainer.strategy``; a plain
command, ``torchrun`` or ``srun``) the ranks are started once (:mod:`experiments.run.ranks`) and every rank
takes part in every pre-training run; rank 0 exports each run behind a barrier. Once the last pre-training is
done, the fine-tuning runs (export x task x seed) are dealt over the ranks, each a single-device run on its rank's
own device (:mod:`experiments.finetuning.spread`); rank 0 waits for them, gathers them into the tables one process
writes, tabulates and plots, once.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import Namespace

from datamodules.cache import write_atomic
from experiments.comparison.curves import (
    check_points,
    export_points,
    exported_points,
    point_dir,
    row_points,
    write_curves,
)
from experiments.comparison.results import recipe_of, summary_of, validation_curve, write_plots, write_tables
from experiments.errors import RunError, UsageError, option_error
from experiments.comparison.wandb_view import group_name
from experiments.run.hub import Publisher
from experiments.run.prepare import CheckedRun, PreparedRun

DEFAULT_OBJECTIVES = ["objectives.MaskedLM", "objectives.ReplacedTokenDetection"]
# What a comparison fine-tunes on unless told (``isoflop finetune`` alone defaults to GLUE and 10 seeds).
DEFAULT_FINETUNE = {"tasks": "offline", "seeds": 3}

# The pre-training options a comparison shares (the rest it sets per run: run_dir, budget, resume).
SHARED_RUN_OPTIONS = ("wandb", "flops_convention", "checkpoint_every", "skip_nonfinite", "reschedule", "peak_flops",
                      "compile", "compile_mode", "eval_every_flops", "eval_every_steps", "wandb_project", "wandb_entity",
                      "wandb_tags")
# The fine-tuning options a comparison sets itself, from its own (the same wandb project, entity, tags and group).
FINETUNE_WANDB = ("wandb", "wandb_project", "wandb_entity", "wandb_tags", "wandb_group")


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


def without_model_settings(base: Namespace, objective: str) -> Namespace:
    """``base`` with its model reduced to the class path ``objective``: parsing settings over it fills the
    objective's own defaults, not those of ``base``'s objective."""
    fresh = base.clone()
    fresh.model = Namespace(class_path=objective)
    return fresh


def shared_model_settings(base: Namespace) -> dict:
    """The model settings a comparison's shared configuration sets: those of its objective (the preset's, MaskedLM
    by default) whose values differ from that objective's own defaults (the preset's size, learning rate, ...).
    They carry over to every compared objective that takes them; every other setting takes each objective's own
    default, so ReplacedTokenDetection masks as ELECTRA does (``mask_style electra``), not as MaskedLM's default
    (``bert``). A setting given at the value of the shared objective's default is not told apart from one left
    unset: to give several objectives one such value, set it per objective (``--objectives`` presets or a sweep)."""
    from experiments.config import parse

    given = base.model.init_args.as_dict() if base.model.get("init_args") is not None else {}
    defaults = parse({"model": {"class_path": base.model.class_path}},
                     base=without_model_settings(base, base.model.class_path)).model.init_args.as_dict()
    missing = object()
    return {k: v for k, v in given.items() if defaults.get(k, missing) != v}


def check_runs(base: Namespace, runs: list[RunSpec]) -> list[tuple[RunSpec, CheckedRun]]:
    """Each run's configuration, parsed and checked once, before any compute: the shared configuration's model
    settings (:func:`shared_model_settings`) that the run's objective takes, then the run's own, over that
    objective's defaults. A run of seed index ``k`` pre-trains with ``seed_everything`` + ``k`` (weights, masks,
    sampling, dropout and data order)."""
    from experiments.config import accepted_args, parse
    from experiments.run.prepare import check
    from objectives import resolve

    if len({r.name for r in runs}) != len(runs):
        raise UsageError(f"run names must be unique, got {[r.name for r in runs]}")
    shared = shared_model_settings(base)
    checked = []
    for run in runs:
        with option_error("--objectives"):
            cls = resolve(run.objective)  # an unknown objective lists the available ones
        taken = accepted_args(cls)
        init_args = {**{k: v for k, v in shared.items() if k in taken}, **run.init_args}
        settings = {"model": {"class_path": run.objective, "init_args": init_args},
                    "seed_everything": int(base.seed_everything or 0) + run.seed}
        checked.append((run, check(parse(settings, base=without_model_settings(base, run.objective)))))
    return checked


@dataclass
class Rung:
    """One budget of a comparison (one rung of an isoFLOP ladder): its directory, FLOPs and prepared runs."""

    out: Path
    budget: float
    runs: list[tuple[RunSpec, PreparedRun]]
    summaries: list[dict] = field(default_factory=list)


def compare(
    base: Namespace,
    objectives: list[str] | str | None = None,
    budget: str | None = None,
    budget_steps: int = 600,
    budgets: list[str | float] | str | None = None,
    pretrain_seeds: int = 1,
    out_dir: str = "runs/compare",
    finetune: dict | None = None,
    dry_run: bool = False,
    runs: list[RunSpec] | None = None,
    push_to_hub: str | None = None,
    wandb_report: bool = False,
    wandb_log_exports: bool = False,
) -> list[dict]:
    """Pre-train each objective to one FLOPs budget, fine-tune each, and tabulate and plot the results.

    Args:
        base: the shared pre-training configuration (:func:`experiments.config.parse`).
        objectives: objective class paths (or preset names), a list; default MLM and ELECTRA.
        budget: the FLOPs budget: a number or PRESET:STEPS. Default: what the most expensive objective
            per step takes for ``budget_steps`` steps (every other objective then takes more steps).
        budget_steps: steps of the most expensive objective that make the default budget.
        budgets: an isoFLOP ladder instead of one budget: a list of budgets (each a number or PRESET:STEPS, e.g.
            ``[1e13, 3e13, 1e14]``). The whole comparison runs at each, in ``OUT/budget-<FLOPs>/``; ``OUT/ladder.md``
            and ``.png`` put each objective's downstream score and own validation loss against FLOPs, with crossovers.
        pretrain_seeds: pre-training seeds per objective (the fine-tuning seeds nested in each), pooled by the statistics.
        out_dir: output directory; a rerun skips finished runs and resumes interrupted ones.
        finetune: the fine-tuning's options, those of :func:`experiments.finetuning.finetune.finetune` but
            the encoder and its output directory (default: the offline tasks, 3 seeds).
        dry_run: prepare every run (every check, the budget, the run directories) and list them; train nothing.
        push_to_hub: ORG/PREFIX: publish each run's export on the Hugging Face Hub once fine-tuned, one repository
            per network: ORG/PREFIX-<run> (lower case, words joined by -), ORG/PREFIX-<run>-generator (-budget-<FLOPs>
            on a ladder). The names, a token (HF_TOKEN or a saved login) and the Hub are checked before any compute.
        wandb_report: create a wandb report of the comparison at the end (online, with wandb-workspaces installed).
        wandb_log_exports: log each run's export as a wandb model artifact of the comparison's summary run.

    Returns:
        The rows of the comparison (of the last budget of a ladder); ``[]`` on every rank but rank 0, and
        for a dry run.
    """
    from experiments.config import as_list
    from experiments.finetuning import spread
    from experiments.run import ranks

    out = Path(out_dir)
    publisher = Publisher.checked(push_to_hub) if push_to_hub else None  # a token and the Hub: seconds, before all
    finetune_args = finetune_options(base, finetune, out, wandb_report or wandb_log_exports)  # checked before all
    ranks.check_launch(base.trainer, "compare")
    specs = with_seeds(runs or [spec_for(o) for o in as_list(objectives, "--objectives") or DEFAULT_OBJECTIVES],
                       pretrain_seeds)
    rungs = plan_rungs(base, check_runs(base, specs), out, budget, budget_steps, budgets)
    repos = hub_repos(rungs, push_to_hub, budgets is not None) if publisher else {}
    if publisher:
        publisher.check_names(sorted(set(repos.values())))
    if dry_run:
        print_plan(rungs, base.flops_convention, repos)
        return []
    ready = None
    with ranks.started(base.trainer) as world:  # every rank, for every pre-training run
        for rung in rungs:
            if world.is_zero:
                write_settings(rung, base.flops_convention, finetune_args, pretrain_seeds)
            rung.summaries = [pretrain_once(spec, run, world) for spec, run in rung.runs]
        if world.size > 1:  # every job, and this rank's heartbeat, before the process group goes
            jobs = spread_jobs(rungs, finetune_args)
            ready = (jobs, spread.start(jobs, world, out / ".ranks"))
    if ready is not None:  # each rank its share of the fine-tuning runs; rank 0 waits for them all
        spread.spread(*ready, world, finetune_args, out / ".ranks")
    if not world.is_zero:
        return []  # the other ranks leave; rank 0 gathers the fine-tuning, tabulates and plots, once
    reference = paper_reference(base.flops_convention)
    ladder = [(rung, finish(rung, finetune_args, reference, publisher, repos, spread=ready is not None))
              for rung in rungs]
    if budgets is not None:
        write_ladder(ladder, out)
    if base.wandb:
        share(out, ladder, base, wandb_report, wandb_log_exports)
    return ladder[-1][1]


def finetune_options(base: Namespace, finetune: dict | None, out: Path, shares: bool) -> dict:
    """The fine-tuning's options (:data:`DEFAULT_FINETUNE` under ``finetune``), checked (:func:`check_finetune`), with
    the comparison's wandb settings: its project, entity, tags and group. ``shares``: a wandb summary's options
    were given (``--wandb_report``, ``--wandb_log_exports``), which need wandb."""
    if shares and not base.wandb:
        raise UsageError("--wandb_report and --wandb_log_exports need wandb: drop --wandb false")
    args = {**DEFAULT_FINETUNE, **(finetune or {})}
    check_finetune(args)
    return {**args, "wandb": base.wandb, "wandb_project": base.wandb_project, "wandb_entity": base.wandb_entity,
            "wandb_tags": base.wandb_tags, "wandb_group": group_name(out)}


def share(out: Path, ladder: list[tuple[Rung, list[dict]]], base: Namespace, report: bool, log_exports: bool) -> None:
    """The comparison's wandb summary run and, when asked, its report (:mod:`experiments.comparison.wandb_view`)."""
    from experiments.comparison.wandb_view import log_summary, make_report

    budgets = [(rung.out, rows) for rung, rows in ladder]
    exports = {(f"{spec.name}-{rung.out.name}" if len(ladder) > 1 else spec.name): run.run_dir / "export"
               for rung, _ in ladder for spec, run in rung.runs} if log_exports else None
    local = log_summary(out, budgets, group=group_name(out), project=base.wandb_project, entity=base.wandb_entity,
                        tags=base.wandb_tags, exports=exports)
    if local is not None:
        print(f"[compare] wandb: group {group_name(out)}, summary run in {local}", flush=True)
    if report:
        tables = [key for key in ("results", "curve") if (ladder[-1][0].out / f"{key}.csv").exists()]
        if len(ladder) > 1:
            tables = [f"{ladder[-1][0].out.name}/{key}" for key in tables]
        print(f"[compare] {make_report(group_name(out), base.wandb_project, base.wandb_entity, tables)}", flush=True)


def plan_rungs(base: Namespace, checked: list[tuple[RunSpec, CheckedRun]], out: Path, budget: str | None,
               budget_steps: int, budgets: list[str | float] | str | None) -> list[Rung]:
    """Every budget's runs, prepared (budget and run directory set and decided) before any compute, and the points
    of their curves (``--eval_every_flops``) checked."""
    rungs = _plan_rungs(base, checked, out, budget, budget_steps, budgets)
    for rung in rungs:
        check_points(base.eval_every_flops, rung.budget, [run.steps_at(rung.budget) for _, run in rung.runs],
                     base.eval_every_steps)
    return rungs


def _plan_rungs(base: Namespace, checked: list[tuple[RunSpec, CheckedRun]], out: Path, budget: str | None,
                budget_steps: int, budgets: list[str | float] | str | None) -> list[Rung]:
    from experiments.config import as_list
    from experiments.run.budget import resolve_budget

    convention, group = base.flops_convention, group_name(out)  # one wandb group: every budget, every run
    if budget_steps < 1:
        raise UsageError(f"--budget_steps must be at least 1, got {budget_steps}")
    if budgets is None:
        value = resolve_budget(budget, convention) if budget is not None \
            else max(run.step_flops for _, run in checked) * budget_steps
        return [_rung(checked, out, value, group, "--budget")]
    if budget is not None:
        raise UsageError("give --budget or --budgets, not both")
    values = sorted({resolve_budget(b, convention, "--budgets item") for b in as_list(budgets, "--budgets")})
    if len(values) < 2:
        given = ", ".join(f"{v:.3g}" for v in values)
        raise UsageError(f"--budgets needs at least two different budgets (a list: '[1e12, 3e12]'), got [{given}]")
    rungs = []
    for value in values:
        rung_out = out / f"budget-{value:.3g}".replace("+", "")
        rungs.append(_rung(checked, rung_out, value, group, "--budgets item"))
    return rungs


def _rung(checked: list[tuple[RunSpec, CheckedRun]], out: Path, budget: float, group: str, option: str) -> Rung:
    return Rung(out, budget, [(spec, run.prepare(budget, out / spec.name, wandb_group=group, option=option))
                              for spec, run in checked])


def hub_repos(rungs: list[Rung], target: str, ladder: bool) -> dict[Path, str]:
    """Each run's hub repository (its main network's; :func:`experiments.run.hub.repo_name` adds the others'
    suffixes), by run directory: ``TARGET-<run>``, and ``TARGET-<run>-budget-<FLOPs>`` on a ladder."""
    from experiments.run.model_card import kebab

    return {run.run_dir: f"{target}-{kebab(spec.name)}" + (f"-{rung.out.name}" if ladder else "")
            for rung in rungs for spec, run in rung.runs}


def print_plan(rungs: list[Rung], convention: str, repos: dict[Path, str] | None = None) -> None:
    """What a comparison would run (``--dry_run``): each budget, and each run's steps, directory, state and the
    hub repository it would be published to."""
    for rung in rungs:
        print(f"[compare] budget {rung.budget:.3e} FLOPs ({convention}) in {rung.out}")
        for spec, run in rung.runs:
            state = "finished" if run.plan.finished else f"resume from {run.plan.checkpoint}" if run.plan.checkpoint \
                else "new"
            settings = f" {spec.init_args}" if spec.init_args else ""
            steps = -(-rung.budget // run.step_flops)
            hub = f", published to {repos[run.run_dir]}" if repos and run.run_dir in repos else ""
            print(f"  {spec.name}: {spec.objective}{settings}, {steps:.0f} steps of {run.step_flops:.3e} FLOPs, "
                  f"{run.run_dir} ({state}){hub}", flush=True)


def write_settings(rung: Rung, convention: str, finetune_args: dict, pretrain_seeds: int) -> None:
    """OUT/compare.json: what the comparison at this budget runs (the notebook reads it back)."""
    from downstream.tasks import resolve_tasks

    rung.out.mkdir(parents=True, exist_ok=True)
    write_atomic(rung.out / "compare.json", json.dumps({
        "runs": [r.__dict__ for r, _ in rung.runs], "budget_flops": rung.budget, "flops_convention": convention,
        "tasks": resolve_tasks(finetune_args["tasks"]), "seeds": finetune_args["seeds"],
        "pretrain_seeds": pretrain_seeds}, indent=2) + "\n")
    names = ", ".join(dict.fromkeys(r.group or r.name for r, _ in rung.runs))
    print(f"[compare] budget {rung.budget:.3e} FLOPs ({convention}) for {names}"
          + (f", {pretrain_seeds} pre-training seeds each" if pretrain_seeds > 1 else ""), flush=True)


def finish(rung: Rung, finetune_args: dict, reference: tuple[str, float] | None, publisher: Publisher | None = None,
           repos: dict[Path, str] | None = None, spread: bool = False) -> list[dict]:
    """Fine-tune every run of a budget (or, ``spread``, gather the fine-tuning the ranks did), rewrite each export's
    model cards with its downstream scores, write the budget's table and plots, and publish the exports when asked
    (rank 0 only)."""
    rows = []
    for (spec, run), summary in zip(rung.runs, rung.summaries):
        results = finetune_once(spec, run, finetune_args, spread)
        card_downstream(run.run_dir / "export", results, (repos or {}).get(run.run_dir))
        row = {"name": spec.name, "objective": spec.objective, "group": spec.group or spec.name,
               "seed": spec.seed, **summary, "curve": validation_curve(run.run_dir), "tasks": results,
               "recipe": recipe_of(run.dumped)}
        points = [(p, finetune_export(f"{spec.name} at step {p['step']}", point_dir(run.run_dir, p["step"]) / "export",
                                      point_dir(run.run_dir, p["step"]) / "finetune", finetune_args, spread))
                  for p in exported_points(run.run_dir)]
        rows.append({**row, "points": row_points(row, points) if points else []})
    write_tables(rows, rung.out, rung.budget, reference)
    write_plots(rows, rung.out)
    files = ["results.md", "results.csv", "val_loss_vs_flops.png", "downstream.png", *write_curves(rows, rung.out)]
    print(f"[compare] results in {rung.out}: {', '.join(files)}", flush=True)
    if publisher is not None:
        for _, run in rung.runs:
            for line in publisher.push(run.run_dir / "export", repos[run.run_dir]):
                print(f"[compare] {line}", flush=True)
    return rows


def card_downstream(export_dir: Path, results: dict, repo: str | None) -> None:
    """Rewrite the model cards of a run's export with its downstream scores (:func:`results.card_scores`), naming
    the hub repositories it is published to when ``repo`` (the main network's) is given."""
    from experiments.comparison.results import card_scores
    from experiments.run.hub import repo_name
    from experiments.run.model_card import add_downstream, network_folders

    repos = {rel: repo_name(repo, rel) for rel in network_folders(export_dir)} if repo else None
    add_downstream(export_dir, card_scores(results), repos)


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


def check_finetune(args: dict) -> None:
    """The fine-tuning's options before any pre-training: its tasks exist, its optimiser settings are valid
    (``layerwise_lr_decay``, ``lr_schedule``), and every task's data can be had (local GLUE files under
    ``data_dir``, or the hub: offline, a one-line error says to use ``data_dir``; with ``predict_test`` the test
    splits too; a directory of the user's own data is read and checked when its name is resolved)."""
    from downstream.classifier import check_layerwise_lr_decay
    from downstream.glue import find_local_files, load_hub_task
    from downstream.submission import load_test_splits
    from downstream.squad import load_squad
    from downstream.tasks import get_task, resolve_tasks
    from experiments.config import as_list
    from experiments.finetuning.finetune import finetune
    from objectives.optim import check_schedule

    unknown = set(args) - set(inspect.signature(finetune).parameters) - set(FINETUNE_WANDB)
    if unknown:
        raise UsageError(f"unknown fine-tuning option(s) {', '.join(sorted(unknown))}: see isoflop finetune --help")
    if isinstance(args["seeds"], int) and args["seeds"] < 1:
        raise UsageError(f"--finetune.seeds must be at least 1, got {args['seeds']}")
    with option_error("--finetune.layerwise_lr_decay"):
        check_layerwise_lr_decay(args.get("layerwise_lr_decay"))
    if "lr_schedule" in args:
        with option_error("--finetune.lr_schedule"):
            check_schedule(args["lr_schedule"])
    with option_error("--finetune.tasks"):
        names = resolve_tasks(as_list(args["tasks"], "--finetune.tasks"))
    for name in names:
        spec = get_task(name)
        try:
            if spec.group == "glue" and args.get("data_dir"):
                find_local_files(spec, args["data_dir"])
            elif spec.group == "glue":
                load_hub_task(spec)  # from the hub's cache, or downloaded now rather than after the pre-training
            elif spec.group == "squad":
                load_squad(spec, args.get("data_dir"))  # the local files checked, or the hub's copy fetched now
            if args.get("predict_test"):
                load_test_splits(spec, args.get("data_dir"))  # GLUE's test files (or the hub's), before compute
        except (ValueError, OSError) as err:  # finetune's option names, as compare spells them
            raise UsageError(f"--finetune.tasks {name}: {str(err).replace('--data_dir', '--finetune.data_dir')}") \
                from None


def pretrain_once(spec: RunSpec, run: PreparedRun, world) -> dict:
    """Pre-train (every rank) and export (rank 0) a run, unless a previous invocation did; an interrupted
    one resumes from its last checkpoint. Rank 0's view of the run directory decides for every rank."""
    from experiments.run.export import export_checkpoint
    from experiments.run.pretrain import RunResult, pretrain
    from experiments.run.provenance import PROVENANCE_FILE

    finished = world.broadcast(run.plan.finished)  # rank 0's view of the run directory decides
    if world.is_zero:
        print(f"[compare] {spec.name}: " + ("pre-training done, skipped" if finished else "pre-training"), flush=True)
    result = RunResult.from_json(finished) if finished is not None else pretrain(run, world)
    if not result.finished:
        raise RunError(f"pre-training of {spec.name} stopped before its budget (see {run.run_dir})")
    export_dir = run.run_dir / "export"
    # (An export without its provenance, from an isoflop before model cards, is written again: the same weights.)
    if world.is_zero and not ((export_dir / "config.json").exists() and (export_dir / PROVENANCE_FILE).exists()):
        for line in export_checkpoint(run.run_dir / "checkpoints" / "last.ckpt", export_dir, overwrite=True):
            print(f"[compare] {line}", flush=True)
    if world.is_zero:  # the points of its curve (--eval_every_flops), if any
        for line in export_points(run.run_dir, result.steps):
            print(f"[compare] {spec.name}: {line}", flush=True)
    world.barrier(f"the export of {spec.name}")
    return summary_of(result.to_json())


def finetune_once(spec: RunSpec, run: PreparedRun, finetune_args: dict, spread: bool = False) -> dict:
    """Fine-tune a run's export on the tasks, unless a previous invocation did; the results per task. ``spread``:
    the ranks ran its jobs (:func:`experiments.finetuning.spread.spread`), which are gathered into what one process writes."""
    return finetune_export(spec.name, run.run_dir / "export", run.run_dir / "finetune", finetune_args, spread)


def finetune_export(name: str, export_dir: Path, ft_dir: Path, finetune_args: dict, spread: bool = False) -> dict:
    """Fine-tune the export ``export_dir`` (of a run, or of a point of its curve) into ``ft_dir`` unless a previous
    invocation did (its ``results.json``); the results per task (and their average)."""
    from experiments.finetuning.finetune import Jobs, finetune
    from experiments.finetuning.scores import average
    from experiments.finetuning.spread import gather

    if (ft_dir / "results.json").exists():
        print(f"[compare] {name}: fine-tuning done, skipped", flush=True)
        return json.loads((ft_dir / "results.json").read_text())
    if spread:
        task_results = gather(export_jobs([(name, export_dir, ft_dir)], finetune_args))
        Jobs(str(export_dir), ft_dir, **finetune_args).write(task_results)
    else:
        task_results = finetune(str(export_dir), out_dir=str(ft_dir), **finetune_args)
    avg = average(task_results)
    results = {name: {"metric": r.metric, "median": r.median, "min": r.min, "max": r.max, "std": r.std,
                      "scores": list(r.scores.values()), **r.levels}
               for name, r in {**task_results, **({"average": avg} if avg is not None else {})}.items()}
    write_atomic(ft_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def export_jobs(exports: list[tuple[str, Path, Path]], finetune_args: dict) -> list:
    """The fine-tuning jobs (:class:`experiments.finetuning.spread.Job`) of ``exports`` (name, export directory,
    fine-tuning directory), in the order of one process, those whose fine-tuning is finished left out."""
    from downstream.tasks import resolve_tasks
    from experiments.config import as_list
    from experiments.finetuning.finetune import _seed_list
    from experiments.finetuning.spread import jobs_of

    left = [(name, str(export), ft) for name, export, ft in exports if not (ft / "results.json").exists()]
    return jobs_of(left, resolve_tasks(as_list(finetune_args["tasks"], "--finetune.tasks")),
                   _seed_list(finetune_args["seeds"]))


def spread_jobs(rungs: list[Rung], finetune_args: dict) -> list:
    """Every fine-tuning job of a comparison's budgets left to do (:func:`export_jobs`): each run's export and the
    points of its curve (``--eval_every_flops``); a job's name says its budget on a ladder."""
    from experiments.comparison.curves import curve_exports

    ladder = len(rungs) > 1
    exports = []
    for rung in rungs:
        for spec, run in rung.runs:
            name = f"{spec.name} at {rung.out.name}" if ladder else spec.name
            exports += [(name, run.run_dir / "export", run.run_dir / "finetune"), *curve_exports(name, run.run_dir)]
    return export_jobs(exports, finetune_args)


def build_parser():
    """``isoflop compare``'s options: the shared pre-training configuration (``--config``, ``--trainer.*``,
    ``--model.init_args.*``, ``--data.*``, as ``isoflop pretrain``), the comparison's own, and the
    fine-tuning's as ``--finetune.*`` (those of ``isoflop finetune``)."""
    from experiments.config import build_parser as pretrain_parser
    from experiments.finetuning.finetune import finetune

    parser = pretrain_parser(prog="isoflop compare", run_options=SHARED_RUN_OPTIONS,
                             description=(__doc__ or "").split("\n\n")[0])
    parser.add_function_arguments(compare, skip={"base", "runs", "finetune", "dry_run"}, as_group=False)
    add_dry_run(parser)
    parser.add_function_arguments(finetune, "finetune", skip={"encoder", "out_dir", *FINETUNE_WANDB})
    parser.set_defaults({f"finetune.{k}": v for k, v in DEFAULT_FINETUNE.items()})
    return parser


def add_dry_run(parser) -> None:
    """``--dry_run`` (or ``--dry_run true``): every check and plan of the real run, then the list of runs."""
    parser.add_argument("--dry_run", type=bool, default=False, nargs="?", const=True,
                        help="Check and plan every run as the real command does, list them, and train nothing.")


def main(argv: list[str]) -> int:
    """Entry point of ``isoflop compare``."""
    from experiments.config import parse, parse_args, with_default_preset

    given = [a for a in argv if a.split("=", 1)[0] == "--model"]
    if given:
        value = argv[argv.index(given[0]) + 1] if given[0] == "--model" and argv.index(given[0]) + 1 < len(argv) \
            else given[0].partition("=")[2]
        raise UsageError(f"--model {value}: isoflop compare takes the objectives it compares from --objectives "
                         f"(e.g. --objectives '[objectives.MaskedLM, {value}]'); --model.init_args.* sets what they share")
    args = parse_args(build_parser(), with_default_preset(argv)).as_dict()
    own = {k: args[k] for k in inspect.signature(compare).parameters if k not in ("base", "runs", "finetune")}
    shared = {k: args[k] for k in ("seed_everything", "trainer", "model", "data", *SHARED_RUN_OPTIONS)}
    compare(parse(shared), finetune=args["finetune"], **own)
    return 0
