"""The offline GPU-scale corpus (``datamodules.pypi_docs``) and its markup cleaning, on small releases the
tests write; compressed data files in the datamodule. No network: releases are placed where the build
looks for them, with their sha256 pinned as the real manifest pins them."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile

import pytest

from datamodules import pypi_docs
from datamodules.files import check_data_files, data_format
from datamodules.markup import html_paragraphs, inline_text, is_prose, markdown_paragraphs, rst_paragraphs
from datamodules.pretraining import PretrainingDataModule, resolve_data_files
from tests.helpers import mentions

RST = """\
=============
Making things
=============

.. currentmodule:: things

.. _making-things:

Once you have created your :doc:`models </topics/models>`, the library gives you an API that lets
you create and delete objects. Call :meth:`~things.Model.save` to store one, or read ``objects``.

.. code-block:: python

    from things import Model
    Model(name="x").save()

.. note::

    The :class:`Model` is saved to the database only when you call this method explicitly.

+--------+--------+
| a cell | b cell |
+--------+--------+

For example, this is how a literal block is introduced in the text of a document::

    x = compute(1, 2)
    print(x)

See `the guide <https://example.org/guide>`_ for the details of how all of this works in practice.

.. comment that is not a directive
   and its continuation line
"""


def test_rst_paragraphs_keep_prose_and_drop_code_tables_and_directives():
    assert rst_paragraphs(RST) == [
        "Making things",
        "Once you have created your models, the library gives you an API that lets you create and delete "
        "objects. Call save to store one, or read objects.",
        "The Model is saved to the database only when you call this method explicitly.",
        "For example, this is how a literal block is introduced in the text of a document:",
        "See the guide for the details of how all of this works in practice.",
    ]


def test_markdown_and_html_paragraphs():
    md = ("# Title here\n\nUse the `run` function, described in [the docs](https://x.org), to start it.\n\n"
          "```python\nrun(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nThe **last** paragraph ends here.\n")
    assert markdown_paragraphs(md) == ["Title here", "Use the run function, described in the docs, to start it.",
                                       "The last paragraph ends here."]
    fragment = ("<p>Creates a <code>Bucket</code> in the account.</p><note><p>Buckets are global.</p></note>"
                "<ul><li><p>First item &amp; more.</p></li></ul><pre>aws s3 mb</pre><examples>x = 1</examples>")
    assert html_paragraphs(fragment) == ["Creates a Bucket in the account.", "Buckets are global.",
                                         "First item & more."]
    assert inline_text("See :func:`~a.b.run` and ``x`` or `y` and **z**.") == "See run and x or y and z."


def test_is_prose():
    assert is_prose("The function returns the sum of the values in the list, or zero when it is empty.")
    assert not is_prose("Returns the sum.")  # too short
    assert not is_prose("numpy.sum numpy.mean numpy.median numpy.percentile numpy.quantile numpy.std")
    assert not is_prose("f(x, y=1, *args, **kwargs) -> Tuple[int, int] | None = 0 0 0 0 0 0")
    assert not is_prose("\u4e00\u4e8c\u4e09 " * 20)


def _tar(path, files: dict[str, str | bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


SENTENCE = "This paragraph of the {} explains how the feature works and when you would want to use it in a project."
MODULE = '''"""{}

{}
"""


def run(x):
    """{}"""
    return x
'''


def _release(tmp_path, name="pkg-1.0", extra=None):
    files = {
        f"{name}/docs/guide.rst": "Guide\n=====\n\n" + SENTENCE.format("guide") + "\n\n" + SENTENCE.format("shared text"),
        f"{name}/docs/_build/out.rst": SENTENCE.format("build output"),
        f"{name}/docs/LICENSE.txt": SENTENCE.format("licence"),
        f"{name}/pkg/core.py": MODULE.format(SENTENCE.format("module"), SENTENCE.format("shared text"),
                                             SENTENCE.format("function")),
        f"{name}/pkg/tests/test_core.py": MODULE.format(*[SENTENCE.format("test")] * 3),
        f"{name}/pkg/notes.py": MODULE.format("Permission is hereby granted, free of charge, to any person "
                                                 "obtaining a copy of this software and the documentation.",
                                                 SENTENCE.format("licensed module"), SENTENCE.format("short")),
        f"{name}/botocore/data/s3/2006-03-01/service-2.json.gz":
            __import__("gzip").compress(json.dumps({"operations": {"A": {"documentation": "<p>" +
                                                    SENTENCE.format("API reference") + "</p>"}}}).encode()),
        f"{name}/setup.py": MODULE.format(*[SENTENCE.format("setup")] * 3),
    }
    files.update(extra or {})
    path = tmp_path / f"{name}.tar.gz"
    _tar(path, files)
    return path


def test_extract_release_reads_docs_docstrings_and_api_and_skips_the_rest(tmp_path):
    docs = list(pypi_docs.extract_release(_release(tmp_path), ["docs", "docstrings", "api"]))
    assert [(d["path"], d["kind"]) for d in docs] == [
        ("botocore/data/s3/2006-03-01/service-2.json.gz", "api"),
        ("docs/guide.rst", "docs"),
        ("pkg/core.py", "docstrings"),
        ("pkg/notes.py", "docstrings"),
    ]
    assert SENTENCE.format("function") in docs[2]["text"]
    only_docs = list(pypi_docs.extract_release(_release(tmp_path), ["docs"]))
    assert [d["path"] for d in only_docs] == ["docs/guide.rst"]


def _manifest(tmp_path, releases: list) -> tuple:
    download = tmp_path / "releases"
    download.mkdir(exist_ok=True)
    sources = []
    for path in releases:
        (download / path.name).write_bytes(path.read_bytes())
        sources.append({"package": path.name.split("-")[0], "version": "1.0", "filename": path.name,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "url": "https://invalid.example/x",
                        "license": "MIT", "kinds": ["docs", "docstrings", "api"]})
    manifest = tmp_path / "sources.json"
    manifest.write_text(json.dumps({"name": "pypi-docs", "sources": sources}))
    return manifest, download


@pytest.fixture
def no_embedded(monkeypatch):
    monkeypatch.setattr(pypi_docs, "read_documents", lambda: [])


def test_build_filters_dedupes_and_is_reproducible(tmp_path, no_embedded):
    other = _release(tmp_path, "other-2.0", {"other-2.0/docs/more.rst": SENTENCE.format("guide") + "\n\n" +
                                             " ".join([SENTENCE.format("second file")] * 2)})
    manifest, download = _manifest(tmp_path, [_release(tmp_path), other])
    first = pypi_docs.build(tmp_path / "a", download, manifest, log=lambda *_: None)
    second = pypi_docs.build(tmp_path / "b", download, manifest, log=lambda *_: None)
    data = (tmp_path / "a" / "pypi-docs.jsonl.xz").read_bytes()
    assert data == (tmp_path / "b" / "pypi-docs.jsonl.xz").read_bytes()
    assert first["fingerprint"] == second["fingerprint"] and first["file_sha256"] == hashlib.sha256(data).hexdigest()
    docs = [json.loads(line) for line in lzma.decompress(data).decode().splitlines()]
    paragraphs = [p for d in docs for p in d["text"].split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs))  # each paragraph once, the first occurrence kept
    # the API document (one sentence, fewer than MIN_DOC_WORDS words) is dropped; the shared paragraph stays
    # in the guide, the first to have it, and leaves the module's docstrings
    assert [d["path"] for d in docs[:2]] == ["docs/guide.rst", "pkg/core.py"]
    assert SENTENCE.format("shared text") in docs[0]["text"] and SENTENCE.format("shared text") not in docs[1]["text"]
    assert not any("Permission is hereby granted" in p for p in paragraphs)
    assert "Guide" not in paragraphs  # headings are not prose
    assert [(d["source"], d["path"]) for d in docs][-1] == ("other==1.0", "docs/more.rst")
    assert sum(s["documents"] for s in first["sources"].values()) == first["fingerprint"]["documents"] == len(docs)
    assert first["reproduced"] is False  # the manifest pins no fingerprint
    expect = {k: first["fingerprint"][k] for k in ("documents", "bytes", "sha256")}
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "expect": expect}))
    assert pypi_docs.build(tmp_path / "c", download, manifest, log=lambda *_: None)["reproduced"] is True


def test_a_release_that_is_not_the_pinned_file_is_refused(tmp_path, no_embedded, capsys):
    manifest, download = _manifest(tmp_path, [_release(tmp_path)])
    path = next(download.iterdir())
    path.write_bytes(path.read_bytes() + b"tampered")
    assert pypi_docs.main(["--out_dir", str(tmp_path / "out"), "--download_dir", str(download),
                           "--sources", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    mentions(err, path.name, "sha256", "delete the file")
    assert not (tmp_path / "out" / "pypi-docs.jsonl.xz").exists()


def test_the_shipped_manifest_pins_every_source():
    manifest = pypi_docs.load_sources()
    assert len(manifest["sources"]) >= 20
    for source in manifest["sources"]:
        assert len(source["sha256"]) == 64 and source["url"].startswith("https://files.pythonhosted.org/packages/")
        assert source["url"].endswith("/" + source["filename"]) and source["license"] and source["kinds"]
    assert set(manifest["expect"]) == {"documents", "bytes", "sha256"}


def test_compressed_data_files(tmp_path, cache_dir):
    assert data_format("a/c.jsonl.xz") == "json" and data_format("c.txt.gz") == "text"
    assert data_format("c.parquet.gz") is None and data_format("c.xz") is None
    rows = [{"text": f"Document number {i} talks about apples and pears. It has a second sentence."} for i in range(200)]
    path = tmp_path / "docs.jsonl.xz"
    path.write_bytes(lzma.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert resolve_data_files(str(tmp_path / "*.jsonl.xz")) == [str(path)]
    dm = PretrainingDataModule(data_files=str(path), vocab_size=200, max_seq_length=32, batch_size=4,
                               cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    assert len(dm.train_dataset) > 10
    bad = tmp_path / "bad.jsonl.xz"
    bad.write_bytes(lzma.compress(b'{"text": "fine"}\n{"text": \n'))
    with pytest.raises(ValueError) as info:
        check_data_files([str(bad)], "json", "text")
    mentions(str(info.value), str(bad), "line 2", "not valid JSON")


def test_count_tokens_saves_the_tokenizer_a_run_can_load(tmp_path, no_embedded, capsys):
    manifest, download = _manifest(tmp_path, [_release(tmp_path)])
    out = tmp_path / "out"
    assert pypi_docs.main(["--out_dir", str(out), "--download_dir", str(download), "--sources", str(manifest),
                           "--count_tokens"]) == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "pypi-docs-tokenizer")
    texts = [json.loads(line)["text"] for line in lzma.decompress((out / "pypi-docs.jsonl.xz").read_bytes()).splitlines()]
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert len(tokenizer) == 30_522 and json.loads((out / "pypi-docs.json").read_text())["tokens"] == tokens > 50
    mentions(capsys.readouterr().out, f"tokens: {tokens:,}")
