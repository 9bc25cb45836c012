"""Datasets: Fashion-MNIST and MNIST from IDX files, or any folder of images.

Everything becomes a float tensor N x C x H x W in [0, 1] held in memory: these
data sets are small, and it keeps loading deterministic and free of worker processes.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vae_service.training import shapes

IDX_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(Exception):
    """A data source that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] (N x C x H x W), labels where the source has them, and the
    generating factors' indices (N x K) where they are known (``shapes``)."""

    images: Tensor
    labels: Tensor | None = None
    factors: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        factors = None if self.factors is None else self.factors[:n]
        return Split(self.images[:n], labels, factors)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "shape": list(self.image_shape),
            "train_size": len(self.train),
            "test_size": len(self.test),
        }


def _open_idx(directory: Path, stem: str) -> bytes:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rb") as fh:
                return fh.read()
    raise DataError(f"{directory}: no {stem} or {stem}.gz (is the IDX data set installed?)")


def read_idx(payload: bytes, source: str) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format): magic, dims, then big-endian data."""
    if len(payload) < 4 or payload[0:2] != b"\x00\x00" or payload[2] != 0x08:
        raise DataError(f"{source}: not an unsigned-byte IDX file")
    ndim = payload[3]
    dims = [int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(payload) - offset != expected:
        raise DataError(
            f"{source}: IDX header promises {expected} bytes, file has {len(payload) - offset}"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=offset).reshape(dims)


def load_idx_split(directory: Path, split: str) -> Split:
    raw = read_idx(_open_idx(directory, IDX_FILES[split]), str(directory / IDX_FILES[split]))
    images = torch.from_numpy(raw.copy()).float().div_(255).unsqueeze(1)
    labels = torch.from_numpy(
        read_idx(_open_idx(directory, LABEL_FILES[split]), str(directory)).astype(np.int64)
    )
    return Split(images, labels)


def resize_images(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0, 1)


def load_image_folder(
    directory: Path, size: int, channels: int, test_fraction: float = 0.1
) -> Dataset:
    """Every image under ``directory`` (recursively), converted and resized; the last
    ``test_fraction`` in sorted order is the test split, so the split is reproducible."""
    images = read_image_folder(directory, size, channels)
    n = len(images)
    n_test = max(1, int(n * test_fraction)) if n > 1 else 0
    train, test = images[: n - n_test], images[n - n_test :]
    return Dataset(f"folder:{directory.name}", Split(train), Split(test if n_test else train))


def read_image_folder(directory: Path, size: int, channels: int) -> Tensor:
    """Every image under ``directory`` (recursively) in sorted order, converted and resized."""
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = [_read_image(p, size, channels) for p in files]
    return torch.from_numpy(np.stack(arrays)).float().div_(255)


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if channels == 1 else "RGB")
            img = img.resize((size, size), Image.Resampling.LANCZOS)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_dataset(
    source: str,
    data_dir: str | Path | None = None,
    image_size: int = 28,
    channels: int = 1,
    with_train: bool = True,
) -> Dataset:
    """``source`` is ``fashion-mnist``, ``mnist`` (IDX files under ``data_dir`` or the
    Debian package's directory), ``shapes`` (rendered, 64x64 RGB) or a folder of images."""
    if source == "shapes":  # rendering is the cost here: skip a train split nobody reads
        return load_shapes(image_size, channels, shapes.TRAIN_SIZE if with_train else 0)
    if source in IDX_DIRS:
        directory = Path(data_dir) if data_dir else IDX_DIRS[source]
        if not directory.is_dir():
            raise DataError(f"{directory}: data directory for {source} does not exist")
        train, test = load_idx_split(directory, "train"), load_idx_split(directory, "test")
        if channels != 1:
            train = Split(train.images.repeat(1, channels, 1, 1), train.labels)
            test = Split(test.images.repeat(1, channels, 1, 1), test.labels)
        train = Split(resize_images(train.images, image_size), train.labels)
        test = Split(resize_images(test.images, image_size), test.labels)
        return Dataset(source, train, test)
    folder = Path(data_dir or source) if source == "folder" else Path(source)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: not a known data set ({', '.join(IDX_DIRS)}) or a folder of images"
        )
    return load_image_folder(folder, image_size, channels)


def load_shapes(
    image_size: int = shapes.SIZE, channels: int = 3, train_size: int = shapes.TRAIN_SIZE
) -> Dataset:
    """The procedural ``shapes`` set: fixed train and test seeds, factors kept."""
    if (image_size, channels) != (shapes.SIZE, 3):
        raise DataError(
            f"shapes are {shapes.SIZE}x{shapes.SIZE} RGB: use --image-size "
            f"{shapes.SIZE} --channels 3"
        )
    train = shapes.generate(train_size, shapes.TRAIN_SEED)
    test = shapes.generate(shapes.TEST_SIZE, shapes.TEST_SEED)
    return Dataset("shapes", Split(train[0], factors=train[1]), Split(test[0], factors=test[1]))
