"""benchmarks/paired.py: the order of each pair, which server a checkout runs, the table
of pairs with its medians and the targets met or not; and one server start of this
checkout, loaded and stopped as a pair does it (no other checkout needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from benchmarks import paired, workloads
from benchmarks.load import Load, Request
from vae_service.model import VAEConfig

ROOT = Path(__file__).resolve().parents[1]


def run(c32_rate: float, p50_ms: float, batch_rate: float, errors: int = 0) -> paired.Run:
    """A Run whose figures are the given ones (each load 10 s long)."""

    def load(rate: float, p50: float = 1.0, failed: int = 0) -> Load:
        return Load(round(rate * 10) + failed, 10.0, p50, 2 * p50, failed)

    return paired.Run(load(c32_rate, failed=errors), load(1.0, p50_ms), load(batch_rate))


def pair(first: str, ratios: tuple[float, float, float], in_process: float) -> paired.Pair:
    """A before of 1,000 req/s, 2 ms, 10 batches/s and an after at ``ratios`` of it."""
    c32, p50, batch = ratios
    return paired.Pair(
        first, run(1000, 2.0, 10), run(1000 * c32, 2.0 * p50, 10 * batch), in_process
    )


def test_pairs_alternate_which_side_goes_first() -> None:
    assert [paired.order(i) for i in range(4)] == [
        ("before", "after"), ("after", "before"), ("before", "after"), ("after", "before"),
    ]  # fmt: skip


def test_a_checkout_is_run_by_its_own_layout(tmp_path: Path) -> None:
    old, new, neither = tmp_path / "old", tmp_path / "new", tmp_path / "neither"
    (old / "service").mkdir(parents=True)
    (old / "service" / "cli.py").touch()
    (new / "src" / "vae_service" / "server").mkdir(parents=True)
    (new / "src" / "vae_service" / "server" / "cli.py").touch()
    neither.mkdir()
    assert paired.checkout("before", old) == paired.Checkout("before", old, "service.cli", old)
    assert paired.checkout("before", new).module == "vae_service.server.cli"
    assert paired.checkout("before", new).pythonpath == new / "src"
    assert paired.checkout("after", ROOT).module == "vae_service.server.cli"
    with pytest.raises(SystemExit, match="neither"):
        paired.checkout("before", neither)


def test_the_table_gives_every_pair_and_the_median_of_each_column() -> None:
    pairs = [
        pair("before", (0.90, 1.05, 1.0), 2560),
        pair("after", (0.80, 1.20, 1.1), 2560),
        pair("before", (1.00, 1.00, 0.9), 3200),
    ]
    lines = paired.table(pairs).splitlines()
    assert len(lines) == 2 + 3 + 1
    cells = [line.strip("| ").split(" | ") for line in lines]
    assert lines[1].count("|") == len(cells[0]) + 1
    assert len({len(c) for c in cells[:1] + cells[2:]}) == 1 and len(cells[0]) == 1 + 3 * 3 + 2
    assert cells[2][:4] == ["1 (before)", "1,000", "900", "0.90"]
    assert cells[3][0] == "2 (after)"
    median = cells[-1]
    assert median[0] == "**median**"
    assert median[3] == "0.90"  # c=32: median of 0.90, 0.80, 1.00
    assert median[4:7] == ["2.00", "2.10", "1.05"]  # c=1 p50 ms: before, after, ratio
    assert median[9] == "1.00"  # batch after / before
    # after / in-process: 2,560/2,560, 2,816/2,560, 2,304/3,200
    assert median[10:] == ["2,560", "1.00"]


def test_targets_are_judged_by_the_median_ratio() -> None:
    # Medians: c=32 0.85 (met at the bound), p50 1.15, batch share 0.75 (both missed).
    pairs = [
        pair("before", (0.85, 1.15, 0.75), 2560),
        pair("after", (0.50, 2.00, 0.50), 2560),
        pair("before", (0.99, 1.00, 0.99), 2560),
    ]
    got = paired.verdicts(pairs)
    assert [round(median, 2) for _, median, _ in got] == [0.85, 1.15, 0.75]
    assert [met for *_, met in got] == [True, False, False]
    text = paired.targets_table(pairs)
    assert "| 0.85 | yes |" in text and text.count("**no**") == 2
    ok = [pair(f, (0.95, 1.05, 0.9), 2560) for f in ("before", "after")]
    assert all(met for *_, met in paired.verdicts(ok))


def test_errors_count_over_a_runs_loads_and_leave_its_rate_out() -> None:
    failing = run(100, 1.0, 5, errors=7)
    assert failing.errors == 7
    assert failing.figure("c32") == pytest.approx(100)
    assert failing.figure("batch") == pytest.approx(5 * 256)


def test_fewer_than_one_pair_is_refused() -> None:
    with pytest.raises(SystemExit):
        paired.parse_args(["--before", str(ROOT), "--pairs", "0"])


def test_one_server_start_of_this_checkout_is_loaded_and_stopped() -> None:
    images = workloads.test_images(workloads.BATCH, VAEConfig())
    one = orjson.dumps({"images": [workloads.png_base64(images[0])]})
    single = Request("POST", "/encode", one)
    batch = Request("POST", "/encode?format=npy", workloads.npy_body(images), workloads.NPY)
    measured = paired.run(paired.checkout("after", ROOT), single, batch, 0.5)
    assert measured.errors == 0
    assert min(measured.figure(key) for key, _ in paired.FIGURES) > 0
