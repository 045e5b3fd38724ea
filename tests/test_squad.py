"""SQuAD 1.1 / 2.0: the official scores against hand-computed values, features built over a long context,
post-processing across features, ``isoflop finetune --tasks squad2`` end to end, and one-line errors on bad
files. Tiny, seeded, CPU, offline (the data are written by the tests)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from downstream.squad import build_features, postprocess
from downstream.squad_metrics import dataset_answers, squad_scores
from downstream.tasks import get_task, resolve_tasks
from experiments.finetuning import finetune as ft
from tests.helpers import mentions
from tests.test_finetune import fixture_texts, make_tiny_checkpoint, official_depth, official_depth_rates

# A long context: 40 sentences, the answer ("under the blue bridge") in the 31st.
_FILLER = [f"Sentence {n} mentions the {c} garden near the old station." for n, c in
           zip(range(40), ["red", "green", "yellow", "purple"] * 10)]
LONG_CONTEXT = " ".join(_FILLER[:30] + ["The treasure is hidden under the blue bridge."] + _FILLER[30:])
SHORT = [
    ("The Eiffel Tower was completed in 1889 in Paris, France. It was designed by the engineer Gustave Eiffel.",
     [("When was the Eiffel Tower completed?", "1889"), ("Who designed the tower?", "Gustave Eiffel"),
      ("Who painted the tower?", None)]),
    ("The river Seine flows through Paris. Many bridges cross the river, and boats carry visitors along it.",
     [("Which river flows through Paris?", "Seine"), ("What carries visitors?", "boats"),
      ("How long is the Seine?", None)]),
]


def squad_json(version: str = "v2.0") -> dict:
    """A small SQuAD file: two short paragraphs (answerable and, for v2, unanswerable questions) and the long one."""
    paragraphs = []
    for p, (context, questions) in enumerate([*SHORT, (LONG_CONTEXT, [("Where is the treasure hidden?",
                                                                        "under the blue bridge")])]):
        qas = []
        for q, (question, answer) in enumerate(questions):
            if answer is None and version == "v1.1":
                continue
            answers = [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}]
            qas.append({"id": f"q{p}{q}", "question": question, "answers": answers, "is_impossible": answer is None})
        paragraphs.append({"context": context, "qas": qas})
    return {"version": version, "data": [{"title": "tiny", "paragraphs": paragraphs}]}


def texts() -> list[str]:
    return [LONG_CONTEXT, *(c for c, _ in SHORT), *(q for _, qs in SHORT for q, _ in qs), *fixture_texts()]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny fine-tuning runs: one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("squad-ckpt"), texts=texts(), vocab_size=400)


@pytest.fixture(scope="module")
def tokenizer(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


def _records(version: str = "v2.0") -> list[dict]:
    from downstream.squad import _record

    return [_record(qa, p["context"]) for a in squad_json(version)["data"] for p in a["paragraphs"] for qa in p["qas"]]


# --------------------------------------------------------------------------------------------
# (a) Metrics: the official rules, computed by hand
# --------------------------------------------------------------------------------------------


def test_official_scores_equal_hand_computed_values(tmp_path):
    context = "The Eiffel Tower in Paris, France, was finished in 1889. An apple a day."
    qas = [  # id, gold answers (none: unanswerable), prediction, no-answer score, best non-empty answer
        ("q1", ["the Eiffel Tower", "Eiffel Tower"], "eiffel tower!", -5, "eiffel tower!"),
        ("q2", ["Paris, France"], "in Paris", -1, "in Paris"),
        ("q3", ["1889", "in 1889", "the year 1889"], "year 1889 AD", 2, "year 1889 AD"),
        ("q4", [], "", 3, "Paris"),
        ("q5", [], "the tower", 0, "the tower"),
        ("q6", ["An apple a day"], "apple day", -3, "apple day"),
        ("q7", [], "a", 4, "a"),
    ]
    dataset = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": i, "question": "?", "is_impossible": not gold,
         "answers": [{"text": g, "answer_start": 0} for g in gold]} for i, gold, *_ in qas]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(dataset))
    (tmp_path / "preds.json").write_text(json.dumps({i: pred for i, _, pred, *_ in qas}))
    answers = dataset_answers(json.loads((tmp_path / "dev.json").read_text()))
    got = squad_scores(answers, json.loads((tmp_path / "preds.json").read_text()),
                       na_scores={i: na for i, *_, na, _ in qas}, answered={i: a for i, *_, a in qas})
    # Per question (exact, F1), after normalising (lower case, no punctuation, no a/an/the, single spaces):
    # q1 "eiffel tower" == "eiffel tower"                                  -> 1, 1
    # q2 "in paris" vs "paris france": 1 shared token, P = 1/2, R = 1/2     -> 0, 0.5
    # q3 "year 1889 ad" vs "1889" (P 1/3, R 1: 0.5), "in 1889" (P 1/3, R 1/2: 0.4),
    #    "year 1889" (P 2/3, R 1: 0.8)                                      -> 0, 0.8
    # q4 unanswerable, ""                                                  -> 1, 1
    # q5 unanswerable, "the tower" -> "tower" != ""                        -> 0, 0
    # q6 "apple day" == "an apple a day" normalised                        -> 1, 1
    # q7 unanswerable, "a" normalises to "": no token on either side       -> 1, 1
    expected = {
        "exact": 100 * 4 / 7, "f1": 100 * (1 + 0.5 + 0.8 + 1 + 1 + 0 + 1) / 7, "total": 7,
        "HasAns_exact": 100 * 2 / 4, "HasAns_f1": 100 * 3.3 / 4, "HasAns_total": 4,
        "NoAns_exact": 100 * 2 / 3, "NoAns_f1": 100 * 2 / 3, "NoAns_total": 3,
        # Best threshold (the official v2 script's): start from "all unanswerable" (3 right), then answer the
        # questions by increasing no-answer score: q1 (-5) +1 -> 4, q6 (-3) +1 -> 5, q2 (-1) +0 exact / +0.5 F1,
        # q5 (0) -1 (an answer to an unanswerable one), q3 (2) +0 / +0.8, q4 (3) -1, q7 (4) -1 (the official
        # script counts any non-empty answer as wrong here). Best: exact 5 at -3, F1 5.5 at -1.
        "best_exact": 100 * 5 / 7, "best_exact_thresh": -3, "best_f1": 100 * 5.5 / 7, "best_f1_thresh": -1,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    # SQuAD 1.1 (no unanswerable question): no breakdown; a missing prediction scores 0.
    v1 = squad_scores({"a": ["Gustave Eiffel"], "b": ["1889"]}, {"a": "Eiffel"})
    assert v1 == pytest.approx({"exact": 0.0, "f1": 100 * (2 * 1 * 0.5 / 1.5) / 2, "total": 2})


# --------------------------------------------------------------------------------------------
# (b) Features over a long context
# --------------------------------------------------------------------------------------------


def test_long_context_windows_recover_the_answer(tokenizer):
    record = next(r for r in _records() if r["context"] == LONG_CONTEXT)
    answer = record["answers"]["text"][0]
    cols = build_features(tokenizer, [record], max_seq_length=48, doc_stride=16, max_query_length=12)
    n_context = len(tokenizer(LONG_CONTEXT, add_special_tokens=False)["input_ids"])
    starts, lengths = cols["window_start"], cols["window_length"]
    assert len(starts) >= 4 and all(b - a == 16 for a, b in zip(starts, starts[1:]))  # doc_stride apart
    assert starts[-1] + lengths[-1] == n_context and all(len(ids) <= 48 for ids in cols["input_ids"])
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    hits = 0
    for f, (s, e) in enumerate(zip(cols["start_positions"], cols["end_positions"])):
        first, window = cols["context_start"][f], range(starts[f], starts[f] + lengths[f])
        tokens = [t for t in range(n_context) if t in window]
        if s == 0:  # [CLS]: the answer is not wholly inside this window
            assert e == 0
            continue
        hits += 1
        offsets = cols["offsets"][0]
        ts, te = starts[f] + s - first, starts[f] + e - first
        assert ts in tokens and te in tokens
        assert LONG_CONTEXT[offsets[ts][0]:offsets[te][1]] == answer  # the text, through the offsets
        assert cols["input_ids"][f][s:e + 1].tolist() == answer_ids  # and the tokens
    assert 1 <= hits < len(starts)  # some windows hold it, others point at CLS
    # Every context token is "max context" in exactly one window.
    owners = np.zeros(n_context, dtype=int)
    for f in range(len(starts)):
        owners[starts[f]:starts[f] + lengths[f]] += np.asarray(cols["max_context"][f], dtype=int)
    assert (owners == 1).all()


def test_unanswerable_questions_point_at_cls(tokenizer):
    records = [r for r in _records() if not r["answers"]["text"]]
    cols = build_features(tokenizer, records, max_seq_length=96)
    assert len(records) == 2 and cols["start_positions"] == [0, 0] and cols["end_positions"] == [0, 0]
    assert all(ids[0] == tokenizer.cls_token_id for ids in cols["input_ids"])


# --------------------------------------------------------------------------------------------
# (c) Post-processing
# --------------------------------------------------------------------------------------------


def _logits(cols, spans: dict[int, list[tuple[int, int, float]]], null: float = -20.0):
    """Per feature: -10 everywhere, ``null / 2`` at [CLS], and ``score / 2`` at the start and end of given spans
    (window token indices)."""
    starts, ends = [], []
    for f, ids in enumerate(cols["input_ids"]):
        start, end = np.full(len(ids), -10.0), np.full(len(ids), -10.0)
        start[0] = end[0] = null / 2
        for a, b, score in spans.get(f, []):
            start[cols["context_start"][f] + a] = end[cols["context_start"][f] + b] = score / 2
        starts.append(start)
        ends.append(end)
    return starts, ends


def _text(cols, record, f, a, b):
    offsets, shift = cols["offsets"][0], cols["window_start"][f]
    return record["context"][offsets[shift + a][0]:offsets[shift + b][1]]


def test_postprocess_picks_the_best_valid_span_across_features(tokenizer):
    record = next(r for r in _records() if r["context"] == LONG_CONTEXT)
    cols = build_features(tokenizer, [record], max_seq_length=48, doc_stride=16, max_query_length=12)
    assert len(cols["input_ids"]) >= 3
    mc = [np.asarray(m) for m in cols["max_context"]]
    # Feature 0: a high span longer than max_answer_length (6 > 5 tokens): dropped. Feature 1: a span starting at a
    # token that is not max-context there (its first window token, also in feature 0): dropped. Feature 2: the
    # best valid span (2 tokens); feature 1: a valid but lower one.
    late, best = int(np.flatnonzero(mc[1])[0]) + 2, int(np.flatnonzero(mc[2])[0]) + 1
    assert not mc[1][0] and mc[1][late] and mc[2][best]
    spans = {0: [(1, 6, 30.0)], 1: [(0, 1, 25.0), (late, late + 1, 8.0)], 2: [(best, best + 1, 10.0)]}
    starts, ends = _logits(cols, spans)
    preds, na, answered = postprocess([record], cols, starts, ends, version_2=False, max_answer_length=5)
    assert preds[record["id"]] == _text(cols, record, 2, best, best + 1) and na == {}
    # Allowing 6 tokens, feature 0's span wins.
    preds, _, _ = postprocess([record], cols, starts, ends, version_2=False, max_answer_length=6)
    assert preds[record["id"]] == _text(cols, record, 0, 1, 6)
    # SQuAD 2.0: null score (smallest [CLS] start + end over features) 4; best span 10: diff -6.
    starts, ends = _logits(cols, spans, null=4.0)
    for threshold, expected in ((0.0, _text(cols, record, 2, best, best + 1)), (-7.0, "")):
        preds, na, answered = postprocess([record], cols, starts, ends, version_2=True, max_answer_length=5,
                                          null_score_threshold=threshold)
        assert preds[record["id"]] == expected and na[record["id"]] == pytest.approx(-6.0)
        assert answered[record["id"]] == _text(cols, record, 2, best, best + 1)
    starts[1][0] = starts[1][0] - 3  # one feature's null score lower: the smallest counts (1 - 10 = -9)
    _, na, _ = postprocess([record], cols, starts, ends, version_2=True, max_answer_length=5)
    assert na[record["id"]] == pytest.approx(-9.0)
    # With the answerability classifier: the no-answer score is the smallest feature logit, whatever the spans.
    logits = np.array([3.0, -1.0, 2.0, *[5.0] * (len(starts) - 3)])
    for threshold, expected in ((-2.75, ""), (-0.5, _text(cols, record, 2, best, best + 1))):
        preds, na, _ = postprocess([record], cols, starts, ends, version_2=True, max_answer_length=5,
                                   null_score_threshold=threshold, answerable_logits=logits)
        assert preds[record["id"]] == expected and na[record["id"]] == pytest.approx(-1.0)


@pytest.mark.parametrize("task, version", [("squad", "v1.1"), ("squad2", "v2.0")])
def test_oracle_logits_score_100(ckpt, tmp_path, task, version):
    """Logits that point at each feature's own target (the answer's tokens, or [CLS]) give every question its
    answer back through the datamodule's features, post-processing and the official scores: 100 everywhere."""
    from downstream.squad import SquadDataModule

    files = {"squad": ("train-v1.1.json", "dev-v1.1.json"), "squad2": ("train-v2.0.json", "dev-v2.0.json")}[task]
    for name in files:
        (tmp_path / name).write_text(json.dumps(squad_json(version)))
    dm = SquadDataModule(ckpt, task=task, data_dir=str(tmp_path), max_seq_length=48, doc_stride=16, max_query_length=12)
    dm.setup("validate")
    dev = dm.val_dataloader().dataset
    assert len(dev) > len(dev.records)  # the long context has several features
    starts, ends = [], []
    for ids, s, e in zip(dev.columns["input_ids"], dev.columns["start_positions"], dev.columns["end_positions"]):
        start, end = np.zeros(len(ids)), np.zeros(len(ids))
        start[s] = end[e] = 10.0
        starts.append(start)
        ends.append(end)
    scores = dev.score(starts, ends)
    assert scores["exact"] == scores["f1"] == 100.0 and scores["total"] == len(dev.records)
    if task == "squad2":
        assert scores["HasAns_f1"] == scores["NoAns_f1"] == 100.0 and scores["NoAns_total"] == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["start_positions"].ndim == 1


# --------------------------------------------------------------------------------------------
# (d) End to end, and the task list
# --------------------------------------------------------------------------------------------


def test_squad_tasks_are_named_but_not_glue():
    assert "squad" not in resolve_tasks("glue") and "squad2" not in resolve_tasks("glue")
    assert resolve_tasks(["squad2", "mrpc"]) == ["squad2", "mrpc"] and get_task("SQuAD").metric == "f1"
    assert get_task("squad2").epochs == 2 and get_task("squad").group == "squad"


def test_finetune_squad2_end_to_end(ckpt, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-v2.0.json").write_text(json.dumps(squad_json()))
    (data / "squad2").mkdir()
    (data / "squad2" / "dev.json").write_text(json.dumps(squad_json()))  # the generic name, in data_dir/squad2
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="positions"):  # 512 cut to the tiny encoder's 128
        results = ft.finetune(ckpt, tasks="squad2", seeds=1, out_dir=str(out), data_dir=str(data), max_steps=3,
                              batch_size=4, wandb=False)
    result = results["squad2"]
    assert result.metric == "f1" and set(result.others) == {"exact", "HasAns_f1", "HasAns_exact", "NoAns_f1",
                                                            "NoAns_exact", "best_f1", "best_exact"}
    values = [result.scores[0], *(v[0] for v in result.others.values())]
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in values)
    with open(out / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["task"] == "squad2" and row["metric"] == "f1"
    assert float(row["seed_0"]) == pytest.approx(result.scores[0], abs=1e-3)
    logged = (out / "squad2" / "seed0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/HasAns_f1" in logged and "val/NoAns_exact" in logged and "train/loss" in logged
    assert "qa/best_f1_thresh" in logged  # the best no-answer threshold, beside (not among) the scores
    assert json.loads((out / "config.json").read_text())["tasks"] == ["squad2"]


def test_qa_module_shares_the_official_optimiser(ckpt):
    """The start/end head trains at the full rate and the encoder at GLUE's official layer-wise rates; the loss is
    the mean of the start and end cross entropies, and padding never gets probability."""
    import torch
    import torch.nn.functional as F

    from downstream.qa import QuestionAnswering

    module = QuestionAnswering(ckpt, task="squad2", learning_rate=1e-4, layerwise_lr_decay=0.8)
    table = official_depth_rates(1e-4, 0.8, 2)
    groups = module.parameter_groups()
    assert {g["name"].split("/")[0] for g in groups} == {"head", "embeddings", "layer.0", "layer.1"}
    for group in groups:
        assert group["lr"] == pytest.approx(table[official_depth(group["name"].split("/")[0], 2)], rel=1e-12)
        if group["name"].startswith("head"):
            assert all(n.startswith(("qa_outputs.", "answerable.")) for n in group["param_names"])
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(5, 300, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long),
             "start_positions": torch.tensor([0, 2, 4]), "end_positions": torch.tensor([0, 3, 6]),
             "is_impossible": torch.tensor([1, 0, 0])}
    batch["attention_mask"][0, 7:] = 0
    module.eval()
    with torch.no_grad():
        start, end, answerable = module(batch)
    assert start.shape == end.shape == (3, 9) and answerable.shape == (3,)
    assert float(start[0].softmax(-1)[7:].sum()) < 1e-6  # padding
    # The official loss: mean of the start and end cross entropies, plus 0.5 x the answerability loss, where
    # BCE(x, y) = -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), averaged over the batch.
    sig = torch.sigmoid(answerable)
    bce = -(torch.log(sig[0]) + torch.log(1 - sig[1]) + torch.log(1 - sig[2])) / 3
    expected = (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2
    assert float(module._loss(batch, start, end, answerable)) == pytest.approx(float(expected + 0.5 * bce), rel=1e-5)
    assert module.null_score_threshold == -2.75  # the official qa_na_threshold with the classifier
    plain = QuestionAnswering(ckpt, task="squad2", answerable_classifier=False)
    assert plain.answerable is None and plain.null_score_threshold == 0.0
    assert QuestionAnswering(ckpt, task="squad").answerable is None  # SQuAD 1.1: always answerable
    with pytest.raises(ValueError, match="not a question-answering task"):
        QuestionAnswering(ckpt, task="mrpc")


# --------------------------------------------------------------------------------------------
# (e) Bad files: one line, naming the file, before training
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(ft, "_run_one", fail)


def test_too_short_a_feature_is_refused_before_training(ckpt, tmp_path, no_training):
    for name in ("train-v2.0.json", "dev-v2.0.json"):
        (tmp_path / name).write_text(json.dumps(squad_json()))
    with pytest.raises(ValueError) as err:
        ft.finetune(ckpt, tasks="squad2", data_dir=str(tmp_path), max_seq_length=64, out_dir=str(tmp_path / "o"),
                    wandb=False)
    mentions(str(err.value), "squad2", "max_seq_length", 64)
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()


def test_missing_squad_file(ckpt, tmp_path, no_training):
    (tmp_path / "train-v1.1.json").write_text(json.dumps(squad_json("v1.1")))
    with pytest.raises(FileNotFoundError) as err:
        ft.finetune(ckpt, tasks="squad", data_dir=str(tmp_path), out_dir=str(tmp_path / "o"), wandb=False)
    assert "\n" not in str(err.value)
    mentions(str(err.value), str(tmp_path / "dev-v1.1.json"), "validation")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, words", [
    ("{not json", ["not a JSON file"]),
    (json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}), ["'context'"]),
    (json.dumps({"data": [{"paragraphs": [{"context": "short", "qas": [
        {"id": "x1", "question": "q?", "answers": [{"text": "longer answer", "answer_start": 2}]}]}]}]}),
     ["'x1'", "outside"]),
    (json.dumps({"data": [{"paragraphs": [{"context": "short", "qas": [
        {"id": "x2", "question": "q?", "answers": []}]}]}]}), ["'x2'", "squad2"]),
])
def test_bad_squad_file(ckpt, tmp_path, no_training, content, words):
    (tmp_path / "train-v1.1.json").write_text(content)
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json("v1.1")))
    with pytest.raises(ValueError) as err:
        ft.finetune(ckpt, tasks="squad", data_dir=str(tmp_path), out_dir=str(tmp_path / "o"), wandb=False)
    assert "\n" not in str(err.value) and str(tmp_path / "train-v1.1.json") in str(err.value)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "o").exists()


def test_hub_unreachable_says_to_use_data_dir(ckpt, tmp_path, no_training, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError) as err:
        ft.finetune(ckpt, tasks="squad2", out_dir=str(tmp_path / "o"), wandb=False)
    assert "\n" not in str(err.value)
    mentions(str(err.value), "rajpurkar/squad_v2", "--data_dir", "train-v2.0.json")


def test_compare_checks_squad_files_before_pre_training(tmp_path):
    from experiments.comparison.compare import check_finetune
    from experiments.errors import UsageError

    (tmp_path / "train-v2.0.json").write_text(json.dumps(squad_json()))
    with pytest.raises(UsageError) as err:
        check_finetune({"tasks": ["squad2"], "seeds": 1, "data_dir": str(tmp_path)})
    mentions(str(err.value), "--finetune.tasks", "squad2", str(tmp_path / "dev-v2.0.json"))
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(squad_json()))
    check_finetune({"tasks": ["squad2"], "seeds": 1, "data_dir": str(tmp_path)})


def test_model_card_lists_squad_as_question_answering():
    from experiments.run.model_card import eval_results

    record = {"downstream": {"tasks": {"squad2": {"metric": "f1", "median": 81.25, "seeds": 3},
                                       "mrpc": {"metric": "accuracy", "median": 80.0, "seeds": 3}}}}
    squad, mrpc = eval_results(record)
    assert (squad.task_type, squad.dataset_type, squad.dataset_name) == ("question-answering", "rajpurkar/squad_v2",
                                                                          "SQuAD 2.0")
    assert squad.metric_value == 81.25 and squad.metric_type == "f1" and squad.dataset_split == "validation"
    assert (mrpc.task_type, mrpc.dataset_type) == ("text-classification", "nyu-mll/glue")
