"""The configuration of a pre-training run: its parser, what each of its options is, and the one way every
``isoflop`` subcommand parses its command line.

A configuration is what ``isoflop pretrain`` parses: an objective (``model``, chosen by class path),
the data (``data``), Lightning's ``trainer`` settings and isoflop's own run options (run directory,
wandb, FLOPs budget, checkpointing). :func:`parse` builds it from command-line arguments, a preset
name or a dict; ``isoflop compare`` and ``isoflop sweep`` build their runs' configurations with it too.

Every option has one role (:data:`ROLES`, :func:`role`), and a run's identity, name and what a resume may
change all derive from it (:mod:`experiments.run.rundir`):

- ``trains``: what the run trains (the objective and its settings, the data, the seed, precision,
  accumulation, clipping): part of the run's identity and of its directory's name;
- ``length``: how long it trains (``max_steps``, ``budget`` ...): part of the name, not of the identity; a
  resume with another length needs ``--reschedule true``;
- ``layout``: how the global batch is split over devices (devices, nodes, strategy, per-device batch), and
  ``data.global_batch_size``, one way of giving it: neither, as long as the global batch is the same (it is
  part of the identity);
- ``run``: how it is run, logged, checkpointed, validated or measured (logging cadence, ``compile``, the MFU
  peak, progress bars, validation cadence, wandb): neither, so adding one to a command still resumes it.

Parsing is the same in every subcommand (:func:`parse_args`): a whole number may be written ``1e6``, a list
as ``[a, b]`` (one item may be written bare), and every mistake is a one-line error naming the option.
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

TRAINS, LENGTH, LAYOUT, RUN = "trains", "length", "layout", "run"

# Lightning's defaults that isoflop changes: its own summary replaces the layer table; the validation
# before the first step (logged at step 0) makes the sanity check redundant.
TRAINER_DEFAULTS = {"enable_model_summary": False, "num_sanity_val_steps": 0}
# Trainer arguments isoflop sets itself, so they are not options: the run directory is ``--run_dir``, and
# the data's sampler splits the data over ranks itself, resumably (datamodules.sampler).
TRAINER_FORCED = ("default_root_dir", "use_distributed_sampler")

# The role of every Trainer argument (lightning.pytorch.Trainer; a new Lightning argument fails
# tests/test_cli.py until it is classified here).
TRAINER_ROLES = {
    "accelerator": LAYOUT, "strategy": LAYOUT, "devices": LAYOUT, "num_nodes": LAYOUT,
    "precision": TRAINS, "accumulate_grad_batches": TRAINS, "gradient_clip_val": TRAINS,
    "gradient_clip_algorithm": TRAINS, "limit_train_batches": TRAINS, "overfit_batches": TRAINS,
    "sync_batchnorm": TRAINS, "reload_dataloaders_every_n_epochs": TRAINS,
    "max_epochs": LENGTH, "min_epochs": LENGTH, "max_steps": LENGTH, "min_steps": LENGTH,
    # A wall-clock limit says where a run stops, not what it trains; callbacks and plugins log, checkpoint or
    # place the run (a change to what is trained belongs in the objective's settings).
    "max_time": RUN, "logger": RUN, "callbacks": RUN, "plugins": RUN, "fast_dev_run": RUN, "profiler": RUN,
    "limit_val_batches": RUN, "limit_test_batches": RUN, "limit_predict_batches": RUN, "val_check_interval": RUN,
    "check_val_every_n_epoch": RUN, "num_sanity_val_steps": RUN, "log_every_n_steps": RUN,
    "enable_checkpointing": RUN, "enable_progress_bar": RUN, "enable_model_summary": RUN, "deterministic": RUN,
    "benchmark": RUN, "inference_mode": RUN, "detect_anomaly": RUN, "barebones": RUN,
    "enable_autolog_hparams": RUN, "model_registry": RUN,
}
# The role of every PretrainingDataModule argument. The number of loader workers is ``run`` except for a
# stream, where the (process, worker) slots decide which documents each batch holds (experiments.run.rundir).
DATA_ROLES = {
    "dataset": TRAINS, "dataset_config": TRAINS, "data_files": TRAINS, "text_column": TRAINS, "tokenizer": TRAINS,
    "vocab_size": TRAINS, "lowercase": TRAINS, "max_seq_length": TRAINS, "val_fraction": TRAINS,
    "short_seq_prob": TRAINS, "single_segment_prob": TRAINS, "seed": TRAINS, "max_documents": TRAINS,
    "streaming": TRAINS, "sample_documents": TRAINS, "shuffle_buffer": TRAINS,
    # The global batch is part of a run's identity however it is given (experiments.run.rundir.identity: its
    # "global_batch"), so neither the per-device batch nor the setting of the global batch changes the run.
    "batch_size": LAYOUT, "global_batch_size": LAYOUT,
    "max_val_examples": RUN, "num_workers": RUN, "num_proc": RUN, "cache_dir": RUN,
}

# isoflop's own options of a pre-training run: name -> (type, default, help, role).
RUN_OPTIONS: dict[str, tuple[Any, Any, str, str]] = {
    "run_dir": (str | None, None, "Where logs and checkpoints go (default runs/<objective>-<size>-<hash of what the "
                                  "run trains and its length>: rerunning a command resumes its run).", RUN),
    "wandb": (bool, True, "Log to wandb too (offline by itself without credentials or network).", RUN),
    "wandb_group": (str | None, None, "wandb group of the run.", RUN),
    "wandb_project": (str | None, None, "wandb project (default: WANDB_PROJECT, else isoflop).", RUN),
    "wandb_entity": (str | None, None, "wandb entity (team or user) that owns the project (default: your own).", RUN),
    "wandb_tags": (list[str] | None, None, "wandb tags for the run, besides those isoflop adds (objective:, encoder:, "
                                           "budget:, seed:).", RUN),
    "budget": (str | None, None, "Stop at this many training FLOPs: a number (1.5e15) or PRESET:STEPS (what that "
                                 "preset takes for STEPS steps). Replaces trainer.max_steps.", LENGTH),
    "flops_convention": (str, "actual", "FLOPs accounting of the budget: actual (what runs, backward = 2 x forward) "
                                        "or paper (ELECTRA's).", LENGTH),
    "checkpoint_every": (int, 1000, "Save <run_dir>/checkpoints/last.ckpt every this many steps (to resume from).", RUN),
    "ckpt_path": (str | None, None, "Resume from this checkpoint (default: the run directory's last.ckpt, if any).", RUN),
    "skip_nonfinite": (int, 0, "Skip up to this many steps whose loss or gradient norm is NaN or infinite (each is "
                               "logged); one more stops the run. Default 0: the first one stops it.", RUN),
    "reschedule": (bool, False, "Resume with a changed trainer.max_steps or budget: the learning rate decays linearly "
                                "from its value at the resume point to 0 at the new end (else such a resume is "
                                "refused).", RUN),
    "peak_flops": (float | None, None, "Peak FLOP/s of one device, for train/mfu (default: Lightning's table of known "
                                       "GPUs, else a measured matmul; see experiments.run.throughput).", RUN),
    "compile": (bool, False, "torch.compile the objective's whole training step (masking, generator, sampling, "
                             "networks, losses; fullgraph) before the first step; validation stays eager.", RUN),
    "compile_mode": (str | None, None, "With --compile: torch.compile's mode: default, reduce-overhead (CUDA graphs: "
                                       "for launch-bound steps such as ELECTRA-Small's) or max-autotune.", RUN),
    "eval_every_flops": (float | None, None, "Save the weights (checkpoints/curve/step-N.ckpt) each time training FLOPs "
                                             "pass a multiple of this: isoflop compare exports and fine-tunes each "
                                             "for a curve of downstream score against FLOPs (its curve.md and "
                                             "downstream_vs_flops.png).", RUN),
    "eval_every_steps": (int | None, None, "As --eval_every_flops, every this many optimiser steps instead.", RUN),
}
# The top-level options besides the run options; every model.* option (the objective's class and its
# settings) is what the run trains.
TOP_ROLES = {"seed_everything": TRAINS, "config": RUN, "model": TRAINS}


def role(key: str) -> str:
    """The role of a flattened option (``trainer.max_steps``, ``model.init_args.size``, ``budget``); a
    KeyError for one no table classifies (a new option must be given a role before it is used)."""
    group, _, rest = key.partition(".")
    if group == "trainer" and rest:
        return TRAINER_ROLES[rest.split(".", 1)[0]]
    if group == "data" and rest:
        return DATA_ROLES[rest.split(".", 1)[0]]
    if group in RUN_OPTIONS:
        return RUN_OPTIONS[group][3]
    return TOP_ROLES[group]


def replace_batch(config: Namespace, gives_global: bool, gives_batch: bool) -> Namespace:
    """``config`` after a layer of settings (a preset file, the command line, a dict laid over a configuration)
    that gives ``data.global_batch_size`` and no ``data.batch_size``: the per-device batch of the layers below it
    (a preset's, such as tiny's 16) goes, so that the global batch is dealt over the devices rather than split
    into a micro-batch nobody asked for (:func:`experiments.run.budget.split_batch`). A layer that gives both
    keeps both; one that gives only ``data.batch_size`` sets the micro-batch of the global batch below it."""
    if gives_global and not gives_batch and config.get("data.global_batch_size") is not None:
        config["data.batch_size"] = None
    return config


class PresetFile(ActionConfigFile):
    """``--config``: a YAML file or the name of a shipped preset (``electra-small``)."""

    def __call__(self, parser, cfg, values, option_string=None):
        try:
            path = str(presets.find(values))
            loaded = presets.load(path)  # bad YAML fails here, naming the file and line
        except ValueError as err:
            parser.error(str(err))
        super().__call__(parser, cfg, path, option_string)
        data = loaded.get("data") if isinstance(loaded, dict) else None
        if isinstance(data, dict):
            replace_batch(cfg, "global_batch_size" in data, "batch_size" in data)


def add_run_groups(parser, groups: tuple[str, ...] = ("trainer", "model", "data")) -> None:
    """The pre-training groups on ``parser``: ``trainer`` (Lightning's Trainer with isoflop's defaults, less
    the arguments isoflop sets itself), ``model`` (any objective, by class path) and ``data``, with the data's
    ``vocab_size`` linked into the model's (set once). ``isoflop sweep`` takes only trainer and data."""
    from lightning.pytorch import Trainer

    from datamodules.pretraining import PretrainingDataModule
    from objectives.base import PretrainingObjective

    if "trainer" in groups:
        parser.add_class_arguments(Trainer, "trainer", fail_untyped=False, instantiate=False, sub_configs=True,
                                   skip=set(TRAINER_FORCED))
        parser.set_defaults({f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()})
    if "model" in groups:
        parser.add_lightning_class_args(PretrainingObjective, "model", subclass_mode=True)
    if "data" in groups:
        parser.add_lightning_class_args(PretrainingDataModule, "data")
    if "model" in groups and "data" in groups:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="parse")


def new_parser(prog: str, description: str):
    """An ``isoflop`` subcommand's parser: jsonargparse's (Lightning's flavour, so pre-training groups fit),
    errors raised for :func:`parse_args` to turn into one line, help in plain text."""
    from lightning.pytorch.cli import LightningArgumentParser

    from experiments.private_api import PlainHelpFormatter

    return LightningArgumentParser(prog=prog, description=description, default_env=False, exit_on_error=False,
                                   formatter_class=PlainHelpFormatter)


def build_parser(prog: str = "isoflop pretrain", run_options: tuple[str, ...] | None = None,
                 description: str = "Pre-train one objective."):
    """The parser of a pre-training configuration: ``trainer``, ``model``, ``data``, and isoflop's run
    options (all of :data:`RUN_OPTIONS`, or the ones named)."""
    parser = new_parser(prog, description)
    parser.add_argument("--config", action=PresetFile, help="A preset name (experiments/configs) or a YAML file.")
    parser.add_argument("--seed_everything", type=int, default=0, help="Seed of every RNG (torch, numpy, python).")
    add_run_groups(parser)
    for name in RUN_OPTIONS if run_options is None else run_options:
        type_, default, help_, _ = RUN_OPTIONS[name]
        parser.add_argument(f"--{name}", type=type_, default=default, help=help_)
    return parser


_PARSER = None


def parser():
    """The pre-training parser, built once per process (building it imports the objectives)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = build_parser()
    return _PARSER


def with_default_preset(argv: list[str]) -> list[str]:
    """``argv`` with ``--config default`` first when it names no preset."""
    return argv if any(a.split("=", 1)[0] == "--config" for a in argv) else ["--config", DEFAULT_PRESET, *argv]


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
        return parse_args(p, with_default_preset(args))
    settings = args.as_dict() if isinstance(args, Namespace) else args
    try:
        config = p.parse_object(settings, namespace=(base or parse([])).clone())
    except argparse.ArgumentError as err:
        raise argument_error(err, p) from None
    data = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    return replace_batch(config, data.get("global_batch_size") is not None, data.get("batch_size") is not None)


# A whole number in scientific notation (1e6, 1.5e15): written as its digits before parsing, so that counts
# (steps, examples) accept the notation budgets do, and a float option still gets the same value.
_SCIENTIFIC = re.compile(r"\+?\d+(?:\.\d*)?[eE]\+?\d+")


def plain_numbers(argv: list[str]) -> list[str]:
    """``argv`` with every whole number written in scientific notation given as its digits (``1e6`` ->
    ``1000000``), in ``--key value`` and ``--key=value`` forms alike."""
    out = []
    for arg in argv:
        head, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if not eq and arg.startswith("--"):
            out.append(arg)
            continue
        if _SCIENTIFIC.fullmatch(value) and float(value).is_integer() and float(value) < 2**63:
            value = str(int(float(value)))
        out.append(f"{head}={value}" if eq else value)
    return out


def parse_args(p, args: list[str], namespace: Namespace | None = None, defaults: bool = True) -> Namespace:
    """``p.parse_args(args)`` for every subcommand's parser: whole numbers in scientific notation accepted
    (:func:`plain_numbers`), laid over ``namespace`` when given, only the given options when ``defaults`` is
    False, a global batch given alone replacing the preset's per-device batch (:func:`replace_batch`), errors
    as one-line :class:`~experiments.errors.UsageError` (:func:`argument_error`)."""
    try:
        parsed = p.parse_args(plain_numbers(args), namespace=namespace, defaults=defaults)
    except argparse.ArgumentError as err:
        raise argument_error(err, p) from None
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    return replace_batch(parsed, "--data.global_batch_size" in given, "--data.batch_size" in given)


def as_list(value, option: str) -> list:
    """A list option's value as a list: a YAML list (``[a, b]``) or one bare item; a comma-separated string
    is refused (lists are written one way)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "," in value:
        items = ", ".join(v.strip() for v in value.split(","))
        raise UsageError(f"{option} {value}: write a list as '[{items}]'")
    return [value]


def argument_error(err: Exception, p) -> UsageError:
    """jsonargparse's message (several lines of union subtypes and given values) as one line that names
    the option and what was wrong with it: an unknown objective lists the available ones, an unknown
    option or setting suggests the nearest real one."""
    from experiments.private_api import jsonargparse_error

    found, hint = jsonargparse_error(str(err)), f" (see {p.prog} --help)"
    if found.unknown is not None:
        near = difflib.get_close_matches(found.unknown.split("=")[0], _option_names(p), n=1)
        return UsageError(f"unrecognized arguments: {found.unknown}" + (f"; did you mean {near[0]}?" if near else "")
                          + hint)
    if not found.keys:
        return UsageError(one_line(str(err)) + hint)
    option = "--" + found.keys[0]
    if found.class_path and found.class_missing:
        from objectives import class_path as short_path
        from objectives import discover

        known = ", ".join(short_path(c) for c in discover().values())
        return UsageError(f"{option}: unknown objective {found.class_path!r}; available: {known}")
    if found.refused and found.class_path:
        return UsageError(_unknown_setting(option, found.class_path, found.refused) + hint)
    if len(found.keys) > 1:
        option += (".init_args." if found.class_path else ".") + found.keys[-1]
    if found.expected and found.given is not None:
        kinds = " or ".join("null" if e == "NoneType" else e for e in found.expected)
        return UsageError(f"{option}: expected {kinds}, got {found.given!r}" + hint)
    return UsageError(f"{option}: {found.detail or one_line(str(err))}" + hint)


def _option_names(p) -> list[str]:
    """Every ``--option`` of a parser (its defaults' keys), for "did you mean"."""
    return [f"--{k}" for k in p.get_defaults().keys()] + ["--config", "--print_config", "--help"]


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

