"""benchmarks/score.py's dry run: the served and in-process workloads of /score and
/encode all run against a real server, and the report prints each with its cost ratio."""

from __future__ import annotations

import pytest

from benchmarks import score


@pytest.mark.slow
def test_the_dry_run_reports_every_workload(capsys: pytest.CaptureFixture[str]) -> None:
    score.main(["--quick", "--batches", "2", "--k", "2"])
    out = capsys.readouterr().out
    assert "2 image(s) per request" in out
    for name in ("served /encode", "served /score k=2", "in-process encode", "in-process score"):
        line = next(line for line in out.splitlines() if name in line)
        assert float(line.split()[-5]) > 0 and line.endswith("x encode's cost")
