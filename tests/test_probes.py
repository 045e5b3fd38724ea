"""The criterion an offline task must meet to be in the suite that measures pre-training: an encoder
pre-trained longer beats a random-initialised one of the same shape and tokenizer by a clear margin.
Asserted here on docpkg-probe (the frozen-encoder probe of docpkg); the figures of every task are in
the documentation's Downstream page, from ``python -m experiments.measure.probes``."""

from __future__ import annotations

from statistics import median

from downstream.tasks import OFFLINE_SUITE, get_task, resolve_tasks
from experiments.measure.probes import encoder_dir, finetune_scores


def test_the_offline_suite_is_the_probe_and_docpair():
    assert resolve_tasks("offline") == list(OFFLINE_SUITE) == ["docpkg-probe", "docpair"]
    probe = get_task("docpkg-probe")
    assert probe.probe and probe.dataset == "docpkg" and not get_task("docpkg").probe


def test_a_probe_trains_the_head_alone(tmp_path, cache_dir, one_thread):
    """The encoder of a probe keeps its weights and runs in eval mode; only the head has gradients."""
    import torch

    from downstream.classifier import SequenceClassification

    export = encoder_dir(tmp_path, "electra", 0, config="tiny")
    model = SequenceClassification(str(export), task="docpkg-probe")
    assert not any(p.requires_grad for p in model.encoder.parameters()) and not model.encoder.training
    names = {n for g in model.parameter_groups() for n in g["param_names"]}
    assert names == {"classifier.weight", "classifier.bias"}
    batch = {"input_ids": torch.randint(5, 100, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    model(batch).sum().backward()
    assert model.classifier.weight.grad is not None and all(p.grad is None for p in model.encoder.parameters())


def test_docpkg_probe_separates_a_pretrained_encoder_from_random_init(tmp_path, cache_dir, one_thread):
    """A tiny DeBERTa-v2 MaskedLM pre-trained for 800 steps on the embedded corpus (about 40 s on one core)
    against the same shape untrained, seeded alike, on docpkg-probe (the majority class is 11.8): the medians over
    probe seeds 0, 1, 2.

    Measured on the shipped corpus, pre-training seed (``--seed_everything``, which also draws the random init,
    the same on every call since experiments.measure.probes.random_init seeds it) x probe seeds 0, 1, 2, as
    pre-trained against random init:

    * seed 0: 18.2, 18.2, 18.2 against 15.0, 11.5, 12.4 (median gain 5.9; this test)
    * seed 1: 21.8, 19.1, 24.4 against 11.8, 11.5, 11.8 (10.0)
    * seed 2: 19.4, 19.1, 20.6 against 11.8, 11.8, 11.8 (7.6)
    * seed 3: 22.6, 25.0, 23.5 against 11.8, 12.1, 11.8 (11.8)
    * seed 4: 22.4, 22.6, 21.5 against 12.1, 12.6, 11.8 (10.3)

    The gain of the medians is 9.1 points on average, lowest 5.9, so the margin asserted is 4. (One probe seed
    alone is not enough: seed 0's random init reads 15.0 on probe seed 0, a gain of 3.2 only.)"""
    scores = {}
    for steps in (0, 800):
        export = encoder_dir(tmp_path, "deberta-v2", steps, config="tiny")
        scores[steps] = median(finetune_scores(export, "docpkg-probe", tmp_path / f"ft-{steps}", seeds=3,
                                               cache_dir=str(cache_dir), progress_bar=False))
    print(f"docpkg-probe: random init {scores[0]:.1f}, pre-trained 800 steps {scores[800]:.1f}")
    assert scores[800] > scores[0] + 4.0
