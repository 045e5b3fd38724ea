"""Tests for the embedded offline corpus (datamodules/corpus.py).

The corpus ships as a frozen file (``datamodules/data/cpython-docs.jsonl.gz``); these tests check that
file against its fingerprint, that loading it never reads the running interpreter's standard library,
that a damaged file is a one-line error, and, on the Python build that made it, that the extractor
reproduces it byte for byte. The corpus is saved once per module into a temporary cache (about a
second); the concurrency test saves it once more in two competing subprocesses with different hash
seeds, which also checks that the result does not depend on hash randomisation.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from datamodules import cache, corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_GZ = corpus.DATA_DIR / "cpython-docs.jsonl.gz"
SHIPPED_JSON = corpus.DATA_DIR / "cpython-docs.json"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    """The shipped fingerprint, read directly (not through the module under test)."""
    return json.loads(SHIPPED_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("isoflop-cache")
    ds = corpus.load_corpus(cache)
    return {"cache": cache, "ds": ds, "docs": ds.to_list()}


@pytest.fixture
def data_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped data directory that the module reads instead (for damaging it)."""
    copy = tmp_path / "data"
    shutil.copytree(corpus.DATA_DIR, copy)
    monkeypatch.setattr(corpus, "DATA_DIR", copy)
    return copy


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


def test_shipped_file_matches_its_fingerprint(shipped: dict[str, Any]) -> None:
    """(a) The .gz is the one its .json describes, written deterministically, and the texts in it
    hash to the recorded fingerprint (recomputed here from the documented definition)."""
    data = SHIPPED_GZ.read_bytes()
    assert hashlib.sha256(data).hexdigest() == shipped["file_sha256"]
    assert len(data) == shipped["file_bytes"] and shipped["file"] == SHIPPED_GZ.name
    assert 100_000 < len(data) < 1_500_000  # a few hundred KB
    # gzip header: deflate, no flags (so no file name), mtime 0.
    assert data[:3] == b"\x1f\x8b\x08" and data[3] == 0 and data[4:8] == b"\0\0\0\0"
    raw = gzip.decompress(data)
    assert raw.endswith(b"\n") and b"\r" not in raw
    lines = raw.decode("utf-8").split("\n")[:-1]
    docs = [json.loads(line) for line in lines]
    # Each line is the canonical serialisation: sorted keys, non-ASCII kept as is.
    assert lines == [json.dumps(d, sort_keys=True, ensure_ascii=False) for d in docs]
    assert all(sorted(d) == sorted(corpus.COLUMNS) for d in docs)
    h = hashlib.sha256()
    for d in docs:
        h.update(d["text"].encode("utf-8") + b"\0")
    assert (shipped["name"], shipped["documents"], shipped["bytes"], shipped["sha256"]) == (
        "cpython-docs", len(docs), sum(len(d["text"].encode("utf-8")) for d in docs), h.hexdigest())
    assert corpus.fingerprint_texts(d["text"] for d in docs) == {
        k: shipped[k] for k in ("name", "documents", "bytes", "sha256")}
    assert (shipped["python_implementation"], shipped["python_version"]) == ("CPython", "3.11.7")
    assert len(shipped["python_build"]) == 2 and len(shipped["extractor"]) == 12
    assert corpus.read_documents() == docs


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


def test_packages_are_stdlib_and_varied(built: dict[str, Any], shipped: dict[str, Any]) -> None:
    docs = built["docs"]
    counts = collections.Counter(d["package"] for d in docs)
    assert len(counts) >= 20
    # Enough material for an 8+-way "which package is this docstring from" task.
    assert sum(n >= 50 for n in counts.values()) >= 8
    if ".".join(map(str, sys.version_info[:2])) == shipped["python_version"].rpartition(".")[0]:
        # The standard library's names are fixed within a minor version (3.12 removed some of 3.11's).
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


def test_fingerprint_is_the_shipped_one(built: dict[str, Any], shipped: dict[str, Any]) -> None:
    fp = corpus.corpus_fingerprint(built["cache"])
    assert fp == shipped  # python_version is the build's (3.11.7), whatever interpreter runs this
    assert fp["documents"] == len(built["docs"])
    assert corpus.fingerprint_texts(d["text"] for d in built["docs"])["sha256"] == fp["sha256"]
    assert 1_000_000 < fp["bytes"] < 20_000_000
    target = corpus.corpus_dir(built["cache"])
    assert json.loads((target / "fingerprint.json").read_text(encoding="utf-8")) == fp
    # Keyed by the shipped file, not by the running Python.
    assert target.name == f"cpython-docs-{fp['sha256'][:12]}-{fp['file_sha256'][:8]}"
    assert platform.python_version() not in target.name
    assert built["ds"]._info.dataset_name == "cpython-docs"


def test_loading_never_reads_the_stdlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        built: dict[str, Any], shipped: dict[str, Any]) -> None:
    """(b) From a fresh cache, with every way to the standard library and the running version blocked."""

    def blocked(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the corpus was extracted from the running interpreter")

    for name in ("_stdlib_dir", "build_documents", "_source_files", "_docstrings_from_c_module"):
        monkeypatch.setattr(corpus, name, blocked)
    monkeypatch.setattr(sysconfig, "get_paths", blocked)
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    ds = corpus.load_corpus(tmp_path)
    assert ds.to_list() == built["docs"]
    assert corpus.corpus_fingerprint(tmp_path) == shipped and shipped["python_version"] == "3.11.7"


def _one_line_error(call: Any, *needles: str) -> str:
    with pytest.raises(corpus.CorpusFileError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    return message


def test_a_damaged_shipped_file_is_a_one_line_error(data_copy: Path, tmp_path: Path) -> None:
    """(c) A changed byte, a fingerprint that does not describe the texts, a file that is not gzip, a
    missing file: each a one-line error that says how to fix it, and nothing is cached."""
    gz = data_copy / SHIPPED_GZ.name
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gz.write_bytes(bytes(data))
    fix = "python -m datamodules.corpus"
    for call in (lambda: corpus.load_corpus(tmp_path / "cache"), lambda: corpus.corpus_fingerprint()):
        _one_line_error(call, "does not match cpython-docs.json", "sha256", fix)

    # A .json whose file hash is right but whose texts' fingerprint is not.
    shutil.copy(SHIPPED_GZ, gz)
    meta = json.loads((data_copy / SHIPPED_JSON.name).read_text(encoding="utf-8"))
    (data_copy / SHIPPED_JSON.name).write_text(json.dumps({**meta, "documents": 1}), encoding="utf-8")
    _one_line_error(lambda: corpus.load_corpus(tmp_path / "cache"), "do not match its fingerprint", fix)

    # A .json that describes a file which is not gzip-compressed JSON lines.
    gz.write_bytes(b"plain text\n")
    meta = {**meta, "file_sha256": hashlib.sha256(b"plain text\n").hexdigest()}
    (data_copy / SHIPPED_JSON.name).write_text(json.dumps(meta), encoding="utf-8")
    _one_line_error(lambda: corpus.load_corpus(tmp_path / "cache"), "not gzip-compressed JSON lines", fix)

    gz.unlink()
    _one_line_error(lambda: corpus.load_corpus(tmp_path / "cache"), "is missing", "cpython-docs.jsonl.gz", fix)
    assert not list((tmp_path / "cache").rglob("*.arrow"))


def test_the_extractor_reproduces_the_shipped_file(tmp_path: Path, shipped: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """(d) ``python -m datamodules.corpus`` on the CPython build that made the file writes it again,
    byte for byte. Any other build has other standard-library docstrings, so there it is skipped."""
    running = [platform.python_implementation(), platform.python_version(), list(platform.python_build())]
    built_on = [shipped["python_implementation"], shipped["python_version"], shipped["python_build"]]
    if running != built_on:
        pytest.skip(f"the shipped corpus was extracted by {built_on}; this Python is {running}")
    assert corpus.main(["--out_dir", str(tmp_path)]) == 0
    assert "unchanged" not in capsys.readouterr().out  # tmp_path was empty: written, not compared
    new_gz = (tmp_path / SHIPPED_GZ.name).read_bytes()
    # The text first (independent of zlib), then the compressed bytes and the fingerprint.
    assert gzip.decompress(new_gz) == gzip.decompress(SHIPPED_GZ.read_bytes())
    assert new_gz == SHIPPED_GZ.read_bytes()
    assert (tmp_path / SHIPPED_JSON.name).read_bytes() == SHIPPED_JSON.read_bytes()


def test_rebuilding_the_package_file_on_another_python_is_refused(
    data_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    monkeypatch.setattr(corpus, "build_documents", lambda **kwargs: pytest.fail("extracted anyway"))
    before = {p.name: p.read_bytes() for p in data_copy.iterdir()}
    assert corpus.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "built from CPython 3.11.7, this is CPython 3.99.0" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in data_copy.iterdir()} == before


def test_second_load_reuses_cache(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    target = corpus.corpus_dir(built["cache"])
    before = {p: p.stat().st_mtime_ns for p in target.iterdir()}
    siblings = sorted(p.name for p in target.parent.iterdir())

    def must_not_run(*args: Any) -> None:
        raise AssertionError("corpus saved again although it is cached")

    monkeypatch.setattr(corpus, "_write", must_not_run)
    ds = corpus.load_corpus(built["cache"])
    assert corpus.corpus_fingerprint(built["cache"])["documents"] == len(ds) == len(built["docs"])
    assert ds[0] == built["docs"][0] and ds[-1] == built["docs"][-1]
    assert {p: p.stat().st_mtime_ns for p in target.iterdir()} == before
    assert sorted(p.name for p in target.parent.iterdir()) == siblings
    assert not [name for name in siblings if ".tmp-" in name]


def test_failed_build_leaves_nothing_and_stale_temp_is_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: dict[str, Any]
) -> None:
    real = corpus._write

    def crash(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(corpus, "_write", crash)
    with pytest.raises(RuntimeError, match="boom"):
        corpus.load_corpus(tmp_path)
    target = corpus.corpus_dir(tmp_path)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]

    # A temp dir left by a killed process is removed by the next build, which then succeeds.
    stale = target.parent / f".{target.name}.tmp-99999-deadbeef"
    stale.mkdir()
    monkeypatch.setattr(corpus, "_write", real)
    ds = corpus.load_corpus(tmp_path)
    assert len(ds) == len(built["docs"]) and ds[0] == built["docs"][0]
    assert not stale.exists()


# Loads corpus.py by path: the datamodules package __init__ pulls in lightning, which would
# double this test's time without testing anything more.
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("corpus", sys.argv[2])
corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(corpus)

real = corpus._write

def counted(*args):
    print("SAVING", flush=True)
    return real(*args)

corpus._write = counted
ds = corpus.load_corpus(sys.argv[1])
print(json.dumps({"fp": corpus.corpus_fingerprint(sys.argv[1]), "first": ds[0], "last": ds[-1]}))
"""


def test_concurrent_builds_are_deterministic(built: dict[str, Any], tmp_path: Path) -> None:
    """Two processes race for an empty cache: one saves the corpus, the other waits for it; both see
    the same corpus as the in-process load, whatever their hash seed."""
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
    assert sum(lines.count("SAVING") for lines in outputs) == 1
    expected = {
        "fp": corpus.corpus_fingerprint(built["cache"]),
        "first": built["docs"][0],
        "last": built["docs"][-1],
    }
    for lines in outputs:
        assert json.loads(lines[-1]) == expected
    assert not [p for p in corpus.corpus_dir(tmp_path).parent.iterdir() if ".tmp-" in p.name]
