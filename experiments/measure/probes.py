"""The probe study: which offline downstream tasks measure pre-training.

A task belongs in the offline suite only if it separates encoders by how much they learned: an encoder
pre-trained longer must beat a random-initialised one of the same shape by a clear margin. This study
pre-trains tiny MaskedLM encoders of both families on the default comparison's data (the ``default`` preset: the
embedded corpus, 8,192-token vocabulary, 128-token examples) for several lengths, exports each (and a
random-initialised one of the same shape and tokenizer), fine-tunes every encoder on every offline task
over three seeds exactly as ``isoflop compare`` does, and writes the table ``rtd/downstream.rst``
includes (``rtd/_include/probes_table.rst``)::

    python -m experiments.measure.probes                 # about an hour on one core
    python -m experiments.measure.probes --steps 0 600   # fewer pre-training lengths
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datamodules.cache import write_atomic
from experiments.measure import run_study, write_rows

TASKS = ("docpkg", "docpkg-probe", "docpair")
ENCODERS = ("electra", "deberta-v2")
COLUMNS = ["task", "encoder", "steps", "median", "min", "max", "scores"]


def encoder_dir(out: Path, encoder: str, steps: int, config: str = "default", extra: tuple[str, ...] = ()) -> Path:
    """An exported MaskedLM of ``config`` (a preset) and the encoder family after ``steps`` pre-training
    steps (0: random init)."""
    from experiments.config import parse
    from experiments.run.export import export_checkpoint
    from experiments.run.pretrain import pretrain

    export = out / f"{encoder}-{steps}" / "export"
    if (export / "config.json").exists():
        return export
    cfg = parse(["--config", config, *extra, "--model.init_args.encoder", encoder, "--run_dir", str(export.parent),
                 "--trainer.max_steps", str(max(steps, 1)), "--wandb", "false", "--trainer.enable_progress_bar",
                 "false", "--trainer.limit_val_batches", "0"])
    if steps == 0:
        return random_init(cfg, export)
    pretrain(cfg)
    export_checkpoint(export.parent / "checkpoints" / "last.ckpt", export, overwrite=True)
    return export


def random_init(cfg, export: Path) -> Path:
    """The configuration's objective untrained, with the data's tokenizer, exported; seeded with the configuration's
    ``seed_everything`` as a pre-training is, so the same weights on every call (before, each process drew its own)."""
    import lightning as L

    from datamodules.cache import replace_directory
    from experiments.config import parser

    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    init = parser().instantiate(cfg)
    model, data = init.model, init.data
    model.configure_model()
    model.attach_tokenizer(data.tokenizer)
    replace_directory(model.export, export)
    return export


def finetune_scores(export: Path, task: str, out: Path, seeds: int = 3, **options) -> list[float]:
    """Fine-tuning seeds of ``export`` on ``task``, as compare runs them at the tiny size."""
    from experiments.finetuning.finetune import finetune

    results = finetune(str(export), tasks=task, seeds=seeds, out_dir=str(out), wandb=False, **options)
    return [results[task].scores[s] for s in sorted(results[task].scores)]


def rst_table(rows: list[dict]) -> str:
    """Median [min, max] per task, encoder and pre-training length, with the gain over random init."""
    random = {(r["task"], r["encoder"]): r["median"] for r in rows if r["steps"] == 0}
    heads = ["task", "encoder", "pre-training steps", "median [min, max] over 3 seeds", "vs random init"]
    lines = [".. list-table::", "   :header-rows: 1", "", *(f"   {'*' if i == 0 else ' '} - {h}"
                                                           for i, h in enumerate(heads))]
    for r in rows:
        gain = r["median"] - random.get((r["task"], r["encoder"]), float("nan"))
        cells = [r["task"], r["encoder"], "random init" if r["steps"] == 0 else str(r["steps"]),
                 f"{r['median']:.1f} [{r['min']:.1f}, {r['max']:.1f}]", "--" if r["steps"] == 0 else f"{gain:+.1f}"]
        lines += [f"   {'*' if i == 0 else ' '} - {c}" for i, c in enumerate(cells)]
    return "\n".join(lines) + "\n"


def study(steps: list[int] | int | None = None, encoders: list[str] | str | None = None,
          tasks: list[str] | str | None = None, out_dir: str = "runs/probes",
          table: str = "rtd/_include/probes_table.rst") -> int:
    """Run the probes study (a rerun continues where it stopped) and write its table.

    Args:
        steps: Pre-training lengths, a list (0: random init; default [0, 600, 2000]).
        encoders: Encoder families, a list (default: both).
        tasks: Offline tasks, a list (default: all three).
        out_dir: Where the runs go.
        table: The table to write.
    """
    from experiments.config import as_list
    from experiments.errors import UsageError

    steps = as_list(steps, "--steps") or [0, 600, 2000]
    encoders, tasks = as_list(encoders, "--encoders") or list(ENCODERS), as_list(tasks, "--tasks") or list(TASKS)
    for option, given, known in (("--encoders", encoders, ENCODERS), ("--tasks", tasks, TASKS)):
        if set(given) - set(known):
            raise UsageError(f"{option}: unknown {sorted(set(given) - set(known))}; choose from {', '.join(known)}")
    out = Path(out_dir)
    rows = list(csv.DictReader((out / "probes.csv").open())) if (out / "probes.csv").exists() else []
    rows = [r for r in rows if r["task"] in TASKS]
    for r in rows:
        r.update(steps=int(r["steps"]), median=float(r["median"]), min=float(r["min"]), max=float(r["max"]))
    done = {(r["task"], r["encoder"], r["steps"]) for r in rows}  # a rerun continues where it stopped
    for encoder in encoders:
        for n in sorted(set(steps)):
            export = encoder_dir(out, encoder, n)
            for task in (t for t in tasks if (t, encoder, n) not in done):
                scores = finetune_scores(export, task, out / f"{encoder}-{n}" / "finetune" / task)
                rows.append({"task": task, "encoder": encoder, "steps": n, "median": sorted(scores)[1],
                             "min": min(scores), "max": max(scores), "scores": json.dumps(scores)})
                print(f"[probes] {rows[-1]}", flush=True)
                write_rows(out / "probes.csv", COLUMNS, rows)
    rows.sort(key=lambda r: (TASKS.index(r["task"]), ENCODERS.index(r["encoder"]), r["steps"]))
    write_atomic(table, rst_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_study(study, "python -m experiments.measure.probes", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
