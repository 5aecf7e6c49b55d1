"""Datasets read from image and mask files (PH2, any folder): what they share.

A subclass says how its cases are found (:meth:`FileDataset.find_cases`: case id, image file, mask
file) and, if it has them, their groups (:meth:`FileDataset.read_groups`). Listing the cases once,
decoding and resizing with the on-disk cache (:mod:`segbench.data.arrays`), the masks at their
original resolution and the check of every file without training are done here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .arrays import Case, cache_key, load_cases, read_case, read_mask
from .base import SegArrays, SegDataset


class FileDataset(SegDataset):
    """Base of the datasets read from files, preprocessed to ``image_size`` and cached in ``cache_dir``.

    Args:
        root: the dataset's folder.
        image_size: side of the square images the network sees (pixels).
        cache_dir: where preprocessed arrays are kept; None disables the cache.
        workers: threads used to decode and resize on a cache miss.
    """

    name = "files"  # in messages
    cache_prefix: str | None = None  # the first part of the cache file's name; None = name

    def __init__(self, root: str, image_size: int, cache_dir: str | None, workers: int) -> None:
        super().__init__(image_size)
        self.root = Path(str(root)).expanduser()
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir else None
        self.workers = max(1, int(workers))
        self.cache_hit: bool | None = None  # whether the last load came from the cache
        self._cases: list[Case] | None = None

    # -- what a subclass gives --------------------------------------------
    def find_cases(self, problems: list[str] | None = None) -> list[Case]:
        """(case id, image file, mask file) of every case, sorted by id. A problem with the files is a
        DataError naming them; with a ``problems`` list, each one that leaves the other cases usable is
        appended there instead (and its case left out)."""
        raise NotImplementedError

    def read_groups(self, ids: Sequence[str]) -> list[str] | None:
        """Each case's group (to stratify splits and break results down), or None without groups."""
        return None

    # -- shared -------------------------------------------------------------
    def cases(self) -> list[Case]:
        """The cases, listed once."""
        if self._cases is None:
            self._cases = self.find_cases()
        return self._cases

    def case_ids(self) -> list[str]:
        return [c for c, _, _ in self.cases()]

    def original_masks(self, ids: Sequence[str]) -> list[np.ndarray]:
        """The masks at their files' resolution: (H0, W0) bool (binary) or class indices."""
        files = {c: mask for c, _, mask in self.cases()}
        return [read_mask(files[c], self.num_classes) for c in ids]

    def check(self) -> tuple[list[str], int]:
        """Every problem of the dataset at once (layout, unreadable files, bad masks, groups), without training."""
        problems: list[str] = []
        try:
            cases = self.find_cases(problems)
            self.read_groups([c for c, _, _ in cases])
            self.read_subjects([c for c, _, _ in cases])
        except DataError as exc:
            return problems + [str(exc)], 0
        readable = 0
        for _, image, mask in cases:
            try:
                read_case(image, mask, self.num_classes)
                readable += 1
            except DataError as exc:
                problems.append(str(exc))
        return problems, readable

    def load_arrays(self) -> SegArrays:
        cases = self.cases()
        ids = [c for c, _, _ in cases]
        groups = self.read_groups(ids)
        cache = None
        if self.cache_dir is not None:
            key = cache_key(cases, self.image_size, self.num_classes)
            cache = self.cache_dir / f"{self.cache_prefix or self.name}-{self.image_size}px-{key}.npz"
        images, masks, self.cache_hit = load_cases(cases, self.image_size, cache, self.workers, self.name,
                                                   self.num_classes)
        return SegArrays(torch.from_numpy(images), torch.from_numpy(masks), ids, groups)
