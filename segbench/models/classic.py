"""The original U-Net of Ronneberger et al. (2015)."""
from __future__ import annotations

from ..validation import check_choice
from .encoder_decoder import EncoderDecoder


class UNetClassic(EncoderDecoder):
    """Double 3x3 convs, 64..1024 channels (a doubled bottleneck), transposed-conv up, skip concatenation.

    ``padding='valid'`` with ``batch_norm=False`` is the paper's network (overlap-tile input);
    ``up_mode`` may also be ``bilinear`` or ``nearest``. (B, in_channels, H, W) -> (B, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 64, depth: int = 4,
                 batch_norm: bool = False, padding: str = "same", up_mode: str = "transpose") -> None:
        check_choice("up_mode", up_mode, ("transpose", "bilinear", "nearest"))
        super().__init__(
            in_channels, num_classes, base_width, depth=depth, down="maxpool", up=up_mode, skip="concat",
            batch_norm=batch_norm, padding=padding, bottleneck_mult=2,
        )
