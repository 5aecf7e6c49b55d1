"""Calibration (segbench.evaluation.calibration): ECE and Brier by hand for a perfect and for constant
predictors, against torchmetrics' calibration errors (binary and multi-class), pooled over images, and
temperature scaling; a run's metrics.json, test_per_image.csv, reliability.png and its report."""
import json
import math

import numpy as np
import pytest
import torch

from segbench.evaluation import calibration as cal
from segbench.evaluation.scoring import image_means, per_image
from segbench.train import run
from tests.conftest import TINY, compose_cfg


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def binary(p: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    return cal.image_stats(torch.logit(p.double()).reshape(1, 1, *p.shape), mask.reshape(1, 1, *mask.shape))


def test_perfect_and_constant_predictors_by_hand():
    mask = torch.zeros(10, 10)
    mask[:3] = 1  # 30 % foreground
    perfect = binary(torch.where(mask > 0, 1 - 1e-12, 1e-12).double(), mask)
    assert cal.ece(perfect) == pytest.approx(0, abs=1e-11) and cal.brier(perfect) == pytest.approx(0, abs=1e-11)
    matched = binary(torch.full((10, 10), 0.3, dtype=torch.float64), mask)  # 0.3 where 30 % are foreground
    assert cal.ece(matched) == pytest.approx(0, abs=1e-12)
    assert cal.brier(matched) == pytest.approx(0.3 * 0.7**2 + 0.7 * 0.3**2)  # 0.21
    half = binary(torch.full((10, 10), 0.5), mask)  # 0.5 everywhere: off by 0.2
    assert cal.ece(half) == pytest.approx(0.2) and cal.brier(half) == pytest.approx(0.25)
    # multi-class, uniform over 3 classes, every pixel class 0: confidence 1/3, top class (the first) right
    uniform = cal.image_stats(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    assert cal.ece(uniform) == pytest.approx(2 / 3)
    assert cal.brier(uniform) == pytest.approx((1 - 1 / 3) ** 2 + 2 * (1 / 3) ** 2)
    diagram = cal.reliability(half)
    assert diagram["bins"] == 15 and diagram["pixels"][7] == 100 and diagram["outcome"][7] == pytest.approx(0.3)
    assert diagram["confidence"][0] is None


def test_ece_and_brier_agree_with_torchmetrics_pooled_over_images():
    metrics = pytest.importorskip("torchmetrics.classification", reason="torchmetrics (the dev extra) is not installed")
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16) * 3
    masks = (torch.rand(4, 1, 16, 16) < torch.sigmoid(logits * 0.7)).to(torch.uint8)
    columns = per_image(logits, masks, 0.5)
    means = image_means(columns)
    probs = torch.sigmoid(logits).flatten()
    reference = metrics.BinaryCalibrationError(n_bins=15, norm="l1")(probs, masks.flatten().long())
    assert means["test/ece"] == pytest.approx(float(reference), abs=1e-6)  # every pixel pooled
    assert means["test/brier"] == pytest.approx(float(((probs - masks.flatten()) ** 2).mean()), abs=1e-6)
    first = metrics.BinaryCalibrationError(n_bins=15)(torch.sigmoid(logits[0]).flatten(), masks[0].flatten().long())
    assert columns["ece"][0] == pytest.approx(float(first), abs=1e-6)  # and per image
    assert means["test/ece"] != pytest.approx(np.mean(columns["ece"]), abs=1e-6)  # pooled, not a mean of images
    # multi-class: top probability against correctness
    logits = torch.randn(3, 4, 12, 12) * 2
    masks = torch.randint(0, 4, (3, 1, 12, 12))
    means = image_means(per_image(logits, masks, 0.5, class_names=["bg", "a", "b", "c"]))
    probs = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 4)
    reference = metrics.MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")(probs, masks.flatten())
    assert means["test/ece"] == pytest.approx(float(reference), abs=1e-6)
    onehot = torch.nn.functional.one_hot(masks.flatten(), 4).double()
    assert means["test/brier"] == pytest.approx(float(((probs.double() - onehot) ** 2).sum(1).mean()), abs=1e-6)


def test_a_temperature_undoes_overconfident_logits():
    torch.manual_seed(1)
    calibrated = torch.randn(6, 1, 16, 16) * 2
    masks = (torch.rand(6, 1, 16, 16) < torch.sigmoid(calibrated)).to(torch.uint8)
    assert cal.fit_temperature(calibrated * 4, masks) == pytest.approx(4, rel=0.15)


def test_a_run_records_its_calibration_and_a_temperature(tmp_path):
    out = tmp_path / "run"
    metrics = run(compose_cfg([*TINY, "eval.calibration=temperature", f"output_dir={out}"]))
    saved = json.loads((out / "metrics.json").read_text())
    assert 0 <= saved["test/ece"] <= 1 and 0 <= saved["test/brier"] <= 1 and saved == metrics
    assert saved["temperature"] > 0 and 0 <= saved["test/ece_temperature"] <= 1
    assert sum(saved["calibration"]["pixels"]) == 3 * 32 * 32  # every test pixel
    header = (out / "test_per_image.csv").read_text().splitlines()[0].split(",")
    assert "ece" in header and "brier" in header and "_calibration" not in header
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "ece" in saved["definitions"] and "temperature" in saved["definitions"]
