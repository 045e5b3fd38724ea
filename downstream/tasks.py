"""What each downstream task is: GLUE's nine and isoflop's offline ones, as plain data.

This module is pure Python on purpose: the command line, the comparison driver and the docs need
task names, metrics and epochs without paying for ``datasets``, ``torch`` or ``transformers``.

The GLUE tasks, their columns and metrics follow the GLUE benchmark (https://gluebenchmark.com) as
the ELECTRA paper (Clark et al. 2020) reports it::

    | task  | input                    | labels | headline metric (others logged)  | epochs |
    |-------|--------------------------|--------|----------------------------------|--------|
    | cola  | sentence                 | 2      | Matthews correlation             | 3      |
    | sst2  | sentence                 | 2      | accuracy                         | 3      |
    | mrpc  | sentence1, sentence2     | 2      | accuracy (F1)                    | 3      |
    | stsb  | sentence1, sentence2     | 0..5   | Spearman (Pearson), MSE on y / 5 | 10     |
    | qqp   | question1, question2     | 2      | accuracy (F1)                    | 3      |
    | mnli  | premise, hypothesis      | 3      | matched accuracy (mismatched)    | 3      |
    | qnli  | question, sentence       | 2      | accuracy                         | 3      |
    | rte   | sentence1, sentence2     | 2      | accuracy                         | 10     |
    | wnli  | sentence1, sentence2     | 2      | accuracy (not in the average)    | 3      |

The offline tasks (``docpkg``, its linear probe ``docpkg-probe``, ``docpair``) are built from the
embedded corpus by :mod:`downstream.offline`; their specs live here so that naming a task never
builds anything. ``offline`` names the suite that measures pre-training (:data:`OFFLINE_SUITE`).
SQuAD 1.1 and 2.0 (``squad``, ``squad2``: group ``squad``) are question answering (:mod:`downstream.qa`).
The known-answer tasks on the synthetic sources (``synth-topic``, ``synth-state`` and their probes) are
built by :mod:`downstream.synthetic_tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """What a sequence-classification task is: its inputs, labels, metrics and recipe.

    Attributes:
        name: Task name as used on the command line (``mrpc``).
        text_columns: One column (single-sentence task) or two (sentence-pair task).
        num_labels: Number of classes; 1 means regression (STS-B).
        metrics: Metric names logged as ``val/<name>``; the first is the headline metric.
        epochs: Fine-tuning epochs of ELECTRA's recipe.
        label_names: Class names, index = label id (lets local files spell labels as text).
        val_splits: Dev splits; the first is the headline (MNLI: matched, then mismatched).
        both_orders: Whether ``both_orders`` augmentation applies (MRPC, STS-B: symmetric pairs).
        label_scale: Multiplier on the label (STS-B's 0..5 similarity becomes a 0..1 target).
        test_has_labels: Whether the ``test`` split is labelled (not on GLUE; yes offline).
        group: ``glue`` or ``offline``: which average the task belongs to; ``own``: a user's directory (:mod:`downstream.own`).
        data: The dataset the task reads (default: its own name); a probe reads another task's.
        probe: A linear probe: the encoder's weights stay frozen (in eval mode, no dropout) and only
            the classification head on its [CLS] vector trains, so the score says what pre-training
            put into the representation, not what fine-tuning can learn on top of any initialisation.
        learning_rate: The task's own peak learning rate, over any fine-tuning rate given (a probe's
            head trains alone, from scratch, and needs a larger step than a whole encoder).
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    epochs: int = 3
    label_names: tuple[str, ...] = ()
    val_splits: tuple[str, ...] = ("validation",)
    both_orders: bool = False
    label_scale: float = 1.0
    test_has_labels: bool = False
    group: str = "glue"
    data: str = ""
    probe: bool = False
    learning_rate: float | None = None

    @property
    def dataset(self) -> str:
        """The name of the data the task reads."""
        return self.data or self.name

    @property
    def metric(self) -> str:
        """The headline metric (what the GLUE average uses)."""
        return self.metrics[0]

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def metric_suffix(self, val_index: int) -> str:
        """Key suffix of a dev split's metrics: "" for the headline split, ``_mismatched`` for MNLI's second."""
        if val_index == 0:
            return ""
        return "_" + self.val_splits[val_index].removeprefix("validation_")


_BINARY_ENTAIL = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", ("sentence",), 2, ("mcc",), label_names=("unacceptable", "acceptable")),
        TaskSpec("sst2", ("sentence",), 2, ("accuracy",), label_names=("negative", "positive")),
        TaskSpec("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"),
                 label_names=("not_equivalent", "equivalent"), both_orders=True),
        TaskSpec("stsb", ("sentence1", "sentence2"), 1, ("spearman", "pearson"), epochs=10,
                 both_orders=True, label_scale=1 / 5),
        TaskSpec("qqp", ("question1", "question2"), 2, ("accuracy", "f1"),
                 label_names=("not_duplicate", "duplicate")),
        TaskSpec("mnli", ("premise", "hypothesis"), 3, ("accuracy",),
                 label_names=("entailment", "neutral", "contradiction"),
                 val_splits=("validation_matched", "validation_mismatched")),
        TaskSpec("qnli", ("question", "sentence"), 2, ("accuracy",), label_names=_BINARY_ENTAIL),
        TaskSpec("rte", ("sentence1", "sentence2"), 2, ("accuracy",), epochs=10, label_names=_BINARY_ENTAIL),
        # WNLI's label order on the hub is the reverse of RTE's/QNLI's.
        TaskSpec("wnli", ("sentence1", "sentence2"), 2, ("accuracy",), label_names=("not_entailment", "entailment")),
    )
}

# docpkg's number of classes: the largest packages of the corpus (see downstream.offline). Part of
# the task's definition, so a change needs a new downstream.offline.OFFLINE_VERSION.
NUM_PACKAGES = 10

_OFFLINE = dict(epochs=3, test_has_labels=True, group="offline")
OFFLINE_TASKS: dict[str, TaskSpec] = {
    "docpkg": TaskSpec("docpkg", ("sentence",), NUM_PACKAGES, ("accuracy", "macro_f1"), **_OFFLINE),
    # The probe's head: 10 epochs at 3e-2 (at 2e-3 and 3 epochs a tiny encoder pre-trained for 1,500 steps
    # scored 16.2 against random init's 11.8; at 3e-2 and 10 epochs 26.2 against 11.8: rtd/downstream.rst).
    "docpkg-probe": TaskSpec("docpkg-probe", ("sentence",), NUM_PACKAGES, ("accuracy", "macro_f1"), data="docpkg",
                             probe=True, learning_rate=3e-2, **{**_OFFLINE, "epochs": 10}),
    "docpair": TaskSpec(
        "docpair", ("sentence1", "sentence2"), 2, ("accuracy", "macro_f1"), label_names=("not_next", "next"), **_OFFLINE
    ),
}

# SQuAD (Rajpurkar et al. 2016, 2018), the ELECTRA paper's second benchmark: extractive question answering,
# fine-tuned by :mod:`downstream.qa` on :mod:`downstream.squad`'s features for 2 epochs (the official
# configure_finetuning.py's for SQuAD). Headline F1: the paper reports dev EM and F1, and F1, which gives partial
# answers partial credit, varies less over seeds; EM and SQuAD 2.0's breakdowns are logged too.
_SQUAD = dict(epochs=2, group="squad", num_labels=0)  # no classes: start and end positions
_SQUAD_V2_METRICS = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact", "best_f1", "best_exact")
SQUAD_TASKS: dict[str, TaskSpec] = {
    "squad": TaskSpec("squad", ("question", "context"), metrics=("f1", "exact"), **_SQUAD),
    "squad2": TaskSpec("squad2", ("question", "context"), metrics=_SQUAD_V2_METRICS, **_SQUAD),
}

# What ``offline`` runs: the offline tasks that measure pre-training (rtd/downstream.rst, "Which offline
# tasks measure pre-training"). docpkg fine-tuned is left out: a random-initialised tiny encoder fine-tuned
# on it beats the same encoder pre-trained for CPU minutes, so it measures fine-tuning, not pre-training.
OFFLINE_SUITE = ("docpkg-probe", "docpair")

# What a results table says beside a task that no compared encoder reaches (every median within
# AT_CHANCE points of the majority-class baseline).
TASK_NOTES = {
    "docpair": "a published pre-trained 6-layer BERT-class encoder (22M parameters) fine-tuned through isoflop "
               "finetune reaches 75.0, so the task is learnable; CPU-scale pre-training does not reach it",
}


# The known-answer tasks on the synthetic sources (downstream.synthetic_tasks): drawn from the synthetic source
# the encoder was pre-trained on, scored next to chance and the exact Bayes ceiling. num_labels 0: the source's
# topics or states, known once the encoder is (SyntheticTaskDataModule, the known-answer models).
_SYNTHETIC = dict(test_has_labels=True, group="synthetic")
_PROBE = dict(probe=True, learning_rate=3e-2, **{**_SYNTHETIC, "epochs": 10})  # docpkg-probe's recipe
SYNTHETIC_TASKS: dict[str, TaskSpec] = {
    "synth-topic": TaskSpec("synth-topic", ("symbols",), 0, ("accuracy",), **_SYNTHETIC),
    "synth-topic-probe": TaskSpec("synth-topic-probe", ("symbols",), 0, ("accuracy",), data="synth-topic", **_PROBE),
    "synth-state": TaskSpec("synth-state", ("symbols",), 0, ("accuracy",), **_SYNTHETIC),
    "synth-state-probe": TaskSpec("synth-state-probe", ("symbols",), 0, ("accuracy",), data="synth-state", **_PROBE),
}


def all_tasks() -> dict[str, TaskSpec]:
    """Every task name accepted anywhere a GLUE task name is: GLUE's, the offline ones, SQuAD's, the synthetic ones."""
    return {**GLUE_TASKS, **OFFLINE_TASKS, **SQUAD_TASKS, **SYNTHETIC_TASKS}


def get_task(name: str) -> TaskSpec:
    """The spec of one task; an unknown name raises a ValueError listing the valid ones.

    A name written as a path (``data/mytask``, ``./mytask``, ``mytask/``) is a directory of the user's own
    data (:mod:`downstream.own`), checked now; its spec is then also known by the directory's name.
    """
    if _is_task_dir(name):
        return own_task(name)
    tasks = all_tasks()
    key = name.strip().lower()
    key = key if key in tasks else key.replace("-", "")  # sst-2 as sst2
    if key not in tasks:
        if name.strip() in OWN_TASKS:
            return OWN_TASKS[name.strip()]
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(tasks)} (or a directory of your own data, "
                         "written as a path: ./mytask)")
    return tasks[key]


# The user's own tasks named in this process, by directory name (the name results and logs use).
OWN_TASKS: dict[str, TaskSpec] = {}


def _is_task_dir(name: str) -> bool:
    name = str(name).strip()
    return "/" in name or "\\" in name or name.startswith((".", "~"))


def own_task(directory: str) -> TaskSpec:
    """The spec of the user's own task in ``directory`` (:mod:`downstream.own`), remembered by its name."""
    from downstream.own import own_task_fields  # pandas and datasets only when such a task is named

    spec = TaskSpec(**own_task_fields(directory))
    if spec.name.lower() in (*all_tasks(), "glue", "offline", "average"):
        raise ValueError(f"task directory {directory!r} is named like the built-in {spec.name!r}; rename the directory")
    OWN_TASKS[spec.name] = spec  # the latest directory of that name: resolve_tasks refuses two in one list
    return spec


def resolve_tasks(tasks: list[str] | str) -> list[str]:
    """Task names from ``glue``, ``offline``, a name, or a list of any of these.

    ``glue`` is every GLUE task but WNLI (name ``wnli`` to run it too), as GLUE's average leaves it
    out. A path is a directory of the user's own data (:func:`own_task`), named by the directory's name.
    Unknown names raise a ValueError that lists the valid ones.
    """
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [str(item).strip() for item in items if str(item).strip()]
    known = all_tasks()
    out: list[str] = []
    dirs: dict[str, str] = {}  # own task name -> its directory
    for name in names:
        key = name.lower()
        if key == "glue":
            expanded = [t for t in GLUE_TASKS if t != "wnli"]
        elif key == "offline":
            expanded = list(OFFLINE_SUITE)
        else:
            try:
                spec = get_task(name)
                expanded = [spec.name]
            except ValueError:
                if _is_task_dir(name):
                    raise
                raise ValueError(
                    f"unknown task {name!r}; valid: glue, offline, {', '.join(known)}"
                ) from None
        if _is_task_dir(name) and dirs.setdefault(spec.name, spec.data) != spec.data:
            raise ValueError(f"two task directories named {spec.name!r} ({dirs[spec.name]}, {spec.data}); rename one")
        out += [t for t in expanded if t not in out]
    if not out:
        raise ValueError(f"no task given; valid: glue, offline, {', '.join(known)}")
    return out
