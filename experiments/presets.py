"""Presets: the shipped YAML configurations, looked up by name or path in one place.

``experiments/configs/<name>.yaml`` are pre-training presets (``isoflop pretrain --config NAME``,
``--budget NAME:STEPS``, ``isoflop flops --config NAME``); ``experiments/configs/sweeps/<name>.yaml``
are ablation grids (``isoflop sweep NAME``). Either kind is given as a name or as a path to a YAML file.
This module is pure Python (no torch): the command line uses it before anything heavy is imported.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "configs"
SWEEP_DIR = PRESET_DIR / "sweeps"


def names(directory: Path = PRESET_DIR) -> list[str]:
    """The shipped names in ``directory``, sorted."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def find(name_or_path: str | Path, directory: Path = PRESET_DIR) -> Path:
    """The YAML file of a preset (or sweep, with ``directory=SWEEP_DIR``): an existing file path, or a
    shipped name. A one-line ValueError lists the shipped names."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix in ("", ".yaml") and len(path.parts) == 1 and (directory / f"{path.stem}.yaml").is_file():
        return directory / f"{path.stem}.yaml"
    kind = "sweep" if directory == SWEEP_DIR else "preset"
    raise ValueError(f"{kind} {str(name_or_path)!r} not found: give a YAML file or one of {', '.join(names(directory))}")


def load(name_or_path: str | Path, directory: Path = PRESET_DIR) -> dict:
    """A preset (or sweep) as a dict; a one-line ValueError for a missing file or bad YAML."""
    path = find(name_or_path, directory)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping (model:, data:, trainer:), got {type(config).__name__}")
    return config
