"""The VAE's shape, as a self-describing dataclass stored with every weights file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Likelihood = Literal["bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a convolutional VAE.

    Each entry of ``widths`` is one encoder stage that halves the image side, so
    ``image_size`` must be divisible by ``2 ** len(widths)``.
    """

    image_size: int = 28
    channels: int = 1
    latent_dim: int = 32
    widths: tuple[int, ...] = (32, 64)
    hidden_dim: int = 512
    # Channels of a 3x3 conv refinement at full resolution before the decoder's output
    # layer; 0: none (the last transposed conv writes the image directly).
    head_width: int = 0
    likelihood: Likelihood = "bernoulli"
    # Fixed observation std of the Gaussian likelihood (ignored for Bernoulli).
    gaussian_std: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        self.validate()

    def validate(self) -> None:
        self._check_integers()
        if self.image_size < 4:
            raise ValueError(f"image_size must be at least 4, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {self.latent_dim}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty list of positive ints: {self.widths}")
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{len(self.widths)} "
                f"(one halving per entry of widths {self.widths})"
            )
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.hidden_dim < 1 or self.gaussian_std <= 0:
            raise ValueError("hidden_dim and gaussian_std must be positive")
        if self.head_width < 0:
            raise ValueError(f"head_width must be 0 or positive, got {self.head_width}")

    def _check_integers(self) -> None:
        # A config read from a file may carry 28.0 or "28"; nn layers would fail later
        # with an obscure TypeError, so name the field here.
        for name in ("image_size", "channels", "latent_dim", "hidden_dim", "head_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")

    @property
    def feature_size(self) -> int:
        """Side of the smallest feature map, after every encoder stage."""
        return self.image_size // (2 ** len(self.widths))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data)
