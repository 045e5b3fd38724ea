"""The official SQuAD scores, restated: exact match and token F1 (v1.1 and v2.0), with v2.0's breakdowns.

The rules are those of the official evaluation scripts (``evaluate-v1.1.py`` and ``evaluate-v2.0.py``
of rajpurkar.github.io/SQuAD-explorer, also shipped as ``finetune/qa/squad_official_eval*.py`` in
google-research/electra), written anew here:

- an answer is normalised: lower case, punctuation removed, the articles ``a``/``an``/``the`` removed,
  whitespace collapsed to single spaces;
- exact match: the normalised prediction equals a normalised gold answer; F1: the harmonic mean of
  precision and recall of the bag of normalised tokens (shared tokens counted with multiplicity);
  when either side has no token, F1 is 1 if both have none, else 0; each question scores its best
  gold answer;
- SQuAD 2.0: gold answers that normalise to nothing are dropped, and a question left with none (an
  unanswerable one) has the gold ``[""]``: predicting ``""`` scores 1, anything else 0;
- scores are percentages (x100) over the questions; ``HasAns_*`` and ``NoAns_*`` restrict them to the
  answerable and unanswerable questions;
- ``best_exact`` / ``best_f1``: the score at the best "no answer" threshold on this very set (the
  official v2 script's, given each question's no-answer score), with the thresholds that reach them.

A question without a prediction scores 0 (the v1.1 script's rule; v2.0's skips it with a message).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised answers; 1.0 when both are empty, 0.0 when only one is."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Iterable[str]) -> list[str]:
    """The gold answers a question is scored against: those with text left after normalising, or ``[""]``."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def question_scores(prediction: str, answers: Iterable[str]) -> tuple[float, float]:
    """(exact, f1) of one prediction, each the best over the question's gold answers (:func:`gold_answers`)."""
    golds = gold_answers(answers)
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def dataset_answers(dataset: Mapping | list) -> dict[str, list[str]]:
    """Question id -> gold answer texts, from an official SQuAD JSON (its ``data`` list, or the whole file)."""
    articles = dataset["data"] if isinstance(dataset, Mapping) else dataset
    return {qa["id"]: [a["text"] for a in qa.get("answers", [])]
            for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]}


def squad_scores(
    answers: Mapping[str, list[str]],
    predictions: Mapping[str, str],
    na_scores: Mapping[str, float] | None = None,
    answered: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """The official scores (x100) of ``predictions`` (question id -> text) against ``answers`` (id -> gold texts).

    Returns ``exact``, ``f1`` and ``total``; with an unanswerable question among ``answers`` also ``HasAns_*`` and
    ``NoAns_*`` (each ``exact``, ``f1``, ``total``). With ``na_scores`` (id -> no-answer score, higher: more likely
    unanswerable) and ``answered`` (id -> the best non-empty answer, the prediction were the question answered;
    default ``predictions``), also ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``
    (:func:`best_threshold`).
    """
    if not answers:
        raise ValueError("no question to score")
    per_question = {qid: question_scores(predictions.get(qid, ""), golds) if qid in predictions else (0.0, 0.0)
                    for qid, golds in answers.items()}
    has_answer = {qid: gold_answers(golds) != [""] for qid, golds in answers.items()}
    out = _mean_scores(per_question, list(answers))
    if not all(has_answer.values()):
        for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
            qids = [q for q in answers if has_answer[q] is wanted]
            if qids:
                out.update({prefix + k: v for k, v in _mean_scores(per_question, qids).items()})
    if na_scores is not None:
        answered = predictions if answered is None else answered
        for i, name in enumerate(("exact", "f1")):
            raw = {q: question_scores(answered.get(q, ""), golds)[i] for q, golds in answers.items()}
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best_threshold(raw, na_scores, has_answer, answered)
    return out


def _mean_scores(per_question: Mapping[str, tuple[float, float]], qids: list[str]) -> dict[str, float]:
    n = len(qids)
    return {"exact": 100.0 * sum(per_question[q][0] for q in qids) / n,
            "f1": 100.0 * sum(per_question[q][1] for q in qids) / n, "total": float(n)}


def best_threshold(
    raw: Mapping[str, float], na_scores: Mapping[str, float], has_answer: Mapping[str, bool], answered: Mapping[str, str],
) -> tuple[float, float]:
    """The best score (x100) over "no answer" thresholds, and that threshold (the official v2 ``find_best_thresh``).

    A question is answered (with ``answered[q]``, scoring ``raw[q]``) when its no-answer score is at most the
    threshold, and predicted unanswerable otherwise (1 when it has no answer, 0 when it has one). Start with every
    question predicted unanswerable (threshold below every score) and answer them one by one in increasing order
    of no-answer score; the best running total wins, the earliest on ties.
    """
    total = sum(1.0 for q in raw if not has_answer[q])  # all predicted unanswerable
    best, best_thresh = total, 0.0
    for qid in sorted(raw, key=lambda q: na_scores.get(q, 0.0)):
        if has_answer[qid]:
            total += raw[qid]
        elif answered.get(qid, ""):
            total -= 1.0  # an unanswerable question now gets an answer
        if total > best:
            best, best_thresh = total, float(na_scores.get(qid, 0.0))
    return 100.0 * best / len(raw), best_thresh
