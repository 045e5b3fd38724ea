"""Offline downstream tasks built from the embedded CPython-docs corpus (no download needed).

GLUE needs the network; these two tasks give every machine a downstream check of an encoder, built
deterministically from :func:`datamodules.corpus.load_corpus`:

``docpkg`` (single text, :data:`~downstream.tasks.NUM_PACKAGES` classes)
    Which top-level package a docstring comes from (``asyncio``, ``email``, ``tkinter`` ...): the
    largest packages by number of docstrings, among those with at least three modules so that each
    split can hold some of them. Classes are capped per split (:data:`DOCPKG_CAP`), so they are
    close to balanced and the majority-class baseline is near 1 / NUM_PACKAGES.
``docpair`` (sentence pair, 2 classes)
    Does sentence B directly follow sentence A in the same docstring (label 1, ``next``), or is B a
    sentence from another docstring of the same split (label 0, ``not_next``)? Every positive gets
    exactly one negative with the same A, so the classes are balanced (baseline 50%). Negatives never
    use a docstring's first sentence, which positives can never be either: the position of B gives
    nothing away. The task is relational (no single sentence tells the label): a word-overlap rule
    gets about 75%, while tiny encoders without real pre-training stay at chance, which is what
    makes it a probe of pre-training rather than of fine-tuning.

Splits (train / validation / test, about 70 / 15 / 15) are by source module: a module's docstrings
all land in one split, so near-duplicate methods of one class never straddle train and dev. The
modules of a package with three or more modules are dealt out largest first to the split furthest
below its share of that package's docstrings (ties broken by a hash of the module name), and every
split gets at least one of them; other modules go to the split that a hash of their name picks.

Built tasks are cached in ``<cache>/downstream/<task>-<OFFLINE_VERSION>-<corpus hash>`` (isoflop's
cache root, :func:`datamodules.cache.default_cache_dir`), built once and renamed into place by
:func:`datamodules.cache.build_once`; change :data:`OFFLINE_VERSION` whenever a change here changes
the data. The tasks' specs (columns, metrics, labels) are in :mod:`downstream.tasks`.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import datasets

from datamodules.cache import build_once, default_cache_dir
from datamodules.corpus import corpus_fingerprint, load_corpus
from downstream.tasks import NUM_PACKAGES, OFFLINE_TASKS

OFFLINE_VERSION = "downstream-1"
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}
# Per class and split for docpkg; positive pairs per split for docpair (as many negatives again).
DOCPKG_CAP = {"train": 200, "validation": 40, "test": 40}
DOCPAIR_CAP = {"train": 2000, "validation": 300, "test": 300}
PAIRS_PER_DOC = 2  # long help topics would otherwise dominate docpair
MIN_SENTENCE_WORDS = 4

# End punctuation, space, then something that starts a sentence. Frozen here (not shared with the
# pre-training splitter) because it defines docpair's data: changing it needs a new OFFLINE_VERSION.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'`(])")


def _unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) for a string (never Python's salted ``hash``)."""
    return int(hashlib.sha256(f"{OFFLINE_VERSION}\0{text}".encode()).hexdigest()[:12], 16) / 16**12


def _hash_split(module: str) -> str:
    u, edge = _unit_hash(module), 0.0
    for split in SPLITS:
        edge += SPLIT_FRACTIONS[split]
        if u < edge:
            return split
    return SPLITS[-1]


def module_splits(modules: list[str], packages: list[str]) -> dict[str, str]:
    """Map every module to one split, given each document's module and package (parallel lists)."""
    size: Counter[str] = Counter(modules)
    by_package: dict[str, set[str]] = defaultdict(set)
    for module, package in zip(modules, packages):
        by_package[package].add(module)
    out: dict[str, str] = {}
    for package in sorted(by_package):
        mods = sorted(by_package[package], key=lambda m: (-size[m], _unit_hash(m)))
        if len(mods) < len(SPLITS):
            out.update({m: _hash_split(m) for m in mods})
            continue
        total = sum(size[m] for m in mods)
        filled = dict.fromkeys(SPLITS, 0)
        for i, module in enumerate(mods):
            empty = [s for s in SPLITS if filled[s] == 0]
            # Once only as many modules remain as there are empty splits, they must go there.
            choices = empty if len(mods) - i <= len(empty) else list(SPLITS)
            split = max(choices, key=lambda s: SPLIT_FRACTIONS[s] * total - filled[s])  # ties: SPLITS order
            filled[split] += size[module]
            out[module] = split
    return out


def sentences(text: str) -> list[str]:
    """The sentences of a corpus text, in order (paragraphs are separated by blank lines)."""
    return [s.strip() for para in text.split("\n\n") for s in _SENTENCE_END.split(para) if s.strip()]


def _words(s: str) -> int:
    return len(s.split())


def build_docpkg(corpus: datasets.Dataset) -> datasets.DatasetDict:
    """The package-classification task (see the module docstring)."""
    modules, packages, texts, names = corpus["module"], corpus["package"], corpus["text"], corpus["name"]
    split_of = module_splits(modules, packages)
    n_modules = Counter(p for _, p in set(zip(modules, packages)))
    counts = Counter(packages)
    eligible = [p for p in counts if n_modules[p] >= len(SPLITS)]
    chosen = sorted(eligible, key=lambda p: (-counts[p], p))[:NUM_PACKAGES]
    if len(chosen) < NUM_PACKAGES:
        raise ValueError(
            f"docpkg needs {NUM_PACKAGES} packages with >= {len(SPLITS)} modules; this corpus has {len(chosen)}"
        )
    label_names = sorted(chosen)
    label_of = {p: i for i, p in enumerate(label_names)}
    rows: dict[tuple[str, str], list[tuple[float, dict]]] = defaultdict(list)
    for text, module, package, name in zip(texts, modules, packages, names):
        if package in label_of:
            row = {"sentence": text, "label": label_of[package], "module": module, "name": name}
            rows[(split_of[module], package)].append((_unit_hash(f"{module}\0{name}\0{text}"), row))
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=label_names),
            "module": datasets.Value("string"),
            "name": datasets.Value("string"),
        }
    )
    out = {}
    for split in SPLITS:
        picked: list[tuple[float, dict]] = []
        for package in label_names:
            # Cap by a hash order: a deterministic sample that does not favour any module's position.
            picked += sorted(rows[(split, package)], key=lambda r: r[0])[: DOCPKG_CAP[split]]
        picked.sort(key=lambda r: r[0])  # interleave classes
        out[split] = datasets.Dataset.from_list([r for _, r in picked], features=features)
    return datasets.DatasetDict(out)


def build_docpair(corpus: datasets.Dataset) -> datasets.DatasetDict:
    """The next-sentence task (see the module docstring)."""
    split_of = module_splits(corpus["module"], corpus["package"])
    # Per split: (module, sentence list) of every document with at least one usable pair.
    docs: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for text, module in zip(corpus["text"], corpus["module"]):
        sents = sentences(text)
        if len(sents) >= 2:
            docs[split_of[module]].append((module, sents))
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(OFFLINE_TASKS["docpair"].label_names)),
            "module": datasets.Value("string"),
        }
    )
    out = {}
    for split in SPLITS:
        rng = random.Random(f"{OFFLINE_VERSION}:docpair:{split}")  # str seeds are stable across runs
        split_docs = docs[split]
        # Negative candidates: non-first sentences, tagged with their document index.
        pool = [(d, s) for d, (_, sents) in enumerate(split_docs) for s in sents[1:] if _words(s) >= MIN_SENTENCE_WORDS]
        positives: list[tuple[int, str, str, str]] = []
        for d, (module, sents) in enumerate(split_docs):
            pairs = [
                (a, b)
                for a, b in zip(sents, sents[1:])
                if _words(a) >= MIN_SENTENCE_WORDS and _words(b) >= MIN_SENTENCE_WORDS
            ]
            for a, b in rng.sample(pairs, min(PAIRS_PER_DOC, len(pairs))):
                positives.append((d, module, a, b))
        rng.shuffle(positives)
        rows = []
        for d, module, a, b in positives[: DOCPAIR_CAP[split]]:
            while True:  # another document's sentence (the pool spans hundreds of documents)
                other, b_neg = pool[rng.randrange(len(pool))]
                if other != d and b_neg != b:
                    break
            rows.append({"sentence1": a, "sentence2": b, "label": 1, "module": module})
            rows.append({"sentence1": a, "sentence2": b_neg, "label": 0, "module": module})
        rng.shuffle(rows)
        out[split] = datasets.Dataset.from_list(rows, features=features)
    return datasets.DatasetDict(out)


_BUILDERS = {"docpkg": build_docpkg, "docpair": build_docpair}


def task_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a built offline task is cached (keyed by OFFLINE_VERSION and the corpus's hash)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    corpus_hash = corpus_fingerprint(cache_dir)["sha256"][:12]
    return root / "downstream" / f"{name}-{OFFLINE_VERSION}-{corpus_hash}"


def load_offline_task(name: str, cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Build (once, under a file lock, so concurrent ranks wait for the first builder) or load an
    offline task: splits train, validation, test."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown offline task {name!r}; valid: {', '.join(_BUILDERS)}")

    def build(tmp: Path) -> None:
        # The corpus is loaded only when the task must be built; readers never see a partial save.
        _BUILDERS[name](load_corpus(cache_dir)).save_to_disk(str(tmp))

    final = build_once(task_dir(name, cache_dir), build, done="dataset_dict.json")
    return datasets.load_from_disk(str(final))
