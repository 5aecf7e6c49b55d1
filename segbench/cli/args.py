"""Options and checks that several commands share, written once."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SegbenchError, UserError
from ..evaluation.datasets import rescore
from ..names import HEADLINE
from ..runs import RunDir


def add_ensemble_options(parser: argparse.ArgumentParser, members: str) -> None:
    """``--ensemble``, ``--threshold`` and ``--postprocess``; ``members`` says which runs form the ensemble."""
    parser.add_argument("--ensemble", action="store_true", help=f"average the probabilities of {members}")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with --ensemble: the threshold of the mean probability (default: the mean of the "
                             "runs' thresholds)")
    parser.add_argument("--postprocess", default=None,
                        help="with --ensemble: none or largest (default: the runs' own, when they agree)")


def check_ensemble_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--threshold and --postprocess go with --ensemble (a single run decides with its own), and a
    threshold is a probability; otherwise the parser's error (exit status 2)."""
    if (args.threshold is not None or args.postprocess is not None) and not args.ensemble:
        parser.error("--threshold and --postprocess apply to --ensemble (a single run uses its own)")
    if args.threshold is not None and not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: expected a number > 0 and < 1")


def rescore_runs(runs: list[RunDir], device: str, dataset_root: str | None) -> int:
    """``segbench rescore`` and ``segbench evaluate --in-place``: each run's own test split scored again
    into its own files; 1 when a run could not be rescored (said for each), else 0."""
    failed = 0
    for run in runs:
        try:
            old, new = rescore(run, device, dataset_root)
        except SegbenchError as exc:
            print(f"{run.path}: not rescored: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{run.path}: " + ", ".join(f"{k} {old.get(k, float('nan')):.4f} -> {new[k]:.4f}"
                                          for k in HEADLINE))
    return 1 if failed else 0


def check_output_dir(path: Path, option: str = "--output") -> None:
    """An output folder is a folder (or not there yet) and not a training run's directory; else a UserError."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} '{path}' is a file; expected a folder (it is created if missing)")
    if RunDir.is_run(path):
        raise UserError(f"{option} '{path}' is a run directory; its files are the run's own: choose another "
                        f"{option}")
