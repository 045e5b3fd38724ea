"""A run's directory: its name, what it holds, and whether a command continues it, finds it finished,
or must refuse it.

Rerunning the same command resumes: without ``--run_dir`` a run lives in ``runs/<objective>-<size>-<hash>``,
the hash of what it trains and how long (the options whose role is ``trains`` or ``length``, one table:
:func:`experiments.config.role`). Options that say how a run is run, logged or validated (``run``) or how
its global batch is split over devices (``layout``) change neither, so adding ``--compile`` or another
``--trainer.log_every_n_steps`` to a command still finds, and resumes, its run. In the directory:

- ``run.json``: the configuration the run was started with (its identity, length and layout);
- ``checkpoints/last.ckpt``: where an unfinished run resumes from;
- ``result.json``: written once the run has finished (:class:`experiments.run.pretrain.RunResult`); a rerun
  then reports it and trains nothing.

A directory started with another configuration is refused, naming the settings that differ. A changed
length is refused too, unless ``--reschedule true`` (see :class:`experiments.run.resume.ScheduleKeeper`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.cache import write_atomic
from experiments.config import LENGTH, TRAINS, role
from experiments.errors import UsageError
from experiments.run.checkpoints import check_checkpoint_file, checkpoint_kind


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"max_steps": 3}}`` -> ``{"trainer.max_steps": 3}`` (lists and other values kept whole)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def digest(value: Any) -> str:
    """The sha256 (hex) of ``value`` as sorted JSON (anything JSON lacks as its ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _processes(flat: dict[str, Any]) -> int:
    from experiments.run.ranks import count_processes

    return count_processes(flat.get("trainer.devices", "auto"), flat.get("trainer.num_nodes", 1),
                           flat.get("trainer.accelerator", "auto"))


def global_batch(dumped: dict) -> int:
    """Sequences per optimiser step over every rank: ``data.global_batch_size`` when given (a split
    configuration's per-device batch, processes and accumulation make it up: experiments.run.budget.split_batch),
    else data.batch_size x processes x accumulation."""
    flat = flatten(dumped)
    if flat.get("data.global_batch_size"):
        return int(flat["data.global_batch_size"])
    accumulate = flat.get("trainer.accumulate_grad_batches") or 1
    return int(flat.get("data.batch_size") or 1) * _processes(flat) * (accumulate if isinstance(accumulate, int) else 1)


def identity(dumped: dict) -> dict[str, Any]:
    """What a run trains (flattened): the options whose role is ``trains``, and the global batch in place of
    its split over devices; a stream keeps its number of (process, worker) slots, which decide the
    documents each batch holds."""
    flat = flatten(dumped)
    what = {k: v for k, v in flat.items() if role(k) == TRAINS}
    what["global_batch"] = global_batch(dumped)
    if flat.get("data.streaming"):
        what["stream_slots"] = _processes(flat) * max(1, int(flat.get("data.num_workers") or 0))
    return what


def length(dumped: dict) -> dict[str, Any]:
    """How long a run trains (flattened): the options whose role is ``length``."""
    return {k: v for k, v in flatten(dumped).items() if role(k) == LENGTH}


def layout(dumped: dict) -> dict[str, Any]:
    """How a run's global batch is split: recorded in ``run.json``, checked when a run resumes."""
    flat = flatten(dumped)
    from experiments.run.ranks import strategy_name

    return {"processes": _processes(flat), "batch_size": flat.get("data.batch_size"),
            "strategy": strategy_name(dumped.get("trainer", {}).get("strategy", "auto"))}


def check_layout(run_dir: Path, dumped: dict) -> str:
    """Before resuming: a one-line error for a checkpoint the new layout cannot read (DeepSpeed's directories
    and everything else's checkpoints do not mix), else what changed ("" if nothing did)."""
    info = _read(run_dir / "run.json") or {}
    before, now = info.get("layout"), layout(dumped)
    if not before or before == now:
        return ""
    if ("deepspeed" in before["strategy"]) != ("deepspeed" in now["strategy"]):
        raise UsageError(f"{run_dir} was trained with --trainer.strategy {before['strategy']}; its checkpoint cannot be "
                         f"resumed with {now['strategy']}: resume it with {before['strategy']}")
    return (f"trained on {before['processes']} process(es) x {before['batch_size']} sequences so far, now on "
            f"{now['processes']} x {now['batch_size']}: the same global batch, data order and FLOPs")


def default_name(dumped: dict, objective: str) -> str:
    """``<objective>-<size>-<8 hex>``: the same run (what it trains, and how long) always names the same
    directory."""
    size = flatten(dumped).get("model.init_args.size") or ""
    return f"{objective.lower()}-{size}-{digest({**identity(dumped), **length(dumped)})[:8]}"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is unreadable ({err}): delete it (it is rewritten) and rerun") from None


def _describe(values: dict[str, Any], only: set[str] | None = None) -> str:
    """``max_steps 2, budget 1e13``: the given settings (``only`` those keys, when given) that are set; the
    FLOPs convention only beside a budget."""
    if values.get("budget") is None:
        values = {k: v for k, v in values.items() if k != "flops_convention"}
    return ", ".join(f"{k.split('.', 1)[-1] if k.startswith('trainer.') else k} {v}" for k, v in values.items()
                     if v is not None and (only is None or k in only)) or "no length"


@dataclass
class Plan:
    """What a command does with a run directory: report ``finished`` (the saved result), or train,
    resuming from ``checkpoint`` when there is one."""

    finished: dict | None
    checkpoint: Path | None


def plan(run_dir: Path, dumped: dict, ckpt_path: str | None, reschedule: bool) -> Plan:
    """Check ``run_dir`` against the configuration and decide; one-line UsageErrors for a mismatch."""
    info = _read(run_dir / "run.json")
    if info is not None:
        ours, theirs = identity(dumped), info.get("identity", {})
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if changed:
            what = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in changed[:3])
            raise UsageError(f"{run_dir} holds a run of another configuration ({what}"
                             f"{'; ...' if len(changed) > 3 else ''}): give another --run_dir, or the run's settings")
        if info.get("length") != length(dumped) and not reschedule:
            before, now = info.get("length", {}), length(dumped)
            changed = {k for k in set(before) | set(now) if before.get(k) != now.get(k)}
            raise UsageError(f"{run_dir} was started with {_describe(before, changed)}; this command asks for "
                             f"{_describe(now, changed)}: pass --reschedule true to continue to the new length (the "
                             "learning rate then decays linearly to 0 at the new end), or keep the old one")
    result = _read(run_dir / "result.json")
    if result is not None and result.get("length") == length(dumped) and ckpt_path is None:
        return Plan(finished=result, checkpoint=None)
    if result is not None and ckpt_path is None and info is not None and info.get("length") == result.get("length"):
        raise UsageError(f"{run_dir} finished its schedule ({_describe(result['length'])}): its learning rate is 0, so "
                         "a rescheduled continuation would train at 0; start a new run (another --run_dir)")
    checkpoint = Path(ckpt_path) if ckpt_path else _latest_checkpoint(run_dir)
    if checkpoint is not None:
        check_checkpoint_file(checkpoint)
    return Plan(finished=None, checkpoint=checkpoint)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt``, or Lightning's SLURM ``hpc_ckpt_<n>.ckpt`` in the run directory when that
    is newer (the requeue handler saved it and the job ended before the step boundary)."""
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [p for p in candidates if checkpoint_kind(p) is not None]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None


def write_run_info(run_dir: Path, dumped: dict) -> None:
    """``run.json``: the identity and length this run is trained with (rewritten when rescheduled)."""
    info = {"identity": identity(dumped), "length": length(dumped), "layout": layout(dumped), "config": dumped}
    write_atomic(run_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")


def write_result(run_dir: Path, result: dict, dumped: dict) -> None:
    write_atomic(run_dir / "result.json", json.dumps({**result, "length": length(dumped)}, indent=2) + "\n")

