"""In-memory segmentation data: one uint8 tensor per split, a deterministic split.

Every dataset (PH2, synthetic) produces a :class:`SegArrays` holding the whole
dataset as tensors; the trainer indexes batches from them directly, so no
per-sample Python work happens during an epoch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError


@dataclass
class SegArrays:
    """A whole dataset (or one split of it) held in memory.

    images: (N, 3, H, W) uint8, RGB.
    masks:  (N, 1, H, W) uint8 with values {0, 1}.
    ids:    N case ids, in the order of the tensors.
    diagnosis: N labels (e.g. PH2 0/1/2) or None when the dataset has none.
    """

    images: torch.Tensor
    masks: torch.Tensor
    ids: list[str]
    diagnosis: list[int] | None = None

    def __post_init__(self) -> None:
        # One memory layout whatever the source (freshly decoded arrays are stacked channels-last, cached
        # ones are not): reductions such as the normaliser's mean/std then sum in the same order, so a
        # run gives the same numbers with a cold or a warm cache.
        self.images, self.masks = self.images.contiguous(), self.masks.contiguous()
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert self.masks.dtype == torch.uint8 and self.masks.ndim == 4, self.masks.shape
        assert len(self.ids) == self.images.shape[0] == self.masks.shape[0]
        assert self.diagnosis is None or len(self.diagnosis) == len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> "SegArrays":
        pos = {case: i for i, case in enumerate(self.ids)}
        index = torch.tensor([pos[c] for c in ids], dtype=torch.long)
        diag = None if self.diagnosis is None else [self.diagnosis[pos[c]] for c in ids]
        return SegArrays(self.images[index], self.masks[index], list(ids), diag)


def check_split_sizes(sizes: Sequence[int]) -> None:
    """Three positive integers (train, val, test); the error names the key and the value."""
    ok = len(sizes) == 3 and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in sizes)
    if not ok:
        raise UserError(f"dataset.split_sizes={list(sizes)} is invalid; expected three integers >= 1 (train, val, test)")


def make_split(
    ids: Sequence[str],
    sizes: Sequence[int],
    seed: int,
    strata: Sequence[int] | None = None,
) -> dict[str, list[str]]:
    """Deterministic train/val/test split of case ids.

    With ``strata`` (e.g. diagnosis), each class is shuffled and its members are
    spread evenly over an interleaved order (member i of a class of n sits at
    position (i + 0.5) / n), so every contiguous slice, and hence every split,
    holds the classes in the dataset's proportions (80/80/40 -> 40/40/20 of 100).
    The result depends only on the sorted ids, the sizes, the strata and the seed.
    """
    names = ("train", "val", "test")
    check_split_sizes(sizes)
    total = int(sum(sizes))
    if total > len(ids):
        raise UserError(
            f"dataset.split_sizes: train={sizes[0]} + val={sizes[1]} + test={sizes[2]} = {total} "
            f"exceed the {len(ids)} cases in the dataset"
        )
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    rng = np.random.default_rng(seed)
    if strata is None:
        perm = [order[i] for i in rng.permutation(len(order))]
    else:
        keyed = []
        for label in sorted(set(strata)):
            members = [i for i in order if strata[i] == label]
            members = [members[j] for j in rng.permutation(len(members))]
            n = len(members)
            keyed += [((k + 0.5) / n, rng.random(), i) for k, i in enumerate(members)]
        perm = [i for _, _, i in sorted(keyed)]
    out, start = {}, 0
    for name, n in zip(names, sizes):
        out[name] = [ids[i] for i in perm[start : start + n]]
        start += n
    return out


def split_digest(split: dict[str, list[str]]) -> str:
    """Short hash of a split, so runs can be checked to share one."""
    text = json.dumps({k: split[k] for k in ("train", "val", "test")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SegDataset:
    """Base of every dataset config: loads arrays once and splits them.

    Subclasses implement :meth:`load_arrays`. ``split_sizes`` is (train, val,
    test); ``split_seed`` fixes the split independently of the training seed.
    """

    def __init__(self, image_size: int, split_sizes: Sequence[int], split_seed: int = 0) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise UserError(f"dataset.image_size={image_size!r} is invalid; expected an integer >= 16")
        check_split_sizes(split_sizes)  # here, so a bad value fails before any image is decoded
        self.image_size = image_size
        self.split_sizes = [int(s) for s in split_sizes]
        self.split_seed = int(split_seed)
        self._arrays: SegArrays | None = None

    def load_arrays(self) -> SegArrays:
        raise NotImplementedError

    @property
    def arrays(self) -> SegArrays:
        if self._arrays is None:
            self._arrays = self.load_arrays()
        return self._arrays

    def split(self) -> dict:
        """The split as written to ``split.json``: ids per part, seed, sizes, digest."""
        data = self.arrays
        parts = make_split(data.ids, self.split_sizes, self.split_seed, data.diagnosis)
        return {
            **parts,
            "seed": self.split_seed,
            "sizes": list(self.split_sizes),
            "stratified_by": None if data.diagnosis is None else "diagnosis",
            "digest": split_digest(parts),
        }

    def check(self) -> list[str]:
        """Problems that would stop training on this dataset (empty when it loads and splits)."""
        try:
            self.split()
        except ValueError as exc:
            return [str(exc)]
        return []

    def original_masks(self, ids: Sequence[str]) -> list[np.ndarray]:
        """Masks at the dataset's original resolution, (H0, W0) each; here the loaded size."""
        data = self.arrays.subset(ids)
        return [m[0].numpy() for m in data.masks]

    def parts(self, split: dict) -> dict[str, SegArrays]:
        return {name: self.arrays.subset(split[name]) for name in ("train", "val", "test")}
