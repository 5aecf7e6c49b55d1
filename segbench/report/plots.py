"""The report's plots: val curves of every run, test scores and a model x loss heatmap per configuration,
per-image scores and pairwise differences of the pooled configurations."""
from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .collect import SCORES, RunRecord  # noqa: E402
from .pooling import ALPHA, METRICS, Pooled  # noqa: E402


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
    shown.sort(key=lambda c: c.mean(metric), reverse=METRICS[metric] == "min")
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


def _label(r: RunRecord, with_seed: bool) -> str:
    parts = [r.model, r.loss] + ([r.overrides] if r.overrides else [])
    if with_seed:
        parts.append(f"seed={r.seed}")
    return " / ".join(parts)


def curves(records: Sequence[RunRecord], key: str, ylabel: str, out: Path) -> None:
    """One line per run: colour by model, line style by loss (by run when models and losses do not vary)."""
    runs = [r for r in records if r.history]
    models = sorted({r.model for r in runs})
    losses = sorted({r.loss for r in runs})
    with_seed = len({r.seed for r in runs}) > 1
    by_run = len(models) * len(losses) < len(runs) and (len(models) == 1 or len(losses) == 1)
    palette = plt.get_cmap("tab10" if len(models) <= 10 else "tab20").colors
    styles = ["-", "--", ":", "-."]
    markers = [None, "o", "s", "^", "v", "D"]
    fig, ax = plt.subplots(figsize=(12, 6.5))
    for i, r in enumerate(runs):
        if by_run:
            color, j = palette[i % len(palette)], i // len(palette)
        else:
            color, j = palette[models.index(r.model) % len(palette)], losses.index(r.loss)
        validated = [h for h in r.history if not math.isnan(h.get(key, math.nan))]  # trainer.val_every skips epochs
        epochs = [h["epoch"] for h in validated]
        values = [h[key] for h in validated]
        ax.plot(epochs, values, styles[j % 4], marker=markers[(j // 4) % len(markers)], markersize=4,
                color=color, lw=1.8, label=_label(r, with_seed))
    ax.set(xlabel="epoch", ylabel=ylabel, title=f"{ylabel} of {len(runs)} runs"
           + ("" if by_run else " (colour: model, line: loss)"))
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def bars(table: Sequence[dict], out: Path) -> None:
    done = [r for r in table if not math.isnan(r["test/iou"])][::-1]  # best at the top
    ticks = [tick_label(" / ".join(p for p in (r["model"], r["loss"], r["overrides"]) if p))
             for r in done]
    rows = max(0.42, 0.14 * label_lines(ticks))
    fig, ax = plt.subplots(figsize=(10, 1.2 + rows * max(len(done), 1)))
    y = np.arange(len(done))
    height = 0.27
    for j, (key, name) in enumerate(zip(SCORES, ["IoU", "Dice", "thresholded IoU"])):
        means = [r[key] for r in done]
        errs = [0 if r["done"] < 2 else r[f"{key}_std"] for r in done]
        ax.barh(y + (j - 1) * height, means, height, xerr=errs if any(errs) else None, label=name, capsize=2)
    ax.set_yticks(y, ticks, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="test score (per-image mean)", title="test scores by configuration")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def heatmap(table: Sequence[dict], out: Path) -> None:
    models = sorted({r["model"] for r in table})
    losses = sorted({r["loss"] for r in table})
    grid = np.full((len(models), len(losses)), np.nan)
    for i, m in enumerate(models):
        for j, lo in enumerate(losses):
            values = [r["test/iou"] for r in table if r["model"] == m and r["loss"] == lo]
            values = [v for v in values if not math.isnan(v)]
            if values:
                grid[i, j] = float(np.mean(values))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(losses), 1.2 + 0.7 * len(models)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0,
                   vmax=np.nanmax(grid) if np.isfinite(grid).any() else 1, aspect="auto")
    for i in range(len(models)):
        for j in range(len(losses)):
            text = "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(losses)), losses)
    ax.set_yticks(range(len(models)), models)
    ax.set(xlabel="loss", ylabel="model", title="test IoU (mean over runs)")
    ax.set_facecolor("0.35")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
