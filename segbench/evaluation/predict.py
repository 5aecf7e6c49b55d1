"""Trained runs (or their ensemble) applied to image files: the library of ``segbench predict``.

:func:`expand_inputs` turns files, folders and globs into image files; :func:`predict_files` writes each
one's mask (``<stem>.png``: 0/255, or class indices) and overlay (``<stem>_overlay.png``) and returns the
rows of ``predictions.csv``.
"""
from __future__ import annotations

import glob
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.arrays import IMAGE_SUFFIXES, image_files, read_rgb
from ..errors import SegbenchError, UserError
from ..runs import RunDir
from .trained import Ensemble, TrainedModel

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


def class_colours(num_classes: int) -> list[tuple[float, float, float]]:
    """An RGB colour (0..1) per class: background black, then red, and tab10's others."""
    others = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 3]  # tab10's red is index 3
    return [(0.0, 0.0, 0.0), (0.86, 0.08, 0.08), *others][:num_classes] if num_classes <= 11 else \
        [(0.0, 0.0, 0.0)] + [tuple(matplotlib.colormaps["hsv"](k / num_classes)[:3]) for k in range(1, num_classes)]


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


