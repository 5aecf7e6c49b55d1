"""Segmentation metrics as a functional core: confusion counts once, every metric from them.

All functions work per image: counts have shape (B,), metrics return (B,)
float tensors; the default reduction over a dataset is the mean over images.

Empty policy: when an image's mask and prediction are both empty, the ratio
metrics (IoU, Dice) are 0/0; we score that image 1.0 (a correct "no lesion"),
as recorded in ``DEFINITIONS``.
"""
from __future__ import annotations

import torch

EMPTY_SCORE = 1.0

DEFINITIONS = {
    "prediction": "sigmoid(logits) > threshold",
    "reduction": "per-image metric, mean over images",
    "empty_policy": f"an image whose mask and prediction are both empty scores {EMPTY_SCORE} in IoU and Dice",
    "iou": "TP / (TP + FP + FN)",
    "dice": "2 TP / (2 TP + FP + FN)",
    "iou_score": "per image clamp(20 * (IoU - 0.5), 0, 10).ceil() / 10 (seed study's thresholded IoU), mean over images",
    "loss": "training loss on the split, mean over batches weighted by batch size",
}


def confusion(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image confusion counts of binary masks.

    pred, target: (B, 1, H, W) or (B, H, W), bool or {0, 1}. Returns tp, fp, fn, tn, each (B,) float.
    """
    pred = pred.bool().flatten(1)
    target = target.bool().flatten(1)
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    tn = (~pred & ~target).sum(1)
    return {k: v.float() for k, v in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn))}


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, EMPTY_SCORE))


def iou(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"])


def dice(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def iou_score(iou_values: torch.Tensor) -> torch.Tensor:
    """The seed study's thresholded IoU: 0 below IoU 0.5, then steps of 0.1 per 0.05 IoU."""
    return torch.clamp(20 * (iou_values - 0.5), 0, 10).ceil() / 10


def binarize(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, 1, H, W) logits -> bool prediction sigmoid(logits) > threshold."""
    return torch.sigmoid(logits.float()) > threshold


def image_metrics(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-image IoU, Dice and thresholded IoU of logits against {0, 1} masks; each (B,)."""
    c = confusion(binarize(logits, threshold), target)
    values = {"iou": iou(c), "dice": dice(c)}
    values["iou_score"] = iou_score(values["iou"])
    return values
