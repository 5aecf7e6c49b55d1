"""One configurable encoder-decoder; U-Net and SegNet variants (unet.py, segnet.py, classic.py) are settings of it."""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_choice, check_int
from .blocks import DOWN_MODES, SKIP_MODES, UP_MODES, ConvBlock, Down, Up, center_crop, mirror_pad, pad_to_multiple


class EncoderDecoder(nn.Module):
    """Encoder of ``depth`` conv blocks with downsampling, a bottleneck, a mirrored decoder.

    Level i has ``base_width * 2**i`` channels; the bottleneck has
    ``base_width * 2**(depth - 1) * bottleneck_mult``. ``skip`` joins each decoder
    level with its encoder level: concatenation (U-Net), addition, or none (SegNet).

    ``padding='same'`` keeps sizes through each conv; the input is padded to a
    multiple of ``2**depth`` and the output cropped back. ``padding='valid'``
    is the original U-Net: unpadded convs, centre-cropped skips, and the input
    mirror-padded (overlap-tile) so that the output covers it.

    Input: (B, in_channels, H, W) float, any H, W. Output: (B, num_classes, H, W)
    logits (no sigmoid/softmax).
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
        padding: str = "same",
    ) -> None:
        super().__init__()
        for name in ("in_channels", "num_classes", "base_width", "depth", "convs_per_block", "bottleneck_mult"):
            check_int(name, locals()[name], low=1)
        check_choice("down", down, DOWN_MODES)
        check_choice("up", up, UP_MODES)
        check_choice("skip", skip, SKIP_MODES)
        check_choice("padding", padding, ("same", "valid"))
        if up == "unpool" and down != "maxpool":
            raise ValueError("up='unpool' needs the max-pool indices: use down='maxpool'")
        if up == "unpool" and padding == "valid":
            raise ValueError("up='unpool' needs padding='same' (valid convs change the pooled sizes)")
        self.skip, self.stride, self.padding, self.depth = skip, 2**depth, padding, depth
        self.shrink = convs_per_block * (kernel_size - 1)  # pixels lost per block in valid mode
        block = dict(num_convs=convs_per_block, kernel_size=kernel_size, batch_norm=batch_norm,
                     activation=activation, padding=padding)
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

    def valid_sizes(self, n: int) -> tuple[int, int]:
        """Valid mode: the smallest (input, output) side whose output is >= n (572 -> 388 for depth 4)."""
        def output(bottom: int) -> int:
            for _ in range(self.depth):
                bottom = 2 * bottom - self.shrink
            return bottom

        bottom = 1
        while output(bottom) < n:
            bottom += 1
        side = bottom + self.shrink
        for _ in range(self.depth):
            side = 2 * side + self.shrink
        return side, output(bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.padding == "same":
            x, _ = pad_to_multiple(x, self.stride)
            return center_crop(self._forward(x), (h, w))
        (in_h, out_h), (in_w, out_w) = self.valid_sizes(h), self.valid_sizes(w)
        top, left = (in_h - h) // 2, (in_w - w) // 2
        x = mirror_pad(x, top, in_h - h - top, left, in_w - w - left)  # (B, C, in_h, in_w)
        out = self._forward(x)  # (B, K, out_h, out_w), centred on the padded input
        dy, dx = top - (in_h - out_h) // 2, left - (in_w - out_w) // 2
        return out[..., dy : dy + h, dx : dx + w]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
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
            if self.padding == "valid":
                size = (2 * x.shape[-2], 2 * x.shape[-1])  # the skip is cropped to this
            x = up(x, size, idx)  # back to (B, c, H/2^i, W/2^i)
            if self.skip == "concat":
                x = torch.cat([x, center_crop(skip, x.shape[-2:])], dim=1)
            elif self.skip == "add":
                x = x + center_crop(skip, x.shape[-2:])
            x = dec(x)
        return self.head(x)
