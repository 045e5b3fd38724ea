"""The ``isoflop`` command::

    isoflop pretrain [--config PRESET_OR_YAML] [--model objectives.X] [--overrides ...]
    isoflop export CKPT OUT_DIR
    isoflop flops --preset electra-small --steps 1000000 --batch 128 --seq 128 --convention paper
    isoflop finetune --encoder DIR --tasks glue ...
    isoflop compare [--objectives [...]] [--size tiny] [--budget 1e15 | PRESET:STEPS]
    isoflop sweep GRID.yaml

``pretrain`` is a LightningCLI: the objective is chosen by class path (``--model objectives.MaskedLM``
or a YAML ``class_path``), every constructor argument is a typed, documented option, and
``--print_config`` prints the fully resolved configuration. Without ``--config`` it starts from
``experiments/configs/default.yaml``, a small MLM run that finishes on a laptop CPU in minutes.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path

from experiments.budget import CONFIG_DIR


def resolve_config(value: str) -> str:
    """A config path, or the name of a shipped preset (``electra-small`` -> configs/electra-small.yaml)."""
    if os.path.exists(value):
        return value
    preset = CONFIG_DIR / f"{Path(value).stem}.yaml"
    if preset.exists() and (os.sep not in value or value.startswith("experiments")):
        return str(preset)
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise SystemExit(f"isoflop: error: config {value!r} not found (looked for the file and for a preset; presets: {names})")


def available_objectives() -> dict[str, type]:
    """Objective classes importable from the ``objectives`` package (class path -> class)."""
    import objectives
    from objectives.base import PretrainingObjective

    return {
        f"objectives.{name}": obj
        for name, obj in vars(objectives).items()
        if inspect.isclass(obj) and issubclass(obj, PretrainingObjective) and obj is not PretrainingObjective
    }


def _check_model_class_path(argv: list[str]) -> None:
    """An unknown objective class path fails with the list of available ones (before any compute)."""
    import yaml

    paths: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            cfg = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
            model = cfg.get("model")
            if isinstance(model, dict) and "class_path" in model:
                paths.append(model["class_path"])
            elif isinstance(model, str):
                paths.append(model)
        elif arg in ("--model", "--model.class_path") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith(("--model=", "--model.class_path=")):
            paths.append(arg.split("=", 1)[1])
    known = available_objectives()
    short = {p.rsplit(".", 1)[-1] for p in known}
    for path in paths:
        if path.startswith("{") or path in known or path in short:
            continue
        try:
            from objectives.base import PretrainingObjective, import_class

            if issubclass(import_class(path), PretrainingObjective):
                continue
        except (ImportError, AttributeError, ValueError, TypeError):
            pass
        raise SystemExit(f"isoflop: error: unknown objective {path!r}; available: {', '.join(sorted(known))}")


def pretrain(argv: list[str]) -> int:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from datamodules.pretraining import PretrainingDataModule
    from experiments.budget import resolve_budget
    from experiments.callbacks import FlopsBudget, InitialValidation
    from experiments.loggers import finish_loggers, make_loggers
    from objectives.base import PretrainingObjective

    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = resolve_config(argv[i + 1])
        elif arg.startswith("--config="):
            argv[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(CONFIG_DIR / "default.yaml"), *argv]
    _check_model_class_path(argv)

    class LoggerSaveConfigCallback(SaveConfigCallback):
        """Also logs the fully resolved configuration as the run's config (wandb, CSV hparams)."""

        def save_config(self, trainer, pl_module, stage) -> None:
            config = self.parser.dump(self.config, skip_none=False, format="json")
            import json

            for logger in trainer.loggers:
                logger.log_hyperparams({"config": json.loads(config)})

    class IsoflopCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run_dir", type=str | None, default=None,
                                help="Where logs and checkpoints go (default runs/<objective>-<size>-<time>).")
            parser.add_argument("--wandb", type=bool, default=True,
                                help="Log to wandb too (offline by itself without credentials or network).")
            parser.add_argument("--wandb_group", type=str | None, default=None, help="wandb group of the run.")
            parser.add_argument("--flops_budget", type=str | None, default=None,
                                help="Stop at this many training FLOPs: a number (1.5e15) or PRESET:STEPS "
                                     "(what that preset takes for STEPS steps). Replaces max_steps.")
            parser.add_argument("--checkpoint_every", type=int, default=1000,
                                help="Save runs/<run>/checkpoints/last.ckpt every this many steps (to resume from).")
            parser.add_argument("--flops_convention", type=str, default="actual",
                                help="FLOPs accounting: actual (what runs, backward = 2 x forward) or paper (ELECTRA's).")

        def instantiate_trainer(self, **kwargs):
            cfg = self.config[self.subcommand]
            model_cfg = cfg["model"]
            name = model_cfg["class_path"].rsplit(".", 1)[-1].lower()
            size = model_cfg["init_args"].get("size", "")
            # One default directory for all ranks: the first process picks it, the ranks that
            # Lightning launches later inherit it through the environment.
            default = os.environ.setdefault("ISOFLOP_RUN_DIR", str(Path("runs") / f"{name}-{size}-{time.strftime('%Y%m%d-%H%M%S')}"))
            run_dir = Path(cfg["run_dir"] or default)
            if self.config_init[self.subcommand]["trainer"].get("logger") in (None, True):
                kwargs["logger"] = make_loggers(run_dir, "csv", wandb=cfg["wandb"], group=cfg["wandb_group"])
            kwargs.setdefault("default_root_dir", str(run_dir))
            self.run_dir = run_dir
            budget = None
            if cfg["flops_budget"] is not None:
                budget = resolve_budget(cfg["flops_budget"], cfg["flops_convention"])
                kwargs.update(max_steps=-1, max_epochs=-1)  # the budget decides when training ends
            counter = FlopsBudget(budget, cfg["flops_convention"])
            callbacks = list(self.config_init[self.subcommand]["trainer"].get("callbacks") or [])
            if self.config_init[self.subcommand]["trainer"].get("enable_checkpointing") is not False and not any(
                isinstance(c, ModelCheckpoint) for c in callbacks
            ):
                # Checkpoints beside the logs, with last.ckpt always there to resume from.
                callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                                 every_n_train_steps=cfg["checkpoint_every"]))
            kwargs["callbacks"] = callbacks
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.insert(0, counter)  # before checkpointing, so checkpoints hold the count
            return trainer

        def after_fit(self) -> None:
            if self.trainer.state.status != "finished":
                return
            # The final model is always in last.ckpt (step-based saving may not fall on the last step).
            ckpt = self.trainer.checkpoint_callback
            if ckpt is not None and ckpt.dirpath:
                self.trainer.save_checkpoint(Path(ckpt.dirpath) / "last.ckpt")
            # One validation at the very end, so every run's last point is its final model.
            if self.trainer.val_dataloaders is not None:
                self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)

        def before_fit(self) -> None:
            # Data/model mismatches fail here, before tokenisation or training start.
            self.model.check_data(self.datamodule)

    import warnings

    # LightningCLI gets its arguments from args=..., and sys.argv stays the real command line:
    # Lightning's DDP launcher re-runs sys.argv for the other ranks.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    inherited_run_dir = "ISOFLOP_RUN_DIR" in os.environ
    try:
        cli = IsoflopCLI(
            PretrainingObjective,
            PretrainingDataModule,
            subclass_mode_model=True,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            args=["fit", *argv],
            parser_kwargs={"fit": {"prog": "isoflop pretrain"}},
            auto_configure_optimizers=False,
            trainer_defaults={"callbacks": [InitialValidation()]},
        )
    finally:
        if not inherited_run_dir:  # the next run in this process picks its own directory
            os.environ.pop("ISOFLOP_RUN_DIR", None)
    finish_loggers(cli.trainer.loggers)
    return 0


def export(argv: list[str]) -> int:
    import argparse

    from experiments.export import export_checkpoint

    parser = argparse.ArgumentParser(prog="isoflop export", description="Write a checkpoint as Hugging Face directories.")
    parser.add_argument("checkpoint", help="a Lightning checkpoint written by isoflop pretrain")
    parser.add_argument("out_dir", help="output directory (save_pretrained format, model and tokenizer)")
    args = parser.parse_args(argv)
    try:
        for line in export_checkpoint(args.checkpoint, args.out_dir):
            print(line)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"isoflop export: error: {err}") from None
    return 0


def flops(argv: list[str]) -> int:
    import argparse

    from experiments.budget import report
    from objectives.flops import CONVENTIONS

    parser = argparse.ArgumentParser(prog="isoflop flops", description="Training FLOPs of a preset, analytically.")
    parser.add_argument("--preset", required=True, help="a preset name (experiments/configs) or YAML file")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--convention", default="actual", choices=CONVENTIONS,
                        help="actual: what runs, backward = 2 x forward (the default, as budgets); paper: ELECTRA's")
    args = parser.parse_args(argv)
    try:
        print(report(args.preset, args.steps, args.batch, args.seq, args.convention))
    except ValueError as err:
        raise SystemExit(f"isoflop flops: error: {err}") from None
    return 0


def compare(argv: list[str]) -> int:
    from experiments.compare import main as compare_main

    return compare_main(argv)


def sweep(argv: list[str]) -> int:
    from experiments.sweep import main as sweep_main

    return sweep_main(argv)


def finetune(argv: list[str]) -> int:
    from experiments.finetune import main as finetune_main

    return finetune_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    handlers = {"pretrain": pretrain, "export": export, "flops": flops, "finetune": finetune, "compare": compare,
                "sweep": sweep}
    if command not in handlers:
        raise SystemExit(f"isoflop: error: unknown command {command!r}; choose one of {', '.join(handlers)}")
    return handlers[command](rest) or 0


if __name__ == "__main__":
    sys.exit(main())
