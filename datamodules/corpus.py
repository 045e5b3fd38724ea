"""The embedded offline corpus: English prose from CPython's own documentation.

Every Python installation carries a few megabytes of real, edited English text: the docstrings of
the standard library and the interactive help topics (``help("assert")`` and friends, stored in
``pydoc_data.topics``). This module turns that text into a small Hugging Face ``datasets`` corpus
so that offline runs, demos and tests can pre-train on real language without downloading anything
and without shipping a data file with the package.

What is in it, one row per docstring or help topic:

``text``
    The cleaned text: ``inspect.cleandoc``-ed, doctest examples and code blocks removed,
    whitespace normalised within each paragraph, paragraphs separated by ``"\\n\\n"``. Texts
    with fewer than :data:`MIN_WORDS` (8) words left are dropped.
``module``
    The dotted module the text comes from (``json.decoder``); ``pydoc_data.topics`` for help topics.
``package``
    The top-level package or module, always ``module.partition(".")[0]`` (``json``, ``email``,
    ``os``); help topics therefore have ``package == "pydoc_data"``.
``kind``
    ``module``, ``class``, ``function`` (functions and methods alike) or ``topic``.
``name``
    The qualified name (``json.decoder.JSONDecoder.decode``; nested functions use Python's own
    ``outer.<locals>.inner``), or the help topic's name. Not unique: a module may define the same
    function twice, e.g. in the two branches of an ``if sys.platform == ...``.

Sources:

* Pure-Python modules under ``sysconfig.get_paths()["stdlib"]``, read with :mod:`ast` and never
  imported (importing ``antigravity`` opens a browser, ``this`` prints). Test suites, demos,
  bundled wheels, build-specific files, ``site-packages`` and top-level modules outside
  ``sys.stdlib_module_names`` (a distribution's additions) are skipped.
* The help topics, read from ``pydoc_data/topics.py`` in the same directory (also by parsing).
* A fixed list of C modules (built-in or extension) whose docstrings are identical on every
  platform (:data:`C_MODULES`: ``builtins``, ``itertools``, ``math``, ...); importing them has
  no side effects. Platform-dependent ones (``sys``, ``posix``, ``time``) are left out on purpose.

Output order is deterministic: sorted by module name, then by position in the source (C modules:
by attribute name; topics: by topic name), and exact duplicates keep their first occurrence. The
same Python version with the same standard library files therefore gives byte-identical output on
any machine; distributions that patch or split the standard library (Debian moves ``tkinter``,
``lib2to3`` ... into separate packages) give a different but equally deterministic corpus, which
the fingerprint records.

:func:`load_corpus` builds the corpus once per Python version and extractor version into
``<cache>/corpus/cpython-docs-<X.Y.Z>-<hash>/`` (``save_to_disk`` format) together with
``fingerprint.json``; :func:`corpus_fingerprint` returns that fingerprint, which training code
logs with every run so that results can be tied to the exact text they were trained on
(:func:`fingerprint_texts` defines it: document count, UTF-8 bytes and a sha256 of the texts).

The text is CPython's documentation, licensed under the PSF License Agreement.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import os
import platform
import re
import sys
import sysconfig
import unicodedata
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tqdm.auto import tqdm

from datamodules.cache import build_once, default_cache_dir

if TYPE_CHECKING:  # imported lazily: ``datasets`` costs seconds, and extraction does not need it
    import datasets

__all__ = [
    "C_MODULES",
    "COLUMNS",
    "CORPUS_NAME",
    "KINDS",
    "MIN_WORDS",
    "build_documents",
    "clean_docstring",
    "corpus_dir",
    "corpus_fingerprint",
    "default_cache_dir",
    "fingerprint_texts",
    "load_corpus",
]

CORPUS_NAME = "cpython-docs"
COLUMNS = ("text", "module", "package", "kind", "name")
KINDS = ("module", "class", "function", "topic")
TOPICS_MODULE = "pydoc_data.topics"

# Fewer words than this is a label, not prose ("Return self+value.", "Same as a < b.").
MIN_WORDS = 8

# C modules whose docstrings do not depend on the platform or build options. ``sys``, ``time``
# and ``posix``/``nt`` expose different functions on different platforms, and ``zlib``/``_ssl``
# may be missing, so they would break the "same version, same corpus" promise.
C_MODULES = (
    "array", "binascii", "builtins", "cmath", "gc", "itertools", "marshal", "math", "unicodedata"
)

# Directories under the stdlib that are not library documentation: test suites (they are large
# and full of deliberately odd code), demos, vendored wheels, installed third-party packages and
# compiled extensions. Any directory name that is not an identifier (``config-3.11-x86_64-...``,
# ``site-packages``) is skipped as well, since it cannot be a package.
_SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "__phello__",  # fixture package for frozen-module tests
        "_bundled",  # ensurepip's wheels
        "dist-packages",
        "idle_test",
        "lib-dynload",
        "site-packages",
        "test",
        "tests",
        "turtledemo",
    }
)
# Modules that are build-, machine- or distribution-specific, or test fixtures.
_SKIP_MODULE_PREFIXES = ("_sysconfigdata", "__hello__", "sitecustomize", "usercustomize")
# The standard library's own top-level modules (Python >= 3.10): a distribution may add files to the
# stdlib directory (Debian adds ``_distutils_system_mod``), which would make the corpus depend on it.
_STDLIB_NAMES = frozenset(sys.stdlib_module_names)


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def _python_version() -> str:
    # platform.python_version() keeps pre-release tags ("3.13.0rc1"), whose docs differ from final.
    return platform.python_version()


def _extractor_hash() -> str:
    """Short hash identifying this extractor, so that any change to it gets a fresh cache entry.

    It hashes this file's own source: no version number to forget to bump. A comment edit costs one
    rebuild (a few seconds), which is cheaper than ever training on a stale corpus.
    """
    h = hashlib.sha256()
    h.update(sys.implementation.name.encode())
    try:
        h.update(Path(__file__).read_bytes())
    except OSError:  # e.g. imported from a zip: fall back to the settings that shape the output
        h.update(repr((MIN_WORDS, C_MODULES, sorted(_SKIP_DIRS), _SKIP_MODULE_PREFIXES)).encode())
    return h.hexdigest()[:10]


def corpus_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds (or will hold) the saved corpus for this Python and extractor."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "corpus" / f"{CORPUS_NAME}-{_python_version()}-{_extractor_hash()}"


def _stdlib_dir() -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    if not (path / "os.py").is_file():
        raise FileNotFoundError(f"no Python standard library sources at {path} (os.py missing)")
    return path


# --------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------

# A reST section underline/overline: one punctuation character repeated ("=====", "*****").
_UNDERLINE_RE = re.compile(r"^\s*([=\-~^*#+_\"'`.:])\1{2,}\s*$")
# A token that reads as a word of prose, allowing surrounding brackets, quotes and punctuation.
_WORD_RE = re.compile(r"^[(\[\"'`]*[A-Za-z]+(?:['\-][A-Za-z]+)*[)\]\"'`,.;:!?]*$")
# Strong signals that an indented paragraph is code even if its tokens look like words.
_CODE_LINE_RE = re.compile(
    r"^\s*(?:import\s|from\s+\S+\s+import\s|def\s|class\s|return\b|raise\b|print\(|if\s.*:$|"
    r"for\s.*:$|while\s.*:$|with\s.*:$|try:$|except\b.*:$|else:$|elif\s|@\w|#|\$ |%\s)"
    r"|[=({\[]\s*$|^\s*[)}\]]"
)


_BULLETS = frozenset({"*", "-", "+", "\u2022"})
_OPERATORS = frozenset(
    {"=", "==", "!=", "::=", ":=", "->", "=>", "+=", "-=", "|", "#", "{", "}", "<=", ">="}
)
# Frequent English function words: prose is full of them, code and grammar rules are not.
_FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for from with as is are was be been being it its this that these "
    "those and or but not no if then than when which who what can may must will should would "
    "there their they we you he she do does".split()
)


def _word_count(text: str) -> int:
    # Tokens containing a letter: numbers and operators are not words.
    return sum(1 for tok in text.split() if any(ch.isalpha() for ch in tok))


def _strip_control_chars(text: str) -> str:
    # Form feeds and other control characters occur in old sources; NUL must never survive because
    # the fingerprint uses it as the document separator.
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def _is_code(lines: list[str]) -> bool:
    """Heuristic: does this paragraph (list of raw lines) read as code rather than prose?"""
    # List bullets are neither words nor code.
    tokens = [tok for tok in " ".join(lines).split() if tok not in _BULLETS]
    if not tokens:
        return True
    words = sum(1 for tok in tokens if _WORD_RE.match(tok))
    if words / len(tokens) < 0.5:
        return True
    indented = all(line[:1].isspace() for line in lines)
    if indented and any(_CODE_LINE_RE.search(line) for line in lines):
        return True
    # Assignments, grammar rules and signatures ("(typ, [data]) = <instance>.close()",
    # "guard ::= "if" named_expression"): an operator and hardly any English function words.
    if any(tok in _OPERATORS for tok in tokens):
        function_words = sum(1 for tok in tokens if tok.strip(",.;:()").lower() in _FUNCTION_WORDS)
        if function_words / len(tokens) < 0.15:
            return True
    return False


def _paragraphs(lines: Iterable[str]) -> Iterator[list[str]]:
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def clean_docstring(raw: str) -> str:
    """Turn a raw docstring or help topic into corpus text ("" if nothing prose-like is left).

    Steps: ``inspect.cleandoc``; drop control characters; drop doctest examples (a ``>>>`` line,
    its ``...`` continuations and its expected output, up to the next blank line); drop reST
    section underlines; drop paragraphs that look like code, including reST literal blocks (the
    indented paragraphs after one ending in ``::``); normalise whitespace inside each paragraph
    and join paragraphs with ``"\\n\\n"``.
    """
    text = _strip_control_chars(inspect.cleandoc(raw))
    lines: list[str] = []
    in_doctest = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            in_doctest = False
            lines.append("")
        elif stripped.startswith(">>>"):
            in_doctest = True
        elif in_doctest or _UNDERLINE_RE.match(line):
            continue
        else:
            lines.append(line.rstrip())

    kept: list[str] = []
    in_literal = False
    for para in _paragraphs(lines):
        indented = para[0][:1].isspace()
        if in_literal and indented:
            continue  # still inside the literal block that the last "::" paragraph opened
        in_literal = False
        if _is_code(para):
            continue
        flat = " ".join(" ".join(para).split())
        if flat.endswith("::"):
            in_literal = True
            # reST renders "Example::" as "Example:" and a lone " ::" as nothing.
            flat = flat[:-3].rstrip() if flat.endswith(" ::") else flat[:-1]
            if not flat:
                continue
        kept.append(flat)
    return "\n\n".join(kept)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

# (module, sort position, kind, qualified name, raw text)
_Raw = tuple[str, tuple[int, ...], str, str, str]


def _source_files(root: Path) -> list[tuple[str, Path]]:
    """All (dotted module name, path) pairs to read, in sorted order."""
    found: list[tuple[str, Path]] = []

    def visit(directory: Path, parts: tuple[str, ...]) -> None:
        # Sort explicitly: os.scandir order depends on the file system.
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                if name in _SKIP_DIRS or not name.isidentifier():
                    continue
                # Only regular packages: directories without __init__.py hold data, not modules.
                if (Path(entry.path) / "__init__.py").is_file():
                    visit(Path(entry.path), parts + (name,))
            elif entry.is_file() and name.endswith(".py"):
                stem = name[:-3]
                if not stem.isidentifier() or stem.startswith("test_") or stem.endswith("_test"):
                    continue
                mod_parts = parts if stem == "__init__" else parts + (stem,)
                if not mod_parts or mod_parts[0].startswith(_SKIP_MODULE_PREFIXES):
                    continue
                if mod_parts[0] not in _STDLIB_NAMES:
                    continue  # a file a distribution added (Debian's _distutils_system_mod): not Python's
                found.append((".".join(mod_parts), Path(entry.path)))

    visit(root, ())
    found.sort(key=lambda item: item[0])
    return found


def _docstrings_from_tree(module: str, tree: ast.Module) -> list[_Raw]:
    out: list[_Raw] = []
    doc = ast.get_docstring(tree, clean=False)
    if doc:
        out.append((module, (0, 0), "module", module, doc))

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child, clean=False)
                if doc:
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    out.append((module, (child.lineno, child.col_offset), kind, qualname, doc))
                # Same convention as __qualname__: names inside a function live in "<locals>".
                is_class = isinstance(child, ast.ClassDef)
                visit(child, qualname if is_class else qualname + ".<locals>")
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                # Definitions inside if/try/with/for blocks belong to the enclosing scope.
                visit(child, prefix)

    visit(tree, module)
    return out


def _topics_from_tree(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets)
        ):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                break
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    # The file format changed: it is pure data, so importing it is safe.
    from pydoc_data.topics import topics  # type: ignore[import-not-found]

    return dict(topics)


def _docstrings_from_c_module(module: str) -> list[_Raw]:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return []  # not built on this platform; the fingerprint shows the difference
    out: list[_Raw] = []
    if isinstance(mod.__doc__, str):
        out.append((module, (0, 0), "module", module, mod.__doc__))
    # Sorted attribute names give a platform-independent order (there are no source positions).
    for i, (attr, obj) in enumerate(sorted(vars(mod).items()), start=1):
        # Only objects defined here under their own name: skips aliases and site.py's additions to
        # builtins (help, exit, copyright are instances, not classes or functions).
        if getattr(obj, "__module__", None) != module or getattr(obj, "__name__", None) != attr:
            continue
        if inspect.isclass(obj):
            doc = vars(obj).get("__doc__")  # own docstring only, not the base class's
            if isinstance(doc, str):
                out.append((module, (i, 0), "class", f"{module}.{attr}", doc))
            for j, (mname, member) in enumerate(sorted(vars(obj).items()), start=1):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isroutine(member) and isinstance(member.__doc__, str):
                    qualname = f"{module}.{attr}.{mname}"
                    out.append((module, (i, j), "function", qualname, member.__doc__))
        elif inspect.isroutine(obj) and isinstance(obj.__doc__, str):
            out.append((module, (i, 0), "function", f"{module}.{attr}", obj.__doc__))
    return out


def build_documents(*, progress: bool = False) -> list[dict[str, str]]:
    """Extract, clean, deduplicate and order the corpus; pure, writes nothing to disk.

    Returns one dict per document with the keys of :data:`COLUMNS`. ``progress`` shows a tqdm bar.
    """
    root = _stdlib_dir()
    files = _source_files(root)
    file_modules = {module for module, _ in files}
    c_modules = [m for m in C_MODULES if m not in file_modules]

    raw: list[_Raw] = []
    topics: dict[str, str] = {}
    bar = tqdm(
        total=len(files) + len(c_modules),
        desc=f"extracting {CORPUS_NAME}",
        unit="module",
        disable=not progress,
    )
    with bar, warnings.catch_warnings():
        # Old modules contain invalid escape sequences; the parser warns, we do not care.
        warnings.simplefilter("ignore")
        for module, path in files:
            bar.update()
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
                continue  # not valid Python for this interpreter, or unreadable: not documentation
            raw.extend(_docstrings_from_tree(module, tree))
            if module == TOPICS_MODULE:
                topics = _topics_from_tree(tree)
        for module in c_modules:
            bar.update()
            raw.extend(_docstrings_from_c_module(module))
    if not topics:
        warnings.warn(
            f"no help topics found ({TOPICS_MODULE} missing); the corpus has docstrings only",
            stacklevel=2,
        )
    for i, topic in enumerate(sorted(topics)):
        raw.append((TOPICS_MODULE, (i, 0), "topic", topic, topics[topic]))

    # Positions are unique within a module, so this order does not depend on the input order.
    raw.sort(key=lambda r: (r[0], r[1]))
    docs: list[dict[str, str]] = []
    seen: set[str] = set()
    for module, _pos, kind, name, text in raw:
        cleaned = clean_docstring(text)
        if _word_count(cleaned) < MIN_WORDS or cleaned in seen:
            continue
        seen.add(cleaned)
        package = module.partition(".")[0]
        docs.append(
            {"text": cleaned, "module": module, "package": package, "kind": kind, "name": name}
        )
    return docs


# --------------------------------------------------------------------------------------------
# Fingerprint and cache
# --------------------------------------------------------------------------------------------


def fingerprint_texts(texts: Iterable[str]) -> dict[str, Any]:
    """Fingerprint of a sequence of documents.

    ``bytes`` is the total UTF-8 length of the texts; ``sha256`` hashes each text's UTF-8 bytes
    followed by a NUL byte (texts never contain NUL), in order.
    """
    h = hashlib.sha256()
    n = 0
    size = 0
    for text in texts:
        data = text.encode("utf-8")
        h.update(data)
        h.update(b"\0")
        n += 1
        size += len(data)
    return {
        "name": CORPUS_NAME,
        "python_version": _python_version(),
        "documents": n,
        "bytes": size,
        "sha256": h.hexdigest(),
    }


def _features() -> datasets.Features:
    import datasets

    return datasets.Features({column: datasets.Value("string") for column in COLUMNS})


def _write(docs: list[dict[str, str]], target: Path) -> dict[str, Any]:
    import datasets

    fingerprint = fingerprint_texts(d["text"] for d in docs)
    info = datasets.DatasetInfo(
        description=(
            "Docstrings of the CPython standard library and its interactive help topics, "
            f"Python {fingerprint['python_version']}, extracted by isoflop.datamodules.corpus."
        ),
        license="PSF-2.0",
        dataset_name=CORPUS_NAME,
        features=_features(),
    )
    table = {column: [d[column] for d in docs] for column in COLUMNS}
    ds = datasets.Dataset.from_dict(table, features=info.features, info=info)
    # A content-derived fingerprint instead of a random one, so that downstream .map() caches stay
    # valid across rebuilds of the same text.
    ds = datasets.Dataset(ds.data, info=ds.info, fingerprint=fingerprint["sha256"][:16])
    ds.save_to_disk(str(target))
    (target / "fingerprint.json").write_text(
        json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return fingerprint


def _ensure_built(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The corpus directory, extracted and written once (under a lock, through a temporary directory)."""

    def build(tmp: Path) -> None:
        docs = build_documents(progress=True)
        if not docs:
            raise RuntimeError(f"no documents extracted from the stdlib at {_stdlib_dir()}")
        _write(docs, tmp)

    return build_once(corpus_dir(cache_dir), build, done="fingerprint.json")


def load_corpus(cache_dir: str | os.PathLike[str] | None = None) -> datasets.Dataset:
    """Return the corpus as a ``datasets.Dataset``, building it into the cache on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the dataset lives in :func:`corpus_dir`.
    The first call extracts (a few seconds, with a progress bar) under a file lock, so concurrent
    processes or ranks build it once, and writes to a temporary directory that is renamed into
    place, so an interrupted build never leaves a half-written cache. Later calls only load it.
    """
    import datasets

    path = _ensure_built(cache_dir)
    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.Dataset):
        kind = type(ds).__name__
        raise TypeError(f"{path} holds a {kind}, expected a Dataset; delete it to rebuild")
    return ds


def corpus_fingerprint(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fingerprint of the corpus (building it first if needed): name, python_version, documents,
    bytes and sha256 as defined by :func:`fingerprint_texts`. Reads ``fingerprint.json``."""
    path = _ensure_built(cache_dir)
    return json.loads((path / "fingerprint.json").read_text(encoding="utf-8"))
