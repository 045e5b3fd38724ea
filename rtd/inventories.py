"""Intersphinx inventories of the names these pages link to in the libraries isoflop builds on.

PyTorch and Lightning publish Sphinx inventories (``objects.inv``): the build fetches them, and falls
back to the small inventory written here when there is no network, so that the pages build (and link
to the right place) offline too. Hugging Face's documentation (transformers, datasets) is built with
its own tool and publishes no inventory: the one written here is the only one, and its addresses are
the anchors of Hugging Face's pages (``model_doc/electra#transformers.ElectraForPreTraining``).

A page links with the usual roles, e.g. ``:class:`~transformers.ElectraForPreTraining```; a name missing
here (offline) or from the library's inventory (online) is a warning, so the build fails on it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

# project -> (documentation root, {name: (domain:role, address relative to the root)}); "$" in an
# address stands for the name.
INVENTORIES = {
    "torch": ("https://docs.pytorch.org/docs/stable/", {
        "torch.compile": ("py:function", "generated/torch.compile.html#$"),
        "torch.nn.Module": ("py:class", "generated/torch.nn.Module.html#$"),
        "torch.optim.AdamW": ("py:class", "generated/torch.optim.AdamW.html#$"),
        "torch.nn.functional.scaled_dot_product_attention": ("py:function", "generated/$.html#$"),
        "torch.distributed.fsdp.FullyShardedDataParallel": ("py:class", "fsdp.html#$"),
    }),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", {
        name: (role, "api/$.html#$") for name, role in (
            ("lightning.pytorch.trainer.trainer.Trainer", "py:class"),
            ("lightning.pytorch.core.LightningModule", "py:class"),
            ("lightning.pytorch.core.LightningDataModule", "py:class"),
            ("lightning.pytorch.callbacks.Callback", "py:class"),
            ("lightning.pytorch.callbacks.ModelCheckpoint", "py:class"),
            ("lightning.pytorch.cli.LightningCLI", "py:class"),
            ("lightning.pytorch.strategies.DDPStrategy", "py:class"),
            ("lightning.pytorch.strategies.FSDPStrategy", "py:class"),
            ("lightning.pytorch.strategies.DeepSpeedStrategy", "py:class"),
            ("lightning.pytorch.loggers.WandbLogger", "py:class"),
            ("lightning.pytorch.loggers.CSVLogger", "py:class"),
        )
    }),
    "transformers": ("https://huggingface.co/docs/transformers/en/", {
        "transformers.PreTrainedModel.from_pretrained": ("py:method", "main_classes/model#$"),
        "transformers.PreTrainedModel.save_pretrained": ("py:method", "main_classes/model#$"),
        "transformers.ElectraForPreTraining": ("py:class", "model_doc/electra#$"),
        "transformers.ElectraForMaskedLM": ("py:class", "model_doc/electra#$"),
        "transformers.DebertaV2ForMaskedLM": ("py:class", "model_doc/deberta-v2#$"),
        "transformers.AutoModel": ("py:class", "model_doc/auto#$"),
        "transformers.AutoTokenizer": ("py:class", "model_doc/auto#$"),
    }),
    "datasets": ("https://huggingface.co/docs/datasets/en/", {
        "datasets.load_dataset": ("py:function", "package_reference/loading_methods#$"),
        "datasets.load_from_disk": ("py:function", "package_reference/loading_methods#$"),
        "datasets.Dataset": ("py:class", "package_reference/main_classes#$"),
        "datasets.Dataset.save_to_disk": ("py:method", "package_reference/main_classes#$"),
        "datasets.IterableDataset": ("py:class", "package_reference/main_classes#$"),
    }),
}
# The projects that publish an inventory of their own, fetched first.
PUBLISHED = ("torch", "lightning")


def write_inventory(path: Path, project: str, names: dict[str, tuple[str, str]]) -> None:
    """A Sphinx inventory (version 2: four header lines, then zlib-compressed ``name domain:role priority
    address display-name`` lines, ``-`` for a display name equal to the name)."""
    lines = "".join(f"{name} {role} 1 {address} -\n" for name, (role, address) in sorted(names.items()))
    header = f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n" \
             "# The remainder of this file is compressed using zlib.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress(lines.encode()))


def intersphinx_mapping(directory: Path) -> dict:
    """``intersphinx_mapping`` for conf.py, writing the local inventories into ``directory``."""
    mapping = {}
    for project, (root, names) in INVENTORIES.items():
        local = directory / f"{project}.inv"
        write_inventory(local, project, names)
        mapping[project] = (root, (None, str(local)) if project in PUBLISHED else str(local))
    return mapping
