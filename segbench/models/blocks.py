"""Shared building blocks: every architecture in segbench is assembled from these."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_choice

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
DOWN_MODES = ("maxpool", "strided")
UP_MODES = ("nearest", "bilinear", "transpose", "unpool")
SKIP_MODES = ("concat", "add", "none")


class ConvBlock(nn.Sequential):
    """``num_convs`` x (conv k x k -> [BatchNorm] -> activation); (B, C_in, H, W) -> (B, C_out, H, W).

    With ``padding='valid'`` each conv shrinks H and W by k - 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_convs: int = 2,
        kernel_size: int = 3,
        batch_norm: bool = True,
        activation: str = "relu",
        padding: str = "same",
    ) -> None:
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("padding", padding, ("same", "valid"))
        layers: list[nn.Module] = []
        for i in range(num_convs):
            c_in = in_channels if i == 0 else out_channels
            pad = kernel_size // 2 if padding == "same" else 0
            layers.append(nn.Conv2d(c_in, out_channels, kernel_size, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)


class Down(nn.Module):
    """Halves H and W: 2x2 max-pool (keeping indices for unpooling) or a strided 2x2 conv.

    forward returns (x, indices); indices is None unless mode is maxpool.
    """

    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        check_choice("down", mode, DOWN_MODES)
        self.mode = mode
        if mode == "maxpool":
            self.op = nn.MaxPool2d(2, 2, return_indices=True)
        else:
            self.op = nn.Conv2d(channels, channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "maxpool":
            return self.op(x)
        return self.op(x), None


class Up(nn.Module):
    """Doubles H and W (exactly to the encoder's size): interpolation, transposed conv, or max-unpool.

    (B, in_channels, h, w) -> (B, out_channels, H, W). Interpolation keeps the
    channel count (out_channels == in_channels); unpool needs the encoder's
    channel count, so a 1x1 conv adapts it first when they differ.
    """

    def __init__(self, mode: str, in_channels: int, out_channels: int) -> None:
        super().__init__()
        check_choice("up", mode, UP_MODES)
        self.mode = mode
        self.proj: nn.Module = nn.Identity()
        if mode == "transpose":
            self.op = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif mode == "unpool":
            if in_channels != out_channels:
                self.proj = nn.Conv2d(in_channels, out_channels, 1)
            self.op = nn.MaxUnpool2d(2, 2)  # what max_unpool computes (kept: it names the op in the module tree)

    @staticmethod
    def out_channels(mode: str, in_channels: int, encoder_channels: int) -> int:
        return in_channels if mode in ("nearest", "bilinear") else encoder_channels

    def forward(self, x: torch.Tensor, size: tuple[int, int], indices: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "unpool":
            return max_unpool(self.proj(x), indices, size)
        if self.mode == "transpose":
            x = self.op(x)
            return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="nearest")
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return F.interpolate(x, size=size, mode=self.mode, **kwargs)


def max_unpool(x: torch.Tensor, indices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.max_unpool2d`` as a scatter: each value back at its max-pool ``indices`` in a zero (B, C, *size) map.

    The same values and gradients as ``nn.MaxUnpool2d``, written so that tracing (TorchScript, ONNX)
    keeps ``size`` symbolic instead of failing on max_unpool2d's output-size check."""
    b, c = x.shape[:2]
    out = x.new_zeros(b, c, size[0] * size[1])
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(b, c, size[0], size[1])


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (B, C, H, W) to (B, C, *size) around the centre (U-Net 'valid' skips)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-pad H and W by any amount (repeated reflection when a pad exceeds the side)."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        t, b = min(top, h - 1), min(bottom, h - 1)
        lf, r = min(left, w - 1), min(right, w - 1)
        if max(h, w) == 1 or not (t or b or lf or r):  # a 1-pixel side cannot reflect
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, (lf, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lf, right - r
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad H and W up to a multiple of ``multiple``; returns x and the original (H, W).

    Pads unconditionally (by 0 when the size is a multiple already), so that an exported graph
    (ONNX, TorchScript) pads any input size rather than the one it was traced with."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate"), (h, w)
