"""``isoflop export``: a Lightning checkpoint to Hugging Face ``save_pretrained`` directories.

The checkpoint carries the objective's class path and its tokenizer (see
``PretrainingObjective.on_save_checkpoint``), so export needs nothing but the file. A sharded checkpoint
(FSDP's ``state_dict_type="sharded"``, a directory of shards; or a DeepSpeed directory) is consolidated
into full tensors on the way (:func:`experiments.run.checkpoints.consolidate`), so the export is the same
Hugging Face directories as that of the same weights saved as one file.

Every network directory of an export also holds a model card (``README.md``, Hugging Face metadata included) and
the export's provenance (``isoflop.json``): :mod:`experiments.run.model_card`, :mod:`experiments.run.provenance`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datamodules.cache import replace_directory


def load_objective(checkpoint: str | os.PathLike):
    """The objective saved in a checkpoint, on the CPU, in eval mode. One-line errors for a missing,
    truncated or foreign file, and for weights that are NaN or infinite (a diverged run's): those are
    refused, never exported."""
    return load_saved(checkpoint)[0]


def load_saved(checkpoint: str | os.PathLike) -> tuple[Any, dict]:
    """(the objective, as :func:`load_objective` gives it; the checkpoint's dictionary, read once)."""
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
    return restore_objective(resolve(meta["class_path"]), saved).eval(), saved


def restore_objective(cls, checkpoint: dict):
    """An objective of class ``cls`` restored from a checkpoint already in memory (one file, or the shards
    consolidated; read once, not a second time from disk), by the public steps ``load_from_checkpoint``
    takes after reading the file: built from the saved hyper-parameters (those ``cls`` takes), its
    networks built (``configure_model``), its ``on_load_checkpoint`` (the tokenizer, the stage), then the
    weights and buffers (``tokens_seen``, ``mask_token_id``) loaded as strictly as the module asks
    (``strict_loading``: every key, by default). On the CPU, where the checkpoint's tensors are."""
    import inspect

    from experiments.config import accepted_args

    hparams = dict(checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {})
    params = inspect.signature(cls).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        names = {p.name for p in params}
        hparams = {k: v for k, v in hparams.items() if k in names}  # as Lightning: the arguments cls takes
    # Checkpoints saved before DeBERTa's enhanced mask decoder became a setting (on by default) were trained
    # without it and hold no position table for it.
    if "enhanced_mask_decoder" in accepted_args(cls):
        hparams.setdefault("enhanced_mask_decoder", False)
    module = cls(**hparams)
    module.configure_model()
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return module


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                      repo: str | None = None) -> list[str]:
    """Export, writing to a temporary directory first so a failure never leaves a half-written one: every
    network's ``save_pretrained`` directory, with its model card and provenance. ``repo``: the hub repository
    the main network will be published to (``--push_to_hub``), named in the cards' loading code.

    Returns lines describing what was written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} is a file: give a directory to export into")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists and is not empty: choose another directory (nothing was overwritten)")
    from transformers.utils import logging as hf_logging

    from experiments.run.hub import repo_name
    from experiments.run.model_card import CARD_FILE, network_folders, write_cards
    from experiments.run.provenance import PROVENANCE_FILE, provenance

    module, saved = load_saved(checkpoint)
    record = provenance(module, saved, checkpoint)
    del saved  # the optimiser's state and the rest: not needed any more

    def build(tmp: Path) -> None:
        module.export(tmp)
        repos = None if repo is None else {rel: repo_name(repo, rel) for rel in network_folders(tmp)}
        write_cards(tmp, record, repos)

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "writing model shards" bar per network says nothing here
    try:
        replace_directory(build, out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    lines = [f"exported {type(module).__name__} to {out}"]
    for config in sorted(out.rglob("config.json")):
        lines.append(f"  {config.parent}: {json.loads(config.read_text())['architectures'][0]}")
    lines.append(f"  each with its model card ({CARD_FILE}) and provenance ({PROVENANCE_FILE})")
    return lines
