"""The statistics and the table of a comparison: medians with bootstrap intervals over pre-training and
fine-tuning seeds, paired differences, and the discriminator diagnostics in words."""

import pytest

from downstream.tasks import TASK_NOTES
from experiments.comparison.results import (AT_CHANCE, DOCS_PAGE, aggregate, bootstrap_median, markdown, median, paired,
                                            prior_only)
from tests.helpers import mentions, numbers
from tests.tables import markdown_rows


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
    lines = text.splitlines()
    # the budget beside the reference point: its name, and how many times the budget it is
    (reference,) = [line for line in lines if "ELECTRA-Small at 1/16 of its schedule" in line]
    mentions(reference.replace(",", ""), round(7.2e16 / 3.4e12))
    # what each discriminator learned: its AUROC and accuracy gain (points); the one that learned nothing
    # beyond its prior points to the page on reading these metrics, the other does not
    said = {name: [line for line in lines if line.startswith(f"- {name}:") and "AUROC" in line]
            for name in ("MaskedLM", "ELECTRA", "DeBERTaRTD")}
    assert [len(v) for v in said.values()] == [0, 1, 1]  # none for the objective without a discriminator
    mentions(said["ELECTRA"][0], 0.51, 0.0)
    mentions(said["DeBERTaRTD"][0], 0.86, 1.2)
    assert DOCS_PAGE in said["ELECTRA"][0] and DOCS_PAGE not in said["DeBERTaRTD"][0]
    # the table: a row per objective, its cells the values
    table = {r["objective"]: r for r in markdown_rows(text, "objective")}
    assert list(table) == ["MaskedLM", "ELECTRA", "DeBERTaRTD"]
    mlm = table["MaskedLM"]
    assert (float(mlm["steps"]), float(mlm["FLOPs"]), float(mlm["val loss"])) == (10, 1e9, 1.0)
    assert mlm["disc AUROC"] == mlm["disc gain (points)"] == "-"  # no discriminator
    assert numbers(mlm["docpair (median [95% CI])"]) == [50.0, 50.0, 50.0]  # median [lo, hi] of one score
    assert float(table["ELECTRA"]["disc AUROC"]) == 0.51 and float(table["DeBERTaRTD"]["disc gain (points)"]) == 1.2


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
    said = [line for line in text.splitlines() if line.startswith("- ELECTRA against MaskedLM")]
    assert len(said) == 2  # docpair, and the average (the same scores here)
    for line in said:
        point, lo, hi = [v for v in numbers(line) if 1e12 <= v <= 1e13]  # the crossing, then its 95% interval
        assert point == pytest.approx(10 ** (12 + 10 / 18), rel=2e-3)  # printed to three digits
        assert lo <= point <= hi


def test_a_task_every_objective_is_at_chance_on_is_named():
    entries = aggregate([row("MaskedLM", 0, [50.5, 49.0]), row("ELECTRA", 0, [51.0, 50.0])])
    text = markdown(entries, ["docpair"], 3.4e12, None)
    (said,) = [line for line in text.splitlines() if line.startswith("- docpair:")]
    mentions(said, AT_CHANCE, 50.0)  # within how many points of which majority baseline
    assert TASK_NOTES["docpair"] in said  # and what is known of the task
    entries = aggregate([row("MaskedLM", 0, [60.0, 61.0]), row("ELECTRA", 0, [51.0, 50.0])])
    assert not [line for line in markdown(entries, ["docpair"], 3.4e12, None).splitlines() if line.startswith("- docpair:")]


def test_the_table_says_whether_a_masked_lm_left_the_unigram_plateau():
    on = {"val/mlm_loss": 5.95, "val/unigram_entropy": 6.22}
    off = {"val/gen_loss": 4.3, "val/unigram_entropy": 6.22, "val/disc_auroc": 0.6, "val/disc_gain": 0.01}
    text = markdown(aggregate([row("MaskedLM", 0, [50.0], on), row("ELECTRA", 0, [50.0], off)]), ["docpair"], 1e12, None)
    said = {name: [line for line in text.splitlines() if line.startswith(f"- {name}:") and "plateau" in line]
            for name in ("MaskedLM", "ELECTRA")}
    (mlm,), (electra,) = said.values()
    mentions(mlm, 5.95, 6.22, "still")  # within PLATEAU_NATS of the unigram level: still on it
    mentions(electra, "generator", 4.3, 6.22, "left")  # the generator's loss, well below it: left it
    assert "still" not in electra and "left" not in mlm


def test_a_crossover_between_chance_level_scores_says_so():
    from experiments.comparison.results import ladder_markdown

    def rungs(budget, a, b):
        return (budget, [row("MaskedLM", s, a[s]) for s in range(2)] + [row("ELECTRA", s, b[s]) for s in range(2)])

    # docpair's majority baseline is 50.0: ELECTRA leads clearly at 1e12, both sit at chance at 1e13
    steps = [rungs(1e12, [[50, 51, 50], [51, 50, 50]], [[56, 57, 58], [57, 58, 56]]),
             rungs(1e13, [[51, 51, 52], [52, 51, 51]], [[50, 49, 50], [49, 50, 50]])]
    text = ladder_markdown(steps, ["docpair"])
    (line,) = [line for line in text.splitlines() if line.startswith("- ELECTRA against MaskedLM")]
    assert [v for v in numbers(line) if 1e12 <= v <= 1e13][0] < 1e13  # a crossing within the ladder
    mentions(line, "chance-level", 1e13, AT_CHANCE, 50.0)  # at which budget both are within how much of which baseline
    steps[1] = rungs(1e13, [[51, 51, 52], [52, 51, 51]], [[40, 41, 42], [41, 42, 40]])  # ELECTRA falls below chance
    (line,) = [line for line in ladder_markdown(steps, ["docpair"]).splitlines()
               if line.startswith("- ELECTRA against MaskedLM")]
    assert "chance-level" not in line
