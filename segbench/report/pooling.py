"""The report's statistics: per-image scores pooled per configuration (over seeds and folds), confidence
intervals, and paired comparisons with a reference configuration.

Pairing is by case id, and only between configurations whose runs used the same split definition:
one holdout split (same digest), or the same k-fold cross-validation (same k, seed and val size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .collect import RunRecord, describe_family
from .stats import CONFIDENCE, bootstrap_ci, holm, paired, wilcoxon_p

METRICS = {"iou": "max", "dice": "max", "hd95": "min"}  # which way is better
ALPHA = 0.05


@dataclass
class Pooled:
    """One configuration's per-case scores, averaged over seeds for each case, pooled over folds."""

    key: tuple  # (model, loss, overrides)
    label: str
    family: tuple | None  # None: its runs mix split definitions
    complete: bool  # every run of it finished
    folds: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> case -> score
    note: str = ""

    def usable(self, metric: str) -> bool:
        """Whether it takes part in comparisons on ``metric``: every run finished, one split definition, scores."""
        return self.complete and self.family is not None and bool(self.scores.get(metric))

    def mean(self, metric: str) -> float:
        values = list(self.scores.get(metric, {}).values())
        return float(np.mean(values)) if values else math.nan


@dataclass
class Comparison:
    """One configuration's row of the statistics: its pooled mean with a CI, and against the reference
    the mean per-image difference with a CI, the Wilcoxon p-value, Holm's adjustment and the verdict."""

    config: Pooled
    cases: int
    mean: float
    ci_low: float
    ci_high: float
    difference: float = math.nan
    diff_ci_low: float = math.nan
    diff_ci_high: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    distinguishable: str = ""  # reference, yes, no, not compared, not paired
    paired_cases: int = 0

    @property
    def label(self) -> str:
        return self.config.label

    def columns(self, metric: str) -> dict[str, float | int | str]:
        """The columns of summary.csv these statistics fill (the one place their names are given)."""
        return {f"pooled_{metric}": self.mean, f"pooled_{metric}_ci_low": self.ci_low,
                f"pooled_{metric}_ci_high": self.ci_high, "cases": self.cases, "difference": self.difference,
                "difference_ci_low": self.diff_ci_low, "difference_ci_high": self.diff_ci_high,
                "p_wilcoxon": self.p, "p_holm": self.p_holm, "distinguishable": self.distinguishable}

    @classmethod
    def column_names(cls, metric: str) -> list[str]:
        return list(cls(None, 0, math.nan, math.nan, math.nan).columns(metric))  # type: ignore[arg-type]


def pool(key: tuple, runs: Sequence[RunRecord]) -> Pooled:
    """Pool the per-image rows of a configuration's runs."""
    label = " / ".join(p for p in key if p)
    done = [r for r in runs if r.done and r.per_image]
    families = {r.family for r in done}
    pooled = Pooled(key, label, None, complete=len(done) == len(runs), folds=len({r.split for r in done}))
    if len(families) > 1:
        pooled.note = "its runs used different split definitions: " + "; ".join(sorted(map(describe_family, families)))
        return pooled
    if not done:
        pooled.note = "no finished run"
        return pooled
    pooled.family = families.pop()
    for metric in METRICS:
        per_case: dict[str, list[float]] = {}
        for r in done:
            for row in r.per_image:
                value = row.get(metric, math.nan)
                if not math.isnan(value):
                    per_case.setdefault(row["case"], []).append(value)
        pooled.scores[metric] = {case: float(np.mean(v)) for case, v in per_case.items()}
    if not pooled.complete:
        failed = len(runs) - len(done)
        pooled.note = f"incomplete: {failed} of {len(runs)} runs did not finish; left out of the comparison"
    return pooled


def statistics(configs: Sequence[Pooled], metric: str = "iou", baseline: tuple | None = None) -> dict:
    """Per configuration: cases, mean with its bootstrap CI; against the reference (``baseline``, or
    the best complete configuration by mean): mean difference with its CI, Wilcoxon p, Holm-adjusted p,
    and whether it is distinguishable at :data:`ALPHA`. Returns {"rows": [Comparison, ...], "reference":
    label, "notes": [...]}.
    """
    better = METRICS[metric]
    usable = [c for c in configs if c.usable(metric)]
    notes = [f"{c.label}: {c.note}" for c in configs if c.note]
    rows = []
    for c in configs:
        values = list(c.scores.get(metric, {}).values())
        low, high = bootstrap_ci(values) if c.family is not None and values else (math.nan, math.nan)
        rows.append(Comparison(c, len(values), c.mean(metric), low, high))
    if not usable:
        return {"rows": rows, "reference": None, "notes": notes}
    reference = next((c for c in usable if c.key == baseline), None) if baseline is not None else None
    if baseline is not None and reference is None:
        notes.append(f"baseline {' / '.join(p for p in baseline if p)} is not a complete configuration of "
                     "these runs; comparing with the best instead")
    if reference is None:
        reference = (max if better == "max" else min)(usable, key=lambda c: c.mean(metric))
    for row in rows:
        c = row.config
        if c is reference:
            row.distinguishable = "reference"
        elif c not in usable:
            row.distinguishable = "not compared"
        elif c.family != reference.family:
            row.distinguishable = "not paired"
            notes.append(f"{c.label} is not paired with {reference.label}: {describe_family(c.family)} "
                         f"vs {describe_family(reference.family)}")
        else:
            result = paired(c.scores[metric], reference.scores[metric])
            row.difference, (row.diff_ci_low, row.diff_ci_high) = result.mean_difference, result.ci
            row.p, row.paired_cases = result.p, result.cases
    compared = [r for r in rows if not math.isnan(r.p)]
    for r, adjusted in zip(compared, holm([r.p for r in compared])):
        r.p_holm = adjusted
        r.distinguishable = "yes" if adjusted < ALPHA else "no"
    rows.sort(key=lambda r: (math.isnan(r.mean), -r.mean if better == "max" else r.mean))
    return {"rows": rows, "reference": reference.label, "notes": notes}


def pairwise(configs: Sequence[Pooled], metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean differences (row - column) of every pair of comparable complete configurations, and their
    Holm-adjusted Wilcoxon p-values (NaN where a pair is not comparable)."""
    usable = [c for c in configs if c.usable(metric)]
    n = len(usable)
    diff, p = np.full((n, n), np.nan), np.full((n, n), np.nan)
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            if usable[i].family != usable[j].family:
                continue
            a, b = usable[i].scores[metric], usable[j].scores[metric]
            shared = [c for c in a if c in b]
            if not shared:
                continue
            d = [a[c] - b[c] for c in shared]
            diff[i, j], diff[j, i] = np.mean(d), -np.mean(d)
            pairs.append((i, j, wilcoxon_p(d)))
    for (i, j, _), adjusted in zip(pairs, holm([q for _, _, q in pairs])):
        p[i, j] = p[j, i] = adjusted
    return [c.label for c in usable], diff, p


def markdown(result: dict, metric: str) -> list[str]:
    """The statistics section of summary.md."""
    unit = "px" if metric == "hd95" else ""
    lines = [
        f"## Statistics ({metric}, per image)",
        "",
        f"Each configuration's test {metric} per image: averaged over its seeds for the same image, pooled over "
        "its folds (a k-fold cross-validation scores every case once). Mean with a "
        f"{int(CONFIDENCE * 100)} % bootstrap confidence interval over images (BCa, 2000 resamples, seeded). "
        f"Compared with {'the reference' if result['reference'] else '-'} **{result['reference'] or '-'}**: "
        "per-image differences on the same case ids (paired only within one split definition), their mean with "
        f"a {int(CONFIDENCE * 100)} % bootstrap interval, the two-sided Wilcoxon signed-rank test, and Holm's "
        f"correction across the comparisons of this report; distinguishable means Holm-adjusted p < {ALPHA}."
        + (" Lower HD95 is better." if metric == "hd95" else ""),
        "",
        f"| configuration | cases | mean {metric} [95 % CI] | difference vs reference [95 % CI] | p (Wilcoxon) "
        "| p (Holm) | distinguishable |",
        "|---|---|---|---|---|---|---|",
    ]

    def num(v: float, digits: int = 3) -> str:
        return "-" if math.isnan(v) else f"{v:.{digits}f}"

    digits = 1 if metric == "hd95" else 3
    for r in result["rows"]:
        mean = "-" if math.isnan(r.mean) else \
            f"{num(r.mean, digits)} [{num(r.ci_low, digits)}, {num(r.ci_high, digits)}]{unit}"
        diff = "-" if math.isnan(r.difference) else \
            f"{r.difference:+.{digits}f} [{r.diff_ci_low:+.{digits}f}, {r.diff_ci_high:+.{digits}f}]"
        p = "-" if math.isnan(r.p) else f"{r.p:.3g}"
        p_holm = "-" if math.isnan(r.p_holm) else f"{r.p_holm:.3g}"
        lines.append(f"| {r.label} | {r.cases} | {mean} | {diff} | {p} | {p_holm} | {r.distinguishable or '-'} |")
    if result["notes"]:
        lines += ["", *[f"- {n}" for n in result["notes"]]]
    lines += ["", "Plots: `per_image_" + metric + ".png`, `pairwise_" + metric + ".png`.", ""]
    return lines
