"""The CLI as a user runs it, and run(cfg) as tests and notebooks call it."""
import json
import math
import subprocess
import sys

import torch
import yaml

from segbench.train import run
from tests.conftest import ROOT, TINY, compose_cfg, run_cli
from tests.unit.test_configs import resolved

RUN_FILES = [
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    ".hydra/hydra.yaml",
    "train.log",
    "split.json",
    "history.csv",
    "metrics.json",
    "test_per_image.csv",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
    "curves.png",
    "predictions.png",
]


def test_cli_tiny_run_writes_the_run_dir(tmp_path):
    result = run_cli([*TINY, "model=segnet", "loss=dice"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert run_dir.name.endswith("_segnet_dice")  # outputs/<date>/<time>_<model>_<loss>
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert "epoch 2/2" in (run_dir / "train.log").read_text()

    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,lr,train/loss,train/iou,val/loss,val/iou,val/dice,time"
    assert len(history) == 3

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["best_epoch"] in (1, 2)
    for key in ("test/iou", "test/dice", "test/iou_score", "test/loss", "train_time_s", "images_per_s"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["params"] > 0 and metrics["model"] == "segnet" and metrics["dataset"] == "synthetic"
    assert metrics["definitions"]["threshold"] == 0.5 and metrics["definitions"]["threshold_mode"] == "fixed"
    for key in ("test/precision", "test/recall", "test/specificity", "test/accuracy", "test/iou_micro"):
        assert 0 <= metrics[key] <= 1, key
    assert not any(k.startswith("by_") for k in metrics)  # synthetic cases have no groups
    per_image = (run_dir / "test_per_image.csv").read_text().splitlines()
    assert per_image[0].startswith("case,group,iou,dice,precision,recall,specificity,accuracy,iou_score,hd,hd95")
    assert len(per_image) == 1 + 3

    split = json.loads((run_dir / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [6, 3, 3]
    assert split["strategy"] == "holdout" and split["digest"] == metrics["split_digest"] == "577b710331bd9fab"

    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["config"]["model"]["base_width"] == 4 and ckpt["epoch"] == metrics["best_epoch"]
    for png in ("curves.png", "predictions.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "dataset=synthetic" in overrides


def test_run_returns_metrics_and_is_reproducible(tmp_path):
    first = run(compose_cfg([*TINY, f"output_dir={tmp_path / 'a'}"]))
    second = run(compose_cfg([*TINY, f"output_dir={tmp_path / 'b'}"]))
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["test/iou"] == first["test/iou"]
    for key in ("test/iou", "test/dice", "test/loss", "best_epoch"):
        assert first[key] == second[key], key
    assert (tmp_path / "a" / "history.csv").read_text().split("\n")[1].split(",")[:7] == (
        tmp_path / "b" / "history.csv"
    ).read_text().split("\n")[1].split(",")[:7]


def test_missing_ph2_root_is_a_clear_cli_error(tmp_path):
    missing = tmp_path / "no_ph2_here"
    result = run_cli(
        ["dataset=ph2", f"dataset.root={missing}", f"hydra.run.dir={tmp_path / 'run'}", "model.base_width=4"],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr and "dataset=synthetic" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_model_lists_the_options(tmp_path):
    result = run_cli(["model=transformer"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/transformer'" in result.stderr
    assert "unet" in result.stderr and "segnet" in result.stderr


def test_auto_threshold_and_original_resolution_on_ph2_layout(fake_ph2, tmp_path):
    """dataset=ph2 on a small PH2-layout tree: diagnosis breakdown, auto threshold, original-size masks."""
    overrides = [o for o in TINY if not o.startswith("dataset")] + [
        "dataset=ph2",
        f"dataset.root={fake_ph2}",
        "dataset.image_size=16",
        "split.sizes=[3,3,3]",
        f"cache_dir={tmp_path / 'cache'}",
        "eval.threshold=auto",
        "eval.resolution=original",
        f"output_dir={tmp_path / 'run'}",
    ]
    metrics = run(compose_cfg(overrides))
    assert metrics["definitions"]["threshold_mode"].startswith("auto")
    assert metrics["threshold"] in [round(0.05 * i, 2) for i in range(1, 20)]
    assert metrics["definitions"]["resolution"].startswith("original")
    # the fake tree's diagnoses are i % 3 for IMD001..IMD009: three of each, one of each in the test split
    assert set(metrics["by_diagnosis"]) == {"common_nevus", "atypical_nevus", "melanoma"}
    assert sum(group["n"] for group in metrics["by_diagnosis"].values()) == 3
    rows = (tmp_path / "run" / "test_per_image.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {r.split(",")[header.index("diagnosis")] for r in rows[1:]} == {"common_nevus", "atypical_nevus", "melanoma"}
    tp, fp, fn, tn = (header.index(k) for k in ("tp", "fp", "fn", "tn"))
    for r in rows[1:]:  # counts cover the original 40x48 or 41x48 mask, not the 16x16 input
        cells = r.split(",")
        assert sum(float(cells[i]) for i in (tp, fp, fn, tn)) in (40 * 48, 41 * 48)


def test_python_m_segbench_names_the_new_key(tmp_path):
    result = run_cli(["trainer.ema=0.9"], cwd=tmp_path)
    assert result.returncode == 2 and "callbacks=ema callbacks.ema.decay=0.9" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_prints_an_experiments_resolved_config(tmp_path):
    result = run_cli(["experiment=ph2_recipe_cpu", "model=unet", "--cfg", "job", "--resolve"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg == resolved(["experiment=ph2_recipe_cpu", "model=unet"])


def test_slurm_launcher_preset(tmp_path):
    result = run_cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["partition"] == "gpu"


def test_nan_loss_from_the_cli_is_a_clear_error(tmp_path):
    result = run_cli([*TINY, "optimizer.lr=1e30", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "loss became nan at epoch 1" in result.stderr and "Traceback" not in result.stderr


def test_python_m_runs_an_alias():
    result = subprocess.run(
        [sys.executable, "-m", "segbench.compare", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage: segbench compare" in result.stdout
