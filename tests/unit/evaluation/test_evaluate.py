"""python -m segbench.evaluate: trained runs scored on other datasets, their ensemble (inference.Ensemble),
and predict --ensemble."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segbench import evaluate, predict
from segbench.data import Folder
from segbench.engine.normalize import Normalizer
from segbench.evaluation.datasets import external_cases
from segbench.evaluation.scoring import per_image, predict_tta
from segbench.evaluation.trained import Ensemble, Normalized, TrainedModel, load_trained
from segbench.runs import RunDir
from segbench.splits import Holdout
from segbench.train import run
from tests.conftest import TINY, compose_cfg

H, W = 24, 30  # the folder dataset's original size: not the runs' input sizes


def folder_tree(root: Path, n: int = 8, classes: int = 1) -> Path:
    """``n`` images with a lesion (class-index masks with ``classes`` > 1) in images/ and masks/."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        mask = np.zeros((H, W), np.uint8)
        top, left = 3 + i % 5, 4 + i % 7
        mask[top : top + 10, left : left + 12] = 1 if classes > 1 else 255
        image[mask > 0] //= 3  # a darker lesion
        Image.fromarray(image).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs of two configurations that score differently: A at 32 px (flips TTA, threshold
    chosen on val, largest component), B (Dice loss) at 48 px scored at the original resolution."""
    base = tmp_path_factory.mktemp("evaluate")
    a, b = base / "a", base / "b"
    run(compose_cfg([*TINY, "seed=0", "eval.tta=flips", "eval.threshold=auto", "eval.postprocess=largest",
                     f"output_dir={a}"]))
    run(
        compose_cfg(
            [
                *TINY,
                "seed=1",
                "loss=dice",
                "dataset.image_size=48",
                "eval.resolution=original",
                "eval.threshold=0.4",
                f"output_dir={b}",
            ]
        )
    )
    return a, b


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return folder_tree(tmp_path_factory.mktemp("folder") / "mine")


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path / "test_per_image.csv")))


def test_evaluate_scores_every_case_with_each_runs_settings(runs, data, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "eval"
    assert evaluate.main([str(a), str(b), "dataset=folder", f"dataset.root={data}", "--output", str(out)]) == 0
    ids = [f"case{i}" for i in range(8)]
    for run_dir, resolution in ((a, "32x32 (network input)"), (b, "original image size")):
        result = out / run_dir.name
        metrics = json.loads((result / "metrics.json").read_text())
        assert [r["case"] for r in rows(result)] == ids
        assert metrics["evaluated"]["run"] == str(run_dir.resolve()) and metrics["evaluated"]["dataset"]["root"] == str(
            data
        )
        assert metrics["definitions"]["resolution"].startswith(resolution) and "iou" in metrics["definitions"]
        assert metrics["threshold"] == json.loads((run_dir / "metrics.json").read_text())["threshold"]
        assert metrics["split_digest"] == json.loads((result / "split.json").read_text())["digest"]
    # A's numbers are its own functions applied by hand: flips TTA at 32 px, its threshold, largest component
    trained = load_trained(a)
    dataset = Folder(str(data), image_size=32, cache_dir=None)
    logits = predict_tta(trained, dataset.arrays, "flips")
    want = per_image(logits, dataset.arrays.masks, trained.threshold, "largest")
    got = rows(out / a.name)
    assert [float(r["iou"]) for r in got] == pytest.approx(want["iou"], abs=1e-12)
    # B at the original size: the logits resized to each 24 x 30 mask
    trained_b = load_trained(b)
    dataset_b = Folder(str(data), image_size=48, cache_dir=None)
    want_b = per_image(predict_tta(trained_b, dataset_b.arrays, "none"), dataset_b.original_masks(ids), 0.4, "none")
    assert [float(r["hd95"]) for r in rows(out / b.name)] == pytest.approx(want_b["hd95"], abs=1e-9, nan_ok=True)
    # the report compares them on the same 8 cases
    summary = (out / "summary.md").read_text()
    assert "| 8 |" in summary and "not paired" not in summary and "reference" in summary
    # the same command again replaces its own results
    assert evaluate.main([str(a), str(b), "dataset=folder", f"dataset.root={data}", "--output", str(out)]) == 0


def test_part_test_scores_only_that_part_of_the_split(runs, data, tmp_path):
    a, _ = runs
    out = tmp_path / "eval"
    assert (
        evaluate.main(
            [
                str(a),
                f"dataset.root={data}",
                "dataset=folder",
                "split=holdout",
                "split.seed=3",
                "--part",
                "test",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    ids = Folder(str(data), image_size=32, cache_dir=None).case_ids()
    assert [r["case"] for r in rows(out / a.name)] == Holdout(seed=3).make(ids)["test"]
    assert "the test part" in json.loads((out / a.name / "metrics.json").read_text())["evaluated"]["cases"]


def test_without_a_dataset_the_runs_own_test_split_is_scored(runs, tmp_path):
    """What training's test step wrote, to the digit (the same code path as rescore)."""
    a, _ = runs
    out = tmp_path / "own"
    assert evaluate.main([str(a), "--output", str(out)]) == 0
    mine, theirs = (json.loads((d / "metrics.json").read_text()) for d in (out / a.name, a))
    for key in ("test/iou", "test/dice", "test/hd95", "val_final/iou", "threshold"):
        assert mine[key] == theirs[key]
    assert (out / a.name / "test_per_image.csv").read_text() == (a / "test_per_image.csv").read_text()


def test_a_class_mismatch_is_an_error_naming_both(runs, tmp_path, capsys):
    a, _ = runs
    three = folder_tree(tmp_path / "three", n=4, classes=2)
    argv = [str(a), "dataset=folder", f"dataset.root={three}", "dataset.num_classes=3", "-o", str(tmp_path / "x")]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{a} predicts num_classes=1" in err and "has num_classes=3" in err
    assert not (tmp_path / "x" / a.name / "metrics.json").exists()


def test_bad_arguments_are_named(runs, data, tmp_path, capsys):
    a, _ = runs
    assert evaluate.main([str(a), "model=unet", "dataset=folder", f"dataset.root={data}", "-o", str(tmp_path)]) == 2
    assert "'model=unet': segbench evaluate takes dataset=..." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([str(a)])  # no --output
    assert "--output DIR is required" in capsys.readouterr().err
    taken = tmp_path / "taken"
    shutil.copytree(a, taken / a.name)  # a training run where an output would go
    assert evaluate.main([str(a), "-o", str(taken)]) == 2
    assert "does not hold an earlier segbench evaluate result" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "nothing"), "-o", str(tmp_path / "y")]) == 2


def constant(logit: float) -> TrainedModel:
    """A toy trained model whose logits are ``logit`` everywhere (probability sigmoid(logit))."""

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor(float(logit)))

        def forward(self, x):
            return torch.zeros_like(x[:, :1]) + self.bias

    network = Normalized(Constant(), Normalizer(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))).eval()
    return TrainedModel(
        run_dir=RunDir("toy"),
        network=network,
        image_size=8,
        threshold=0.5,
        tta="flips",
        postprocess="none",
        num_classes=1,
        device=torch.device("cpu"),
    )


def test_the_ensemble_of_two_toy_models_is_the_mean_of_their_probabilities():
    low, high = constant(0.0), constant(float(np.log(3.0)))  # p = 0.5 and p = 0.75
    high.threshold, high.image_size = 0.7, 16
    ensemble = Ensemble.of([low, high])
    assert ensemble.threshold == pytest.approx(0.6)  # the mean of the runs' thresholds
    images = [np.zeros((5, 7, 3), np.uint8)]
    ((pred, prob),) = ensemble.predict_images(images)
    assert pred.shape == (5, 7) and pred.all()  # 0.625 > 0.6
    assert prob == pytest.approx(np.full((5, 7), 0.625))
    ((pred, _),) = Ensemble.of([low, high], threshold=0.65).predict_images(images)
    assert not pred.any()  # 0.625 < 0.65


def test_the_ensemble_averages_the_runs_probabilities_at_the_image_size(runs, data):
    a, b = runs
    members = [load_trained(a), load_trained(b)]
    ensemble = Ensemble.of(members, postprocess="none")
    image = np.asarray(Image.open(data / "images" / "case3.png"))
    probs = ensemble.probabilities(lambda s: torch.from_numpy(np.stack([resize(image, s)])), [(H, W)])[0]
    want = []
    for m in members:
        p = torch.sigmoid(m.logits(torch.from_numpy(np.stack([resize(image, m.image_size)]))))  # its own TTA
        want.append(F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False))
    assert torch.allclose(probs, (want[0] + want[1]) / 2, atol=1e-6)
    assert ensemble.threshold == pytest.approx((members[0].threshold + 0.4) / 2)


def resize(image, side):
    from segbench.data.arrays import resize_image

    return resize_image(image, side)


def test_evaluate_ensemble_and_predict_ensemble(runs, data, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "eval"
    # the runs post-process differently: the ensemble needs one
    assert evaluate.main([str(a), str(b), "dataset=folder", f"dataset.root={data}", "-o", str(out), "--ensemble"]) == 2
    assert "post-process differently (largest, none); choose one with --postprocess" in capsys.readouterr().err
    assert (
        evaluate.main(
            [
                str(a),
                str(b),
                "dataset=folder",
                f"dataset.root={data}",
                "-o",
                str(out),
                "--ensemble",
                "--postprocess",
                "largest",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "ensemble" / "metrics.json").read_text())
    assert metrics["evaluated"]["ensemble"] == [str(a.resolve()), str(b.resolve())]
    assert metrics["definitions"]["resolution"].startswith("original")  # B scores at the original size
    assert [r["case"] for r in rows(out / "ensemble")] == [f"case{i}" for i in range(8)]
    assert "ensemble=2" in (out / "summary.md").read_text() and "ensemble=2" in (out / "summary.html").read_text()
    # its calibration: of the mean probabilities, every pixel at the original size, and per image
    assert 0 <= metrics["test/ece"] <= 1 and 0 <= metrics["test/brier"] <= 1
    assert sum(metrics["calibration"]["pixels"]) == sum(float(r[k]) for r in rows(out / "ensemble")
                                                        for k in ("tp", "fp", "fn", "tn"))
    assert all(0 <= float(r["ece"]) <= 1 for r in rows(out / "ensemble"))
    # the ensemble's scores are its masks' (Ensemble.predict_images) against the masks
    ensemble = Ensemble.of([load_trained(a), load_trained(b)], postprocess="largest")
    image = np.asarray(Image.open(data / "images" / "case0.png"))
    ((pred, _),) = ensemble.predict_images([image])
    truth = np.asarray(Image.open(data / "masks" / "case0.png")) > 0
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert float(rows(out / "ensemble")[0]["iou"]) == pytest.approx(iou)
    # predict --ensemble writes the same mask
    pred_out = tmp_path / "pred"
    assert (
        predict.main(
            [
                str(a),
                str(b),
                str(data / "images" / "case0.png"),
                "--ensemble",
                "--postprocess",
                "largest",
                "-o",
                str(pred_out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(pred_out / "case0.png")) == 255, pred)
    assert "an ensemble of 2 runs" in capsys.readouterr().out
    # several runs without --ensemble is a mistake said as such
    assert predict.main([str(a), str(b), str(data / "images"), "-o", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert "2 run directories given" in err and "add --ensemble" in err


def test_an_ensemble_of_runs_with_other_test_splits_is_refused(runs, tmp_path, capsys):
    a, _ = runs
    other = tmp_path / "other"
    shutil.copytree(a, other)
    split = json.loads((other / "split.json").read_text())
    split["test"], split["val"], split["digest"] = split["val"], split["test"], "0000"
    (other / "split.json").write_text(json.dumps(split))
    assert evaluate.main([str(a), str(other), "-o", str(tmp_path / "e"), "--ensemble"]) == 2
    assert "do not share one test split" in capsys.readouterr().err


def test_the_report_draws_the_cases_that_decide_the_comparison(runs, data, tmp_path):
    """The evaluation's report names, and draws, the cases where the two runs' IoU differs most."""
    a, b = runs
    out = tmp_path / "eval"
    assert evaluate.main([str(a), str(b), "dataset=folder", f"dataset.root={data}", "-o", str(out)]) == 0
    iou = {d: {r["case"]: float(r["iou"]) for r in rows(out / d.name)} for d in (a, b)}
    gap = {c: abs(iou[a][c] - iou[b][c]) for c in iou[a]}
    top = sorted(gap, key=lambda c: (-gap[c], c))[0]
    summary = (out / "summary.md").read_text()
    section = summary[summary.index("## Cases that decide the comparison") :]
    assert section.split("|---|---|---|---|\n")[1].startswith(f"| {top} |")
    assert (out / "cases_differ.png").is_file() and (out / "cases_worst.png").is_file()
    assert "redrawn from" in section


def test_predictions_png_shows_the_worst_test_cases(tmp_path, monkeypatch):
    """A run draws its lowest-IoU test cases (as recorded in test_per_image.csv), lowest first."""
    from segbench.report import figures as plotting

    shown = []
    figure = plotting.prediction_figure

    def spy(part, logits, threshold, **kwargs):
        shown.append((list(part.ids), list(kwargs["scores"])))
        return figure(part, logits, threshold, **kwargs)

    monkeypatch.setattr(plotting, "prediction_figure", spy)
    out = tmp_path / "run"
    run(compose_cfg([*TINY, "dataset.num_cases=16", "eval.num_predictions=2", f"output_dir={out}"]))
    recorded = sorted(((float(r["iou"]), r["case"]) for r in rows(out)), key=lambda t: (t[0],))
    ids, scores = shown[-1]
    assert scores == [s for s, _ in recorded[:2]] and len(ids) == 2
    assert {c for s, c in recorded if s <= scores[-1]} >= set(ids)


def test_part_test_of_a_grouped_dataset_is_the_split_training_makes(fake_ph2, tmp_path):
    """--part test reads PH2's diagnoses without decoding an image, and gets the stratified split a run
    trained on that dataset has (so a PH2 model's test part can be named from another run)."""
    from segbench.build import build

    overrides = ["dataset=ph2", f"dataset.root={fake_ph2}", "split.sizes=[3,3,3]", f"cache_dir={tmp_path}"]
    cfg = compose_cfg([*overrides, "dataset.image_size=16"])
    dataset = build(cfg.dataset, "dataset")
    split = build(cfg.split, "split").make(dataset.ids, dataset.groups, dataset.group_order, dataset.group_key)
    assert external_cases(overrides, "test").ids == split["test"]
