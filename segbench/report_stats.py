"""The report's statistics: per-image scores pooled per configuration (over seeds and folds), confidence
intervals, paired comparisons with a reference configuration, and their plots.

Pairing is by case id, and only between configurations whose runs used the same split definition:
one holdout split (same digest), or the same k-fold cross-validation (same k, seed and val size).
"""
from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .stats import CONFIDENCE, bootstrap_ci, holm, paired, wilcoxon_p  # noqa: E402

METRICS = {"iou": "max", "dice": "max", "hd95": "min"}  # which way is better
ALPHA = 0.05


def split_family(split: dict) -> tuple:
    """What makes two runs' test sets comparable: the same holdout split, or folds of the same k-fold."""
    if split.get("strategy") == "kfold":
        return ("kfold", split.get("k"), split.get("seed"), len(split.get("val", [])))
    return ("holdout", split.get("digest"))


def describe_family(family: tuple) -> str:
    if family[0] == "kfold":
        return f"{family[1]}-fold cross-validation (split seed {family[2]})"
    return f"holdout split {family[1]}"


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


def pool(key: tuple, runs: Sequence[dict]) -> Pooled:
    """Pool the per-image rows of a configuration's runs (rows of :func:`segbench.report.load_run`)."""
    label = " / ".join(p for p in key if p)
    done = [r for r in runs if r["status"] == "done" and r["per_image"]]
    families = {r["family"] for r in done}
    pooled = Pooled(key, label, None, complete=len(done) == len(runs), folds=len({r["split"] for r in done}))
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
            for row in r["per_image"]:
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
    and whether it is distinguishable at :data:`ALPHA`. Returns {"rows": [...], "reference": label, "notes": [...]}.
    """
    better = METRICS[metric]
    usable = [c for c in configs if c.complete and c.family is not None and c.scores.get(metric)]
    notes = [f"{c.label}: {c.note}" for c in configs if c.note]
    rows = []
    for c in configs:
        values = list(c.scores.get(metric, {}).values())
        low, high = bootstrap_ci(values) if c.family is not None and values else (math.nan, math.nan)
        rows.append({"config": c, "label": c.label, "cases": len(values), "folds": c.folds,
                     "mean": float(np.mean(values)) if values else math.nan, "ci_low": low, "ci_high": high,
                     "difference": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan,
                     "p": math.nan, "p_holm": math.nan, "distinguishable": "", "paired_cases": 0})
    if not usable:
        return {"rows": rows, "reference": None, "notes": notes}
    if baseline is not None:
        reference = next((c for c in usable if c.key == baseline), None)
        if reference is None:
            notes.append(f"baseline {' / '.join(p for p in baseline if p)} is not a complete configuration of "
                         "these runs; comparing with the best instead")
    if baseline is None or reference is None:
        pick = max if better == "max" else min
        reference = pick(usable, key=lambda c: np.mean(list(c.scores[metric].values())))
    for row in rows:
        c = row["config"]
        if c is reference:
            row["distinguishable"] = "reference"
            continue
        if c not in usable:
            row["distinguishable"] = "not compared"
            continue
        if c.family != reference.family:
            row["distinguishable"] = "not paired"
            notes.append(f"{c.label} is not paired with {reference.label}: {describe_family(c.family)} "
                         f"vs {describe_family(reference.family)}")
            continue
        result = paired(c.scores[metric], reference.scores[metric])
        row.update(difference=result.mean_difference, diff_ci_low=result.ci[0], diff_ci_high=result.ci[1],
                   p=result.p, paired_cases=result.cases)
    compared = [r for r in rows if not math.isnan(r["p"])]
    for r, adjusted in zip(compared, holm([r["p"] for r in compared])):
        r["p_holm"] = adjusted
        r["distinguishable"] = "yes" if adjusted < ALPHA else "no"
    rows.sort(key=lambda r: (math.isnan(r["mean"]), -r["mean"] if better == "max" else r["mean"]))
    return {"rows": rows, "reference": reference.label, "notes": notes}


def pairwise(configs: Sequence[Pooled], metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean differences (row - column) of every pair of comparable complete configurations, and their
    Holm-adjusted Wilcoxon p-values (NaN where a pair is not comparable)."""
    usable = [c for c in configs if c.complete and c.family is not None and c.scores.get(metric)]
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


def tick_label(text: str, width: int = 48) -> str:
    """A configuration's label for a plot: long numbers shown with 4 significant digits
    (``optimizer.lr=0.00294``), wrapped at commas and spaces into lines of ``width`` characters, so that
    long override lists (a search's trials) fit beside the plot."""
    text = re.sub(r"(?<==)-?\d+\.\d{5,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.4g}", text)
    return "\n".join(textwrap.wrap(text.replace(",", ", "), width)) or text


def label_lines(labels: Sequence[str]) -> int:
    """The most lines any of ``labels`` (:func:`tick_label`) spans."""
    return max((label.count("\n") + 1 for label in labels), default=1)


def plot_pairwise(labels: Sequence[str], diff: np.ndarray, p: np.ndarray, metric: str, out: Path) -> None:
    n = len(labels)
    ticks = [tick_label(label) for label in labels]
    cell = max(0.55, 0.13 * label_lines(ticks))  # room for each label's lines along the y axis
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.55 * n + 2.5), max(3.5, 1.8 + cell * n + 2.0)))
    limit = np.nanmax(np.abs(diff)) if np.isfinite(diff).any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(diff), cmap="RdBu_r" if METRICS[metric] == "min" else "RdBu",
                   vmin=-limit, vmax=limit)
    for i in range(n):
        for j in range(n):
            if np.isfinite(diff[i, j]):
                mark = "*" if p[i, j] < ALPHA else ""
                ax.text(j, i, f"{diff[i, j]:+.3f}{mark}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n), ticks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), ticks, fontsize=7)
    ax.set_title(f"mean per-image {metric} difference (row - column)\n* Holm-adjusted Wilcoxon p < {ALPHA}",
                 fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_per_image(configs: Sequence[Pooled], metric: str, out: Path) -> None:
    """Box plot of each configuration's per-image scores, with the scores as points; best mean on top."""
    shown = [c for c in configs if c.scores.get(metric)]
    shown.sort(key=lambda c: np.mean(list(c.scores[metric].values())), reverse=METRICS[metric] == "min")
    ticks = [tick_label(f"{c.label} (n={len(c.scores[metric])})") for c in shown]
    row = max(0.38, 0.13 * label_lines(ticks))  # inches per configuration: room for its label's lines
    fig, ax = plt.subplots(figsize=(10, 1.2 + row * max(len(shown), 1)))
    data = [list(c.scores[metric].values()) for c in shown]
    if data:
        try:
            ax.boxplot(data, orientation="horizontal", widths=0.6, showfliers=False)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, widths=0.6, showfliers=False)
        rng = np.random.default_rng(0)
        for k, values in enumerate(data, 1):
            ax.scatter(values, k + rng.uniform(-0.18, 0.18, len(values)), s=5, alpha=0.5, color="tab:blue")
        ax.set_yticks(range(1, len(shown) + 1), ticks, fontsize=7)
    ax.set(xlabel=f"per-image test {metric}", title=f"per-image test {metric} by configuration")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


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
        mean = "-" if math.isnan(r["mean"]) else \
            f"{num(r['mean'], digits)} [{num(r['ci_low'], digits)}, {num(r['ci_high'], digits)}]{unit}"
        diff = "-" if math.isnan(r["difference"]) else \
            f"{r['difference']:+.{digits}f} [{r['diff_ci_low']:+.{digits}f}, {r['diff_ci_high']:+.{digits}f}]"
        p = "-" if math.isnan(r["p"]) else f"{r['p']:.3g}"
        p_holm = "-" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}"
        lines.append(f"| {r['label']} | {r['cases']} | {mean} | {diff} | {p} | {p_holm} | {r['distinguishable'] or '-'} |")
    if result["notes"]:
        lines += ["", *[f"- {n}" for n in result["notes"]]]
    lines += ["", "Plots: `per_image_" + metric + ".png`, `pairwise_" + metric + ".png`.", ""]
    return lines
