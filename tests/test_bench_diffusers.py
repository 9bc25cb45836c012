"""benchmarks/diffusers_vae.py's pure parts: the models it builds and saves, the cases
it measures, the timing, and the table with its ratios and the 0.9 target. (The whole
run, servers included, is ``python -m benchmarks.diffusers_vae --quick``: about 45 s.)"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from benchmarks import diffusers_vae as bench


def test_quick_models_are_saved_and_cases_cover_both_ops(tmp_path: Path) -> None:
    models = bench.build_models(tmp_path, quick=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd15", "taesd"]
    cases = bench.cases(models, 64, (1, 4))
    shapes = {(c.model, c.op, c.images): c.shape for c in cases}
    assert shapes[("sd15", "decode", 4)] == (4, 4, 32, 32)  # two blocks: 2x down
    assert shapes[("taesd", "decode", 1)] == (1, 4, 8, 8)  # TAESD: 8x down
    assert shapes[("taesd", "encode", 4)] == (4, 3, 64, 64)
    assert len(cases) == 8


def test_sd15_shape_is_the_real_architecture() -> None:
    assert bench.SD15["block_out_channels"] == (128, 256, 512, 512)
    assert bench.SD15["layers_per_block"] == 2 and bench.SD15["latent_channels"] == 4


def test_rate_is_images_over_the_median_call() -> None:
    calls: list[int] = []
    assert bench.rate(lambda: calls.append(1), 4, 3) > 0
    assert len(calls) == 4  # one untimed call first


def test_table_shows_ratios_and_flags_the_target() -> None:
    case = bench.Case("sd15", "decode", 1, (1, 4, 32, 32))
    rows = [bench.Row(case, 1.0, 0.95, 0.5), bench.Row(case, 2.0, 1.0, 2.0)]
    lines = bench.table(rows, 256).splitlines()
    assert "256²" in lines[0]
    assert lines[2].endswith("| 0.95 | 1.90 |")
    assert "0.50 (below 0.9)" in lines[3] and lines[3].endswith("| 0.50 |")
