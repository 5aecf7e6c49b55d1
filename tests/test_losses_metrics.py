import math

import pytest
import torch
import torch.nn.functional as F

from segbench import metrics as M
from segbench.losses import BCELoss, DiceLoss

BIG = 100.0  # sigmoid(100) == 1 and sigmoid(-100) == 0 in float32


def as_map(values):
    """A list of per-pixel values -> (1, 1, 1, N) tensor."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_bce_hand_computed():
    # mean(log(1 + e^-2), log(1 + e^-1)) = (0.126928 + 0.313262) / 2
    loss = BCELoss()(as_map([2.0, -1.0]), as_map([1, 0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2, abs=1e-6)
    assert BCELoss()(as_map([0.0]), as_map([1])).item() == pytest.approx(math.log(2), abs=1e-6)


def test_bce_equals_torch_and_is_stable():
    logits = torch.randn(2, 1, 8, 8) * 5
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert BCELoss()(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    extreme = torch.tensor([BIG, -BIG, BIG, -BIG]).view(1, 1, 2, 2).requires_grad_()
    loss = BCELoss()(extreme, as_map([0, 1, 1, 0]).view(1, 1, 2, 2))
    loss.backward()
    assert loss.item() == pytest.approx(BIG / 2, rel=1e-5)  # two pixels wrong by 100 nats, two right
    assert torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize(
    "logits, target, expected",
    [
        ([BIG, BIG, -BIG, -BIG], [1, 1, 0, 0], 0.0),  # perfect: (2*2+1)/(2+2+1)
        ([-BIG, -BIG, -BIG, -BIG], [1, 1, 1, 1], 0.8),  # all wrong: 1 - 1/(0+4+1)
        ([0.0, 0.0, 0.0, 0.0], [1, 1, 0, 0], 0.4),  # p = 0.5: 1 - (2*1+1)/(2+2+1)
    ],
)
def test_dice_hand_computed(logits, target, expected):
    assert DiceLoss(smooth=1.0)(as_map(logits), as_map(target)).item() == pytest.approx(expected, abs=1e-6)


def test_dice_gradients_finite_for_extreme_logits():
    logits = torch.tensor([BIG, -BIG, BIG, -BIG]).view(1, 1, 2, 2).requires_grad_()
    DiceLoss()(logits, torch.tensor([1.0, 1, 0, 0]).view(1, 1, 2, 2)).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_dice_rejects_bad_smooth(bad):
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        DiceLoss(smooth=bad)


def test_confusion_iou_dice_hand_computed():
    pred = torch.tensor([[1, 1, 0, 0]]).bool()
    target = torch.tensor([[1, 0, 1, 0]])
    c = M.confusion(pred, target)
    assert [c[k].item() for k in ("tp", "fp", "fn", "tn")] == [1, 1, 1, 1]
    assert M.iou(c).item() == pytest.approx(1 / 3)
    assert M.dice(c).item() == pytest.approx(0.5)


def test_empty_policy():
    empty = torch.zeros(1, 4)
    full = torch.ones(1, 4)
    both_empty = M.confusion(empty, empty)
    assert M.iou(both_empty).item() == 1.0 and M.dice(both_empty).item() == 1.0
    missed = M.confusion(empty, full)
    assert M.iou(missed).item() == 0.0 and M.dice(missed).item() == 0.0
    hallucinated = M.confusion(full, empty)
    assert M.iou(hallucinated).item() == 0.0


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
