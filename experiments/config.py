"""The configuration of a pre-training run: its parser, and the one way to build one.

A configuration is what ``isoflop pretrain`` parses: an objective (``model``, chosen by class path),
the data (``data``), Lightning's ``trainer`` settings and isoflop's own run options (run directory,
wandb, FLOPs budget, checkpointing). :func:`parse` builds it from command-line arguments, a preset
name or a dict; ``isoflop compare`` and ``isoflop sweep`` build their runs' configurations with it too.
"""

from __future__ import annotations

import json
from typing import Any

from jsonargparse import ActionConfigFile, Namespace

from experiments import presets

DEFAULT_PRESET = "default"
# Lightning's defaults that isoflop changes: its own summary replaces the layer table; the validation
# before the first step (logged at step 0) makes the sanity check redundant.
TRAINER_DEFAULTS = {"enable_model_summary": False, "num_sanity_val_steps": 0}


class PresetFile(ActionConfigFile):
    """``--config``: a YAML file or the name of a shipped preset (``electra-small``)."""

    def __call__(self, parser, cfg, values, option_string=None):
        try:
            path = str(presets.find(values))
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

    parser = LightningArgumentParser(prog=prog, description="Pre-train one objective.", default_env=False)
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
    "run_dir": (str | None, None, "Where logs and checkpoints go (default runs/<objective>-<size>-<time>)."),
    "wandb": (bool, True, "Log to wandb too (offline by itself without credentials or network)."),
    "wandb_group": (str | None, None, "wandb group of the run."),
    "flops_budget": (str | None, None, "Stop at this many training FLOPs: a number (1.5e15) or PRESET:STEPS "
                                       "(what that preset takes for STEPS steps). Replaces max_steps."),
    "flops_convention": (str, "actual", "FLOPs accounting: actual (what runs, backward = 2 x forward) or paper "
                                        "(ELECTRA's)."),
    "checkpoint_every": (int, 1000, "Save <run_dir>/checkpoints/last.ckpt every this many steps (to resume from)."),
    "ckpt_path": (str | None, None, "Resume from this checkpoint."),
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
            p.error("set the vocabulary once, with --data.vocab_size (the model takes it from the data)")
        if not any(a.split("=", 1)[0] == "--config" for a in args):
            args = ["--config", DEFAULT_PRESET, *args]
        return p.parse_args(args)
    settings = args.as_dict() if isinstance(args, Namespace) else args
    return p.parse_object(settings, namespace=(base or parse([])).clone())


def dump(config: Namespace) -> dict:
    """The configuration as plain data (what is logged and saved beside the run)."""
    return json.loads(parser().dump(config, format="json", skip_none=False, skip_validation=True))


def objective_name(config: Namespace) -> str:
    return config.model.class_path.rsplit(".", 1)[-1]
