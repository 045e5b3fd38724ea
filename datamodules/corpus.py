"""The embedded offline corpus: English prose from CPython's own documentation, frozen in a data file.

Every Python installation carries a few megabytes of real, edited English text: the docstrings of
the standard library and the interactive help topics (``help("assert")`` and friends, stored in
``pydoc_data.topics``). That text, extracted once, ships with the package as
``datamodules/data/cpython-docs.jsonl.gz``, so that offline runs, demos and tests pre-train on real
language without downloading anything, and on the same documents whatever Python runs them.

Why a file rather than reading the running interpreter: every Python build has other docstrings (3.12
is not 3.11; Debian's 3.11.2 moves ``tkinter`` and ``idlelib`` into separate packages and has 5,629
documents to 3.11.7's 6,692), so a corpus extracted at run time gave every build another corpus,
another tokenizer and other results.

The shipped file was extracted from CPython 3.11.7 (a pyenv build, ``platform.python_build()``
``('main', 'May  9 2026 07:35:25')``): 6,692 documents, 1,933,920 bytes of UTF-8 text, texts' sha256
``66a1d29299ad8ad9...``. ``datamodules/data/cpython-docs.json`` records that fingerprint, the build,
a hash of the extractor and the sha256 of the ``.gz``. To rebuild it, run the extractor below on the Python
build the corpus should come from (the same CPython 3.11.7 reproduces the file byte for byte)::

    python -m datamodules.corpus                  # writes datamodules/data/
    python -m datamodules.corpus --out_dir /tmp/x # writes elsewhere, e.g. to compare

What is in it, one row per docstring or help topic (one JSON object a line, with these keys):

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

Sources the extractor (:func:`build_documents`) reads:

* Pure-Python modules under ``sysconfig.get_paths()["stdlib"]``, read with :mod:`ast` and never
  imported (importing ``antigravity`` opens a browser, ``this`` prints). Test suites, demos,
  bundled wheels, build-specific files, ``site-packages`` and top-level modules outside
  ``sys.stdlib_module_names`` (a distribution's additions) are skipped.
* The help topics, read from ``pydoc_data/topics.py`` in the same directory (also by parsing).
* A fixed list of C modules (built-in or extension) whose docstrings are identical on every
  platform (:data:`C_MODULES`: ``builtins``, ``itertools``, ``math``, ...); importing them has
  no side effects. Platform-dependent ones (``sys``, ``posix``, ``time``) are left out on purpose.

Output order is deterministic: sorted by module name, then by position in the source (C modules:
by attribute name; topics: by topic name), and exact duplicates keep their first occurrence.

:func:`load_corpus` checks the shipped file against the sha256 in its ``.json`` (a mismatch is an
error, never a silently different corpus), then saves it once as a Hugging Face ``datasets`` corpus
into ``<cache>/corpus/cpython-docs-<texts' sha256>-<file's sha256>/`` (``save_to_disk`` format);
:func:`corpus_fingerprint` returns the shipped fingerprint, which training code logs with every run
so that results can be tied to the exact text they were trained on (:func:`fingerprint_texts`
defines it: document count, UTF-8 bytes and a sha256 of the texts). Neither reads the running
interpreter's standard library.

The text is CPython's documentation, licensed under the PSF License Agreement.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib
import inspect
import io
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

from datamodules.cache import build_once, default_cache_dir, write_atomic

if TYPE_CHECKING:  # imported lazily: ``datasets`` costs seconds, and extraction does not need it
    import datasets

__all__ = [
    "C_MODULES",
    "COLUMNS",
    "CORPUS_NAME",
    "DATA_DIR",
    "KINDS",
    "MIN_WORDS",
    "CorpusFileError",
    "build_documents",
    "clean_docstring",
    "corpus_dir",
    "corpus_fingerprint",
    "default_cache_dir",
    "describe_documents",
    "encode_documents",
    "fingerprint_texts",
    "load_corpus",
    "read_documents",
    "shipped_fingerprint",
    "write_corpus_files",
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


# The shipped corpus: the data file and its fingerprint, beside this module.
DATA_DIR = Path(__file__).resolve().parent / "data"
DATA_FILE = f"{CORPUS_NAME}.jsonl.gz"
FINGERPRINT_FILE = f"{CORPUS_NAME}.json"
# Fixed, so that the same documents always give the same .gz bytes (with the same zlib).
_GZIP_LEVEL = 9


class CorpusFileError(OSError):
    """The shipped corpus file is missing, unreadable or does not match its fingerprint."""


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


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
# Fingerprint and the shipped file
# --------------------------------------------------------------------------------------------


def fingerprint_texts(texts: Iterable[str]) -> dict[str, Any]:
    """Fingerprint of a sequence of documents: ``name``, ``documents``, ``bytes`` and ``sha256``.

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
    return {"name": CORPUS_NAME, "documents": n, "bytes": size, "sha256": h.hexdigest()}


def encode_documents(docs: Iterable[dict[str, str]]) -> bytes:
    """The shipped file's bytes: one JSON object a line (sorted keys, UTF-8, ``\\n`` line ends),
    gzip-compressed at a fixed level with no time stamp and no file name in the header, so that the
    same documents always give the same bytes."""
    lines = "".join(
        json.dumps({c: d[c] for c in COLUMNS}, sort_keys=True, ensure_ascii=False) + "\n" for d in docs
    )
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=_GZIP_LEVEL, mtime=0) as gz:
        gz.write(lines.encode("utf-8"))
    return buffer.getvalue()


def _extractor_hash() -> str:
    """Short hash of the extraction code and its settings, recorded with the shipped file: a rebuild
    on the same Python with an unchanged hash must reproduce the file byte for byte.

    It hashes the source of the functions that shape the output (not this whole file, so that editing
    the loader does not make the shipped file look stale) and the settings they read.
    """
    settings = (
        COLUMNS, KINDS, TOPICS_MODULE, MIN_WORDS, C_MODULES, sorted(_SKIP_DIRS), _SKIP_MODULE_PREFIXES,
        _UNDERLINE_RE.pattern, _WORD_RE.pattern, _CODE_LINE_RE.pattern, sorted(_BULLETS), sorted(_OPERATORS),
        sorted(_FUNCTION_WORDS), _GZIP_LEVEL,
    )
    h = hashlib.sha256(repr(settings).encode())
    for function in _EXTRACTOR_CODE:
        try:
            h.update(inspect.getsource(function).encode())
        except (OSError, TypeError):  # no source (e.g. imported from a zip): the hash would mean nothing
            return "unknown"
    return h.hexdigest()[:12]


def _build_info() -> dict[str, Any]:
    """The interpreter the extractor runs on: the corpus is a function of it."""
    return {
        "python_version": platform.python_version(),  # keeps pre-release tags ("3.13.0rc1")
        "python_implementation": platform.python_implementation(),
        "python_build": list(platform.python_build()),
    }


def describe_documents(docs: list[dict[str, str]], data: bytes) -> dict[str, Any]:
    """The shipped ``.json`` for ``docs`` encoded as ``data``: their fingerprint, the build they come
    from, the extractor's hash and the ``.gz`` file's name, size and sha256."""
    return {
        **fingerprint_texts(d["text"] for d in docs),
        **_build_info(),
        "extractor": _extractor_hash(),
        "file": DATA_FILE,
        "file_bytes": len(data),
        "file_sha256": hashlib.sha256(data).hexdigest(),
    }


def _dump(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_corpus_files(out_dir: str | os.PathLike[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Extract the corpus from the running interpreter's standard library and write the shipped files.

    Writes ``cpython-docs.jsonl.gz`` and ``cpython-docs.json`` into ``out_dir`` (default: the package's
    data directory, :data:`DATA_DIR`), each atomically, the data file first. Replacing the package's own
    file from another Python than the one it was built from changes the corpus for everyone, so that
    needs ``force``. Returns the new fingerprint.
    """
    target = Path(out_dir).expanduser() if out_dir is not None else DATA_DIR
    old = target / FINGERPRINT_FILE
    if target.resolve() == DATA_DIR.resolve() and old.is_file() and not force:
        shipped = json.loads(old.read_text(encoding="utf-8"))
        built_on = (shipped.get("python_implementation"), shipped.get("python_version"))
        running = (platform.python_implementation(), platform.python_version())
        if built_on != running:
            raise ValueError(
                f"the shipped corpus was built from {' '.join(map(str, built_on))}, this is {' '.join(running)}: "
                "rebuilding here changes the corpus; run it on that Python, or pass --force true to replace it"
            )
    docs = build_documents(progress=True)
    if not docs:
        raise RuntimeError(f"no documents extracted from the stdlib at {_stdlib_dir()}")
    data = encode_documents(docs)
    meta = describe_documents(docs, data)
    write_atomic(target / DATA_FILE, data)
    write_atomic(target / FINGERPRINT_FILE, _dump(meta))
    return meta


def _read_verified(data_dir: Path | None = None) -> tuple[dict[str, Any], bytes]:
    """The shipped fingerprint and the ``.gz`` bytes, after checking them against each other."""
    data_dir = DATA_DIR if data_dir is None else data_dir
    meta_path, data_path = data_dir / FINGERPRINT_FILE, data_dir / DATA_FILE
    fix = "reinstall isoflop, or rebuild the corpus with `python -m datamodules.corpus` (see its docstring)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = data_path.read_bytes()
    except FileNotFoundError as err:
        raise CorpusFileError(f"the shipped corpus file {err.filename} is missing; {fix}") from None
    except (OSError, ValueError) as err:  # unreadable, or not JSON / not UTF-8
        reason = " ".join(str(err).split())
        raise CorpusFileError(f"cannot read the shipped corpus in {data_dir}: {reason}; {fix}") from None
    expected = meta.get("file_sha256") if isinstance(meta, dict) else None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorpusFileError(
            f"{data_path} does not match {meta_path.name}: its sha256 is {actual[:16]}..., "
            f"the fingerprint says {str(expected)[:16]}...; {fix}"
        )
    return meta, data


def shipped_fingerprint(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The shipped corpus's fingerprint (the ``.json`` beside the data file), once the data file has been
    checked against it: :func:`fingerprint_texts`'s keys plus the build it comes from (``python_version``,
    ``python_implementation``, ``python_build``), ``extractor`` and the file's ``file``, ``file_bytes``
    and ``file_sha256``. Raises :class:`CorpusFileError` if the file is missing or does not match."""
    return _read_verified(None if data_dir is None else Path(data_dir))[0]


def _decode(meta: dict[str, Any], data: bytes) -> list[dict[str, str]]:
    """The documents of a verified ``.gz``, checked against the texts' fingerprint."""
    try:
        text = gzip.decompress(data).decode("utf-8")
        if not text.endswith("\n"):
            raise ValueError("the last line has no line end")
        # Split on "\n" only, not splitlines(): texts may hold U+2028 and other line separators.
        docs = [json.loads(line) for line in text[:-1].split("\n")]
    except (OSError, EOFError, ValueError) as err:  # not gzip, truncated, not UTF-8, not JSON lines
        reason = " ".join(str(err).split())
        raise CorpusFileError(f"the shipped corpus is not gzip-compressed JSON lines ({reason}); "
                              "rebuild it with `python -m datamodules.corpus`") from None
    if any(not isinstance(d, dict) or sorted(d) != sorted(COLUMNS) for d in docs):
        raise CorpusFileError(f"the shipped corpus has rows without exactly the columns {', '.join(COLUMNS)}")
    found = fingerprint_texts(d["text"] for d in docs)
    if any(found[key] != meta.get(key) for key in found):
        raise CorpusFileError(
            f"the shipped corpus's texts do not match its fingerprint ({found['documents']} documents, sha256 "
            f"{found['sha256'][:16]}...); rebuild it with `python -m datamodules.corpus`"
        )
    return docs


def read_documents(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """The shipped corpus's documents, in order, as dicts with the keys of :data:`COLUMNS` (checked)."""
    meta, data = _read_verified(None if data_dir is None else Path(data_dir))
    return _decode(meta, data)


# --------------------------------------------------------------------------------------------
# Cache and loading
# --------------------------------------------------------------------------------------------


def _entry(cache_dir: str | os.PathLike[str] | None, meta: dict[str, Any]) -> Path:
    # Keyed by the shipped file, not by the running Python: the texts' hash names the corpus, and the
    # file's hash also covers the other columns.
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "corpus" / f"{CORPUS_NAME}-{meta['sha256'][:12]}-{meta['file_sha256'][:8]}"


def corpus_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds (or will hold) the saved corpus: keyed by the shipped file's fingerprint."""
    return _entry(cache_dir, shipped_fingerprint())


def _features() -> datasets.Features:
    import datasets

    return datasets.Features({column: datasets.Value("string") for column in COLUMNS})


def _write(meta: dict[str, Any], data: bytes, target: Path) -> None:
    """Save the shipped corpus into ``target`` as a ``datasets`` corpus, with its ``fingerprint.json``."""
    import datasets

    docs = _decode(meta, data)
    info = datasets.DatasetInfo(
        description=(
            "Docstrings of the CPython standard library and its interactive help topics, "
            f"{meta['python_implementation']} {meta['python_version']}, "
            "extracted by isoflop's datamodules.corpus and shipped with it."
        ),
        license="PSF-2.0",
        dataset_name=CORPUS_NAME,
        features=_features(),
    )
    table = {column: [d[column] for d in docs] for column in COLUMNS}
    ds = datasets.Dataset.from_dict(table, features=info.features, info=info)
    # A content-derived fingerprint instead of a random one, so that downstream .map() caches stay
    # valid across rebuilds of the same text.
    ds = datasets.Dataset(ds.data, info=ds.info, fingerprint=meta["sha256"][:16])
    ds.save_to_disk(str(target))
    write_atomic(target / "fingerprint.json", _dump(meta))


def load_corpus(cache_dir: str | os.PathLike[str] | None = None) -> datasets.Dataset:
    """Return the shipped corpus as a ``datasets.Dataset``, saving it into the cache on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the dataset lives in :func:`corpus_dir`. The
    shipped file is checked against its fingerprint first (:class:`CorpusFileError` if it does not
    match). The first call saves it under a file lock, so concurrent processes or ranks save it once,
    through a temporary directory that is renamed into place, so an interrupted save never leaves a
    half-written cache. Later calls only load it.
    """
    import datasets

    meta, data = _read_verified()
    path = build_once(_entry(cache_dir, meta), lambda tmp: _write(meta, data, tmp), done="fingerprint.json")
    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.Dataset):
        kind = type(ds).__name__
        raise TypeError(f"{path} holds a {kind}, expected a Dataset; delete it to rebuild")
    return ds


def corpus_fingerprint(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fingerprint of the corpus: the shipped one (:func:`shipped_fingerprint`), whatever Python runs.

    ``python_version`` is therefore the version the file was extracted from, not the running one.
    ``cache_dir`` is accepted for symmetry with :func:`load_corpus`; nothing is read from or written to it.
    """
    return shipped_fingerprint()


# What _extractor_hash covers: every function whose code shapes the shipped file.
_EXTRACTOR_CODE = (
    _stdlib_dir, _word_count, _strip_control_chars, _is_code, _paragraphs, clean_docstring, _source_files,
    _docstrings_from_tree, _topics_from_tree, _docstrings_from_c_module, build_documents, fingerprint_texts,
    encode_documents,
)


# --------------------------------------------------------------------------------------------
# Command line: python -m datamodules.corpus
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Rebuild the shipped corpus from the running Python's standard library (see the module docstring)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m datamodules.corpus", description=main.__doc__)
    parser.add_argument("--out_dir", type=str, default=str(DATA_DIR), help="where to write the two files")
    parser.add_argument("--force", type=bool, default=False,
                        help="replace the package's file from another Python than the one it was built from")
    args = parser.parse_args(argv)
    before = Path(args.out_dir, DATA_FILE)
    old = before.read_bytes() if before.is_file() else None
    try:
        meta = write_corpus_files(args.out_dir, force=args.force)
    except (ValueError, OSError, RuntimeError) as err:  # one line, as every isoflop command reports errors
        sys.stderr.write(f"python -m datamodules.corpus: error: {' '.join(str(err).split())}\n")
        return 2 if isinstance(err, ValueError) else 1
    state = "unchanged" if old is not None and hashlib.sha256(old).hexdigest() == meta["file_sha256"] else "written"
    print(f"{Path(args.out_dir) / DATA_FILE}: {state}; {meta['documents']} documents, {meta['bytes']} bytes, "
          f"texts' sha256 {meta['sha256'][:16]}..., {meta['file_bytes']} bytes compressed, from "
          f"{meta['python_implementation']} {meta['python_version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
