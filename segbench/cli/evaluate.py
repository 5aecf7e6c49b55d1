"""``segbench evaluate RUN_DIR [RUN_DIR ...] [dataset=... dataset.KEY=...] [split=...] --output DIR``:
trained runs scored on a labelled dataset, each with its own settings, and compared.

    segbench evaluate outputs/multirun/isic --output eval/ph2 dataset=ph2          # train ISIC, test PH2
    segbench evaluate RUN RUN RUN --output eval/ens --ensemble                    # + their ensemble
    segbench evaluate RUN --output eval/mine dataset=folder dataset.root=data/new split=holdout --part test
    segbench evaluate outputs/multirun/A --in-place                               # = segbench rescore

Each run scores with its own input size, threshold (the one it chose), TTA and post-processing, at each
image's original resolution when it used ``eval.resolution=original``. With ``dataset=...`` overrides
every case of that dataset is scored (with ``--part test``, only the test part of ``split=...``); without
them, each run's own test split (its split.json), as in training. DIR gets, per run, a directory with
test_per_image.csv (that dataset's case ids and groups), metrics.json (the metrics and their
definitions, and ``evaluated``: which run, checkpoint, dataset and cases) and the run's Hydra record,
then the comparison report over them (summary.md, paired statistics on the same case ids).

``--ensemble`` adds ``ensemble/``: the runs' probabilities averaged (each at its own input size, with its
own TTA, resized to the image), then one threshold (the mean of the runs' thresholds, or
``--threshold``) and one post-processing. It is scored at each image's original size when a run used
``eval.resolution=original`` or the runs' input sizes differ, else at their common input size.

``--in-place`` is ``segbench rescore``: the runs' own test split scored again, their
metrics.json and test_per_image.csv rewritten (the training results kept).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hydra.errors import HydraException

from ..engine import resolve_device
from ..errors import command
from ..evaluation.datasets import PARTS, evaluate
from ..report import build_report
from ..runs import RunDir, find_runs
from .args import add_ensemble_options, check_ensemble_options, check_output_dir, rescore_runs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segbench evaluate", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="+", metavar="RUN_DIR|OVERRIDE",
                   help="run directories or folders of them (sweeps); dataset=... / split=... overrides")
    p.add_argument("--output", "-o", type=Path, help="where the scores and the report go")
    p.add_argument("--part", choices=PARTS, default="all",
                   help="with dataset=...: all of its cases (default), or one part of split=...")
    add_ensemble_options(p, "the runs given (their mean probabilities), scored beside them")
    p.add_argument("--in-place", action="store_true",
                   help="rewrite the runs' own metrics.json with their test split scored again (segbench rescore)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps")
    p.add_argument("--dataset-root", help="where the runs' dataset is now, if it moved since they trained")
    return p


@command("segbench evaluate", catch=(HydraException,))
def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_intermixed_args(argv)  # overrides before or after the options
    overrides = [a for a in args.args if "=" in a and not Path(a).exists()]
    dirs = [a for a in args.args if a not in overrides]
    if not dirs:
        p.error("no run directories given")
    check_ensemble_options(p, args)
    if args.dataset_root and overrides:
        p.error("--dataset-root is where the runs' own dataset moved; with dataset=..., give dataset.root=...")
    if args.part != "all" and not overrides:
        p.error(f"--part {args.part} needs a dataset=... (a run's own split is scored on its test part)")
    device = str(resolve_device(args.device))
    if args.in_place:
        if overrides or args.ensemble or args.output:
            p.error("--in-place rescores the runs' own test split into their own files: without dataset=..., "
                    "--ensemble or --output")
        return rescore_runs(find_runs(dirs), device, args.dataset_root)
    if args.output is None:
        p.error("--output DIR is required (or --in-place, to rescore the runs' own files)")
    check_output_dir(args.output)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = find_runs(dirs, trained=True)
    written = evaluate(runs, args.output, overrides, args.part, args.ensemble, device, args.dataset_root,
                       args.threshold, args.postprocess)
    build_report([RunDir(p) for p in written], args.output)
    print(f"{len(written)} scored -> {args.output / 'summary.md'}")
    return 0
