"""Checkpoint files: written atomically, read with a one-line error, checked for non-finite weights.

A run is left alone for days; a kill, a preemption or a full disk in the middle of a save must leave
the previous checkpoint where it was, not a truncated file that the next resume trips over. And a
checkpoint whose weights are NaN must never be exported or fine-tuned as if it were a model.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.cache import open_atomic
from experiments.errors import CorruptCheckpoint, one_line

_WHAT_TO_DO = ("delete it to start over (or to resume from an earlier checkpoint with --ckpt_path), "
               "or pass a complete checkpoint")


# The file of a sharded checkpoint directory beside the shards, holding everything but the weights and the
# optimiser states (Lightning's FSDPStrategy.save_checkpoint writes it; torch.load reads it).
SHARDED_META = "meta.pt"


def _corrupt(path: str | os.PathLike, why: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"checkpoint {str(path)!r} is truncated or not a checkpoint ({why}): {_WHAT_TO_DO}")


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """``file`` (one ``.ckpt`` file: DDP, one device, FSDP's default full state), ``sharded`` (a directory of
    FSDP shards, Lightning's ``state_dict_type="sharded"``), ``deepspeed`` (a DeepSpeed directory), or None."""
    path = Path(path)
    if path.is_file():
        return "file"
    if path.is_dir() and (path / SHARDED_META).is_file():
        return "sharded"
    if path.is_dir() and ((path / "latest").is_file() or (path / "checkpoint").is_dir()):
        return "deepspeed"
    return None


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """A quick check, before any data is built, that ``path`` is a complete checkpoint: a file whose zip
    directory (torch's format since 1.6) is intact (a truncated file fails here), or a sharded FSDP or
    DeepSpeed checkpoint directory."""
    path = Path(path)
    if checkpoint_kind(path) in ("sharded", "deepspeed"):
        return path
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found: pass a .ckpt file (or a sharded checkpoint "
                                "directory) written by isoflop pretrain")
    if path.stat().st_size == 0:
        raise _corrupt(path, "the file is empty")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise _corrupt(path, str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    else:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":  # neither a zip archive nor a (legacy) pickle
            raise _corrupt(path, "not a zip archive or a pickle")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool | None = False) -> dict:
    """``torch.load`` of a checkpoint, with a one-line :class:`CorruptCheckpoint` naming the file
    instead of torch's ``PytorchStreamReader`` traceback when it is truncated or not a checkpoint."""
    path = check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise _corrupt(path, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
    if not isinstance(checkpoint, dict):
        raise _corrupt(path, f"it holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, writing every local checkpoint to a temporary name in the same
    directory and renaming it into place (``datamodules.cache.open_atomic``), and turning an unreadable
    checkpoint into one line naming the file. Remote paths (``s3://`` ...) keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with open_atomic(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        return load_checkpoint(path, map_location=location, weights_only=weights_only)


def consolidate(path: str | os.PathLike) -> dict:
    """A checkpoint as one dictionary, whatever its kind: a sharded FSDP directory gathered into full
    tensors on the CPU, needing no process group (:func:`consolidate_sharded`), a DeepSpeed directory with
    Lightning's ZeRO conversion (which needs DeepSpeed)."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "sharded":
        return consolidate_sharded(path)
    if kind == "deepspeed":
        import importlib.util
        import tempfile

        if importlib.util.find_spec("deepspeed") is None:
            raise CorruptCheckpoint(f"checkpoint {str(path)!r} is a DeepSpeed directory, and DeepSpeed is not installed: "
                                    "pip install 'isoflop[deepspeed]' to read it")
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(tmp) / "full.ckpt"))
            return load_checkpoint(Path(tmp) / "full.ckpt")
    return load_checkpoint(path)


def consolidate_sharded(path: Path) -> dict:
    """A sharded FSDP checkpoint directory (Lightning's ``state_dict_type="sharded"``) as the checkpoint
    dictionary the same run saves as one file.

    Lightning's FSDP strategy saves the weights as ``model``, the optimisers' states as ``optimizer_0``,
    ``optimizer_1``, ... with ``torch.distributed.checkpoint`` (full tensors split into shards), and the
    rest of the checkpoint in ``meta.pt``. The shards are gathered into full tensors by torch's public
    converter (``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``, through a temporary file),
    ``meta.pt`` is added, and the weights and states are put back under ``state_dict`` and
    ``optimizer_states`` (a list, in optimiser order): the layout Lightning's own consolidation
    (``python -m lightning.pytorch.utilities.consolidate_checkpoint``) produces, and what a Trainer loads.
    """
    import tempfile

    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    try:
        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            checkpoint = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
            if (path / SHARDED_META).is_file():
                checkpoint.update(torch.load(path / SHARDED_META, map_location="cpu", weights_only=False))
        checkpoint["state_dict"] = checkpoint.pop("model")
        count = sum(1 for key in checkpoint if re.fullmatch(r"optimizer_\d+", key))
        if count:
            checkpoint["optimizer_states"] = [checkpoint.pop(f"optimizer_{i}") for i in range(count)]
    except CheckpointException as err:  # a shard that cannot be read: torch's error for it, not every rank's traceback
        cause = next(iter(err.failures.values()), (err, None))[0]
        raise _corrupt(path, one_line(str(cause).splitlines()[0] if str(cause) else type(cause).__name__)) from None
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise _corrupt(path, one_line(str(err).splitlines()[0] if str(err) else type(err).__name__)) from None
    return checkpoint


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """``name (k of n values NaN or infinite)`` of the first floating-point tensor with a non-finite
    value, or None when all are finite."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return f"{name} ({bad} of {tensor.numel()} values NaN or infinite)"
    return None
