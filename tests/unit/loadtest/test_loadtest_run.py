"""End to end: `mtlrec loadtest --start-server` against the real `mtlrec serve` on a tiny exported model.

Two short bounded runs (2 users, 3 s): an impossible p99 objective exits 1, a lax one exits 0; both write
report.json with the documented keys and the plots.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.loadtest.report import REPORT_KEYS

# locust is only looked for, never imported here: importing it monkey-patches this process with gevent.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None or importlib.util.find_spec("matplotlib") is None,
    reason="the `load` extra (locust, matplotlib) is not installed",
)


def _run(repo: Path, out: Path, *extra: str) -> tuple[int, str, dict[str, object]]:
    args = ["loadtest", "--start-server", "--repo", str(repo), "--model", "mmoe", "--users", "2", "--duration", "3s"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return result.exit_code, result.output, report


@pytest.mark.slow
def test_slo_exit_codes_and_report(exported_repo: Path, tmp_path: Path) -> None:
    code, output, report = _run(exported_repo, tmp_path / "strict", "--p99-ms", "0.0001", "--records-per-request", "4")
    assert code == 1, output
    assert tuple(report) == REPORT_KEYS
    assert report["requests"] > 0 and report["failures"] == 0  # type: ignore[operator]
    assert report["records_per_request"] == 4 and report["model"] == "mmoe" and report["version"] == "1"
    assert not report["slo"]["passed"]  # type: ignore[index]
    assert (tmp_path / "strict" / "latency_over_time.png").is_file()
    assert (tmp_path / "strict" / "latency_histogram.png").is_file()

    code, output, report = _run(
        exported_repo, tmp_path / "lax", "--protocol", "v2-http", "--p99-ms", "60000", "--max-fail-ratio", "0.01"
    )
    assert code == 0, output
    assert report["protocol"] == "v2-http" and report["slo"]["passed"]  # type: ignore[index]
    assert report["server"]["rows_per_model_call"] >= 1  # type: ignore[index]
    assert "p99" in output or "req/s" in output


@pytest.mark.slow
def test_an_open_loop_run_keeps_its_schedule_and_reports_latency_from_it(exported_repo: Path, tmp_path: Path) -> None:
    # 40 requests/s from 2 users is far below what the server answers: a closed loop would send thousands.
    code, output, report = _run(exported_repo, tmp_path / "paced", "--target-rps", "40", "--p99-ms", "60000")
    assert code == 0, output
    loop = report["open_loop"]
    assert isinstance(loop, dict) and loop["target_rps"] == 40 and loop["kept_up"], loop
    measured_s = float(report["measured_s"])  # type: ignore[arg-type]
    assert 0.8 * 40 * measured_s <= report["requests"] <= 40 * measured_s + 2  # type: ignore[operator]
    corrected, served = loop["latency_corrected_ms"], report["latency_ms"]
    assert corrected["p50"] >= served["p50"] and corrected["max"] >= served["max"]  # type: ignore[index]
    client = report["client"]
    assert isinstance(client, dict) and client["cpu_s"] > 0 and client["host_cores"] >= 1
    assert report["server"]["cores_used"] is not None  # type: ignore[index]
    assert "target requests/s" in output and "CPU cores used" in output
