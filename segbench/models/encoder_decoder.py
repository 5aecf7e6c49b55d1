"""One configurable encoder-decoder; U-Net and SegNet variants are settings of it."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import DOWN_MODES, SKIP_MODES, UP_MODES, ConvBlock, Down, Up, center_crop, check_choice, pad_to_multiple


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class EncoderDecoder(nn.Module):
    """Encoder of ``depth`` conv blocks with downsampling, a bottleneck, a mirrored decoder.

    Level i has ``base_width * 2**i`` channels; the bottleneck has
    ``base_width * 2**(depth - 1) * bottleneck_mult``. ``skip`` joins each decoder
    level with its encoder level: concatenation (U-Net), addition, or none (SegNet).

    Input: (B, in_channels, H, W) float, any H, W (padded internally to a multiple
    of ``2**depth`` and cropped back). Output: (B, num_classes, H, W) logits
    (no sigmoid/softmax).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        base_width: int = 64,
        depth: int = 4,
        down: str = "maxpool",
        up: str = "nearest",
        skip: str = "concat",
        convs_per_block: int = 2,
        kernel_size: int = 3,
        batch_norm: bool = True,
        activation: str = "relu",
        bottleneck_mult: int = 1,
    ) -> None:
        super().__init__()
        for name in ("in_channels", "num_classes", "base_width", "depth", "convs_per_block", "bottleneck_mult"):
            _positive_int(name, locals()[name])
        check_choice("down", down, DOWN_MODES)
        check_choice("up", up, UP_MODES)
        check_choice("skip", skip, SKIP_MODES)
        if up == "unpool" and down != "maxpool":
            raise ValueError("up='unpool' needs the max-pool indices: use down='maxpool'")
        self.skip, self.stride = skip, 2**depth
        block = dict(num_convs=convs_per_block, kernel_size=kernel_size, batch_norm=batch_norm, activation=activation)
        widths = [base_width * 2**i for i in range(depth)]

        self.encoder, self.downs = nn.ModuleList(), nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoder.append(ConvBlock(c, w, **block))
            self.downs.append(Down(down, w))
            c = w
        self.bottleneck = ConvBlock(c, widths[-1] * bottleneck_mult, **block)
        c = widths[-1] * bottleneck_mult

        self.ups, self.decoder = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):
            c_up = Up.out_channels(up, c, w)
            self.ups.append(Up(up, c, c_up))
            if skip == "add" and c_up != w:
                raise ValueError(f"skip='add' needs equal channels, got {c_up} and {w}: use up='transpose'")
            self.decoder.append(ConvBlock(c_up + w if skip == "concat" else c_up, w, **block))
            c = w
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.stride)
        skips = []
        for enc, down in zip(self.encoder, self.downs):
            x = enc(x)  # (B, w_i, H/2^i, W/2^i)
            size = x.shape[-2:]
            skip = x
            x, idx = down(x)  # (B, w_i, H/2^(i+1), W/2^(i+1))
            skips.append((skip, size, idx))
        x = self.bottleneck(x)
        for up, dec in zip(self.ups, self.decoder):
            skip, size, idx = skips.pop()
            x = up(x, size, idx)  # back to (B, c, H/2^i, W/2^i)
            if self.skip == "concat":
                x = torch.cat([x, center_crop(skip, x.shape[-2:])], dim=1)
            elif self.skip == "add":
                x = x + center_crop(skip, x.shape[-2:])
            x = dec(x)
        return center_crop(self.head(x), (h, w))


def UNet(in_channels: int = 3, num_classes: int = 1, base_width: int = 64, **kwargs) -> EncoderDecoder:
    """The PH2 study's U-Net: 4 levels, BatchNorm, nearest upsampling, skip concatenation."""
    kwargs = {"depth": 4, "down": "maxpool", "up": "nearest", "skip": "concat", **kwargs}
    return EncoderDecoder(in_channels, num_classes, base_width, **kwargs)


def SegNet(in_channels: int = 3, num_classes: int = 1, base_width: int = 64, **kwargs) -> EncoderDecoder:
    """SegNet as in the PH2 study: the U-Net encoder, nearest upsampling, no skips."""
    kwargs = {"depth": 4, "down": "maxpool", "up": "nearest", "skip": "none", **kwargs}
    return EncoderDecoder(in_channels, num_classes, base_width, **kwargs)
