"""Plots of one run, read from its run directory (or given arrays); never called inside the training loop."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..data import SegArrays  # noqa: E402
from ..evaluation.predict import class_colours  # noqa: E402
from ..evaluation.scoring import decide, per_image  # noqa: E402
from ..runs import RunDir  # noqa: E402


def plot_curves(run_dir: RunDir, title: str = "") -> Path:
    """Loss and IoU per epoch, train vs val, from ``history.csv``; writes ``curves.png``."""
    rows = run_dir.read_history()
    validated = [r for r in rows if not math.isnan(r["val/iou"])]  # every epoch, or every trainer.val_every-th
    epoch = [r["epoch"] for r in rows]
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    val_epoch = [r["epoch"] for r in validated]
    val = lambda k: [r[k] for r in validated]  # noqa: E731
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epoch, col("train/loss"), "o-", label="train")
    ax_loss.plot(val_epoch, val("val/loss"), "s-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_iou.plot(epoch, col("train/iou"), "o-", label="train IoU")
    ax_iou.plot(val_epoch, val("val/iou"), "s-", label="val IoU")
    ax_iou.plot(val_epoch, val("val/dice"), "--", label="val Dice")
    ax_iou.set(xlabel="epoch", ylabel="score", title="IoU / Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.82 if title else 0.9, wspace=0.22)
    fig.savefig(run_dir.curves_png, dpi=100)
    plt.close(fig)
    return run_dir.curves_png


def plot_reliability(diagrams: Sequence[tuple[str, dict, float]], out: Path, title: str = "") -> Path:
    """Reliability diagrams (metrics.json's ``calibration``: per confidence bin, the pixels' mean confidence
    and mean outcome), one line per ``(label, diagram, ece)``, against the diagonal of perfect calibration,
    with each bin's share of the pixels below; writes ``out``."""
    fig, (ax, ax_share) = plt.subplots(2, 1, figsize=(5.2, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for label, diagram, error in diagrams:
        bins = int(diagram["bins"])
        centres = [(k + 0.5) / bins for k in range(bins)]
        shown = [(c, o) for c, o in zip(diagram["confidence"], diagram["outcome"]) if c is not None]
        line = ax.plot([c for c, _ in shown], [o for _, o in shown], "o-", ms=4, label=f"{label} (ECE {error:.4f})")
        total = max(1, sum(diagram["pixels"]))
        ax_share.bar(centres, [n / total for n in diagram["pixels"]], width=1 / bins, alpha=0.45,
                     color=line[0].get_color())
    ax.set(ylabel="observed frequency (mean outcome)", xlim=(0, 1), ylim=(0, 1), title=title or "reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_share.set(xlabel="confidence (binary: P(foreground); multi-class: top P)", ylabel="share of pixels",
                 yscale="log")
    ax_share.grid(alpha=0.3)
    fig.subplots_adjust(left=0.16, right=0.97, top=0.94, bottom=0.09, hspace=0.08)  # fixed: tight_layout is slow
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def worst_cases(scores: Sequence[float], count: int) -> list[int]:
    """The positions of the ``count`` lowest ``scores`` (IoU per case), lowest first; ties in case order,
    NaN last."""
    order = sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), scores[i], i))
    return order[:count]


def plot_predictions(run_dir: RunDir, part: SegArrays, logits: torch.Tensor, threshold: float, count: int,
                     scores: Sequence[float], class_names: Sequence[str] | None = None,
                     postprocess: str = "none") -> Path:
    """:func:`prediction_figure` of the ``count`` cases of ``part`` with the lowest ``scores`` (the test
    IoU per case as scored, in test_per_image.csv), worst first, written to ``predictions.png``."""
    shown = worst_cases(scores, count)
    fig = prediction_figure(part.subset([part.ids[i] for i in shown]), logits[shown], threshold,
                            postprocess=postprocess, class_names=class_names, scores=[scores[i] for i in shown],
                            title=f"the {len(shown)} test cases with the lowest IoU")
    fig.savefig(run_dir.predictions_png, dpi=90)
    plt.close(fig)
    return run_dir.predictions_png


def prediction_figure(shown: SegArrays, logits: torch.Tensor, threshold: float, postprocess: str = "none",
                      class_names: Sequence[str] | None = None, scores: Sequence[float] | None = None,
                      title: str | None = None) -> plt.Figure:
    """image / mask / probability / prediction of each case of ``shown`` (logits (N, C, H, W) in its
    order, on the CPU), one row each, with the case's IoU (``scores``, or computed here at this size).
    The prediction is the scored one (:func:`segbench.evaluation.scoring.decide`: threshold or argmax,
    then ``postprocess``), at the logits' size. Multi-class logits: image / mask / prediction in class
    colours, with a legend of ``class_names``. ``title``: the figure's, laid out with the panels."""
    logits = logits.float().cpu()
    shown = SegArrays(shown.images.cpu(), shown.masks.cpu(), shown.ids, shown.groups)
    pred = decide(logits, threshold, postprocess)
    if scores is None:
        scores = per_image(logits, shown.masks, threshold, postprocess, class_names)["iou"]
    if logits.shape[1] > 1:
        fig = _class_grid(shown, pred[:, 0], scores, class_names, title)
    else:
        fig = _prediction_grid(shown.images, shown.masks, torch.sigmoid(logits), pred, shown.ids, scores, title)
    return fig


def _class_grid(shown: SegArrays, pred: torch.Tensor, scores: Sequence[float],
                class_names: Sequence[str] | None, title: str | None = None) -> plt.Figure:
    """images, masks (N, 1, H, W) and predicted class maps (N, H, W) in class colours, with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    num_classes = len(class_names) if class_names else int(max(pred.max(), shown.masks.max())) + 1
    names = list(class_names) if class_names else [f"class{k}" for k in range(num_classes)]
    colours = class_colours(num_classes)
    cmap, kw = ListedColormap(colours), {"vmin": -0.5, "vmax": num_classes - 0.5, "interpolation": "nearest"}
    n = len(shown)
    fig, axes = plt.subplots(n, 3, figsize=(7.8, 2.6 * n + 0.5), squeeze=False)
    for i in range(n):
        panels = [(shown.images[i].permute(1, 2, 0).numpy(), shown.ids[i], {}),
                  (shown.masks[i, 0].numpy(), "mask", {"cmap": cmap, **kw}),
                  (pred[i].numpy(), f"prediction (mean IoU {scores[i]:.3f})", {"cmap": cmap, **kw})]
        draw_row(axes[i], panels)
    fig.legend(handles=[Patch(color=c, label=name) for c, name in zip(colours, names)], loc="lower center",
               ncol=min(num_classes, 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / (2.6 * n + 0.5), 1, 1))
    return fig


def draw_row(axes, panels) -> None:
    """One row of a figure: each (image, title, imshow options) of ``panels`` in its axis, without ticks."""
    for ax, (img, name, style) in zip(axes, panels):
        ax.imshow(img, **style)
        ax.set_title(name, fontsize=9)
        ax.axis("off")


def _prediction_grid(images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, pred: torch.Tensor,
                     ids: Sequence[str], scores: Sequence[float], title: str | None = None) -> plt.Figure:
    """images (N, 3, H, W) uint8; masks (N, 1, H, W) {0, 1}; probs (N, 1, H, W) foreground probability;
    pred (N, 1, H, W) the decided foreground."""
    n = len(ids)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    binary = {"cmap": "gray", "vmin": 0, "vmax": 1}
    for i in range(n):
        draw_row(axes[i], [(images[i].permute(1, 2, 0).numpy(), f"{ids[i]}", {}),
                           (masks[i, 0].numpy(), "mask", binary),
                           (probs[i, 0].numpy(), "probability", {"cmap": "magma", "vmin": 0, "vmax": 1}),
                           (pred[i, 0].numpy(), f"prediction (IoU {scores[i]:.3f})", binary)])
    if title:
        fig.suptitle(title, fontsize=10)
    height = 2.6 * n  # inches: fixed margins (tight_layout costs a quarter of a second per figure)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.05 / height, top=1 - (0.55 if title else 0.3) / height,
                        wspace=0.05, hspace=0.3 / 2.3)
    return fig


def plot_augmentations(run_dir: RunDir, part: SegArrays, augment, device, cases: int = 4, draws: int = 3) -> Path:
    """The first ``cases`` training images with their masks (outlined), next to ``draws`` augmented
    draws of each: what the model sees. Draws come from a forked RNG, so training is unchanged;
    writes ``augmentations.png``."""
    shown = part.subset(part.ids[:cases])
    images = shown.images.to(device).float() / 255
    masks = shown.masks.to(device).float()
    columns = [(images, masks)]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        with torch.no_grad():
            columns += [augment(images, masks) for _ in range(draws)]
    fig, axes = plt.subplots(len(shown), 1 + draws, figsize=(2.4 * (1 + draws), 2.4 * len(shown)), squeeze=False)
    for i in range(len(shown)):
        for j, (x, y) in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(x[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.contour(y[i, 0].cpu().numpy(), levels=[0.5], colors="lime", linewidths=1)
            ax.set_title(shown.ids[i] if j == 0 else f"draw {j}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"training images and augmented draws; mask outline in green\n{augment!r}", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir.augmentations_png, dpi=90)
    plt.close(fig)
    return run_dir.augmentations_png
