"""PH2 dermoscopy database: its folder layout, its diagnosis table and its group names.

Official layout (the root may be the ``PH2Dataset`` folder or the images folder)::

    PH2Dataset/
      PH2 Dataset images/
        IMD002/
          IMD002_Dermoscopic_Image/IMD002.bmp   (any image format)
          IMD002_lesion/IMD002_lesion.bmp       (binary mask)
        ...
      PH2_dataset.txt                           (diagnosis: 0 common nevus, 1 atypical, 2 melanoma)

Decoding, resizing and the cache are :mod:`segbench.data.arrays`'s.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from .arrays import Case, image_files
from .files import FileDataset

log = logging.getLogger(__name__)

IMAGES_DIR = "PH2 Dataset images"
DIAGNOSIS_FILE = "PH2_dataset.txt"
DIAGNOSES = ("common_nevus", "atypical_nevus", "melanoma")  # codes 0, 1, 2 of PH2_dataset.txt

LAYOUT_HELP = f"""expected the PH2 layout:
    <root>/{IMAGES_DIR}/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp
    <root>/{IMAGES_DIR}/IMD002/IMD002_lesion/IMD002_lesion.bmp
    <root>/{DIAGNOSIS_FILE}   (optional: diagnosis, used to stratify the split)
Set dataset.root=... or the environment variable SEGBENCH_PH2_ROOT, or try
dataset=synthetic, which needs no download."""


def _pick(files: list[Path], stem: str) -> Path:
    """The file named like the case (``IMD002.*``) when there are several."""
    for p in files:
        if p.stem == stem:
            return p
    return files[0]


def find_cases(root: str | os.PathLike, problems: list[str] | None = None) -> tuple[list[Case], Path]:
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
        images = image_files(image_dir)
        if not images:
            fail(f"case folder '{entry}' has no image in '{image_dir.name}/'; {LAYOUT_HELP}")
            continue
        masks = image_files(entry / f"{case}_lesion")
        if not masks:
            fail(f"case '{case}' has no lesion mask: expected a file in '{entry / (case + '_lesion')}/'")
            continue
        cases.append((case, _pick(images, case), _pick(masks, f"{case}_lesion")))
    if not cases and problems is None:
        raise DataError(f"no PH2 case folders found under '{images_dir}'; {LAYOUT_HELP}")
    return cases, images_dir


def read_diagnosis(root: str | os.PathLike) -> dict[str, str]:
    """Case id -> diagnosis name (``common_nevus``, ...) from ``PH2_dataset.txt``, or {} when absent."""
    root = Path(root).expanduser()
    for folder in (root, root.parent):
        path = folder / DIAGNOSIS_FILE
        if path.is_file():
            table = {}
            for line in path.read_text(errors="replace").splitlines():
                fields = [f.strip() for f in line.split("\t")]
                if len(fields) >= 2 and re.fullmatch(r"IMD\d+", fields[0]) and fields[1].isdigit():
                    code = int(fields[1])
                    table[fields[0]] = DIAGNOSES[code] if code < len(DIAGNOSES) else str(code)
            return table
    return {}


class PH2(FileDataset):
    """The PH2 database, preprocessed to ``image_size`` and cached in ``cache_dir``.

    Groups are the clinical diagnosis (common_nevus, atypical_nevus, melanoma), used
    to stratify the split and for the per-diagnosis breakdown of the test metrics.

    Args:
        root: the ``PH2Dataset`` folder or the ``PH2 Dataset images`` folder in it.
        image_size: side of the square images the network sees (pixels).
        cache_dir: where preprocessed arrays are kept; None disables the cache.
        workers: threads used to decode and resize on a cache miss.
    """

    name = "PH2"
    cache_prefix = "ph2"
    group_key = "diagnosis"
    group_order = DIAGNOSES

    def __init__(self, root: str, image_size: int = 256, cache_dir: str | None = None, workers: int = 4) -> None:
        super().__init__(root, image_size, cache_dir, workers)

    def describe(self) -> str:
        return f"PH2 ({self.root})"

    def find_cases(self, problems: list[str] | None = None) -> list[Case]:
        cases, images_dir = find_cases(self.root, problems)
        if not cases and not problems:
            raise DataError(f"no PH2 case folders found under '{images_dir}'; {LAYOUT_HELP}")
        return cases

    def read_groups(self, ids: Sequence[str]) -> list[str] | None:
        """The diagnosis of each case from PH2_dataset.txt; None (unstratified, with a warning) when the
        table is absent or lacks cases."""
        table = read_diagnosis(self.root)
        if table and not all(c in table for c in ids):
            missing = [c for c in ids if c not in table][:5]
            log.warning("%s lacks cases %s...; the split is not stratified", DIAGNOSIS_FILE, missing)
            return None
        return [table[c] for c in ids] if table else None
