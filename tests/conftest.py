"""Shared fixtures: everything offline, seeded, tiny, on the CPU, caches in a per-session temp dir."""

from __future__ import annotations

import os

# Before anything imports datasets/transformers/wandb: no network, ever.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

TINY_VOCAB = 1024
TINY_SEQ = 64

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes (pytest -n N) share the cores: one intra-op thread each, or their spinning
    # OpenMP threads slow every one of them down (see one_thread).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache for the session: the corpus, tokenizers and packed data are built once."""
    path = tmp_path_factory.mktemp("isoflop-cache")
    os.environ["ISOFLOP_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_data(cache_dir):
    """The embedded corpus (first 3000 documents), a 1024-token WordPiece, 64-token examples."""
    from datamodules import PretrainingDataModule

    dm = PretrainingDataModule(vocab_size=TINY_VOCAB, max_seq_length=TINY_SEQ, batch_size=16, max_documents=3000,
                               max_val_examples=64, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the spinning
    OpenMP threads of concurrent processes slow a run down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
