"""Percentiles from raw timings, throughput, SLO checks and the exact keys of report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtlrec.loadtest.report import (
    REPORT_KEYS,
    Timing,
    build_report,
    check_slo,
    latency_summary,
    read_timings,
    summarize,
    write_report,
)


def test_percentiles_of_known_timings_at_microsecond_resolution() -> None:
    # 1..100 ms: linear interpolation between order statistics (numpy.percentile's default)
    summary = latency_summary([float(i) for i in range(1, 101)])
    assert summary == {"p50": 50.5, "p90": 90.1, "p95": 95.05, "p99": 99.01, "max": 100.0, "min": 1.0, "mean": 50.5}
    # sub-millisecond values keep their microseconds (locust's own statistics would round them to 0 or 1 ms)
    fast = latency_summary([0.0804, 0.1207, 0.2513])
    assert fast["min"] == 0.08 and fast["max"] == 0.251 and fast["p50"] == 0.121


def test_empty_timings_give_no_percentiles() -> None:
    assert set(latency_summary([]).values()) == {None}
    summary = summarize([])
    assert summary["requests"] == 0 and summary["requests_per_s"] == 0.0


def test_summary_counts_failures_and_leaves_them_out_of_latency() -> None:
    timings = [Timing(start_s=100 + i * 0.1, latency_ms=10.0, ok=True, records=4) for i in range(10)]
    timings.append(Timing(start_s=100.95, latency_ms=50.0, ok=False, records=4))  # a slow failure: not in latency
    summary = summarize(timings)
    assert summary["requests"] == 11 and summary["failures"] == 1
    assert summary["fail_ratio"] == pytest.approx(1 / 11, abs=1e-6)
    assert summary["records"] == 40
    assert summary["latency_ms"]["max"] == 10.0
    # window: first start 100.0 to last end 101.0 -> 10 successful requests in 1 s
    assert summary["measured_s"] == pytest.approx(1.0)
    assert summary["requests_per_s"] == pytest.approx(10.0)
    assert summary["records_per_s"] == pytest.approx(40.0)


def test_warmup_drops_the_first_seconds() -> None:
    timings = [Timing(start_s=float(i), latency_ms=100.0 if i < 2 else 1.0, ok=True, records=1) for i in range(10)]
    assert summarize(timings, warmup_s=2.0)["latency_ms"]["max"] == 1.0
    assert summarize(timings, warmup_s=2.0)["requests"] == 8


def test_slo_checks() -> None:
    summary = summarize([Timing(float(i), 5.0, i != 0, 1) for i in range(10)])
    assert check_slo(summary, p99_ms=10, max_fail_ratio=0.2)["passed"]
    broken = check_slo(summary, p99_ms=1, max_fail_ratio=0.05)
    assert not broken["passed"] and len(broken["broken"]) == 2
    assert check_slo(summary, None, None) == {"p99_ms": None, "max_fail_ratio": None, "passed": True, "broken": []}
    assert not check_slo(summarize([]), p99_ms=1000, max_fail_ratio=None)["passed"]  # nothing measured: not a pass


def test_report_has_exactly_the_documented_keys(tmp_path: Path) -> None:
    summary = summarize([Timing(1.0, 2.0, True, 3)])
    report = build_report(summary, kind="loadtest", protocol="records", model="mmoe", version="1")
    path = write_report(tmp_path / "out" / "report.json", report)
    loaded = json.loads(path.read_text())
    assert tuple(loaded) == REPORT_KEYS
    assert set(loaded["latency_ms"]) == {"p50", "p90", "p95", "p99", "max", "min", "mean"}
    with pytest.raises(ValueError, match="not report keys"):
        build_report(summary, surprise=1)


def test_read_timings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"timings": [[1.5, 0.25, True, 2], [2.0, 1.0, False, 2]], "errors": {"E": 1}}))
    timings, errors = read_timings(path)
    assert timings == [Timing(1.5, 0.25, True, 2), Timing(2.0, 1.0, False, 2)]
    assert errors == {"E": 1}


def test_read_timings_keeps_how_late_an_open_loop_request_left(tmp_path: Path) -> None:
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"timings": [[1.5, 0.25, True, 2, 3.5], [2.0, 1.0, True, 2]], "errors": {}}))
    timings, _ = read_timings(path)
    assert [t.late_ms for t in timings] == [3.5, 0.0]


def test_open_loop_latency_counts_from_the_schedule_and_the_slo_uses_it() -> None:
    # 100 requests scheduled every 10 ms, each served in 1 ms; a stall makes the last 10 leave 40 ms late.
    timings = [Timing(100 + i * 0.01, 1.0, True, 1, late_ms=40.0 if i >= 90 else 0.0) for i in range(100)]
    closed = summarize(timings)
    assert closed["open_loop"] is None and closed["latency_ms"]["p99"] == 1.0
    assert check_slo(closed, p99_ms=5, max_fail_ratio=None)["passed"]

    summary = summarize(timings, target_rps=100.0)
    loop = summary["open_loop"]
    assert summary["latency_ms"]["p99"] == 1.0  # what the server took: unchanged
    assert loop["latency_corrected_ms"]["p50"] == 1.0 and loop["latency_corrected_ms"]["max"] == 41.0
    assert loop["late_ms"]["max"] == 40.0
    assert loop["sent_per_s"] == pytest.approx(100 / 0.991, rel=1e-3) and loop["kept_up"]
    slo = check_slo(summary, p99_ms=5, max_fail_ratio=None)
    assert not slo["passed"] and slo["broken"][0].startswith("p99 from the schedule 41.000 ms")
    assert not summarize(timings, target_rps=1000.0)["open_loop"]["kept_up"]  # sent ~101/s of 1000/s
