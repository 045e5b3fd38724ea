"""Throughput logging (``experiments.run.throughput``): the peak table and where each peak comes from,
MFU, the logged keys of a real run, the opt-in compile, and fused AdamW under bf16-mixed."""

import csv
import warnings

import lightning as L
import pytest
import torch

from experiments.run import throughput
from experiments.cli import main
from objectives import MaskedLM, ReplacedTokenDetection
from objectives.optim import fused_adamw
from tests.conftest import TINY_SEQ, TINY_VOCAB
from tests.helpers import mentions
from tests.tables import list_table


# torch's name for each device of isoflop's table (torch.cuda.get_device_name), as the tests below give it.
TORCH_NAMES = {
    "NVIDIA H100 NVL": "NVIDIA H100 NVL", "NVIDIA GH200": "NVIDIA GH200 480GB", "NVIDIA H200 NVL": "NVIDIA H200 NVL",
    "NVIDIA H200 SXM": "NVIDIA H200", "NVIDIA A10": "NVIDIA A10", "NVIDIA L40S": "NVIDIA L40S", "NVIDIA L40": "NVIDIA L40",
    "NVIDIA GeForce RTX 4090": "NVIDIA GeForce RTX 4090", "AMD Instinct MI300X": "AMD Instinct MI300X",
}


def test_every_table_entry_has_a_source_and_dense_figures():
    assert {peak.name for _, peak in throughput.DEVICE_PEAKS} == set(TORCH_NAMES)
    for pattern, peak in throughput.DEVICE_PEAKS:
        assert peak.source.strip() and peak.name.strip()
        assert peak.bf16 >= peak.tf32 >= peak.fp32 > 1e12, peak.name
        assert throughput.table_peak(peak.name) is peak, f"{peak.name} is shadowed by an earlier pattern"
        assert throughput.table_peak(TORCH_NAMES[peak.name]) is peak, peak.name


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 NVL", "NVIDIA H100 NVL"), ("NVIDIA H200", "NVIDIA H200 SXM"), ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
    ("NVIDIA GH200 480GB", "NVIDIA GH200"), ("NVIDIA A10", "NVIDIA A10"), ("NVIDIA L40S", "NVIDIA L40S"),
    ("NVIDIA L40", "NVIDIA L40"), ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
    ("AMD Instinct MI300X", "AMD Instinct MI300X"),
    # Lightning's: its figures are right for these
    ("NVIDIA H100 80GB HBM3", None), ("NVIDIA H100 PCIe", None), ("NVIDIA A100-SXM4-80GB", None),
    ("NVIDIA A100 80GB PCIe", None), ("NVIDIA L4", None), ("NVIDIA A10G", None), ("Some Future GPU", None),
])
def test_device_names_find_their_entry(name, expected):
    peak = throughput.table_peak(name)
    assert (peak.name if peak else None) == expected


def cuda_named(monkeypatch, name, capability=(9, 0)):
    """Pretend the CUDA device is ``name`` (this machine has none), of compute capability ``capability``."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("name", list(TORCH_NAMES))
def test_the_table_holds_only_what_lightning_gets_wrong_or_lacks(monkeypatch, name):
    """Each device of isoflop's table is one Lightning's table has no figure for, or another one; and
    Lightning's warning about a device it does not know is not shown."""
    cuda_named(monkeypatch, TORCH_NAMES[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the test
        figure = throughput.lightning_peak(torch.device("cuda", 0), torch.bfloat16)
    assert figure != throughput.table_peak(name).bf16


def test_cuda_peak_comes_from_the_table_by_precision(monkeypatch):
    cuda_named(monkeypatch, "NVIDIA H200")
    value, source = throughput.peak_flops("cuda:0", torch.bfloat16)
    assert value == 989.5e12 and "datasheet" in source and "bf16" in source
    monkeypatch.setattr(throughput, "_tf32_allowed", lambda: False)
    assert throughput.peak_flops("cuda:0", torch.float32)[0] == 67e12
    monkeypatch.setattr(throughput, "_tf32_allowed", lambda: True)
    value, source = throughput.peak_flops("cuda:0", torch.float32)
    assert value == 494.5e12 and "tf32" in source


def test_other_devices_take_lightnings_figure(monkeypatch):
    """The devices Lightning names rightly: its figures, which are the vendors' dense ones (the H100 SXM's
    989.4 TFLOP/s bf16, 494.7 TF32, 66.9 float32), the TF32 one as Lightning decides it."""
    cuda_named(monkeypatch, "NVIDIA H100 80GB HBM3")
    value, source = throughput.peak_flops("cuda:0", torch.bfloat16)
    assert value == 989.4e12
    mentions(source, "NVIDIA H100 80GB HBM3", "bfloat16", "get_available_flops")  # the device, the type, Lightning's table
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    value, source = throughput.peak_flops("cuda:0", torch.float32)
    assert value == 494.7e12
    mentions(source, "NVIDIA H100 80GB HBM3", "tf32", "get_available_flops")
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    assert throughput.peak_flops("cuda:0", torch.float32)[0] == 66.9e12
    cuda_named(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    assert throughput.peak_flops("cuda:0", torch.bfloat16)[0] == 312e12


def test_a_device_in_no_table_is_measured_without_lightnings_warning(monkeypatch):
    cuda_named(monkeypatch, "Some Future GPU")
    monkeypatch.setattr(throughput, "measured_matmul_flops", lambda device, dtype: 5e14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, source = throughput.peak_flops("cuda:0", torch.bfloat16)
    assert value == 5e14
    mentions(source, "measured", "bfloat16", "cuda:0", "Some Future GPU")


def test_the_users_peak_wins():
    value, source = throughput.peak_flops("cpu", torch.float32, override=3e12)
    assert value == 3e12
    mentions(source, "--peak_flops")
    with pytest.raises(ValueError, match="positive"):
        throughput.peak_flops("cpu", override=0)
    with pytest.raises(ValueError, match="positive"):
        throughput.Throughput(peak_flops=-1)


def test_cpu_peak_is_measured_once():
    value, source = throughput.peak_flops("cpu", torch.float32)
    assert value > 1e8 and source.startswith("measured")
    assert throughput.peak_flops("cpu", torch.float32)[0] == value  # cached: the same measurement


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16),
                                              ("16-mixed", torch.float16), ("32-true", torch.float32),
                                              (32, torch.float32), ("64-true", torch.float64)])
def test_compute_dtype(precision, dtype):
    assert throughput.compute_dtype(precision) is dtype


def test_peak_memory_is_positive():
    assert throughput.peak_memory_gb("cpu") > 0.01


def test_a_run_logs_throughput_and_mfu_is_flops_per_s_over_the_peak(tmp_path, cache_dir, one_thread):
    run_dir = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny", "--run_dir", str(run_dir), "--data.cache_dir", str(cache_dir),
                 "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "2", "--trainer.limit_val_batches", "0",
                 "--trainer.enable_progress_bar", "false", "--wandb", "false", "--peak_flops", "2e12"]) == 0
    rows = [r for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("train/mfu")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # steps 2 and 4, logged 0-based
    for row in rows:
        values = {k: float(row[k]) for k in throughput.KEYS}
        assert all(v > 0 for v in values.values())
        assert values["train/mfu"] == pytest.approx(values["train/flops_per_s"] / 2e12, rel=1e-5)
        assert values["train/tokens_per_s"] <= values["train/flops_per_s"]


def test_compile_networks_compiles_each_backbone_once_in_place(one_thread):
    model = ReplacedTokenDetection(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ,
                                   embedding_sharing="all", generator_hidden_fraction=1.0)
    model.configure_model()
    keys = list(model.state_dict())
    assert throughput.compile_networks(model, backend="eager") == ["generator.electra"]  # "all": one backbone
    assert list(model.state_dict()) == keys  # names, checkpoints and exports are unchanged
    from experiments.measure.bench import random_batch

    model.mask_token_id.fill_(4)
    loss = model.compute(random_batch(2, TINY_SEQ, TINY_VOCAB, torch.device("cpu")), None)["loss"]
    loss.backward()
    assert torch.isfinite(loss)


def test_fused_adamw_on_cpu_and_bf16_mixed_clipping(tmp_path, tiny_data, one_thread):
    """Fused AdamW is used on the CPU, and Lightning still clips gradients under bf16-mixed with it."""
    cpu = [torch.zeros(2, requires_grad=True)]
    assert fused_adamw(cpu) and not fused_adamw([torch.zeros(2, device="meta")]) and not fused_adamw([])
    L.seed_everything(0)
    model = MaskedLM(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ)
    trainer = L.Trainer(max_steps=2, precision="bf16-mixed", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, tiny_data)
    assert trainer.global_step == 2
    assert trainer.optimizers[0].defaults["fused"] is True


def test_the_documented_table_is_the_code_table():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "rtd" / "performance.rst").read_text()
    rows = list_table(text, ["device (torch's name contains)", "bf16", "tf32", "fp32", "source"])
    documented = {row[0].split(" (``")[0]: [float(v) for v in row[1:4]] for row in rows}
    assert documented == {peak.name: [round(v / 1e12, 2) for v in (peak.bf16, peak.tf32, peak.fp32)]
                          for _, peak in throughput.DEVICE_PEAKS}
    assert [row[0].split(" (``")[0] for row in rows] == [peak.name for _, peak in throughput.DEVICE_PEAKS]
