"""Test-set predictions: the unlabelled test splits, and GLUE's submission format (gluebenchmark.com).

The benchmark takes one TSV per test set, named as it names them, with the header ``index<TAB>prediction``
and the ``index`` of the test file's rows. These facts follow the GLUE authors' own writers of submission
files: jiant v1's ``write_glue_preds`` (nyu-mll/jiant, ``jiant/evaluate.py``) and jiant v2's
``GlueBenchmark.BENCHMARK_SUBMISSION_FILENAMES`` and ``GlueMixin.get_glue_preds``
(``jiant/scripts/postproc/glue_submission_formatter.py``, ``jiant/tasks/core.py``)::

    | file                      | test set                   | prediction                                 |
    |---------------------------|----------------------------|--------------------------------------------|
    | CoLA, SST-2, MRPC, QQP    | test                       | 0 / 1                                      |
    | STS-B                     | test                       | similarity, clipped to [0, 5], 3 decimals  |
    | MNLI-m, MNLI-mm, AX       | test_matched, _mismatched, | entailment / neutral / contradiction       |
    |                           | the diagnostic set (AX)    | (AX is predicted by the MNLI model)        |
    | QNLI, RTE                 | test                       | entailment / not_entailment                |
    | WNLI                      | test                       | 0 / 1 (1 = entailment: jiant's WNLI labels |
    |                           |                            | are ["0", "1"] and v1 writes it as ints)   |

Test splits come from local files (hub column names, under ``data_dir`` as the other splits:
``<task>/test.tsv``, MNLI ``test_matched`` / ``test_mismatched``; the diagnostic set as ``ax/test.tsv``)
or from the hub (``nyu-mll/glue``, configs ``<task>`` and ``ax``). A user's own task (:mod:`downstream.own`)
is predicted on its ``test`` file, if it has one, and written with its class names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from downstream.files import EXTENSIONS, read_table
from downstream.glue import HUB_PATH, find_local_files, test_splits
from downstream.own import INDEX_COLUMNS, load_own_test
from downstream.tasks import TaskSpec

# The GLUE diagnostic set: a test split of MNLI's task, predicted by the MNLI model (file AX.tsv).
AX_SPLIT = "ax"
# Benchmark file name of each (task, test split).
GLUE_FILES: dict[str, dict[str, str]] = {
    "cola": {"test": "CoLA.tsv"},
    "sst2": {"test": "SST-2.tsv"},
    "mrpc": {"test": "MRPC.tsv"},
    "stsb": {"test": "STS-B.tsv"},
    "qqp": {"test": "QQP.tsv"},
    "mnli": {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv", AX_SPLIT: "AX.tsv"},
    "qnli": {"test": "QNLI.tsv"},
    "rte": {"test": "RTE.tsv"},
    "wnli": {"test": "WNLI.tsv"},
}
# Tasks whose predictions are written as class names (label_names[id]); the others as class ids.
NAMED_LABELS = ("mnli", "qnli", "rte")
STSB_RANGE = (0.0, 5.0)


def predicts_test(spec: TaskSpec) -> bool:
    """Whether ``--predict_test`` predicts this task: GLUE's and the user's own tasks (offline ones: no)."""
    return spec.group in ("glue", "own")


def _as_test_split(columns: dict[str, list], spec: TaskSpec, where: str, index: list[Any] | None) -> datasets.Dataset:
    """Text columns, a placeholder ``label`` (tokenisation carries one; never read) and ``idx`` (the file's
    ``idx``/``index`` column, else the row number)."""
    missing = [c for c in spec.text_columns if c not in columns]
    if missing:
        raise ValueError(f"{where}: missing column {missing[0]!r} (the test split of task {spec.name} needs "
                         f"{', '.join(spec.text_columns)}; found {', '.join(map(str, columns))})")
    table: dict[str, list] = {c: ["" if v is None else str(v) for v in columns[c]] for c in spec.text_columns}
    n = len(table[spec.text_columns[0]])
    table["label"] = [0.0 if spec.is_regression else 0] * n
    table["idx"] = list(index) if index is not None else list(range(n))
    return datasets.Dataset.from_dict(table)


def _local_test(path: Path, spec: TaskSpec) -> datasets.Dataset:
    frame = read_table(path)
    index = next((c for c in frame.columns if str(c).lower() in INDEX_COLUMNS), None)
    columns = {c: frame[c].tolist() for c in frame.columns}
    return _as_test_split(columns, spec, str(path), columns[index] if index is not None else None)


def _local_ax(data_dir: str | os.PathLike) -> Path | None:
    """The diagnostic set's local file, if any: ``data_dir/ax/test.<ext>`` (or ``diagnostic/diagnostic.<ext>``,
    the folder of GLUE's own download; folder names ignore case)."""
    folders = {d.name.lower(): d for d in Path(data_dir).expanduser().iterdir() if d.is_dir()}
    for folder, stem in (("ax", "test"), ("diagnostic", "diagnostic")):
        hits = [folders[folder] / f"{stem}{ext}" for ext in EXTENSIONS if folder in folders]
        hits = [path for path in hits if path.is_file()]
        if hits:
            return hits[0]
    return None


def _glue_local(spec: TaskSpec, data_dir: str | os.PathLike) -> dict[str, datasets.Dataset]:
    files = find_local_files(spec, data_dir)
    missing = [s for s in test_splits(spec) if s not in files]
    if missing:
        raise ValueError(f"task {spec.name}: no {' / '.join(missing)} file under {data_dir} for --predict_test "
                         f"(add {spec.name}/{missing[0]}.tsv with the hub's columns: {', '.join(spec.text_columns)}, idx)")
    out = {split: _local_test(files[split], spec) for split in test_splits(spec)}
    ax = _local_ax(data_dir) if spec.name == "mnli" else None
    if ax is not None:
        out[AX_SPLIT] = _local_test(ax, spec)
    return out


def _glue_hub(spec: TaskSpec) -> dict[str, datasets.Dataset]:
    where = f"{HUB_PATH}/{spec.name}"
    try:
        hub = datasets.load_dataset(HUB_PATH, spec.name)
        out = {s: _as_test_split(hub[s].to_dict(), spec, f"{where}:{s}", hub[s]["idx"]) for s in test_splits(spec)}
        if spec.name == "mnli":
            ax = datasets.load_dataset(HUB_PATH, AX_SPLIT)["test"]
            out[AX_SPLIT] = _as_test_split(ax.to_dict(), spec, f"{HUB_PATH}/ax:test", ax["idx"])
    except (ConnectionError, OSError, KeyError, datasets.exceptions.DatasetNotFoundError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"the test split of GLUE task {spec.name!r} could not be loaded from the Hugging Face hub "
                         f"({why}); pass local files with --data_dir DIR (DIR/{spec.name}/test.tsv)") from None
    return out


def load_test_splits(spec: TaskSpec, data_dir: str | os.PathLike | None = None) -> dict[str, datasets.Dataset]:
    """The task's unlabelled test splits by name (text columns, a placeholder ``label``, ``idx``): GLUE's from
    ``data_dir`` or the hub (MNLI with the diagnostic set as ``ax`` where it is found), an own task's test file
    ({} without one), {} for the offline tasks. A GLUE task without its test file raises a one-line ValueError."""
    if spec.group == "own":
        return load_own_test(spec.dataset)
    if spec.group != "glue":
        return {}
    return _glue_local(spec, data_dir) if data_dir else _glue_hub(spec)


def file_name(spec: TaskSpec, split: str) -> str:
    """The file a test split's predictions go to: the benchmark's name (``MNLI-mm.tsv``), else ``<task>.tsv``."""
    return GLUE_FILES.get(spec.name, {}).get(split, f"{spec.name}.tsv") if spec.group == "glue" else f"{spec.name}.tsv"


def format_prediction(spec: TaskSpec, value: float) -> str:
    """One model output (a class id, or a regression score on the training scale) as the file's prediction:
    STS-B's score back on 0..5 (``/ label_scale``) and clipped, class names where GLUE wants them (see the
    table above), an own task's class name or score."""
    if spec.is_regression:
        score = float(value) / spec.label_scale
        if spec.group == "glue":  # STS-B: GLUE's 0..5 similarity
            score = min(max(score, STSB_RANGE[0]), STSB_RANGE[1])
        return f"{score:.3f}"
    label = int(value)
    if spec.group == "own" or spec.name in NAMED_LABELS:
        return spec.label_names[label]
    return str(label)


def submission_tsv(spec: TaskSpec, index: list[Any], predictions: list[float]) -> str:
    """A test split's file: the header ``index<TAB>prediction``, then one row per test example in file order."""
    rows = [f"{i}\t{format_prediction(spec, p)}" for i, p in zip(index, predictions)]
    return "\n".join(["index\tprediction", *rows]) + "\n"
