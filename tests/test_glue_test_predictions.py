"""``--predict_test``: GLUE test-set predictions in the benchmark's submission format, by the seed whose dev
score is the median, checked against the chosen seed's model recomputed here. Tiny, seeded, CPU, offline."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from experiments.finetuning import finetune as ft
from tests.test_finetune import FIXTURES, make_tiny_checkpoint

# What gluebenchmark.com takes (jiant's write_glue_preds / GlueBenchmark): file names and label vocabularies.
MNLI_NAMES = {0: "entailment", 1: "neutral", 2: "contradiction"}
RTE_NAMES = {0: "entailment", 1: "not_entailment"}
SENTENCES = ["the bank said profits rose .", "a long debate on monday .", "the team won the final .",
             "the minister cut its forecast .", "the school hired new staff ."]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny fine-tuning runs: one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("electra-ckpt"))


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")


def _pairs(n: int, shift: int) -> list[tuple[str, str]]:
    return [(SENTENCES[i % 5], SENTENCES[(i + shift) % 5] + f" {i}") for i in range(n)]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    """STS-B, MNLI and RTE with train/dev from the fixtures, plus test files (and MNLI's diagnostic set) whose
    index is not the row number, one spelled ``idx`` (the hub's) and one ``index`` (GLUE's own TSVs)."""
    root = tmp_path_factory.mktemp("glue")
    shutil.copytree(FIXTURES / "stsb", root / "stsb")
    shutil.copytree(FIXTURES / "mnli", root / "mnli")
    shutil.copytree(FIXTURES / "mrpc", root / "rte")  # 0/1 labels: for RTE 0 = entailment, 1 = not_entailment
    _write_tsv(root / "stsb" / "test.tsv", ["idx", "sentence1", "sentence2"], [[100 + 3 * i, a, b] for i, (a, b) in enumerate(_pairs(7, 1))])
    _write_tsv(root / "mnli" / "test_matched.tsv", ["index", "premise", "hypothesis"], [[50 - i, a, b] for i, (a, b) in enumerate(_pairs(6, 2))])
    _write_tsv(root / "mnli" / "test_mismatched.tsv", ["idx", "premise", "hypothesis"], [[i, a, b] for i, (a, b) in enumerate(_pairs(5, 3))])
    _write_tsv(root / "ax" / "test.tsv", ["idx", "premise", "hypothesis"], [[i, a, b] for i, (a, b) in enumerate(_pairs(4, 4))])
    _write_tsv(root / "rte" / "test.tsv", ["idx", "sentence1", "sentence2"], [[7 + i, a, b] for i, (a, b) in enumerate(_pairs(5, 1))])
    return root


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _test_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@torch.no_grad()
def _recompute(model, tokenizer, rows: list[dict[str, str]], columns: tuple[str, str]) -> list[float]:
    """The model's output on each test row, tokenised here one example at a time (no padding)."""
    model.eval()
    out = []
    for row in rows:
        enc = tokenizer(row[columns[0]], row[columns[1]], truncation=True, max_length=128, return_tensors="pt")
        logits = model(dict(enc))  # (1, num_labels)
        out.append(float(logits[0, 0]) if logits.shape[-1] == 1 else int(logits[0].argmax()))
    return out


def test_glue_submission_files_from_the_median_seed(ckpt, glue_dir, tmp_path, monkeypatch):
    created, make_model = [], ft.SequenceClassification

    def spy(*args, **kwargs):
        created.append(make_model(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(ft, "SequenceClassification", spy)
    out = tmp_path / "out"
    tasks = ["stsb", "mnli", "rte"]
    results = ft.finetune(ckpt, tasks=tasks, seeds=3, out_dir=str(out), data_dir=str(glue_dir), max_steps=3,
                          batch_size=8, wandb=False, predict_test=True)
    models = {(task, seed): created[3 * t + seed] for t, task in enumerate(tasks) for seed in range(3)}
    folder = out / "glue-test"
    assert sorted(p.name for p in folder.glob("*.tsv")) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv", "STS-B.tsv"]
    with zipfile.ZipFile(out / "glue-test.zip") as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in folder.glob("*.tsv"))
    record = json.loads((folder / "seeds.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    expected = {"STS-B.tsv": ("stsb", "stsb/test.tsv"), "MNLI-m.tsv": ("mnli", "mnli/test_matched.tsv"),
                "MNLI-mm.tsv": ("mnli", "mnli/test_mismatched.tsv"), "AX.tsv": ("mnli", "ax/test.tsv"),
                "RTE.tsv": ("rte", "rte/test.tsv")}
    for name, (task, test_file) in expected.items():
        scores = results[task].scores
        median = sorted(scores, key=lambda s: (scores[s], s))[1]  # the middle one of three seeds
        assert record[task]["seed"] == median and record[task]["dev"][results[task].metric] == pytest.approx(scores[median])
        header, rows = _read(folder / name)
        test = _test_rows(glue_dir / test_file)
        assert header == ["index", "prediction"] and len(rows) == len(test)
        assert [r[0] for r in rows] == [t.get("idx", t.get("index")) for t in test]
        columns = ("sentence1", "sentence2") if task != "mnli" else ("premise", "hypothesis")
        again = _recompute(models[(task, median)], tokenizer, test, columns)
        predicted = [r[1] for r in rows]
        if task == "stsb":
            values = [float(p) for p in predicted]
            assert all(0.0 <= v <= 5.0 for v in values)
            assert values == pytest.approx([min(max(5 * y, 0.0), 5.0) for y in again], abs=2e-3)
            other = next(s for s in scores if s != median)  # the seeds' models differ: the right one predicted
            assert again != pytest.approx(_recompute(models[(task, other)], tokenizer, test, columns), abs=1e-4)
        else:
            names = MNLI_NAMES if task == "mnli" else RTE_NAMES
            assert set(predicted) <= set(names.values())
            assert predicted == [names[y] for y in again]


def test_missing_test_file_is_one_line_before_training(ckpt, glue_dir, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(ft, "_run_one", fail)
    data = tmp_path / "glue"
    shutil.copytree(glue_dir / "mnli", data / "mnli")
    (data / "mnli" / "test_mismatched.tsv").unlink()
    with pytest.raises(ValueError) as err:
        ft.finetune(ckpt, tasks="mnli", seeds=1, out_dir=str(tmp_path / "o"), data_dir=str(data), wandb=False,
                    predict_test=True)
    message = str(err.value)
    assert "\n" not in message and "test_mismatched" in message and "--predict_test" in message


def test_labels_follow_the_benchmark():
    from downstream.submission import GLUE_FILES, format_prediction, submission_tsv
    from downstream.tasks import get_task

    assert format_prediction(get_task("cola"), 1) == "1" and format_prediction(get_task("qqp"), 0) == "0"
    assert format_prediction(get_task("wnli"), 1) == "1"  # jiant: WNLI's labels are "0"/"1"
    assert [format_prediction(get_task("qnli"), i) for i in (0, 1)] == ["entailment", "not_entailment"]
    assert [format_prediction(get_task("mnli"), i) for i in (0, 1, 2)] == ["entailment", "neutral", "contradiction"]
    stsb = get_task("stsb")
    assert [format_prediction(stsb, y) for y in (-0.1, 0.5, 1.3)] == ["0.000", "2.500", "5.000"]
    assert submission_tsv(stsb, [4, 2], [0.2, 0.4]) == "index\tprediction\n4\t1.000\n2\t2.000\n"
    assert {f for files in GLUE_FILES.values() for f in files.values()} == {
        "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv",
        "RTE.tsv", "WNLI.tsv", "AX.tsv"}


def test_jobs_write_the_same_files_as_finetune(ckpt, glue_dir, tmp_path):
    """A comparison's ranks run (task, seed) jobs (ft.Jobs): each keeps its seed's predictions, and the write at the
    end gives the files one process's finetune gives."""
    from experiments.finetuning.scores import TaskResult

    options = dict(tasks=["rte"], seeds=2, data_dir=str(glue_dir), max_steps=2, batch_size=8, wandb=False,
                   predict_test=True)
    ft.finetune(ckpt, out_dir=str(tmp_path / "one"), **options)
    jobs = ft.Jobs(ckpt, tmp_path / "jobs", **options)
    result = TaskResult("rte", "accuracy")
    for seed in (1, 0):  # in any order, as ranks finish
        result.scores[seed] = jobs.run_one("rte", seed)["accuracy"]
    jobs.write({"rte": result})
    for name in ("glue-test/RTE.tsv", "glue-test/seeds.json"):
        assert (tmp_path / "jobs" / name).read_text() == (tmp_path / "one" / name).read_text()
