"""benchmarks/diffusers_vae.py's pure parts: the models it builds and saves, the cases
it measures, the timing, and the table with its ratios and the 0.9 target. (The whole
run, servers included, is ``python -m benchmarks.diffusers_vae --quick``: about 45 s.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from benchmarks import diffusers_gpu as gpu
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


# ------------------------------------------------- benchmarks/diffusers_gpu.py's parts


def test_gpu_cases_cover_every_row_the_issue_asks_for() -> None:
    cases = gpu.cases((512, 1024), ("fp32", "fp16", "bf16"))
    assert len(cases) == 2 * 2 * 3 * 2  # models, sides, dtypes, tiled or not
    assert gpu.MODELS["sdxl"]["block_out_channels"] == (128, 256, 512, 512)
    assert gpu.MODELS["sdxl"]["sample_size"] == 1024 and gpu.MODELS["sd15"]["sample_size"] == 512


def test_gpu_pipeline_vae_upcasts_fp16_as_diffusers_pipelines_do(tmp_path: Path) -> None:
    gpu.build_models(tmp_path, quick=True)
    assert gpu.pipeline_vae(tmp_path / "sd15", "fp16", "cpu").dtype == torch.float32
    assert gpu.pipeline_vae(tmp_path / "sd15", "bf16", "cpu").dtype == torch.bfloat16
    case = gpu.Case("sdxl", 128, "fp32", False)
    assert tuple(gpu.latents(tmp_path, case).shape) == (1, 4, 64, 64)  # two blocks: 2x down


def test_gpu_table_flags_the_target_and_says_what_memory_is() -> None:
    fast, slow = gpu.Case("sd15", 512, "fp16", True), gpu.Case("sdxl", 1024, "bf16", False)
    rows = [gpu.Row(fast, 0.10, 0.105, 1536.0), gpu.Row(slow, 0.10, 0.2, None)]
    text = gpu.table(rows, {"fp16": "2100 MiB"})
    assert "| sd15 | 512² | fp16 | yes | 0.100 | 0.105 | 9.52 | 1,536 MiB | 0.95 |" in text
    assert "| 0.50 (below 0.9) |" in text and "fp16: 2100 MiB" in text


def test_gpu_benchmark_refuses_cuda_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit) as stopped:
        gpu.main(["--device", "cuda"])
    assert stopped.value.code == 2
