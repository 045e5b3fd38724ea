"""The offline downstream tasks (docpkg, docpair) built from the embedded corpus: deterministic,
split by source module, balanced, cached, usable wherever a GLUE task is, and learnable: a short
fine-tune of a briefly pre-trained tiny encoder beats the majority-class baseline on docpkg."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from downstream.data import TaskDataModule
from downstream.offline import (
    DOCPKG_CAP,
    NUM_PACKAGES,
    OFFLINE_VERSION,
    SPLITS,
    build_docpair,
    build_docpkg,
    load_offline_task,
    module_splits,
    sentences,
    task_dir,
)
from experiments.finetuning import finetune as ft


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny fine-tuning runs: one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def corpus(cache_dir):
    from datamodules.corpus import load_corpus

    return load_corpus(cache_dir)


@pytest.fixture(scope="module")
def tasks(cache_dir, corpus):
    return {name: load_offline_task(name, cache_dir) for name in ("docpkg", "docpair")}


def test_module_splits_are_whole_modules_and_cover_every_package():
    # Three packages: one big module plus small ones, evenly sized modules, and a single module.
    modules, packages = [], []
    for module, package, n in [("a", "a", 60), ("a.x", "a", 10), ("a.y", "a", 5), ("a.z", "a", 5),
                               *[(f"b.m{i}", "b", 4) for i in range(10)], ("c", "c", 30)]:
        modules += [module] * n
        packages += [package] * n
    split_of = module_splits(modules, packages)
    assert set(split_of) == set(modules) and set(split_of.values()) <= set(SPLITS)
    for package in ("a", "b"):  # >= 3 modules: every split gets some
        assert {split_of[m] for m in set(modules) if m.partition(".")[0] == package} == set(SPLITS)
    assert split_of["a"] == "train"  # the largest module goes where the biggest share is missing
    # A pure function of the documents: input order does not matter.
    order = list(range(len(modules)))
    random.Random(0).shuffle(order)
    assert module_splits([modules[i] for i in order], [packages[i] for i in order]) == split_of


def test_sentences_split_on_end_punctuation_and_paragraphs():
    text = "Return the value. It may be None! Is it?\n\nA new paragraph (with e.g. an example) ends here."
    assert sentences(text) == ["Return the value.", "It may be None!", "Is it?",
                               "A new paragraph (with e.g. an example) ends here."]


def test_offline_tasks_are_deterministic_cached_and_split_by_module(cache_dir, corpus, tasks):
    # Cached on disk, keyed by the version string (and the corpus hash).
    for name, built in tasks.items():
        path = task_dir(name, cache_dir)
        assert path.is_dir() and OFFLINE_VERSION in path.name and str(path).startswith(str(cache_dir))
        assert set(built) == set(SPLITS)
        start = time.perf_counter()
        again = load_offline_task(name, cache_dir)
        assert time.perf_counter() - start < 2.0  # read from the cache, not rebuilt
        # Rebuilding from the corpus gives exactly the cached rows.
        rebuilt = {"docpkg": build_docpkg, "docpair": build_docpair}[name](corpus)
        for split in SPLITS:
            assert rebuilt[split].to_dict() == again[split].to_dict()
        # No module contributes to two splits.
        seen = {split: set(built[split]["module"]) for split in SPLITS}
        assert not (seen["train"] & seen["validation"] or seen["train"] & seen["test"] or seen["validation"] & seen["test"])

    pkg = tasks["docpkg"]
    names = pkg["train"].features["label"].names
    assert len(names) == NUM_PACKAGES >= 8
    docs_per_package = Counter(corpus["package"])
    # Every class is present in every split, at most DOCPKG_CAP per class and split.
    for split in SPLITS:
        counts = Counter(pkg[split]["label"])
        assert set(counts) == set(range(NUM_PACKAGES)) and max(counts.values()) <= DOCPKG_CAP[split]
    # Labels are the true package of the docstring's module.
    for row in pkg["validation"].select(range(50)):
        assert row["module"].partition(".")[0] == names[row["label"]]
    # The chosen packages are large ones (at least as big as the median package).
    assert min(docs_per_package[p] for p in names) >= sorted(docs_per_package.values())[len(docs_per_package) // 2]

    pair = tasks["docpair"]
    by_module: dict[str, list[list[str]]] = {}
    for text, module in zip(corpus["text"], corpus["module"]):
        by_module.setdefault(module, []).append(sentences(text))
    for split in SPLITS:
        labels = Counter(pair[split]["label"])
        assert labels[0] == labels[1] > 0  # exactly balanced
    for row in pair["validation"].select(range(60)):
        consecutive = any(
            row["sentence1"] == a and row["sentence2"] == b for doc in by_module[row["module"]] for a, b in zip(doc, doc[1:])
        )
        assert consecutive == (row["label"] == 1)


def test_offline_tasks_through_the_task_datamodule(tmp_path, cache_dir, tasks):
    from tests.test_finetune import make_tiny_checkpoint

    assert ft.resolve_tasks("offline") == ["docpkg-probe", "docpair"]
    assert ft.resolve_tasks(["glue", "docpkg"])[-1] == "docpkg" and "wnli" not in ft.resolve_tasks("glue")
    ckpt = make_tiny_checkpoint(tmp_path / "ck", texts=list(tasks["docpair"]["train"]["sentence1"])[:500])
    dm = TaskDataModule(ckpt, task="docpair", cache_dir=str(cache_dir), max_eval_examples=20, max_train_examples=40)
    dm.setup("fit")
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert len(dm.datasets["test"]) == 20


def test_docpair_labels_carry_signal(tasks):
    """An independent word-overlap rule, tuned on train, beats chance on dev: B really follows A.

    (A tiny transformer needs far more pre-training than a unit test can afford to pick this
    relation up, so this is the learnability check for docpair; docpkg's is the fine-tune below.)
    """
    import re

    def words(s: str) -> set[str]:
        return {w for w in re.findall(r"[a-z_]{3,}", s.lower())} - {"the", "and", "for", "this", "that", "with", "are"}

    def overlap(row) -> float:
        a, b = words(row["sentence1"]), words(row["sentence2"])
        return len(a & b) / max(1, len(a | b))

    def accuracy(rows, threshold):
        return sum((overlap(r) > threshold) == (r["label"] == 1) for r in rows) / len(rows)

    train, dev = list(tasks["docpair"]["train"]), list(tasks["docpair"]["validation"])
    threshold = max((0.0, 0.02, 0.05, 0.1, 0.15), key=lambda t: accuracy(train, t))
    assert accuracy(dev, threshold) > 0.65  # chance (and the majority class) is 0.5; measured 0.75 (threshold 0.02)


def test_short_finetune_beats_majority_baseline(tmp_path, cache_dir, tasks, tiny_data):
    """docpkg: a tiny MaskedLM pre-trained for 300 steps on the embedded corpus and exported, then
    fine-tuned for 200 steps, lands above the majority class (11.8%) and above chance macro F1 (10.0).

    Measured on the shipped corpus (any Python build reads the same one), accuracy / macro F1 per
    pre-training seed (``seed_everything``) x fine-tuning seeds 0, 1, 2:

    * seed 0: 40.0 / 33.4, 36.2 / 32.1, 50.6 / 44.1 (this test: seed 0, fine-tuning seed 0)
    * seed 1: 22.6 / 15.3, 28.5 / 22.8, 43.5 / 37.2
    * seed 2: 43.2 / 32.5, 49.4 / 46.9, 39.7 / 32.5
    * seed 3: 33.8 / 26.4, 34.7 / 25.2, 38.5 / 30.9
    * seed 4: 35.3 / 30.5, 32.1 / 28.9, 33.8 / 26.2
    * seed 5: 27.6 / 22.9, 20.3 / 16.6, 50.3 / 44.4

    Accuracy: mean 36.7, standard deviation 8.8, lowest 20.3 (8.5 above the majority class); macro F1:
    mean 30.5, standard deviation 8.8, lowest 15.3 (5.3 above chance). One fine-tune is this noisy, so
    the margins asserted sit some 3.5 points below the lowest of the 18 draws: accuracy above the
    majority class by 5, macro F1 above chance by 2 (about 2.3 and 2.1 standard deviations below the
    means). A broken pipeline predicts one class: 11.8 accuracy, macro F1 near 2. (The old accuracy
    margin of 10 failed one draw of the 18: seed 5, fine-tuning seed 1.)

    (Pre-training for only 100 steps leaves the encoder in a worse starting point than random
    initialisation for this task, 17-19% after 100 fine-tuning steps against 45%; 300 steps do not.)"""
    import lightning as L

    from objectives import MaskedLM
    from tests.conftest import TINY_SEQ, TINY_VOCAB

    L.seed_everything(0)
    model = MaskedLM(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, learning_rate=3e-3,
                     warmup_fraction=0.1)
    model.attach_tokenizer(tiny_data.tokenizer)
    L.Trainer(max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, default_root_dir=tmp_path).fit(model, tiny_data)
    model.export(tmp_path / "ck")
    # The recipe the figures above were measured with: torch's AdamW (bias correction) and the linear schedule
    # (warm-up from the first step), not the official ELECTRA optimiser and schedule that are finetune's defaults.
    results = ft.finetune(str(tmp_path / "ck"), tasks="docpkg", seeds=1, out_dir=str(tmp_path / "out"),
                          cache_dir=str(cache_dir), max_steps=200, epochs=20, max_seq_length=48, batch_size=32,
                          learning_rate=2e-3, layerwise_lr_decay=1.0, adam_bias_correction=True,
                          lr_schedule="linear", wandb=False)
    dev = Counter(tasks["docpkg"]["validation"]["label"])
    majority = 100 * max(dev.values()) / sum(dev.values())
    score = results["docpkg"].median
    macro_f1 = results["docpkg"].others["macro_f1"][0]
    print(f"docpkg dev accuracy {score:.1f} (macro F1 {macro_f1:.1f}) vs majority baseline {majority:.1f}")
    assert score > majority + 5
    assert macro_f1 > 100 / NUM_PACKAGES + 2
