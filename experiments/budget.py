"""FLOPs budgets: what a preset's training step costs, and budgets written as numbers or as
"what preset P takes for N steps" (``electra-small:1000000``)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from objectives.base import import_class

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ValueError(f"unknown preset {name_or_path!r}: choose a YAML file or one of {names}")
    return yaml.safe_load(path.read_text())


def objective_from_preset(config: dict, **overrides):
    """The preset's objective, built on the meta device (no memory, no compute): for FLOPs only."""
    model = config["model"]
    with torch.device("meta"):
        return import_class(model["class_path"])(**{**model.get("init_args", {}), **overrides})


def preset_step_flops(name_or_path: str, convention: str = "actual", batch: int | None = None, seq: int | None = None) -> float:
    """Training FLOPs of one optimiser step of a preset at its global batch and sequence length."""
    config = load_preset(name_or_path)
    data = config.get("data", {})
    batch = batch or data.get("batch_size", 32)
    seq = seq or data.get("max_seq_length", 128)
    return objective_from_preset(config).flops_per_batch(batch, seq, convention)


def resolve_budget(spec: float | str, convention: str = "actual") -> float:
    """A budget in FLOPs from ``1.5e15`` or ``PRESET:STEPS`` (the FLOPs that preset takes for STEPS steps)."""
    if isinstance(spec, (int, float)):
        value = float(spec)
    else:
        text = str(spec).strip()
        if ":" in text:
            preset, _, steps = text.rpartition(":")
            try:
                value = preset_step_flops(preset, convention) * int(float(steps))
            except ValueError as err:
                raise ValueError(f"bad FLOPs budget {spec!r}: {err}") from None
        else:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"bad FLOPs budget {spec!r}: give a number (1.5e15) or PRESET:STEPS (electra-small:1000000)") from None
    if value <= 0:
        raise ValueError(f"the FLOPs budget must be positive, got {spec!r}")
    return value


def report(name_or_path: str, steps: int, batch: int, seq: int, convention: str) -> str:
    """Per-sequence, per-step and total training FLOPs of a preset; the total is on the last line."""
    from objectives.flops import train_multiplier

    objective = objective_from_preset(load_preset(name_or_path))
    per_seq = objective.flops_per_sequence(seq, convention)
    per_step = per_seq * batch
    return "\n".join([
        f"{name_or_path}: {type(objective).__name__}, convention {convention} (training = "
        f"{train_multiplier(convention):g} x forward), seq {seq}, batch {batch}, steps {steps}",
        f"per-sequence training  {per_seq:.4e}",
        f"per-step training      {per_step:.4e}",
        f"total training FLOPs: {per_step * steps:.3e}",
    ])
