"""Any folder of images with masks as a dataset (``dataset=folder``; presets ``isic2018``, ``kvasir_seg``).

Images are matched to masks by file stem: the mask of ``<images>/ISIC_0000000.jpg`` is the file of
``<masks>`` whose name matches ``mask_pattern`` with ``{stem}`` replaced, e.g.
``{stem}_segmentation.png`` (ISIC) or ``{stem}.*`` (Kvasir-SEG: the same name in ``masks/``).
Images and masks may share one folder when the mask pattern tells them apart.

Masks: binary (``num_classes: 1``) as 0/1, 0/255 or bool, or lossy JPEGs thresholded at half range;
multi-class (``num_classes: C``) as single-channel class-index images (palette PNGs read as
indices) with values 0..C-1. Groups (to stratify splits and break results down) come from an
optional CSV with columns ``id`` and ``group``.
"""
from __future__ import annotations

import csv
import fnmatch
import os
import re
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..validation import check_int
from .arrays import IMAGE_SUFFIXES, Case, image_files
from .files import FileDataset

STEM = "{stem}"


def _matches(path: Path, pattern: str) -> bool:
    return fnmatch.fnmatch(path.name.lower(), pattern.lower())


def _glob_regex(glob: str) -> str:
    return "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in glob)


def _stem_regex(pattern: str) -> re.Pattern:
    """A regex matching file names of ``pattern`` whose group ``stem`` is what ``{stem}`` stood for."""
    before, after = pattern.split(STEM, 1)
    return re.compile(_glob_regex(before) + "(?P<stem>.+)" + _glob_regex(after), re.IGNORECASE)


def _folder(root: Path, sub: str, key: str) -> Path:
    folder = Path(os.path.expanduser(sub))
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        raise DataError(f"dataset.{key}: '{folder}' does not exist or is not a folder")
    return folder


class Folder(FileDataset):
    """Images and masks read from folders, preprocessed to ``image_size`` and cached as PH2 is.

    Args:
        root: the dataset's folder (where its archive unpacks); ``images``, ``masks`` and
            ``groups`` are relative to it (or absolute).
        images: the folder of images; ``image_pattern`` selects its files (``*.jpg``).
        masks: the folder of masks (may be ``images``).
        mask_pattern: a mask's file name, with ``{stem}`` for its image's stem (glob characters allowed).
        num_classes: 1 for binary masks, C > 1 for class-index masks with values 0..C-1.
        class_names: names of the C classes (background first) for metric names; default class0..
        groups: a CSV file with columns ``id`` (image stem) and ``group``; null = no groups.
        subjects: a CSV file with columns ``id`` (image stem) and ``subject`` (the patient or lesion), one row
            per case: every split keeps a subject's cases in one part. null = every case its own subject.
        subjects_metadata: a metadata CSV read for subjects where it exists and ``subjects`` is null, with
            the columns ``metadata_columns`` (the ISIC Archive's export: ``isic_id``, ``lesion_id``); a case
            it does not name, or names with an empty subject, is its own subject.
        metadata_columns: the columns of ``subjects_metadata`` that hold the case id and its subject.
        name: the dataset's name in messages and cache files.
    """

    group_key = "group"

    def __init__(self, root: str, images: str = "images", masks: str = "masks", mask_pattern: str = "{stem}.*",
                 image_pattern: str = "*", num_classes: int = 1, class_names: Sequence[str] | None = None,
                 groups: str | None = None, image_size: int = 256, cache_dir: str | None = None,
                 workers: int = 4, name: str = "folder", subjects: str | None = None,
                 subjects_metadata: str | None = None,
                 metadata_columns: Sequence[str] = ("isic_id", "lesion_id")) -> None:
        if root is None or str(root) in ("", "???"):
            raise DataError("dataset.root is not set; expected the dataset's folder (dataset.root=/path/to/data)")
        super().__init__(root, image_size, cache_dir, workers)
        self.images_sub, self.masks_sub = str(images), str(masks)
        self.image_pattern = str(image_pattern)
        self.mask_pattern = str(mask_pattern)
        if STEM not in self.mask_pattern:
            raise DataError(f"dataset.mask_pattern='{mask_pattern}' must contain {STEM} (the image's file stem), "
                            "e.g. '{stem}_segmentation.png' or '{stem}.*'")
        self.num_classes = check_int("num_classes", num_classes, low=1)
        if self.num_classes == 2:
            raise DataError("dataset.num_classes=2: a binary dataset is num_classes=1 (one sigmoid channel); "
                            "use 3 or more for multi-class masks")
        names = list(class_names) if class_names else [f"class{k}" for k in range(max(2, self.num_classes))]
        if self.num_classes > 1 and len(names) != self.num_classes:
            raise DataError(f"dataset.class_names has {len(names)} names; expected num_classes={self.num_classes}")
        self.class_names = names if self.num_classes > 1 else None
        self.groups_file = None if groups in (None, "") else str(groups)
        self.subjects_file = None if subjects in (None, "") else str(subjects)
        self.metadata_file = None if subjects_metadata in (None, "") else str(subjects_metadata)
        columns = [str(c) for c in (metadata_columns or ())]
        if len(columns) != 2 or not all(columns):
            raise DataError(f"dataset.metadata_columns={list(metadata_columns or ())}: expected two column names, "
                            "the case id's and the subject's, e.g. [isic_id, lesion_id]")
        self.metadata_columns = columns
        self.name = str(name)

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    # -- matching images to masks ----------------------------------------
    def _root(self) -> Path:
        if not self.root.is_dir():
            raise DataError(f"dataset.root '{self.root}' does not exist or is not a folder; expected the "
                            f"{self.name} dataset's folder (with '{self.images_sub}' and '{self.masks_sub}' in it)")
        return self.root

    def _files(self) -> tuple[Path, Path, list[Path], list[Path]]:
        """The images folder, the masks folder, its image files (``image_pattern``) and its mask files
        (``mask_pattern``); none of either is an error saying what the patterns expected."""
        root = self._root()
        images_dir = _folder(root, self.images_sub, "images")
        masks_dir = _folder(root, self.masks_sub, "masks")
        stem_of = _stem_regex(self.mask_pattern)
        same = images_dir.resolve() == masks_dir.resolve()
        images = [p for p in image_files(images_dir) if _matches(p, self.image_pattern)
                  and not (same and stem_of.fullmatch(p.name))]
        masks = [p for p in image_files(masks_dir) if stem_of.fullmatch(p.name)]
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        if not images:
            raise DataError(f"the images folder '{images_dir}' holds no image files matching "
                            f"dataset.image_pattern='{self.image_pattern}' (readable suffixes: {suffixes})")
        if not masks:
            others = [p.name for p in image_files(masks_dir) if p not in images]
            holds = f"it holds files like '{others[0]}'" if others else f"it holds no image files ({suffixes})"
            raise DataError(f"no file of the masks folder '{masks_dir}' matches dataset.mask_pattern="
                            f"'{self.mask_pattern}': e.g. image '{images[0].name}' looks for "
                            f"'{self.mask_pattern.replace(STEM, images[0].stem)}', but {holds}")
        return images_dir, masks_dir, images, masks

    def find_cases(self, problems: list[str] | None = None) -> list[Case]:
        """(case id, image file, mask file) of every image with its mask, sorted by id.

        Images without a mask, masks without an image, two images with one stem and a stem with
        several masks are errors naming them (all of them in ``problems`` when a list is given;
        those cases are then left out).
        """
        images_dir, masks_dir, images, masks = self._files()
        stem_of = _stem_regex(self.mask_pattern)
        by_stem: dict[str, list[Path]] = {}  # masks by the image stem their name gives
        for m in masks:
            by_stem.setdefault(stem_of.fullmatch(m.name).group("stem").lower(), []).append(m)
        found: list[str] = []
        cases, seen = [], {}
        for image in images:
            stem = image.stem
            if stem.lower() in seen:
                found.append(f"two images with the stem '{stem}': '{seen[stem.lower()].name}' and '{image.name}'")
                continue
            seen[stem.lower()] = image
            hits = by_stem.get(stem.lower(), [])
            if len(hits) > 1:
                found.append(f"image '{image.name}' has {len(hits)} masks matching "
                             f"'{self.mask_pattern.replace(STEM, stem)}': {', '.join(m.name for m in hits[:4])}")
            elif hits:
                cases.append((stem, image, hits[0]))
            else:
                found.append(f"image '{image}' has no mask: expected '{self.mask_pattern.replace(STEM, stem)}' "
                             f"in '{masks_dir}'")
        if not cases:
            raise DataError(
                f"no image in '{images_dir}' has a mask in '{masks_dir}' named by dataset.mask_pattern="
                f"'{self.mask_pattern}': e.g. image '{images[0].name}' looks for "
                f"'{self.mask_pattern.replace(STEM, images[0].stem)}', but the masks are named like "
                f"'{masks[0].name}'")
        for stem, hits in sorted(by_stem.items()):
            if stem not in seen:
                found.extend(f"mask '{m}' has no image in '{images_dir}'" for m in hits)
        if found:
            if problems is None:
                more = f" (and {len(found) - 1} more problems; segbench check-data lists them)"
                raise DataError(found[0] + (more if len(found) > 1 else ""))
            problems.extend(found)
        return sorted(cases)

    def read_groups(self, ids: Sequence[str]) -> list[str] | None:
        """Each case's group from the groups CSV (columns ``id``, ``group``), or None without one."""
        if self.groups_file is None:
            return None
        return self._case_column(self.groups_file, "groups", ("id", "group"), ids)

    def read_subjects(self, ids: Sequence[str]) -> list[str] | None:
        """Each case's subject from ``subjects`` (every case named), else from ``subjects_metadata`` where
        that file exists (an unnamed case alone); None without either."""
        if self.subjects_file is not None:
            return self._case_column(self.subjects_file, "subjects", ("id", "subject"), ids, empty_is_missing=True)
        if self.metadata_file is not None:
            return self._case_column(self.metadata_file, "subjects_metadata", self.metadata_columns, ids,
                                     required=False)
        return None

    def _case_column(self, name: str, key: str, columns: Sequence[str], ids: Sequence[str], required: bool = True,
                     empty_is_missing: bool = False) -> list[str] | None:
        """The value of each of ``ids`` in a CSV file of ``dataset.<key>`` (relative to the root), from its
        ``columns`` (the case id's, the value's). ``required``: the file and every case's value must be
        there, else a DataError naming the file; otherwise a missing file is None and a case without a
        value (or, ``empty_is_missing``, an empty one) is its own id."""
        path = Path(os.path.expanduser(name))
        path = path if path.is_absolute() else self.root / path
        id_column, value_column = columns
        expected = f"a CSV with columns {id_column},{value_column}"
        if not path.is_file():
            if not required:
                return None
            raise DataError(f"dataset.{key}: '{path}' is not a file; expected {expected}")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {id_column, value_column} <= set(reader.fieldnames):
                raise DataError(f"dataset.{key}: '{path}' has columns {reader.fieldnames}; expected {expected}")
            table = {(row[id_column] or "").strip(): (row[value_column] or "").strip() for row in reader}
        empty_is_missing = empty_is_missing or not required
        missing = [c for c in ids if c not in table or (empty_is_missing and not table[c])]
        if missing and required:
            raise DataError(f"dataset.{key}: '{path}' has no {value_column} for {len(missing)} case(s), e.g. "
                            f"{', '.join(missing[:3])}; every case needs one")
        return [table.get(c) or c for c in ids] if not required else [table[c] for c in ids]
