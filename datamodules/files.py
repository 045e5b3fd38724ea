"""Checks of local corpus files, before ``datasets`` reads them or a tokenizer is trained on them.

``datasets`` reports an empty, binary or malformed file as a ``DatasetGenerationError`` with the cause
deep in a chained traceback, after a run directory exists; a file of blank lines goes through and
trains a useless tokenizer that stays in the cache. Here each file is read once, as text, and the
first problem is a one-line ValueError naming the file, the line (or row) and what is wrong.

Text and JSON files may be compressed (``.gz``, ``.xz``, ``.bz2``: ``corpus.jsonl.xz``); they are
checked through the decompression, as ``datasets`` reads them.

A file that passed is remembered in the cache by path, size and modification time, so a corpus of
many gigabytes is read through once, not at every run.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
from pathlib import Path

from datamodules.cache import write_atomic

CHECK_VERSION = "files-1"
FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def data_format(path: str) -> str | None:
    """``text``, ``json`` or ``parquet`` by the file's suffix, a compression suffix of a text or JSON file
    looked through (``a.jsonl.xz`` is ``json``); None for anything else."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
        fmt = FORMATS.get(suffixes[-1]) if suffixes else None
        return fmt if fmt in ("text", "json") else None
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _open(path: str, mode: str, **kwargs):
    opener = COMPRESSIONS.get(Path(path).suffix.lower(), open)
    return opener(path, mode if opener is open or "b" in mode else mode + "t", **kwargs)


def _fail(path: str, where: str, problem: str) -> ValueError:
    return ValueError(f"data file {path}{where}: {problem}")


def _check_text(path: str) -> None:
    """One document per line, UTF-8, at least one line with text."""
    has_text = False
    with _open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _fail(path, f" line {lineno}", f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                                     f"{err.start + 1}); convert it to UTF-8") from None
            has_text = has_text or bool(raw.strip())
    if not has_text:
        raise _fail(path, "", "every line is blank: there is no text to train on")


def _row_text(row, path: str, where: str, text_column: str, fields: set[str]) -> bool:
    """Whether a JSON row holds text in ``text_column`` (its field names are added to ``fields``);
    raises on a row that is not an object or whose text is not a string."""
    if not isinstance(row, dict):
        raise _fail(path, where, f"expected a JSON object with a {text_column!r} field, got {type(row).__name__}")
    if len(fields) < 50:
        fields.update(row)
    value = row.get(text_column)
    if value is not None and not isinstance(value, str):
        raise _fail(path, where, f"field {text_column!r} must be a string, got {type(value).__name__}")
    return bool(value and value.strip())


def _check_json(path: str, text_column: str) -> None:
    """JSON Lines (one object per line), or one JSON array of objects."""
    has_text, rows, fields = False, 0, set()
    with _open(path, "r", encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if rows == 0 and line.lstrip().startswith("["):
                    return _check_json_array(path, line + f.read(), text_column)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise _fail(path, f" line {lineno}", f"not valid JSON ({err.msg} at column {err.colno})") from None
                has_text |= _row_text(row, path, f" line {lineno}", text_column, fields)
                rows += 1
        except UnicodeDecodeError as err:
            raise _fail(path, f" line {lineno}", f"not UTF-8 text ({err.reason})") from None
    if rows == 0:
        raise _fail(path, "", "no JSON rows (the file is blank)")
    if not has_text:
        raise _no_text(path, text_column, fields)


def _no_text(path: str, text_column: str, fields: set[str]) -> ValueError:
    if text_column not in fields:
        return _fail(path, "", f"no column {text_column!r} (its rows have {', '.join(sorted(fields)) or 'no fields'}): "
                               "set --data.text_column")
    return _fail(path, "", f"column {text_column!r} has no text (every value is empty or blank)")


def _check_json_array(path: str, text: str, text_column: str) -> None:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f" line {err.lineno}", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(rows, list) or not rows:
        raise _fail(path, "", "expected JSON Lines or a non-empty JSON array of objects")
    fields: set[str] = set()
    if not any([_row_text(row, path, f" row {i + 1}", text_column, fields) for i, row in enumerate(rows)]):
        raise _no_text(path, text_column, fields)


def _check_parquet(path: str, text_column: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise _fail(path, "", f"not a Parquet file ({str(err).splitlines()[0]})") from None
    names = parquet.schema_arrow.names
    if text_column not in names:
        raise _fail(path, "", f"no column {text_column!r} (it has {', '.join(names)}): set --data.text_column")
    if not pa.types.is_string(parquet.schema_arrow.field(text_column).type) and \
            not pa.types.is_large_string(parquet.schema_arrow.field(text_column).type):
        raise _fail(path, "", f"column {text_column!r} holds {parquet.schema_arrow.field(text_column).type}, not text")
    for batch in parquet.iter_batches(columns=[text_column], batch_size=4096):
        if any(v and v.strip() for v in batch.column(0).to_pylist()):
            return
    raise _fail(path, "", f"column {text_column!r} has no text (no rows, or all blank)")


def _marker(path: str, fmt: str, text_column: str, cache_dir: Path) -> Path:
    stat = os.stat(path)
    key = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, fmt, text_column, CHECK_VERSION])
    return cache_dir / "checked-files" / hashlib.sha256(key.encode()).hexdigest()[:24]


def check_data_files(files: list[str], fmt: str, text_column: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Raise a one-line ValueError on the first file that is empty, not UTF-8, malformed (JSON, Parquet)
    or without text; ``fmt`` is ``text``, ``json`` or ``parquet`` (as ``datasets.load_dataset`` takes)."""
    for path in files:
        marker = _marker(path, fmt, text_column, Path(cache_dir)) if cache_dir else None
        if marker is not None and marker.is_file():
            continue
        if os.path.getsize(path) == 0:
            raise _fail(path, "", "the file is empty")
        if fmt == "text":
            _check_text(path)
        elif fmt == "json":
            _check_json(path, text_column)
        else:
            _check_parquet(path, text_column)
        if marker is not None:
            try:
                write_atomic(marker, path + "\n")
            except OSError:
                pass  # a read-only cache only costs the check again next time
