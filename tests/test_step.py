"""The training step as a GPU needs it, checked on the CPU for every objective: packed batches hold no padding
and the encoders then get no attention mask (so SDPA may take its flash kernel), with the same losses as with
a mask of ones; a step that logs nothing reads nothing back from the device (no host-device sync); and the
whole training computation compiles as one graph that does not recompile."""

from __future__ import annotations

import itertools

import pytest
import torch

from experiments.cli import main
from objectives import (AllTokensMLM, Electra15, MaskedLM, MLMPlusRTD, ReplacedTokenDetection, ReplaceMLM,
                        ShuffledTokenDetection)
from tests.conftest import TINY_SEQ, TINY_VOCAB
from tests.dist_helpers import NoSyncGuard
from tests.helpers import error_line, mentions

OBJECTIVES = [MaskedLM, ReplacedTokenDetection, Electra15, ReplaceMLM, AllTokensMLM, MLMPlusRTD, ShuffledTokenDetection]


def tiny(cls, data, encoder: str = "electra"):
    torch.manual_seed(0)
    model = cls(size="tiny", encoder=encoder, vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, dropout=0.0)
    model.configure_model()
    model.attach_tokenizer(data.tokenizer)
    return model


def masks_seen(model) -> list:
    """Hooks recording the ``attention_mask`` every Hugging Face backbone of ``model`` is called with."""
    from transformers import PreTrainedModel

    seen: list = []
    for module in model.modules():
        if hasattr(module, "emd_hidden"):  # DeBERTa's enhanced mask decoder runs the backbone's parts itself
            def decoder(input_ids, attention_mask=None, *args, _run=module.emd_hidden, **kwargs):
                seen.append(attention_mask)
                return _run(input_ids, attention_mask, *args, **kwargs)

            module.emd_hidden = decoder
        elif isinstance(module, PreTrainedModel) and module.base_model is not module:
            module.base_model.register_forward_pre_hook(
                lambda _, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True)
    return seen


def test_packed_training_batches_hold_no_padding(tiny_data):
    """Every training example fills max_seq_length (short_seq_prob 0, the default), so every training batch is
    marked unpadded on the host; validation batches say whether they are."""
    assert {len(ids) for ids in tiny_data.train_dataset["input_ids"]} == {TINY_SEQ}
    for batch in itertools.islice(tiny_data.train_dataloader(), 20):
        assert batch["padded"] is False and bool(batch["attention_mask"].all())
    for batch in tiny_data.val_dataloader():
        assert batch["padded"] is not bool(batch["attention_mask"].all())


@pytest.mark.parametrize("encoder", ["electra", "deberta-v2"])
@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_an_unpadded_batch_runs_without_a_mask_and_loses_nothing(cls, encoder, tiny_data, one_thread):
    """The encoders get no attention mask on an unpadded batch and its mask on a padded one; on the same
    unpadded tokens, the same draws, the losses agree to float tolerance either way."""
    model = tiny(cls, tiny_data, encoder).train()
    batch = next(iter(tiny_data.train_dataloader()))
    seen = masks_seen(model)
    unmasked = model.compute(batch, torch.Generator().manual_seed(1))
    assert seen and all(mask is None for mask in seen)
    seen.clear()
    masked = model.compute({**batch, "padded": True}, torch.Generator().manual_seed(1))
    assert seen and all(mask is not None for mask in seen)
    for name, value in masked.items():
        if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
            assert torch.allclose(unmasked[name], value, rtol=1e-5, atol=1e-6), name


SYNC_RUN = ["pretrain", "--config", "tiny", "--data.max_documents", "200", "--wandb", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "20", "--trainer.log_every_n_steps", "10",
            "--trainer.val_check_interval", "20", "--trainer.limit_val_batches", "1", "--checkpoint_every", "100",
            "--trainer.callbacks+=tests.dist_helpers.NoSyncGuard"]


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_a_step_that_logs_nothing_reads_nothing_back_from_the_device(cls, tmp_path, cache_dir, one_thread, capsys):
    """20 steps of a real run, logging every 10: from the first hook of each of the 18 other steps to the
    last (forward, backward, non-finite check, clipping, optimiser step, every callback), no Tensor.item,
    tolist, __bool__, nonzero or boolean-mask indexing (tests.dist_helpers.NoSyncGuard)."""
    code = main([*SYNC_RUN, "--model", f"objectives.{cls.__name__}", "--run_dir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert NoSyncGuard.last.checked == [s for s in range(1, 21) if s % 10]


def test_the_sync_guard_finds_a_sync(tmp_path, cache_dir, one_thread, capsys, monkeypatch):
    """The guard is not vacuous: a step that reads its loss back fails the run, naming the call."""
    compute = MaskedLM.compute

    def reads_back(self, batch, rng):
        metrics = compute(self, batch, rng)
        metrics["loss"].item()
        return metrics

    monkeypatch.setattr(MaskedLM, "compute", reads_back)
    assert main([*SYNC_RUN, "--model", "objectives.MaskedLM", "--run_dir", str(tmp_path / "run")]) == 1
    mentions(error_line(capsys.readouterr().err, "pretrain", last=True), "HostSync", "item")


@pytest.mark.parametrize("cls", [MaskedLM, ReplacedTokenDetection], ids=lambda c: c.__name__)
def test_the_whole_training_step_compiles_as_one_graph_without_recompiling(cls, tiny_data, one_thread):
    """``compile_step`` (``--compile true``): torch.compile(fullgraph=True) of masking, generator, sampling,
    networks and losses, and the backward through them (AOTAutograd, its eager backend: the graph capture is
    what is checked, not inductor's code). Over 20 steps logging every 10: one graph for the steps that log
    nothing and one for those that log, both made by step 10 (the warm-up), none after; and the loss falls."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny(cls, tiny_data).train()
    model.compile_step(backend="aot_eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = itertools.cycle(list(itertools.islice(tiny_data.train_dataloader(), 4)))
    graphs, losses = [], []
    for step in range(1, 21):
        model.full_metrics = step % 10 == 0  # what training_step sets (logs_at)
        metrics = model.training_computation(next(batches))
        metrics["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        graphs.append(counters["stats"]["unique_graphs"])
        losses.append(float(metrics["loss"].detach()))
    assert graphs[:9] == [1] * 9 and graphs[9:] == [2] * 11, graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert sum(losses[-4:]) < sum(losses[:4])
