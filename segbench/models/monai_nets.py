"""Reference networks from MONAI (the optional extra ``monai``) as segbench models.

Each takes segbench's ``in_channels``, ``num_classes`` and ``base_width`` (the first level's channels,
doubled per level as in segbench's own models), accepts any input size (padded to the network's
stride, the output cropped back, as :class:`~segbench.models.EncoderDecoder` does) and returns logits
(B, num_classes, H, W). MONAI is imported when a model is built, so segbench runs without it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require
from ..validation import check_choice, check_int, check_number
from .blocks import center_crop, pad_to_multiple

FLEXIBLE_BACKBONES = (
    *(f"efficientnet-b{i}" for i in range(9)), "efficientnet-l2",
    "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
)

UNUSED_HEADS = ("_conv_head", "_bn1", "_fc", "fc")  # EfficientNet's and ResNet's classification heads


def _nets(model: str) -> Any:
    return require("monai.networks.nets", "monai", "monai", f"model={model}")


class MonaiNet(nn.Module):
    """A MONAI 2D network behind segbench's interface: (B, C_in, H, W), any H and W, is padded
    (replicate, centred) to a multiple of ``stride`` and to at least 2 x ``stride`` (so that the deepest
    level has 2 x 2 cells: its batch or instance norm needs more than one value), and the logits are
    cropped back to (B, K, H, W). ``first``: the network returns a list (deep supervision) whose first
    element is the full-resolution output."""

    def __init__(self, network: nn.Module, stride: int, first: bool = False) -> None:
        super().__init__()
        self.network, self.stride, self.first = network, stride, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.stride)  # (B, C, H', W'), multiples of the stride
        ph, pw = max(0, 2 * self.stride - x.shape[-2]), max(0, 2 * self.stride - x.shape[-1])
        if ph or pw:  # (B, C, >= 2 stride, >= 2 stride)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        out = self.network(x)
        if self.first:
            out = out[0]
        return center_crop(out, (h, w))  # (B, K, H, W)


def _check(in_channels: int, num_classes: int, base_width: int) -> None:
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("base_width", base_width)):
        check_int(name, value, low=1)


class FlexibleUNet(MonaiNet):
    """MONAI's FlexibleUNet: a U-Net decoder on a ``backbone`` encoder (EfficientNet b0-b8/l2, ResNet
    10-200). ``pretrained=True`` loads the backbone's ImageNet weights, which MONAI downloads on first
    use (a machine with internet); off by default. Decoder widths base_width x (16, 8, 4, 2, 1)
    (MONAI's default (256, 128, 64, 32, 16) at base_width 16). Stride 32.

    ``bn_momentum`` is set on every batch norm (None keeps MONAI's): its EfficientNet keeps TensorFlow's
    running-statistics momentum 0.01, made for long ImageNet training; in segbench's short runs those
    statistics lag so far behind that evaluation (eval mode) fails while training fits (the quickstart:
    val IoU 0.0 after 60 epochs with 0.01, 0.91 after 15 with PyTorch's default 0.1)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 16,
                 backbone: str = "efficientnet-b0", pretrained: bool = False, bn_momentum: float | None = 0.1) -> None:
        _check(in_channels, num_classes, base_width)
        check_choice("backbone", backbone, FLEXIBLE_BACKBONES)
        if not isinstance(pretrained, bool):
            raise ValueError(f"pretrained={pretrained!r} is invalid; expected true or false")
        if bn_momentum is not None:
            check_number("bn_momentum", bn_momentum, low=0, high=1, low_open=True)
        decoder = tuple(base_width * m for m in (16, 8, 4, 2, 1))
        net = _nets("monai_flexible_unet").FlexibleUNet(
            in_channels=in_channels, out_channels=num_classes, backbone=backbone, pretrained=pretrained,
            decoder_channels=decoder, spatial_dims=2)
        # the backbone's classifier, which the U-Net never calls: no weights to train or store
        for head in UNUSED_HEADS:
            if isinstance(getattr(net.encoder, head, None), nn.Module):
                setattr(net.encoder, head, nn.Identity())
        for module in net.modules():
            if bn_momentum is not None and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
        super().__init__(net, 32)


class AttentionUNet(MonaiNet):
    """MONAI's AttentionUnet (Oktay et al. 2018): attention gates on the skips; channels base_width x
    (1, 2, 4, 8, 16), four stride-2 levels (stride 16)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 16) -> None:
        _check(in_channels, num_classes, base_width)
        net = _nets("monai_attention_unet").AttentionUnet(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
            channels=tuple(base_width * m for m in (1, 2, 4, 8, 16)), strides=(2, 2, 2, 2))
        super().__init__(net, 16)


class UNetPlusPlus(MonaiNet):
    """MONAI's BasicUNetPlusPlus (Zhou et al. 2018): nested dense skips; features base_width x
    (1, 1, 2, 4, 8, 1) (MONAI's default at 32), four levels (stride 16)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 32) -> None:
        _check(in_channels, num_classes, base_width)
        net = _nets("monai_unetplusplus").BasicUNetPlusPlus(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
            features=tuple(base_width * m for m in (1, 1, 2, 4, 8, 1)))
        for head in ("final_conv_0_1", "final_conv_0_2", "final_conv_0_3"):  # deep supervision's heads: unused
            setattr(net, head, nn.Identity())
        super().__init__(net, 16, first=True)


class SwinUNETR(MonaiNet):
    """MONAI's SwinUNETR in 2D (Hatamizadeh et al. 2022): a Swin transformer encoder (patch 2, four
    stages, window 7) with a convolutional decoder. Its ``feature_size`` is base_width rounded up to a
    multiple of 12 (its attention heads 3, 6, 12, 24 divide it). Stride 32."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_width: int = 24) -> None:
        _check(in_channels, num_classes, base_width)
        net = _nets("monai_swin_unetr").SwinUNETR(
            in_channels=in_channels, out_channels=num_classes, feature_size=12 * math.ceil(base_width / 12),
            spatial_dims=2)
        super().__init__(net, 32)
