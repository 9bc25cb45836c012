"""Inputs and helpers shared by the vae-encode-dataset tests (local and Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import image_file
from vae_service.training.encode_dataset import main

pq = pytest.importorskip("pyarrow.parquet")

BUNDLED = (
    Path(__file__).resolve().parents[1]
    / "src/vae_service/model/pretrained/models/fashion-mnist.safetensors"
)


def image_folder(root: Path, n: int = 10, corrupt_at: int | None = None) -> Path:
    """n grey 28 x 28 PNGs, every other one in a subfolder; image ``corrupt_at`` (in
    sorted order of the names) is not an image."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / ("sub" if i % 2 else "") / f"img{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(image_file(seed=i))
    if corrupt_at is not None:
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
        (root / names[corrupt_at]).write_bytes(b"not a png at all")
    return root


def encode(src: Path, dst: Path, model: Path, *flags: str) -> int:
    argv = [str(src), str(dst), "--model", str(model), "--no-progress", "--device", "cpu"]
    return main([*argv, "--shard-size", "4", "--batch-size", "3", *flags])


def shard_bytes(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dst.glob("part-*.parquet"))}


def rows(dst: Path) -> list[dict]:
    return pq.read_table(dst).to_pylist()
