"""vae-encode-dataset --ray on a real local Ray (2 CPUs, started once for the module):
the same rows and bytes as the local run, resume, a corrupt image in the middle, and the
user's mistakes answered before Ray is asked for anything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bulk_inputs import BUNDLED, encode, image_folder, pq, rows, shard_bytes

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # The workers import vae_service from this checkout, as the test process does.
    src = str(Path(__file__).resolve().parents[1] / "src")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, before]))
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="warning",
    )
    yield
    ray.shutdown()
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


def test_ray_gives_the_local_runs_rows_and_bytes(tmp_path: Path, local_ray: None) -> None:
    src = image_folder(tmp_path / "src", n=10)
    assert encode(src, tmp_path / "local", BUNDLED) == 0
    assert encode(src, tmp_path / "ray", BUNDLED, "--ray", "--ray-concurrency", "2") == 0
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert len(rows(tmp_path / "ray")) == 10
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")


def test_ray_resumes_a_local_run(tmp_path: Path, local_ray: None) -> None:
    src, dst = image_folder(tmp_path / "src", n=10), tmp_path / "out"
    assert encode(src, dst, BUNDLED) == 0
    before = shard_bytes(dst)
    (dst / "part-00002.parquet").unlink()
    os.utime(dst / "part-00000.parquet", ns=(1, 1))
    assert encode(src, dst, BUNDLED, "--ray") == 0
    assert shard_bytes(dst) == before
    assert (dst / "part-00000.parquet").stat().st_mtime_ns == 1


def test_ray_writes_a_corrupt_image_to_the_errors_file(tmp_path: Path, local_ray: None) -> None:
    src = image_folder(tmp_path / "src", n=9, corrupt_at=5)
    assert encode(src, tmp_path / "out", BUNDLED, "--ray") == 0
    (error,) = [
        json.loads(x) for x in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()
    ]
    assert error["reason"] == "is not an image file Pillow can read"
    ids = [r["id"] for r in rows(tmp_path / "out")]
    assert len(ids) == 8 and error["id"] not in ids
    assert encode(src, tmp_path / "local", BUNDLED) == 0
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "out")


def test_ray_reads_parquet_input_as_the_local_run(tmp_path: Path, local_ray: None) -> None:
    import pyarrow as pa

    src = image_folder(tmp_path / "src", n=7)
    blobs = [p.read_bytes() for p in sorted(src.rglob("*.png"))]
    table = pa.table({"id": [f"k{i}" for i in range(7)], "image": blobs})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    assert encode(tmp_path / "in.parquet", tmp_path / "local", BUNDLED) == 0
    assert encode(tmp_path / "in.parquet", tmp_path / "ray", BUNDLED, "--ray") == 0
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
    assert [r["id"] for r in rows(tmp_path / "ray")] == [f"k{i}" for i in range(7)]


def test_ray_with_an_empty_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "src").mkdir()
    assert encode(tmp_path / "src", tmp_path / "out", BUNDLED, "--ray") == 2
    assert "holds no images" in capsys.readouterr().err


def test_ray_with_a_model_that_fails_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = image_folder(tmp_path / "src", n=2)
    assert encode(src, tmp_path / "out", tmp_path / "missing.safetensors", "--ray") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load the model" in err
