"""PH2 dermoscopy database reader, with an on-disk cache of preprocessed arrays.

Official layout (the root may be the ``PH2Dataset`` folder or the images folder)::

    PH2Dataset/
      PH2 Dataset images/
        IMD002/
          IMD002_Dermoscopic_Image/IMD002.bmp   (any image format)
          IMD002_lesion/IMD002_lesion.bmp       (binary mask)
        ...
      PH2_dataset.txt                           (diagnosis: 0 common nevus, 1 atypical, 2 melanoma)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from skimage import io as skio
from skimage.transform import resize

from ..errors import UserError
from ..io import save_npz
from .base import SegArrays, SegDataset

log = logging.getLogger(__name__)

IMAGES_DIR = "PH2 Dataset images"
DIAGNOSIS_FILE = "PH2_dataset.txt"
# Bump when decoding/resizing changes, so stale caches are not reused.
PREPROCESS_VERSION = 1
IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}

LAYOUT_HELP = f"""expected the PH2 layout:
    <root>/{IMAGES_DIR}/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp
    <root>/{IMAGES_DIR}/IMD002/IMD002_lesion/IMD002_lesion.bmp
    <root>/{DIAGNOSIS_FILE}   (optional: diagnosis, used to stratify the split)
Set dataset.root=... or the environment variable SEGBENCH_PH2_ROOT, or try
dataset=synthetic, which needs no download."""


class DataError(UserError):
    """A dataset file or folder is missing or malformed; the message names it."""


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _pick(files: list[Path], stem: str) -> Path:
    """The file named like the case (``IMD002.*``) when there are several."""
    for p in files:
        if p.stem == stem:
            return p
    return files[0]


def find_cases(
    root: str | os.PathLike, problems: list[str] | None = None
) -> tuple[list[tuple[str, Path, Path]], Path]:
    """List (case id, image file, mask file) of a PH2 root; returns them and the images dir.

    Entries of the images folder that are not case folders (files, ``.DS_Store``,
    folders that neither look like ``IMDnnn`` nor hold ``<name>_Dermoscopic_Image``)
    are ignored. A case folder without an image or a mask, and two folders with
    the same case id (ignoring case), are errors naming them; with a ``problems``
    list they are appended there (and the case skipped) instead of raised.
    """
    def fail(message: str) -> None:
        if problems is None:
            raise DataError(message)
        problems.append(message)

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"PH2 root '{root}' does not exist or is not a folder; {LAYOUT_HELP}")
    images_dir = root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root
    cases, seen = [], {}
    for entry in sorted(images_dir.iterdir()):
        if not entry.is_dir():
            continue
        case = entry.name
        image_dir = entry / f"{case}_Dermoscopic_Image"
        if not (re.fullmatch(r"IMD\d+", case, flags=re.IGNORECASE) or image_dir.is_dir()):
            continue
        if case.upper() in seen:
            fail(f"duplicate case id '{case}': folders '{seen[case.upper()]}' and '{entry}'")
            continue
        seen[case.upper()] = entry
        images = _image_files(image_dir)
        if not images:
            fail(f"case folder '{entry}' has no image in '{image_dir.name}/'; {LAYOUT_HELP}")
            continue
        masks = _image_files(entry / f"{case}_lesion")
        if not masks:
            fail(f"case '{case}' has no lesion mask: expected a file in '{entry / (case + '_lesion')}/'")
            continue
        cases.append((case, _pick(images, case), _pick(masks, f"{case}_lesion")))
    if not cases and problems is None:
        raise DataError(f"no PH2 case folders found under '{images_dir}'; {LAYOUT_HELP}")
    return cases, images_dir


def read_diagnosis(root: str | os.PathLike) -> dict[str, int]:
    """Case id -> clinical diagnosis from ``PH2_dataset.txt``, or {} when absent."""
    root = Path(root).expanduser()
    for folder in (root, root.parent):
        path = folder / DIAGNOSIS_FILE
        if path.is_file():
            table = {}
            for line in path.read_text(errors="replace").splitlines():
                fields = [f.strip() for f in line.split("\t")]
                if len(fields) >= 2 and re.fullmatch(r"IMD\d+", fields[0]) and fields[1].isdigit():
                    table[fields[0]] = int(fields[1])
            return table
    return {}


def _read(path: Path) -> np.ndarray:
    try:
        return np.asarray(skio.imread(path))
    except Exception as exc:  # decoder errors vary by format and plugin
        raise DataError(f"cannot read image file '{path}': {exc}") from exc


def read_mask(path: Path) -> np.ndarray:
    """A lesion mask file as an (H, W) bool array; boolean, 0/1 and 0/255 (also 3-channel) masks decode alike."""
    mask = _read(path)
    if mask.ndim == 3:  # some PH2 masks decode as 3-channel 0/255 images
        mask = mask[..., :3].max(axis=-1)
    levels = np.unique(mask)
    if len(levels) > 2:
        raise DataError(
            f"mask '{path}' has {len(levels)} distinct values ({levels[:6].tolist()}...); "
            "expected a binary mask (boolean, 0/1 or 0/255)"
        )
    return (mask == levels.max()) if len(levels) == 2 else (mask > 0)


def read_case(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one case: image (H, W, 3) uint8 RGB and mask (H, W) bool of the same size."""
    image = _read(image_path)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise DataError(f"image '{image_path}' has shape {image.shape}; expected (H, W, 3) RGB")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) / np.iinfo(image.dtype).max * 255).astype(np.uint8)
    mask = read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"'{image_path.name}' is {image.shape[1]}x{image.shape[0]}; they must match"
        )
    return image, mask


def load_case(image_path: Path, mask_path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize one case.

    Returns image (3, size, size) uint8 and mask (1, size, size) uint8 {0, 1}.
    The image is resized with anti-aliasing; the mask is resized the same way
    and thresholded at 0.5, as in the seed study.
    """
    image, binary = read_case(image_path, mask_path)
    img = resize(image.astype(np.float32) / 255.0, (size, size), anti_aliasing=True)
    img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    msk = resize(binary.astype(np.float32), (size, size), anti_aliasing=True) > 0.5
    return img, msk[None].astype(np.uint8)


def _cache_key(cases: Sequence[tuple[str, Path, Path]], size: int) -> str:
    files = []
    for case, image, mask in cases:
        for p in (image, mask):
            st = p.stat()
            files.append([case, p.name, st.st_size, st.st_mtime_ns])
    text = json.dumps({"version": PREPROCESS_VERSION, "size": size, "files": files})
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class PH2(SegDataset):
    """The PH2 database, preprocessed to ``image_size`` and cached in ``cache_dir``.

    Args:
        root: the ``PH2Dataset`` folder or the ``PH2 Dataset images`` folder in it.
        image_size: side of the square images the network sees (pixels).
        split_sizes: (train, val, test) case counts; 100/50/50 as in the study.
        split_seed: fixes the split (stratified by diagnosis when the table exists).
        cache_dir: where preprocessed arrays are kept; None disables the cache.
        workers: threads used to decode and resize on a cache miss.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        split_sizes: Sequence[int] = (100, 50, 50),
        split_seed: int = 0,
        cache_dir: str | None = None,
        workers: int = 4,
    ) -> None:
        super().__init__(image_size, split_sizes, split_seed)
        self.root = Path(str(root)).expanduser()
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir else None
        self.workers = max(1, int(workers))
        self.cache_hit: bool | None = None
        self._mask_files: dict[str, Path] = {}

    def original_masks(self, ids: Sequence[str]) -> list[np.ndarray]:
        """The expert masks at their original resolution, (H0, W0) bool each, read from the files."""
        self.arrays  # noqa: B018  (lists the case files)
        return [read_mask(self._mask_files[case]) for case in ids]

    def check(self) -> list[str]:
        """Every problem of the dataset at once (layout, unreadable files, bad masks), without training."""
        problems: list[str] = []
        try:
            cases, images_dir = find_cases(self.root, problems)
        except DataError as exc:
            return [str(exc)]
        if not cases and not problems:
            return [f"no PH2 case folders found under '{images_dir}'; {LAYOUT_HELP}"]
        readable = 0
        for _, image, mask in cases:
            try:
                read_case(image, mask)
                readable += 1
            except DataError as exc:
                problems.append(str(exc))
        total = sum(self.split_sizes)
        if total > readable:
            problems.append(f"dataset.split_sizes {list(self.split_sizes)} need {total} cases; {readable} are readable")
        return problems

    def load_arrays(self) -> SegArrays:
        cases, images_dir = find_cases(self.root)
        ids = [c for c, _, _ in cases]
        self._mask_files = {c: m for c, _, m in cases}
        table = read_diagnosis(self.root)
        diagnosis = [table[c] for c in ids] if table and all(c in table for c in ids) else None
        if table and diagnosis is None:
            missing = [c for c in ids if c not in table][:5]
            log.warning("%s lacks cases %s...; the split is not stratified", DIAGNOSIS_FILE, missing)

        cache = None
        if self.cache_dir is not None:
            cache = self.cache_dir / f"ph2-{self.image_size}px-{_cache_key(cases, self.image_size)}.npz"
        if cache is not None and cache.is_file():
            with np.load(cache) as z:
                images, masks = z["images"], z["masks"]
            self.cache_hit = True
            log.info("PH2: %d cases from cache %s", len(ids), cache)
        else:
            self.cache_hit = False
            log.info("PH2: decoding and resizing %d cases from %s", len(ids), images_dir)
            with ThreadPoolExecutor(self.workers) as pool:
                out = list(pool.map(lambda c: load_case(c[1], c[2], self.image_size), cases))
            images = np.stack([o[0] for o in out])
            masks = np.stack([o[1] for o in out])
            if cache is not None:
                save_npz(cache, images=images, masks=masks)
                log.info("PH2: cached preprocessed arrays in %s", cache)
        return SegArrays(torch.from_numpy(images), torch.from_numpy(masks), ids, diagnosis)
