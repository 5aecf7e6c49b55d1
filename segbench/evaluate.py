"""Test-time evaluation: per-image metrics, reductions, threshold choice, breakdown by group,
and the test step of a run (:func:`score_test`).

Works on logits already computed (the trainer's ``predict``), on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import SegArrays, SegDataset
from .metrics import DEFINITIONS, all_metrics, binarize, confusion, hausdorff, iou, micro

if TYPE_CHECKING:
    from .engine import Trainer

THRESHOLD_GRID = [round(0.05 * i, 2) for i in range(1, 20)]


def choose_threshold(logits: torch.Tensor, masks: torch.Tensor, grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The threshold of ``grid`` with the highest mean per-image IoU (first one on ties)."""
    if logits.shape[1] != 1:
        return 0.5  # multi-class predictions are argmax; the threshold does not apply
    scores = [iou(confusion(binarize(logits, t), masks > 0)).mean().item() for t in grid]
    return float(grid[int(np.argmax(scores))])


def per_image(
    logits: torch.Tensor,
    masks: Sequence[torch.Tensor] | torch.Tensor,
    threshold: float,
) -> dict[str, list[float]]:
    """Every metric per image. ``masks`` may be one (N, 1, H, W) tensor, or N (H0, W0) masks at
    their original sizes, in which case each logit map is resized (bilinear) to its mask first."""
    rows: dict[str, list[float]] = {}
    for i in range(logits.shape[0]):
        mask = torch.as_tensor(masks[i]).reshape(1, 1, *masks[i].shape[-2:]) > 0
        logit = logits[i : i + 1].float()
        if logit.shape[-2:] != mask.shape[-2:]:
            logit = F.interpolate(logit, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        pred = binarize(logit, threshold)
        c = confusion(pred, mask)
        values = {k: v.item() for k, v in all_metrics(c).items()}
        values["hd"], values["hd95"] = hausdorff(pred[0, 0].numpy(), mask[0, 0].numpy())
        for k in ("tp", "fp", "fn", "tn"):
            values[k] = c[k].item()
        for k, v in values.items():
            rows.setdefault(k, []).append(v)
    return rows


def summarize(rows: dict[str, list[float]], prefix: str = "test/") -> dict[str, float]:
    """Means over images (NaN Hausdorff values left out and counted) and micro ratios."""
    out: dict[str, float] = {}
    for k, values in rows.items():
        if k in ("tp", "fp", "fn", "tn"):
            continue
        arr = np.asarray(values, dtype=float)
        out[f"{prefix}{k}"] = float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
    out[f"{prefix}hd_undefined"] = int(np.isnan(np.asarray(rows["hd"], dtype=float)).sum())
    counts = {k: torch.tensor(rows[k]) for k in ("tp", "fp", "fn", "tn")}
    out.update({f"{prefix}{k}_micro": v for k, v in micro(counts).items()})
    return out


def by_group(rows: dict[str, list[float]], groups: Sequence[str], order: Sequence[str] = ()) -> dict[str, dict]:
    """Per-image means within each group (e.g. PH2 diagnosis), groups in ``order`` then sorted."""
    out = {}
    for name in [g for g in order if g in groups] + sorted(set(groups) - set(order)):
        index = [i for i, g in enumerate(groups) if g == name]
        group = {k: [v[i] for i in index] for k, v in rows.items()}
        out[name] = {"n": len(index), **summarize(group, prefix="")}
    return out


@dataclass
class TestResult:
    """What the test step produced: the threshold used, the test logits (N, C, H, W) at the input size,
    per-image metric rows, and the summary (``test/<metric>``) with its definitions."""

    threshold: float
    logits: torch.Tensor
    rows: dict[str, list[float]]
    metrics: dict[str, Any]
    definitions: dict[str, Any]


def score_test(
    trainer: "Trainer",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dataset: SegDataset,
    val: SegArrays,
    test_part: SegArrays,
    threshold: float | str,
    resolution: str,
) -> TestResult:
    """Score the trainer's current model on ``test_part``.

    ``threshold='auto'`` picks the one of :data:`THRESHOLD_GRID` with the best mean val IoU;
    ``resolution='original'`` scores each prediction resized to its case's original mask.
    """
    auto = threshold == "auto"
    chosen = choose_threshold(trainer.predict(val), val.masks) if auto else float(threshold)
    logits = trainer.predict(test_part)  # (N, C, H, W) on the CPU; every test number comes from these
    with torch.no_grad():
        test_loss = float(loss_fn(logits, test_part.masks.float()))
    original = resolution == "original"
    masks = dataset.original_masks(test_part.ids) if original else test_part.masks
    rows = per_image(logits, masks, chosen)
    definitions = {
        **DEFINITIONS,
        "threshold": chosen,
        "threshold_mode": "auto: maximises mean val IoU over 0.05..0.95" if auto else "fixed",
        "resolution": "original image size (predictions resized bilinearly)" if original
        else f"{dataset.image_size}x{dataset.image_size} (network input)",
    }
    metrics = {"test/loss": test_loss, **summarize(rows)}
    if test_part.groups is not None:
        metrics[f"by_{dataset.group_key or 'group'}"] = by_group(rows, test_part.groups, dataset.group_order)
    return TestResult(chosen, logits, rows, metrics, definitions)
