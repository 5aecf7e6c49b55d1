"""The report's statistics against scipy called directly, on hand-made per-image tables (report/stats.py,
report/pooling.py), and its plot labels."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from segbench.report.pooling import Pooled, statistics
from segbench.report.stats import bootstrap_ci, holm, paired, wilcoxon_p

RNG = np.random.default_rng(7)
BASE = {f"C{i:02d}": float(v) for i, v in enumerate(RNG.uniform(0.6, 0.95, 30))}


def test_paired_difference_of_a_known_shift():
    shifted = {c: v - 0.05 + 0.01 * math.sin(i) for i, (c, v) in enumerate(BASE.items())}
    result = paired(shifted, BASE)
    diff = np.array([shifted[c] - BASE[c] for c in sorted(BASE)])
    assert result.cases == 30 and result.mean_difference == pytest.approx(diff.mean())
    assert result.p == pytest.approx(sps.wilcoxon(diff).pvalue)
    want = sps.bootstrap((diff,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(0))
    assert result.ci == pytest.approx(tuple(want.confidence_interval))
    assert result.ci[0] < diff.mean() < result.ci[1] < 0  # the interval holds the shift, clearly below zero


def test_identical_configuration_gives_p_one_and_a_ci_containing_zero():
    result = paired(dict(BASE), BASE)
    assert result.p == 1.0 and result.ci[0] <= 0 <= result.ci[1] and result.mean_difference == 0


def test_ties_and_zero_differences_follow_scipy():
    other = dict(BASE)
    for i, c in enumerate(sorted(BASE)[:20]):  # 10 unchanged cases, 20 moved by +-0.02 with ties
        other[c] = BASE[c] + (0.02 if i % 3 else -0.02)
    diff = [other[c] - BASE[c] for c in sorted(BASE)]
    assert wilcoxon_p(diff) == pytest.approx(sps.wilcoxon(diff, zero_method="wilcox").pvalue)


def test_pairing_uses_only_shared_cases():
    half = {c: v + 0.1 for c, v in list(BASE.items())[:12]}
    assert paired(half, BASE).cases == 12 and paired(half, BASE).mean_difference == pytest.approx(0.1)


def test_bootstrap_ci_is_seeded_and_matches_scipy():
    values = list(BASE.values())
    want = sps.bootstrap((np.array(values),), np.mean, n_resamples=2000, method="BCa",
                         random_state=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(values) == pytest.approx(tuple(want)) and bootstrap_ci(values) == bootstrap_ci(values)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_holm_on_known_p_values():
    # sorted: 0.01 * 4 = 0.04, 0.02 * 3 = 0.06, 0.03 * 2 = 0.06 (monotone), 0.5 * 1 = 0.5
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    got = holm([0.04, math.nan])
    assert got[0] == pytest.approx(0.04) and math.isnan(got[1])


def pooled(name, scores, family=("kfold", 5, 0, 40), complete=True):
    return Pooled((name, "bce", ""), f"{name} / bce", family, complete, 5, {"iou": scores, "dice": scores,
                                                                               "hd95": scores})


def test_statistics_compare_with_the_best_and_correct_for_multiplicity():
    worse = {c: v - 0.03 for c, v in BASE.items()}
    same = dict(BASE)
    result = statistics([pooled("a", worse), pooled("b", BASE), pooled("c", same)], "iou")
    assert result["reference"] == "b / bce" or result["reference"] == "c / bce"
    rows = {r.label: r for r in result["rows"]}
    a = rows["a / bce"]
    assert a.difference == pytest.approx(-0.03) and a.distinguishable == "yes"
    raw = [r.p for r in result["rows"] if not math.isnan(r.p)]
    assert sorted(r.p_holm for r in result["rows"] if not math.isnan(r.p_holm)) == pytest.approx(sorted(holm(raw)))
    hd = statistics([pooled("a", worse), pooled("b", BASE)], "hd95")  # lower is better: a is the reference
    assert hd["reference"] == "a / bce"


def test_runs_of_other_split_definitions_and_incomplete_ones_are_not_paired():
    holdout = pooled("h", BASE, family=("holdout", "abc"))
    broken = pooled("f", BASE, complete=False)
    broken.note = "incomplete: 1 of 5 runs did not finish; left out of the comparison"
    result = statistics([pooled("k", BASE), holdout, broken], "iou", baseline=("k", "bce", ""))
    rows = {r.label: r for r in result["rows"]}
    assert result["reference"] == "k / bce"
    assert rows["h / bce"].distinguishable == "not paired" and math.isnan(rows["h / bce"].p)
    assert rows["f / bce"].distinguishable == "not compared"
    assert any("not paired" in n and "holdout split abc" in n for n in result["notes"])
    assert any("incomplete" in n for n in result["notes"])


def test_plot_labels_of_long_overrides_are_shortened_and_wrapped():
    from segbench.report.plots import tick_label

    label = tick_label("unet / bce / augment.strength=0.058234394064608175,optimizer.lr=0.0029417550843132763,"
                       "optimizer.weight_decay=1.7786975778767807e-05,seed=3")
    assert label == ("unet / bce / augment.strength=0.05823,\noptimizer.lr=0.002942,\n"
                     "optimizer.weight_decay=1.779e-05, seed=3")
    assert tick_label("unet / dice") == "unet / dice"
