"""Input normalisation with per-channel statistics of the training split: the one place that encodes
``(x / 255 - mean) / std``, for training, evaluation, prediction and the exported models."""
from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """float (B, C, H, W) in [0, 1] -> (x - mean) / std per channel; ``mean`` and ``std`` are buffers, so
    the module moves with ``.to(device)`` and is part of a traced or exported graph."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Normalizer:
    """The train split's per-channel statistics (``mean``, ``std``: lists, as checkpoints store them) and
    their :class:`Normalize` module, made once per device."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self._modules: dict[torch.device, Normalize] = {}

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Normalizer":
        x = images.float().div_(255).transpose(0, 1).flatten(1)  # (3, N*H*W)
        return cls(x.mean(1).tolist(), x.std(1).clamp(min=1e-6).tolist())

    def module(self, device: torch.device | str = "cpu") -> Normalize:
        """The :class:`Normalize` module on ``device`` (the same object on each call)."""
        device = torch.device(device)
        if device not in self._modules:
            self._modules[device] = Normalize(self.mean, self.std).to(device)
        return self._modules[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) in 0..255 -> normalised float."""
        return self.scaled(images.float() / 255)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] (an augmented batch) -> normalised float."""
        return self.module(x.device)(x)
