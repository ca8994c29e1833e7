"""Load-test reports: percentiles from raw per-request timings (microsecond resolution), SLO checks, ``report.json``.

Locust's own statistics round response times (to the millisecond below 100 ms, coarser above), which hides the
differences that matter for a sub-millisecond server; the locustfile therefore records every request's start time
and ``perf_counter`` duration itself, and this module computes everything from those raw timings.

A timing is ``(start_s, latency_ms, ok, records, late_ms)``: wall-clock start (seconds since the epoch), duration in
milliseconds, success, records carried, and, in an open-loop run (``--target-rps``), how far behind its schedule the
request was sent. Closed-loop users (the default) send the next request when the last answer is in, so a slow
server also slows the load and its slowest moments are under-sampled ("coordinated omission"); an open-loop run
sends on a fixed schedule, and ``latency + late`` is what a request arriving on time would have waited: the
``latency_corrected_ms`` of its report, which its p99 objective is checked against. Percentiles use linear
interpolation between order statistics (``numpy.percentile``'s default) and are rounded to the microsecond.

Example:
    >>> timings = [Timing(start_s=float(i), latency_ms=float(i + 1), ok=True, records=2) for i in range(100)]
    >>> latency_summary([t.latency_ms for t in timings])["p50"]
    50.5
    >>> summarize(timings)["records"]
    200
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "max", "min", "mean")
REPORT_KEYS = (
    "kind",
    "protocol",
    "url",
    "model",
    "version",
    "users",
    "spawn_rate",
    "records_per_request",
    "scenario_mix",
    "duration_s",
    "warmup_s",
    "measured_s",
    "requests",
    "failures",
    "fail_ratio",
    "records",
    "requests_per_s",
    "records_per_s",
    "latency_ms",
    "open_loop",
    "client",
    "errors",
    "server",
    "slo",
    "host",
    "providers",
    "command",
    "started_at",
    "locust",
)
"""The keys of ``report.json``, in order."""


@dataclass(frozen=True)
class Timing:
    """One request as measured by the load generator."""

    start_s: float
    latency_ms: float
    ok: bool
    records: int
    late_ms: float = 0.0


def _round_us(value: float) -> float:
    return round(float(value), 3)


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """``p50``, ``p90``, ``p95``, ``p99``, ``max``, ``min`` and ``mean`` in ms (rounded to the µs); None when empty.

    Example:
        >>> latency_summary([1.0, 2.0, 3.0, 4.0])["p99"]
        3.97
    """
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(LATENCY_KEYS)
    out: dict[str, float | None] = {key: _round_us(np.percentile(values, q)) for key, q in PERCENTILES.items()}
    out["max"] = _round_us(values.max())
    out["min"] = _round_us(values.min())
    out["mean"] = _round_us(values.mean())
    return out


def measured(timings: Iterable[Timing], warmup_s: float = 0.0) -> list[Timing]:
    """The timings that started at least ``warmup_s`` after the first request, sorted by start time."""
    ordered = sorted(timings, key=lambda t: t.start_s)
    if not ordered or warmup_s <= 0:
        return ordered
    cut = ordered[0].start_s + warmup_s
    return [t for t in ordered if t.start_s >= cut]


def summarize(timings: Sequence[Timing], warmup_s: float = 0.0, target_rps: float | None = None) -> dict[str, Any]:
    """Counts, throughput and latency percentiles of the measured window.

    Throughput divides by the window from the first measured start to the last measured end. Latency percentiles
    are over successful requests only (a refused connection is fast and would flatter them); failures are counted.

    Args:
        timings: every request of the run.
        warmup_s: leave out requests that started in the first seconds.
        target_rps: the schedule of an open-loop run (None: closed loop, ``open_loop`` is None).

    Returns:
        ``requests``, ``failures``, ``fail_ratio``, ``records`` (of successful requests), ``measured_s``,
        ``requests_per_s``, ``records_per_s`` (both of successful requests), ``latency_ms`` and ``open_loop``:
        ``target_rps``, ``kept_up`` (at least 95 % of the target sent), ``late_ms`` (how far behind schedule
        requests left) and ``latency_corrected_ms`` (latency counted from the scheduled send time).
    """
    window = measured(timings, warmup_s)
    ok = [t for t in window if t.ok]
    failures = len(window) - len(ok)
    if window:
        end = max(t.start_s + t.latency_ms / 1000.0 for t in window)
        seconds = max(end - window[0].start_s, 1e-9)
    else:
        seconds = 0.0
    records = sum(t.records for t in ok)
    return {
        "requests": len(window),
        "failures": failures,
        "fail_ratio": round(failures / len(window), 6) if window else 0.0,
        "records": records,
        "measured_s": round(seconds, 3),
        "requests_per_s": round(len(ok) / seconds, 2) if seconds else 0.0,
        "records_per_s": round(records / seconds, 2) if seconds else 0.0,
        "latency_ms": latency_summary([t.latency_ms for t in ok]),
        "open_loop": None if target_rps is None else _open_loop(window, ok, seconds, target_rps),
    }


def _open_loop(window: list[Timing], ok: list[Timing], seconds: float, target_rps: float) -> dict[str, Any]:
    sent_per_s = len(window) / seconds if seconds else 0.0
    return {
        "target_rps": target_rps,
        "sent_per_s": round(sent_per_s, 2),
        "kept_up": sent_per_s >= 0.95 * target_rps,
        "late_ms": latency_summary([t.late_ms for t in window]),
        "latency_corrected_ms": latency_summary([t.latency_ms + t.late_ms for t in ok]),
    }


def check_slo(summary: dict[str, Any], p99_ms: float | None, max_fail_ratio: float | None) -> dict[str, Any]:
    """Which service-level objectives the summary breaks.

    A run without one successful request breaks every objective given (there is no p99 to trust). An open-loop
    run's p99 is the corrected one (counted from the scheduled send time).

    Returns:
        ``{"p99_ms": ..., "max_fail_ratio": ..., "passed": bool, "broken": [reasons]}``.
    """
    broken: list[str] = []
    open_loop = summary.get("open_loop")
    latency = open_loop["latency_corrected_ms"] if open_loop else summary["latency_ms"]
    p99, which = latency.get("p99"), "p99 from the schedule" if open_loop else "p99"
    if p99_ms is not None:
        if p99 is None:
            broken.append(f"{which}: no successful request")
        elif p99 > p99_ms:
            broken.append(f"{which} {p99:.3f} ms > {p99_ms:g} ms")
    if max_fail_ratio is not None:
        if summary["requests"] == 0:
            broken.append("fail ratio: no request completed")
        elif summary["fail_ratio"] > max_fail_ratio:
            broken.append(f"fail ratio {summary['fail_ratio']:.4f} > {max_fail_ratio:g}")
    return {"p99_ms": p99_ms, "max_fail_ratio": max_fail_ratio, "passed": not broken, "broken": broken}


def read_timings(path: Path) -> tuple[list[Timing], dict[str, int]]:
    """The timings and error counts the locustfile wrote (``{"timings": [[start, ms, ok, records, late]], "errors"}``;
    ``late`` may be absent)."""
    data = json.loads(path.read_text())
    timings = [
        Timing(float(row[0]), float(row[1]), bool(row[2]), int(row[3]), float(row[4]) if len(row) > 4 else 0.0)
        for row in data.get("timings", [])
    ]
    return timings, {str(k): int(v) for k, v in data.get("errors", {}).items()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def host_info() -> dict[str, Any]:
    """CPU (model name, cores), GPUs (``nvidia-smi``; empty when none), load average, OS and Python of this machine.

    The 1-minute load average is recorded because a load test on a shared host measures its neighbours too.
    """
    gpus = _gpus()
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "gpus": gpus,
        "gpu": ", ".join(gpus) or "none",
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def onnxruntime_providers() -> dict[str, Any]:
    """ONNX Runtime's version and available execution providers on this host (``{}`` when not installed)."""
    try:
        import onnxruntime as ort  # type: ignore[import-untyped]
    except ImportError:
        return {}
    return {"onnxruntime": ort.__version__, "available": list(ort.get_available_providers())}


def build_report(summary: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``report.json``'s content: ``fields`` and ``summary`` in :data:`REPORT_KEYS` order (missing keys -> None)."""
    merged = {**fields, **summary}
    unknown = sorted(set(merged) - set(REPORT_KEYS))
    if unknown:
        raise ValueError(f"not report keys: {unknown}")
    return {key: merged.get(key) for key in REPORT_KEYS}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as strict JSON (NaN and infinities as null); create the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    return path
