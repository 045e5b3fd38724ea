"""SQuAD 1.1 and 2.0 for extractive question answering: the data, its features, and post-processing to answers.

The recipe is the official ELECTRA code's (google-research/electra: ``configure_finetuning.py`` and
``finetune/qa/qa_tasks.py``, ``qa_metrics.py``, after BERT's ``run_squad.py``):

- question (at most ``max_query_length`` 64 tokens) and context as a pair, the context cut into windows of
  at most ``max_seq_length`` tokens in all whose starts are ``doc_stride`` 128 context tokens apart (the
  official meaning of doc_stride: the step between windows, not their overlap as in Hugging Face's
  ``stride``). Each window is one *feature*;
- a training feature's target is the answer's first and last token when the whole answer lies inside its
  window, else (and for an unanswerable SQuAD 2.0 question) the [CLS] position 0 for both;
- at evaluation, per question over all its features: the ``n_best_size`` 20 best start and end positions of
  each feature, keeping spans inside the context, not longer than ``max_answer_length`` 30 tokens, ending
  after they start and starting at a token whose window is its "max context" one (the window where it has
  the most context on its nearer side); the best ``start + end`` logit sum wins, its text cut from the
  context by the tokens' character offsets. SQuAD 2.0: the answer is ``""`` when the question's no-answer score
  exceeds a threshold: the smallest answerability logit over its features (the official answerability
  classifier, threshold -2.75), or null score - best span score with the null score the smallest
  ``start[0] + end[0]`` over its features (BERT's, threshold 0).

``max_seq_length`` defaults to 512, the official SQuAD value, and is cut to the encoder's position
embeddings when it has fewer (with a warning), as GLUE's is in :mod:`downstream.data`.

Data: the official JSON files (``train-v1.1.json``/``dev-v1.1.json``, ``train-v2.0.json``/``dev-v2.0.json``)
under a local directory, or ``rajpurkar/squad`` / ``rajpurkar/squad_v2`` from the Hugging Face hub.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from downstream.squad_metrics import squad_scores
from downstream.tasks import TaskSpec, get_task

# The official file names per task and split, then the generic ones (in data_dir/<task>/).
OFFICIAL_FILES = {"squad": {"train": "train-v1.1.json", "validation": "dev-v1.1.json"},
                  "squad2": {"train": "train-v2.0.json", "validation": "dev-v2.0.json"}}
GENERIC_FILES = {"train": ("train.json",), "validation": ("dev.json", "validation.json")}
HUB_DATASETS = {"squad": "rajpurkar/squad", "squad2": "rajpurkar/squad_v2"}


# --------------------------------------------------------------------------------------------
# Raw data: one record per question
# --------------------------------------------------------------------------------------------


def find_squad_files(spec: TaskSpec, data_dir: str | Path) -> dict[str, Path]:
    """The train and dev files of a SQuAD task under ``data_dir``: the official names in ``data_dir`` or
    ``data_dir/<task>``, else ``train.json`` and ``dev.json``/``validation.json`` in ``data_dir/<task>``.
    A missing one raises a FileNotFoundError naming the paths looked at."""
    root = Path(data_dir).expanduser()
    found: dict[str, Path] = {}
    for split, official in OFFICIAL_FILES[spec.name].items():
        candidates = [root / official, root / spec.name / official, *(root / spec.name / g for g in GENERIC_FILES[split])]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            raise FileNotFoundError(f"{spec.name}: no {split} file in {root} (looked for "
                                    f"{', '.join(str(p) for p in candidates)})")
        found[split] = hit
    return found


def read_squad_json(path: str | Path, spec: TaskSpec, split: str = "train") -> list[dict[str, Any]]:
    """The questions of an official SQuAD JSON file as records ``id``, ``question``, ``context``, ``answers``
    (``{"text": [...], "answer_start": [...]}``; empty for an unanswerable question).

    Raises a one-line ValueError naming the file on anything that is not SQuAD: bad JSON, a missing field, an
    answer that starts outside its context, or (SQuAD 1.1 training) a question without an answer.
    """
    try:
        articles = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
        paragraphs = [(p["context"], p["qas"]) for article in articles for p in article["paragraphs"]]
        records = [_record(qa, context) for context, qas in paragraphs for qa in qas]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON file ({err.msg} at line {err.lineno})") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not in SQuAD format (missing or malformed {err}); expected "
                         '{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}') from None
    if not records:
        raise ValueError(f"{path}: no question in the file")
    for rec in records:
        _check_record(rec, path, spec, split)
    return records


def _record(qa: dict, context: str) -> dict[str, Any]:
    answers = [] if qa.get("is_impossible") else qa["answers"]
    return {"id": str(qa["id"]), "question": qa["question"], "context": context,
            "answers": {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}}


def _check_record(rec: dict, path: str | Path, spec: TaskSpec, split: str) -> None:
    if not isinstance(rec["question"], str) or not isinstance(rec["context"], str):
        raise ValueError(f"{path}: question {rec['id']!r} has a question or context that is not text")
    for text, start in zip(rec["answers"]["text"], rec["answers"]["answer_start"]):
        if not 0 <= start <= len(rec["context"]) - len(text):
            raise ValueError(f"{path}: question {rec['id']!r}: answer {text!r} at character {start} lies outside "
                             f"its context of {len(rec['context'])} characters")
    if spec.name == "squad" and split == "train" and not rec["answers"]["text"]:
        raise ValueError(f"{path}: question {rec['id']!r} has no answer; SQuAD 1.1 has no unanswerable "
                         "questions (use task squad2)")


def load_squad(spec: TaskSpec, data_dir: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``train`` and ``validation`` records (:func:`read_squad_json`) from ``data_dir``, or from the hub without it
    (or its cache; offline and not cached: a one-line ValueError saying to pass ``--data_dir``)."""
    if data_dir:
        return {split: read_squad_json(path, spec, split) for split, path in find_squad_files(spec, data_dir).items()}
    import datasets  # the hub's copy: same columns as the records (id, title, context, question, answers)

    try:
        hub = datasets.load_dataset(HUB_DATASETS[spec.name])
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        why = (str(err).strip().splitlines() or ["?"])[0]
        raise ValueError(f"{spec.name} could not be loaded from the Hugging Face hub ({HUB_DATASETS[spec.name]}): {why}; "
                         f"pass the official JSON files with --data_dir DIR ({', '.join(OFFICIAL_FILES[spec.name].values())})"
                         ) from None
    return {split: [{k: row[k] for k in ("id", "question", "context", "answers")} for row in hub[split]]
            for split in ("train", "validation")}


# --------------------------------------------------------------------------------------------
# Features: question + one window of the context
# --------------------------------------------------------------------------------------------


class PairTemplate:
    """Where a fast tokenizer puts its special tokens around a (question, context) pair, read off one encoding
    (``[CLS] q [SEP] c [SEP]`` for BERT, ELECTRA and DeBERTa), so windows can be built from token ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"SQuAD needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not one")
        enc = tokenizer("question", "context", return_token_type_ids=True)
        seq, ids = enc.sequence_ids(), enc["input_ids"]
        types = enc.get("token_type_ids") or [0] * len(ids)
        q = [i for i, s in enumerate(seq) if s == 0]
        c = [i for i, s in enumerate(seq) if s == 1]
        self.prefix, self.middle, self.suffix = ids[:q[0]], ids[q[-1] + 1:c[0]], ids[c[-1] + 1:]
        self.question_type, self.context_type = types[q[0]], types[c[0]]
        self.types = (types[:q[0]], types[q[-1] + 1:c[0]], types[c[-1] + 1:])
        self.num_special = len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, question: list[int], window: list[int]) -> tuple[list[int], list[int], int]:
        """Input ids, token types and the position of the window's first token."""
        ids = [*self.prefix, *question, *self.middle, *window, *self.suffix]
        pre, mid, suf = self.types
        types = [*pre, *[self.question_type] * len(question), *mid, *[self.context_type] * len(window), *suf]
        return ids, types, len(self.prefix) + len(question) + len(self.middle)


def window_starts(n_tokens: int, max_window: int, doc_stride: int) -> list[int]:
    """First context token of each window (BERT's ``doc_spans``): windows of at most ``max_window`` tokens,
    ``doc_stride`` apart (never more than a window, so no token is skipped), the last reaching the end."""
    starts, start = [0], 0
    while start + max_window < n_tokens:
        start += min(doc_stride, max_window)
        starts.append(start)
    return starts


def max_context(starts: list[int], n_tokens: int, max_window: int) -> np.ndarray:
    """``(windows, n_tokens)`` bool: whether each window is a token's "max context" one (BERT's
    ``_check_is_max_context``: the window where ``min(left, right context) + 0.01 * window length`` is largest)."""
    pos = np.arange(n_tokens)
    scores = np.full((len(starts), n_tokens), -np.inf)
    for w, start in enumerate(starts):
        length = min(max_window, n_tokens - start)
        inside = (pos >= start) & (pos < start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        scores[w, inside] = score[inside]
    return scores.argmax(axis=0)[None, :] == np.arange(len(starts))[:, None]


def answer_token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int]:
    """First and last context token overlapping characters ``[char_start, char_end)``; ``offsets`` ``(n, 2)``."""
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))  # first token ending after the start
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1  # last token starting before the end
    return first, last


def build_features(
    tokenizer: PreTrainedTokenizerBase, records: list[dict[str, Any]], max_seq_length: int, doc_stride: int = 128,
    max_query_length: int = 64, with_types: bool = True,
) -> dict[str, list]:
    """Features of ``records`` as columns: ``input_ids``, ``token_type_ids`` (when ``with_types``),
    ``start_positions``/``end_positions`` (the answer's tokens, or 0 = [CLS]), ``is_impossible`` (1 when the
    question has no answer: the answerability classifier's label, per question as in the official code,
    whether or not the window holds the answer), and for post-processing
    ``example_index``, ``context_start`` (position of the window's first token), ``window_start`` and
    ``window_length`` (in context tokens) and ``max_context`` (per window token). Also ``offsets``: per record,
    the character span of each context token."""
    template = PairTemplate(tokenizer)
    max_window = max_seq_length - template.num_special - max_query_length
    if max_window < 1:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for the context after a question of up to "
                         f"{max_query_length} tokens and {template.num_special} special tokens")
    questions = tokenizer([r["question"] for r in records], add_special_tokens=False, truncation=True,
                          max_length=max_query_length)["input_ids"]
    contexts = tokenizer([r["context"] for r in records], add_special_tokens=False, return_offsets_mapping=True)
    cols: dict[str, list] = {k: [] for k in ("input_ids", "token_type_ids", "start_positions", "end_positions",
                                             "is_impossible", "example_index", "context_start", "window_start", "window_length",
                                             "max_context", "offsets")}
    for i, rec in enumerate(records):
        ctx, offsets = contexts["input_ids"][i], np.asarray(contexts["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        room = max_seq_length - template.num_special - len(questions[i])  # the question may be shorter than 64
        starts = window_starts(len(ctx), room, doc_stride)
        best = max_context(starts, len(ctx), room)
        answer = _first_answer_tokens(rec, offsets)
        cols["offsets"].append(offsets)
        for w, start in enumerate(starts):
            window = ctx[start:start + room]
            ids, types, first = template.build(questions[i], window)
            inside = answer is not None and answer[0] >= start and answer[1] < start + len(window)
            # numpy rows: SQuAD's ~90k training features as Python ints would take gigabytes
            cols["input_ids"].append(np.asarray(ids, dtype=np.int32))
            cols["token_type_ids"].append(np.asarray(types, dtype=np.int8))
            cols["start_positions"].append(first + answer[0] - start if inside else 0)
            cols["end_positions"].append(first + answer[1] - start if inside else 0)
            cols["is_impossible"].append(int(not rec["answers"]["text"]))  # the question's, as the official code's
            for key, value in (("example_index", i), ("context_start", first), ("window_start", start),
                               ("window_length", len(window)), ("max_context", best[w, start:start + len(window)])):
                cols[key].append(value)
    if not with_types:
        del cols["token_type_ids"]
    return cols


def _first_answer_tokens(rec: dict[str, Any], offsets: np.ndarray) -> tuple[int, int] | None:
    """Token span of a record's first answer (the one trained on), None when it has none or no token covers it."""
    answers = rec["answers"]
    if not answers["text"] or len(offsets) == 0:
        return None
    start = answers["answer_start"][0]
    first, last = answer_token_span(offsets, start, start + len(answers["text"][0]))
    return (first, last) if first <= last else None


# --------------------------------------------------------------------------------------------
# Post-processing: logits -> one answer per question
# --------------------------------------------------------------------------------------------


def feature_candidates(
    start: np.ndarray, end: np.ndarray, context_start: int, max_context_mask: np.ndarray, n_best_size: int,
    max_answer_length: int,
) -> tuple[float, int, int] | None:
    """The best valid span of one feature: ``(start + end logit, first, last)`` in window tokens, or None.

    ``start``/``end`` ``(T,)``: the feature's logits over its whole sequence (padding excluded by the caller). The
    ``n_best_size`` best start and end positions are taken over the whole sequence, as the official code does;
    pairs outside the window, ending before they start, longer than ``max_answer_length`` tokens or starting at a
    token that is not in its max-context window are dropped (``max_context_mask`` ``(W,)``: per window token).
    """
    if len(max_context_mask) == 0:  # an empty context
        return None
    n_best = min(n_best_size, len(start))
    starts = np.argsort(-start, kind="stable")[:n_best] - context_start  # window token indices
    ends = np.argsort(-end, kind="stable")[:n_best] - context_start
    window = len(max_context_mask)
    s, e = starts[:, None], ends[None, :]  # (n_best, 1), (1, n_best)
    valid = (s >= 0) & (s < window) & (e >= 0) & (e < window) & (e >= s) & (e - s + 1 <= max_answer_length)
    valid &= max_context_mask[np.clip(s, 0, window - 1)]
    if not valid.any():
        return None
    scores = np.where(valid, start[s + context_start] + end[e + context_start], -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[i, j]), int(starts[i]), int(ends[j])


def postprocess(
    records: list[dict[str, Any]], features: dict[str, list], start_logits: list[np.ndarray], end_logits: list[np.ndarray],
    version_2: bool, n_best_size: int = 20, max_answer_length: int = 30, null_score_threshold: float = 0.0,
    answerable_logits: np.ndarray | None = None,
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """One answer per question from each feature's logits (``start_logits[f]``, ``end_logits[f]``: ``(T_f,)``).

    Returns ``predictions`` (id -> text, ``""`` for "no answer"), ``na_scores`` (SQuAD 2.0 only, else empty: id ->
    the no-answer score, ``""`` predicted when it exceeds ``null_score_threshold``) and ``answered`` (id -> the best
    span's text whatever the no-answer score). The no-answer score is null score - best span score, the null score
    the smallest ``start[0] + end[0]`` over the question's features (BERT's); with ``answerable_logits`` (``(F,)``,
    the answerability classifier's logit of "unanswerable" per feature) it is the smallest of those logits alone
    (the official ELECTRA code's ``answerable_classifier``).
    """
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for f, example in enumerate(features["example_index"]):
        start, end = start_logits[f], end_logits[f]
        feature_null = float(start[0] + end[0]) if answerable_logits is None else float(answerable_logits[f])
        null[example] = min(null.get(example, np.inf), feature_null)
        found = feature_candidates(start, end, features["context_start"][f], np.asarray(features["max_context"][f]),
                                   n_best_size, max_answer_length)
        if found is not None and (example not in best or found[0] > best[example][0]):
            offsets, shift = features["offsets"][example], features["window_start"][f]
            char_start, char_end = offsets[shift + found[1], 0], offsets[shift + found[2], 1]
            best[example] = (found[0], records[example]["context"][char_start:char_end])
    predictions, na_scores, answered = {}, {}, {}
    for i, rec in enumerate(records):
        score, text = best.get(i, (-np.inf, ""))
        answered[rec["id"]] = text
        predictions[rec["id"]] = text
        if version_2:
            na_scores[rec["id"]] = null.get(i, np.inf) - (score if answerable_logits is None else 0.0)
            if na_scores[rec["id"]] > null_score_threshold:
                predictions[rec["id"]] = ""
    return predictions, na_scores, answered


# --------------------------------------------------------------------------------------------
# Datasets and the datamodule
# --------------------------------------------------------------------------------------------


class SquadFeatures(Dataset):
    """Features (:func:`build_features` columns) as a map-style dataset: each item holds the model inputs, the
    target positions and ``feature_index`` (its row, so predictions can be matched back to their question)."""

    INPUTS = ("input_ids", "token_type_ids", "start_positions", "end_positions", "is_impossible", "context_start",
              "window_length")

    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.keys = [k for k in self.INPUTS if k in columns]

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**{k: self.columns[k][index] for k in self.keys}, "feature_index": index}


class SquadEvalSet(SquadFeatures):
    """Dev features that know their questions: :meth:`score` turns the model's logits into the official scores."""

    def __init__(self, records: list[dict[str, Any]], columns: dict[str, list], version_2: bool):
        super().__init__(columns)
        self.records, self.version_2 = records, version_2

    def predict(self, start_logits: list[np.ndarray], end_logits: list[np.ndarray], **options: Any):
        """:func:`postprocess` of every feature's logits (index = ``feature_index``); ``options``: its settings."""
        return postprocess(self.records, self.columns, start_logits, end_logits, self.version_2, **options)

    def score(self, start_logits: list[np.ndarray], end_logits: list[np.ndarray], **options: Any) -> dict[str, float]:
        """The official scores (x100, :func:`downstream.squad_metrics.squad_scores`) of the predictions; SQuAD 2.0
        adds the HasAns/NoAns breakdowns and the best threshold's scores."""
        predictions, na_scores, answered = self.predict(start_logits, end_logits, **options)
        answers = {r["id"]: r["answers"]["text"] for r in self.records}
        return squad_scores(answers, predictions, na_scores if self.version_2 else None, answered)


class PadCollate:
    """Batches of features: token ids ``(B, T)`` padded to the batch's longest, ``attention_mask`` ``(B, T)``,
    ``answer_mask`` ``(B, T)`` (True where an answer may start or end: the context window and [CLS], the official
    code's ``answer_mask``), and the scalars (``start_positions``, ``end_positions``, ``is_impossible``,
    ``feature_index``) as ``(B,)`` tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        lengths = torch.tensor([len(item["input_ids"]) for item in items])
        batch = {"attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long()}  # (B, T)
        for key, pad in (("input_ids", self.pad_token_id), ("token_type_ids", 0)):
            if key in items[0]:
                padded = np.full((len(items), width), pad, dtype=np.int64)  # (B, T)
                for row, item in enumerate(items):
                    padded[row, :len(item[key])] = item[key]
                batch[key] = torch.from_numpy(padded)
        for key in ("start_positions", "end_positions", "is_impossible", "context_start", "window_length",
                    "feature_index"):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items])
        if "context_start" in batch:
            pos, first = torch.arange(width)[None, :], batch.pop("context_start")[:, None]  # (1, T), (B, 1)
            batch["answer_mask"] = ((pos >= first) & (pos < first + batch.pop("window_length")[:, None])) | (pos == 0)
        return batch


# (encoder, max_seq_length) pairs already warned about truncation in this process.
_TRUNCATION_WARNED: set[tuple[str, int]] = set()


class SquadDataModule(L.LightningDataModule):
    """SQuAD 1.1 (``squad``) or 2.0 (``squad2``) as features for extractive question answering.

    Training batches: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the encoder has segment
    embeddings) ``(B, T)``, ``start_positions`` and ``end_positions`` ``(B,)``. The dev loader's dataset is a
    :class:`SquadEvalSet`, whose ``score`` post-processes the logits into the official scores.
    """

    def __init__(
        self,
        encoder: str,
        task: str = "squad",
        data_dir: str | None = None,
        max_seq_length: int = 512,
        doc_stride: int = 128,
        max_query_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            encoder: Checkpoint directory (or hub name) whose tokenizer (a fast one) is used.
            task: ``squad`` (SQuAD 1.1) or ``squad2`` (SQuAD 2.0, with unanswerable questions).
            data_dir: Directory with the official JSON files (``train-v1.1.json``, ``dev-v1.1.json``; ``train-v2.0.json``,
                ``dev-v2.0.json``), in it or in ``data_dir/<task>/``, or ``data_dir/<task>/train.json`` and ``dev.json``
                (or ``validation.json``). None loads ``rajpurkar/squad`` / ``rajpurkar/squad_v2`` from the hub.
            max_seq_length: Tokens per feature, question and context window together; the official ELECTRA value
                for SQuAD, 512, by default; cut to the encoder's position embeddings when it has fewer.
            doc_stride: Context tokens between the starts of a long context's windows (official: 128).
            max_query_length: Questions are cut to this many tokens (official: 64).
            batch_size: Training batch size (per device), in features.
            eval_batch_size: Dev batch size; defaults to ``batch_size``.
            max_train_examples: Keep only this many training questions (a fixed random subset); for quick runs.
            max_eval_examples: Keep only this many dev questions (a fixed random subset).
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task)
        if self.spec.group != "squad":
            raise ValueError(f"task {task!r} is not a SQuAD task (squad, squad2)")
        for name, value in (("max_seq_length", max_seq_length), ("doc_stride", doc_stride),
                            ("max_query_length", max_query_length), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.encoder, self.data_dir = encoder, data_dir
        self.max_seq_length, self.doc_stride, self.max_query_length = max_seq_length, doc_stride, max_query_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.max_train_examples, self.max_eval_examples, self.num_workers = max_train_examples, max_eval_examples, num_workers
        self._raw: dict[str, list[dict[str, Any]]] | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, SquadFeatures] = {}

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.encoder)
        return self._tokenizer

    def load_raw(self) -> dict[str, list[dict[str, Any]]]:
        """Load and check the questions of both splits (:func:`load_squad`) and that a feature of ``max_seq_length``
        holds a question of ``max_query_length`` and some context; cheap to call again."""
        if self._raw is None:
            length, _ = self._sequence_settings()
            special = PairTemplate(self.tokenizer).num_special
            if length - special - self.max_query_length < 1:
                raise ValueError(f"{self.spec.name}: max_seq_length {length} leaves no room for the context after a "
                                 f"question of up to {self.max_query_length} tokens and {special} special tokens")
            self._raw = load_squad(self.spec, self.data_dir)
        return self._raw

    def prepare_data(self) -> None:
        self.load_raw()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # features are built once
            return
        raw, length, with_types = self.load_raw(), *self._sequence_settings()
        for split in ("train", "validation"):
            records = _subset(raw[split], self.max_train_examples if split == "train" else self.max_eval_examples)
            columns = build_features(self.tokenizer, records, length, self.doc_stride, self.max_query_length, with_types)
            self.datasets[split] = SquadFeatures(columns) if split == "train" else \
                SquadEvalSet(records, columns, version_2=self.spec.name == "squad2")

    def _sequence_settings(self) -> tuple[int, bool]:
        """The feature length (cut to the encoder's positions) and whether it takes token types."""
        config = AutoConfig.from_pretrained(self.encoder)
        length, positions = self.max_seq_length, getattr(config, "max_position_embeddings", None)
        if positions is not None and positions < length:
            if (self.encoder, length) not in _TRUNCATION_WARNED:
                _TRUNCATION_WARNED.add((self.encoder, length))
                warnings.warn(f"max_seq_length {length} > the encoder's {positions} positions; SQuAD features of {positions}")
            length = positions
        return length, getattr(config, "type_vocab_size", 1) > 1

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, collate_fn=PadCollate(self.tokenizer.pad_token_id or 0),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)


def _subset(records: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """A fixed random subset of ``limit`` records (independent of the fine-tuning seed), in file order."""
    if limit is None or limit >= len(records):
        return records
    keep = np.sort(np.random.default_rng(0).permutation(len(records))[:limit])
    return [records[i] for i in keep]
