"""The GPU check (benchmarks/gpu_check.sh) and its wheel helper (benchmarks/gpu_wheels.sh),
tested on the CPU for everything but CUDA: the scripts parse, the wheel list covers what
the GPU image lacks, the check stops clearly without CUDA or wheels, a dry run on the CPU
goes through every step, and the benchmark's --device and --precision."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from benchmarks import bench, gpu_wheels, workloads
from benchmarks.load import have_wrk
from tests.conftest import AUTO_BACKEND
from vae_service.model import VAE

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu_check.sh"
WHEELS = ROOT / "benchmarks" / "gpu_wheels.sh"
# What the brief for the GPU check named as missing there, besides what pyproject implies.
KNOWN_MISSING = {
    "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "pydantic-settings",
    "python-dotenv", "python-multipart", "orjson", "annotated-types", "typing-inspection",
    "asgi-lifespan", "sniffio",
}  # fmt: skip
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
needs_wrk = pytest.mark.skipif(not have_wrk(), reason="wrk is not installed")


def run_check(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """benchmarks/gpu_check.sh OUT, run from elsewhere, with this interpreter as python3."""
    return subprocess.run(
        ["bash", str(CHECK), str(out)],
        cwd=out.parent,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("script", [CHECK, WHEELS], ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_wheels_cover_every_requirement_the_gpu_image_lacks() -> None:
    needed, image, locked = gpu_wheels.needed(), gpu_wheels.image_packages(), gpu_wheels.pins()
    direct = {gpu_wheels.normalize(r.name) for r in gpu_wheels.roots()}
    assert direct - image <= set(needed)
    assert set(needed) >= KNOWN_MISSING
    # Only a package the image holds at a version we rule out travels although it is there.
    assert set(needed) & image == set(gpu_wheels.image_versions()) and "torch" in image
    assert all(locked[name] == version for name, version in needed.items())
    for name, extras in gpu_wheels.closure(gpu_wheels.roots(), image).items():
        for requirement in gpu_wheels.requirements_of(name, extras):
            assert gpu_wheels.normalize(requirement.name) in set(needed) | image, (
                name,
                requirement,
            )


def test_the_image_list_lives_in_one_file() -> None:
    """The scripts name no package: gpu_wheels.py reads gpu_image_packages.txt."""
    assert gpu_wheels.IMAGE_LIST.name == "gpu_image_packages.txt"
    assert {"torch", "numpy", "pytest", "httpx"} <= gpu_wheels.image_packages()
    for script in (CHECK, WHEELS):
        text = script.read_text()
        assert "fastapi" not in text and "pydantic" not in text, script.name


def fake_python(folder: Path) -> Path:
    """An interpreter whose ``-m pip download -d DIR NAME==VERSION...`` only writes empty
    wheel files; anything else goes to this interpreter."""
    script = folder / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1 $2 $3" = "-m pip download" ]; then\n'
        "  while [ $# -gt 0 ]; do\n"
        '    case $1 in -d) dir=$2; shift;; *==*) : >"$dir/${1%%==*}-${1##*==}-py3-none-any.whl";;'
        " esac\n"
        "    shift\n"
        "  done\n"
        "  exit 0\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return script


def fill_wheels(tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """gpu_wheels.sh into tmp_path/whl, with empty wheels from fake_python."""
    folder = tmp_path / "whl"
    folder.mkdir()
    (folder / "fastapi-0.1.0-py3-none-any.whl").write_bytes(b"stale")
    env = {**os.environ, "PYTHON": str(fake_python(tmp_path)), "GPU_WHEELS_DIR": str(folder)}
    done = subprocess.run(["bash", str(WHEELS)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder, done


def test_gpu_wheels_sh_leaves_one_wheel_a_package(tmp_path: Path) -> None:
    folder, done = fill_wheels(tmp_path)
    wanted = {f"{n}-{v}-py3-none-any.whl" for n, v in gpu_wheels.needed().items()}
    assert {p.name for p in folder.glob("*.whl")} == wanted
    assert f"{len(wanted)} wheels, " in done.stdout


@needs_wrk
def test_gpu_wheels_sh_carries_a_wrk_that_runs_from_its_folder(tmp_path: Path) -> None:
    folder, _ = fill_wheels(tmp_path)
    assert (folder / "lib" / "wrk").is_file() and list((folder / "lib").glob("libluajit*"))
    # wrk -v prints its banner and exits 1; only what it prints tells that it runs.
    shown = subprocess.run([folder / "bin" / "wrk", "-v"], capture_output=True, text=True)
    assert (shown.stdout + shown.stderr).startswith("wrk ")


def test_an_image_package_at_a_version_we_rule_out_travels_too() -> None:
    image = {"ml-dtypes", "numpy"}
    start = [Requirement("ml-dtypes<=0.5.4"), Requirement("numpy>=1")]
    assert gpu_wheels.closure(start, image, {"ml-dtypes": "0.6.0"}) == {"ml-dtypes": set()}
    assert gpu_wheels.closure(start, image, {"ml-dtypes": "0.5.4"}) == {}
    assert gpu_wheels.closure(start, image) == {}  # no version recorded: the image's will do


@no_cuda
def test_gpu_check_stops_clearly_without_cuda(tmp_path: Path) -> None:
    done = run_check(tmp_path / "out")
    assert done.returncode == 3
    assert "gpu_check.sh: no CUDA device" in done.stdout  # the log goes to stdout too
    summary = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "**Stopped: no CUDA device" in summary
    assert "CUDA available: False" in (tmp_path / "out" / "gpu-check.log").read_text()


def test_gpu_check_stops_clearly_without_wheels(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run_check(
        tmp_path / "out", GPU_CHECK_DEVICE="cpu", GPU_CHECK_WHEELS=str(tmp_path / "empty")
    )
    assert done.returncode == 2
    assert "gpu_check.sh: no wheels in" in done.stdout and "gpu_wheels.sh" in done.stdout


def dummy_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel: one module, gpucheckdummy."""
    folder.mkdir()
    wheel = folder / "gpucheckdummy-0.1-py3-none-any.whl"
    info = "gpucheckdummy-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("gpucheckdummy.py", "VALUE = 1\n")
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpucheckdummy\n"
                         "Version: 0.1\n")  # fmt: skip
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                         "Root-Is-Purelib: true\nTag: py3-none-any\n")  # fmt: skip
        archive.writestr(f"{info}/RECORD", "")
    return folder


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """Every step, the wheel install included, on the CPU with short measurements."""
    out, site, wheels = tmp_path / "out", tmp_path / "site", dummy_wheel(tmp_path / "dummy")
    if have_wrk():  # the wrk gpu_wheels.sh carries, as the GPU machine gets it
        carried, _ = fill_wheels(tmp_path)
        for folder in ("bin", "lib"):
            shutil.copytree(carried / folder, wheels / folder)
    done = run_check(
        out,
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_WHEELS=str(wheels),
        GPU_CHECK_SITE=str(site),
        GPU_CHECK_SECONDS="0.2",
        GPU_CHECK_SOAK="0",
        GPU_CHECK_WORKERS="1",
        GPU_CHECK_BATCH="128",
        VAE_VENV="/not/a/setting",  # as CI sets it: a script's variable, not the service's
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (site / "gpucheckdummy.py").is_file()
    reports = {"bench-cpu-fp32.md", "bench-cpu-fp32-batch128.md", "workers-cpu.md"}
    reports.add("bench-diffusers-cpu.md")
    assert {p.name for p in out.iterdir()} == {"gpu-check.md", "gpu-check.log", *reports}
    summary = (out / "gpu-check.md").read_text()
    assert summary.count("| ok |") == 9 and "failed" not in summary
    assert "## Benchmark: diffusers, cpu\n" in summary and "| sdxl | 128² | fp32 | yes |" in summary
    assert "- pytest: " in summary and "skipped" in summary  # the CUDA tests skip here
    assert "## Benchmark: cpu, fp32\n" in summary and "Device: cpu, precision fp32" in summary
    assert summary.index("## Benchmark: cpu, fp32\n") < summary.index(
        "## Benchmark: cpu, fp32, batch128"
    )
    assert "No other VAE_ setting is set." in (out / "bench-cpu-fp32.md").read_text()
    assert "Ours also runs with VAE_MAX_BATCH_SIZE=128." in summary
    assert "## Worker processes: cpu, fp32" in summary and "| 1 | encode 1 image" in summary
    if have_wrk():
        assert "=== load generator: wrk" in done.stdout and "load generator: wrk" in summary


def test_bench_defaults_to_the_cpu_in_fp32() -> None:
    args = bench.parse_args([])
    assert (args.device, args.precision) == ("cpu", "fp32")
    env = bench.ours_env(args)
    assert env["VAE_DEVICE"] == "cpu" and env["VAE_PRECISION"] == "fp32"
    assert bench.device_name("cpu") == "cpu"
    assert env["VAE_WORKERS"] == "1"


def test_bench_runs_ours_with_several_workers_only_without_the_soak(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench.ours_env(bench.parse_args(["--workers", "2", "--soak", "0"]))["VAE_WORKERS"] == "2"
    for argv, why in (
        (["--workers", "2"], "add --soak 0"),
        (["--workers", "0", "--soak", "0"], "at least 1"),
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert why in capsys.readouterr().err


def test_bench_runs_in_process_on_the_backend_ours_picks(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The "≥ 80% of in-process" rows compare like with like: the in-process model runs
    on the backend VAE_BACKEND picks for our server."""
    monkeypatch.setenv("VAE_ONNX_CACHE_DIR", str(tmp_path))
    for choice, expected in (("auto", AUTO_BACKEND), ("torch", "torch")):
        monkeypatch.setenv("VAE_BACKEND", choice)
        args = bench.parse_args(["--peers", "", "--threads", "1"])
        work = {w.name: w for w in bench.in_process_work(tiny_weights, args)}
        assert args.backend == expected
        assert len(work["encode 1 image, JSON"].in_process()) == 1  # type: ignore[arg-type]


def test_bench_refuses_half_precision_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--precision", "bf16"])
    assert "needs CUDA" in capsys.readouterr().err


@no_cuda
def test_bench_refuses_cuda_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda", "--peers", ""])
    assert "0 CUDA devices" in capsys.readouterr().err
    assert bench.parse_args(["--device", "auto"]).device == "cpu"


def test_in_process_work_runs_on_the_chosen_device(tiny_model: VAE) -> None:
    all_work = workloads.build(tiny_model, torch.device("cpu"), None)
    assert {w.device.type for w in all_work} == {"cpu"}
    encode_npy = next(w for w in all_work if w.name.startswith("encode") and "npy" in w.name)
    pixels = torch.from_numpy(workloads.test_images(workloads.BATCH, tiny_model.cfg))
    with torch.inference_mode():
        expected = tiny_model.encode(pixels[:, None].float() / 255)[0]
        assert torch.allclose(torch.from_numpy(encode_npy.in_process()), expected)
    assert workloads.images_per_second(all_work[0], 0.01) > 0


def test_requirement_check_names_what_is_unmet() -> None:
    """What gpu_check.sh's 'requirements met' step runs, here where all is installed."""
    image = gpu_wheels.image_packages()
    assert gpu_wheels.unmet(gpu_wheels.roots(), image) == []
    impossible = [Requirement("fastapi>=999"), Requirement("no-such-package-here")]
    assert gpu_wheels.unmet(impossible, image) == [
        "fastapi>=999: " + metadata.version("fastapi") + " installed",
        "no-such-package-here: not installed",
    ]


def test_gpu_check_skips_what_its_time_budget_cannot_hold(tmp_path: Path) -> None:
    done = run_check(
        tmp_path / "out", GPU_CHECK_DEVICE="cpu", GPU_CHECK_SKIP_INSTALL="1", GPU_CHECK_BUDGET_S="5"
    )
    assert done.returncode == 1, done.stdout
    summary = (tmp_path / "out" / "gpu-check.md").read_text()
    # 4 steps, 2 benchmarks, the diffusers VAEs and the worker comparison
    assert summary.count("**skipped**: the 5 s budget is spent") == 8
    assert not (tmp_path / "out" / "bench-cpu-fp32.md").exists()
