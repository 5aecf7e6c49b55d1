"""Batch augmentation on the device, with kornia: the same geometric transform for an image and its
mask, photometric transforms on the image only.

The trainer applies it to each training batch after indexing it from the in-memory
split and before normalisation: images (B, 3, H, W) float in [0, 1], masks (B, 1, H, W)
float (0/1, or class indices). Masks are resampled with nearest-neighbour
interpolation, so they keep their values. Random parameters come from torch's
global generator, which the trainer seeds and checkpoints: a run is
reproducible, and a resumed run continues the same draws.

Any ``kornia.augmentation`` op (or another module with the same interface) can
be listed in ``conf/augment/*.yaml``; see ``standard.yaml``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from kornia.augmentation import AugmentationSequential
from torch import nn


class Augment(nn.Module):
    """A list of kornia ops applied in order to (images, masks).

    Args:
        ops: kornia augmentation modules (each with its own probability ``p`` and ranges).
    """

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        ops = list(ops)
        for i, op in enumerate(ops):
            if not isinstance(op, nn.Module):
                raise TypeError(f"augment.ops[{i}] is {type(op).__name__}, not an augmentation module "
                                "(give each op a _target_, e.g. kornia.augmentation.RandomHorizontalFlip)")
        self.ops = ops
        self.pipeline = AugmentationSequential(*ops, data_keys=["input", "mask"]) if ops else None

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) float in [0, 1], masks (B, 1, H, W) float -> the same, augmented."""
        if self.pipeline is None:
            return images, masks
        images, masks = self.pipeline(images, masks)
        return images.clamp_(0, 1), masks.round_()  # photometric ops may leave [0, 1]; nearest keeps the values

    def __repr__(self) -> str:
        return f"Augment({', '.join(type(op).__name__ for op in self.ops) or 'none'})"
