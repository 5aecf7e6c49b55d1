"""Multi-class runs: per-class metrics (hand-computed), post-processing per class, and a 3-class run's files."""
import csv
import json

import numpy as np
import pytest
import torch

from segbench.data import SyntheticDermoscopy
from segbench.errors import UserError
from segbench.evaluation.scoring import largest_per_class, per_image, predict_classes
from segbench.metrics import image_metrics
from segbench.report import build_report
from segbench.runs import RunDir
from segbench.train import run
from tests.conftest import TINY, compose_cfg


def logits_of(classes: np.ndarray, num_classes: int = 3) -> torch.Tensor:
    """(N, H, W) class map -> (N, C, H, W) logits whose argmax is that map."""
    return torch.nn.functional.one_hot(torch.as_tensor(classes).long(), num_classes).permute(0, 3, 1, 2).float()


# one 2x4 image: target and prediction, classes 0 (background), 1 (lesion), 2 (core)
TARGET = np.array([[[0, 1, 1, 2], [0, 1, 2, 2]]])
PRED = np.array([[[1, 1, 1, 2], [0, 0, 2, 1]]])
# lesion: tp 2 (0,1),(0,2); fp 2 (0,0),(1,3); fn 1 (1,1) -> IoU 2/5, Dice 4/7
# core:   tp 2 (0,3),(1,2); fp 0; fn 1 (1,3)             -> IoU 2/3, Dice 4/5


def test_per_class_metrics_by_hand():
    values = image_metrics(
        logits_of(PRED), torch.as_tensor(TARGET)[:, None].float(), class_names=["bg", "lesion", "core"]
    )
    assert values["iou_lesion"].item() == pytest.approx(2 / 5) and values["dice_lesion"].item() == pytest.approx(4 / 7)
    assert values["iou_core"].item() == pytest.approx(2 / 3) and values["dice_core"].item() == pytest.approx(4 / 5)
    assert values["iou"].item() == pytest.approx((2 / 5 + 2 / 3) / 2)  # mean over the foreground classes
    assert values["dice"].item() == pytest.approx((4 / 7 + 4 / 5) / 2)
    rows = per_image(logits_of(PRED), torch.as_tensor(TARGET)[:, None], 0.5, class_names=["bg", "lesion", "core"])
    assert rows["iou"][0] == pytest.approx((2 / 5 + 2 / 3) / 2) and rows["iou_core"][0] == pytest.approx(2 / 3)
    assert rows["precision"][0] == pytest.approx((2 / 4 + 2 / 2) / 2) and rows["recall"][0] == pytest.approx(2 / 3)
    assert (rows["tp"][0], rows["fp"][0], rows["fn"][0]) == (4, 2, 2)  # summed over the classes
    # an absent class (both empty) follows the empty policy: IoU 1, Hausdorff 0
    absent = per_image(logits_of(np.zeros((1, 2, 4), int)), torch.zeros(1, 1, 2, 4, dtype=torch.long), 0.5)
    assert absent["iou_class1"][0] == absent["iou_class2"][0] == 1.0 and absent["hd"][0] == 0.0


def test_largest_component_per_class():
    classes = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 2, 0, 2], [0, 0, 2, 0, 0]])
    kept = largest_per_class(classes, 3)
    assert np.array_equal(kept, [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 2, 0, 0]])
    assert np.array_equal(predict_classes(logits_of(classes[None]), "largest")[0, 0].numpy(), kept)


def test_synthetic_three_classes():
    binary = SyntheticDermoscopy(num_cases=4, image_size=32).arrays
    three = SyntheticDermoscopy(num_cases=4, image_size=32, num_classes=3).arrays
    assert set(three.masks.unique().tolist()) == {0, 1, 2}
    assert torch.equal(three.masks > 0, binary.masks > 0)  # the core lies inside the lesion
    outside = (three.masks == 0).expand_as(binary.images)
    assert torch.equal(three.images[outside], binary.images[outside])


def test_a_three_class_run_reports_every_class(tmp_path):
    out = tmp_path / "run"
    metrics = run(
        compose_cfg(
            [*TINY, "dataset.num_classes=3", "dataset.num_cases=16", f"output_dir={out}", "eval.postprocess=largest"]
        )
    )
    classes = ("iou_lesion", "dice_lesion", "iou_core", "dice_core")
    assert metrics["classes"] == ["lesion", "core"] and all(f"test/{k}" in metrics for k in classes)
    assert metrics["test/iou"] == pytest.approx((metrics["test/iou_lesion"] + metrics["test/iou_core"]) / 2)
    history = list(csv.DictReader(open(out / "history.csv")))
    assert all(f"val/{k}" in history[0] for k in classes) and "val/iou_score" not in history[0]
    per_case = list(csv.DictReader(open(out / "test_per_image.csv")))
    assert all(k in per_case[0] for k in classes)
    assert "per foreground class" in json.loads((out / "metrics.json").read_text())["definitions"]["classes"]
    assert (out / "predictions.png").stat().st_size > 0
    build_report([RunDir(out)], tmp_path / "report")
    summary = (tmp_path / "report/summary.md").read_text()
    assert "## Per class" in summary and "| iou lesion | dice lesion | iou core | dice core |" in summary
    # predict writes class indices for a multi-class run
    from PIL import Image

    from segbench import predict
    from segbench.data.synthetic import make_case

    Image.fromarray(make_case(9, 0, 40, 3)[0].transpose(1, 2, 0)).save(tmp_path / "new.png")
    assert predict.main([str(out), str(tmp_path / "new.png"), "-o", str(tmp_path / "pred"), "--no-progress"]) == 0
    assert set(np.unique(np.asarray(Image.open(tmp_path / "pred/new.png")))) <= {0, 1, 2}
    with pytest.raises(UserError, match="model.num_classes=1 but the dataset has num_classes=3"):
        run(compose_cfg([*TINY, "dataset.num_classes=3", "model.num_classes=1", f"output_dir={tmp_path / 'bad'}"]))


def test_the_classes_are_an_axis_not_a_key_prefix():
    """The report reads a run's classes from metrics.json, so a metric named like dice_<x> is no class."""
    from segbench.report.collect import class_metrics

    binary = {"classes": [], "test/iou": 0.8, "test/dice_micro": 0.9, "test/dice_boundary": 0.7}
    assert class_metrics(binary) == {}
    three = {
        "classes": ["lesion", "core"],
        "test/iou_lesion": 0.8,
        "test/dice_lesion": 0.9,
        "test/iou_core": 0.4,
        "test/dice_core": 0.5,
        "test/dice_boundary": 0.7,
    }
    assert class_metrics(three) == {
        "test/iou_lesion": 0.8,
        "test/dice_lesion": 0.9,
        "test/iou_core": 0.4,
        "test/dice_core": 0.5,
    }
    before_0_2 = {k: v for k, v in three.items() if k not in ("classes", "test/dice_boundary")}  # by prefix
    assert class_metrics(before_0_2) == class_metrics(three)
