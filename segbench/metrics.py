"""Segmentation metrics as a functional core: confusion counts once, every metric from them.

Counts are per image, shape (B,); each metric returns (B,) floats. Reductions:
``mean`` (the default reported: per-image metric, mean over images) and
``micro`` (counts summed over the dataset, then the ratio).

Empty policy: a ratio whose denominator is 0 scores 1.0 when the image's mask
and prediction are both empty (a correct "no lesion") and 0.0 otherwise.
Hausdorff distances are undefined when either boundary is empty: 0.0 when both
are empty, NaN (left out of the mean, and counted) when only one is.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

DEFINITIONS = {
    "prediction": "binary: sigmoid(logits) > threshold; multi-class: argmax over classes",
    "classes": "multi-class: every metric is computed per foreground class (class k against the rest) and "
    "averaged over the foreground classes (background excluded); iou_<class> and dice_<class> are each "
    "class's own; hd/hd95 average the classes where defined; tp/fp/fn/tn are summed over the classes",
    "reduction": "mean: per-image metric, mean over images (the default, keys test/<metric>); "
    "micro: confusion counts summed over images, then the ratio (keys test/<metric>_micro)",
    "empty_policy": "a ratio with denominator 0 scores 1.0 when mask and prediction are both empty, else 0.0; "
    "hd/hd95 are 0 when both are empty and NaN (excluded from the mean, counted in hd_undefined) when one is",
    "iou": "TP / (TP + FP + FN)",
    "dice": "2 TP / (2 TP + FP + FN)",
    "precision": "TP / (TP + FP)",
    "recall": "TP / (TP + FN) (sensitivity)",
    "specificity": "TN / (TN + FP)",
    "accuracy": "(TP + TN) / (TP + FP + FN + TN)",
    "iou_score": "per image clamp(20 * (IoU - 0.5), 0, 10).ceil() / 10 (the seed study's thresholded IoU)",
    "hd": "symmetric Hausdorff distance between mask and prediction boundaries, pixels; boundary = pixels "
    "removed by a 4-connected erosion with the image's outside as background (mask pixels on the image "
    "border are boundary pixels, as in medpy and MONAI)",
    "hd95": "95th percentile of the boundary-to-boundary distances of both directions pooled (medpy's hd95), "
    "pixels",
    "loss": "the training loss on the split, mean over images",
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


def _ratio(num: torch.Tensor, den: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
    both_empty = (c["tp"] + c["fp"] + c["fn"]) == 0
    undefined = torch.where(both_empty, 1.0, 0.0).to(num)
    return torch.where(den > 0, num / den.clamp(min=1), undefined)


def iou(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], c)


def dice(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], c)


def precision(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(c["tp"], c["tp"] + c["fp"], c)


def recall(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(c["tp"], c["tp"] + c["fn"], c)


def specificity(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(c["tn"], c["tn"] + c["fp"], c)


def accuracy(c: dict[str, torch.Tensor]) -> torch.Tensor:
    return _ratio(c["tp"] + c["tn"], c["tp"] + c["fp"] + c["fn"] + c["tn"], c)


RATIO_METRICS = {
    "iou": iou, "dice": dice, "precision": precision, "recall": recall,
    "specificity": specificity, "accuracy": accuracy,
}


def iou_score(iou_values: torch.Tensor) -> torch.Tensor:
    """The seed study's thresholded IoU: 0 below IoU 0.5, then steps of 0.1 per 0.05 IoU."""
    return torch.clamp(20 * (iou_values - 0.5), 0, 10).ceil() / 10


def all_metrics(c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every ratio metric and the thresholded IoU, per image."""
    out = {name: fn(c) for name, fn in RATIO_METRICS.items()}
    out["iou_score"] = iou_score(out["iou"])
    return out


def micro(c: dict[str, torch.Tensor]) -> dict[str, float]:
    """Dataset-level ratios: counts summed over images first."""
    total = {k: v.sum().reshape(1) for k, v in c.items()}
    return {name: fn(total).item() for name, fn in RATIO_METRICS.items()}


def class_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Per-image, per-class confusion counts of class-index maps: each foreground class k = 1..C-1
    against the rest. pred, target: (B, 1, H, W) or (B, H, W) integer. Returns tp, fp, fn, tn, each (B, C-1)."""
    per_class = [confusion(pred == k, target == k) for k in range(1, num_classes)]
    return {key: torch.stack([c[key] for c in per_class], dim=1) for key in ("tp", "fp", "fn", "tn")}


def class_keys(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Metric-key suffixes of the foreground classes: their names (spaces made _), or class1, class2, ..."""
    names = list(class_names) if class_names else [f"class{k}" for k in range(num_classes)]
    return [str(n).strip().replace(" ", "_").replace("/", "_") for n in names[1:num_classes]]


def binarize(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, 1, H, W) bool foreground prediction."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits.float()) > threshold
    return logits.argmax(1, keepdim=True) > 0


def image_metrics(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
                  class_names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-image IoU, Dice and thresholded IoU of logits against masks; each (B,). Used every epoch.

    Multi-class logits (C > 1): IoU and Dice are the mean over the foreground classes of each class's
    IoU / Dice, and ``iou_<class>`` / ``dice_<class>`` hold each foreground class's own."""
    if logits.shape[1] == 1:
        c = confusion(binarize(logits, threshold), target > 0)
        values = {"iou": iou(c), "dice": dice(c)}
    else:
        c = class_confusion(logits.argmax(1, keepdim=True), target.long(), logits.shape[1])  # (B, C-1) each
        per_iou, per_dice = iou(c), dice(c)
        values = {"iou": per_iou.mean(1), "dice": per_dice.mean(1)}
        for k, key in enumerate(class_keys(class_names, logits.shape[1])):
            values[f"iou_{key}"], values[f"dice_{key}"] = per_iou[:, k], per_dice[:, k]
    values["iou_score"] = iou_score(values["iou"])
    return values


_CROSS = ndimage.generate_binary_structure(2, 1)


def boundary(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of an (H, W) bool mask: those that a 4-connected erosion removes, with the
    outside of the image counted as background, so that a mask's pixels on the image border are
    boundary pixels too (medpy's and MONAI's surface convention). A lesion cut by the image border
    then has a closed outline, and a prediction that stops short of the border is a few pixels off,
    not hundreds (the distance to the mask's far side)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def _boundary_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (pixels) from each boundary pixel of ``a`` to the nearest boundary pixel of ``b``."""
    return ndimage.distance_transform_edt(~boundary(b))[boundary(a)]


def hausdorff(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(HD, HD95) between the boundaries of two (H, W) binary masks, in pixels."""
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() and not target.any():
        return 0.0, 0.0
    if not pred.any() or not target.any():
        return math.nan, math.nan
    d = np.concatenate([_boundary_distances(pred, target), _boundary_distances(target, pred)])
    return float(d.max()), float(np.percentile(d, 95))
