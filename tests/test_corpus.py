"""Tests for the embedded offline corpus (datamodules/corpus.py).

The corpus is built once per module into a temporary cache (a few seconds); the concurrency test
builds it once more in two competing subprocesses with different hash seeds, which also checks
that the output does not depend on hash randomisation.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from datamodules import cache, corpus

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("isoflop-cache")
    ds = corpus.load_corpus(cache)
    return {"cache": cache, "ds": ds, "docs": ds.to_list()}


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ISOFLOP_CACHE", str(tmp_path / "elsewhere"))
    assert cache.default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("ISOFLOP_CACHE")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "isoflop"


def test_clean_docstring_keeps_prose_drops_code() -> None:
    raw = """Summary line here.

        More words   in this
        paragraph spanning lines.

        Example::

            x = compute(1, 2)

            print(x)

        >>> compute(1, 2)
        3

        Section
        =======

        Final paragraph of prose stays.
        """
    assert corpus.clean_docstring(raw) == (
        "Summary line here.\n\nMore words in this paragraph spanning lines.\n\nExample:\n\n"
        "Section\n\nFinal paragraph of prose stays."
    )
    assert corpus.clean_docstring(">>> 1 + 1\n2\n") == ""
    assert corpus.clean_docstring("(typ, [data]) = <instance>.close()") == ""


def test_columns_and_values(built: dict[str, Any]) -> None:
    ds, docs = built["ds"], built["docs"]
    assert ds.column_names == list(corpus.COLUMNS)
    assert {d["kind"] for d in docs} == set(corpus.KINDS)
    for d in docs:
        assert all(isinstance(d[c], str) and d[c] for c in corpus.COLUMNS), d
        assert d["package"] == d["module"].partition(".")[0], d
        if d["kind"] == "topic":
            assert d["module"] == corpus.TOPICS_MODULE and d["package"] == "pydoc_data"
        else:
            assert d["name"] == d["module"] or d["name"].startswith(d["module"] + "."), d
        if d["kind"] == "module":
            assert d["name"] == d["module"]

    by_name = {d["name"]: d for d in docs}
    assert by_name["json"]["kind"] == "module"
    assert by_name["json.decoder.JSONDecoder"]["kind"] == "class"
    decode = by_name["json.decoder.JSONDecoder.decode"]
    assert decode["module"] == "json.decoder"
    assert (decode["package"], decode["kind"]) == ("json", "function")
    assert by_name["builtins.sorted"]["kind"] == "function"  # a C module docstring
    topics = {d["name"] for d in docs if d["kind"] == "topic"}
    assert {"assert", "for", "try", "with", "lambda"} <= topics
    assert len(topics) >= 50


def test_packages_are_stdlib_and_varied(built: dict[str, Any]) -> None:
    docs = built["docs"]
    counts = collections.Counter(d["package"] for d in docs)
    assert len(counts) >= 20
    # Enough material for an 8+-way "which package is this docstring from" task.
    assert sum(n >= 50 for n in counts.values()) >= 8
    assert set(counts) <= set(sys.stdlib_module_names), "something outside the standard library"
    for d in docs:
        parts = d["module"].split(".")
        assert not {"test", "tests", "idle_test", "turtledemo"} & set(parts), d["module"]
        assert not any(p.startswith("test_") for p in parts), d["module"]
        assert not d["module"].startswith(("_sysconfigdata", "sitecustomize")), d["module"]


def test_documents_are_clean_and_unique(built: dict[str, Any]) -> None:
    texts = [d["text"] for d in built["docs"]]
    assert len(set(texts)) == len(texts), "duplicate documents"
    for text in texts:
        assert text == text.strip() and "\0" not in text
        assert corpus._word_count(text) >= corpus.MIN_WORDS, text
        for paragraph in text.split("\n\n"):
            # Paragraphs are non-empty and whitespace-normalised: single spaces, no newlines.
            assert paragraph and paragraph == " ".join(paragraph.split()), repr(paragraph)
            assert not paragraph.startswith(">>>"), "doctest left in"


def test_order_is_by_module(built: dict[str, Any]) -> None:
    modules = [d["module"] for d in built["docs"]]
    assert modules == sorted(modules)


def test_fingerprint(built: dict[str, Any]) -> None:
    fp = corpus.corpus_fingerprint(built["cache"])
    texts = [d["text"] for d in built["docs"]]
    # Recomputed here from the documented definition, not with the module's helper.
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    assert fp == {
        "name": "cpython-docs",
        "python_version": platform.python_version(),
        "documents": len(texts),
        "bytes": sum(len(t.encode("utf-8")) for t in texts),
        "sha256": h.hexdigest(),
    }
    assert 1_000_000 < fp["bytes"] < 20_000_000
    saved = corpus.corpus_dir(built["cache"]) / "fingerprint.json"
    assert json.loads(saved.read_text(encoding="utf-8")) == fp
    name = corpus.corpus_dir(built["cache"]).name
    assert name.startswith(f"cpython-docs-{platform.python_version()}-")


def test_second_load_reuses_cache(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    target = corpus.corpus_dir(built["cache"])
    before = {p: p.stat().st_mtime_ns for p in target.iterdir()}
    siblings = sorted(p.name for p in target.parent.iterdir())

    def must_not_run(**kwargs: Any) -> list[dict[str, str]]:
        raise AssertionError("corpus re-extracted although it is cached")

    monkeypatch.setattr(corpus, "build_documents", must_not_run)
    ds = corpus.load_corpus(built["cache"])
    assert corpus.corpus_fingerprint(built["cache"])["documents"] == len(ds) == len(built["docs"])
    assert ds[0] == built["docs"][0] and ds[-1] == built["docs"][-1]
    assert {p: p.stat().st_mtime_ns for p in target.iterdir()} == before
    assert sorted(p.name for p in target.parent.iterdir()) == siblings
    assert not [name for name in siblings if ".tmp-" in name]


def test_failed_build_leaves_nothing_and_stale_temp_is_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(**kwargs: Any) -> list[dict[str, str]]:
        raise RuntimeError("boom")

    monkeypatch.setattr(corpus, "build_documents", crash)
    with pytest.raises(RuntimeError, match="boom"):
        corpus.load_corpus(tmp_path)
    target = corpus.corpus_dir(tmp_path)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]

    # A temp dir left by a killed process is removed by the next build, which then succeeds.
    stale = target.parent / f".{target.name}.tmp-99999-deadbeef"
    stale.mkdir()
    doc = {"text": "One small document of plain English words for the test.", "module": "m",
           "package": "m", "kind": "module", "name": "m"}
    monkeypatch.setattr(corpus, "build_documents", lambda **kwargs: [doc])
    ds = corpus.load_corpus(tmp_path)
    assert ds.to_list() == [doc]
    assert not stale.exists()
    assert corpus.corpus_fingerprint(tmp_path)["bytes"] == len(doc["text"])


# Loads corpus.py by path: the datamodules package __init__ pulls in lightning, which would
# double this test's time without testing anything more.
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("corpus", sys.argv[2])
corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(corpus)

real = corpus.build_documents

def counted(**kwargs):
    print("EXTRACTING", flush=True)
    return real(**kwargs)

corpus.build_documents = counted
ds = corpus.load_corpus(sys.argv[1])
print(json.dumps({"fp": corpus.corpus_fingerprint(sys.argv[1]), "first": ds[0], "last": ds[-1]}))
"""


def test_concurrent_builds_are_deterministic(built: dict[str, Any], tmp_path: Path) -> None:
    """Two processes race for an empty cache: one extracts, the other waits for it; both see the
    same corpus as the in-process build, whatever their hash seed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), corpus.__file__],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "2")
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.splitlines())
    assert sum(lines.count("EXTRACTING") for lines in outputs) == 1
    expected = {
        "fp": corpus.corpus_fingerprint(built["cache"]),
        "first": built["docs"][0],
        "last": built["docs"][-1],
    }
    for lines in outputs:
        assert json.loads(lines[-1]) == expected
    assert not [p for p in corpus.corpus_dir(tmp_path).parent.iterdir() if ".tmp-" in p.name]
