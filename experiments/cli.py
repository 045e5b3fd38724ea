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

Every failure prints one line, ``isoflop <command>: error: ...``: exit code 2 for a mistake in the
input (found before any compute), 1 for a failure during a run; a signal (SIGTERM, SIGINT, SIGUSR1)
stops a command with code 128 + its number, after saving a checkpoint where a pre-training was
running, and rerunning the same command resumes (see ``experiments.errors``). ``--debug`` anywhere
on the command line, or ISOFLOP_DEBUG=1, shows the traceback instead. This module imports nothing
heavy: torch, Lightning, transformers and datasets are imported by the subcommand that needs them.
"""

from __future__ import annotations

import sys

from experiments import errors


def pretrain(argv: list[str]) -> int:
    from experiments.config import parse
    from experiments.run.pretrain import pretrain as run

    result = run(parse(argv))
    print(f"[pretrain] {result.steps} steps, {result.tokens} tokens, {result.flops:.3e} FLOPs; "
          f"logs and checkpoints in {result.run_dir}", flush=True)
    return 0 if result.finished else 1


def export(argv: list[str]) -> int:
    parser = errors.ArgumentParser(prog="isoflop export", description="Write a checkpoint as Hugging Face directories.")
    parser.add_argument("checkpoint", help="a Lightning checkpoint written by isoflop pretrain")
    parser.add_argument("out_dir", help="output directory (save_pretrained format, model and tokenizer)")
    args = parser.parse_args(argv)
    from experiments.run.export import export_checkpoint

    for line in export_checkpoint(args.checkpoint, args.out_dir):
        print(line)
    return 0


def flops(argv: list[str]) -> int:
    parser = errors.ArgumentParser(prog="isoflop flops", description="Training FLOPs of a preset, analytically.")
    parser.add_argument("--preset", required=True, help="a preset name (experiments/configs) or YAML file")
    parser.add_argument("--steps", type=errors.positive_int, required=True, help="optimiser steps")
    parser.add_argument("--batch", type=errors.positive_int, required=True, help="global batch (sequences per step)")
    parser.add_argument("--seq", type=errors.positive_int, required=True, help="tokens per sequence")
    parser.add_argument("--convention", default="actual", choices=("actual", "paper"),
                        help="actual: what runs, backward = 2 x forward (the default, as budgets); paper: ELECTRA's")
    args = parser.parse_args(argv)
    from experiments import presets

    presets.load(args.preset)  # a missing preset or bad YAML fails here, before the objectives are imported
    from experiments.run.budget import preset_config, report

    limit = preset_config(args.preset).model.init_args.max_position_embeddings
    if args.seq > limit:
        raise errors.UsageError(f"--seq {args.seq} exceeds the preset's max_position_embeddings {limit} "
                                f"(the longest sequence its encoder accepts)")
    print(report(args.preset, args.steps, args.batch, args.seq, args.convention))
    return 0


def finetune(argv: list[str]) -> int:
    from experiments.finetuning.finetune import main as finetune_main

    return finetune_main(argv)


def compare(argv: list[str]) -> int:
    from experiments.comparison.compare import main as compare_main

    return compare_main(argv)


def sweep(argv: list[str]) -> int:
    from experiments.comparison.sweep import main as sweep_main

    return sweep_main(argv)


def bench(argv: list[str]) -> int:
    from experiments.measure.bench import main as bench_main

    return bench_main(argv)


COMMANDS = {"pretrain": pretrain, "export": export, "flops": flops, "finetune": finetune, "compare": compare,
            "sweep": sweep, "bench": bench}


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the process exit code (see ``experiments.errors``)."""
    debug, argv = errors.debug_requested(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"isoflop: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        with errors.signals_raise():
            return COMMANDS[command](rest) or 0
    except (Exception, errors.Preempted, KeyboardInterrupt) as err:
        code = errors.exit_code(err)
        if code is None or debug:
            raise
        print(errors.report(command, err), file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
