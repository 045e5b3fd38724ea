"""Shuffled-token detection: the input is a permutation of the original within the chosen positions,
the labels are exactly the tokens that changed, and the discriminator learns to find them."""

import lightning as L
import torch

from objectives import ShuffledTokenDetection
from objectives.base import DETECTION
from tests.conftest import TINY_SEQ, TINY_VOCAB


def tiny(tokenizer, **kwargs):
    model = ShuffledTokenDetection(size="tiny", vocab_size=TINY_VOCAB, max_position_embeddings=TINY_SEQ, **kwargs)
    model.configure_model()
    model.attach_tokenizer(tokenizer)
    return model


def test_shuffle_permutes_the_chosen_tokens(tiny_data):
    batch = next(iter(tiny_data.train_dataloader()))
    model = tiny(tiny_data.tokenizer)
    masked, shuffled = model.shuffle(batch, torch.Generator().manual_seed(0))
    original = batch["input_ids"]
    assert not ((shuffled != original) & ~masked.chosen).any()  # only chosen positions change
    for row in range(original.shape[0]):  # ... and they keep their tokens, in another order
        chosen = masked.chosen[row]
        assert sorted(shuffled[row][chosen].tolist()) == sorted(original[row][chosen].tolist())
    assert (shuffled != original).float().sum() > 0.5 * masked.chosen.float().sum()  # most tokens move


def test_short_run_learns_the_label_prior(tiny_data, tmp_path, one_thread):
    """A moved token has the same unigram statistics as the tokens around it, so spotting it takes
    context; in a short CPU run a tiny discriminator learns the label prior (its loss falls from
    ln 2 to the entropy of the replaced share), as ELECTRA's does against generator samples."""
    import math

    L.seed_everything(0)
    model = tiny(tiny_data.tokenizer, learning_rate=3e-3, warmup_fraction=0.1)
    trainer = L.Trainer(max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)

    def validate():
        model.eval()
        with torch.no_grad():
            metrics = [model.compute(b, model.validation_rng(i)) for i, b in enumerate(tiny_data.val_dataloader())]
        model.train()
        return {k: sum(m[k].item() for m in metrics) / len(metrics) for k in metrics[0] if k != DETECTION}

    before = validate()
    trainer.fit(model, tiny_data)
    after = validate()
    p = after["replaced_frac"]
    prior_entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert before["disc_loss"] > 0.5 and after["disc_loss"] < prior_entropy + 0.02, (before, after, prior_entropy)
