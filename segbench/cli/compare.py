"""``segbench compare DIR [DIR ...]``: the comparison report of any run or sweep directories.

    segbench compare outputs/multirun/2026-11-21_10-00-00
    segbench compare outputs/multirun/A outputs/multirun/B --out outputs/comparison
    segbench compare outputs/multirun/A --baseline "model=unet,loss=bce" --metric hd95
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import UserError, command
from ..report import build_report, parse_baseline
from ..runs import find_runs


@command("segbench compare")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: the directory given, or outputs/comparison)")
    parser.add_argument("--baseline", default=None,
                        help="the configuration the others are compared with, as key=value pairs: "
                             "'model=unet,loss=bce' (default: the best by mean)")
    parser.add_argument("--metric", default="iou", choices=["iou", "dice", "hd95"],
                        help="the per-image metric the statistics compare (hd95: lower is better)")
    args = parser.parse_args(argv)
    try:
        parse_baseline(args.baseline)
    except ValueError as exc:
        raise UserError(f"--baseline: {exc}") from None
    runs = find_runs(args.dirs)
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else Path("outputs") / "comparison")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = build_report(runs, out, metric=args.metric, baseline=args.baseline)
    print(f"{counts['runs']} runs ({counts['done']} done, {counts['failed']} failed) -> {out / 'summary.md'}")
    print((out / "summary.md").read_text())
    return 0
