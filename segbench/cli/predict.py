"""``segbench predict RUN_DIR [RUN_DIR ...] INPUT... [--output DIR] [--ensemble]``: trained runs applied to new images.

Loads the run's best checkpoint and its saved config (nothing to re-specify), predicts every image of
the given files, folders (their image files) and globs at the run's input size, resizes each
prediction back to its image's size and applies the run's threshold, test-time augmentation and
post-processing. Writes, per image, ``<stem>.png`` (the mask: 0/255, or class indices for a
multi-class run) and ``<stem>_overlay.png``, and ``predictions.csv`` for all of them.

With --ensemble, the leading arguments that are run directories are the members: each predicts at its
own input size with its own TTA, their probabilities are resized to the image and averaged, and one
threshold (the mean of the runs' thresholds, or --threshold) and the post-processing decide the mask.

A file that cannot be read is listed at the end with the reason while every other file is still
predicted; the exit status is then 1. Existing output files are not overwritten without --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine import resolve_device
from ..errors import SegbenchError, UserError, command
from ..evaluation.predict import CSV_COLUMNS, CSV_NAME, distinct_stems, expand_inputs, predict_files, split_runs
from ..evaluation.trained import CHECKPOINTS, Ensemble, load_trained
from ..runs import RunDir
from ..runs.atomic import write_csv
from .args import add_ensemble_options, check_ensemble_options, check_output_dir


@command("segbench predict")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segbench predict", description=__doc__.split("\n\n")[1],
        usage="%(prog)s RUN_DIR [RUN_DIR ... --ensemble] INPUT [INPUT ...] [--output DIR] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a finished run directory (holds checkpoints/best.pt), with --ensemble several; then "
                             "image files, folders of images, or globs ('scans/*.jpg')")
    add_ensemble_options(parser, "the run directories given first")
    parser.add_argument("--output", "-o", default="predictions", help="folder for the outputs (default: predictions)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected an integer >= 1")
    runs, inputs = split_runs(args.paths, args.ensemble)
    if not inputs:
        parser.error("no INPUT: give image files, folders or globs after the run "
                     + ("directories" if len(runs) > 1 else "directory"))
    check_ensemble_options(parser, args)
    try:
        device = resolve_device(args.device)
        members = [load_trained(run, args.checkpoint, device, args.batch_size) for run in runs]
    except SegbenchError as exc:  # the device check speaks of the config key; here it is the option
        raise UserError(str(exc).replace("trainer.device=", "--device ")) from None
    trained = Ensemble.of(members, args.threshold, args.postprocess) if args.ensemble else members[0]
    for member in members:
        warn_unfinished(member.run_dir)
    files, failed = expand_inputs(inputs)
    files = distinct_stems(files, failed)
    output = Path(args.output)
    check_output_dir(output)
    targets = [output / CSV_NAME] + [output / f"{p.stem}{suffix}" for p in files for suffix in (".png", "_overlay.png")]
    existing = [p for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{len(existing)} output file(s) exist already, e.g. '{existing[0]}'; "
                        "use --overwrite to replace them, or another --output")
    output.mkdir(parents=True, exist_ok=True)
    print(f"predicting {len(files)} image(s) with {trained.describe()} ({args.checkpoint} checkpoint) into {output}/")
    rows = predict_files(trained, files, output, args.batch_size, failed, progress=not args.no_progress)
    write_csv(output / CSV_NAME, rows, CSV_COLUMNS)
    print(f"wrote {len(rows)} prediction(s) and {output / CSV_NAME}")
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for item, why in failed:
            print(f"  - {item}: {why}", file=sys.stderr)
        return 1
    return 0


def warn_unfinished(run: RunDir) -> None:
    """A run that has not finished (interrupted, failed, still training) predicts with its best checkpoint so
    far: said on stderr, with its status and last epoch (evaluate refuses such runs)."""
    status = run.status()
    if status == "done":
        return
    try:
        epochs = int(run.read_history()[-1]["epoch"])
        planned = ((run.read_record().get("config") or {}).get("trainer") or {}).get("epochs")
    except (SegbenchError, IndexError, KeyError, ValueError, AttributeError):  # a damaged record: no numbers
        epochs, planned = 0, None
    where = f"epoch {epochs}" + (f" of {planned}" if planned else "") if epochs else "no finished epoch recorded"
    print(f"warning: {run.path} is not a finished run (status {status}, {where}): predicting with its best "
          "checkpoint so far", file=sys.stderr)

