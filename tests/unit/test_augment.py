"""Batch augmentation on the device (augment.py, conf/augment/): masks move with images, seeded draws."""
import pytest
import torch
from hydra.utils import instantiate

from segbench.augment import Augment
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
    import segbench.report.figures

    monkeypatch.setattr(segbench.report.figures, "plot_augmentations", lambda *a, **k: None)
    unplotted = run(compose_cfg([*args, f"output_dir={tmp_path / 'unplotted'}"]))
    assert unplotted["test/loss"] == augmented["test/loss"]  # the figure's draws do not touch training's RNG
