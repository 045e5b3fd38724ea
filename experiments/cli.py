"""The ``isoflop`` command: a thin map from subcommands onto library calls (:data:`COMMANDS`).

Every subcommand is parsed the same way (jsonargparse, :func:`experiments.config.parse_args`), and every
failure is one line with an exit code (:mod:`experiments.errors`). This module imports nothing heavy:
torch, Lightning, transformers and datasets are imported by the subcommand that needs them, so ``isoflop
--help``, ``--version`` and an unknown command answer at once.
"""

from __future__ import annotations

import sys

from experiments import errors

HELP = """\
usage: isoflop [--version] [--debug] COMMAND [OPTIONS]

Compare language-model pre-training objectives (MLM, ELECTRA and relatives) at equal compute.

commands:
  pretrain   pre-train one objective (a preset, or any objective, data and Trainer settings)
  compare    pre-train several objectives to one FLOPs budget, fine-tune each, tabulate and plot
  sweep      an ablation grid of objectives and settings at equal FLOPs
  finetune   fine-tune an encoder on downstream tasks over several seeds (GLUE, or offline tasks)
  export     write a checkpoint as Hugging Face directories with model cards, or publish them on the Hub
  flops      the training FLOPs of a pre-training configuration, per step and in total
  bench      each objective's training step against the same step written with transformers

'isoflop COMMAND --help' lists a command's options. Presets: 'isoflop pretrain --config NAME' with a
file of experiments/configs (default, tiny, electra-small, bert-base, ...) or a YAML file of your own.

Exit codes: 0 done; 1 a failure during a run; 2 a mistake in the input, found before any compute;
128+N stopped by signal N (SIGTERM 143, SIGINT 130, SIGUSR1 138) after saving a checkpoint: rerun the
same command to resume. A failure prints one line; --debug (or ISOFLOP_DEBUG=1) shows its traceback.
"""


def pretrain(argv: list[str]) -> int:
    from experiments.run.pretrain import pretrain as run
    from experiments.run.prepare import prepare

    result = run(prepare(argv))
    print(f"[pretrain] {result.steps} steps, {result.tokens} tokens, {result.flops:.3e} FLOPs; "
          f"logs and checkpoints in {result.run_dir}", flush=True)
    return 0 if result.finished else 1


def export(argv: list[str]) -> int:
    from experiments.config import new_parser, parse_args

    parser = new_parser("isoflop export", "Write a checkpoint as Hugging Face directories.")
    parser.add_argument("checkpoint", type=str, help="A Lightning checkpoint written by isoflop pretrain (a file, or "
                                                     "a directory of FSDP shards or DeepSpeed's).")
    parser.add_argument("out_dir", type=str, help="Output directory (save_pretrained format, model and tokenizer, "
                                                  "with a model card README.md and isoflop.json in each network's).")
    parser.add_argument("--push_to_hub", type=str | None, default=None,
                        help="ORG/NAME: publish the export on the Hugging Face Hub, the main network in ORG/NAME "
                             "and the others in ORG/NAME-generator, ORG/NAME-discriminator-mlm. A token (HF_TOKEN or "
                             "hf auth login) and the Hub are checked first.")
    args = parse_args(parser, argv)
    from experiments.run.export import export_checkpoint
    from experiments.run.hub import Publisher

    publisher = Publisher.checked(args.push_to_hub) if args.push_to_hub else None  # before the checkpoint is read
    for line in export_checkpoint(args.checkpoint, args.out_dir, repo=args.push_to_hub):
        print(line)
    if publisher is not None:
        for line in publisher.push(args.out_dir, args.push_to_hub):
            print(line)
    return 0


def flops(argv: list[str]) -> int:
    from experiments.config import build_parser, parse_args, with_default_preset
    from experiments.run.budget import report
    from experiments.run.prepare import check

    parser = build_parser("isoflop flops", description="The training FLOPs of a pre-training configuration (the "
                          "options of isoflop pretrain), per sequence, per step and in total, analytically.")
    print(report(check(parse_args(parser, with_default_preset(argv)))))
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


COMMANDS = {"pretrain": pretrain, "compare": compare, "sweep": sweep, "finetune": finetune, "export": export,
            "flops": flops, "bench": bench}


def version() -> str:
    """The installed package's version (``isoflop 0.1.0``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return f"isoflop {installed('isoflop')}"
    except PackageNotFoundError:
        return "isoflop (not installed: run from a source tree)"


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the process exit code (see ``experiments.errors``)."""
    debug, argv = errors.debug_requested(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    if argv[0] == "--version":
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        errors.say(f"isoflop: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} "
                   "(see isoflop --help)")
        return 2
    try:
        with errors.signals_raise():
            return COMMANDS[command](rest) or 0
    except (Exception, errors.Preempted, KeyboardInterrupt) as err:
        if debug:
            raise
        errors.say(errors.report(command, err))
        return errors.exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
