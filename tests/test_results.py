"""The statistics and the table of a comparison: medians with bootstrap intervals over pre-training and
fine-tuning seeds, paired differences, and the discriminator diagnostics in words."""

import pytest

from experiments.comparison.results import aggregate, bootstrap_median, markdown, median, paired, prior_only


def row(name, seed, scores, val=None, group=None):
    return {"name": f"{name}-s{seed}", "group": group or name, "objective": f"objectives.{name}", "seed": seed,
            "steps": 10, "tokens": 100, "flops": 1e9, "val_loss": 1.0, "val": val or {}, "curve": [],
            "tasks": {"docpair": {"metric": "accuracy", "scores": scores}}}


def test_median_and_interval():
    assert median([3, 1, 2]) == 2 and median([4, 1, 3, 2]) == 2.5
    med, lo, hi = bootstrap_median([[50, 52, 54], [60, 62, 64]])
    assert med == 57 and lo <= med <= hi
    assert lo >= 50 and hi <= 64  # a median of resampled values stays within their range
    assert bootstrap_median([[5.0, 5.0, 5.0]]) == (5.0, 5.0, 5.0)  # no spread, no interval


def test_one_seed_level_gives_a_wider_interval_than_pooling_would():
    """Fine-tuning runs of one encoder are not independent: resampling pre-training seeds first keeps
    the seed-to-seed spread in the interval."""
    nested = [[50.0, 50.5, 51.0], [60.0, 60.5, 61.0]]
    _, lo, hi = bootstrap_median(nested)
    _, flat_lo, flat_hi = bootstrap_median([[v for inner in nested for v in inner]])
    assert hi - lo > flat_hi - flat_lo


def test_paired_differences_match_seeds():
    a = {0: [50.0, 51.0], 1: [60.0, 61.0]}
    b = {0: [52.0, 54.0], 1: [59.0, 63.0]}
    assert paired(a, b) == [[2.0, 3.0], [-1.0, 2.0]]
    rows = [row("MaskedLM", s, a[s]) for s in a] + [row("ELECTRA", s, b[s]) for s in b]
    first, second = aggregate(rows)
    assert first["tasks"]["docpair"]["diff"] is None and first["seeds"] == 2
    assert second["tasks"]["docpair"]["diff"] == pytest.approx(median([2.0, 3.0, -1.0, 2.0]))
    assert second["tasks"]["docpair"]["median"] == pytest.approx(median(b[0] + b[1]))


def test_prior_only_and_what_the_table_says():
    prior = {"val/disc_auroc": 0.51, "val/disc_gain": 0.0, "val/disc_loss": 0.3848, "val/disc_label_entropy": 0.3850}
    learned = {"val/disc_auroc": 0.86, "val/disc_gain": 0.012, "val/disc_loss": 0.17, "val/disc_label_entropy": 0.25}
    assert prior_only(prior) is True and prior_only(learned) is False and prior_only({}) is None
    entries = aggregate([row("MaskedLM", 0, [50.0]), row("ELECTRA", 0, [49.0], prior),
                         row("DeBERTaRTD", 0, [55.0], learned)])
    text = markdown(entries, ["docpair"], 3.4e12, ("ELECTRA-Small at 1/16 of its schedule", 7.2e16))
    assert "1/21,176 of ELECTRA-Small at 1/16 of its schedule" in text
    assert "- ELECTRA: the discriminator learned no more than its label prior (AUROC 0.510" in text
    assert "- DeBERTaRTD: the discriminator learned beyond its label prior (AUROC 0.860, accuracy +1.20" in text
    assert "Reading the discriminator's metrics" in text
    assert "| MaskedLM | 10 | 1.000e+09 | 1.000 | - | - | 50.0 [50.0, 50.0]" in text


def test_crossover_interpolates_in_log_budget():
    from experiments.comparison.results import crossover

    assert crossover([1e12, 1e13], [-2.0, 2.0]) == pytest.approx(10 ** 12.5)
    assert crossover([1e12, 1e13, 1e14], [-3.0, -1.0, 1.0]) == pytest.approx(10 ** 13.5)
    assert crossover([1e12, 1e13], [1.0, 2.0]) is None


def test_ladder_table_reports_a_crossover_with_its_interval():
    from experiments.comparison.results import ladder_markdown

    def rungs(budget, a, b):
        return (budget, [row("MaskedLM", s, a[s]) for s in range(2)] + [row("ELECTRA", s, b[s]) for s in range(2)])

    steps = [rungs(1e12, [[60, 61, 62], [60, 62, 61]], [[50, 51, 52], [52, 50, 51]]),
             rungs(1e13, [[62, 63, 64], [63, 62, 64]], [[70, 71, 72], [71, 72, 70]])]
    for _, rows in steps:
        for r in rows:
            r["tasks"]["average"] = r["tasks"]["docpair"]
    text = ladder_markdown(steps)
    # paired median differences: -10 at 1e12, +8 at 1e13: they cross at 10 ** (12 + 10 / 18) = 3.59e12
    assert "- ELECTRA against MaskedLM: crosses at 3.59e+12 FLOPs, 95% interval [" in text


def test_a_task_every_objective_is_at_chance_on_is_named():
    entries = aggregate([row("MaskedLM", 0, [50.5, 49.0]), row("ELECTRA", 0, [51.0, 50.0])])
    text = markdown(entries, ["docpair"], 3.4e12, None)
    assert "- docpair: every objective is within 2 points of the majority baseline (50.0)" in text
    assert "reaches 75.0" in text
    entries = aggregate([row("MaskedLM", 0, [60.0, 61.0]), row("ELECTRA", 0, [51.0, 50.0])])
    assert "Tasks no encoder here reaches" not in markdown(entries, ["docpair"], 3.4e12, None)


def test_the_table_says_whether_a_masked_lm_left_the_unigram_plateau():
    on = {"val/mlm_loss": 5.95, "val/unigram_entropy": 6.22}
    off = {"val/gen_loss": 4.3, "val/unigram_entropy": 6.22, "val/disc_auroc": 0.6, "val/disc_gain": 0.01}
    text = markdown(aggregate([row("MaskedLM", 0, [50.0], on), row("ELECTRA", 0, [50.0], off)]), ["docpair"], 1e12, None)
    assert "- MaskedLM: the masked LM is still on the unigram plateau" in text and "(loss 5.950 against" in text
    assert "- ELECTRA: the generator has left the unigram plateau (loss 4.300 against a unigram level of 6.220" in text


def test_a_crossover_between_chance_level_scores_says_so():
    from experiments.comparison.results import ladder_markdown

    def rungs(budget, a, b):
        return (budget, [row("MaskedLM", s, a[s]) for s in range(2)] + [row("ELECTRA", s, b[s]) for s in range(2)])

    # docpair's majority baseline is 50.0: ELECTRA leads clearly at 1e12, both sit at chance at 1e13
    steps = [rungs(1e12, [[50, 51, 50], [51, 50, 50]], [[56, 57, 58], [57, 58, 56]]),
             rungs(1e13, [[51, 51, 52], [52, 51, 51]], [[50, 49, 50], [49, 50, 50]])]
    text = ladder_markdown(steps, ["docpair"])
    assert "- ELECTRA against MaskedLM: crosses at" in text
    assert "at 1.00e+13 FLOPs both are within 2 points of the majority baseline (50.0), so this crossing involves " \
           "chance-level scores" in text
    steps[1] = rungs(1e13, [[51, 51, 52], [52, 51, 51]], [[40, 41, 42], [41, 42, 40]])  # ELECTRA falls below chance
    assert "chance-level" not in ladder_markdown(steps, ["docpair"])
