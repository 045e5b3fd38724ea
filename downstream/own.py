"""A researcher's own classification or regression task: a directory of CSV/TSV/JSON(L)/Parquet files.

Named on the command line as a path (``isoflop finetune --tasks data/mytask/``, ``isoflop compare
--finetune.tasks '[offline, ./mytask]'``): a task name with a ``/`` (or starting with ``.`` or ``~``) is a
directory, a plain word is a built-in task. The directory holds::

    train.<ext>                      required
    validation.<ext> or dev.<ext>    required (the dev split scores are reported on)
    test.<ext>                       optional (predicted with ``--predict_test``; labels not needed)
    task.json                        optional: what inference cannot tell (below)

with ``<ext>`` one of tsv, csv, jsonl, json, parquet. The task's name in results is the directory's name.
What the task is, inferred from the training file unless ``task.json`` says otherwise:

- ``label_column``: ``label``.
- ``text_columns``: the columns other than the label and an ``idx``/``index``/``id`` column whose values are
  not all numbers; there must be 1 (single-text task) or 2 (pair task).
- ``task_type``: ``regression`` when every label is a number and some is not a whole number (reported as
  Spearman, then Pearson), else ``classification`` (accuracy, then macro F1; F1 of the second class too when
  there are two). A label column of both numbers and words is refused.
- ``label_names``: the classes in sorted order (numerically for whole numbers): class id i is
  ``label_names[i]``. ``task.json`` may give the order (every training label must be in it).
- ``epochs``: 3.

``task.json`` holds any of these keys, e.g. ``{"text_columns": ["premise", "hypothesis"], "task_type":
"classification"}``; an unknown key is refused. Every problem (a missing file or column, one class, mixed
label types, a dev label the training file never has) is a one-line ValueError naming the file and what to
do, raised when the task is named, before any training.

This module does not import :mod:`downstream.tasks` (which builds the spec from :func:`own_task_fields`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from downstream.files import EXTENSIONS, read_table

SPEC_FILE = "task.json"
# Split -> the file stems accepted for it, first found wins.
_STEMS = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
# Columns that number the examples: never text, and the test file's index when present.
INDEX_COLUMNS = ("idx", "index", "id")
_KEYS = ("text_columns", "label_column", "task_type", "label_names", "epochs")
_TYPES = ("classification", "regression")


def split_files(directory: str | os.PathLike) -> dict[str, Path]:
    """The directory's split files (``train``, ``validation``, optional ``test``); a missing train or dev
    file raises a one-line ValueError."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ValueError(f"task directory {str(root)!r} not found (give a directory holding train.csv and dev.csv, "
                         "or a built-in task name)")
    files: dict[str, Path] = {}
    for split, stems in _STEMS.items():
        hits = [root / f"{stem}{ext}" for stem in stems for ext in EXTENSIONS if (root / f"{stem}{ext}").is_file()]
        if hits:
            files[split] = hits[0]
        elif split != "test":
            raise ValueError(f"{root}: no {' or '.join(stems)} file (add {stems[0]}.csv, .tsv, .jsonl, .json or .parquet)")
    return files


def _read_spec_file(root: Path) -> dict[str, Any]:
    path = root / SPEC_FILE
    if not path.is_file():
        return {}
    try:
        spec = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    unknown = sorted(set(spec) - set(_KEYS)) if isinstance(spec, dict) else ["(not an object)"]
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
    if spec.get("task_type", "classification") not in _TYPES:
        raise ValueError(f"{path}: task_type {spec['task_type']!r} must be one of {', '.join(_TYPES)}")
    if not (isinstance(spec.get("epochs", 3), int) and spec.get("epochs", 3) >= 1):
        raise ValueError(f"{path}: epochs must be a whole number of at least 1, got {spec['epochs']!r}")
    return spec


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return str(value).strip() != ""


def _text_columns(frame: pd.DataFrame, label: str, where: str, given: list[str] | None) -> tuple[str, ...]:
    """The given text columns (checked), else the non-label, non-index columns that hold words."""
    if given is not None:
        columns = [given] if isinstance(given, str) else list(given)
        missing = [c for c in columns if c not in frame.columns]
        if missing or not 1 <= len(columns) <= 2:
            raise ValueError(f"{where}: text_columns {columns} must be 1 or 2 of the file's columns "
                             f"({', '.join(map(str, frame.columns))})")
        return tuple(columns)
    columns = [c for c in frame.columns if c != label and str(c).lower() not in INDEX_COLUMNS
               and not all(_is_number(v) for v in frame[c].tolist())]
    if not 1 <= len(columns) <= 2:
        raise ValueError(f"{where}: found {len(columns)} text columns ({', '.join(map(str, columns)) or 'none'}); "
                         f"name 1 or 2 in {SPEC_FILE}: {{\"text_columns\": [\"...\"]}}")
    return tuple(columns)


def _label_kind(values: list[Any], where: str, label: str) -> str:
    """``regression`` (numbers, some not whole), ``integer`` (whole numbers) or ``string``; mixed: refused."""
    numeric = [_is_number(v) for v in values]
    if any(numeric) and not all(numeric):
        word = next(v for v, n in zip(values, numeric) if not n)
        raise ValueError(f"{where}: column {label!r} mixes numbers and words (e.g. {word!r}); use one kind of label")
    if not all(numeric):
        return "string"
    return "integer" if all(float(v).is_integer() for v in values) else "regression"


def label_name(value: Any) -> str:
    """A label as its class name: whole numbers without a decimal point (``1.0`` and ``"1"`` are ``1``)."""
    if _is_number(value) and float(value).is_integer():
        return str(int(float(value)))
    return str(value).strip()


def _classes(values: list[Any], kind: str, where: str, label: str, given: list | None) -> tuple[str, ...]:
    names = sorted({label_name(v) for v in values}, key=(lambda s: float(s)) if kind == "integer" else None)
    if given is not None:
        given = [label_name(v) for v in given]
        extra = [n for n in names if n not in given]
        if extra:
            raise ValueError(f"{where}: label(s) {', '.join(extra)} not in {SPEC_FILE}'s label_names {given}")
        names = given
    if len(names) < 2:
        raise ValueError(f"{where}: column {label!r} has a single class ({', '.join(names) or 'none'}); a classifier "
                         "needs at least two (or set task_type regression in task.json)")
    return tuple(names)


def _infer(directory: str) -> dict[str, Any]:
    """Everything about the task (the TaskSpec's fields and the files), from its files and ``task.json``."""
    root = Path(directory).expanduser()
    files = split_files(root)
    given = _read_spec_file(root)
    label = given.get("label_column", "label")
    train = read_table(files["train"])
    where = str(files["train"])
    if label not in train.columns:
        raise ValueError(f"{where}: no label column {label!r} (columns: {', '.join(map(str, train.columns))}); "
                         f"name it in {SPEC_FILE}: {{\"label_column\": \"...\"}}")
    text = _text_columns(train, label, where, given.get("text_columns"))
    values = train[label].tolist()
    kind = _label_kind(values, where, label)
    task_type = given.get("task_type") or ("regression" if kind == "regression" else "classification")
    if task_type == "regression" and kind == "string":
        raise ValueError(f"{where}: task_type regression needs numeric labels in column {label!r}")
    names = () if task_type == "regression" else _classes(values, kind, where, label, given.get("label_names"))
    metrics = ("spearman", "pearson") if task_type == "regression" else \
        ("accuracy", "f1", "macro_f1") if len(names) == 2 else ("accuracy", "macro_f1")
    name = root.resolve().name
    fields = dict(name=name, text_columns=text, num_labels=1 if task_type == "regression" else len(names),
                  metrics=metrics, epochs=int(given.get("epochs", 3)), label_names=names, group="own",
                  data=str(root))
    for split in ("validation", "test"):
        if split in files:  # read now: a bad dev or test file fails before any training
            _load_split(files[split], fields, label, labelled=split != "test")
    return {"fields": fields, "files": files, "label_column": label}


def _stamp(directory: str) -> tuple:
    """What identifies the directory's current content: its files' names, sizes and modification times."""
    root = Path(directory).expanduser()
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file())) \
        if root.is_dir() else ()


_INFERRED: dict[tuple, dict[str, Any]] = {}


def _inferred(directory: str) -> dict[str, Any]:
    key = (str(Path(directory).expanduser().resolve()), _stamp(directory))
    if key not in _INFERRED:  # named several times per run (command line, datamodule, model); read once
        _INFERRED[key] = _infer(directory)
    return _INFERRED[key]


def own_task_fields(directory: str) -> dict[str, Any]:
    """The :class:`~downstream.tasks.TaskSpec` fields of the task in ``directory`` (checked: raises ValueError)."""
    return dict(_inferred(directory)["fields"])


def _load_split(path: Path, fields: dict[str, Any], label: str, labelled: bool = True) -> datasets.Dataset:
    """One split, checked, as ``text columns + label`` (+ ``idx`` for an unlabelled test split: the file's
    ``idx``/``index``/``id`` column, else the row number)."""
    frame = read_table(path)
    for column in (*fields["text_columns"], *((label,) if labelled else ())):
        if column not in frame.columns:
            raise ValueError(f"{path}: missing column {column!r} (task {fields['name']} needs "
                             f"{', '.join((*fields['text_columns'], label))}; found {', '.join(map(str, frame.columns))})")
    table: dict[str, list] = {c: ["" if v is None else str(v) for v in frame[c].tolist()] for c in fields["text_columns"]}
    if labelled:
        table["label"] = _label_ids(frame[label].tolist(), fields, f"{path}")
    else:
        table["label"] = [0.0 if fields["num_labels"] == 1 else 0] * len(frame)  # a placeholder; never read
        index = next((c for c in frame.columns if str(c).lower() in INDEX_COLUMNS), None)
        table["idx"] = frame[index].tolist() if index is not None else list(range(len(frame)))
    return datasets.Dataset.from_dict(table)


def _label_ids(values: list[Any], fields: dict[str, Any], where: str) -> list[float] | list[int]:
    if fields["num_labels"] == 1:
        bad = next((v for v in values if not _is_number(v)), None)
        if bad is not None:
            raise ValueError(f"{where}: label {bad!r} is not a number (task {fields['name']} is a regression)")
        return [float(v) for v in values]
    ids = {n: i for i, n in enumerate(fields["label_names"])}
    unknown = sorted({label_name(v) for v in values} - set(ids))
    if unknown:
        raise ValueError(f"{where}: label(s) {', '.join(unknown)} never seen in the training file "
                         f"(classes: {', '.join(fields['label_names'])})")
    return [ids[label_name(v)] for v in values]


def load_own_task(directory: str) -> dict[str, datasets.Dataset]:
    """The train and dev splits of the task in ``directory`` as ``text columns + label`` (class ids, or floats)."""
    info = _inferred(directory)
    return {split: _load_split(info["files"][split], info["fields"], info["label_column"])
            for split in ("train", "validation")}


def load_own_test(directory: str) -> dict[str, datasets.Dataset]:
    """``{"test": ...}`` (text columns, a placeholder label, ``idx``) if the directory has a test file, else ``{}``."""
    info = _inferred(directory)
    if "test" not in info["files"]:
        return {}
    return {"test": _load_split(info["files"]["test"], info["fields"], info["label_column"], labelled=False)}


def describe_own_task(directory: str) -> dict[str, Any]:
    """What was inferred (or read from ``task.json``) about the task in ``directory``, for the record: its files,
    columns, type and class ids (``label_names[i]`` is class i)."""
    info = _inferred(directory)
    fields = info["fields"]
    return {"name": fields["name"], "directory": str(Path(directory).expanduser().resolve()),
            "files": {split: str(path) for split, path in info["files"].items()},
            "text_columns": list(fields["text_columns"]), "label_column": info["label_column"],
            "task_type": "regression" if fields["num_labels"] == 1 else "classification",
            "label_names": list(fields["label_names"]), "metrics": list(fields["metrics"]), "epochs": fields["epochs"]}
