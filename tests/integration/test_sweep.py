"""Multirun sweeps, the comparison report, seed aggregation, compare, and the submitit path."""
import csv
import json
import statistics

import pytest

from segbench import compare
from tests.conftest import TINY, run_cli

PLOTS = ["val_iou_curves.png", "val_loss_curves.png", "test_scores.png", "heatmap_test_iou.png"]
TINY_SWEEP = [o for o in TINY if not o.startswith("trainer.device")]


def sweep_dir(tmp_path):
    (stamp,) = (tmp_path / "outputs" / "multirun").iterdir()
    return stamp


def read_summary(path):
    with open(path / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_sweep_writes_the_report_and_aggregates_seeds(tmp_path):
    """Packed: 2 jobs at a time (joblib), each with its share of the cores; the sweep's time is estimated."""
    from segbench.engine.device import usable_cores

    result = run_cli(["-m", *TINY_SWEEP, "model=unet,segnet", "seed=0,1", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2"], cwd=tmp_path, env={"OMP_NUM_THREADS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    root = sweep_dir(tmp_path)
    jobs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert jobs == ["model=segnet,seed=0", "model=segnet,seed=1", "model=unet,seed=0", "model=unet,seed=1"]
    threads = {json.loads((root / job / "metrics.json").read_text())["threads"] for job in jobs}
    assert threads == {max(1, usable_cores() // 2)}
    assert (
        "sweep: 1 of 4 jobs ended in" in result.stdout + result.stderr
        and "2 at a time)" in result.stdout + result.stderr
    )
    rows = read_summary(root)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    ious = [float(r["test/iou"]) for r in rows]
    assert ious == sorted(ious, reverse=True)  # ranked
    for r in rows:  # the report's numbers are the runs' own: mean and std over the seeds
        assert r["runs"] == "2" and r["seeds"] == "0,1"
        runs = [
            json.loads((root / f"model={r['model']},seed={s}" / "metrics.json").read_text())["test/iou"] for s in (0, 1)
        ]
        assert float(r["test/iou"]) == pytest.approx(statistics.mean(runs))
        assert float(r["test/iou_std"]) == pytest.approx(statistics.stdev(runs))
        eces = [json.loads((root / f"model={r['model']},seed={s}" / "metrics.json").read_text())["test/ece"]
                for s in (0, 1)]
        assert float(r["test/ece"]) == pytest.approx(statistics.mean(eces))
    summary = (root / "summary.md").read_text()
    assert "All runs use the same split" in summary and summary.count("| done |") == 2 and "±" in summary
    assert "| test ECE | test Brier |" in summary and "\n\n## Calibration\n" in summary
    assert f"**{rows[0]['model']} / bce** (ECE " in summary and f"**{rows[1]['model']} / bce** (ECE " in summary
    assert "<table>" in (root / "summary.html").read_text()  # the same report as a page
    for png in [*PLOTS, "reliability.png"]:
        assert (root / png).read_bytes()[:4] == b"\x89PNG", png


def test_failed_job_is_reported_and_the_others_run(tmp_path):
    result = run_cli(["-m", *TINY_SWEEP, "optimizer.lr=1e30,1e-3"], cwd=tmp_path)  # the first job fails
    assert result.returncode == 1  # the sweep finishes, the report is written, the exit status says a job failed
    assert "1 of 2 jobs did not finish: optimizer.lr=1e+30 (failed); see " in result.stderr
    assert "continue them with: python -m segbench -m " in result.stderr and "trainer.resume=auto" in result.stderr
    root = sweep_dir(tmp_path)
    failed = json.loads((root / "optimizer.lr=1e+30" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "epoch 1, batch" in failed["error"]
    with open(root / "runs.csv", newline="") as f:
        statuses = sorted(r["status"] for r in csv.DictReader(f))
    assert statuses == ["done", "failed"]
    summary = (root / "summary.md").read_text()
    assert "Done: 1, failed: 1" in summary and "TrainingDiverged" in summary


def test_compare_two_run_dirs_and_flag_split_mismatch(tmp_path, capsys):
    result = run_cli(["-m", *TINY_SWEEP, "split.seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "report"
    a, b = tmp_path / "sweep" / "split.seed=0", tmp_path / "sweep" / "split.seed=1"
    assert compare.main([str(a), str(b), "--out", str(out)]) == 0
    assert len(read_summary(out)) == 2
    summary = (out / "summary.md").read_text()
    assert "do not share one split" in summary
    assert "2 runs (2 done, 0 failed)" in capsys.readouterr().out
    for png in PLOTS:
        assert (out / png).is_file()
    # a damaged record (metrics.json cut short) is named in the report; the other run is still compared
    (b / "metrics.json").write_text('{"status": "done", "test/iou": ')
    assert compare.main([str(a), str(b), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert f"`split.seed=1` (damaged): '{b / 'metrics.json'}' is damaged and cannot be read (JSONDecodeError" in summary
    assert "Done: 1, failed: 0, other: 1" in summary
    # the configuration whose only run is damaged says so (not "failed")
    assert sorted(r["status"] for r in read_summary(out)) == ["damaged", "done"]


def test_compare_rejects_a_dir_without_runs(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 2
    assert f"segbench compare: error: '{tmp_path}' holds no run directory" in capsys.readouterr().err


def test_job_names_leave_out_run_settings_unless_swept(tmp_path):
    """Job dirs are named by what varies: fixed overrides and run settings are excluded, a swept run
    setting is kept (two jobs must not share a directory)."""
    from omegaconf import OmegaConf

    from segbench.config import RUN_SETTINGS
    from segbench.report.callback import ReportCallback

    config = OmegaConf.create(
        {
            "hydra": {
                "overrides": {
                    "task": [
                        "model=unet,segnet",
                        "trainer.eval_batch_size=2,4",
                        "trainer.device=cpu",
                        "trainer.epochs=3",
                    ],
                    "hydra": [],
                },
                "job": {"config": {"override_dirname": {"exclude_keys": []}}},
                "sweep": {"dir": str(tmp_path)},
            }
        }
    )
    ReportCallback().on_multirun_start(config)
    (override,) = config.hydra.overrides.hydra
    excluded = override.split("=", 1)[1].strip("[]").split(",")
    assert "trainer.device" in excluded and "trainer.epochs" in excluded  # a run setting, a fixed override
    assert "trainer.eval_batch_size" not in excluded and "model" not in excluded  # swept
    assert set(RUN_SETTINGS) - {"trainer.eval_batch_size"} <= set(excluded)


def test_kfold_sweep_pools_every_case_with_intervals_and_paired_tests(tmp_path, capsys):
    """2 configurations x 3 folds: every case is scored once per configuration, the report has the
    confidence intervals, the paired test and Holm's correction; compare takes --baseline and --metric."""
    result = run_cli(
        ["-m", *TINY_SWEEP, "split=kfold", "split.k=3", "split.fold=0,1,2", "model=unet,segnet"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    root = sweep_dir(tmp_path)
    folds = [json.loads((root / f"model=unet,split.fold={f}" / "split.json").read_text()) for f in range(3)]
    assert [f["fold"] for f in folds] == [0, 1, 2] and len({f["digest"] for f in folds}) == 3
    rows = read_summary(root)
    assert len(rows) == 2 and {r["cases"] for r in rows} == {"12"}  # every one of the 12 cases, pooled
    for column in ("pooled_iou_ci_low", "pooled_iou_ci_high", "p_wilcoxon", "p_holm", "distinguishable"):
        assert column in rows[0], column
    summary = (root / "summary.md").read_text()
    assert "3-fold cross-validation" in summary and "Wilcoxon signed-rank" in summary and "Holm" in summary
    assert (root / "per_image_iou.png").is_file() and (root / "pairwise_iou.png").is_file()
    out = tmp_path / "by_dice"
    assert compare.main([str(root), "--out", str(out), "--baseline", "model=segnet,loss=bce", "--metric", "dice"]) == 0
    text = (out / "summary.md").read_text()
    assert "## Statistics (dice, per image)" in text and "reference **segnet / bce**" in text
    assert compare.main([str(root), "--out", str(tmp_path / "by_hd95"), "--metric", "hd95"]) == 0
    assert "Lower HD95 is better" in (tmp_path / "by_hd95" / "summary.md").read_text()
    assert compare.main([str(root), "--baseline", "unet"]) == 2  # not key=value
    assert "expected key=value pairs" in capsys.readouterr().err
