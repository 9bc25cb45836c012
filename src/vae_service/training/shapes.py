"""``shapes``: a procedural 64x64 RGB data set whose generating factors are known.

In the spirit of dSprites and 3D Shapes (Higgins et al. 2017, "β-VAE"): every image is one
coloured shape on a grey background, drawn from seven independent discrete factors. The
factors are kept with the images, so disentanglement can be measured (MIG, Chen et al. 2018).

Images are rendered from a seed with no download: the same seed gives the same images on
every machine. The edge of each shape is anti-aliased from its signed distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SIZE = 64
SHAPES = ("square", "ellipse", "triangle")
# Factor name -> number of values; each image draws every factor independently and uniformly.
FACTORS: dict[str, int] = {
    "shape": len(SHAPES),
    "hue": 10,
    "scale": 6,
    "rotation": 10,
    "x": 8,
    "y": 8,
    "background": 4,
}
FACTOR_NAMES = tuple(FACTORS)
TRAIN_SEED, TEST_SEED = 0, 1  # a fixed split: the test images never change
TRAIN_SIZE, TEST_SIZE = 40_000, 5_000
_MIN_RADIUS, _MAX_RADIUS = 12.0, 20.0
# Rotation covers [0°, 90°): a square repeats every 90°, so larger angles would alias.
_MAX_ROTATION = math.pi / 2


@dataclass(frozen=True)
class FactorValues:
    """Per-image physical values (pixels, radians, [0, 1]) for N images."""

    shape: Tensor
    hue: Tensor
    radius: Tensor
    angle: Tensor
    cx: Tensor
    cy: Tensor
    background: Tensor


def sample_factors(n: int, seed: int) -> Tensor:
    """N x 7 integer factor indices, deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    columns = [torch.randint(k, (n,), generator=gen) for k in FACTORS.values()]
    return torch.stack(columns, dim=1)


def _grid(index: Tensor, levels: int, low: float, high: float) -> Tensor:
    return low + (high - low) * index.float() / max(1, levels - 1)


def factor_values(factors: Tensor) -> FactorValues:
    """Map factor indices to what is drawn."""
    f = {name: factors[:, i] for i, name in enumerate(FACTOR_NAMES)}
    margin = _MAX_RADIUS + 2
    return FactorValues(
        shape=f["shape"],
        hue=f["hue"].float() / FACTORS["hue"],
        radius=_grid(f["scale"], FACTORS["scale"], _MIN_RADIUS, _MAX_RADIUS),
        angle=f["rotation"].float() * _MAX_ROTATION / FACTORS["rotation"],
        cx=_grid(f["x"], FACTORS["x"], margin, SIZE - margin),
        cy=_grid(f["y"], FACTORS["y"], margin, SIZE - margin),
        background=_grid(f["background"], FACTORS["background"], 0.15, 0.75),
    )


def hue_to_rgb(hue: Tensor) -> Tensor:
    """Fully saturated, full-value colours (HSV with s = v = 1): N -> N x 3."""
    h6 = hue[:, None] * 6
    r = (h6 - 3).abs() - 1
    g = 2 - (h6 - 2).abs()
    b = 2 - (h6 - 4).abs()
    return torch.cat([r, g, b], dim=1).clamp(0, 1)


def _signed_distance(shape: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Distance to each shape's edge in units of its radius; negative inside."""
    square = torch.maximum(u.abs(), v.abs()) - 0.8
    # An approximate ellipse distance (2:1 axes), exact on the axes, good enough at an edge.
    ellipse = (torch.sqrt(u.square() + (2 * v).square()) - 1) * 0.5
    # Equilateral triangle with circumradius 1: three half-planes at the inradius 1/2.
    sides = [
        u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)
    ]
    triangle = torch.maximum(torch.maximum(sides[0], sides[1]), sides[2]) - 0.5
    s = shape[:, None, None]
    return torch.where(s == 0, square, torch.where(s == 1, ellipse, triangle))


def render(factors: Tensor) -> Tensor:
    """N x 3 x 64 x 64 images in [0, 1] for N x 7 factor indices."""
    vals = factor_values(factors)
    centres = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dx = centres[None, None, :] - vals.cx[:, None, None]
    dy = centres[None, :, None] - vals.cy[:, None, None]
    cos, sin = vals.angle.cos()[:, None, None], vals.angle.sin()[:, None, None]
    r = vals.radius[:, None, None]
    u, v = (dx * cos + dy * sin) / r, (dy * cos - dx * sin) / r
    # Coverage of each pixel from the signed distance in pixels: a one-pixel ramp.
    alpha = (0.5 - _signed_distance(vals.shape, u, v) * r).clamp(0, 1)[:, None]
    colour = hue_to_rgb(vals.hue)[:, :, None, None]
    background = vals.background[:, None, None, None]
    return background * (1 - alpha) + colour * alpha


def generate(n: int, seed: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """``n`` images and their factor indices, rendered in chunks to bound memory."""
    factors = sample_factors(n, seed)
    images = torch.empty((n, 3, SIZE, SIZE))
    for start in range(0, n, chunk):
        images[start : start + chunk] = render(factors[start : start + chunk])
    return images, factors
