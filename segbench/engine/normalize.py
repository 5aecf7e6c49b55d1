"""Input normalisation with per-channel statistics of the training split, applied on the device."""
from __future__ import annotations

import torch


class Normalizer:
    """uint8 (B, 3, H, W) -> float (x / 255 - mean) / std with per-channel train-split statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self._tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # made once per device

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Normalizer":
        x = images.float().div_(255).transpose(0, 1).flatten(1)  # (3, N*H*W)
        return cls(x.mean(1).tolist(), x.std(1).clamp(min=1e-6).tolist())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) in 0..255 -> normalised float."""
        return self.scaled(images.float() / 255)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] (an augmented batch) -> normalised float."""
        if x.device not in self._tensors:
            self._tensors[x.device] = tuple(
                torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        mean, std = self._tensors[x.device]
        return (x - mean) / std
