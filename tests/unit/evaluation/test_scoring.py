"""Test-time augmentation, post-processing and the threshold choice (scoring.py)."""
import math

import numpy as np
import pytest
import torch

from segbench.engine import FitSettings, Normalizer, Trainer
from segbench.evaluation.scoring import choose_threshold, largest_component, predict_masks, predict_tta
from segbench.train import run
from tests.conftest import TINY, compose_cfg, tiny_data


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
