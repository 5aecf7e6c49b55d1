"""``python -m segbench.predict RUN_DIR [RUN_DIR ...] INPUT... [--output DIR] [--ensemble]``: trained runs applied to new images.

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
import glob
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .data.arrays import IMAGE_SUFFIXES, image_files, read_rgb
from .engine import resolve_device
from .errors import SegbenchError, UserError, command
from .inference import CHECKPOINTS, Ensemble, TrainedModel, load_trained
from .runs import RunDir
from .runs.atomic import write_csv
from .plotting import class_colours

CSV_NAME = "predictions.csv"
CSV_COLUMNS = ["file", "height", "width", "lesion_pixels", "lesion_fraction", "mean_probability"]


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by files, folders and globs, in order and without repeats; and the inputs
    that name nothing, with why."""
    files: list[Path] = []
    failed: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = image_files(path)
            if not found:
                failed.append((item, f"folder holds no image files ({' '.join(sorted(IMAGE_SUFFIXES))})"))
            files += found
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = [Path(p) for p in sorted(glob.glob(str(path))) if Path(p).is_file()]
            if not found:
                failed.append((item, "the pattern matches no file"))
            files += found
        else:
            failed.append((item, "no such file or folder"))
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, failed


def distinct_stems(files: list[Path], failed: list[tuple[str, str]]) -> list[Path]:
    """The files whose outputs (named by stem) do not collide: a second file with a stem fails."""
    kept: dict[str, Path] = {}
    for path in files:
        if path.stem in kept:
            failed.append((str(path), f"its outputs would overwrite those of '{kept[path.stem]}' (same stem)"))
            continue
        kept[path.stem] = path
    return list(kept.values())


def overlay(image: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The image with each predicted class tinted in its colour (binary: the lesion in red)."""
    colours = class_colours(max(num_classes, 2))
    out = image.astype(np.float32)
    labels = pred.astype(np.int64)
    for k in range(1, max(num_classes, 2)):
        where = labels == k
        out[where] = 0.55 * out[where] + 0.45 * 255 * np.asarray(colours[k])
    return np.clip(out, 0, 255).astype(np.uint8)


def predict_files(trained: TrainedModel | Ensemble, files: list[Path], output: Path, batch_size: int,
                  failed: list[tuple[str, str]], progress: bool = True) -> list[dict]:
    """Predict every file, writing its mask and overlay; returns the rows of predictions.csv."""
    rows = []
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch, images = [], []
            for path in files[start : start + batch_size]:
                try:
                    images.append(read_rgb(path))
                    batch.append(path)
                except SegbenchError as exc:
                    failed.append((str(path), str(exc)))
                    bar.update(1)
            if not batch:
                continue
            for path, image, (pred, prob) in zip(batch, images, trained.predict_images(images)):
                stem = path.stem
                stored = pred.astype(np.uint8) * (255 if trained.num_classes == 1 else 1)
                Image.fromarray(stored).save(output / f"{stem}.png")
                Image.fromarray(overlay(image, pred, trained.num_classes)).save(output / f"{stem}_overlay.png")
                lesion = pred > 0
                area = int(lesion.sum())
                rows.append({
                    "file": str(path), "height": image.shape[0], "width": image.shape[1], "lesion_pixels": area,
                    "lesion_fraction": area / lesion.size,
                    "mean_probability": float(prob[lesion].mean()) if area else float("nan"),
                })
                bar.update(1)
    return rows


def split_runs(paths: list[str], ensemble: bool) -> tuple[list[str], list[str]]:
    """The run directories (the first argument; with ``ensemble``, every leading run directory) and the
    inputs after them. Several run directories without ``ensemble`` are an error that says so."""
    count = 0
    while count < len(paths) and RunDir(paths[count]).best_pt.is_file():
        count += 1
    if count > 1 and not ensemble:
        raise UserError(f"{count} run directories given ({', '.join(paths[:count])}); add --ensemble to average "
                        "their predictions, or give one")
    if ensemble and count == 0:
        raise UserError(f"--ensemble: '{paths[0]}' is not a finished run directory (no checkpoints/best.pt)")
    count = count if ensemble else 1  # one run: the first argument, whatever it is (load_trained names the problem)
    return paths[:count], paths[count:]


@command("segbench.predict")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segbench.predict", description=__doc__.split("\n\n")[1],
        usage="%(prog)s RUN_DIR [RUN_DIR ... --ensemble] INPUT [INPUT ...] [--output DIR] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a finished run directory (holds checkpoints/best.pt), with --ensemble several; then "
                             "image files, folders of images, or globs ('scans/*.jpg')")
    parser.add_argument("--ensemble", action="store_true",
                        help="average the probabilities of the run directories given first")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with --ensemble: the threshold of the mean probability (default: the mean of the "
                             "runs' thresholds)")
    parser.add_argument("--postprocess", default=None,
                        help="with --ensemble: none or largest (default: the runs' own, when they agree)")
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
    if not args.ensemble and (args.threshold is not None or args.postprocess is not None):
        parser.error("--threshold and --postprocess apply to --ensemble (a single run uses its own)")
    if args.threshold is not None and not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: expected a number > 0 and < 1")
    try:
        device = resolve_device(args.device)
        members = [load_trained(run, args.checkpoint, device, args.batch_size) for run in runs]
    except SegbenchError as exc:  # the device check speaks of the config key; here it is the option
        raise UserError(str(exc).replace("trainer.device=", "--device ")) from None
    trained = Ensemble.of(members, args.threshold, args.postprocess) if args.ensemble else members[0]
    files, failed = expand_inputs(inputs)
    files = distinct_stems(files, failed)
    output = Path(args.output)
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


if __name__ == "__main__":
    sys.exit(main())
