"""Every loss on hand-computed values; gradients; validation; every conf/loss/*.yaml trains a step."""
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from segbench.losses import (
    BCEHybridLoss,
    BCELoss,
    ComboLoss,
    DiceLoss,
    FocalLoss,
    LovaszHingeLoss,
    TverskyLoss,
)
from tests.conftest import CONF, compose_cfg

BIG = 100.0  # sigmoid(100) == 1 and sigmoid(-100) == 0 in float32
LN2 = math.log(2)
LOSS_CONFIGS = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))

# A 2x2 image whose top row is lesion: y = [[1, 1], [0, 0]].
Y = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
PERFECT = (2 * Y - 1) * BIG
WRONG = -PERFECT
HALF = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere


@pytest.mark.parametrize(
    "loss, perfect, wrong, half",
    [
        (BCELoss(), 0.0, BIG, LN2),
        (DiceLoss(smooth=1.0), 0.0, 1 - 1 / 5, 1 - 3 / 5),  # (2TP+1)/(2TP+FP+FN+1): 5/5, 1/5, 3/5
        (TverskyLoss(0.3, 0.7, 1.0), 0.0, 1 - 1 / 3, 1 - 2 / 3),  # (TP+1)/(TP+.3FP+.7FN+1): 3/3, 1/3, 2/3
        (FocalLoss(gamma=2.0), 0.0, BIG, 0.25 * LN2),  # (1-p_t)^2 = 0.25 at p = 0.5
        (FocalLoss(gamma=2.0, modulate="positive"), 0.0, BIG, (2 * 0.25 * LN2 + 2 * LN2) / 4),
        (FocalLoss(gamma=2.0, alpha=0.25), 0.0, (0.25 * 2 * BIG + 0.75 * 2 * BIG) / 4, 0.125 * LN2),
        # BCE + 2 * (mean (y-p)^2 + mean |p| + 1 * (mean |dx| + mean |dy|)); dy = 1 between the rows
        (BCEHybridLoss(lambda_=2.0, gamma=1.0), 2 * (0 + 0.5 + 1), BIG + 2 * (1 + 0.5 + 1), LN2 + 2 * (0.25 + 0.5)),
        (LovaszHingeLoss(), 0.0, 1 + BIG, 1.0),  # hinge errors 1 - s*x: -99, 101, 1; Jaccard weights sum to 1
        (ComboLoss({"bce": BCELoss(), "dice": DiceLoss()}, {"bce": 1.0, "dice": 2.0}), 0.0, BIG + 1.6, LN2 + 0.8),
    ],
    ids=["bce", "dice", "tversky", "focal", "focal_positive", "focal_alpha", "bce_hybrid", "lovasz", "combo"],
)
def test_loss_hand_computed(loss, perfect, wrong, half):
    assert loss(PERFECT, Y).item() == pytest.approx(perfect, abs=1e-5)
    assert loss(WRONG, Y).item() == pytest.approx(wrong, rel=1e-5)
    assert loss(HALF, Y).item() == pytest.approx(half, abs=1e-6)


def test_bce_equals_torch():
    logits = torch.randn(2, 1, 8, 8) * 5
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert BCELoss()(logits, target).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target).item(), abs=1e-6)
    assert BCELoss(pos_weight=3.0)(logits, target).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0)).item(), abs=1e-6)


def test_focal_with_gamma_zero_is_bce():
    logits = torch.randn(2, 1, 8, 8) * 4
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(BCELoss()(logits, target).item(), abs=1e-6)


def test_hybrid_differs_from_notebook_double_sigmoid():
    """The notebook's BCE term saw sigmoid(logits) as logits; ours sees the logits."""
    ours = BCEHybridLoss(lambda_=0.0)(PERFECT, Y).item()
    notebook = F.binary_cross_entropy_with_logits(torch.sigmoid(PERFECT), Y).item()
    assert ours == pytest.approx(0.0, abs=1e-6) and notebook > 0.5


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_gradients_finite_for_extreme_logits(name):
    loss_fn = instantiate(compose_cfg([f"loss={name}"]).loss, _convert_="all")
    logits = (torch.tensor([[BIG, -BIG], [BIG, -BIG]]).view(1, 1, 2, 2)).requires_grad_()
    value = loss_fn(logits, Y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_every_loss_config_trains_a_step(name):
    cfg = compose_cfg([f"loss={name}", "model=unet", "model.base_width=4"])
    model = instantiate(cfg.model)
    loss_fn = instantiate(cfg.loss, _convert_="all")
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    x = torch.randn(2, 3, 32, 32)
    y = torch.zeros(2, 1, 32, 32)
    y[:, :, 8:24, 8:24] = 1
    before = [p.detach().clone() for p in model.parameters()]
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_multiclass_mode_follows_channels():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4))
    assert BCELoss()(logits, target).item() == pytest.approx(F.cross_entropy(logits, target[:, 0]).item(), abs=1e-6)
    perfect = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 2 * BIG - BIG
    assert DiceLoss(smooth=0.0)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert TverskyLoss(smooth=0.0)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target[:, 0]).item(), abs=1e-5)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: FocalLoss(gamma=-1.0), "gamma=-1.0 is invalid; expected a number >= 0"),
        (lambda: FocalLoss(alpha=1.5), "alpha=1.5 is invalid; expected a number >= 0 and <= 1"),
        (
            lambda: FocalLoss(modulate="negative"),
            "modulate='negative' is invalid; expected one of \\['both', 'positive'\\]",
        ),
        (lambda: FocalLoss(modulate="positve"), "did you mean 'positive'"),
        (lambda: DiceLoss(smooth=-1.0), "smooth=-1.0 is invalid; expected a number >= 0"),
        (lambda: DiceLoss(smooth=float("nan")), "smooth=nan is invalid; expected a number"),
        (lambda: TverskyLoss(alpha=0.0, beta=0.0), "alpha \\+ beta must be > 0"),
        (lambda: BCELoss(pos_weight=0.0), "pos_weight=0.0 is invalid; expected a number > 0"),
        (lambda: BCEHybridLoss(lambda_=-2.0), "lambda_=-2.0 is invalid; expected a number >= 0"),
        (lambda: ComboLoss({"bce": BCELoss()}, {"dice": 1.0}), r"weights \['dice'\] do not match losses \['bce'\]"),
        (lambda: ComboLoss({}, {}), "at least one loss"),
    ],
)
def test_bad_loss_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_binary_only_losses_reject_multiclass():
    with pytest.raises(ValueError, match="binary: expected 1 logit channel, got 3"):
        LovaszHingeLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
