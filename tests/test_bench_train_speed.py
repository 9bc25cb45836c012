"""The training-speed benchmark runs end to end on a tiny model and prints its figures."""

from __future__ import annotations

import re

import pytest

from benchmarks import train_speed


def test_it_prints_both_layouts_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--widths", "4,8", "--hidden-dim", "16", "--head-width", "2", "--batch-size", "8"]
    assert train_speed.main([*argv, "--steps", "2", "--rounds", "1"]) == 0
    line = capsys.readouterr().out
    match = re.search(
        r"NCHW ([\d,]+) images/s, --channels-last ([\d,]+) images/s \(([\d.]+)x\)", line
    )
    assert match, line
    nchw, nhwc, ratio = (float(g.replace(",", "")) for g in match.groups())
    assert nchw > 0 and nhwc > 0
    assert ratio == pytest.approx(nhwc / nchw, abs=0.01 + 0.01 * ratio)
