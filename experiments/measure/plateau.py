"""The plateau study: what gets a small discriminator off its label prior soonest on a CPU.

Small encoders first sit on a plateau where the masked-LM loss is the unigram entropy (they predict
token frequencies and ignore context), and a discriminator learns only its label prior (it answers
"original" everywhere). This study runs tiny configurations on the known-answer testbed
(``--data.dataset synthetic:chain``: 256 symbols, 4 successors each, so the floors are known exactly)
through :func:`experiments.run.pretrain.pretrain`, one factor at a time around a base configuration, and
writes the table ``rtd/testbed.rst`` includes (``rtd/_include/plateau_table.rst``)::

    python -m experiments.measure.plateau                     # every configuration (about an hour on one core)
    python -m experiments.measure.plateau --only rtd-deberta  # some of them

Each row: the configuration, its steps, the CPU minutes the run took (process time, so the load of
other processes does not count), the validation MLM loss (the generator's for RTD) beside the unigram
and Bayes floors, and the discriminator's AUROC and accuracy gain over its all-original baseline.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from datamodules.cache import write_atomic
from experiments.measure import run_study, write_rows

# What every run shares: the tiny preset on the chain, one validation at the end on 128 held-out sequences. The
# study predates DeBERTa's enhanced mask decoder: its rows run without it (one row, rtd-deberta-emd, with it).
BASE = ["--config", "tiny", "--data.dataset", "synthetic:chain", "--data.vocab_size", "512",
        "--data.max_val_examples", "128", "--trainer.limit_val_batches", "8", "--trainer.enable_progress_bar",
        "false", "--model.init_args.warmup_fraction", "0.05", "--model.init_args.enhanced_mask_decoder", "false",
        "--wandb", "false"]
RTD = ["--model", "objectives.ReplacedTokenDetection"]
DEBERTA = ["--model.init_args.encoder", "deberta-v2"]
# The reference RTD: DeBERTa encoders, shared word embeddings, a generator of half the width and the full
# depth, lambda 50, learning rate 2e-3; every other RTD row changes one thing.
REFERENCE = [*RTD, *DEBERTA, "--model.init_args.embedding_sharing", "embeddings",
             "--model.init_args.generator_hidden_fraction", "0.5", "--model.init_args.generator_layers_fraction", "1.0",
             "--model.init_args.learning_rate", "2e-3"]


def _with(args: list[str], **changes: str) -> list[str]:
    """``args`` with ``--model.init_args.<key>`` values replaced or added."""
    out = list(args)
    for key, value in changes.items():
        flag = f"--model.init_args.{key}"
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


# name -> (what it tests, steps, arguments)
CONFIGS: dict[str, tuple[str, int, list[str]]] = {
    "mlm-electra": ("MaskedLM, ELECTRA encoder", 1000, ["--model.init_args.learning_rate", "2e-3"]),
    "mlm-deberta": ("MaskedLM, DeBERTa encoder", 1000, [*DEBERTA, "--model.init_args.learning_rate", "2e-3"]),
    "rtd-electra": ("RTD, ELECTRA encoders (else as the reference)", 1000,
                    _with(REFERENCE, encoder="electra")),
    "rtd-electra-2000": ("RTD, ELECTRA encoders, 2,000 steps, lr 3e-3", 2000,
                         _with(REFERENCE, encoder="electra", learning_rate="3e-3")),
    "rtd-deberta": ("RTD, DeBERTa: the reference", 1000, REFERENCE),
    "rtd-deberta-emd": ("the reference with DeBERTa's enhanced mask decoder", 1000,
                        _with(REFERENCE, enhanced_mask_decoder="true")),
    "rtd-deberta-official-adam": ("the reference with the official Adam (no bias correction)", 1000,
                                  _with(REFERENCE, adam_bias_correction="false")),
    "rtd-deberta-500": ("the reference, 500 steps", 500, REFERENCE),
    "rtd-deberta-2000": ("the reference, 2,000 steps", 2000, REFERENCE),
    "rtd-sharing-none": ("separate embeddings", 1000, _with(REFERENCE, embedding_sharing="none")),
    "rtd-sharing-gdes": ("gradient-disentangled sharing (GDES)", 1000, _with(REFERENCE, embedding_sharing="gdes")),
    "rtd-gen-quarter": ("generator 1/4 of the width", 1000, _with(REFERENCE, generator_hidden_fraction="0.25")),
    "rtd-gen-full": ("generator of the full width, half the depth (DeBERTa-v3's)", 1000,
                     _with(REFERENCE, generator_hidden_fraction="1.0", generator_layers_fraction="0.5")),
    "rtd-lambda-10": ("lambda 10 (DeBERTa-v3's)", 1000, _with(REFERENCE, disc_weight="10")),
    "rtd-lr-1e-3": ("learning rate 1e-3", 1000, _with(REFERENCE, learning_rate="1e-3")),
    "rtd-lr-5e-3": ("learning rate 5e-3", 1000, _with(REFERENCE, learning_rate="5e-3")),
    "rtd-mask-25": ("mask rate 0.25", 1000, _with(REFERENCE, mask_prob="0.25")),
    "rtd-batch-32": ("batch 32 (same steps: twice the tokens)", 1000, [*REFERENCE, "--data.batch_size", "32"]),
    "tiny-deberta": ("the tiny-deberta preset's recipe (GDES, lambda 10, full-width half-depth generator, "
                     "100% [MASK])", 1000, [*RTD, *DEBERTA, "--model.init_args.mask_style", "deberta",
                                            "--model.init_args.embedding_sharing", "gdes",
                                            "--model.init_args.disc_weight", "10",
                                            "--model.init_args.learning_rate", "2e-3"]),
}
COLUMNS = ["name", "what", "steps", "cpu_min", "mlm_loss", "unigram", "bayes", "auroc", "disc_gain", "disc_loss",
           "label_entropy"]


def run(name: str, out_dir: Path) -> dict:
    """One configuration, trained to its steps; its row of the table."""
    from experiments.config import parse
    from experiments.run.pretrain import pretrain

    what, steps, args = CONFIGS[name]
    cfg = parse([*BASE, *args, "--run_dir", str(out_dir / name), "--trainer.max_steps", str(steps),
                 "--trainer.val_check_interval", str(steps)])
    start = time.process_time()
    result = pretrain(cfg)
    val = result.val
    return {"name": name, "what": what, "steps": result.steps, "cpu_min": (time.process_time() - start) / 60,
            "mlm_loss": val.get("val/mlm_loss", val.get("val/gen_loss")), "unigram": val.get("val/unigram_entropy"),
            "bayes": val.get("val/bayes_mlm_loss"), "auroc": val.get("val/disc_auroc"),
            "disc_gain": val.get("val/disc_gain"), "disc_loss": val.get("val/disc_loss"),
            "label_entropy": val.get("val/disc_label_entropy")}


def rst_table(rows: list[dict]) -> str:
    """The rows as an RST list-table (what rtd/testbed.rst includes)."""
    def fmt(key, value):
        if value is None:
            return "--"
        if key == "disc_gain":
            return f"{100 * value:+.2f}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    heads = ["configuration", "steps", "CPU min", "MLM loss", "unigram", "Bayes", "AUROC", "gain (points)"]
    keys = ["what", "steps", "cpu_min", "mlm_loss", "unigram", "bayes", "auroc", "disc_gain"]
    lines = [".. list-table::", "   :header-rows: 1", "", *(f"   {'*' if i == 0 else ' '} - {h}"
                                                           for i, h in enumerate(heads))]
    for row in rows:
        lines += [f"   {'*' if i == 0 else ' '} - {fmt(k, row[k])}" for i, k in enumerate(keys)]
    return "\n".join(lines) + "\n"


def study(only: list[str] | str | None = None, out_dir: str = "runs/plateau",
          table: str = "rtd/_include/plateau_table.rst") -> int:
    """Run the plateau study's configurations (a rerun keeps the rows it has) and write its table.

    Args:
        only: Configurations to run, a list (default: all).
        out_dir: Where the runs go.
        table: The table to write.
    """
    from experiments.config import as_list
    from experiments.errors import UsageError

    names = as_list(only, "--only") or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise UsageError(f"--only: unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    csv_path = Path(out_dir) / "plateau.csv"
    rows = {r["name"]: r for r in _read(csv_path)}
    for name in names:
        rows[name] = run(name, Path(out_dir))
        print(f"[plateau] {rows[name]}", flush=True)
        write_rows(csv_path, COLUMNS, rows.values())
    ordered = [rows[n] for n in CONFIGS if n in rows]
    write_atomic(table, rst_table(ordered))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_study(study, "python -m experiments.measure.plateau", __doc__, argv)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: (float(v) if k not in ("name", "what", "steps") and v not in ("", None) else
                     int(v) if k == "steps" else v if v != "" else None) for k, v in r.items()}
                for r in csv.DictReader(f)]


if __name__ == "__main__":
    raise SystemExit(main())
