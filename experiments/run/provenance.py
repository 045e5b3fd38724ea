"""What an export was trained with: ``isoflop.json``, read from the checkpoint and the run directory beside it.

Every value comes from a file, never from a default: the checkpoint (the objective's class path and
hyper-parameters, the datamodule's hyper-parameters, the step, the token count, the FLOPs counter's total and
convention, the tokenizer) and, when the checkpoint sits in an isoflop run directory
(``RUN/checkpoints/last.ckpt``, or Lightning's ``RUN/hpc_ckpt_*.ckpt``) of the same objective, that directory's
``run.json`` (the full configuration, ``seed_everything`` and the global batch among it), ``csv/hparams.yaml``
(the data's fingerprint, as the datamodule logged it) and ``result.json`` (the final validation metrics, taken
only when the checkpoint is the run's final step). A value that no file holds is ``null``, and
``not_recorded`` says why.

Training FLOPs are given in both of isoflop's conventions (:mod:`objectives.flops`): the one the run counted,
as its counter saved it, and the other derived exactly from it when every step had one cost (the counted total
times the ratio of one step's cost in the two conventions: training batches all have one shape, see
:class:`experiments.run.callbacks.FlopsBudget`), else ``null``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import subprocess
from pathlib import Path
from typing import Any

from experiments.run.rundir import digest

PROVENANCE_FILE = "isoflop.json"
FORMAT = "isoflop-provenance"
FORMAT_VERSION = 1
NO_RUN_DIR = ("no isoflop run directory of this objective beside the checkpoint (run.json), and the checkpoint itself "
              "does not hold it")

# Tags on the Hugging Face Hub per objective (matched along the class's MRO, so a subclass inherits its parent's).
OBJECTIVE_TAGS = {
    "MaskedLM": ("bert", "masked-lm"),
    "Electra15": ("electra", "replaced-token-detection", "electra-15"),
    "MLMPlusRTD": ("electra", "replaced-token-detection", "masked-lm"),
    "ReplacedTokenDetection": ("electra", "replaced-token-detection"),
    "AllTokensMLM": ("all-tokens-mlm", "masked-lm"),
    "ReplaceMLM": ("replace-mlm", "masked-lm"),
    "ShuffledTokenDetection": ("shuffled-token-detection",),
}


def plain(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists, anything else JSON lacks its ``str``)."""
    return json.loads(json.dumps(value, default=str))


@functools.lru_cache(maxsize=4)
def git_state(root: str) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the git checkout whose top level is ``root``; (None, None) outside
    one, without git, or when ``root`` only lies inside another project's checkout (a virtual environment's)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD"), None if status is None else bool(status)


def code_version() -> dict[str, Any]:
    """The isoflop that writes the export: its installed version, and its git commit when it runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    import experiments

    try:
        installed = version("isoflop")
    except PackageNotFoundError:
        installed = None
    commit, dirty = git_state(str(Path(experiments.__file__).resolve().parent.parent))
    return {"version": installed, "git_commit": commit, "git_dirty": dirty,
            "note": "the isoflop that wrote this export; a checkpoint does not record the isoflop that trained it"}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_record(directory: str | Path) -> dict:
    """The provenance (``isoflop.json``) of an export's network directory; {} for a directory without one (an
    encoder not exported by isoflop)."""
    return _read_json(Path(directory).expanduser() / PROVENANCE_FILE) or {}


def find_run_dir(checkpoint: Path, class_path: str) -> Path | None:
    """The isoflop run directory ``checkpoint`` belongs to (its ``run.json`` names the same objective), or None."""
    from objectives import resolve

    # checkpoints/last.ckpt, a sharded checkpoint's directory, checkpoints/curve/step-N.ckpt (--eval_every_flops)
    for candidate in (checkpoint.parent, checkpoint.parent.parent, checkpoint.parent.parent.parent):
        info = _read_json(candidate / "run.json") or {}
        trained = ((info.get("config") or {}).get("model") or {}).get("class_path")
        try:
            if trained and resolve(trained) is resolve(class_path):
                return candidate
        except ValueError:
            continue
    return None


def objective_tags(cls: type) -> list[str]:
    """The hub tags of an objective class: those of the first class along its MRO in :data:`OBJECTIVE_TAGS`."""
    for klass in cls.__mro__:
        if klass.__name__ in OBJECTIVE_TAGS:
            return list(OBJECTIVE_TAGS[klass.__name__])
    return []


def objective_record(module, saved: dict) -> dict[str, Any]:
    """The objective: its class, what it is (its docstring's first line), hub tags, and its hyper-parameters."""
    cls = type(module)
    summary = (cls.__doc__ or "").strip().split("\n\n")[0]
    hparams = plain(dict(saved.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}))
    return {"name": cls.__name__, "class_path": saved["isoflop"]["class_path"], "summary": " ".join(summary.split()),
            "tags": objective_tags(cls), "hyper_parameters": hparams}


def encoder_record(module) -> dict[str, Any]:
    """The encoder family, named size and resolved shape (every network's, the generator's scaled from it)."""
    hp = module.hparams
    return {"family": hp.encoder, "size": hp.size, **dataclasses.asdict(module.shape), "vocab_size": module.vocab_size,
            "max_position_embeddings": hp.max_position_embeddings}


def _flops_counter(saved: dict) -> tuple[dict, float] | None:
    """(settings, total) of the FLOPs counter's state in the checkpoint, saved under
    ``FlopsBudget{'budget': .., 'convention': ..}``."""
    for key, state in (saved.get("callbacks") or {}).items():
        if str(key).startswith("FlopsBudget{") and isinstance(state, dict) and "total" in state:
            try:
                return ast.literal_eval(str(key)[len("FlopsBudget"):]), float(state["total"])
            except (ValueError, SyntaxError):
                return None
    return None


def _other_convention(module, data: dict, counted: str, other: str, total: float) -> tuple[float | None, str]:
    """The training FLOPs in convention ``other`` from the ``counted`` total, with how it was had (or why not)."""
    batch, seq = data.get("batch_size"), data.get("max_seq_length")
    if not batch or not seq:
        return None, "not derivable: the checkpoint records no training batch shape"
    try:
        costs = {c: (module.flops_per_batch(batch, seq, c), module.scheduled_flops_per_batch(batch, seq, c))
                 for c in (counted, other)}
    except ValueError as err:
        return None, f"not defined here: {err}"
    if any(not math.isclose(now, mean, rel_tol=1e-12) for now, mean in costs.values()):
        return None, (f"not derivable: the cost of a step changed during training (two-stage training), and the run "
                      f"counted the {counted} convention only")
    return total * costs[other][0] / costs[counted][0], (
        f"the counted {counted} total x the {other}/{counted} cost of one step ({costs[other][0]:.6e} / "
        f"{costs[counted][0]:.6e} FLOPs per batch of {batch} x {seq} tokens: every training batch has this shape)")


def _curve_counter(checkpoint: Path, config: dict | None) -> tuple[dict, float] | None:
    """(settings, total) of a curve checkpoint (``--eval_every_flops``: weights only, no counter state): the total
    its run recorded in ``points.json`` beside it, in the run's convention."""
    from experiments.run.curve import read_points

    point = next((p for p in read_points(checkpoint.parent) if p["checkpoint"] == checkpoint.name), None)
    if point is None or not config:
        return None
    convention = config.get("flops_convention", "actual")
    try:
        budget = float(config["budget"]) if config.get("budget") is not None else None
    except ValueError:  # PRESET:STEPS, as given
        from experiments.run.budget import resolve_budget

        budget = resolve_budget(config["budget"], convention)
    return {"budget": budget, "convention": convention}, point["flops"]


def flops_record(module, saved: dict, checkpoint: Path | None = None, config: dict | None = None) -> dict[str, Any]:
    """Training FLOPs in both conventions (``actual``, ``paper``), the counted one's budget, and how each was had
    (a curve checkpoint's ``checkpoint`` and run ``config``: from the run's ``points.json``)."""
    counter, where = _flops_counter(saved), "saved in the checkpoint"
    if counter is None and checkpoint is not None:
        counter, where = _curve_counter(checkpoint, config), f"recorded in {checkpoint.parent.name}/points.json"
    if counter is None:
        why = "the checkpoint holds no FLOPs counter (isoflop's FlopsBudget callback)"
        return {"counted_convention": None, "actual": None, "paper": None, "budget": None,
                "how": {"actual": why, "paper": why}}
    settings, total = counter
    counted = settings.get("convention", "actual")
    other = "paper" if counted == "actual" else "actual"
    derived, how = _other_convention(module, saved.get("datamodule_hyper_parameters") or {}, counted, other, total)
    values = {counted: total, other: derived}
    return {"counted_convention": counted, "actual": values["actual"], "paper": values["paper"],
            "budget": settings.get("budget"),
            "how": {counted: f"counted during training (isoflop's FLOPs counter, {where})", other: how}}


def _logged_fingerprint(run_dir: Path | None) -> dict | None:
    """The data fingerprint the datamodule logged (``csv/hparams.yaml``'s ``data_fingerprint``), or None."""
    import yaml

    if run_dir is None:
        return None
    try:
        logged = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    fingerprint = logged.get("data_fingerprint") if isinstance(logged, dict) else None
    return plain(fingerprint) if isinstance(fingerprint, dict) and fingerprint else None


def source_kind(data: dict, fingerprint: dict | None) -> str | None:
    """Where the training text came from: ``embedded``, ``files``, ``hub``, ``disk`` or ``synthetic`` (the
    fingerprint's word when it was logged; else what the data settings say, None where they leave it open)."""
    from datamodules.synthetic import is_synthetic

    if fingerprint and fingerprint.get("source"):
        return str(fingerprint["source"])
    dataset = data.get("dataset")
    if data.get("data_files"):
        return "files"
    if dataset is None:
        return "embedded" if data else None
    if is_synthetic(dataset):
        return "synthetic"
    return None  # a hub name and a save_to_disk directory look alike once the run is over


def data_record(saved: dict, run_dir: Path | None) -> dict[str, Any]:
    """The training data: its source, the datamodule's settings and the fingerprint the run logged."""
    data = plain(dict(saved.get("datamodule_hyper_parameters") or {}))
    fingerprint = _logged_fingerprint(run_dir)
    return {"source": source_kind(data, fingerprint), "dataset": data.get("dataset"),
            "dataset_config": data.get("dataset_config"), "data_files": data.get("data_files"),
            "fingerprint": fingerprint, "fingerprint_digest": digest(fingerprint)[:16] if fingerprint else None,
            "hyper_parameters": data or None}


def tokenizer_record(module, data: dict) -> dict[str, Any]:
    """The tokenizer saved in the checkpoint: its class, size, hash (:func:`datamodules.tokenizer.tokenizer_hash`)
    and where it came from."""
    from datamodules.synthetic import is_synthetic
    from datamodules.tokenizer import tokenizer_hash

    tokenizer = module.tokenizer
    if tokenizer is None:
        return {"class": None, "vocab_size": None, "hash": None, "source": None}
    name = data.get("tokenizer")
    if name:
        source = f"loaded from {name}"
    elif is_synthetic(data.get("dataset")):
        source = "the synthetic source's own vocabulary"
    elif data:
        source = (f"WordPiece trained by isoflop on the training text ({data.get('vocab_size')} tokens, "
                  f"lowercase {str(data.get('lowercase')).lower()})")
    else:
        source = None
    return {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer), "hash": tokenizer_hash(tokenizer),
            "hash_of": "sha256 of the tokenizer's full definition, first 16 hex digits "
                       "(datamodules.tokenizer.tokenizer_hash)",
            "source": source}


def training_record(saved: dict, run_dir: Path | None, config: dict | None) -> dict[str, Any]:
    """Steps, tokens, seed, batch shape and, for a run's final checkpoint, its final validation metrics."""
    from experiments.run.rundir import global_batch

    data = saved.get("datamodule_hyper_parameters") or {}
    tokens = (saved.get("state_dict") or {}).get("tokens_seen")
    steps = saved.get("global_step")
    result = _read_json(run_dir / "result.json") if run_dir is not None else None
    final = result if result and result.get("steps") == steps else None
    return {"steps": steps, "tokens": int(tokens) if tokens is not None else None,
            "seed_everything": config.get("seed_everything") if config else None,
            "batch_size_per_process": data.get("batch_size"), "global_batch": global_batch(config) if config else None,
            "max_seq_length": data.get("max_seq_length"), "lightning_version": saved.get("pytorch-lightning_version"),
            "final_validation": plain(final.get("val")) if final else None,
            "machine": final.get("machine") or None if final else None}


def not_recorded(record: dict[str, Any], run_dir: Path | None) -> dict[str, str]:
    """Each ``null`` of the provenance that matters, and why it is null."""
    why: dict[str, str] = {}
    if run_dir is None:
        for key in ("config", "training.seed_everything", "training.global_batch", "data.fingerprint"):
            why[key] = NO_RUN_DIR
    elif record["data"]["fingerprint"] is None:
        why["data.fingerprint"] = f"{run_dir / 'csv' / 'hparams.yaml'} holds no data_fingerprint"
    if record["training"]["final_validation"] is None:
        why["training.final_validation"] = ("not the final checkpoint of a finished run (result.json's steps)"
                                            if run_dir is not None else NO_RUN_DIR)
    for convention in ("actual", "paper"):
        if record["flops"][convention] is None:
            why[f"flops.{convention}"] = record["flops"]["how"][convention]
    if record["data"]["hyper_parameters"] is None:
        why["data"] = "the checkpoint holds no datamodule settings"
    elif record["data"]["source"] is None:
        why["data.source"] = ("the data settings do not tell a hub dataset from a save_to_disk directory, and no "
                              "fingerprint was logged")
    return why


def provenance(module, saved: dict, checkpoint: str | Path) -> dict[str, Any]:
    """The provenance of an export of ``module``, restored from the checkpoint ``saved`` read from ``checkpoint``."""
    path = Path(checkpoint).resolve()
    run_dir = find_run_dir(path, saved["isoflop"]["class_path"])
    config = ((_read_json(run_dir / "run.json") or {}).get("config") or None) if run_dir is not None else None
    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "exported_with": code_version(),
        "checkpoint": str(path), "run_dir": str(run_dir) if run_dir is not None else None,
        "objective": objective_record(module, saved), "encoder": encoder_record(module),
        "training": training_record(saved, run_dir, config), "flops": flops_record(module, saved, path, config),
        "data": data_record(saved, run_dir),
        "tokenizer": tokenizer_record(module, saved.get("datamodule_hyper_parameters") or {}),
        "downstream": None, "config": config,
    }
    record["not_recorded"] = not_recorded(record, run_dir)
    return record
