"""The shared pre-training datamodule: packing, caching, determinism and bad input."""

import json
import os

import pytest
import torch

from datamodules import PretrainingDataModule
from datamodules.pretraining import Packer
from tests.conftest import TINY_SEQ, TINY_VOCAB
from tests.helpers import mentions


def test_segment_layout(tiny_data):
    tok = tiny_data.tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    n_two_segments = 0
    for ex in tiny_data.train_dataset.select(range(300)):
        ids, types, special, words = ex["input_ids"], ex["token_type_ids"], ex["special_tokens_mask"], ex["word_ids"]
        assert len(ids) == len(types) == len(special) == len(words) <= TINY_SEQ
        assert ids[0] == cls and ids[-1] == sep
        seps = [i for i, t in enumerate(ids) if t == sep]
        assert len(seps) in (1, 2)
        if len(seps) == 2:  # [CLS] A [SEP] B [SEP]: type 0 up to the first [SEP], then 1
            n_two_segments += 1
            assert types == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        else:
            assert set(types) == {0}
        assert special == [1 if t in (cls, sep) else 0 for t in ids]
        assert all((w == -1) == bool(s) for w, s in zip(words, special))
    assert n_two_segments > 200  # most examples have two segments (10% are single-segment)


def test_little_padding(tiny_data):
    lengths = [len(x) for x in tiny_data.train_dataset["input_ids"]]
    assert max(lengths) == TINY_SEQ
    assert sum(lengths) / len(lengths) > 0.85 * TINY_SEQ


def test_word_ids_follow_wordpieces(tiny_data):
    """A '##' piece continues the previous token's word; every other piece starts a new word."""
    tok = tiny_data.tokenizer
    for ex in tiny_data.train_dataset.select(range(50)):
        pieces = tok.convert_ids_to_tokens(ex["input_ids"])
        words = ex["word_ids"]
        for i in range(1, len(pieces)):
            if words[i] < 0 or words[i - 1] < 0:
                continue
            if pieces[i].startswith("##"):
                assert words[i] == words[i - 1]
            else:
                assert words[i] != words[i - 1]
        real = [w for w in words if w >= 0]
        assert real == sorted(real)  # numbered in order, unique within the example


def test_batches(tiny_data):
    batch = next(iter(tiny_data.train_dataloader()))
    assert batch["input_ids"].shape == (16, TINY_SEQ)
    assert batch["special_tokens_mask"].dtype == torch.bool
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == tiny_data.tokenizer.pad_token_id).all()
    assert (batch["word_ids"][pad] == -1).all()
    assert len(tiny_data.tokenizer) == TINY_VOCAB


def test_deterministic_order(tiny_data):
    a = next(iter(tiny_data.train_dataloader()))["input_ids"]
    b = next(iter(tiny_data.train_dataloader()))["input_ids"]
    assert torch.equal(a, b)


def test_second_run_reuses_cache(tiny_data, cache_dir, monkeypatch):
    """A new datamodule with the same settings loads the packed cache: the packer never runs."""

    def fail(*args, **kwargs):
        raise AssertionError("packing ran again instead of reusing the cache")

    monkeypatch.setattr(Packer, "__call__", fail)
    dm = PretrainingDataModule(vocab_size=TINY_VOCAB, max_seq_length=TINY_SEQ, batch_size=16, max_documents=3000,
                               max_val_examples=64, cache_dir=str(cache_dir))
    dm.prepare_data()
    assert dm.train_dataset["input_ids"][:5] == tiny_data.train_dataset["input_ids"][:5]
    assert dm.train_dataset.cache_files == tiny_data.train_dataset.cache_files


def test_fingerprint_logged_fields(tiny_data):
    fp = tiny_data.fingerprint
    assert fp["source"] == "embedded" and fp["python_version"] and len(fp["sha256"]) == 64 and fp["bytes"] > 10**6


def test_local_text_files(tmp_path, cache_dir):
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(f"Document number {i} talks about apples and pears. It has a second sentence." for i in range(200)))
    dm = PretrainingDataModule(data_files=str(text), vocab_size=200, max_seq_length=32, batch_size=4,
                               cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    assert len(dm.train_dataset) > 10
    assert dm.fingerprint["source"] == "files"


def test_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        PretrainingDataModule(data_files=str(tmp_path / "nothing-here*.txt"))
    mentions(str(info.value), str(tmp_path / "nothing-here*.txt"))


def test_unknown_dataset_error(tmp_path):
    dm = PretrainingDataModule(dataset="no-such-org/no-such-dataset", cache_dir=str(tmp_path))
    with pytest.raises(ValueError) as info:
        dm.prepare_data()
    mentions(str(info.value), "no-such-org/no-such-dataset")


def test_missing_text_column(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"body": "hello there"}\n' * 50)
    with pytest.raises(ValueError) as info:  # at construction, before anything is built
        PretrainingDataModule(data_files=str(f), cache_dir=str(tmp_path))
    mentions(str(info.value), str(f), "text", "body")  # the file, the column asked for, the ones it has


def test_unigram_reference_level_of_text(tiny_data):
    """On text the unigram level is the cross-entropy of the validation tokens under the smoothed training
    unigram, special tokens left out: checked against a direct count, and below log(vocabulary)."""
    import math
    from collections import Counter

    from datamodules.pretraining import unigram_cross_entropy

    import numpy as np

    train, val = np.array([5, 5, 6, 2, 7]), np.array([5, 6, 6, 2, 3])
    p = {5: 3 / 9, 6: 2 / 9, 7: 2 / 9, 8: 1 / 9, 9: 1 / 9}  # add-one over the 5 non-special ids 5..9
    expected = -(math.log(p[5]) + 2 * math.log(p[6])) / 3  # ids 2 and 3 are special
    assert unigram_cross_entropy(train, val, 10, [0, 1, 2, 3, 4]) == pytest.approx(expected)
    level = tiny_data.floors(0.15)["unigram_entropy"]
    specials = set(tiny_data.tokenizer.all_special_ids)
    counts = Counter(t for e in tiny_data.val_dataset["input_ids"] for t in e if t not in specials)
    plug_in = -sum(c * math.log(c / sum(counts.values())) for c in counts.values()) / sum(counts.values())
    print(f"unigram level {level:.3f} nats, plug-in validation entropy {plug_in:.3f}, log V {math.log(1024):.3f}")
    assert plug_in <= level < math.log(1024)  # a cross-entropy is at least the entropy


def test_wordpiece_merges_are_learned_deterministically():
    """Characters (``##`` inside words) first, then the most frequent pair; ties go to the pair that sorts
    first; nothing merges below the minimum frequency."""
    from datamodules.tokenizer import learn_merges

    assert learn_merges({"ab": 2, "cd": 2}, size=5) == {"a", "##b", "c", "##d", "ab"}  # the tie: ("a", "##b") first
    assert learn_merges({"ab": 2, "cd": 3}, size=5) == {"a", "##b", "c", "##d", "cd"}  # the more frequent
    assert learn_merges({"abc": 3}, size=10) == {"a", "##b", "##c", "##bc", "abc"}  # ("##b", "##c") sorts first
    assert learn_merges({"ab": 1}, size=10) == {"a", "##b"}  # below min_frequency 2


def test_a_trained_tokenizer_is_the_same_in_every_process(tmp_path):
    """Two trainings in processes with different string-hash seeds give the same vocabulary (the
    ``tokenizers`` library's own trainer did not: its ties follow hash-map order)."""
    import subprocess
    import sys

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"the {w}s of {w}ing and {w}er, {w}ed by {v}" for w in ("walk", "talk", "stalk", "chalk")
                              for v in ("mode", "code", "node", "rode")))
    script = ("import sys, json; from datamodules.tokenizer import train_wordpiece; "
              "lines = open(sys.argv[1]).read().splitlines(); "
              "print(json.dumps(train_wordpiece(lines, 120).get_vocab(), sort_keys=True))")
    outputs = [subprocess.run([sys.executable, "-c", script, str(text)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outputs[0] == outputs[1] and len(json.loads(outputs[0])) == 120
