"""Segmentation losses. Every loss takes logits and a target mask.

Shapes: logits (B, C, H, W); target (B, 1, H, W) or (B, H, W) with values {0, 1}
(binary, C == 1) or class indices 0..C-1 (multi-class, C > 1). The mode follows
the model's ``num_classes``: one channel is binary with a sigmoid, several
channels are multi-class with a softmax (region losses then average per class).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .validation import check_choice, check_number


def _target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target as (B, 1, H, W) float {0, 1} for binary logits, or (B, C, H, W) one-hot for multi-class."""
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if logits.shape[1] == 1:
        return target.float()
    return F.one_hot(target[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float()


def _probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log(1 - p) of the positive class, computed stably (no log of a rounded 0)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return F.logsigmoid(logits), F.logsigmoid(-logits)
    log_p = torch.log_softmax(logits, dim=1)
    return log_p, torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))


def _soft_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Soft TP, FP, FN per image and class: each (B, K), K = 1 (binary) or C."""
    p, y = _probs(logits).flatten(2), _target(logits, target).flatten(2)
    return (p * y).sum(2), (p * (1 - y)).sum(2), ((1 - p) * y).sum(2)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (log-sum-exp form, stable for any logit), mean over pixels.

    Multi-class logits use cross-entropy with the softmax. ``pos_weight`` > 1
    weighs lesion pixels more (binary only, as in ``BCEWithLogitsLoss``).
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        if pos_weight is not None:
            check_number("pos_weight", pos_weight, 0, low_open=True)
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] > 1:
            return F.cross_entropy(logits.float(), _target(logits, target).argmax(1))
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), _target(logits, target), pos_weight=pw)


class DiceLoss(nn.Module):
    """Soft Dice loss: 1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth).

    p = sigmoid(logits) (binary) or softmax (multi-class, Dice per class then
    averaged); computed per image and averaged over the batch.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        check_number("smooth", smooth, 0)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = _soft_counts(logits, target)
        num = 2 * tp + self.smooth
        return (1 - num / (2 * tp + fp + fn + self.smooth).clamp(min=1e-12)).mean()


class TverskyLoss(nn.Module):
    """Tversky loss: 1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth) on soft counts.

    alpha weighs false positives, beta false negatives; alpha = beta = 0.5 is Dice.
    Per image (and class), averaged.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> None:
        super().__init__()
        check_number("alpha", alpha, 0)
        check_number("beta", beta, 0)
        check_number("smooth", smooth, 0)
        if alpha + beta == 0:
            raise ValueError("alpha + beta must be > 0, got alpha=0 and beta=0")
        self.alpha, self.beta, self.smooth = alpha, beta, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = _soft_counts(logits, target)
        den = tp + self.alpha * fp + self.beta * fn + self.smooth
        return (1 - (tp + self.smooth) / den.clamp(min=1e-12)).mean()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) from logits, mean over pixels.

    Standard form (``modulate='both'``): -alpha_t (1 - p_t)^gamma log p_t, which
    down-weights easy pixels of both classes. ``modulate='positive'`` is the seed
    notebook's variant: only the lesion term is modulated, the background term is
    plain BCE. ``alpha`` (weight of the positive class) is optional. log p is
    taken with logsigmoid / log_softmax, so extreme logits stay finite.
    Multi-class logits use the softmax form with alpha ignored.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, modulate: str = "both") -> None:
        super().__init__()
        check_number("gamma", gamma, 0)
        if alpha is not None:
            check_number("alpha", alpha, 0, 1)
        check_choice("modulate", modulate, ("both", "positive"))
        self.gamma, self.alpha, self.modulate = gamma, alpha, modulate

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = _target(logits, target)
        log_p, log_q = _log_probs(logits)  # log p, log(1 - p)
        p, q = log_p.exp(), log_q.exp()
        if logits.shape[1] > 1:
            return -(y * q.pow(self.gamma) * log_p).sum(1).mean()
        pos = y * q.pow(self.gamma) * log_p
        neg = (1 - y) * (p.pow(self.gamma) if self.modulate == "both" else 1.0) * log_q
        if self.alpha is not None:
            pos, neg = self.alpha * pos, (1 - self.alpha) * neg
        return -(pos + neg).mean()


class BCEHybridLoss(nn.Module):
    """The seed study's BCE plus hybrid fully- and weakly-supervised regularisation.

    With p = sigmoid(logits):
    L = BCE(logits, y) + lambda * ( mean((y - p)^2)                      (fully supervised)
                                  + mean(|p|)                              (sparsity)
                                  + gamma * (mean|p[..., :, 1:] - p[..., :, :-1]|
                                             + mean|p[..., 1:, :] - p[..., :-1, :]|) )   (contiguity)

    Difference from the notebook: it fed sigmoid outputs into a formula for
    logits (so its "BCE" was computed on sigmoid(sigmoid(x))); here the BCE term
    takes the logits and the regularisers take p. Binary only.
    """

    def __init__(self, lambda_: float = 2.0, gamma: float = 1.0) -> None:
        super().__init__()
        check_number("lambda_", lambda_, 0)
        check_number("gamma", gamma, 0)
        self.lambda_, self.gamma = lambda_, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"BCEHybridLoss is binary: expected 1 logit channel, got {logits.shape[1]}")
        y = _target(logits, target)
        p = torch.sigmoid(logits.float())
        bce = F.binary_cross_entropy_with_logits(logits.float(), y)
        contiguity = (p[..., :, 1:] - p[..., :, :-1]).abs().mean() + (p[..., 1:, :] - p[..., :-1, :]).abs().mean()
        return bce + self.lambda_ * ((y - p).square().mean() + p.abs().mean() + self.gamma * contiguity)


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


class LovaszHingeLoss(nn.Module):
    """Binary Lovasz hinge (Berman et al. 2018): a convex surrogate of 1 - IoU on logits.

    Per image (``per_image=True``, averaged) or over the whole batch as one image.
    """

    def __init__(self, per_image: bool = True) -> None:
        super().__init__()
        self.per_image = bool(per_image)

    @staticmethod
    def _flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        signs = 2 * labels - 1
        errors = 1 - logits * signs
        errors_sorted, perm = torch.sort(errors, descending=True)
        return torch.dot(F.relu(errors_sorted), _lovasz_grad(labels[perm]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"LovaszHingeLoss is binary: expected 1 logit channel, got {logits.shape[1]}")
        x, y = logits.float().flatten(1), _target(logits, target).flatten(1)
        if not self.per_image:
            return self._flat(x.flatten(), y.flatten())
        return torch.stack([self._flat(xi, yi) for xi, yi in zip(x, y)]).mean()


class ComboLoss(nn.Module):
    """Weighted sum of named losses: sum_k weights[k] * losses[k](logits, target).

    From config, ``losses`` maps names to loss configs (instantiated by Hydra)
    and ``weights`` maps the same names to numbers.
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not losses:
            raise ValueError("ComboLoss needs at least one loss in 'losses'")
        if set(losses) != set(weights):
            raise ValueError(
                f"ComboLoss weights {sorted(weights)} do not match losses {sorted(losses)}; give one weight per loss"
            )
        for name, loss in losses.items():
            if not callable(loss):
                raise TypeError(f"ComboLoss loss '{name}' is {type(loss).__name__}, not a loss module")
            check_number(f"weights.{name}", weights[name], 0)
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {k: float(v) for k, v in weights.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * loss(logits, target) for k, loss in self.losses.items())
