"""segbench.predict and segbench.export on a tiny trained run."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench import export, predict
from segbench.data import SegArrays
from segbench.data.arrays import read_rgb, resize_image
from segbench.data.synthetic import make_case
from segbench.evaluation.scoring import predict_masks, predict_tta
from segbench.evaluation.trained import load_trained
from segbench.train import run
from tests.conftest import TINY, compose_cfg, needs


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run with the settings predict must reuse: EMA weights, flips TTA, largest component, auto threshold."""
    out = tmp_path_factory.mktemp("predict") / "run"
    run(compose_cfg([*TINY, "callbacks=ema", "callbacks.ema.decay=0.9", "eval.tta=flips", "eval.postprocess=largest",
                     "eval.threshold=auto", f"output_dir={out}"]))
    return out


@pytest.fixture
def inputs(tmp_path):
    """Three images of other sizes and modes than the training ones, a corrupt one and a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (size, mode) in enumerate([((50, 40), "RGB"), ((64, 64), "L"), ((33, 45), "RGBA")]):
        image = make_case(7, i, 64)[0].transpose(1, 2, 0)
        Image.fromarray(image).resize(size).convert(mode).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "notes.txt").write_text("not an image")
    return folder


def test_predict_applies_the_runs_settings_and_lists_failures(trained_run, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(trained_run), str(inputs), str(tmp_path / "notes.txt"), str(inputs / "img*.png"),
            str(tmp_path / "missing.png"), "--output", str(out), "--no-progress", "--batch-size", "2"]
    assert predict.main(argv) == 1  # some inputs failed; the others were predicted
    err = capsys.readouterr().err
    assert "3 input(s) failed" in err
    for failure in ("broken.jpg: cannot read image file", "notes.txt: cannot read image file",
                    "missing.png: no such file or folder"):
        assert failure in err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"].rsplit("/", 1)[1] for r in rows] == ["img0.png", "img1.png", "img2.png"]  # globs add no repeats
    metrics = json.loads((trained_run / "metrics.json").read_text())
    trained = load_trained(trained_run)
    assert (trained.threshold, trained.tta, trained.postprocess) == (metrics["threshold"], "flips", "largest")
    for row in rows:  # the mask is what the run's own evaluation functions give, at the image's size
        image = read_rgb(Path(row["file"]))
        h, w = image.shape[:2]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        x = torch.from_numpy(resize_image(image, trained.image_size))[None]
        data = SegArrays(x, torch.zeros(1, 1, 32, 32, dtype=torch.uint8), ["a"])
        logits = torch.nn.functional.interpolate(predict_tta(trained, data, "flips"), size=(h, w), mode="bilinear")
        want = predict_masks(logits, trained.threshold, "largest")[0, 0].numpy()
        stem = row["file"].rsplit("/", 1)[1][:-4]
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, want)
        assert int(row["lesion_pixels"]) == want.sum() and float(row["lesion_fraction"]) == want.sum() / (h * w)
        assert Image.open(out / f"{stem}_overlay.png").size == (w, h)
    # outputs are not overwritten without --overwrite, and nothing is predicted then
    before = (out / "img0.png").stat().st_mtime_ns
    assert predict.main([str(trained_run), str(inputs / "img0.png"), "-o", str(out), "--no-progress"]) == 2
    assert "exist already" in capsys.readouterr().err and (out / "img0.png").stat().st_mtime_ns == before
    assert predict.main([str(trained_run), str(inputs / "img0.png"), "-o", str(out), "--no-progress",
                         "--overwrite"]) == 0


def test_predict_bad_run_dir(tmp_path, capsys):
    assert predict.main([str(tmp_path), str(tmp_path), "--no-progress"]) == 2
    assert "checkpoints/best.pt' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs("onnx", "onnxscript", "onnxruntime", extra="export")),
                                 "torchscript"])
def test_export_runs_like_pytorch_on_other_sizes(trained_run, fmt, tmp_path):
    path = tmp_path / f"model.{fmt}"
    assert export.main([str(trained_run), "--format", fmt, "--output", str(path)]) == 0
    info = json.loads(path.with_name(path.name + ".json").read_text())
    assert info["threshold"] == load_trained(trained_run).threshold and info["image_size"] == 32
    network = load_trained(trained_run).network
    x = torch.rand(3, 3, 40, 56)  # another batch size and shape than the export's own check
    with torch.inference_mode():
        want = network(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": x.numpy()})[0]
    else:
        got = torch.jit.load(str(path))(x).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert export.main([str(trained_run), "--format", fmt, "--output", str(path)]) == 2  # exists: refused


@needs("onnx", "onnxscript", extra="export")  # onnxruntime is made to look missing; the others are checked first
def test_onnx_without_its_packages_names_the_extra(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails as if not installed
    assert export.main([str(trained_run), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "needs the package 'onnxruntime', which is not installed: pip install \"segbench[export]\"" in \
        capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_the_exported_network_normalises_as_the_trainer_does():
    """One formula: a run's network for prediction and export (Normalized) gives the trainer's logits."""
    from segbench.engine import Normalizer
    from segbench.evaluation.trained import Normalized

    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    normalizer = Normalizer.fit(images)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        assert torch.equal(Normalized(model, normalizer)(images.float() / 255), model(normalizer(images)))
