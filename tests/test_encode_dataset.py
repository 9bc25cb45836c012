"""vae-encode-dataset, run locally: the rows are the model's posterior for each image as
/encode decodes it, the bytes repeat, a rerun resumes, bad input is handled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bulk_inputs import encode, image_folder, pq, rows, shard_bytes
from tests.conftest import image_file
from vae_service.model.weights import load_weights
from vae_service.server.imaging import decode_image


def test_rows_hold_each_images_posterior_in_sorted_order(tmp_path: Path, tiny_weights: Path):
    src = image_folder(tmp_path / "src", n=10)
    assert encode(src, tmp_path / "out", tiny_weights) == 0
    table = rows(tmp_path / "out")
    ids = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    assert [r["id"] for r in table] == ids
    assert sorted(shard_bytes(tmp_path / "out")) == [f"part-0000{i}.parquet" for i in range(3)]
    checkpoint = load_weights(tiny_weights)
    images = torch.from_numpy(
        np.stack([decode_image((src / i).read_bytes(), 28, 1, 10**6) for i in ids])
    )
    with torch.inference_mode():
        mean, logvar = checkpoint.model.encode(images)
    np.testing.assert_allclose([r["mean"] for r in table], mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["logvar"] for r in table], logvar.numpy(), rtol=1e-5, atol=1e-6)
    assert {(r["model"], r["sha256"]) for r in table} == {("tiny", checkpoint.sha256)}
    assert (tmp_path / "out" / "_errors.jsonl").read_text() == ""


def test_the_same_input_and_model_give_the_same_bytes(tmp_path: Path, tiny_weights: Path):
    src = image_folder(tmp_path / "src", n=7)
    assert encode(src, tmp_path / "a", tiny_weights) == 0
    assert encode(src, tmp_path / "b", tiny_weights) == 0
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert (tmp_path / "a" / "_run.json").read_bytes() == (
        tmp_path / "b" / "_run.json"
    ).read_bytes()


def test_a_rerun_writes_only_the_missing_shard(tmp_path: Path, tiny_weights: Path):
    src, dst = image_folder(tmp_path / "src", n=10), tmp_path / "out"
    assert encode(src, dst, tiny_weights) == 0
    before = shard_bytes(dst)
    stamps = {p.name: p.stat().st_mtime_ns for p in dst.glob("part-*.parquet")}
    (dst / "part-00001.parquet").unlink()
    os.utime(dst / "part-00000.parquet", ns=(1, 1))  # a rewrite would change it
    stamps["part-00000.parquet"] = 1
    assert encode(src, dst, tiny_weights) == 0
    assert shard_bytes(dst) == before
    after = {p.name: p.stat().st_mtime_ns for p in dst.glob("part-*.parquet")}
    assert (
        after["part-00000.parquet"] == 1
        and after["part-00002.parquet"] == stamps["part-00002.parquet"]
    )
    assert not list(dst.glob(".*.tmp"))


def test_another_model_into_the_same_folder_is_refused(tmp_path, tiny_weights, capsys):
    from tests.bulk_inputs import BUNDLED

    src, dst = image_folder(tmp_path / "src", n=3), tmp_path / "out"
    assert encode(src, dst, tiny_weights) == 0
    capsys.readouterr()
    assert encode(src, dst, BUNDLED) == 2
    assert "holds the output of another run" in capsys.readouterr().err


def test_a_corrupt_image_goes_to_the_errors_file(tmp_path: Path, tiny_weights: Path):
    src = image_folder(tmp_path / "src", n=9, corrupt_at=4)
    (src / "empty.png").write_bytes(b"")
    assert encode(src, tmp_path / "out", tiny_weights) == 0
    errors = [
        json.loads(line) for line in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()
    ]
    (bad,) = [p.relative_to(src).as_posix() for p in src.rglob("*.png") if p.stat().st_size == 16]
    assert errors == [  # in the input's order
        {"id": "empty.png", "reason": "is empty"},
        {"id": bad, "reason": "is not an image file Pillow can read"},
    ]
    ids = [r["id"] for r in rows(tmp_path / "out")]
    assert len(ids) == 8 and bad not in ids and "empty.png" not in ids


def test_an_empty_folder_exits_2_with_one_line(tmp_path: Path, tiny_weights: Path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no images here")
    assert encode(tmp_path / "src", tmp_path / "out", tiny_weights) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no images" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broken", ["missing", "truncated", "not-a-vae-folder", "other-class"])
def test_a_model_that_fails_to_load_exits_2_with_one_line(tmp_path, tiny_weights, capsys, broken):
    src = image_folder(tmp_path / "src", n=2)
    model = tmp_path / "model.safetensors"
    if broken == "truncated":
        model.write_bytes(tiny_weights.read_bytes()[:100])
    elif broken in ("not-a-vae-folder", "other-class"):
        model = tmp_path / "folder"
        model.mkdir()
    if broken == "other-class":  # a diffusers folder of a class that is no VAE
        (model / "config.json").write_text('{"_class_name": "UNet2DModel"}')
        (model / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert encode(src, tmp_path / "out", model) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "vae-encode-dataset: error: cannot load the model"
    )
    assert "Traceback" not in err


def test_parquet_input_gives_the_folders_latents(tmp_path: Path, tiny_weights: Path):
    import pyarrow as pa

    src = image_folder(tmp_path / "src", n=6)
    assert encode(src, tmp_path / "from-folder", tiny_weights) == 0
    ids = [r["id"] for r in rows(tmp_path / "from-folder")]
    blobs = [(src / i).read_bytes() for i in ids]
    images = [{"bytes": b, "path": i} for i, b in zip(ids, blobs, strict=True)]  # Hugging Face's
    table = pa.table({"key": [f"k{n}" for n in range(6)], "pixels": images})
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 4), tmp_path / "pq" / "a.parquet", row_group_size=3)
    pq.write_table(table.slice(4), tmp_path / "pq" / "b.parquet")
    flags = ("--id-column", "key", "--image-column", "pixels")
    assert encode(tmp_path / "pq", tmp_path / "from-pq", tiny_weights, *flags) == 0
    got = rows(tmp_path / "from-pq")
    assert [r["id"] for r in got] == [f"k{n}" for n in range(6)]
    assert [r["mean"] for r in got] == [r["mean"] for r in rows(tmp_path / "from-folder")]


def test_a_parquet_file_without_the_column_exits_2(tmp_path: Path, tiny_weights: Path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["a"], "img": [image_file()]}), tmp_path / "in.parquet")
    assert encode(tmp_path / "in.parquet", tmp_path / "out", tiny_weights) == 2
    assert "no column 'image'" in capsys.readouterr().err
