"""``--predict_test``: each seed's predictions on the unlabelled test splits, and the files a benchmark takes.

Every seed's fine-tuned model predicts the test splits right after its dev evaluation
(:func:`save_seed_predictions`: ``<task>/seed<k>/test_predictions.json``, the model outputs before any
formatting). A benchmark takes one file per test set, so once a task's seeds are done
(:func:`write_test_predictions`) the seed whose dev score is the median of the seeds' (the ELECTRA paper
reports the median over fine-tuning seeds; with an even number of seeds, the lower of the two middle ones;
ties go to the smaller seed) writes them:

- GLUE tasks: ``out_dir/glue-test/<CoLA.tsv, MNLI-m.tsv ...>`` in the benchmark's format
  (:mod:`downstream.submission`), and ``out_dir/glue-test.zip`` of them, ready to upload to gluebenchmark.com;
- the user's own tasks with a test file: ``out_dir/test-predictions/<task>.tsv`` (class names, or scores).

Each folder has ``seeds.json``: per task, the seed that predicted, its dev scores, and every seed's
headline score. Every file is written whole and renamed into place (:func:`datamodules.cache.write_atomic`).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch

from datamodules.cache import write_atomic
from downstream.submission import file_name, submission_tsv
from downstream.tasks import TaskSpec
from experiments.finetuning.scores import TaskResult

SEED_FILE = "test_predictions.json"
GLUE_DIR, OWN_DIR, GLUE_ZIP = "glue-test", "test-predictions", "glue-test.zip"


def seed_predictions_path(out: Path, task: str, seed: int) -> Path:
    """Where one seed's test predictions are kept: beside its logs, ``<out>/<task>/seed<k>/test_predictions.json``."""
    return Path(out) / task / f"seed{seed}" / SEED_FILE


@torch.inference_mode()
def predict(model: torch.nn.Module, loader) -> list[float]:
    """The model's prediction (class id, or regression score on the training scale) for every example of
    ``loader``, in order: ``predict_step`` batch by batch, in eval mode (no dropout), on the model's device."""
    model.eval()
    out: list[torch.Tensor] = []
    for i, batch in enumerate(loader):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out.append(model.predict_step(batch, i).float().cpu())  # (B,)
    return torch.cat(out).tolist() if out else []


def save_seed_predictions(model: torch.nn.Module, dm, path: Path) -> None:
    """Predict every test split of ``dm`` (a :class:`~downstream.data.TaskDataModule` with ``predict_test``) and
    write ``{split: {"index": [...], "prediction": [...]}}`` to ``path``."""
    splits = {split: {"index": list(dm.test_raw[split]["idx"]), "prediction": predict(model, loader)}
              for split, loader in dm.predict_dataloaders().items()}
    write_atomic(path, json.dumps(splits) + "\n")


def median_seed(result: TaskResult) -> int:
    """The seed whose headline dev score is the median of the seeds' (the lower middle one for an even count;
    among equal scores the smallest seed)."""
    ordered = sorted(result.scores, key=lambda seed: (result.scores[seed], seed))
    return ordered[(len(ordered) - 1) // 2]


def write_test_predictions(spec: TaskSpec, result: TaskResult, out: Path) -> Path | None:
    """The median seed's test predictions of one task as the benchmark's files (module docstring); returns the
    folder, or None when the task has no test predictions (an own task without a test file, an offline task)."""
    seed = median_seed(result)
    source = seed_predictions_path(out, spec.name, seed)
    if not source.is_file():
        return None
    splits = json.loads(source.read_text())
    if not splits:
        return None
    folder = Path(out) / (GLUE_DIR if spec.group == "glue" else OWN_DIR)
    for split, rows in splits.items():
        write_atomic(folder / file_name(spec, split), submission_tsv(spec, rows["index"], rows["prediction"]))
    record_path = folder / "seeds.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record[spec.name] = {
        "seed": seed, "rule": "the seed whose dev score is the median over seeds (lower middle for an even count)",
        "dev": {spec.metric: result.scores[seed], **{k: v[seed] for k, v in result.others.items() if seed in v}},
        "seed_scores": {str(s): v for s, v in sorted(result.scores.items())},
        "files": {split: file_name(spec, split) for split in splits},
    }
    write_atomic(record_path, json.dumps(record, indent=2) + "\n")
    if spec.group == "glue":
        write_atomic(Path(out) / GLUE_ZIP, _zip(folder))
    return folder


def _zip(folder: Path) -> bytes:
    """The folder's TSV files at the root of a zip archive (what gluebenchmark.com's upload takes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.glob("*.tsv")):
            archive.write(path, path.name)
    return buffer.getvalue()
