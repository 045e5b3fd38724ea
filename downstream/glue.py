"""Loading GLUE's splits: from the Hugging Face hub, or from local files with the hub's columns.

Data comes from the hub (``datasets.load_dataset("nyu-mll/glue", task)``) or from local files with
the hub's column names (``.tsv``, ``.csv``, ``.json``, ``.jsonl``, ``.parquet``), so a machine
without network can fine-tune on a copy. Either way every split is checked (columns, labels) and
normalised to the task's text columns plus ``label`` here, before any tokenisation or training, so
that a bad file fails in one line naming the file and the column. The task table itself is in
:mod:`downstream.tasks`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from downstream.files import EXTENSIONS as _EXTENSIONS
from downstream.files import read_table as _read_table
from downstream.tasks import TaskSpec

HUB_PATH = "nyu-mll/glue"

# File stems accepted for each split (GLUE's own downloads say "dev", the hub says "validation").
_SPLIT_STEMS = {
    "train": ("train",),
    "validation": ("validation", "dev"),
    "validation_matched": ("validation_matched", "dev_matched"),
    "validation_mismatched": ("validation_mismatched", "dev_mismatched"),
    "test": ("test",),
    "test_matched": ("test_matched",),
    "test_mismatched": ("test_mismatched",),
}


def test_splits(spec: TaskSpec) -> tuple[str, ...]:
    """A task's unlabelled test splits, named as its dev splits are: ``test`` (MNLI: ``test_matched``,
    ``test_mismatched``, as on the hub)."""
    return tuple(split.replace("validation", "test") for split in spec.val_splits)


# --------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------


def find_local_files(spec: TaskSpec, data_dir: str | os.PathLike) -> dict[str, Path]:
    """Locate a task's split files under ``data_dir``.

    Looks in ``data_dir/<task>/`` (also GLUE's own folder names such as ``SST-2``, ``STS-B``,
    matched ignoring case and dashes) and then in ``data_dir`` itself, for ``train.<ext>`` and each
    dev split (``validation.<ext>`` or ``dev.<ext>``; MNLI: ``validation_matched`` /
    ``dev_matched`` and ``..._mismatched``), and the test splits where present (:func:`test_splits`).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} is not a directory")
    candidates = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower().replace("-", "") == spec.name]
    candidates.append(root)
    for folder in candidates:
        files: dict[str, Path] = {}
        for split in ("train", *spec.val_splits, *test_splits(spec)):
            for stem in _SPLIT_STEMS[split]:
                hits = [folder / f"{stem}{ext}" for ext in _EXTENSIONS if (folder / f"{stem}{ext}").is_file()]
                if hits:
                    files[split] = hits[0]
                    break
        if "train" in files:
            missing = [s for s in spec.val_splits if s not in files]
            if missing:
                raise FileNotFoundError(
                    f"{folder}: task {spec.name} has train data but no {' / '.join(missing)} file "
                    f"(expected e.g. {missing[0]}.tsv)"
                )
            return files
    raise FileNotFoundError(
        f"no train file for task {spec.name} under {root} (looked for train{{{','.join(_EXTENSIONS)}}} "
        f"in {', '.join(str(c) for c in candidates)})"
    )


def _to_label_ids(values: list[Any], spec: TaskSpec, where: str) -> list[float] | list[int]:
    """Labels as floats (regression) or class ids; class names are accepted where the task has them."""
    if spec.is_regression:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: column 'label' must hold numbers for task {spec.name}") from None
    names = {n: i for i, n in enumerate(spec.label_names)}
    out: list[int] = []
    for v in values:
        if isinstance(v, str) and v.strip() in names:
            out.append(names[v.strip()])
            continue
        try:
            label = int(float(v))
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: label {v!r} is neither a class id nor one of {list(spec.label_names)}"
            ) from None
        if not 0 <= label < spec.num_labels:
            raise ValueError(
                f"{where}: label {label} outside 0..{spec.num_labels - 1} for task {spec.name} "
                "(unlabelled test splits use -1)"
            )
        out.append(label)
    return out


def _check_columns(columns: list[str], spec: TaskSpec, where: str) -> None:
    """Raise a ValueError naming ``where`` and the first column the task needs that is missing."""
    for column in (*spec.text_columns, "label"):
        if column not in columns:
            raise ValueError(
                f"{where}: missing column {column!r} (task {spec.name} needs "
                f"{', '.join((*spec.text_columns, 'label'))}; found {', '.join(map(str, columns)) or 'none'})"
            )


def load_local_split(path: str | os.PathLike, spec: TaskSpec) -> datasets.Dataset:
    """One split from a local file, checked and normalised to ``text columns + label``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found (task {spec.name})")
    frame = _read_table(path)
    _check_columns(list(frame.columns), spec, str(path))
    table: dict[str, list] = {c: [("" if v is None else str(v)) for v in frame[c].tolist()] for c in spec.text_columns}
    table["label"] = _to_label_ids(frame["label"].tolist(), spec, str(path))
    return datasets.Dataset.from_dict(table)


def load_local_task(
    spec: TaskSpec, data_dir: str | os.PathLike | None = None, data_files: dict[str, str] | None = None
) -> dict[str, datasets.Dataset]:
    """Train and dev splits from local files: ``data_files`` (one path per split) if given, else
    the files :func:`find_local_files` finds under ``data_dir``."""
    files = dict(data_files) if data_files else find_local_files(spec, data_dir)
    raw: dict[str, datasets.Dataset] = {}
    for split in ("train", *spec.val_splits):
        if split not in files:
            raise ValueError(f"task {spec.name}: no file given for split {split!r} (got {sorted(files)})")
        raw[split] = load_local_split(files[split], spec)
    return raw


# --------------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------------


def _normalise_hub_split(ds: datasets.Dataset, spec: TaskSpec, where: str) -> datasets.Dataset:
    """Keep the text columns and ``label`` (the hub adds ``idx``) and check the labels."""
    _check_columns(ds.column_names, spec, where)
    ds = ds.select_columns([*spec.text_columns, "label"])
    if not spec.is_regression:
        # Hub labels are ClassLabel ids already; still reject -1 (unlabelled) rows loudly.
        _to_label_ids(sorted(set(ds["label"])), spec, where)
    return ds


def load_hub_task(spec: TaskSpec) -> dict[str, datasets.Dataset]:
    """Train and dev splits of a GLUE task from ``nyu-mll/glue`` on the Hugging Face hub (or its cache).
    Without network (or with ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` set) and no cached copy: a one-line
    ValueError saying to pass local files with ``--data_dir``."""
    try:
        hub = datasets.load_dataset(HUB_PATH, spec.name)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true")]
        why = f"offline ({offline[0]}={os.environ[offline[0]]})" if offline else (str(err).strip().splitlines() or ["?"])[0]
        raise ValueError(
            f"GLUE task {spec.name!r} could not be loaded from the Hugging Face hub ({HUB_PATH}): {why}; pass local "
            f"files with --data_dir DIR (DIR/{spec.name}/train.tsv and its dev files)"
        ) from None
    return {
        split: _normalise_hub_split(hub[split], spec, f"{HUB_PATH}/{spec.name}:{split}")
        for split in ("train", *spec.val_splits)
    }
