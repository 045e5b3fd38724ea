"""MaskedLM end to end: the loss falls on real text, the head sees masked positions only, export round trips."""

import lightning as L
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from objectives import MaskedLM
from objectives.masking import apply_mask, choose_positions
from tests.conftest import TINY_SEQ, TINY_VOCAB
from tests.helpers import mentions


def tiny_mlm(**kwargs):
    model = MaskedLM(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, **kwargs)
    model.configure_model()
    return model


def val_loss(model, dm, batches=4):
    model.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            if i == batches:
                break
            losses.append(model.compute(batch, model.validation_rng(i))["mlm_loss"])
    model.train()
    return torch.stack(losses).mean().item()


def fit(model, dm, steps, tmp_path, **trainer_kwargs):
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(model, dm)
    return trainer


def test_loss_falls_on_real_text(tiny_data, tmp_path):
    L.seed_everything(0)
    model = tiny_mlm(learning_rate=3e-3, warmup_fraction=0.1)
    model.attach_tokenizer(tiny_data.tokenizer)
    before = val_loss(model, tiny_data)
    fit(model, tiny_data, 60, tmp_path)
    after = val_loss(model, tiny_data)
    assert before > 6.5  # ~ln(1024) = 6.93 at initialisation
    assert after < before - 0.5, (before, after)
    assert int(model.tokens_seen) > 60 * 16 * TINY_SEQ * 0.8  # counted every step


def test_head_only_on_chosen_positions(tiny_data):
    """The logits have K = ceil(p x L) slots per row, not L, and the labels are the original tokens."""
    torch.manual_seed(0)
    model = tiny_mlm()
    model.attach_tokenizer(tiny_data.tokenizer)
    batch = next(iter(tiny_data.train_dataloader()))
    masked = choose_positions(batch["attention_mask"], batch["special_tokens_mask"], model.mask_prob)
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], masked)
    assert logits.shape == (16, masked.positions.shape[1], TINY_VOCAB)
    assert masked.positions.shape[1] < TINY_SEQ // 4


def test_export_round_trip(tiny_data, tmp_path):
    """transformers' own class, loaded from the export, reproduces the module's logits."""
    torch.manual_seed(0)
    model = tiny_mlm().eval()
    model.attach_tokenizer(tiny_data.tokenizer)
    model.export(tmp_path / "out")
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert type(hf).__name__ == "ElectraForMaskedLM"
    assert tok.get_vocab() == tiny_data.tokenizer.get_vocab()
    batch = next(iter(tiny_data.val_dataloader()))
    g = torch.Generator().manual_seed(1)
    masked = choose_positions(batch["attention_mask"], batch["special_tokens_mask"], 0.15, rng=g)
    inputs = apply_mask(batch["input_ids"], masked, model.mask_token_id, TINY_VOCAB, rng=g)
    with torch.no_grad():
        ours = model(inputs, batch["attention_mask"], batch["token_type_ids"], masked)
        theirs = hf(input_ids=inputs, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]).logits
    torch.testing.assert_close(ours, masked.gather(theirs), rtol=1e-4, atol=1e-4)
    # the output matrix is tied to the word embeddings, in ours and in the reloaded model
    assert model.model.generator_lm_head.weight is model.model.electra.embeddings.word_embeddings.weight
    assert hf.generator_lm_head.weight.data_ptr() == hf.electra.embeddings.word_embeddings.weight.data_ptr()


def test_bf16_autocast_finite(tiny_data):
    torch.manual_seed(0)
    model = tiny_mlm()
    model.attach_tokenizer(tiny_data.tokenizer)
    batch = next(iter(tiny_data.train_dataloader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute(batch, None)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_vocab_mismatch_error(tiny_data):
    model = MaskedLM(size="tiny", vocab_size=TINY_VOCAB + 1, max_position_embeddings=TINY_SEQ)
    with pytest.raises(ValueError) as info:
        model.check_data(tiny_data)
    mentions(str(info.value), "vocab_size", TINY_VOCAB, TINY_VOCAB + 1)  # the tokenizer's size, the encoder's


def test_position_limit_error(tiny_data):
    model = MaskedLM(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=32)
    with pytest.raises(ValueError) as info:
        model.check_data(tiny_data)
    mentions(str(info.value), "max_seq_length", TINY_SEQ, 32)  # the data's length, the encoder's limit


def test_bad_mask_prob_at_construction():
    with pytest.raises(ValueError) as info:
        MaskedLM(size="tiny", vocab_size=100, mask_prob=1.2)
    mentions(str(info.value), "mask_prob", 1.2)


def test_unknown_size_or_encoder():
    # each time: the value given, and the choices
    with pytest.raises(ValueError) as info:
        MaskedLM(size="huge")
    mentions(str(info.value), "huge", "electra", "tiny", "small", "base", "large")
    with pytest.raises(ValueError) as info:
        MaskedLM(size="medium", encoder="deberta-v2")
    mentions(str(info.value), "medium", "deberta-v2", "tiny", "xsmall", "small", "base", "large")
    with pytest.raises(ValueError) as info:
        MaskedLM(size="tiny", encoder="gpt")
    mentions(str(info.value), "gpt", "electra", "deberta-v2")
