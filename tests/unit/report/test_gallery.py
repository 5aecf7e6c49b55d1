"""The report's cases (report/gallery.py) and predictions.png's worst cases (plotting.worst_cases)."""
import math

from segbench.report.figures import worst_cases
from segbench.report.gallery import differing_cases, lowest_cases, runner_up
from segbench.report.pooling import Pooled


def pooled(label, scores, family=("holdout", "d")):
    return Pooled((label, "bce", ""), label, family, complete=True, folds=1, scores={"iou": scores})


REFERENCE = pooled("unet", {"c1": 0.90, "c2": 0.20, "c3": 0.80, "c4": 0.70})
OTHER = pooled("segnet", {"c1": 0.85, "c2": 0.70, "c3": 0.10, "c4": 0.70})


def test_the_cases_that_differ_most_come_first():
    # |differences|: c1 0.05, c2 0.50, c3 0.70, c4 0
    assert differing_cases(REFERENCE, OTHER, 3) == ["c3", "c2", "c1"]


def test_a_known_worst_case_is_picked():
    assert lowest_cases(REFERENCE, 2) == ["c2", "c4"] and lowest_cases(OTHER, 1) == ["c3"]


def test_the_runner_up_is_the_best_paired_other():
    third = pooled("unet_strided", {"c1": 0.1, "c2": 0.1, "c3": 0.1, "c4": 0.1})
    elsewhere = pooled("basic_unet", {"c1": 0.99}, family=("holdout", "other split"))
    assert runner_up([REFERENCE, third, OTHER, elsewhere], REFERENCE) is OTHER
    assert runner_up([REFERENCE, elsewhere], REFERENCE) is None


def test_predictions_png_takes_the_lowest_iou_cases():
    assert worst_cases([0.5, 0.1, math.nan, 0.3, 0.1], 3) == [1, 4, 3]
    assert worst_cases([0.5], 6) == [0]
