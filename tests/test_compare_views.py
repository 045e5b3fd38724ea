"""A comparison seen whole: one wandb view (group, job types, tags, the summary run's table, plots and artifacts,
checked offline from the files wandb writes) and curves within each run (``--eval_every_steps``)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from experiments.cli import main
from tests.test_compare import TINY

FINETUNE = ["--finetune.seeds", "2", "--finetune.epochs", "1", "--finetune.max_train_examples", "48",
            "--finetune.tasks", "docpkg-probe"]


def records(path: Path):
    """The protobuf records of an offline wandb run file (``run-<id>.wandb``): wandb's LevelDB-style log (a 7-byte
    file header, then 32 KiB blocks of records, each a 7-byte header: checksum, length, type FULL/FIRST/MIDDLE/LAST).
    wandb 0.31 ships no reader of its own: this is how a test sees what ``wandb sync`` would upload."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # the zero padding of a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        else:
            pending = chunk if kind == 2 else pending + chunk


def wandb_runs(out: Path) -> list[dict]:
    """Every offline wandb run under ``out``: its name, group, job type, tags, artifacts and files directory."""
    runs = []
    for path in sorted(out.rglob("offline-run-*/run-*.wandb")):
        info = {"artifacts": [], "dir": path.parent}
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info.update(name=record.run.display_name, group=record.run.run_group, job_type=record.run.job_type,
                            tags=list(record.run.tags), project=record.run.project)
            elif kind == "artifact":
                info["artifacts"].append((record.artifact.type, record.artifact.name))
        runs.append(info)
    return runs


@pytest.fixture(scope="module")
def views(tmp_path_factory, cache_dir, one_thread):
    out = tmp_path_factory.mktemp("views") / "cmp"
    args = ["compare", "--out_dir", str(out), "--budget_steps", "8", "--eval_every_steps", "4", "--wandb_tags",
            "[ablation-a]", "--wandb_project", "isoflop-tests", "--wandb_log_exports", "true", "--wandb_report",
            "true", *FINETUNE, *TINY]
    assert main(args) == 0
    return out


def test_every_run_of_a_comparison_is_in_one_wandb_group(views):
    runs = wandb_runs(views)
    assert {r["group"] for r in runs} == {"compare-cmp"}
    assert {r["project"] for r in runs} == {"isoflop-tests"}
    jobs = {}
    for r in runs:
        jobs.setdefault(r["job_type"], []).append(r)
    assert set(jobs) == {"pretrain", "finetune", "summary"}
    assert sorted(r["name"] for r in jobs["pretrain"]) == ["MaskedLM", "ReplacedTokenDetection"]
    for r in jobs["pretrain"]:
        assert {f"objective:{r['name']}", "encoder:electra-tiny", "seed:0", "ablation-a"} <= set(r["tags"])
        assert any(t.startswith("budget:") for t in r["tags"])
    # Each fine-tuning: the export's objective, the task, the seed and the step of the weights it started from.
    assert len(jobs["finetune"]) == 2 * 2 * 4 - 2  # objectives x seeds x (final + 3 curve points), RTD's last is its end
    for r in jobs["finetune"]:
        objective = next(t for t in r["tags"] if t.startswith("objective:")).split(":")[1]
        assert r["name"].startswith(f"{objective}@step")
        assert {"task:docpkg-probe", "ablation-a"} <= set(r["tags"])
        assert any(t.startswith("finetune-seed:") for t in r["tags"])
        assert any(t.startswith("pretrain-step:") for t in r["tags"])


def test_the_summary_run_holds_the_table_the_plots_and_the_artifacts(views):
    summary = next(r for r in wandb_runs(views) if r["job_type"] == "summary")
    media = summary["dir"] / "files" / "media"
    table = json.loads(next((media / "table").glob("results_*.table.json")).read_text())
    with (views / "results.csv").open() as f:
        lines = list(csv.reader(f))
    assert table["columns"] == lines[0]
    assert [row[0] for row in table["data"]] == [line[0] for line in lines[1:]]
    assert next((media / "table").glob("curve_*.table.json"))
    plots = {p.name.rsplit("_", 2)[0] for p in (media / "images" / "plots").glob("*.png")}
    assert plots == {"val_loss_vs_flops", "downstream", "downstream_vs_flops"}
    kinds = [kind for kind, _ in summary["artifacts"]]
    assert kinds.count("comparison") == 1 and kinds.count("model") == 2  # the tables; each run's export


def test_a_report_is_skipped_offline_and_describes_the_comparison(views, capsys):
    from experiments.comparison.wandb_view import make_report

    assert make_report("compare-cmp").startswith("wandb report skipped: wandb is offline")
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from experiments.comparison.wandb_view import build_report

    report = build_report("compare-cmp", "isoflop-tests", "me", ["results", "curve"])
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [g.runsets[0].filters for g in grids] == ["Group = 'compare-cmp' and JobType = 'pretrain'",
                                                     "Group = 'compare-cmp' and JobType = 'summary'"]
    assert {p.x for p in grids[0].panels} == {"train/flops"}
    assert [p.table_name for p in grids[1].panels] == ["results", "curve"]


def test_curves_within_each_run(views):
    with (views / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = {}
    for r in rows:
        steps.setdefault(r["run"], []).append((int(r["step"]), float(r["flops"]), int(r["tokens"])))
    result = {name: json.loads((views / name / "result.json").read_text()) for name in steps}
    # The weights before training, every 4 steps, then the final export; FLOPs and tokens grow along the curve.
    assert [s for s, _, _ in steps["MaskedLM"]] == [0, 4, 8, result["MaskedLM"]["steps"]]
    assert [s for s, _, _ in steps["ReplacedTokenDetection"]] == [0, 4, 8]  # its 8th step is its end
    for name, points in steps.items():
        assert points[0][1:] == (0.0, 0) and points[-1][1] == pytest.approx(result[name]["flops"])
        assert all(a[1] < b[1] and a[2] < b[2] for a, b in zip(points, points[1:]))
        assert all(float(r["docpkg-probe_min"]) <= float(r["docpkg-probe_median"]) <= float(r["docpkg-probe_max"])
                   for r in rows if r["run"] == name)
    assert (views / "downstream_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A point's export carries the FLOPs its run had counted, as its model card's provenance.
    points = json.loads((views / "MaskedLM" / "checkpoints" / "curve" / "points.json").read_text())
    record = json.loads((views / "MaskedLM" / "curve" / "step-4" / "export" / "isoflop.json").read_text())
    assert record["flops"]["actual"] == next(p["flops"] for p in points if p["step"] == 4)
    assert record["training"]["steps"] == 4 and record["run_dir"] == str((views / "MaskedLM").resolve())


def test_a_rerun_trains_and_fine_tunes_nothing_again(views, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("done again")

    monkeypatch.setattr("experiments.run.pretrain.pretrain", fail)
    monkeypatch.setattr("experiments.run.export.export_checkpoint", fail)
    monkeypatch.setattr("experiments.finetuning.finetune._run_one", fail)
    before = (views / "curve.csv").read_text()
    assert main(["compare", "--out_dir", str(views), "--budget_steps", "8", "--eval_every_steps", "4", "--wandb",
                 "false", *FINETUNE, *TINY]) == 0
    assert (views / "curve.csv").read_text() == before


@pytest.mark.parametrize("given, words", [
    (["--eval_every_flops", "1e20"], ["--eval_every_flops", "no point"]),
    (["--eval_every_steps", "4", "--eval_every_flops", "1e9"], ["--eval_every_flops", "--eval_every_steps"]),
    (["--eval_every_steps", "0"], ["--eval_every_steps", "0"]),
    (["--eval_every_steps", "1", "--budget_steps", "200"], ["50", "points"]),
    (["--wandb", "false", "--wandb_report", "true"], ["--wandb_report", "--wandb false"]),
])
def test_bad_curve_or_wandb_options_fail_before_compute(tmp_path, capsys, given, words):
    assert main(["compare", "--out_dir", str(tmp_path / "out"), *TINY, *given]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "out" / "MaskedLM").exists()


def test_curve_checkpoints_hold_the_weights_after_their_step(tmp_path, cache_dir, one_thread):
    import torch

    run = tmp_path / "run"
    assert main(["pretrain", *TINY, "--trainer.max_steps", "6", "--trainer.accumulate_grad_batches", "2",
                 "--eval_every_steps", "3", "--run_dir", str(run), "--wandb", "false"]) == 0
    curve = run / "checkpoints" / "curve"
    points = json.loads((curve / "points.json").read_text())
    assert [p["step"] for p in points] == [0, 3, 6]  # optimiser steps, not the micro-batches of the accumulation
    assert [p["tokens"] for p in points] == [0, 3 * 2 * 8 * 64, 6 * 2 * 8 * 64]
    # The point at the last step holds exactly the final weights (saved after that step's optimiser step).
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    at_six = torch.load(curve / "step-6.ckpt", map_location="cpu", weights_only=False)
    assert "optimizer_states" not in at_six  # weights only: for evaluation, not for resuming
    assert last.keys() == at_six["state_dict"].keys()
    assert all(torch.equal(last[k], at_six["state_dict"][k]) for k in last)
    at_three = torch.load(curve / "step-3.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not all(torch.equal(last[k], at_three[k]) for k in last)
