"""`isoflop compare` end to end at a toy budget: equal FLOPs, results files, rerun, the notebook; sweeps."""

import csv
import json
import os
import platform

import pytest
import torch

from experiments.cli import main
from experiments.comparison.compare import PAPER_REFERENCE
from experiments.run.budget import resolve_budget
from tests.helpers import error_line, mentions, numbers
from tests.tables import markdown_rows, markdown_tables

TINY = ["--config", "tiny", "--data.batch_size", "8", "--data.max_documents", "1500", "--data.max_val_examples", "32",
        "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, cache_dir, one_thread):
    out = tmp_path_factory.mktemp("compare")
    args = ["compare", "--out_dir", str(out), "--budget_steps", "12", "--finetune.seeds", "2", "--finetune.epochs", "1",
            "--finetune.max_train_examples", "48", *TINY]
    assert main(args) == 0
    return out


def rows(out):
    with (out / "results.csv").open() as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def test_equal_flops_and_steps(compare_dir):
    results = rows(compare_dir)
    budget = json.loads((compare_dir / "compare.json").read_text())["budget_flops"]
    mlm, rtd = results["MaskedLM"], results["ReplacedTokenDetection"]
    for r in (mlm, rtd):
        flops, steps = float(r["flops"]), int(r["steps"])
        per_step = flops / steps
        assert budget <= flops < budget + per_step, r  # within one step of the budget
    # the cheaper objective takes proportionally more steps
    ratio_steps = int(mlm["steps"]) / int(rtd["steps"])
    ratio_cost = (float(rtd["flops"]) / int(rtd["steps"])) / (float(mlm["flops"]) / int(mlm["steps"]))
    assert int(mlm["steps"]) > int(rtd["steps"]) == 12  # the default budget: 12 steps of the costlier objective
    assert ratio_steps == pytest.approx(ratio_cost, rel=0.15)


def test_results_files(compare_dir):
    results = rows(compare_dir)
    for r in results.values():
        for task in ("docpkg-probe", "docpair"):
            assert float(r[f"{task}_lo"]) <= float(r[f"{task}_median"]) <= float(r[f"{task}_hi"])
        assert float(r["docpkg-probe_majority"]) < 20 and float(r["docpair_majority"]) == 50.0  # 10 classes; balanced
        assert float(r["val_loss"]) > 0 and float(r["tokens"]) > 0
    table = {r["objective"]: r for r in markdown_rows((compare_dir / "results.md").read_text(), "objective")}
    assert set(table) == {"MaskedLM", "ReplacedTokenDetection"}
    for name, r in results.items():  # results.md's table holds results.csv's values
        assert float(table[name]["steps"]) == float(r["steps"]), name
        assert float(table[name]["FLOPs"]) == pytest.approx(float(r["flops"]), rel=1e-3), name
    for png in ("val_loss_vs_flops.png", "downstream.png"):
        assert (compare_dir / png).read_bytes()[:4] == b"\x89PNG"
    assert (compare_dir / "ReplacedTokenDetection" / "export" / "generator" / "config.json").exists()
    assert list((compare_dir / "MaskedLM" / "wandb").glob("offline-run-*"))
    # every run shares the comparison's configuration: same data, same encoder size
    for name in ("MaskedLM", "ReplacedTokenDetection"):
        config = json.loads((compare_dir / name / "export" / "config.json").read_text())
        assert config["hidden_size"] == 64 and config["vocab_size"] == 1024
    # each run says what its figures were computed on, and results.md says it once for the table
    machine = json.loads((compare_dir / "MaskedLM" / "result.json").read_text())["machine"]
    mentions(machine, "1 x", "1 torch thread(s)", f"torch {torch.__version__}", f"Python {platform.python_version()}")
    mentions((compare_dir / "results.md").read_text(), f"Pre-trained on {machine}.")
    # and which recipe each objective ran: its masking and optimiser settings, as the runs resolved them
    recipes = dict(line[2:].split(": ", 1) for line in (compare_dir / "results.md").read_text().split("## Recipes")[1]
                   .splitlines() if line.startswith("- "))
    mentions(recipes["MaskedLM"], "mask_style bert", "adam_bias_correction true", "lr_schedule linear")
    mentions(recipes["ReplacedTokenDetection"], "mask_style electra", "disc_weight 50", "embedding_sharing embeddings")
    assert "enhanced_mask_decoder" not in recipes["MaskedLM"]  # DeBERTa's setting, idle on ELECTRA encoders


def test_exports_carry_model_cards_with_their_scores(compare_dir):
    """Each run's export holds a model card whose model-index gives that run's fine-tuning medians
    (finetune/results.json), and a provenance file with the run's FLOPs; the generator's card has no scores."""
    from huggingface_hub import ModelCard

    for name, r in rows(compare_dir).items():
        export = compare_dir / name / "export"
        results = json.loads((compare_dir / name / "finetune" / "results.json").read_text())
        card = ModelCard.load(export / "README.md")
        medians = {result.dataset_config: result.metric_value for result in card.data.eval_results}
        assert medians == pytest.approx({t: v["median"] for t, v in results.items() if t != "average"}, abs=1e-4)
        assert json.loads((export / "isoflop.json").read_text())["flops"]["actual"] == pytest.approx(float(r["flops"]))
    generator = ModelCard.load(compare_dir / "ReplacedTokenDetection" / "export" / "generator" / "README.md")
    assert generator.data.eval_results is None and generator.data.pipeline_tag == "fill-mask"


def test_rerun_skips_finished_runs(compare_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr("experiments.run.pretrain.pretrain", fail)
    monkeypatch.setattr("experiments.finetuning.finetune._run_one", fail)
    before = (compare_dir / "results.csv").read_text()
    assert main(["compare", "--out_dir", str(compare_dir), "--budget_steps", "12", "--finetune.seeds", "2", *TINY]) == 0
    assert (compare_dir / "results.csv").read_text() == before


def run_notebook(compare_dir) -> list:
    """The notebook executed headless on ``compare_dir``: every code cell's outputs (none an error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read("notebooks/compare_objectives.ipynb", as_version=4)
    os.environ["COMPARE_DIR"] = str(compare_dir)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    finally:
        del os.environ["COMPARE_DIR"]
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def test_notebook_runs_headless(compare_dir):
    outputs = run_notebook(compare_dir)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    auroc = float(rows(compare_dir)["ReplacedTokenDetection"]["disc_auroc"])
    said = [line for line in text.splitlines() if "ReplacedTokenDetection" in line and "AUROC" in line]
    assert said  # what the discriminator learned, in words, with the AUROC of results.csv
    mentions(said[0], round(auroc, 3))


def test_bad_objective_or_task_fails_before_compute(tmp_path, capsys):
    assert main(["compare", "--objectives", '["objectives.Nope"]', "--out_dir", str(tmp_path / "a"), *TINY]) == 2
    mentions(error_line(capsys.readouterr().err, "compare"), "objectives.Nope", "objectives.MaskedLM")  # and the choices
    assert main(["compare", "--finetune.tasks", "mrcp", "--out_dir", str(tmp_path / "b"), *TINY]) == 2
    mentions(error_line(capsys.readouterr().err, "compare"), "mrcp", "mrpc")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sweep_expansion():
    from experiments.comparison.sweep import expand

    runs = expand({"objective": ["objectives.MaskedLM", "objectives.ReplacedTokenDetection"],
                   "generator_hidden_fraction": [0.25, 0.5]})
    # MaskedLM takes no generator: its two grid points merge into one run
    assert [r.name for r in runs] == ["MaskedLM", "ReplacedTokenDetection-generator_hidden_fraction=0.25",
                                      "ReplacedTokenDetection-generator_hidden_fraction=0.5"]
    with pytest.raises(ValueError, match="no objective of the grid takes 'generator_size'"):
        expand({"objective": ["objectives.ReplacedTokenDetection"], "generator_size": [1]})


@pytest.mark.parametrize("name", ["generator-size", "mask-rate", "paper-table5"])
def test_shipped_sweeps_expand(name, capsys):
    assert main(["sweep", name, "--dry_run"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 3


def test_a_signal_stops_compare_and_the_same_command_resumes_exactly(compare_dir, tmp_path, cache_dir, one_thread):
    """SIGTERM to a real ``isoflop compare`` in its first pre-training: exit 143 with a checkpoint; the same
    command then finishes, and every run's weights and the results equal the uninterrupted comparison's."""
    import signal

    import torch

    from tests.helpers import SIGNAL_CALLBACK, mentions
    from tests.test_reliability import max_difference, signalled, stop_line

    out = tmp_path / "compare"
    args = ["compare", "--out_dir", str(out), "--budget_steps", "12", "--finetune.seeds", "2", "--finetune.epochs", "1",
            "--finetune.max_train_examples", "48", *TINY, SIGNAL_CALLBACK]
    stopped = signalled(args, 5, "SIGTERM", cache_dir, tmp_path)  # the process signals itself at step 5
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    checkpoint = out / "MaskedLM" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 5
    assert not (out / "MaskedLM" / "result.json").exists() and not (out / "ReplacedTokenDetection").exists()
    mentions(stop_line(stopped.stderr, "compare"), "SIGTERM", 5, str(checkpoint))
    assert main(args) == 0
    for name in ("MaskedLM", "ReplacedTokenDetection"):
        ours, theirs = (torch.load(d / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
                        for d in (out, compare_dir))
        assert max_difference(ours, theirs) == 0.0, name
    assert rows(out) == rows(compare_dir)


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory, cache_dir, one_thread):
    """A ladder of two budgets, each objective pre-trained with two seeds, two fine-tuning seeds each."""
    out = tmp_path_factory.mktemp("ladder")
    args = ["compare", "--out_dir", str(out), "--budgets", "[tiny:4, tiny:2]", "--pretrain_seeds", "2", "--finetune.seeds", "2",
            "--finetune.tasks", "docpkg-probe", "--finetune.epochs", "1", "--finetune.max_train_examples", "32", *TINY]
    assert main(args) == 0
    return out


def test_pretrain_seeds_and_budgets_make_a_ladder(ladder_dir):
    """Every budget is a whole comparison in its own directory; every objective is pre-trained once per
    seed (same steps and FLOPs, other weights); the statistics pool both seed levels; the ladder table
    and plot put the budgets side by side."""
    from safetensors.torch import load_file

    from experiments.comparison.results import load_ladder

    settings = json.loads((ladder_dir / "ladder.json").read_text())["budgets"]
    assert [s["budget_flops"] for s in settings] == sorted(s["budget_flops"] for s in settings)
    assert settings[1]["budget_flops"] == pytest.approx(2 * settings[0]["budget_flops"])
    for s in settings:
        out = ladder_dir / s["dir"]
        table = rows(out)
        assert set(table) == {"MaskedLM", "ReplacedTokenDetection"}
        for name, r in table.items():
            assert r["seeds"] == "2" and float(r["docpkg-probe_lo"]) <= float(r["docpkg-probe_median"]) <= float(r["docpkg-probe_hi"])
            a, b = (json.loads((out / f"{name}-seed{k}" / "result.json").read_text()) for k in (0, 1))
            assert (a["steps"], a["flops"]) == (b["steps"], b["flops"])  # seeds change what is learned, not the cost
            wa, wb = (load_file(out / f"{name}-seed{k}" / "export" / "model.safetensors") for k in (0, 1))
            assert any(not (wa[k] == wb[k]).all() for k in wa)
        assert table["ReplacedTokenDetection"]["docpkg-probe_diff"] != ""  # paired against MaskedLM
        # the paper's smallest point beside the budget: its name, and how many times this budget it is
        said = [line for line in (out / "results.md").read_text().splitlines() if PAPER_REFERENCE[0] in line]
        assert len(said) == 1
        times = resolve_budget(PAPER_REFERENCE[1]) / s["budget_flops"]
        mentions(said[0].replace(",", ""), float(f"{times:.0f}"))
    ladder = load_ladder(ladder_dir)
    assert [len(rows_) for _, rows_ in ladder] == [4, 4]
    assert all(len(r["tasks"]["docpkg-probe"]["scores"]) == 2 for _, rows_ in ladder for r in rows_)
    md = (ladder_dir / "ladder.md").read_text()
    tables = [(head, body) for head, body in markdown_tables(md) if head[0] == "objective"]
    assert len(tables) == 2  # the task, the average
    for head, body in tables:
        assert [row[0] for row in body] == ["MaskedLM", "ReplacedTokenDetection"]
        budgets = [numbers(cell)[0] for cell in head[1:]]  # a column per budget, in the ladder's order
        assert budgets == pytest.approx([s["budget_flops"] for s in settings], rel=5e-3)
    assert sum(line.startswith("- ReplacedTokenDetection against MaskedLM") for line in md.splitlines()) == 2
    assert (ladder_dir / "ladder.png").read_bytes()[:4] == b"\x89PNG"


def test_notebook_reads_a_ladder(ladder_dir):
    text = "".join(o.get("text", "") for o in run_notebook(ladder_dir))
    assert "# isoFLOP ladder" in text  # the ladder's own report, not a single comparison's
    said = [line for line in text.splitlines() if "pre-training seeds" in line]
    assert said and numbers(said[0].split("pre-training seeds", 1)[1])[0] == 2  # "pre-training seeds: 2"
