"""The PNG plots of a load test."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrec.loadtest.report import Timing

pytest.importorskip("matplotlib")


def test_plots_are_written(tmp_path: Path) -> None:
    from mtlrec.loadtest.plots import HISTOGRAM, OVER_TIME, write_plots

    timings = [Timing(1000.0 + i * 0.01, 0.5 + (i % 17) * 0.1, i % 50 != 0, 1) for i in range(400)]
    paths = write_plots(timings, tmp_path / "plots", title="test", warmup_s=1.0)
    assert [p.name for p in paths] == [OVER_TIME, HISTOGRAM]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_of_an_empty_run_are_still_written(tmp_path: Path) -> None:
    from mtlrec.loadtest.plots import write_plots

    assert all(p.is_file() for p in write_plots([], tmp_path))
