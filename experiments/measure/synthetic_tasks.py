"""The known-answer tasks study: does pre-training on a synthetic source show in its known-answer probes?

For each source and pre-training seed, pre-trains a tiny DeBERTa-v2 MaskedLM (the ``tiny`` preset, learning rate
2e-3, warm-up 5%, no enhanced mask decoder: the plateau study's ``mlm-deberta`` row, :mod:`experiments.measure.plateau`)
for ``steps`` steps, exports it, builds its random-initialised twin (same shape, tokenizer and seed; its
``isoflop.json`` written by :func:`downstream.synthetic_tasks.record_source`), and probes both on the source's
known-answer task (``synth-state-probe`` on ``synthetic:hmm``, ``synth-topic-probe`` on ``synthetic:topics``)
through :func:`experiments.finetuning.finetune.finetune`, with the task's recipe. Prints and writes one row per
(source, seed, encoder): the score, chance, the Bayes ceiling and the share of the gap closed::

    python -m experiments.measure.synthetic_tasks                  # 2 sources x 3 seeds, some 20 CPU minutes
    python -m experiments.measure.synthetic_tasks --seeds '[0]' --steps 500
"""

from __future__ import annotations

from pathlib import Path

from datamodules.cache import write_atomic
from experiments.measure import run_study, write_rows

SOURCES = {"synthetic:hmm": "synth-state-probe", "synthetic:topics": "synth-topic-probe"}
SEQ = 64
MLM = ["--data.vocab_size", "512", "--model.init_args.encoder", "deberta-v2", "--model.init_args.learning_rate",
       "2e-3", "--model.init_args.warmup_fraction", "0.05", "--model.init_args.enhanced_mask_decoder", "false"]
COLUMNS = ["source", "task", "seed", "encoder", "score", "chance", "ceiling", "gap_share"]


def encoders(out: Path, source: str, seed: int, steps: int) -> dict[str, Path]:
    """The pre-trained export and its random-initialised twin of one source and seed."""
    from downstream.synthetic_tasks import record_source
    from experiments.measure.probes import encoder_dir

    import lightning as L

    extra = ("--data.dataset", source, *MLM, "--seed_everything", str(seed))
    folder = out / f"{source.removeprefix('synthetic:')}-seed{seed}"
    L.seed_everything(seed, verbose=False)  # the twin's initialisation (pre-training seeds its own)
    twin = encoder_dir(folder, "deberta-v2", 0, config="tiny", extra=extra)
    record_source(twin, source, SEQ)
    return {"random init": twin, f"pre-trained {steps}": encoder_dir(folder, "deberta-v2", steps, config="tiny",
                                                                   extra=extra)}


def probe(export: Path, task: str, out: Path) -> dict[str, float]:
    """The task's score (probe seed 0), chance, ceiling and gap share, in points."""
    from experiments.finetuning.finetune import finetune
    from experiments.finetuning.scores import gap_share

    result = finetune(str(export), tasks=task, seeds=1, out_dir=str(out), wandb=False)[task]
    levels = result.levels
    share = gap_share(result.median, levels["chance"], levels["ceiling"])
    return {"score": result.median, **levels, "gap_share": share}


def rst_table(rows: list[dict]) -> str:
    """Score, chance, ceiling and gap share per source, seed and encoder (the documentation's table)."""
    heads = ["source (task)", "seed", "encoder", "score", "chance", "ceiling", "gap share"]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines += [f"   {'*' if i == 0 else ' '} - {h}" for i, h in enumerate(heads)]
    for r in rows:
        cells = [f"``{r['source']}`` ({r['task']})", str(r["seed"]), r["encoder"], f"{float(r['score']):.1f}",
                 f"{float(r['chance']):.1f}", f"{float(r['ceiling']):.1f}", f"{float(r['gap_share']):.2f}"]
        lines += [f"   {'*' if i == 0 else ' '} - {c}" for i, c in enumerate(cells)]
    return "\n".join(lines) + "\n"


def study(steps: int = 1000, seeds: list[int] | None = None, sources: list[str] | None = None,
          out_dir: str = "runs/synthetic_tasks", table: str = "rtd/_include/synthetic_tasks_table.rst") -> int:
    """Run the study, print its rows (``out_dir/synthetic_tasks.csv``) and write its table.

    Args:
        steps: Pre-training steps of the pre-trained encoders.
        seeds: Pre-training seeds (``--seed_everything``; the twin's initialisation too), default [0, 1, 2].
        sources: Synthetic sources, default synthetic:hmm and synthetic:topics (each with its task).
        out_dir: Where the runs go.
        table: The table to write.
    """
    out = Path(out_dir)
    rows = []
    for source in sources or list(SOURCES):
        task = SOURCES[source.split(",")[0]]
        for seed in seeds if seeds is not None else [0, 1, 2]:
            for name, export in encoders(out, source, seed, steps).items():
                figures = probe(export, task, export.parent / "probe" / task)
                rows.append({"source": source, "task": task, "seed": seed, "encoder": name, **figures})
                print(f"[synthetic_tasks] {rows[-1]}", flush=True)
                write_rows(out / "synthetic_tasks.csv", COLUMNS, rows)
    write_atomic(table, rst_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_study(study, "python -m experiments.measure.synthetic_tasks", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
