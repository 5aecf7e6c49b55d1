"""The training recipe's parts: augmentation, EMA, early stopping, gradient clipping, TTA, post-processing."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from segbench.augment import Augment
from segbench.data import SegArrays
from segbench.engine import EMA, Callback, EarlyStopping, FitSettings, GradClip, Normalizer, Trainer
from segbench.scoring import choose_threshold, largest_component, predict_masks, predict_tta
from segbench.errors import UserError
from segbench.train import run
from tests.conftest import CONF, TINY, compose_cfg

AUGMENTS = sorted(p.stem for p in (CONF / "augment").glob("*.yaml"))


def square_batch(size=32):
    """Two images whose red channel is exactly their mask (an off-centre square), so any geometric
    transform can be checked: the augmented mask must be where the augmented red channel is."""
    masks = torch.zeros(2, 1, size, size)
    masks[0, 0, 4:12, 6:20] = 1
    masks[1, 0, 18:30, 2:9] = 1
    images = torch.cat([masks, torch.full_like(masks, 0.3), torch.full_like(masks, 0.6)], dim=1)
    return images, masks


@pytest.mark.parametrize("name", AUGMENTS)
def test_augment_configs_keep_masks_binary_and_are_seeded(name):
    augment = instantiate(compose_cfg([f"augment={name}"]).augment, _convert_="all")
    images, masks = square_batch()
    torch.manual_seed(1)
    a_img, a_mask = augment(images, masks)
    torch.manual_seed(1)
    b_img, b_mask = augment(images, masks)
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)  # deterministic under the seed
    assert a_img.shape == images.shape and a_mask.shape == masks.shape
    assert set(a_mask.unique().tolist()) <= {0.0, 1.0} and 0 <= a_img.min() and a_img.max() <= 1


@pytest.mark.parametrize("op", [
    {"_target_": "kornia.augmentation.RandomHorizontalFlip", "p": 1.0},
    {"_target_": "kornia.augmentation.RandomVerticalFlip", "p": 1.0},
    {"_target_": "kornia.augmentation.RandomRotation90", "times": [1, 1], "p": 1.0},
    {"_target_": "kornia.augmentation.RandomAffine", "degrees": 90, "translate": [0.1, 0.1], "scale": [0.8, 1.2],
     "padding_mode": "reflection", "p": 1.0},
])
def test_geometric_ops_move_image_and_mask_together(op):
    augment = Augment([instantiate(op)])
    images, masks = square_batch()
    torch.manual_seed(0)
    a_img, a_mask = augment(images, masks)
    # the mask (nearest neighbour) agrees with the red channel (bilinear) except on a thin border
    agree = (a_mask[:, 0] == (a_img[:, 0] > 0.5).float()).float().mean().item()
    assert agree > 0.97 and a_mask.sum() > 0


def test_known_transforms_land_where_expected():
    images, masks = square_batch()
    flipped = Augment([instantiate({"_target_": "kornia.augmentation.RandomHorizontalFlip", "p": 1.0})])(images, masks)
    assert torch.equal(flipped[1], masks.flip(-1)) and torch.equal(flipped[0], images.flip(-1))
    rotated = Augment([instantiate({"_target_": "kornia.augmentation.RandomRotation90", "times": [1, 1],
                                    "p": 1.0})])(images, masks)
    assert torch.equal(rotated[1], masks.rot90(1, (-2, -1))) or torch.equal(rotated[1], masks.rot90(-1, (-2, -1)))
    jitter = Augment([instantiate({"_target_": "kornia.augmentation.ColorJitter", "brightness": 0.5, "p": 1.0})])
    torch.manual_seed(0)
    out_img, out_mask = jitter(images, masks)
    assert torch.equal(out_mask, masks) and not torch.equal(out_img, images)  # photometric: the image only


def test_hue_rotation_keeps_luma_and_is_the_identity_at_zero():
    from segbench.augment import RandomHueRotation

    images, masks = square_batch()
    images = torch.rand_like(images) * 0.2 + 0.4  # near grey: no colour leaves [0, 1], nothing is clipped
    assert torch.allclose(RandomHueRotation(0.0, p=1.0)(images), images, atol=1e-6)
    torch.manual_seed(0)
    shifted = Augment([RandomHueRotation(0.2, p=1.0)])(images, masks)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((shifted[0] * luma).sum(1), (images * luma).sum(1), atol=1e-5, rtol=0)
    assert not torch.allclose(shifted[0], images) and torch.equal(shifted[1], masks)
    # a half turn maps a colour to its opposite through grey: chroma (I, Q) negated
    half = RandomHueRotation(0.5, p=1.0).apply_transform(images, {"hue_factor": torch.full((2,), 0.5)}, {})
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a, b = (torch.einsum("ij,bjhw->bihw", yiq, t) for t in (images, half))
    torch.testing.assert_close(b[:, 1:], -a[:, 1:], atol=1e-5, rtol=0)


def test_augment_rejects_a_non_module():
    with pytest.raises(TypeError, match=r"augment.ops\[0\] is dict"):
        Augment([{"p": 0.5}])


def test_run_with_augmentation_writes_the_figure(tmp_path, monkeypatch):
    """(Resuming such a run exactly: test_reliability.py.)"""
    args = [*TINY, "augment=standard"]
    augmented = run(compose_cfg([*args, f"output_dir={tmp_path / 'augmented'}"]))
    assert (tmp_path / "augmented" / "augmentations.png").read_bytes()[:4] == b"\x89PNG"
    plain = run(compose_cfg([*TINY, f"output_dir={tmp_path / 'plain'}"]))
    assert plain["test/loss"] != augmented["test/loss"] and not (tmp_path / "plain" / "augmentations.png").exists()
    import segbench.train

    monkeypatch.setattr(segbench.train, "plot_augmentations", lambda *a, **k: None)
    unplotted = run(compose_cfg([*args, f"output_dir={tmp_path / 'unplotted'}"]))
    assert unplotted["test/loss"] == augmented["test/loss"]  # the figure's draws do not touch training's RNG


# -- engine callbacks --------------------------------------------------------
def tiny_trainer(callbacks=(), **settings):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return Trainer(model, torch.nn.functional.binary_cross_entropy_with_logits, optimizer,
                   FitSettings(**{"epochs": 1, "batch_size": 2, **settings}), torch.device("cpu"), callbacks=callbacks)


def tiny_data(n=4, size=8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.5).to(torch.uint8)
    return SegArrays(images, masks, [f"C{i}" for i in range(n)])


def test_ema_weights_are_the_hand_computed_average():
    class Recorder(Callback):
        """Copies the trained weights after each optimizer step (it runs before EMA's update)."""

        def __init__(self):
            self.snapshots = []

        def on_train_batch_end(self, trainer, batch, running_loss):
            self.snapshots.append({k: v.detach().clone() for k, v in trainer.module.state_dict().items()})

    recorder = Recorder()
    trainer = tiny_trainer([recorder, EMA(0.75)])
    data = tiny_data()
    trainer.normalizer = Normalizer.fit(data.images)
    trainer.train_epoch(data.images, data.masks, 1)  # two optimizer steps: batch 2 of 4 images
    first, second = recorder.snapshots
    averaged = trainer.averaged.state_dict()
    for key, value in averaged.items():
        if value.is_floating_point():  # weights and BatchNorm statistics; the first step copies
            torch.testing.assert_close(value, 0.75 * first[key] + 0.25 * second[key])
    state = trainer.state(1)
    assert state["model"].keys() == averaged.keys() and "train_model" in state


def test_ema_agrees_with_torch_averaged_model_exactly():
    """The EMA callback against the reference, torch's AveragedModel with its EMA function, fed the same
    trained weights (and BatchNorm statistics) after each of six optimizer steps: equal to the bit."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    class Reference(Callback):
        def setup(self, trainer):
            self.model = AveragedModel(trainer.module, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)

        def on_train_batch_end(self, trainer, batch, running_loss):
            self.model.update_parameters(trainer.module)

    reference = Reference()
    trainer = tiny_trainer([reference, EMA(0.9)])
    data = tiny_data(n=12)
    trainer.normalizer = Normalizer.fit(data.images)
    trainer.train_epoch(data.images, data.masks, 1)
    expected = reference.model.module.state_dict()
    assert int(reference.model.n_averaged) == trainer.callback(EMA).steps == 6
    for key, value in trainer.averaged.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_early_stopping_stops_at_the_expected_epoch():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    fake = SimpleNamespace(stop_requested=False)
    for epoch, value in enumerate([0.5, 0.6, 0.605, 0.61, 0.7], 1):  # +0.005, +0.01 are not > 0.01
        stop.on_epoch_end(fake, {"epoch": epoch, "val/iou": value})
        if fake.stop_requested:
            break
    assert stop.stopped_epoch == 4 and epoch == 4


def test_early_stopping_ends_a_run_and_says_when(tmp_path):
    metrics = run(compose_cfg([*TINY, "trainer.epochs=30", "callbacks=early_stop",
                               "callbacks.early_stop.patience=1", "callbacks.early_stop.min_delta=0.5", f"output_dir={tmp_path}"]))
    assert metrics["stopped_epoch"] == 2  # no epoch can beat the first by 0.5 IoU
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 2


def test_grad_clip_bounds_the_gradient_norm():
    model = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    fake = SimpleNamespace(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1),
                           scaler=torch.amp.GradScaler("cpu", enabled=False))
    GradClip(1.5).on_before_optimizer_step(fake)
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert norm.item() == pytest.approx(1.5, rel=1e-5)


# -- test-time augmentation and post-processing -----------------------------------
class Pixelwise(torch.nn.Module):
    """A 1x1 conv: equivariant to every flip and rotation."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.conv(x)


class Ramp(torch.nn.Module):
    """Ignores its input: logits 0, 1, ..., W-1 along each row (not equivariant)."""

    def forward(self, x):
        return torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, *x.shape[-2:]).clone()


def predictor(model):
    trainer = Trainer(model, None, None, FitSettings(epochs=1, batch_size=2, eval_batch_size=3), torch.device("cpu"))
    trainer.normalizer = Normalizer([0.5] * 3, [0.25] * 3)
    return trainer


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tta_of_an_equivariant_model_equals_its_plain_output(mode):
    torch.manual_seed(0)
    trainer, data = predictor(Pixelwise()), tiny_data(n=5)
    torch.testing.assert_close(predict_tta(trainer, data, mode), trainer.predict(data))


def test_tta_averages_the_transformed_back_predictions():
    trainer, data = predictor(Ramp()), tiny_data(n=2, size=6)
    assert torch.equal(predict_tta(trainer, data, "none"), trainer.predict(data))
    # ramp and mirrored ramp (twice each): the mean is (W - 1) / 2 everywhere
    torch.testing.assert_close(predict_tta(trainer, data, "flips"), torch.full((2, 1, 6, 6), 2.5))


def test_largest_component_keeps_the_biggest_blob_and_fills_holes():
    pred = np.zeros((10, 10), bool)
    pred[1:6, 1:6] = True
    pred[3, 3] = False  # a hole
    pred[8:10, 8:10] = True  # a smaller blob
    out = largest_component(pred)
    want = np.zeros((10, 10), bool)
    want[1:6, 1:6] = True
    assert np.array_equal(out, want)
    assert not largest_component(np.zeros((4, 4), bool)).any()
    diagonal = np.eye(4, dtype=bool)  # 8-connected: one component
    assert np.array_equal(largest_component(diagonal), diagonal)


def test_threshold_choice_sees_the_post_processing():
    """A lesion (p 0.9) with a faint rim (p 0.22) and a stray speck (p 0.28) elsewhere: without
    post-processing the speck forces a threshold above it (losing the rim); with it the speck is
    dropped, so the low threshold that keeps the rim wins."""
    probs = torch.full((1, 1, 10, 10), 0.01)
    probs[0, 0, 2:6, 2:6] = 0.9   # lesion core, 16 px
    probs[0, 0, 2:6, 6] = 0.22    # its rim, 4 px
    probs[0, 0, 8:10, 0:3] = 0.28  # speck, 6 px, not touching the lesion
    logits = torch.log(probs / (1 - probs))
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 2:6, 2:7] = 1
    assert choose_threshold(logits, mask) == 0.3  # core alone: IoU 16/20, better than 20/26 with the speck
    assert choose_threshold(logits, mask, postprocess="largest") == 0.05  # core + rim: IoU 1
    assert torch.equal(predict_masks(logits, 0.05, "largest"), mask.bool())


def test_tta_and_postprocess_are_recorded(tmp_path):
    metrics = run(compose_cfg([*TINY, "eval.tta=flips", "eval.postprocess=largest", f"output_dir={tmp_path}"]))
    assert metrics["definitions"]["tta"].startswith("mean logits of identity")
    assert metrics["definitions"]["postprocess"].startswith("largest")
    assert 0 <= metrics["val_final/iou"] <= 1 and math.isfinite(metrics["test/iou"])


def test_the_monitor_chooses_the_best_epoch_and_is_recorded(tmp_path):
    """trainer.monitor=val/loss: the best checkpoint is the epoch with the lowest val loss (mode auto = min)."""
    metrics = run(compose_cfg([*TINY, "trainer.epochs=4", "optimizer.lr=3e-3", "trainer.monitor=val/loss",
                               f"output_dir={tmp_path}"]))
    lines = (tmp_path / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]
    best = min(rows, key=lambda r: r["val/loss"])
    assert metrics["monitor"] == {"key": "val/loss", "mode": "min", "value": best["val/loss"],
                                  "epoch": int(best["epoch"])}
    assert metrics["best_epoch"] == int(best["epoch"]) and metrics["val/iou"] == best["val/iou"]
    assert metrics["definitions"]["checkpoint"] == f"best val/loss (epoch {int(best['epoch'])})"


def test_early_stopping_follows_a_minimised_monitor():
    stop = EarlyStopping(patience=2, monitor="val/loss")
    fake = SimpleNamespace(stop_requested=False)
    for epoch, value in enumerate([0.5, 0.4, 0.45, 0.41, 0.3], 1):  # epoch 2 is the best; 3 and 4 are not
        stop.on_epoch_end(fake, {"epoch": epoch, "val/loss": value})
        if fake.stop_requested:
            break
    assert stop.monitor.mode == "min" and stop.stopped_epoch == 4


@pytest.mark.parametrize("overrides, message", [
    (["trainer.monitor=val/ioo"], r"trainer.monitor='val/ioo' is invalid; expected one of .*did you mean 'val/iou'"),
    (["trainer.monitor=val/iou_lesion"], r"trainer.monitor='val/iou_lesion' is invalid"),  # binary: no classes
    (["trainer.monitor_mode=up"], r"trainer.monitor_mode='up' is invalid; expected one of"),
])
def test_a_bad_monitor_is_named_before_training(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(compose_cfg([*TINY, *overrides, f"output_dir={tmp_path}"]))
    assert not (tmp_path / "history.csv").exists()


def test_a_class_column_is_a_monitor_of_a_multi_class_run():
    from segbench.build import build_monitor

    cfg = compose_cfg(["trainer.monitor=val/dice_ring"])
    with pytest.raises(UserError, match="did you mean 'val/dice'"):
        build_monitor(cfg.trainer)  # a binary run has no class columns
    assert build_monitor(cfg.trainer, classes_known=False).key == "val/dice_ring"  # checked with the data
    monitor = build_monitor(cfg.trainer, ["background", "lesion", "ring"])
    assert (monitor.key, monitor.mode) == ("val/dice_ring", "max")
