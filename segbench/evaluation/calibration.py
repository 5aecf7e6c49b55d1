"""How far to trust a run's probabilities: expected calibration error (ECE), Brier score, the reliability
diagram's bins, and temperature scaling (``eval.calibration=temperature``).

Every pixel is one prediction. Binary masks (one sigmoid channel): the confidence is the foreground
probability p and the outcome whether the pixel is foreground (torchmetrics' ``BinaryCalibrationError``
convention); Brier = mean (p - y)^2. Multi-class masks (softmax): the confidence is the largest class
probability and the outcome whether that class is the pixel's (``MulticlassCalibrationError``); Brier =
mean over pixels of sum over classes (p_c - [y = c])^2. ECE: the pixels in ``BINS`` equal-width bins of
confidence over [0, 1], sum over bins of (pixels in bin / pixels) * |mean confidence - mean outcome|.

An image's statistics are one vector (:func:`image_stats`: per bin the pixels, their confidences and their
outcomes summed; then the summed Brier terms and the pixels), so that a run's ECE over all its pixels is
that of the vectors' sum (:func:`ece`): the run's ``test/ece`` and ``test/brier`` pool the pixels, and each
image's own values are in test_per_image.csv.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15
CALIBRATION = ("none", "temperature")
DEFINITIONS = {
    "ece": f"expected calibration error over all test pixels ({BINS} equal-width confidence bins; binary: "
           "confidence = foreground probability vs foreground, multi-class: top probability vs correct)",
    "brier": "mean squared difference of the probabilities from the one-hot mask, per pixel (summed over "
             "classes when multi-class)",
}


def _probabilities(logit: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logit) if logit.shape[1] == 1 else torch.softmax(logit, dim=1)


def image_stats(logit: torch.Tensor, mask: torch.Tensor, bins: int = BINS) -> np.ndarray:
    """The calibration statistics of one image: ``logit`` (1, C, H, W), ``mask`` (1, 1, H, W) {0, 1} or
    class indices. A vector of 3 * bins + 2 numbers: pixels, confidence sums and outcome sums per bin,
    then the Brier terms' sum and the pixels."""
    probs = _probabilities(logit.double())
    target = mask.long()
    if probs.shape[1] == 1:
        confidence, outcome = probs.flatten(), (target > 0).double().flatten()
        brier = ((confidence - outcome) ** 2).sum()
    else:
        top, predicted = probs.max(dim=1, keepdim=True)
        confidence, outcome = top.flatten(), (predicted == target).double().flatten()
        onehot = F.one_hot(target[:, 0], probs.shape[1]).permute(0, 3, 1, 2).double()
        brier = ((probs - onehot) ** 2).sum()
    boundaries = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    outcome_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, outcome)
    return np.concatenate([counts.numpy(), conf_sum.numpy(), outcome_sum.numpy(),
                           [float(brier), float(confidence.numel())]])


def _split(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    bins = (len(stats) - 2) // 3
    return stats[:bins], stats[bins : 2 * bins], stats[2 * bins : 3 * bins], float(stats[-2]), float(stats[-1])


def ece(stats: np.ndarray) -> float:
    """The expected calibration error of summed :func:`image_stats`."""
    counts, conf_sum, outcome_sum, _, pixels = _split(stats)
    if pixels == 0:
        return math.nan
    return float(np.abs(conf_sum - outcome_sum).sum() / pixels)  # sum over bins of n_b/N * |conf_b - acc_b|


def brier(stats: np.ndarray) -> float:
    """The Brier score of summed :func:`image_stats`."""
    *_, brier_sum, pixels = _split(stats)
    return brier_sum / pixels if pixels else math.nan


def reliability(stats: np.ndarray) -> dict:
    """The reliability diagram of summed :func:`image_stats`, as metrics.json keeps it: per bin its
    pixels, mean confidence and mean outcome (None for an empty bin)."""
    counts, conf_sum, outcome_sum, _, _ = _split(stats)
    mean = lambda s: [None if n == 0 else float(v / n) for v, n in zip(s, counts)]  # noqa: E731
    return {"bins": len(counts), "pixels": [int(n) for n in counts], "confidence": mean(conf_sum),
            "outcome": mean(outcome_sum)}


def fit_temperature(logits: torch.Tensor | list[torch.Tensor], masks, steps: int = 100) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``logits / T`` on ``masks``
    (the val split; every pixel), by L-BFGS on log T. ``logits`` (N, C, H, W) or N (1, C, H_i, W_i)
    maps already at their masks' sizes; ``masks`` alike, (N, 1, H, W) or N masks."""
    pairs = [(logits[i : i + 1] if isinstance(logits, torch.Tensor) else logits[i],
              torch.as_tensor(masks[i]).reshape(1, 1, *masks[i].shape[-2:])) for i in range(len(logits))]
    flat = torch.cat([lg.double().permute(0, 2, 3, 1).reshape(-1, lg.shape[1]) for lg, _ in pairs])
    target = torch.cat([m.long().flatten() for _, m in pairs])
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = flat / log_t.exp()
        if flat.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(scaled[:, 0], (target > 0).double())
        else:
            loss = F.cross_entropy(scaled, target)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.detach().exp())
