"""``isoflop export``: a Lightning checkpoint to Hugging Face ``save_pretrained`` directories.

The checkpoint carries the objective's class path and its tokenizer (see
``PretrainingObjective.on_save_checkpoint``), so export needs nothing but the file. A sharded checkpoint
(FSDP's ``state_dict_type="sharded"``, a directory of shards; or a DeepSpeed directory) is consolidated
into full tensors on the way (:func:`experiments.run.checkpoints.consolidate`), so the export is the same
Hugging Face directories as that of the same weights saved as one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datamodules.cache import replace_directory


def load_objective(checkpoint: str | os.PathLike):
    """The objective saved in a checkpoint, on the CPU, in eval mode. One-line errors for a missing,
    truncated or foreign file, and for weights that are NaN or infinite (a diverged run's): those are
    refused, never exported."""
    from experiments.run.checkpoints import consolidate, first_nonfinite
    from objectives import resolve

    path = Path(checkpoint)
    saved = consolidate(path)
    meta = saved.get("isoflop")
    if not meta or "class_path" not in meta:
        raise ValueError(f"{str(path)!r} is not an isoflop checkpoint (no 'isoflop' metadata): export needs one written by isoflop pretrain")
    bad = first_nonfinite(saved.get("state_dict", {}))
    if bad:
        raise ValueError(f"checkpoint {str(path)!r} has non-finite weights ({bad}): the run diverged; export an "
                         "earlier checkpoint")
    # The checkpoint already in memory (one file, or the shards consolidated), through Lightning's loader of
    # a loaded checkpoint (what load_from_checkpoint runs after reading the file): hyper-parameters,
    # configure_model, on_load_checkpoint, the weights; read once, not a second time from disk.
    from lightning.pytorch.core.saving import _load_state

    saved.setdefault("hyper_parameters", {})
    return _load_state(resolve(meta["class_path"]), saved).eval()


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Export, writing to a temporary directory first so a failure never leaves a half-written one.

    Returns lines describing what was written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} is a file: give a directory to export into")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists and is not empty: choose another directory (nothing was overwritten)")
    from transformers.utils import logging as hf_logging

    module = load_objective(checkpoint)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "writing model shards" bar per network says nothing here
    try:
        replace_directory(module.export, out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    lines = [f"exported {type(module).__name__} to {out}"]
    for config in sorted(out.rglob("config.json")):
        lines.append(f"  {config.parent}: {json.loads(config.read_text())['architectures'][0]}")
    return lines
