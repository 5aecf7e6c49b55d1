"""Metrics on hand-computed masks (losses are in test_losses.py)."""
import math

import numpy as np
import pytest
import torch

from segbench import metrics as M
from segbench.evaluation.scoring import by_group, choose_threshold, image_means, per_image

BIG = 100.0


def test_confusion_and_every_ratio_metric():
    pred = torch.tensor([[1, 1, 0, 0]]).bool()
    target = torch.tensor([[1, 0, 1, 0]])
    c = M.confusion(pred, target)
    assert [c[k].item() for k in ("tp", "fp", "fn", "tn")] == [1, 1, 1, 1]
    values = M.all_metrics(c)
    assert values["iou"].item() == pytest.approx(1 / 3)
    assert values["dice"].item() == pytest.approx(0.5)
    for name in ("precision", "recall", "specificity", "accuracy"):
        assert values[name].item() == pytest.approx(0.5), name


def test_metrics_on_a_3x3_case():
    # target: 4 pixels; prediction: 3 of them plus 2 outside -> tp 3, fp 2, fn 1, tn 3
    target = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    pred = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    v = M.all_metrics(M.confusion(pred[None], target[None]))
    expected = {
        "iou": 3 / 6,
        "dice": 6 / 9,
        "precision": 3 / 5,
        "recall": 3 / 4,
        "specificity": 3 / 5,
        "accuracy": 6 / 9,
    }
    assert {k: v[k].item() for k in expected} == pytest.approx(expected)


def test_empty_policy():
    empty, full = torch.zeros(1, 4), torch.ones(1, 4)
    both_empty = M.all_metrics(M.confusion(empty, empty))
    assert all(v.item() == 1.0 for v in both_empty.values())
    missed = M.all_metrics(M.confusion(empty, full))  # precision 0/0 with a lesion to find -> 0
    assert missed["iou"].item() == 0.0 and missed["precision"].item() == 0.0 and missed["recall"].item() == 0.0
    hallucinated = M.all_metrics(M.confusion(full, empty))  # recall 0/0 with a false alarm -> 0
    assert hallucinated["iou"].item() == 0.0 and hallucinated["recall"].item() == 0.0
    assert hallucinated["specificity"].item() == 0.0


def test_mean_and_micro_reductions():
    # image 0: tp 1, fp 1, fn 1 (IoU 1/3); image 1: both empty (IoU 1 by policy)
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    target = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]])
    c = M.confusion(pred, target)
    assert M.iou(c).mean().item() == pytest.approx((1 / 3 + 1) / 2)
    assert M.micro(c)["iou"] == pytest.approx(1 / 3)
    assert M.micro(c)["accuracy"] == pytest.approx(6 / 8)


@pytest.mark.parametrize(
    "iou, score", [(0.0, 0.0), (0.5, 0.0), (0.51, 0.1), (0.74, 0.5), (0.75, 0.5), (0.96, 1.0), (1.0, 1.0)]
)
def test_thresholded_iou_score(iou, score):
    assert M.iou_score(torch.tensor([iou])).item() == pytest.approx(score)


def test_image_metrics_per_image():
    # image 0: perfect; image 1: prediction covers 4 px, mask 2 of them -> IoU 0.5, Dice 2/3
    logits = torch.tensor([[BIG, BIG, -BIG, -BIG], [BIG, BIG, BIG, BIG]]).view(2, 1, 2, 2)
    target = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0]]).view(2, 1, 2, 2)
    out = M.image_metrics(logits, target)
    assert out["iou"].tolist() == pytest.approx([1.0, 0.5])
    assert out["dice"].tolist() == pytest.approx([1.0, 2 / 3])
    assert out["iou_score"].tolist() == pytest.approx([1.0, 0.0])


def test_multiclass_prediction_is_argmax_foreground():
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 2, 0, 2] = 5.0  # classes 0, 1, 2
    assert M.binarize(logits).flatten().tolist() == [False, True, True]


def squares(shift: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((size, size), bool)
    b = np.zeros((size, size), bool)
    a[10:30, 10:30] = True
    b[10:30, 10 + shift : 30 + shift] = True
    return a, b


def test_hausdorff_of_shifted_squares():
    # Two 20x20 squares 5 px apart along x: every boundary distance is in 0..5, the largest 5,
    # and 60 of the 152 boundary distances are exactly 5, so HD = HD95 = 5.
    a, b = squares(5)
    assert M.hausdorff(a, b) == pytest.approx((5.0, 5.0))
    # A stray predicted pixel 31 px below the square's boundary moves HD, not HD95.
    b_stray = b.copy()
    b_stray[60, 20] = True
    hd, hd95 = M.hausdorff(b_stray, a)
    assert hd == pytest.approx(31.0) and hd95 == pytest.approx(5.0)
    assert M.hausdorff(a, a) == (0.0, 0.0)


def test_hausdorff_empty_policy():
    empty = np.zeros((8, 8), bool)
    a, _ = squares(0, size=40)
    assert M.hausdorff(empty, empty) == (0.0, 0.0)
    assert all(math.isnan(v) for v in M.hausdorff(empty, a))


def test_choose_threshold_maximises_val_iou():
    # lesion pixels at p = 0.32, background at p = 0.12: thresholds 0.15..0.30 separate them;
    # 0.15 is the first of the grid that does
    probs = torch.tensor([0.32, 0.32, 0.12, 0.12]).view(1, 1, 2, 2)
    logits = torch.log(probs / (1 - probs))
    assert choose_threshold(logits, torch.tensor([1, 1, 0, 0]).view(1, 1, 2, 2)) == 0.15


def test_per_image_at_original_resolution():
    # 2x2 logits (left column lesion) resized bilinearly to 4x4: columns 100, 50, -50, -100
    logits = torch.tensor([[BIG, -BIG], [BIG, -BIG]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    left_half = np.zeros((4, 4), bool)
    left_half[:, :2] = True
    first_col = np.zeros((4, 4), bool)
    first_col[:, 0] = True
    rows = per_image(logits, [left_half, first_col], threshold=0.5)
    assert rows["iou"] == pytest.approx([1.0, 0.5])
    assert rows["tp"] == [8, 4] and rows["fp"] == [0, 4]
    summary = image_means(rows)
    assert summary["test/iou"] == pytest.approx(0.75)
    assert summary["test/iou_micro"] == pytest.approx(12 / 16)
    groups = by_group(rows, ["common_nevus", "melanoma"], order=("common_nevus", "atypical_nevus", "melanoma"))
    assert list(groups) == ["common_nevus", "melanoma"]  # in the dataset's order, only groups present
    assert groups["melanoma"]["n"] == 1 and groups["melanoma"]["iou"] == pytest.approx(0.5)
    assert list(by_group(rows, ["b", "a"])) == ["a", "b"]  # no order given: sorted


def test_hausdorff_of_a_lesion_cut_by_the_image_border():
    """Mask pixels on the image border are boundary pixels (medpy's and MONAI's convention), by hand.

    20x20 image; the mask is the left half (columns 0-9), the prediction stops 3 px short of the left
    border (columns 3-9). Boundaries: the mask's columns 0 and 9 and rows 0 and 19 between them (56 px),
    the prediction's columns 3 and 9 and rows 0 and 19 between them (50 px). The largest distance is 3
    (prediction column 3 to mask column 0, and back); 34 of the 106 distances are 3, so HD95 is 3 too.
    Without border pixels (skimage's find_boundaries) the mask's outline would be column 9 alone and
    HD 6: the distance to the lesion's far side, not the prediction's error.
    """
    mask = np.zeros((20, 20), bool)
    mask[:, :10] = True
    pred = np.zeros((20, 20), bool)
    pred[:, 3:10] = True
    assert M.boundary(mask).sum() == 56 and M.boundary(pred).sum() == 50
    assert M.hausdorff(pred, mask) == pytest.approx((3.0, 3.0))
    assert M.hausdorff(mask, pred) == pytest.approx((3.0, 3.0))
