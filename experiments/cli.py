"""The ``isoflop`` command: a thin map from subcommands onto library calls.

    isoflop pretrain [--config PRESET_OR_YAML] [--model objectives.X] [--trainer.* --model.* --data.* ...]
    isoflop export CKPT OUT_DIR
    isoflop flops --preset electra-small --steps 1000000 --batch 128 --seq 128 [--convention paper]
    isoflop finetune --encoder DIR --tasks glue|offline|TASK[,TASK] [--seeds 10] ...
    isoflop compare [--objectives '[objectives.MaskedLM, ...]'] [--budget 1e15 | PRESET:STEPS] [pretrain options]
    isoflop sweep GRID [--out_dir DIR] [--dry_run]
    isoflop bench [--size small] [--batch 16] [--seq 128] [--bf16]

``isoflop <command> --help`` lists a command's options. ``pretrain``'s options are the objective's,
the data's and Lightning Trainer's constructor arguments (LightningCLI style: ``--model`` chooses the
objective by class path; ``--print_config`` prints the fully resolved configuration); without
``--config`` it starts from ``experiments/configs/default.yaml``, a small MLM run that finishes on a
laptop CPU in minutes. Presets: experiments/configs/*.yaml, sweeps: experiments/configs/sweeps/*.yaml.

Errors in a command's input print one line, ``isoflop <command>: error: ...``, and exit with code 2
(set ISOFLOP_DEBUG=1 for the traceback). This module imports nothing heavy: torch, Lightning,
transformers and datasets are imported by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import os
import sys


def pretrain(argv: list[str]) -> int:
    from experiments.config import parse
    from experiments.pretrain import pretrain as run

    result = run(parse(argv))
    print(f"[pretrain] {result.steps} steps, {result.tokens} tokens, {result.flops:.3e} FLOPs; "
          f"logs and checkpoints in {result.run_dir}", flush=True)
    return 0 if result.finished else 1


def export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="isoflop export", description="Write a checkpoint as Hugging Face directories.")
    parser.add_argument("checkpoint", help="a Lightning checkpoint written by isoflop pretrain")
    parser.add_argument("out_dir", help="output directory (save_pretrained format, model and tokenizer)")
    args = parser.parse_args(argv)
    from experiments.export import export_checkpoint

    for line in export_checkpoint(args.checkpoint, args.out_dir):
        print(line)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def flops(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="isoflop flops", description="Training FLOPs of a preset, analytically.")
    parser.add_argument("--preset", required=True, help="a preset name (experiments/configs) or YAML file")
    parser.add_argument("--steps", type=_positive, required=True, help="optimiser steps")
    parser.add_argument("--batch", type=_positive, required=True, help="global batch (sequences per step)")
    parser.add_argument("--seq", type=_positive, required=True, help="tokens per sequence")
    parser.add_argument("--convention", default="actual", choices=("actual", "paper"),
                        help="actual: what runs, backward = 2 x forward (the default, as budgets); paper: ELECTRA's")
    args = parser.parse_args(argv)
    from experiments import presets

    presets.find(args.preset)  # a missing preset fails here, before the objectives are imported
    from experiments.budget import report

    print(report(args.preset, args.steps, args.batch, args.seq, args.convention))
    return 0


def finetune(argv: list[str]) -> int:
    from experiments.finetune import main as finetune_main

    return finetune_main(argv)


def compare(argv: list[str]) -> int:
    from experiments.compare import main as compare_main

    return compare_main(argv)


def sweep(argv: list[str]) -> int:
    from experiments.sweep import main as sweep_main

    return sweep_main(argv)


def bench(argv: list[str]) -> int:
    from experiments.bench import main as bench_main

    return bench_main(argv)


COMMANDS = {"pretrain": pretrain, "export": export, "flops": flops, "finetune": finetune, "compare": compare,
            "sweep": sweep, "bench": bench}


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"isoflop: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest) or 0
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        if os.environ.get("ISOFLOP_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line
        print(f"isoflop {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
