"""The minimal U-Net of the diffusion-course notebook, built from the shared blocks."""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_int
from .blocks import ConvBlock, Down, Up, center_crop, pad_to_multiple


class BasicUNet(nn.Module):
    """Three 5x5 convs down (two max-pools), three up (nearest x2), SiLU, additive skips.

    Widths base_width, 2*base_width, 2*base_width (32, 64, 64 in the notebook); no
    normalisation. The notebook also applied SiLU to its output; here the last conv
    returns logits, (B, num_classes, H, W), so the losses see unsquashed values.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 32) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("base_width", base_width)):
            check_int(name, value, low=1)
        w1, w2 = base_width, 2 * base_width
        conv = dict(num_convs=1, kernel_size=5, batch_norm=False, activation="silu")
        self.down_convs = nn.ModuleList([ConvBlock(in_channels, w1, **conv), ConvBlock(w1, w2, **conv)])
        self.downs = nn.ModuleList([Down("maxpool", w1), Down("maxpool", w2)])
        self.middle = nn.Sequential(ConvBlock(w2, w2, **conv), ConvBlock(w2, w2, **conv))
        self.ups = nn.ModuleList([Up("nearest", w2, w2), Up("nearest", w1, w1)])
        self.up_convs = nn.ModuleList([ConvBlock(w2, w1, **conv)])
        self.head = nn.Conv2d(w1, num_classes, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, 4)
        skips = []
        for conv, down in zip(self.down_convs, self.downs):
            x = conv(x)
            skips.append(x)
            x, _ = down(x)  # (B, C, H/2, W/2)
        x = self.middle(x)  # (B, 2w, H/4, W/4)
        x = self.ups[0](x, skips[1].shape[-2:], None) + skips[1]  # (B, 2w, H/2, W/2)
        x = self.up_convs[0](x)  # (B, w, H/2, W/2)
        x = self.ups[1](x, skips[0].shape[-2:], None) + skips[0]  # (B, w, H, W)
        return center_crop(self.head(x), (h, w))
