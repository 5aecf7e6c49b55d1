"""The PH2 study's U-Net."""
from __future__ import annotations

from typing import Any

from .encoder_decoder import EncoderDecoder


class UNet(EncoderDecoder):
    """4 levels of 2 x (conv3x3-BN-ReLU), widths base x 1, 2, 4, 8; max-pool down, nearest upsampling,
    skip concatenation. (B, in_channels, H, W) -> (B, num_classes, H, W) logits. Any other
    :class:`EncoderDecoder` argument may be given to change one part."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 64, **kwargs: Any) -> None:
        kwargs = {"depth": 4, "down": "maxpool", "up": "nearest", "skip": "concat", **kwargs}
        super().__init__(in_channels, num_classes, base_width, **kwargs)
