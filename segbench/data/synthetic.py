"""Embedded synthetic dermoscopy-like data with exact masks (no download needed).

Each case is drawn from its own RNG stream ``(seed, index)``, so case ``i`` is
the same whatever ``num_cases`` is, and two processes produce identical arrays.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.draw import line_aa

from ..validation import check_choice, check_int
from .base import SegArrays, SegDataset


def _smooth_field(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, blobs: int) -> np.ndarray:
    """Low-frequency variation in about [-1, 1]: a sum of wide Gaussian bumps."""
    field = np.zeros_like(yy)
    for _ in range(blobs):
        cy, cx = rng.uniform(-1, 1, 2)
        width = rng.uniform(0.3, 0.8)
        field += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return field


def make_case(seed: int, index: int, size: int, num_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: image (3, size, size) uint8, mask (1, size, size) uint8 {0, 1}.

    Skin-toned background with shading and a dark dermoscope vignette, one
    irregular pigmented lesion (radius perturbed by random harmonics, darker
    blotches inside), and 0-4 hair-like dark curves that do not change the mask.
    With ``num_classes=3`` the lesion's centre (half its radius) is a darker, bluish core:
    mask values 0 background, 1 lesion, 2 core; the binary case's images are unchanged.
    """
    rng = np.random.default_rng([seed, index])
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    skin = np.array([0.86, 0.66, 0.56]) + rng.normal(0, 0.04, 3)
    image = skin[:, None, None] * (1 + 0.08 * _smooth_field(rng, yy, xx, 4))[None]

    # Lesion: star-shaped region r < R(theta), R a random low-order Fourier series.
    cy, cx = rng.uniform(-0.25, 0.25, 2)
    base = rng.uniform(0.2, 0.55)
    r = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.ones_like(theta)
    for k in range(2, 7):
        radius += rng.uniform(0, 0.22 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius *= base
    mask = r < radius

    pigment = np.array([0.42, 0.26, 0.18]) * rng.uniform(0.55, 1.1)
    depth = np.clip(1 - r / np.maximum(radius, 1e-6), 0, 1)  # 0 at the border, 1 at the centre
    blotch = 0.5 + 0.5 * _smooth_field(rng, yy, xx, 5)
    lesion = pigment[:, None, None] * (1 - 0.35 * depth * blotch)[None]
    edge = np.clip((radius - r) / (1.5 * 2 / size) + 0.5, 0, 1)  # about 1.5 px soft border
    image = image * (1 - edge[None]) + lesion * edge[None]

    # Hair: thin dark quadratic Bezier curves across the image.
    canvas = np.zeros((size, size))
    for _ in range(rng.integers(0, 5)):
        p0, p1, p2 = rng.uniform(0, size - 1, (3, 2))
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        for a, b in zip(pts[:-1], pts[1:]):
            rr, cc, val = line_aa(int(a[0]), int(a[1]), int(b[0]), int(b[1]))
            ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
            canvas[rr[ok], cc[ok]] = np.maximum(canvas[rr[ok], cc[ok]], val[ok])
    image = image * (1 - 0.75 * canvas[None])

    labels = mask.astype(np.uint8)
    if num_classes == 3:  # a darker, bluish core in the lesion's centre is class 2 (no extra RNG draws)
        core = r < 0.5 * radius
        image = np.where(core[None], image * np.array([0.45, 0.5, 0.8])[:, None, None], image)
        labels[core] = 2

    image *= np.clip(1.25 - 0.45 * np.hypot(yy, xx) ** 2, 0.2, 1)[None]  # vignette
    image += rng.normal(0, 0.02, image.shape)
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return image, labels[None]


class SyntheticDermoscopy(SegDataset):
    """Deterministic dermoscopy-like dataset; same interface as :class:`PH2`.

    Args:
        num_cases: number of cases generated (ids ``SYN000``...).
        image_size: side of the square images (pixels).
        seed: fixes the generated images.
        num_classes: 1 (binary lesion masks) or 3 (background, lesion, core: a multi-class dataset).
    """

    def __init__(self, num_cases: int = 120, image_size: int = 64, seed: int = 0, num_classes: int = 1) -> None:
        super().__init__(image_size)
        self.num_cases = check_int("num_cases", num_cases, low=3)
        self.seed = check_int("seed", seed)
        self.num_classes = check_choice("num_classes", num_classes, (1, 3))
        self.class_names = ["background", "lesion", "core"] if self.num_classes == 3 else None

    def describe(self) -> str:
        return f"synthetic, {self.num_cases} generated cases"

    def load_arrays(self) -> SegArrays:
        cases = [make_case(self.seed, i, self.image_size, self.num_classes) for i in range(self.num_cases)]
        images = torch.from_numpy(np.stack([c[0] for c in cases]))
        masks = torch.from_numpy(np.stack([c[1] for c in cases]))
        return SegArrays(images, masks, [f"SYN{i:03d}" for i in range(self.num_cases)])
