"""Plots of one load test from its raw timings: latency over time and the latency histogram (PNG, matplotlib Agg).

* ``latency_over_time.png``: every request as a dot (failures in red) and the per-second p50 and p99, over seconds
  since the first request; the warm-up, when excluded from the report, is shaded;
* ``latency_histogram.png``: successful requests' latency on log-spaced bins, with p50, p99 and max marked.

matplotlib is optional (the ``load`` extra) and imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.loadtest.report import Timing, latency_summary

OVER_TIME = "latency_over_time.png"
HISTOGRAM = "latency_histogram.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        from mtlrec.loadtest.runner import LoadTestError

        raise LoadTestError(
            "matplotlib is not installed; the load-test plots need it",
            hint="pip install 'mtlrec[load]' (or: pip install matplotlib), or pass --no-plots",
        ) from None
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _per_second(starts: np.ndarray, latencies: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seconds = np.floor(starts).astype(np.int64)
    xs, p50s, p99s = [], [], []
    for second in np.unique(seconds):
        chosen = latencies[seconds == second]
        xs.append(second + 0.5)
        p50s.append(np.percentile(chosen, 50))
        p99s.append(np.percentile(chosen, 99))
    return np.asarray(xs), np.asarray(p50s), np.asarray(p99s)


def write_plots(timings: Sequence[Timing], out: Path, title: str = "", warmup_s: float = 0.0) -> list[Path]:
    """Write :data:`OVER_TIME` and :data:`HISTOGRAM` into ``out``; return their paths.

    Args:
        timings: every request of the run (warm-up included; it is shaded, not dropped).
        out: the output folder (created).
        title: the plots' title (model, protocol, users).
        warmup_s: seconds at the start excluded from the report.
    """
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(timings, key=lambda t: t.start_s)
    t0 = ordered[0].start_s if ordered else 0.0
    starts = np.asarray([t.start_s - t0 for t in ordered], dtype=np.float64)
    latencies = np.asarray([t.latency_ms for t in ordered], dtype=np.float64)
    ok = np.asarray([t.ok for t in ordered], dtype=bool)

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    if ok.any():
        ax.scatter(starts[ok], latencies[ok], s=3, alpha=0.25, color="tab:blue", label="request", rasterized=True)
        xs, p50s, p99s = _per_second(starts[ok], latencies[ok])
        ax.plot(xs, p50s, color="tab:green", linewidth=1.5, label="p50 per second")
        ax.plot(xs, p99s, color="tab:orange", linewidth=1.5, label="p99 per second")
    if (~ok).any():
        ax.scatter(starts[~ok], latencies[~ok], s=8, color="tab:red", marker="x", label="failed")
    if warmup_s > 0:
        ax.axvspan(0, warmup_s, color="grey", alpha=0.15, label="warm-up (not reported)")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(f"Latency over time{': ' + title if title else ''}")
    ax.grid(True, which="both", alpha=0.3)
    if ordered:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    over_time = out / OVER_TIME
    fig.savefig(over_time)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    measured = [t.latency_ms for t in ordered if t.ok and t.start_s - t0 >= warmup_s]
    if measured:
        values = np.asarray(measured)
        low, high = max(values.min(), 1e-3), max(values.max(), 1e-3 * 1.01)
        bins = np.geomspace(low, high * 1.0001, 60) if high > low else 10
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        summary = latency_summary(values)
        for key, color in (("p50", "tab:green"), ("p99", "tab:orange"), ("max", "tab:red")):
            value = summary[key]
            if value is not None:
                ax.axvline(value, color=color, linestyle="--", label=f"{key} {value:.3f} ms")
        ax.legend(fontsize=8)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title(f"Latency histogram{': ' + title if title else ''}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    histogram = out / HISTOGRAM
    fig.savefig(histogram)
    plt.close(fig)
    return [over_time, histogram]
