"""Segmentation losses. Every loss takes logits (B, 1, H, W) and float targets in {0, 1}."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (log-sum-exp form, stable for any logit), mean over pixels.

    pos_weight > 1 weighs lesion pixels more (as in BCEWithLogitsLoss).
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        if pos_weight is not None and not pos_weight > 0:
            raise ValueError(f"pos_weight must be > 0 or None, got {pos_weight!r}")
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw)


class DiceLoss(nn.Module):
    """Soft Dice loss: 1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth), p = sigmoid(logits).

    Computed per image and averaged over the batch.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float()).flatten(1)
        y = target.float().flatten(1)
        num = 2 * (p * y).sum(1) + self.smooth
        den = p.sum(1) + y.sum(1) + self.smooth
        return (1 - num / den.clamp(min=1e-12)).mean()
