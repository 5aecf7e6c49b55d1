"""Statistics of the comparison report, on per-image scores: bootstrap confidence intervals, paired
Wilcoxon signed-rank tests, Holm's correction. scipy.stats does the statistics; this module decides
what is paired with what and keeps the bootstrap seeded, so a report is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0  # the bootstrap's generator: the same runs give the same report


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float]:
    """The ``confidence`` bootstrap interval (BCa, scipy.stats.bootstrap, seeded) of the mean of ``values``.

    Constant values (including a single one) have the degenerate interval (v, v); NaN values are left out.
    """
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    from scipy import stats  # here, not at the top: it costs most of a second, and a run needs it only for a report

    result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                             method="BCa", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa can fail on tiny or odd samples
        result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                                 method="percentile", random_state=np.random.default_rng(seed))
        low, high = result.confidence_interval
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that the paired differences are centred on 0
    (scipy.stats.wilcoxon; zero differences dropped, as Wilcoxon's original test does). Identical
    scores (every difference 0) give p = 1."""
    d = np.asarray([v for v in differences if not math.isnan(v)], dtype=float)
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    from scipy import stats

    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN ones are left out of the family and stay NaN):
    sorted ascending, p_(i) * (m - i + 1) (1-based i), made monotone, capped at 1."""
    index = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(index)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Paired:
    """One configuration against the reference, on the cases both scored."""

    cases: int
    mean_difference: float  # configuration - reference, in the metric's own unit
    ci: tuple[float, float]
    p: float


def paired(values: dict[str, float], reference: dict[str, float], seed: int = SEED) -> Paired:
    """Per-case differences ``values - reference`` over the case ids both have (NaN scores left out)."""
    shared = sorted(c for c in set(values) & set(reference)
                    if not (math.isnan(values[c]) or math.isnan(reference[c])))
    diff = [values[c] - reference[c] for c in shared]
    if not diff:
        return Paired(0, math.nan, (math.nan, math.nan), math.nan)
    return Paired(len(diff), float(np.mean(diff)), bootstrap_ci(diff, seed=seed), wilcoxon_p(diff))
