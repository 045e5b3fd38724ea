"""``isoflop sweep GRID.yaml``: an ablation grid expanded into runs at equal FLOPs.

A grid file has three parts::

    compare:                 # arguments of `isoflop compare` shared by every run (budget, tasks, seeds, ...)
      size: tiny
      budget_steps: 600
    grid:                    # the cartesian product of these lists; `objective` is required
      objective: [objectives.ReplacedTokenDetection, objectives.Electra15]
      generator_hidden_fraction: [0.25, 0.5]
    baselines: [objectives.MaskedLM]   # optional runs outside the grid

Each grid point is one run; a setting an objective does not take is dropped for it (so a grid may
mix objectives), and identical runs are merged. All runs share one budget and land in one
results table, exactly as `isoflop compare`.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import yaml

from experiments.compare import RunSpec, compare

SWEEP_DIR = Path(__file__).resolve().parent / "configs" / "sweeps"


def accepted_args(cls: type) -> set[str]:
    """Constructor arguments of an objective, through its chain of ``**kwargs`` base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand(grid: dict, baselines: list[str] | None = None, size: str = "tiny") -> list[RunSpec]:
    """The runs of a grid, baselines first, in a deterministic order."""
    from objectives.base import import_class

    if "objective" not in grid:
        raise ValueError("a sweep grid needs an 'objective' list")
    keys = [k for k in grid if k != "objective"]
    for key in grid:
        if not isinstance(grid[key], list) or not grid[key]:
            raise ValueError(f"grid entry {key!r} must be a non-empty list")
    def load(objective: str) -> tuple[str, type]:
        path = objective if "." in objective else f"objectives.{objective}"
        try:
            return path, import_class(path)
        except (ImportError, AttributeError):
            raise ValueError(f"unknown objective {objective!r} in the sweep grid") from None

    taken = set().union(*(accepted_args(load(o)[1]) for o in grid["objective"]))
    for key in keys:
        if key not in taken:
            raise ValueError(f"no objective of the grid takes {key!r}: check the name")
    runs: list[RunSpec] = []
    seen: set[tuple] = set()
    points = [(b, ()) for b in baselines or []]
    points += [(o, v) for o in grid["objective"] for v in itertools.product(*(grid[k] for k in keys))]
    for objective, values in points:
        path, cls = load(objective)
        ok = accepted_args(cls)
        args = {"size": size, **{k: v for k, v in zip(keys, values) if k in ok}}
        key = (path, tuple(sorted(args.items())))
        if key in seen:
            continue
        seen.add(key)
        name = "-".join([cls.__name__] + [f"{k}={_short(v)}" for k, v in args.items() if k != "size"])
        runs.append(RunSpec(name, path, args))
    return runs


def sweep(grid_file: str, out_dir: str | None = None) -> list[dict]:
    """Run a sweep file (a path, or a name in experiments/configs/sweeps)."""
    path = Path(grid_file)
    if not path.exists():
        path = SWEEP_DIR / f"{grid_file}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
        raise ValueError(f"sweep file {grid_file!r} not found (shipped sweeps: {names})")
    spec = yaml.safe_load(path.read_text())
    options = dict(spec.get("compare", {}))
    options.setdefault("out_dir", out_dir or f"runs/sweep-{path.stem}")
    if out_dir:
        options["out_dir"] = out_dir
    runs = expand(spec["grid"], spec.get("baselines"), options.pop("size", "tiny"))
    return compare(runs=runs, **options)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="isoflop sweep", description="Run an ablation grid at equal FLOPs.")
    parser.add_argument("grid_file", help="a sweep YAML file or a name in experiments/configs/sweeps")
    parser.add_argument("--out_dir", default=None, help="output directory (default runs/sweep-<name>)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and exit")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:
            path = Path(args.grid_file) if Path(args.grid_file).exists() else SWEEP_DIR / f"{args.grid_file}.yaml"
            spec = yaml.safe_load(path.read_text())
            for run in expand(spec["grid"], spec.get("baselines"), spec.get("compare", {}).get("size", "tiny")):
                print(run.name, run.objective, run.init_args)
            return 0
        sweep(args.grid_file, args.out_dir)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"isoflop sweep: error: {err}") from None
    return 0
