"""Decoding, resizing and caching image/mask files: shared by every dataset read from files.

A dataset lists its cases as (case id, image file, mask file); :func:`load_cases`
decodes and resizes them in threads, or reads them from the on-disk cache. The
cache is derived data: a cache file that cannot be read (truncated, other
arrays, wrong keys) is reported with a warning naming it and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DataError, describe
from ..runs.atomic import save_npz

log = logging.getLogger(__name__)

# Bump when decoding/resizing changes, so stale caches are not reused.
PREPROCESS_VERSION = 1
IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}

Case = tuple[str, Path, Path]  # (case id, image file, mask file)


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files and other suffixes ignored), sorted; [] if no folder."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_image(path: Path) -> np.ndarray:
    """Any image file scikit-image reads, as an array; an unreadable file is a DataError naming it."""
    try:
        from skimage import io as skio  # here: most of a second to import, and only files need it

        return np.asarray(skio.imread(path))
    except Exception as exc:  # decoder errors vary by format and plugin
        raise DataError(f"cannot read image file '{path}': {describe(exc)}") from exc  # decoders add advice lines


LOSSY_SUFFIXES = {".jpg", ".jpeg"}


def read_mask(path: Path, num_classes: int = 1) -> np.ndarray:
    """A mask file as an (H, W) array: bool for a binary mask (``num_classes`` 1), uint8 class indices
    0..num_classes-1 otherwise.

    Binary: boolean, 0/1 and 0/255 (also 3-channel) masks decode alike; a lossy JPEG mask, whose
    edges hold every value in between, is thresholded at half its range. Multi-class: a
    single-channel image (a palette PNG gives its indices) whose values are all below ``num_classes``.
    """
    if num_classes > 1:
        return _read_class_mask(path, num_classes)
    mask = read_image(path)
    if mask.ndim == 3:  # some masks decode as 3-channel 0/255 images
        mask = mask[..., :3].max(axis=-1)
    levels = np.unique(mask)
    if len(levels) > 2 and path.suffix.lower() in LOSSY_SUFFIXES:
        return mask >= (np.iinfo(mask.dtype).max + 1) // 2 if mask.dtype.kind in "ui" else mask >= 0.5
    if len(levels) > 2:
        raise DataError(
            f"mask '{path}' has {len(levels)} distinct values ({_values(levels)}); expected a binary mask "
            "(boolean, 0/1 or 0/255), or dataset.num_classes > 1 for class-index masks"
        )
    return (mask == levels.max()) if len(levels) == 2 else (mask > 0)


def _values(levels: np.ndarray, show: int = 6) -> str:
    text = ", ".join(str(v) for v in levels[:show].tolist())
    return text + (", ..." if len(levels) > show else "")


def _read_class_mask(path: Path, num_classes: int) -> np.ndarray:
    try:
        with Image.open(path) as im:  # PIL, not scikit-image: a palette PNG must give indices, not colours
            mask = np.asarray(im)
    except Exception as exc:
        raise DataError(f"cannot read mask file '{path}': {describe(exc)}") from exc
    if mask.ndim != 2:
        raise DataError(f"mask '{path}' has shape {mask.shape}; a multi-class mask must be a single-channel "
                        "image of class indices (grayscale or palette PNG)")
    levels = np.unique(mask)
    bad = levels[(levels < 0) | (levels >= num_classes)]
    if len(bad):
        raise DataError(f"mask '{path}' has values {_values(bad)} outside 0..{num_classes - 1} "
                        f"(dataset.num_classes={num_classes}); values found: {_values(levels)}")
    return mask.astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB: grayscale made 3-channel, alpha dropped, 16 bits scaled to 8."""
    image = read_image(path)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise DataError(f"image '{path}' has shape {image.shape}; expected (H, W, 3) RGB")
    image = image[..., :3]
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = (image.astype(np.float64) / np.iinfo(image.dtype).max * 255).astype(np.uint8)
    return image


def read_case(image_path: Path, mask_path: Path, num_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one case: image (H, W, 3) uint8 RGB and mask (H, W) of the same size (bool, or
    class indices with ``num_classes`` > 1).

    Grayscale images are made 3-channel; an alpha channel is dropped; 16-bit images are scaled to 8 bits.
    """
    image = read_rgb(image_path)
    mask = read_mask(mask_path, num_classes)
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"'{image_path.name}' is {image.shape[1]}x{image.shape[0]}; they must match"
        )
    return image, mask


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) uint8, resized with anti-aliasing (what the network sees)."""
    from skimage.transform import resize

    img = resize(image.astype(np.float32) / 255.0, (size, size), anti_aliasing=True)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def load_case(image_path: Path, mask_path: Path, size: int, num_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize one case.

    Returns image (3, size, size) uint8 and mask (1, size, size) uint8 ({0, 1}, or class indices).
    The image is resized with anti-aliasing; a binary mask is resized the same way and
    thresholded at 0.5, as in the seed study; a class-index mask takes the nearest pixel.
    """
    from skimage.transform import resize

    image, mask = read_case(image_path, mask_path, num_classes)
    img = resize_image(image, size)
    if num_classes > 1:
        msk = resize(mask, (size, size), order=0, preserve_range=True, anti_aliasing=False)
    else:
        msk = resize(mask.astype(np.float32), (size, size), anti_aliasing=True) > 0.5
    return img, msk[None].astype(np.uint8)


def cache_key(cases: Sequence[Case], size: int, num_classes: int = 1) -> str:
    """Changes when any file (name, size, modification time), the size or the preprocessing changes."""
    files = []
    for case, image, mask in cases:
        for p in (image, mask):
            st = p.stat()
            files.append([case, p.name, st.st_size, st.st_mtime_ns])
    settings = {"version": PREPROCESS_VERSION, "size": size, "files": files}
    if num_classes > 1:  # binary datasets keep the keys of their existing caches
        settings["num_classes"] = num_classes
    text = json.dumps(settings)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_cache(path: Path, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The cached arrays, checked: (count, 3, size, size) and (count, 1, size, size) uint8."""
    with np.load(path) as z:
        images, masks = z["images"], z["masks"]
    want = {"images": (count, 3, size, size), "masks": (count, 1, size, size)}
    for name, array in (("images", images), ("masks", masks)):
        if array.shape != want[name] or array.dtype != np.uint8:
            raise ValueError(f"'{name}' is {array.dtype} {array.shape}; expected uint8 {want[name]}")
    return images, masks


def load_cases(
    cases: Sequence[Case], size: int, cache: Path | None, workers: int = 4, name: str = "dataset",
    num_classes: int = 1,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Images (N, 3, size, size) and masks (N, 1, size, size), uint8, of every case, and whether they
    came from ``cache`` (an ``.npz`` path, or None for no cache). A missing or unreadable cache is
    (re)built from the files."""
    if cache is not None and cache.is_file():
        try:
            images, masks = _read_cache(cache, len(cases), size)
            log.info("%s: %d cases from cache %s", name, len(cases), cache)
            return images, masks, True
        except Exception as exc:  # a truncated zip, other arrays, missing keys: derived data, so rebuild
            log.warning("%s: the cache file '%s' cannot be used (%s); rebuilding it from the image files",
                        name, cache, describe(exc))
    log.info("%s: decoding and resizing %d cases", name, len(cases))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        out = list(pool.map(lambda c: load_case(c[1], c[2], size, num_classes), cases))
    images = np.stack([o[0] for o in out])
    masks = np.stack([o[1] for o in out])
    if cache is not None:
        save_npz(cache, images=images, masks=masks)
        log.info("%s: cached preprocessed arrays in %s", name, cache)
    return images, masks, False
