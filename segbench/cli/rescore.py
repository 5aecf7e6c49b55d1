"""``segbench rescore RUN_DIR [RUN_DIR ...]``: score finished runs again with the current metrics.

The same as ``segbench evaluate RUN_DIR ... --in-place`` (one code path, in
:mod:`segbench.evaluation.datasets`): each run's best checkpoint and saved config predict its val and test
splits (the case ids of its split.json) with the run's own threshold rule, test-time augmentation,
post-processing and resolution, and its metrics.json (``test/*``, ``val_final/*``, the per-group
breakdown, the definitions) and test_per_image.csv are rewritten. Training results (best epoch, val IoU
of the epochs, timings) are kept; metrics.json records the rescoring under ``rescored``. Use it when a
metric's definition changes, so that old runs compare with new ones. The dataset is read from where
the run read it, or from ``--dataset-root``.
"""
from __future__ import annotations

import argparse

from ..engine import resolve_device
from ..errors import command
from ..runs import find_runs
from .args import rescore_runs


@command("segbench rescore")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench rescore", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="finished run directories, or sweeps of them")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps")
    parser.add_argument("--dataset-root", help="where the runs' dataset is now, if it moved since they trained")
    args = parser.parse_args(argv)
    return rescore_runs(find_runs(args.dirs), str(resolve_device(args.device)), args.dataset_root)
