"""The configuration of a pre-training run: its parser, and the one way to build one.

A configuration is what ``isoflop pretrain`` parses: an objective (``model``, chosen by class path),
the data (``data``), Lightning's ``trainer`` settings and isoflop's own run options (run directory,
wandb, FLOPs budget, checkpointing). :func:`parse` builds it from command-line arguments, a preset
name or a dict; ``isoflop compare`` and ``isoflop sweep`` build their runs' configurations with it too.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
from typing import Any

from jsonargparse import ActionConfigFile, Namespace

from experiments import presets
from experiments.errors import UsageError, one_line

DEFAULT_PRESET = "default"
# Lightning's defaults that isoflop changes: its own summary replaces the layer table; the validation
# before the first step (logged at step 0) makes the sanity check redundant.
TRAINER_DEFAULTS = {"enable_model_summary": False, "num_sanity_val_steps": 0}


class PresetFile(ActionConfigFile):
    """``--config``: a YAML file or the name of a shipped preset (``electra-small``)."""

    def __call__(self, parser, cfg, values, option_string=None):
        try:
            path = str(presets.find(values))
            presets.load(path)  # bad YAML fails here, naming the file and line
        except ValueError as err:
            parser.error(str(err))
        super().__call__(parser, cfg, path, option_string)


def build_parser(prog: str = "isoflop pretrain", run_options: tuple[str, ...] | None = None):
    """The parser of a pre-training configuration: ``trainer``, ``model`` (any objective, by class
    path), ``data``, and isoflop's run options (all of ``RUN_OPTIONS``, or the ones named). The data's
    ``vocab_size`` is linked into the model's, so it is set once."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser

    from datamodules.pretraining import PretrainingDataModule
    from objectives.base import PretrainingObjective

    parser = LightningArgumentParser(prog=prog, description="Pre-train one objective.", default_env=False,
                                     exit_on_error=False)  # errors become one line (parse_args below)
    parser.add_argument("--config", action=PresetFile, help="A preset name (experiments/configs) or a YAML file.")
    parser.add_argument("--seed_everything", type=int, default=0, help="Seed of every RNG (torch, numpy, python).")
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.set_defaults({f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()})
    parser.add_lightning_class_args(PretrainingObjective, "model", subclass_mode=True)
    parser.add_lightning_class_args(PretrainingDataModule, "data")
    parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="parse")
    for name in run_options or RUN_OPTIONS:
        type_, default, help_ = RUN_OPTIONS[name]
        parser.add_argument(f"--{name}", type=type_, default=default, help=help_)
    return parser


# isoflop's own options of a pre-training run: name -> (type, default, help).
RUN_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "run_dir": (str | None, None, "Where logs and checkpoints go (default runs/<objective>-<size>-<hash of the "
                                  "configuration>: rerunning a command resumes its run)."),
    "wandb": (bool, True, "Log to wandb too (offline by itself without credentials or network)."),
    "wandb_group": (str | None, None, "wandb group of the run."),
    "flops_budget": (str | None, None, "Stop at this many training FLOPs: a number (1.5e15) or PRESET:STEPS "
                                       "(what that preset takes for STEPS steps). Replaces max_steps."),
    "flops_convention": (str, "actual", "FLOPs accounting: actual (what runs, backward = 2 x forward) or paper "
                                        "(ELECTRA's)."),
    "checkpoint_every": (int, 1000, "Save <run_dir>/checkpoints/last.ckpt every this many steps (to resume from)."),
    "ckpt_path": (str | None, None, "Resume from this checkpoint (default: the run directory's last.ckpt, if any)."),
    "skip_nonfinite": (int, 0, "Skip up to this many steps whose loss or gradient norm is NaN or infinite (each is "
                               "logged); one more stops the run. Default 0: the first one stops it."),
    "reschedule": (bool, False, "Resume with a changed max_steps or flops_budget: the learning rate decays linearly "
                                "from its value at the resume point to 0 at the new end (else such a resume is refused)."),
    "peak_flops": (float | None, None, "Peak FLOP/s of one device, for train/mfu (default: the vendor table of known "
                                       "GPUs, else a measured matmul; see experiments.run.throughput)."),
    "compile": (bool, False, "torch.compile the objective's Hugging Face backbones before the first step."),
}


_PARSER = None


def parser():
    """The pre-training parser, built once per process (building it imports the objectives)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = build_parser()
    return _PARSER


def parse(args: list[str] | dict | Namespace | None = None, base: Namespace | None = None) -> Namespace:
    """A resolved, validated configuration.

    ``args``: command-line arguments (``["--config", "tiny", "--trainer.max_steps", "10"]``; without
    ``--config`` the ``default`` preset comes first), or a dict/Namespace of settings laid over ``base``
    (a parsed configuration; the ``default`` preset when None). Changing ``model.class_path`` keeps the
    model settings the new objective also takes, as on the command line.
    """
    p = parser()
    if args is None or isinstance(args, list):
        args = list(args or [])
        if any(a.split("=", 1)[0] == "--model.init_args.vocab_size" for a in args):
            raise UsageError("--model.init_args.vocab_size: set the vocabulary once, with --data.vocab_size "
                             "(the model takes it from the data)")
        if not any(a.split("=", 1)[0] == "--config" for a in args):
            args = ["--config", DEFAULT_PRESET, *args]
        return parse_args(p, args)
    settings = args.as_dict() if isinstance(args, Namespace) else args
    try:
        return p.parse_object(settings, namespace=(base or parse([])).clone())
    except argparse.ArgumentError as err:
        raise argument_error(err, p) from None


def parse_args(p, args: list[str], namespace: Namespace | None = None) -> Namespace:
    """``p.parse_args(args)`` of a jsonargparse parser built with ``exit_on_error=False`` (laid over
    ``namespace`` when given), its errors as one-line :class:`~experiments.errors.UsageError`\ s
    (:func:`argument_error`)."""
    try:
        return p.parse_args(args, namespace=namespace)
    except argparse.ArgumentError as err:
        raise argument_error(err, p) from None


def argument_error(err: Exception, p) -> UsageError:
    """jsonargparse's message (several lines of union subtypes and given values) as one line that names
    the option and what was wrong with it: an unknown objective lists the available ones, an unknown
    option or setting suggests the nearest real one."""
    message, hint = str(err), f" (see {p.prog} --help)"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        near = difflib.get_close_matches(unknown.group(1).split("=")[0], list(p._option_string_actions), n=1) \
            if unknown else []
        return UsageError(one_line(message) + (f"; did you mean {near[0]}?" if near else "") + hint)
    option = "--" + keys[0]
    class_path = re.search(r"Problem with given class_path '([^']+)'", message)
    if class_path and re.search(r"has no attribute|No module named|not accessible|not a subclass", message):
        from objectives import class_path as short_path
        from objectives import discover

        known = ", ".join(short_path(c) for c in discover().values())
        return UsageError(f"{option}: unknown objective {class_path.group(1)!r}; available: {known}")
    refused = re.search(r"Option '([^']+)' is not accepted", message)
    if refused and class_path:
        return UsageError(_unknown_setting(option, class_path.group(1), refused.group(1)) + hint)
    if len(keys) > 1:
        option += (".init_args." if class_path else ".") + keys[-1]
    expected = list(dict.fromkeys(re.findall(r"Expected a <class '([^']+)'>", message)))
    given = re.search(r"(?:Given value|Got value): (.+)", message)
    if expected and given:
        kinds = " or ".join("null" if e == "NoneType" else e for e in expected)
        return UsageError(f"{option}: expected {kinds}, got {given.group(1).strip()!r}" + hint)
    detail = [ln.strip(" -") for ln in message.splitlines()[1:] if ln.strip() and not ln.strip().startswith(
        ("Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>", "Does not validate"))]
    return UsageError(f"{option}: {one_line(' '.join(detail)) or one_line(message)}" + hint)


def _unknown_setting(option: str, class_path: str, name: str) -> str:
    """``--model.init_args.sise: objectives.MaskedLM takes no setting 'sise'; did you mean size?``"""
    from objectives import resolve

    try:
        near = difflib.get_close_matches(name, sorted(accepted_args(resolve(class_path))), n=1)
    except ValueError:
        near = []
    return (f"{option}.init_args.{name}: {class_path} takes no setting {name!r}"
            + (f"; did you mean {near[0]}?" if near else ""))


def dump(config: Namespace) -> dict:
    """The configuration as plain data (what is logged and saved beside the run)."""
    return json.loads(parser().dump(config, format="json", skip_none=False, skip_validation=True))


def accepted_args(cls: type) -> set[str]:
    """Constructor arguments of an objective, through its chain of ``**kwargs`` base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def objective_name(config: Namespace) -> str:
    return config.model.class_path.rsplit(".", 1)[-1]
