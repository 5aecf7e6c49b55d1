"""Test-time evaluation: per-image metrics, reductions, threshold choice, breakdown by diagnosis.

Works on logits already computed (the trainer's ``predict``), on the CPU.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import SegArrays
from .io import write_csv
from .metrics import all_metrics, binarize, confusion, hausdorff, iou, micro

PH2_DIAGNOSIS = {0: "common_nevus", 1: "atypical_nevus", 2: "melanoma"}
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


def by_group(rows: dict[str, list[float]], labels: Sequence[int], names: dict[int, str]) -> dict[str, dict]:
    """Per-image means within each label (e.g. PH2 diagnosis)."""
    out = {}
    for label in sorted(set(labels)):
        index = [i for i, lab in enumerate(labels) if lab == label]
        group = {k: [v[i] for i in index] for k, v in rows.items()}
        summary = summarize(group, prefix="")
        out[names.get(label, str(label))] = {"n": len(index), **summary}
    return out


def write_per_image_csv(path: Path, part: SegArrays, rows: dict[str, list[float]]) -> None:
    """test_per_image.csv: case id, diagnosis (when known), every metric."""
    columns = ["case", "diagnosis", *[k for k in rows if k not in ("tp", "fp", "fn", "tn")], "tp", "fp", "fn", "tn"]
    table = []
    for i, case in enumerate(part.ids):
        label = None if part.diagnosis is None else PH2_DIAGNOSIS.get(part.diagnosis[i], part.diagnosis[i])
        table.append({"case": case, "diagnosis": "" if label is None else label, **{k: rows[k][i] for k in rows}})
    write_csv(path, table, columns)
