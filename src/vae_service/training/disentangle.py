"""How disentangled a VAE's latents are, on data whose generating factors are known.

The mutual information gap (MIG; Chen et al. 2018, "Isolating Sources of Disentanglement in
Variational Autoencoders", Section 4.1): for each factor v_k, the information about it in
the most informative latent dimension minus that in the runner-up, over its entropy,

    MIG = 1/K Σ_k [I(z_{j(k)}; v_k) − max_{j ≠ j(k)} I(z_j; v_k)] / H(v_k),

with j(k) = argmax_j I(z_j; v_k). It is near 1 when each factor lives in one dimension of
its own and near 0 when a factor is spread over several dimensions or is in none.

Chen et al. estimate I(z_j; v_k) from samples of q(z|x). Here, as in Locatello et al. 2019
("Challenging Common Assumptions in the Unsupervised Learning of Disentangled
Representations", their disentanglement_lib), each posterior mean is discretised into
``bins`` equal-width bins over its observed range and the discrete mutual information is
computed from counts, in nats. This plug-in estimate is biased upwards by about
(bins − 1)(|v_k| − 1) / 2N nats (Miller 1955), so random codes score slightly above 0.

Latent traversals (Higgins et al. 2017, "β-VAE", Figure 1) show what a dimension does:
decode one image's posterior mean with that dimension swept across the prior's bulk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vae_service.model.vae import VAE
from vae_service.training import shapes
from vae_service.training.metrics import ACTIVE_UNIT_THRESHOLD
from vae_service.training.report import GRID_PADDING, make_grid

DEFAULT_BINS = 20  # disentanglement_lib's default for MIG
LABEL_PAD = 6  # pixels around a traversal row's label
DISCRETISATION = "posterior means in {bins} equal-width bins over each dimension's range"


@dataclass(frozen=True)
class MIG:
    """Figures of ``mutual_information_gap``; information in nats."""

    mi: Tensor  # D x K: I(z_j; v_k)
    entropies: Tensor  # K: H(v_k)
    gaps: Tensor  # K: (largest − second largest I(z_j; v_k)) / H(v_k)
    mig: float  # the mean of ``gaps``
    factor_names: tuple[str, ...]
    bins: int

    def top_factor(self, dim: int) -> tuple[str, float]:
        """The factor latent ``dim`` tells most about, and I(z_dim; v) / H(v): the share of
        its entropy, so factors with more values are not favoured."""
        share = self.mi[dim] / self.entropies
        k = int(share.argmax())
        return self.factor_names[k], float(share[k])


def discretise(codes: Tensor, bins: int) -> Tensor:
    """N x D codes -> bin indices in [0, bins): equal-width bins spanning each column's
    observed minimum to maximum (the maximum falls in the last bin)."""
    low, high = codes.min(dim=0).values, codes.max(dim=0).values
    width = (high - low) / bins
    # A constant column has zero width; any positive width puts all of it in bin 0.
    width = torch.where(width > 0, width, torch.ones_like(width))
    return ((codes - low) / width).floor().long().clamp_(0, bins - 1)


def _dense(labels: Tensor) -> tuple[Tensor, int]:
    """Labels renumbered 0..m-1, and m."""
    values, inverse = torch.unique(labels, return_inverse=True)
    return inverse, len(values)


def entropy(labels: Tensor) -> float:
    """H of a discrete variable from its N observations, in nats."""
    p = torch.bincount(_dense(labels)[0]).double() / len(labels)
    return float(-(p * p.log()).sum())


def mutual_information(a: Tensor, b: Tensor) -> float:
    """I(a; b) of two discrete variables from N paired observations, in nats:
    Σ p(a, b) log(p(a, b) / (p(a) p(b))) over the observed pairs."""
    (ia, na), (ib, nb) = _dense(a), _dense(b)
    joint = torch.bincount(ia * nb + ib, minlength=na * nb).view(na, nb).double() / len(a)
    outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
    seen = joint > 0
    return float((joint[seen] * (joint[seen].log() - outer[seen].log())).sum())


def _check(codes: Tensor, factors: Tensor, bins: int, names: Sequence[str]) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer of at least 2, got {bins!r}")
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes (N x D) and factors (N x K) must pair up, got {tuple(codes.shape)} "
            f"and {tuple(factors.shape)}"
        )
    if codes.shape[1] < 2 or len(codes) < 2:
        raise ValueError("MIG needs at least 2 latent dimensions and 2 observations")
    if len(names) != factors.shape[1]:
        raise ValueError(f"{len(names)} factor names for {factors.shape[1]} factors")
    if not torch.isfinite(codes).all():
        raise ValueError("codes must be finite")


def mutual_information_gap(
    codes: Tensor, factors: Tensor, bins: int = DEFAULT_BINS, names: Sequence[str] = ()
) -> MIG:
    """MIG of posterior means ``codes`` (N x D) for discrete ``factors`` (N x K); ``names``
    the factors' (default v0, v1, ...). A factor with one value has no entropy to share."""
    names = tuple(names) or tuple(f"v{k}" for k in range(factors.shape[-1]))
    _check(codes, factors, bins, names)
    binned = discretise(codes.double(), bins)
    entropies = torch.tensor([entropy(v) for v in factors.T], dtype=torch.float64)
    for name, h in zip(names, entropies, strict=True):
        if h <= 0:
            raise ValueError(f"factor {name!r} takes one value in these {len(codes)} images")
    mi = torch.tensor(
        [[mutual_information(z, v) for v in factors.T] for z in binned.T], dtype=torch.float64
    )
    top = mi.topk(2, dim=0).values
    gaps = (top[0] - top[1]) / entropies
    return MIG(mi, entropies, gaps, float(gaps.mean()), names, bins)


@torch.inference_mode()
def posterior_means(
    model: VAE, images: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> Tensor:
    """E_q[z|x] of every image, N x D on the CPU."""
    model.eval()
    return torch.cat([model.encode(x.to(device))[0].cpu() for x in images.split(batch_size)])


@torch.inference_mode()
def traversal_grid(
    model: VAE, image: Tensor, dims: Sequence[int], span: float = 2.5, steps: int = 9
) -> Tensor:
    """len(dims) x steps x C x H x W: the decoded posterior mean of ``image`` (C x H x W)
    with dimension j set to each of ``steps`` values from −span to span. The values are
    absolute, in units of the N(0, I) prior, so each row covers the prior's bulk."""
    latent_dim = model.cfg.latent_dim
    if not dims or any(not 0 <= j < latent_dim for j in dims):
        raise ValueError(f"dims must be a non-empty list of ints in [0, {latent_dim}): {dims}")
    if steps < 2 or span <= 0:
        raise ValueError(f"need steps >= 2 and span > 0, got {steps} and {span}")
    model.eval()
    device = next(model.parameters()).device
    mean = model.encode(image.reshape(1, *image.shape[-3:]).to(device))[0]
    values = torch.linspace(-span, span, steps, device=device)
    rows = []
    for j in dims:
        z = mean.repeat(steps, 1)
        z[:, j] = values
        rows.append(model.decode(z).cpu())
    return torch.stack(rows)


def save_traversals(path: str | Path, grid: Tensor, labels: Sequence[str]) -> Path:
    """Save a ``traversal_grid`` as one PNG, one row per dimension, each labelled on its left."""
    rows, steps = grid.shape[:2]
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} rows")
    tiles = make_grid(grid.flatten(0, 1).float().clamp(0, 1), nrow=steps)
    # Grey tiles become RGB: the labels and any colour rows share one picture.
    pixels = (tiles.expand(3, -1, -1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    picture = Image.fromarray(np.ascontiguousarray(pixels.numpy()))
    font = ImageFont.load_default()
    boxes = [ImageDraw.Draw(picture).textbbox((0, 0), text, font=font) for text in labels]
    margin = math.ceil(max(box[2] for box in boxes)) + 2 * LABEL_PAD
    canvas = Image.new("RGB", (margin + picture.width, picture.height), "white")
    canvas.paste(picture, (margin, 0))
    draw, side = ImageDraw.Draw(canvas), grid.shape[-2]
    for i, (text, box) in enumerate(zip(labels, boxes, strict=True)):
        top = GRID_PADDING + i * (side + GRID_PADDING) + (side - box[3] - box[1]) / 2
        draw.text((LABEL_PAD, top), text, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def factor_names(data_name: str, k: int) -> tuple[str, ...]:
    """``shapes`` names its factors; any other data set's are v0, v1, ..."""
    if data_name == "shapes" and k == len(shapes.FACTOR_NAMES):
        return shapes.FACTOR_NAMES
    return tuple(f"v{i}" for i in range(k))


def active_dims(codes: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> list[int]:
    """Dimensions whose posterior mean varies over the data, Cov_x(E_q[z_u]) > threshold
    (Burda et al. 2016, Section 5.2), as ``metrics.active_units`` counts them."""
    variance = codes.double().var(dim=0, unbiased=False)
    return [int(j) for j in torch.nonzero(variance > threshold).flatten()]


def summarise(result: MIG, active: list[int]) -> dict[str, Any]:
    """``result`` as plain JSON-ready values."""
    best = result.mi.argmax(dim=0)
    columns = zip(result.factor_names, result.entropies, result.gaps, best, strict=True)
    factors = {
        name: {"entropy": float(h), "gap": float(g), "best_dim": int(j)}
        for name, h, g, j in columns
    }
    latents = []
    for j in range(result.mi.shape[0]):
        name, share = result.top_factor(j)
        latents.append({"dim": j, "active": j in active, "factor": name, "share": share})
    return {
        "mig": result.mig, "bins": result.bins,
        "discretisation": DISCRETISATION.format(bins=result.bins),
        "factors": factors, "active_dims": active, "latents": latents,
        "mi": result.mi.tolist(),
    }  # fmt: skip


def evaluate_disentanglement(
    model: VAE, images: Tensor, factors: Tensor, names: Sequence[str], bins: int = DEFAULT_BINS,
    batch_size: int = 500, device: str | torch.device = "cpu", traversals: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """MIG and each dimension's top factor on ``images``; with ``traversals`` (a folder),
    also traversals.png of the first image along every active dimension (all if none is)."""
    codes = posterior_means(model, images, batch_size, device)
    active = active_dims(codes)
    summary = summarise(mutual_information_gap(codes, factors, bins, names), active)
    if traversals is not None:
        dims = active or list(range(codes.shape[1]))
        labels = [
            f"z{j}: {summary['latents'][j]['factor'] if j in active else 'inactive'}" for j in dims
        ]
        grid = traversal_grid(model, images[0], dims)
        summary["traversals"] = str(save_traversals(traversals / "traversals.png", grid, labels))
    return summary


def format_disentanglement(d: dict[str, Any]) -> str:
    """The ``summarise`` dict as vae-eval's text lines."""
    gaps = ", ".join(f"{name} {f['gap']:.2f}" for name, f in d["factors"].items())
    active = " ".join(f"z{j}" for j in d["active_dims"]) or "none"
    lines = [
        f"MIG           {d['mig']:.3f} (mutual information gap, Chen et al. 2018)",
        f"  per factor  {gaps}",
        f"  estimated   from {d['discretisation']}",
        f"latents       active (Cov_x(E_q[z_u]) > 0.01): {active}; top factor, I(z; v) / H(v):",
        *(
            f"  z{row['dim']:<10d} {row['factor']} {row['share']:.2f}"
            for row in d["latents"]
            if row["active"]
        ),
    ]
    if "traversals" in d:
        lines.append(f"traversals    {d['traversals']}")
    return "\n".join(lines)
