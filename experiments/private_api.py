"""Every private Lightning (and torch) name isoflop still uses, each behind one small function here, with
what it does, why no public API does it, and the versions it was checked on. Code elsewhere calls these
functions, never the private names; when a version changes one of them, this is the one file to fix.

The functions:

- :func:`drop_wandb_anonymous`: removes the ``anonymous`` argument ``WandbLogger`` always passes to
  ``wandb.init`` (its private ``_wandb_init``), about which wandb warns on every run.
- :func:`launched_processes`: the processes Lightning's subprocess launcher started (its ``procs``), so that a
  signal reaches every rank of a run.
- :func:`replace_child_observer`: puts isoflop's watch over those processes in place of Lightning's, which
  kills the whole job, this process included, as soon as one of them exits with a non-zero code.
- :func:`jsonargparse_error`: the option and the reason of a jsonargparse parse error, read from its message
  text (jsonargparse gives no structured error).
- :class:`PlainHelpFormatter`: jsonargparse's help formatter with Lightning's reST markup and its own
  "Default: ..." sentences taken out of each option's help (argparse's formatter classes are an
  implementation detail of argparse).

Kept elsewhere, for layering (objectives import nothing above them):

- ``objectives.optim.unscale_before_step``: clears torch's private ``_step_supports_amp_scaling`` flag on a
  fused AdamW, so that Lightning unscales and clips its gradients under mixed precision.
- ``objectives.optim.skip_step_if``: sets the ``found_inf`` attribute torch's fused AdamW reads (as the
  GradScaler does), so that a non-finite step is skipped on the device, without a host read-back.

Replaced by public calls (for the record): Lightning's logger connector's ``should_update_logs``
(``objectives.base.logs_this_step``, from ``log_every_n_steps``, ``global_step`` and ``should_stop``);
Lightning's ``ExperimentWriter`` and ``WandbLogger._experiment`` (``experiments.run.loggers``: a CSV
logger on the public ``Logger`` base, ``wandb.run`` and ``wandb.finish``); Lightning's private
consolidation of sharded checkpoints (``experiments.run.checkpoints.consolidate_sharded``: torch's
``dcp_to_torch_save``); ``lightning.pytorch.core.saving._load_state`` (``experiments.run.export``:
the module's constructor, ``configure_model``, ``on_load_checkpoint``, ``load_state_dict``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Any

from jsonargparse import DefaultHelpFormatter

from experiments.errors import one_line


def drop_wandb_anonymous(logger: Any) -> None:
    """Remove ``anonymous`` from the arguments a ``WandbLogger`` will give ``wandb.init``.

    ``WandbLogger`` keeps those arguments in its private ``_wandb_init`` and always includes
    ``anonymous`` (None unless ``anonymous=True``). wandb deprecated the setting: any value given, None
    included, makes it print "The anonymous setting has no effect and will be removed in a future
    version." on every run, and it means to drop the argument, which would then fail. No public way
    avoids it: ``WandbLogger`` has no argument that leaves ``anonymous`` out (its keyword arguments cannot
    override a named parameter), and wandb prints the line with its own terminal printer
    (``wandb.termwarn``), not Python's ``warnings``, so ``warnings.filterwarnings`` does not reach it; the
    only public switches (``wandb.setup`` with ``silent`` or ``show_warnings`` off) silence every wandb
    warning of the process. Creating the run ourselves (``WandbLogger(experiment=...)``) would move its
    start before the Trainer knows the rank, and skip the x-axis ``WandbLogger`` defines.

    Checked on lightning 2.6.6 (the same ``_wandb_init`` and ``anonymous`` entry in 2.3 to 2.6, and on
    Lightning's main branch of July 2026) with wandb 0.31.0. A Lightning without ``_wandb_init`` is left
    alone.
    """
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict):
        init.pop("anonymous", None)


def launched_processes(launcher: Any) -> list:
    """The processes a Lightning launcher started (the other local ranks of a plain command), or ``[]``.

    Lightning's subprocess launcher (``lightning.fabric.strategies.launchers.subprocess_script``) keeps them in
    its ``procs`` attribute and has no public accessor; a signal that stops this process must reach them too,
    or they would wait for it at the next collective. Checked on lightning 2.4 to 2.6.6. A launcher without
    the attribute (torchrun, SLURM: the ranks are not this process's children) gives ``[]``.
    """
    return list(getattr(launcher, "procs", None) or [])


def replace_child_observer(start: Any) -> None:
    """Make Lightning's subprocess launchers call ``start(procs)`` where they start their own child observer.

    When a plain command starts the other local ranks (``lightning.fabric.strategies.launchers.subprocess_script``
    and its ``lightning.pytorch`` twin, which imports the same function by name), the launcher calls its private
    ``_launch_process_observer(procs)``: a thread that polls the children every 5 s and, the first time one has
    a non-zero exit code, SIGKILLs every child and this process. isoflop's ranks exit non-zero by design (1 for
    a failure, 128 + N after saving on signal N), and this process then ends by itself with its own line and
    exit code; the observer's SIGKILL raced it (the job ended with -9 and no line, or with the line of a rank
    the observer killed). No public switch turns the observer off. ``start`` (:func:`experiments.run.ranks.watch`)
    keeps what it is for, a job that cannot hang on a dead rank, without the race.

    Checked on lightning 2.6.6 (the same function, called the same way, since 2.1). A Lightning without it is
    left alone. Idempotent.
    """
    import importlib

    for name in ("lightning.fabric.strategies.launchers.subprocess_script",
                 "lightning.pytorch.strategies.launchers.subprocess_script"):
        module = importlib.import_module(name)
        if hasattr(module, "_launch_process_observer"):
            module._launch_process_observer = start


@dataclass
class JsonargparseError:
    """What a jsonargparse error message says, as fields (see :func:`jsonargparse_error`)."""

    keys: list[str]
    unknown: str | None = None  # an unrecognised argument
    class_path: str | None = None  # the class path a subclass option was given
    class_missing: bool = False  # that class path names nothing importable or no objective
    refused: str | None = None  # a setting the class does not take
    expected: list[str] = field(default_factory=list)  # the types a value should have had
    given: str | None = None  # the value given
    detail: str = ""  # the rest of the message, on one line


def jsonargparse_error(message: str) -> JsonargparseError:
    """The fields of a jsonargparse parse error, read from its message text: jsonargparse raises
    ``argparse.ArgumentError`` with a multi-line message and no structured fields, so the option and the
    reason can only be read from the text (``Parser key "x"``, ``Expected a <class 'int'>``,
    ``unrecognized arguments: ...``). Checked on jsonargparse 4.30 to 4.53.0 (tests/test_errors.py holds a
    case per field)."""
    unknown = re.match(r"unrecognized arguments: (\S+)", message)
    found = JsonargparseError(keys=re.findall(r'Parser key "([^"]+)"', message),
                              unknown=unknown.group(1) if unknown else None)
    class_path = re.search(r"Problem with given class_path '([^']+)'", message)
    if class_path:
        found.class_path = class_path.group(1)
        found.class_missing = bool(re.search(r"has no attribute|No module named|not accessible|not a subclass", message))
    refused = re.search(r"Option '([^']+)' is not accepted", message)
    found.refused = refused.group(1) if refused else None
    found.expected = list(dict.fromkeys(re.findall(r"Expected a <class '([^']+)'>", message)))
    given = re.search(r"(?:Given value|Got value): (.+)", message)
    found.given = given.group(1).strip() if given else None
    detail = [ln.strip(" -") for ln in message.splitlines()[1:] if ln.strip() and not ln.strip().startswith(
        ("Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>", "Does not validate"))]
    found.detail = one_line(" ".join(detail))
    return found


# Lightning's docstrings, shown as help, say ``Default: ``50``.`` where isoflop's default differs, and use reST
# roles a terminal shows raw.
_RST_ROLE = re.compile(r":(?:class|func|meth|paramref|attr|mod|obj):`~?(?:[\w.]+\.)?([\w]+)`")
_DOC_DEFAULT = re.compile(r"\s*Default:\s*``[^`]*``\.?")


class PlainHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter, printing each option's help in plain text: reST roles
    (``:class:`~a.b.C```) become their name, double back-quotes go, and the "Default: ..." sentences of
    Lightning's docstrings are dropped, since the default jsonargparse prints beside them is the one isoflop
    uses (they differ for ``num_sanity_val_steps`` and ``enable_model_summary``).

    It overrides ``add_argument``, which argparse calls once per option as it formats the help: argparse
    documents its formatter classes only as names to pass, their methods being an implementation detail, and
    jsonargparse has no hook of its own for an option's help text. Checked on Python 3.10 to 3.13 and
    jsonargparse 4.30 to 4.53.0.
    """

    def add_argument(self, action):
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = _DOC_DEFAULT.sub("", _RST_ROLE.sub(r"\1", action.help)).replace("``", "")
        super().add_argument(action)
