"""Data sources: IDX files, folders of images, and clear DataErrors for bad paths."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_service.training.data import DataError, load_dataset, read_idx


def test_read_idx_parses_dims_and_data():
    payload = (
        bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    )
    assert read_idx(payload, "x").tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", "not an unsigned-byte IDX file"),
        (b"PK\x03\x04rest", "not an unsigned-byte IDX file"),
        (bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + bytes(4), "not an unsigned-byte"),
        (bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(3), "promises 5 bytes, file has 3"),
    ],
)
def test_read_idx_rejects_bad_payloads(payload: bytes, problem: str):
    with pytest.raises(DataError, match=problem):
        read_idx(payload, "some.idx")


def test_idx_directory_loads_as_floats_in_unit_range(idx_dir: Path):
    data = load_dataset("fashion-mnist", idx_dir)
    assert data.train.images.shape == (64, 1, 28, 28) and data.test.images.shape == (32, 1, 28, 28)
    assert data.train.labels is not None and data.train.labels.shape == (64,)
    assert float(data.train.images.min()) >= 0 and float(data.train.images.max()) <= 1
    raw = gzip.decompress((idx_dir / "train-images-idx3-ubyte.gz").read_bytes())[16:]
    assert float(data.train.images[0, 0, 0, 1]) == pytest.approx(raw[1] / 255)
    assert data.describe() == {"name": "fashion-mnist", "shape": [1, 28, 28],
                               "train_size": 64, "test_size": 32}  # fmt: skip


def test_idx_data_resized_and_repeated_to_rgb(idx_dir: Path):
    data = load_dataset("mnist", idx_dir, image_size=32, channels=3)
    assert data.test.images.shape == (32, 3, 32, 32)
    assert (data.test.images[:, 0] == data.test.images[:, 2]).all()


def test_subset_limits_images_and_labels(idx_dir: Path):
    split = load_dataset("fashion-mnist", idx_dir).test.subset(5)
    assert len(split) == 5 and split.labels is not None and len(split.labels) == 5


def test_missing_data_directory(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


def test_directory_without_idx_files(tmp_path: Path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


def test_truncated_idx_file(idx_dir: Path):
    path = idx_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="IDX header promises"):
        load_dataset("fashion-mnist", idx_dir)


def test_unknown_source_that_is_not_a_folder(tmp_path: Path):
    with pytest.raises(DataError, match="not a known data set"):
        load_dataset(str(tmp_path / "cifar-100"))


def _save(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Ten images, RGB and grayscale, of several sizes and formats, one in a subfolder."""
    folder = tmp_path / "pictures"
    (folder / "more").mkdir(parents=True)
    for i in range(9):
        mode, suffix = ("RGB", ".png") if i % 2 else ("L", ".jpg")
        _save(folder / f"img{i}{suffix}", mode, (40 + i, 30 + 2 * i), i)
    _save(folder / "more" / "last.bmp", "RGB", (64, 64), 99)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_converted_and_resized(image_folder: Path, channels: int):
    data = load_dataset(str(image_folder), image_size=32, channels=channels)
    assert data.name == "folder:pictures"
    assert data.train.images.shape == (9, channels, 32, 32)
    assert data.test.images.shape == (1, channels, 32, 32)
    assert float(data.train.images.min()) >= 0 and float(data.train.images.max()) <= 1


def test_empty_image_folder(tmp_path: Path):
    with pytest.raises(DataError, match="no image files"):
        load_dataset(str(tmp_path))


def test_corrupt_image_in_folder(image_folder: Path):
    (image_folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        load_dataset(str(image_folder))
