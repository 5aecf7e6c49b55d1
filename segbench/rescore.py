"""``python -m segbench.rescore RUN_DIR [RUN_DIR ...]``: score finished runs again with the current metrics.

Evaluation is its own step: this loads each run's best checkpoint and saved config, predicts its val
and test splits (the case ids of its split.json) with the run's own threshold rule, test-time
augmentation, post-processing and resolution, and rewrites the test metrics of metrics.json
(``test/*``, ``val_final/*``, the per-group breakdown, the definitions) and test_per_image.csv.
Training results (best epoch, val IoU of the epochs, timings) are kept; metrics.json records the
rescoring under ``rescored``. Use it when a metric's definition changes, so that old runs compare
with new ones. The dataset is read from where the run read it, or from ``--dataset-root``.
"""
from __future__ import annotations

import argparse
import sys
import time

from .build import build
from .engine import resolve_device
from .errors import SegbenchError, UserError, command
from .scoring import EvalSettings, score_test
from .inference import load_trained
from .runs import RunDir, find_runs

REPLACED = ("test/", "val_final/", "by_")


def rescore(run_dir: RunDir, device: str = "cpu", dataset_root: str | None = None) -> tuple[dict, dict]:
    """Score ``run_dir``'s best checkpoint again; rewrites its metrics.json and test_per_image.csv.
    Returns (old metrics, new metrics)."""
    old = run_dir.read_metrics()
    if old.get("status") != "done":
        raise SegbenchError(f"{run_dir.path}: status {old.get('status') or 'unknown'}; only finished runs are rescored")
    trained = load_trained(run_dir.path, "best", device)
    config = trained.config
    trained.batch_size = int(config["trainer"]["eval_batch_size"])  # the run's own evaluation batches
    dataset_cfg = dict(config["dataset"], **({"root": dataset_root} if dataset_root else {}))
    dataset = build(dataset_cfg, "dataset")
    parts = dataset.parts(run_dir.read_split())
    result = score_test(trained, build(config["loss"], "loss"), dataset, parts["val"], parts["test"],
                        EvalSettings.from_config(config.get("eval")))
    new = {k: v for k, v in old.items() if not k.startswith(REPLACED)}
    new.update(result.metrics)
    new["threshold"] = result.threshold
    new["definitions"] = {**result.definitions, "checkpoint": old.get("definitions", {}).get("checkpoint")}
    new["rescored"] = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "by": "python -m segbench.rescore",
                       "before": {k: old.get(k) for k in ("test/iou", "test/dice", "test/hd95", "threshold")}}
    run_dir.write_per_image(parts["test"].ids, result.per_image, parts["test"].groups, dataset.group_key)
    run_dir.write_metrics(new)
    return old, new


@command("segbench.rescore", catch=(FileNotFoundError,))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segbench.rescore", description=__doc__.split("\n\n")[1])
    parser.add_argument("dirs", nargs="+", help="run directories, or folders holding them (a sweep)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps")
    parser.add_argument("--dataset-root", help="where the dataset is now, if it moved since the runs")
    args = parser.parse_args(argv)
    # a run directory itself (also one made by run(cfg) in Python, without .hydra/), or folders of them
    runs = [r for d in args.dirs for r in ([RunDir(d)] if RunDir(d).best_pt.is_file() else find_runs([d]))]
    device = resolve_device(args.device)
    if not runs:
        raise UserError(f"no run directories in {' '.join(args.dirs)}")
    failed = 0
    for run in runs:
        try:
            old, new = rescore(run, str(device), args.dataset_root)
        except SegbenchError as exc:
            print(f"{run.path}: not rescored: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{run.path}: " + ", ".join(f"{k} {old.get(k, float('nan')):.4f} -> {new[k]:.4f}"
                                          for k in ("test/iou", "test/dice", "test/hd95")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
