"""SegNet as in the PH2 study."""
from __future__ import annotations

from typing import Any

from .encoder_decoder import EncoderDecoder


class SegNet(EncoderDecoder):
    """The U-Net encoder and a mirrored decoder with nearest upsampling and no skips.
    (B, in_channels, H, W) -> (B, num_classes, H, W) logits. ``up='unpool'`` is SegNet-unpool."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 64, **kwargs: Any) -> None:
        kwargs = {"depth": 4, "down": "maxpool", "up": "nearest", "skip": "none", **kwargs}
        super().__init__(in_channels, num_classes, base_width, **kwargs)
