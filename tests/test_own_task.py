"""A researcher's own task from a directory of CSV/JSONL files (``--tasks path/to/mytask/``): inference of its
columns, type and classes, fine-tuning end to end, and the one-line errors before any training."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from downstream.tasks import get_task, resolve_tasks
from experiments.finetuning import finetune as ft
from tests.test_finetune import make_tiny_checkpoint

WORDS = {"positive": "a gorgeous witty moving film", "negative": "a dull lifeless tedious mess",
         "neutral": "a film that runs two hours"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny fine-tuning runs: one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("electra-ckpt"))


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment_task(root: Path) -> Path:
    """3 classes spelled as words, one text column beside an ``id`` column, a test file without labels."""
    rows = [[i, f"{WORDS[label]} {i}", label] for i, label in enumerate(["positive", "negative", "neutral"] * 8)]
    _csv(root / "train.csv", ["id", "review", "label"], rows[:18])
    _csv(root / "dev.csv", ["id", "review", "label"], rows[18:])
    _csv(root / "test.csv", ["id", "review"], [[900 + i, text] for i, text, _ in rows[:5]])
    return root


def similarity_task(root: Path) -> Path:
    """A pair regression in JSON lines: scores with decimals."""
    rows = [{"a": f"the bank said profits rose {i}", "b": f"the team won {i % 3}", "label": round(i * 0.37 % 4, 2) + 0.5}
            for i in range(20)]
    _jsonl(root / "train.jsonl", rows[:14])
    _jsonl(root / "validation.jsonl", rows[14:])
    return root


def test_inferred_specs(tmp_path):
    sentiment = get_task(str(sentiment_task(tmp_path / "sentiment")))
    assert (sentiment.name, sentiment.text_columns, sentiment.num_labels) == ("sentiment", ("review",), 3)
    assert sentiment.label_names == ("negative", "neutral", "positive")  # sorted
    assert sentiment.metrics == ("accuracy", "macro_f1") and sentiment.group == "own"
    similarity = get_task(str(similarity_task(tmp_path / "sim")) + "/")
    assert similarity.is_regression and similarity.text_columns == ("a", "b")
    assert similarity.metrics == ("spearman", "pearson")
    assert get_task("sim") is similarity  # known by its directory's name once named
    # whole-number labels: classes, numerically sorted; task.json can make them a regression
    stars = tmp_path / "stars"
    _jsonl(stars / "train.jsonl", [{"text": f"w {i}", "label": [1, 2, 10][i % 3]} for i in range(6)])
    _jsonl(stars / "dev.jsonl", [{"text": "w", "label": 10}])
    assert get_task(str(stars)).label_names == ("1", "2", "10")
    (stars / "task.json").write_text('{"task_type": "regression"}')
    assert get_task(str(stars)).is_regression


def test_own_tasks_end_to_end(ckpt, tmp_path):
    sentiment, similarity = sentiment_task(tmp_path / "data" / "sentiment"), similarity_task(tmp_path / "data" / "sim")
    out = tmp_path / "out"
    results = ft.finetune(ckpt, tasks=[str(sentiment), f"{similarity}/"], seeds=2, out_dir=str(out), max_steps=2,
                          batch_size=4, wandb=False, predict_test=True)
    assert list(results) == ["sentiment", "sim"]
    assert set(results["sentiment"].others) == {"macro_f1"} and set(results["sim"].others) == {"pearson"}
    with open(out / "results.csv", newline="") as f:
        rows = {r["task"]: r for r in csv.DictReader(f)}
    assert rows["sentiment"]["metric"] == "accuracy" and rows["sim"]["metric"] == "spearman"
    for task in ("sentiment", "sim"):
        assert all(math.isfinite(float(rows[task][f"seed_{s}"])) for s in (0, 1))
    record = json.loads((out / "sentiment" / "task.json").read_text())
    assert record["label_names"] == ["negative", "neutral", "positive"] and record["text_columns"] == ["review"]
    assert json.loads((out / "config.json").read_text())["tasks"] == ["sentiment", "sim"]
    # the test file, predicted by the median seed, with the class names and the file's id column
    lines = (out / "test-predictions" / "sentiment.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and [r.split("\t")[0] for r in lines[1:]] == [str(900 + i) for i in range(5)]
    assert {r.split("\t")[1] for r in lines[1:]} <= {"negative", "neutral", "positive"}
    assert not (out / "glue-test").exists()


def _error(directory: Path) -> str:
    with pytest.raises(ValueError) as err:
        resolve_tasks([str(directory)])
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_directories_are_one_line_errors(tmp_path):
    assert "not found" in _error(tmp_path / "nope")
    missing_dev = tmp_path / "nodev"
    _csv(missing_dev / "train.csv", ["text", "label"], [["a", "x"], ["b", "y"]])
    assert "no validation or dev file" in _error(missing_dev) and "nodev" in _error(missing_dev)
    no_label = tmp_path / "nolabel"
    _csv(no_label / "train.csv", ["text", "target"], [["a", "x"], ["b", "y"]])
    _csv(no_label / "dev.csv", ["text", "target"], [["a", "x"]])
    message = _error(no_label)
    assert "train.csv" in message and "'label'" in message and "label_column" in message
    one_class = tmp_path / "oneclass"
    _csv(one_class / "train.csv", ["text", "label"], [["a", "x"], ["b", "x"]])
    _csv(one_class / "dev.csv", ["text", "label"], [["a", "x"]])
    assert "single class" in _error(one_class)
    mixed = tmp_path / "mixed"
    _jsonl(mixed / "train.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "two"}])
    _jsonl(mixed / "dev.jsonl", [{"text": "a", "label": 1}])
    assert "mixes numbers and words" in _error(mixed)
    unseen = tmp_path / "unseen"
    _csv(unseen / "train.csv", ["text", "label"], [["a", "x"], ["b", "y"]])
    _csv(unseen / "dev.csv", ["text", "label"], [["a", "z"]])
    assert "dev.csv" in _error(unseen) and "never seen" in _error(unseen)
    dev_column = tmp_path / "devcolumn"
    _csv(dev_column / "train.csv", ["text", "label"], [["a", "x"], ["b", "y"]])
    _csv(dev_column / "dev.csv", ["sentence", "label"], [["a", "x"]])
    assert "dev.csv" in _error(dev_column) and "'text'" in _error(dev_column)
    three_texts = tmp_path / "three"
    _csv(three_texts / "train.csv", ["a", "b", "c", "label"], [["x", "y", "z", "p"], ["x", "y", "z", "q"]])
    _csv(three_texts / "dev.csv", ["a", "b", "c", "label"], [["x", "y", "z", "p"]])
    assert "text_columns" in _error(three_texts)
    (three_texts / "task.json").write_text('{"text_column": ["a"]}')
    assert "unknown key" in _error(three_texts)
    named_like_glue = sentiment_task(tmp_path / "rte")
    assert "rename" in _error(named_like_glue)


def test_compare_checks_an_own_task_before_pretraining(tmp_path):
    from experiments.comparison.compare import check_finetune
    from experiments.errors import UsageError

    bad = tmp_path / "mine"
    _csv(bad / "train.csv", ["text", "label"], [["a", "x"], ["b", "y"]])
    with pytest.raises(UsageError) as err:
        check_finetune({"tasks": [str(bad)], "seeds": 1})
    assert "--finetune.tasks" in str(err.value) and "dev" in str(err.value)
    _csv(bad / "dev.csv", ["text", "label"], [["a", "x"]])
    check_finetune({"tasks": [str(bad)], "seeds": 1})  # now fine


def test_cli_takes_a_task_directory(ckpt, tmp_path, capsys):
    task = sentiment_task(tmp_path / "reviews")
    out = tmp_path / "cli"
    code = ft.main(["--encoder", ckpt, "--tasks", f"{task}/", "--seeds", "1", "--max_steps", "1", "--batch_size", "4",
                    "--wandb", "false", "--predict_test", "true", "--out_dir", str(out)])
    assert code == 0 and "| reviews | accuracy |" in capsys.readouterr().out
    assert (out / "test-predictions" / "reviews.tsv").is_file()
    assert json.loads((out / "test-predictions" / "seeds.json").read_text())["reviews"]["seed"] == 0
