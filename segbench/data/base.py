"""What every dataset gives the rest of segbench: case ids, the arrays, original-size masks, groups.

A dataset loads the whole of itself into memory once, as one :class:`SegArrays`
of uint8 tensors; the trainer indexes batches from them directly, so no
per-sample Python work happens during an epoch. How the cases are divided into
train/val/test is not the dataset's business: that is a split (:mod:`segbench.splits`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..validation import check_int


@dataclass
class SegArrays:
    """A whole dataset (or a part of it) held in memory.

    images: (N, 3, H, W) uint8, RGB.
    masks:  (N, 1, H, W) uint8 with values {0, 1} (binary) or class indices.
    ids:    N case ids, in the order of the tensors.
    groups: N group names (PH2: the diagnosis) or None when the dataset has none.
    """

    images: torch.Tensor
    masks: torch.Tensor
    ids: list[str]
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        # One memory layout whatever the source (freshly decoded arrays are stacked channels-last, cached
        # ones are not): reductions such as the normaliser's mean/std then sum in the same order, so a
        # run gives the same numbers with a cold or a warm cache.
        self.images, self.masks = self.images.contiguous(), self.masks.contiguous()
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert self.masks.dtype == torch.uint8 and self.masks.ndim == 4, self.masks.shape
        assert len(self.ids) == self.images.shape[0] == self.masks.shape[0]
        assert self.groups is None or len(self.groups) == len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> "SegArrays":
        pos = {case: i for i, case in enumerate(self.ids)}
        index = torch.tensor([pos[c] for c in ids], dtype=torch.long)
        groups = None if self.groups is None else [self.groups[pos[c]] for c in ids]
        return SegArrays(self.images[index], self.masks[index], list(ids), groups)


class SegDataset:
    """Base of every dataset: subclasses implement :meth:`load_arrays` (and, where they can tell more,
    :meth:`original_masks` and :meth:`check`).

    Class attributes a dataset may set:
        group_key: what its groups are (``"diagnosis"``): names the per-group breakdown
            (``by_diagnosis`` in metrics.json, a ``diagnosis`` column in test_per_image.csv).
        group_order: the groups in their natural order (stratified splits visit them in this order;
            sorted names otherwise).
        num_classes, class_names: what the masks hold (a multi-class dataset sets both).
    """

    group_key: str | None = None
    group_order: tuple[str, ...] = ()
    num_classes: int = 1  # 1: binary masks {0, 1}; C > 1: class indices 0..C-1 (0 = background)
    class_names: list[str] | None = None  # C names, background first (multi-class metric keys)

    def __init__(self, image_size: int) -> None:
        self.image_size = check_int("image_size", image_size, low=16)
        self._arrays: SegArrays | None = None

    def load_arrays(self) -> SegArrays:
        raise NotImplementedError

    @property
    def arrays(self) -> SegArrays:
        """Every case, loaded on first use."""
        if self._arrays is None:
            self._arrays = self.load_arrays()
        return self._arrays

    @property
    def ids(self) -> list[str]:
        return self.arrays.ids

    @property
    def groups(self) -> list[str] | None:
        return self.arrays.groups

    def parts(self, split: dict) -> dict[str, SegArrays]:
        """The arrays of each part of a split (``train``, ``val``, ``test``)."""
        return {name: self.arrays.subset(split[name]) for name in ("train", "val", "test")}

    def original_masks(self, ids: Sequence[str]) -> list[np.ndarray]:
        """Masks at the dataset's original resolution, (H0, W0) each; here the loaded size."""
        data = self.arrays.subset(ids)
        return [m[0].numpy() for m in data.masks]

    def case_ids(self) -> list[str]:
        """The case ids, without decoding any image where the dataset can list them from its files."""
        return self.ids

    def read_subjects(self, ids: Sequence[str]) -> list[str] | None:
        """Each case's subject (the patient or lesion it shows; splits keep a subject's cases in one part),
        or None where the dataset gives none: every case is then its own subject."""
        return None

    def check(self) -> tuple[list[str], int]:
        """Every problem that would stop training, without training: (problems, readable cases)."""
        return [], len(self.arrays)

    def describe(self) -> str:
        """Where the data comes from, for messages."""
        return type(self).__name__
