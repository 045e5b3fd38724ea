"""Downstream evaluation: the tasks (GLUE and two offline ones), their data, and the fine-tuning model.

Every pre-trained encoder is judged here the same way, whatever objective produced it:
:mod:`downstream.tasks` says what each task is (pure Python), :mod:`downstream.glue` and
:mod:`downstream.offline` load the raw splits (:mod:`downstream.own` a user's own task from a directory,
:mod:`downstream.submission` the test splits and GLUE's submission format), :mod:`downstream.data` tokenises and batches them,
:mod:`downstream.classifier` fine-tunes the encoder. SQuAD (question answering) has its own data and
model: :mod:`downstream.squad`, :mod:`downstream.qa`, and its official scores in :mod:`downstream.squad_metrics`. ``isoflop finetune``
(:mod:`experiments.finetuning.finetune`) runs them over tasks and seeds.

The names below are loaded on first use, so that ``import downstream.tasks`` (task names on a
command line) does not pull in torch, transformers or datasets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from downstream.classifier import SequenceClassification
    from downstream.data import TaskDataModule
    from downstream.offline import load_offline_task
    from downstream.qa import QuestionAnswering
    from downstream.squad import SquadDataModule
    from downstream.tasks import TaskSpec, all_tasks, get_task, resolve_tasks

# Public name -> the module that defines it.
_EXPORTS = {
    "TaskSpec": "downstream.tasks",
    "get_task": "downstream.tasks",
    "all_tasks": "downstream.tasks",
    "resolve_tasks": "downstream.tasks",
    "TaskDataModule": "downstream.data",
    "SequenceClassification": "downstream.classifier",
    "load_offline_task": "downstream.offline",
    "SquadDataModule": "downstream.squad",
    "QuestionAnswering": "downstream.qa",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
