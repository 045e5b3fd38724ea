"""``isoflop sweep GRID``: an ablation grid expanded into runs at equal FLOPs.

A grid file (``experiments/configs/sweeps/<name>.yaml`` or any path) has up to five parts::

    config: default          # the pre-training preset every run starts from
    pretrain:                # settings laid over it for every run (as in a preset: trainer, data, model)
      data: {batch_size: 16}
    compare:                 # options of `isoflop compare` (budget, budget_steps, budgets, finetune, ...)
      budget_steps: 600
      finetune: {tasks: offline, seeds: 3}
    grid:                    # the cartesian product of these lists; `objective` is required
      objective: [objectives.ReplacedTokenDetection, objectives.Electra15]
      generator_hidden_fraction: [0.25, 0.5]
    baselines: [objectives.MaskedLM]   # optional runs outside the grid

Each grid point is one run; a setting an objective does not take is dropped for it (so a grid may
mix objectives), and identical runs are merged. All runs share one budget and land in one results
table, exactly as ``isoflop compare``. ``--trainer.*`` and ``--data.*`` options on the command line are
laid over the grid's ``pretrain`` settings for every run (devices, nodes, strategy: ``isoflop sweep
generator-size --trainer.devices 8 --trainer.strategy ddp --data.batch_size 16``). ``--dry_run`` checks and
plans every run exactly as the real sweep does (a bad override or grid fails the same way) and lists them.
"""

from __future__ import annotations

import itertools

from experiments import errors, presets
from experiments.comparison.compare import RunSpec
from experiments.config import accepted_args

SWEEP_KEYS = ("config", "pretrain", "compare", "grid", "baselines")


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand(grid: dict, baselines: list[str] | None = None) -> list[RunSpec]:
    """The runs of a grid, baselines first, in a deterministic order."""
    from objectives import class_path, resolve

    if "objective" not in grid:
        raise ValueError("a sweep grid needs an 'objective' list")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid entry {key!r} must be a non-empty list")
    keys = [k for k in grid if k != "objective"]
    taken = set().union(*(accepted_args(resolve(o)) for o in grid["objective"]))
    for key in keys:
        if key not in taken:
            raise ValueError(f"no objective of the grid takes {key!r}: check the name")
    runs: list[RunSpec] = []
    seen: set[tuple] = set()
    points = [(b, ()) for b in baselines or []]
    points += [(o, v) for o in grid["objective"] for v in itertools.product(*(grid[k] for k in keys))]
    for objective, values in points:
        cls = resolve(objective)
        ok = accepted_args(cls)
        args = {k: v for k, v in zip(keys, values) if k in ok}
        key = (class_path(cls), tuple(sorted(args.items())))
        if key not in seen:
            seen.add(key)
            runs.append(RunSpec("-".join([cls.__name__] + [f"{k}={_short(v)}" for k, v in args.items()]),
                                class_path(cls), args))
    return runs


def load(grid_file: str) -> dict:
    """A sweep file (a path, or a name in experiments/configs/sweeps), checked for unknown parts."""
    spec = presets.load(grid_file, presets.SWEEP_DIR)
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise ValueError(f"sweep {grid_file!r}: unknown part(s) {', '.join(sorted(unknown))}; "
                         f"a sweep has {', '.join(SWEEP_KEYS)}")
    if "grid" not in spec:
        raise ValueError(f"sweep {grid_file!r} has no 'grid'")
    return spec


def sweep(grid_file: str, out_dir: str | None = None, overrides: dict | None = None, dry_run: bool = False,
          compare_options: dict | None = None) -> list[dict]:
    """Run a sweep file: every run at one FLOPs budget, in one results table. ``overrides``: ``trainer`` and
    ``data`` settings (and the wandb project, entity and tags) laid over the grid's pre-training settings (the
    command line's ``--trainer.*``, ``--data.*``, ``--wandb_*``). ``dry_run``: every check and plan of the real
    run, and the list of runs; nothing trains. ``compare_options``: compare's options over the grid file's."""
    from experiments.comparison.compare import compare
    from experiments.config import parse

    spec = load(grid_file)
    runs = expand(spec["grid"], spec.get("baselines"))
    base = parse(["--config", str(spec.get("config", "default"))])
    if spec.get("pretrain"):
        base = parse(spec["pretrain"], base=base)
    if overrides:
        base = parse(overrides, base=base)
    options = {**dict(spec.get("compare") or {}), **(compare_options or {})}
    unknown = set(options) - COMPARE_KEYS
    if unknown:
        raise errors.UsageError(f"sweep {grid_file!r}: unknown compare option(s) {', '.join(sorted(unknown))}; "
                                f"a sweep's compare part takes {', '.join(sorted(COMPARE_KEYS))}")
    options["out_dir"] = out_dir or options.get("out_dir") or f"runs/sweep-{presets.find(grid_file, presets.SWEEP_DIR).stem}"
    return compare(base, runs=runs, dry_run=dry_run, **options)


# What a sweep file's ``compare:`` part may set: isoflop compare's options but the objectives (the grid's).
COMPARE_KEYS = {"budget", "budget_steps", "budgets", "pretrain_seeds", "out_dir", "finetune", "wandb_report",
                "wandb_log_exports"}
# The wandb options of the command line: where every run logs (laid over the grid's settings) and the summary's.
WANDB_RUN = ("wandb_project", "wandb_entity", "wandb_tags")
WANDB_COMPARE = ("wandb_report", "wandb_log_exports")


def build_parser():
    """``isoflop sweep``'s options: the grid file, the output directory, ``--dry_run``, and the
    ``--trainer.*`` and ``--data.*`` options of ``isoflop pretrain``, laid over every run of the grid."""
    from experiments.comparison.compare import add_dry_run
    from experiments.config import RUN_OPTIONS, add_run_groups, new_parser

    parser = new_parser("isoflop sweep", "Run an ablation grid at equal FLOPs.")
    parser.add_argument("grid_file", type=str, help="A sweep YAML file or a name in experiments/configs/sweeps.")
    parser.add_argument("--out_dir", type=str | None, default=None, help="Output directory (default runs/sweep-<name>).")
    add_dry_run(parser)
    add_run_groups(parser, ("trainer", "data"))
    for name in WANDB_RUN:
        type_, default, help_, _ = RUN_OPTIONS[name]
        parser.add_argument(f"--{name}", type=type_, default=default, help=help_)
    parser.add_argument("--wandb_report", type=bool, default=None, help="Create a wandb report of the sweep at the "
                        "end (online, with wandb-workspaces installed); offline it says it skipped.")
    parser.add_argument("--wandb_log_exports", type=bool, default=None, help="Log each run's export as a wandb "
                        "model artifact of the sweep's summary run.")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``isoflop sweep``."""
    from experiments.config import parse_args

    own = ("--out_dir", "--dry_run", "--trainer.", "--data.", "--help", "-h", "--print_config",
           *(f"--{name}" for name in (*WANDB_RUN, *WANDB_COMPARE)))
    wrong = [a for a in argv if a.startswith("-") and not a.split("=", 1)[0].startswith(own)]
    if wrong:
        raise errors.UsageError(f"{wrong[0]}: isoflop sweep takes --trainer.*, --data.* and --wandb_* options besides its own; the "
                                "grid file sets the objectives and their settings (see isoflop sweep --help)")
    given = parse_args(build_parser(), argv, defaults=False).as_dict()  # only what the command line says
    overrides = {k: given[k] for k in ("trainer", "data", *WANDB_RUN) if given.get(k)}
    sweep(given["grid_file"], given.get("out_dir"), overrides, bool(given.get("dry_run")),
          {k: given[k] for k in WANDB_COMPARE if given.get(k) is not None})
    return 0
