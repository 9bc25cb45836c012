"""benchmarks/encode_dataset.py's parts: the 10x input, the runner that times one
vae-encode-dataset run and reads its peak memory, and the report's ratios. (The whole
run is ``python -m benchmarks.encode_dataset --quick``: a few minutes on 2 cores.)"""

from __future__ import annotations

from pathlib import Path

from benchmarks import encode_dataset as bench
from tests.bulk_inputs import BUNDLED, image_folder, rows


def test_ten_times_links_every_file_ten_times(tmp_path: Path) -> None:
    src = tmp_path / "one"
    src.mkdir()
    for name in ("a.png", "b.png"):
        (src / name).write_bytes(name.encode())
    big = bench.ten_times(tmp_path, src)
    files = sorted(p.relative_to(big).as_posix() for p in big.rglob("*.png"))
    assert len(files) == 20 and files[:2] == ["0/a.png", "0/b.png"]
    assert (big / "9" / "b.png").stat().st_ino == (src / "b.png").stat().st_ino


def test_the_runner_times_a_local_run_and_reads_its_peak_memory(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "src", n=5)
    work = bench.Workload("tiny", src, BUNDLED, 2, 5)
    figures = bench.tool(work, tmp_path / "out", None)
    assert figures["seconds"] > 0 and figures["init_s"] == 0
    assert 50 < figures["rss_mib"] < 4096  # this run's own peak, not the parent's
    assert len(rows(tmp_path / "out")) == 5


def test_the_report_gives_each_ratio_against_its_target() -> None:
    figures = {"model only": 400.0, "decode + model": 200.0, "local": 100.0, "ray": 70.0}
    figures |= {"served": 50.0, "ray init s": 4.0, "local rss": 300.0}
    text = bench.report(bench.Workload("w", Path("."), BUNDLED, 8, 10), figures)
    assert "local ÷ in process (decode + model): 0.50 (target ≥ 0.8)" in text
    assert "ray ÷ local: 0.70 (target ≥ 0.6)" in text
    assert "| model only | 400 |" in text and "| served | 50.00 |" in text
