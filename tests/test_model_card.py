"""Model cards and provenance of exports, their downstream scores, and ``--push_to_hub``: a tiny ELECTRA run
exported, its cards parsed with ``huggingface_hub``, its provenance against the checkpoint, publishing refused
offline and without a token before any compute, and uploads recorded through a stand-in ``HfApi``. CPU, seeded,
offline."""

import json
import shutil
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from experiments.cli import main
from experiments.comparison.results import card_scores
from experiments.run.model_card import add_downstream, read_provenance
from experiments.run.provenance import flops_record, git_state
from tests.helpers import error_line, mentions

RTD = "objectives.ReplacedTokenDetection"
QUICK = ["--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps",
         "1", "--wandb", "false", "--trainer.precision", "32-true"]
# A tiny compare's run as far as planning (tests/test_compare.py's settings).
TINY_COMPARE = ["--config", "tiny", "--data.batch_size", "8", "--data.max_documents", "1500",
                "--trainer.enable_progress_bar", "false"]
# One run's fine-tuning results as compare saves them (finetune/results.json), a GLUE task among them.
RESULTS = {
    "docpair": {"metric": "accuracy", "median": 55.0, "min": 50.0, "max": 60.0, "std": 5.0,
                "scores": [50.0, 55.0, 60.0]},
    "mrpc": {"metric": "accuracy", "median": 70.0, "min": 68.0, "max": 75.0, "std": 3.6, "scores": [68.0, 70.0, 75.0]},
    "cola": {"metric": "mcc", "median": 10.0, "min": 0.0, "max": 20.0, "std": 10.0, "scores": [0.0, 10.0, 20.0]},
    "average": {"metric": "mean of task medians", "median": 45.0, "min": 39.3, "max": 51.7, "std": 6.2,
                "scores": [39.3, 45.0, 51.7]},
}


@pytest.fixture(scope="module")
def rtd_run(tmp_path_factory, cache_dir, one_thread):
    """A tiny ELECTRA run of 2 steps: its run directory (checkpoint, run.json, result.json, csv logs)."""
    run_dir = tmp_path_factory.mktemp("card") / "run"
    assert main(["pretrain", "--config", "tiny", "--model", RTD, "--run_dir", str(run_dir), "--data.cache_dir",
                 str(cache_dir), "--trainer.max_steps", "2", *QUICK]) == 0
    return run_dir


@pytest.fixture(scope="module")
def exported(rtd_run):
    out = rtd_run.parent / "export"
    assert main(["export", str(rtd_run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    return out


@pytest.fixture
def hub_online(monkeypatch, tmp_path):
    """Offline mode off and no saved token (the tests' machine has neither network nor login)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


class RecordingApi:
    """A stand-in for ``huggingface_hub.HfApi`` that records every call instead of reaching the Hub."""

    calls: list[tuple] = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def whoami(self):
        RecordingApi.calls.append(("whoami", self.token))
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, kwargs.get("exist_ok")))

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        RecordingApi.calls.append(("upload_folder", repo_id, folder_path, ignore_patterns, files))


@pytest.fixture
def recording_hub(hub_online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    return RecordingApi.calls


def test_every_network_has_a_card_the_hub_parses(exported, rtd_run):
    """The discriminator's and the generator's cards load with ModelCard, with valid metadata: library, tags,
    the fill-mask pipeline for the generator only, and the run's FLOPs, objective and steps in the text."""
    result = json.loads((rtd_run / "result.json").read_text())
    networks = ((exported, None, "discriminator"), (exported / "generator", "fill-mask", "generator"))
    for folder, pipeline, role in networks:
        card = ModelCard.load(folder / "README.md")
        assert isinstance(card.data, ModelCardData)
        meta = card.data.to_dict()
        assert meta["library_name"] == "transformers" and meta.get("pipeline_tag") == pipeline
        assert {"isoflop", "electra", "replaced-token-detection", role} <= set(meta["tags"])
        assert "model-index" not in meta  # no downstream scores yet
        ModelCard(str(card))  # the text round-trips
        mentions(card.text, "ReplacedTokenDetection", f"{result['flops']:.4e}", "Clark et al. 2020")
        mentions(card.text, result["steps"], f"{result['tokens']:,}")


def test_provenance_is_the_checkpoints(exported, rtd_run):
    """isoflop.json holds the checkpoint's class path, hyper-parameters, steps, tokens and FLOPs count, the run
    directory's seed, configuration and data fingerprint, the tokenizer's hash, and the FLOPs in the convention
    the run did not count as ``isoflop flops`` gives them for the same configuration."""
    from transformers import AutoTokenizer

    from datamodules.tokenizer import tokenizer_hash
    from experiments.config import parse
    from experiments.run.budget import step_flops

    saved = torch.load(rtd_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    record = read_provenance(exported)
    assert record["objective"]["class_path"] == saved["isoflop"]["class_path"]
    assert record["objective"]["name"] == "ReplacedTokenDetection"
    assert record["objective"]["hyper_parameters"] == json.loads(json.dumps(saved["hyper_parameters"]))
    assert record["data"]["hyper_parameters"] == json.loads(json.dumps(saved["datamodule_hyper_parameters"]))
    assert record["training"]["steps"] == saved["global_step"] == 2
    assert record["training"]["tokens"] == int(saved["state_dict"]["tokens_seen"])
    counter = next(v for k, v in saved["callbacks"].items() if k.startswith("FlopsBudget"))
    assert record["flops"]["counted_convention"] == "actual" and record["flops"]["actual"] == counter["total"]
    run_info = json.loads((rtd_run / "run.json").read_text())
    assert record["config"] == run_info["config"] and record["training"]["seed_everything"] == 0
    logged = yaml.safe_load((rtd_run / "csv" / "hparams.yaml").read_text())["data_fingerprint"]
    assert record["data"]["fingerprint"] == logged and record["data"]["source"] == "embedded"
    assert record["tokenizer"]["hash"] == tokenizer_hash(AutoTokenizer.from_pretrained(exported))
    assert record["encoder"]["family"] == "electra" and record["encoder"]["size"] == "tiny"
    config = parse(["--config", "tiny", "--model", RTD])
    for convention in ("actual", "paper"):
        assert record["flops"][convention] == pytest.approx(2 * step_flops(config, convention), rel=1e-12)
    assert record["not_recorded"] == {}
    assert (exported / "generator" / "isoflop.json").exists()
    assert read_provenance(exported / "generator")["network"]["architecture"] == "ElectraForMaskedLM"


def test_a_checkpoint_outside_its_run_directory_says_what_is_not_recorded(rtd_run, tmp_path, capsys):
    """A checkpoint copied away from its run: the seed, the configuration and the fingerprint are null, and the
    file and the card say so."""
    lone = tmp_path / "lone.ckpt"
    shutil.copy(rtd_run / "checkpoints" / "last.ckpt", lone)
    assert main(["export", str(lone), str(tmp_path / "out")]) == 0
    record = read_provenance(tmp_path / "out")
    assert record["run_dir"] is None and record["config"] is None and record["training"]["seed_everything"] is None
    assert record["data"]["fingerprint"] is None and record["training"]["steps"] == 2
    assert {"config", "training.seed_everything", "data.fingerprint"} <= set(record["not_recorded"])
    mentions(ModelCard.load(tmp_path / "out" / "README.md").text, "not recorded")


def test_downstream_scores_in_the_card_metadata(exported, tmp_path, monkeypatch):
    """The main network's card rewritten with one run's scores (as compare does): a model-index that
    huggingface_hub parses back, one result per task at its median, the mean and interval in the text; the
    generator's card carries none. A rewrite that fails leaves the cards as they were."""
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    scores = card_scores(RESULTS)
    add_downstream(out, scores)
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == card.data.model_name == "isoflop-replaced-token-detection-electra-tiny" and card.data.eval_results
    by_task = {r.dataset_config: r for r in results}
    assert set(by_task) == {"docpair", "mrpc", "cola"}  # the average is no dataset
    assert by_task["mrpc"].dataset_type == "nyu-mll/glue" and by_task["cola"].metric_type == "matthews_correlation"
    for task, result in by_task.items():
        assert result.metric_value == pytest.approx(scores["tasks"][task]["median"], abs=1e-4)
        assert result.metric_value == pytest.approx(RESULTS[task]["median"])  # three seeds: the middle one
    mentions(card.text, f"{scores['tasks']['average']['mean']:.2f}", f"{scores['tasks']['mrpc']['lo']:.2f}")
    assert read_provenance(out)["downstream"]["tasks"]["mrpc"]["scores"] == [68.0, 70.0, 75.0]
    assert "model-index" not in ModelCard.load(out / "generator" / "README.md").data.to_dict()

    before = (out / "README.md").read_text()
    monkeypatch.setattr("experiments.run.model_card.render_card", lambda record: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        add_downstream(out, card_scores({"docpair": RESULTS["docpair"]}))
    assert (out / "README.md").read_text() == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left


@pytest.mark.parametrize("hub_state", ["offline", "no token"])
def test_push_to_hub_is_refused_in_one_line_before_any_compute(hub_state, rtd_run, tmp_path, monkeypatch, capsys,
                                                                request):
    """Offline (the tests' HF_HUB_OFFLINE=1) or without a token, export and compare with --push_to_hub fail in one
    line naming what is wrong and what to do, exit code 2, within seconds: no checkpoint read, no run directory."""
    if hub_state == "no token":
        request.getfixturevalue("hub_online")

    def never(*args, **kwargs):
        raise AssertionError("computed before the hub was checked")

    monkeypatch.setattr("experiments.run.export.load_saved", never)
    monkeypatch.setattr("experiments.comparison.compare.check_runs", never)
    expected = "HF_HUB_OFFLINE" if hub_state == "offline" else "HF_TOKEN"
    commands = {"export": ["export", str(rtd_run / "checkpoints" / "last.ckpt"), str(tmp_path / "out"), "--push_to_hub",
                           "someone/tiny-electra"],
                "compare": ["compare", "--out_dir", str(tmp_path / "cmp"), "--push_to_hub", "someone/tiny",
                            *TINY_COMPARE]}
    for command, argv in commands.items():
        start = time.perf_counter()
        assert main(argv) == 2
        elapsed = time.perf_counter() - start
        line = error_line(capsys.readouterr().err, command)
        mentions(line, "--push_to_hub", expected)
        assert (hub_state == "offline") == ("HF_HUB_OFFLINE" in line)
        assert elapsed < 10, f"{command} took {elapsed:.1f} s to refuse"
    assert not (tmp_path / "out").exists() and not (tmp_path / "cmp").exists()


def test_export_push_uploads_one_repository_per_network(recording_hub, rtd_run, tmp_path, capsys):
    """isoflop export --push_to_hub ORG/NAME: the token checked with the Hub first, then ORG/NAME for the
    discriminator (without the generator's directory) and ORG/NAME-generator, each with its card; the cards
    load from those repositories."""
    out = tmp_path / "out"
    assert main(["export", str(rtd_run / "checkpoints" / "last.ckpt"), str(out), "--push_to_hub",
                 "someone/tiny-electra"]) == 0
    assert recording_hub[0] == ("whoami", "hf_test_token")
    assert [c[1:3] for c in recording_hub if c[0] == "create_repo"] == [("someone/tiny-electra", True),
                                                                      ("someone/tiny-electra-generator", True)]
    uploads = [c[1:] for c in recording_hub if c[0] == "upload_folder"]
    assert [(repo, folder, ignore) for repo, folder, ignore, _ in uploads] == [
        ("someone/tiny-electra", str(out), ["generator/*"]),
        ("someone/tiny-electra-generator", str(out / "generator"), None)]
    assert all({"README.md", "isoflop.json", "config.json", "model.safetensors"} <= set(files) for *_, files in uploads)
    mentions(capsys.readouterr().out, "https://huggingface.co/someone/tiny-electra-generator")
    mentions((out / "README.md").read_text(), '"someone/tiny-electra"')
    assert read_provenance(out / "generator")["network"]["hub_repo"] == "someone/tiny-electra-generator"


def test_compare_push_plans_one_repository_per_run(recording_hub, tmp_path, capsys):
    """isoflop compare --push_to_hub ORG/PREFIX --dry_run: the Hub checked, each run's repository named
    (ORG/PREFIX-<run>; -budget-<FLOPs> on a ladder), nothing created, uploaded or trained."""
    argv = ["compare", "--out_dir", str(tmp_path / "cmp"), "--push_to_hub", "someone/pre", "--dry_run", *TINY_COMPARE]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    mentions(printed, "someone/pre-masked-lm", "someone/pre-replaced-token-detection")
    assert main([*argv, "--budgets", "[tiny:3, tiny:6]"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("someone/pre-masked-lm-budget-") == 2
    assert [c[0] for c in recording_hub] == ["whoami", "whoami"] and not (tmp_path / "cmp").exists()


def test_bad_repository_names_are_refused(recording_hub, tmp_path, capsys):
    for target in ("no-namespace", "someone/a--b", "someone/" + "x" * 90):
        assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"), "--push_to_hub", target]) == 2
        mentions(error_line(capsys.readouterr().err, "export"), "--push_to_hub")
    assert recording_hub == []  # refused before the token or the Hub were asked


def test_flops_in_the_other_convention_only_where_every_step_cost_the_same():
    """A DeBERTa encoder has no paper-convention count, and two-stage ELECTRA's step cost changes mid-run: both
    leave the convention the run did not count null, saying why."""
    from objectives import MaskedLM, ReplacedTokenDetection

    saved = {"callbacks": {"FlopsBudget{'budget': None, 'convention': 'actual'}": {"total": 1e12}},
             "datamodule_hyper_parameters": {"batch_size": 8, "max_seq_length": 64}}
    with torch.device("meta"):
        deberta = MaskedLM(size="tiny", encoder="deberta-v2", vocab_size=1024, max_position_embeddings=64)
        two_stage = ReplacedTokenDetection(size="tiny", vocab_size=1024, max_position_embeddings=64, two_stage=True,
                                           generator_hidden_fraction=1.0, generator_layers_fraction=1.0,
                                           embedding_sharing="none")
        electra = MaskedLM(size="tiny", vocab_size=1024, max_position_embeddings=64)
    for module, why in ((deberta, "ELECTRA/BERT encoders"), (two_stage, "two-stage")):
        record = flops_record(module, saved)
        assert record["actual"] == 1e12 and record["paper"] is None and why in record["how"]["paper"]
    record = flops_record(electra, saved)
    assert record["paper"] == pytest.approx(1e12 * electra.flops_per_batch(8, 64, "paper")
                                            / electra.flops_per_batch(8, 64, "actual"))


def test_a_deberta_masked_lm_with_the_decoder_is_no_fill_mask_model(tiny_data, tmp_path):
    """A DeBERTa MaskedLM with the enhanced mask decoder, exported from a checkpoint without a FLOPs counter: no
    fill-mask pipeline (AutoModelForMaskedLM would load it without the decoder), isoflop's class in the loading
    code, and FLOPs not recorded, saying why."""
    from experiments.run.model_card import write_cards
    from experiments.run.provenance import provenance
    from objectives import MaskedLM
    from tests.conftest import TINY_SEQ, TINY_VOCAB

    module = MaskedLM(size="tiny", encoder="deberta-v2", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ)
    module.configure_model()
    module.attach_tokenizer(tiny_data.tokenizer)
    saved = {"isoflop": {"class_path": "objectives.mlm.MaskedLM"}, "hyper_parameters": dict(module.hparams),
             "global_step": 0, "state_dict": {"tokens_seen": torch.tensor(0)}}
    record = provenance(module, saved, tmp_path / "elsewhere.ckpt")
    module.export(tmp_path / "out")
    write_cards(tmp_path / "out", record)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag is None and {"deberta-v2", "bert", "masked-lm"} <= set(card.data.tags)
    mentions(card.text, "DebertaV2ForMaskedLMWithEMD", "AutoModelForMaskedLM", "not recorded")
    assert read_provenance(tmp_path / "out")["flops"]["actual"] is None
    assert {"flops.actual", "flops.paper"} <= set(read_provenance(tmp_path / "out")["not_recorded"])


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    assert git_state(str(tmp_path)) == (None, None)


def test_local_data_files_are_named_whether_one_path_or_several():
    from experiments.run.model_card import _data

    assert _data({"source": "files", "data_files": "/x/corpora/pypi-docs.jsonl.xz"}) == "local files: `pypi-docs.jsonl.xz`"
    assert _data({"source": "files", "data_files": ["/a/1.txt", "/b/2.txt"]}) == "local files: `1.txt`, `2.txt`"
