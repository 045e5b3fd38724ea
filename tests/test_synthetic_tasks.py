"""The known-answer downstream tasks: the hidden Markov source and the Bayes ceilings are exact (against brute-force
enumeration on small instances), a Bayes-optimal labeller scores the ceiling through the task's own metric code,
a random-initialised encoder stays near its floor, and the tasks run end to end through ``finetune`` and into
compare's results.md."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from datamodules.synthetic import SyntheticSpec
from datamodules.synthetic_hmm import HiddenMarkovSource, make_source
from downstream.synthetic_tasks import draw_examples, record_source, reference_levels, split_seed
from tests.helpers import mentions

SMALL_HMM = SyntheticSpec(kind="hmm", symbols=5, states=3, successors=2, emission_size=3, seed=4)
SMALL_TOPICS = SyntheticSpec(kind="chain+topics", symbols=4, successors=2, topics=3, topic_size=2, seed=3)
HMM = "synthetic:hmm"
TOPICS = "synthetic:topics,symbols=64,topics=8,topic_size=16"


def _paths(source: HiddenMarkovSource, x: np.ndarray, seen: np.ndarray) -> dict[tuple, float]:
    """P(state path, the seen symbols of x) for every state path, by the product rule."""
    out = {}
    for path in itertools.product(range(source.spec.states), repeat=len(x)):
        p = source.initial[path[0]]
        for t in range(1, len(x)):
            p *= source.transition[path[t - 1], path[t]]
        for t in range(len(x)):
            p *= source.emission[path[t], x[t]] if seen[t] else 1.0
        out[path] = p
    return out


def test_hmm_posteriors_equal_brute_force_enumeration():
    """The state posterior (all symbols seen, and some hidden) and the symbol posterior at hidden positions equal
    sums over every state path (3 states, 5 positions: 243 paths)."""
    source = make_source(SMALL_HMM)
    x, _ = source.draw(5, 5, seed=2)
    hidden = np.zeros_like(x, dtype=bool)
    hidden[:, [1, 3]] = True
    states, symbols = source.state_posterior(x), source.posterior(x, hidden)
    for b in range(len(x)):
        for seen, post in ((np.ones(5, bool), states[b]), (~hidden[b], None)):
            joint = _paths(source, x[b], seen)
            total = sum(joint.values())
            marginals = np.array([[sum(p for path, p in joint.items() if path[t] == s) / total
                                   for s in range(3)] for t in range(5)])
            if post is not None:
                np.testing.assert_allclose(post, marginals, atol=1e-12)
            else:  # a hidden symbol: its state's posterior times the emissions; a seen one: itself
                np.testing.assert_allclose(symbols[b, hidden[b]], marginals[hidden[b]] @ source.emission, atol=1e-12)
                np.testing.assert_allclose(symbols[b, ~hidden[b]], np.eye(5)[x[b, ~hidden[b]]])


def test_hmm_is_a_source_like_the_others():
    """Seeded, parsed, floors as the other kinds have them, and fingerprints of the old kinds unchanged."""
    spec = SyntheticSpec.parse("synthetic:hmm")
    a, b = make_source(spec), make_source(SyntheticSpec.parse("synthetic:hmm,seed=0"))
    assert a.examples(3, 16, seed=5) == b.examples(3, 16, seed=5)
    assert make_source(SyntheticSpec.parse("synthetic:hmm,seed=1")).examples(3, 16, 5) != a.examples(3, 16, 5)
    np.testing.assert_allclose(a.transition.sum(1), 1) and np.testing.assert_allclose(a.emission.sum(1), 1)
    assert ((a.emission > 0).sum(0) > 1).mean() > 0.9  # overlapping supports: most symbols have several states
    floors = a.floors(64, 0.15, n_sequences=64)
    assert 1.0 < floors["bayes_mlm_loss"] < floors["unigram_entropy"] < np.log(256)
    assert SyntheticSpec.parse("synthetic:chain").settings() == {"kind": "chain", "symbols": 256, "successors": 4,
                                                                "topics": 32, "topic_size": 32, "train_examples": 20000,
                                                                "seed": 0}
    assert "topics" not in spec.settings() and spec.settings()["states"] == 16
    with pytest.raises(ValueError) as info:
        SyntheticSpec.parse("synthetic:hmm,states=3,successors=4")
    mentions(str(info.value), "successors", 4, "states", 3)


def test_hmm_mlm_floor_equals_brute_force():
    """bayes_mlm_loss on a small HMM equals -log P(x_t | seen) summed by enumeration of paths and hidden symbols."""
    source = make_source(SMALL_HMM)
    x, _ = source.draw(3, 4, seed=9)
    hidden = np.zeros_like(x, dtype=bool)
    hidden[:, 2] = True
    brute = []
    for b in range(len(x)):
        joint = _paths(source, x[b], ~hidden[b])
        p = sum(pr * source.emission[path[2], x[b, 2]] for path, pr in joint.items()) / sum(joint.values())
        brute.append(-np.log(p))
    assert source.bayes_mlm_loss(x, hidden) == pytest.approx(np.mean(brute), abs=1e-12)


@pytest.mark.parametrize("hidden", ["topic", "state"])
def test_ceilings_equal_brute_force_enumeration(hidden):
    """The Bayes-optimal labeller's answers and the ceiling: argmax of the brute-force posterior (every topic, or
    every state path), on small sources."""
    source = make_source(SMALL_TOPICS if hidden == "topic" else SMALL_HMM)
    data = draw_examples(source, hidden, 12, 5, seed=7)
    x, labels = data["symbols"], data["label"]
    for b in range(len(x)):
        if hidden == "topic":  # P(z) P(x | z) by the product rule, for every topic
            joint = [source.topic_prior[z] * source.initial[z, x[b, 0]]
                     * np.prod([source.transition[z, x[b, t - 1], x[b, t]] for t in range(1, 5)])
                     for z in range(source.n_topics)]
            assert data["bayes_label"][b] == int(np.argmax(joint))
        else:
            joint = _paths(source, x[b], np.ones(5, bool))
            marginals = [[sum(p for path, p in joint.items() if path[t] == s) for s in range(3)] for t in range(5)]
            np.testing.assert_array_equal(data["bayes_label"][b], np.argmax(marginals, axis=1))
    levels = reference_levels(labels, data["bayes_label"])
    assert levels["ceiling"] == pytest.approx((data["bayes_label"] == labels).mean())
    assert levels["chance"] == pytest.approx(np.bincount(labels.ravel()).max() / labels.size)


def test_task_data_are_held_out_and_seeded():
    """Task splits are drawn with seeds no pre-training draw uses, the same on every call."""
    spec = SyntheticSpec.parse(HMM)
    source = make_source(spec)
    seeds = {tuple(split_seed(spec, s).entropy) for s in ("train", "validation", "test")}
    assert len(seeds) == 3 and all(len(e) == 3 for e in seeds)  # three words: never an integer seed's one or two
    a = draw_examples(source, "state", 4, 10, split_seed(spec, "validation"))
    b = draw_examples(source, "state", 4, 10, split_seed(spec, "validation"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    pretraining = source.sample(4, 10, seed=2 * spec.seed + 1)  # the validation draw of data seed 0
    assert not np.array_equal(a["symbols"], pretraining)


# -- through the fine-tuning code ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twins(tmp_path_factory, cache_dir, one_thread):
    """Random-initialised tiny DeBERTa encoders of the two sources, with their source recorded."""
    from experiments.measure.probes import encoder_dir

    out = {}
    for name, source in (("hmm", HMM), ("topics", TOPICS)):
        export = encoder_dir(tmp_path_factory.mktemp(name), "deberta-v2", 0, config="tiny",
                             extra=("--data.dataset", source, "--data.vocab_size", "512"))
        record_source(export, source, 64)
        out[name] = export
    return out


def test_a_bayes_labeller_scores_the_ceiling_through_the_metric_code(twins):
    """The logged val/bayes_accuracy and val/chance_accuracy are the ceiling and chance of the evaluated examples,
    and the model's own metric, fed the Bayes-optimal answers, gives the ceiling too."""
    import lightning as L

    from downstream.synthetic_tasks import SyntheticTaskDataModule, synthetic_model
    from downstream.tasks import get_task

    for task, encoder in (("synth-state-probe", twins["hmm"]), ("synth-topic-probe", twins["topics"])):
        dm = SyntheticTaskDataModule(str(encoder), task=task, max_eval_examples=128, batch_size=32)
        dm.setup("fit")
        model = synthetic_model(get_task(task))(str(encoder), task=task)
        val = dm.datasets["validation"]
        levels = reference_levels(np.array(val["labels"]), np.array(val["bayes_labels"]))
        metric = model.metric_collection()
        for batch in dm.val_dataloader():
            metric.update(batch["bayes_labels"], batch["labels"])
        assert float(metric.compute()["accuracy"]) == pytest.approx(levels["ceiling"], abs=1e-6)
        logged = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
            model, dm.val_dataloader(), verbose=False)[0]
        assert logged["val/bayes_accuracy"] == pytest.approx(levels["ceiling"], abs=1e-6)
        assert logged["val/chance_accuracy"] == pytest.approx(levels["chance"], abs=1e-6)
        assert levels["chance"] < levels["ceiling"]


def test_random_init_stays_near_its_floor(twins, tmp_path):
    """Probed through finetune(), a random-initialised encoder scores near chance on the topic (a [CLS] vector of
    random weights says little about the topic) and, on the states, no better than the symbol alone tells (its
    token vectors still carry the symbol: the Bayes accuracy given only the position's symbol), far below the
    ceiling."""
    from experiments.finetuning.finetune import finetune

    common = dict(seeds=1, wandb=False, max_train_examples=256, max_eval_examples=256, epochs=3)
    topic = finetune(str(twins["topics"]), tasks="synth-topic-probe", out_dir=str(tmp_path / "topic"), **common)
    result = topic["synth-topic-probe"]
    assert result.median < result.levels["chance"] + 15 and result.levels["ceiling"] > 90
    state = finetune(str(twins["hmm"]), tasks="synth-state-probe", out_dir=str(tmp_path / "state"), **common)
    result = state["synth-state-probe"]
    source = make_source(SyntheticSpec.parse(HMM))
    data = draw_examples(source, "state", 1000, 62, split_seed(source.spec, "validation"))
    symbol_only = ((source.initial[:, None] * source.emission).argmax(0)[data["symbols"]] == data["label"]).mean()
    assert result.median < 100 * symbol_only + 5 < result.levels["ceiling"] - 10


def test_tasks_run_end_to_end_on_an_export_and_into_results(tmp_path, cache_dir, one_thread):
    """A tiny MaskedLM pre-trained 3 steps on the hidden Markov source, exported (its isoflop.json names the
    source), fine-tuned and probed on the state task; the results carry chance and the ceiling, and compare's
    results.md shows the share of the gap closed."""
    from experiments.comparison.results import aggregate, markdown
    from experiments.finetuning.finetune import finetune
    from experiments.measure.probes import encoder_dir

    export = encoder_dir(tmp_path, "deberta-v2", 3, config="tiny", extra=("--data.dataset", HMM, "--data.vocab_size",
                                                                       "512"))
    assert json.loads((export / "isoflop.json").read_text())["data"]["dataset"] == HMM
    results = finetune(str(export), tasks=["synth-state", "synth-state-probe"], seeds=1, out_dir=str(tmp_path / "ft"),
                       wandb=False, max_steps=3, max_train_examples=32, max_eval_examples=32)
    for result in results.values():
        assert set(result.levels) == {"chance", "ceiling"} and result.levels["chance"] < result.levels["ceiling"]
    assert "gap share" in (tmp_path / "ft" / "results.md").read_text()
    tasks = {t: {"metric": r.metric, "scores": list(r.scores.values()), **r.levels} for t, r in results.items()}
    rows = [{"name": "mlm", "group": "mlm", "seed": 0, "objective": "MaskedLM", "steps": 3, "tokens": 0, "flops": 1.0,
             "val_loss": None, "val": {}, "machine": "", "tasks": tasks}]
    entry = aggregate(rows)[0]["tasks"]["synth-state-probe"]
    share = (entry["median"] - entry["chance"]) / (entry["ceiling"] - entry["chance"])
    assert entry["gap_share"] == pytest.approx(share) and entry["majority"] == entry["chance"]
    md = markdown(aggregate(rows), list(tasks), 1.0, None)
    mentions(md, "Share of the gap from chance to the Bayes ceiling", f"{entry['ceiling']:.1f}", f"{share:.3f}")


@pytest.mark.parametrize("task, source, facts", [
    ("synth-state-probe", "topics", ("synth-state-probe", "state", "synthetic:topics", "synthetic:hmm")),
    ("synth-topic", "hmm", ("synth-topic", "topic", "synthetic:hmm", "synthetic:topics")),
])
def test_a_source_without_the_structure_is_a_one_line_error(twins, task, source, facts):
    from experiments.finetuning.finetune import task_datamodule

    with pytest.raises(ValueError) as info:
        task_datamodule(str(twins[source]), task)
    assert "\n" not in str(info.value)
    mentions(str(info.value), *facts)


def test_an_encoder_without_a_recorded_source_is_a_one_line_error(twins, tmp_path):
    import shutil

    from experiments.finetuning.finetune import finetune

    bare = tmp_path / "bare"
    shutil.copytree(twins["hmm"], bare)
    (bare / "isoflop.json").unlink()
    with pytest.raises(ValueError) as info:
        finetune(str(bare), tasks="synth-state-probe", seeds=1, out_dir=str(tmp_path / "ft"), wandb=False)
    assert "\n" not in str(info.value)
    mentions(str(info.value), "isoflop.json", "record_source")
