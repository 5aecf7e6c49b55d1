"""The figures draw the mask that was scored: one decision (scoring.decide) from logits to mask."""
import matplotlib.pyplot as plt
import numpy as np
import torch

from segbench.data import SegArrays
from segbench.evaluation.scoring import decide, per_image
from segbench.report.figures import prediction_figure


def two_blobs() -> tuple[SegArrays, torch.Tensor]:
    """One 16x16 case whose prediction holds a large and a small blob; the mask is the large one."""
    logits = torch.full((1, 1, 16, 16), -4.0)
    logits[..., 2:10, 2:10] = 4.0  # 64 px, the lesion
    logits[..., 12:14, 12:14] = 4.0  # 4 px, what eval.postprocess=largest removes
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    masks[..., 2:10, 2:10] = 1
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    return SegArrays(images, masks, ["case0"]), logits


def drawn(fig: plt.Figure) -> tuple[np.ndarray, str]:
    """The prediction panel of the first row: what it shows and its title."""
    ax = fig.axes[3]
    return np.asarray(ax.images[0].get_array()), ax.get_title()


def test_the_drawn_prediction_is_the_scored_one_with_postprocessing():
    part, logits = two_blobs()
    fig = prediction_figure(part, logits, 0.5, postprocess="largest")
    shown, title = drawn(fig)
    plt.close(fig)
    scored = decide(logits, 0.5, "largest")[0, 0].numpy()
    assert np.array_equal(shown, scored) and shown.sum() == 64  # the small blob is not drawn
    assert per_image(logits, part.masks, 0.5, "largest")["iou"] == [1.0] and title == "prediction (IoU 1.000)"


def test_without_postprocessing_both_blobs_are_drawn_and_scored():
    part, logits = two_blobs()
    fig = prediction_figure(part, logits, 0.5)
    shown, title = drawn(fig)
    plt.close(fig)
    assert shown.sum() == 68 and title == f"prediction (IoU {64 / 68:.3f})"
