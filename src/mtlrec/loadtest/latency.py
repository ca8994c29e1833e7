"""``mtlrec bench latency``: in-process latency of every runtime of one exported model, per batch size.

The floor that served latency is compared with: no HTTP, no JSON, no transform, one runner call per measurement on
realistic tensors (raw records from the model's schema encoded by its own preprocessor, :mod:`.payloads`).

Runners, each skipped with a note when it cannot run:

* ``onnxruntime``: ``<model>`` (``model.onnx``) through :class:`~mtlrec.serving.runners.OnnxRuntimeRunner`;
* ``torchscript``: ``<model>_torchscript`` (or ``<model>`` when it holds ``model.pt``) through
  :class:`~mtlrec.serving.runners.TorchScriptRunner`;
* ``eager``: the repository holds no weights for eager PyTorch, so the source run named by the version's
  ``manifest.json`` (``source_run.path``) is loaded when it still exists.

Each (runner, batch size) is warmed up, then called until ``seconds`` have passed (at least
:data:`MIN_ITERATIONS`, at most :data:`MAX_ITERATIONS` calls). ``report.json`` holds one entry per runner and batch
size with p50/p90/p95/p99/max (ms, µs resolution) and rows/s (batch size / mean latency).

Example::

    report = bench_latency(LatencyOptions(repo=Path("model_repository"), model="mmoe", out=Path("bench")))
    report["entries"][0]    # {"runner": "onnxruntime", "batch_size": 1, "latency_ms": {...}, "rows_per_s": ...}
"""

from __future__ import annotations

import gc
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from mtlrec.errors import ConfigError, MtlrecError
from mtlrec.loadtest.payloads import encode_frame, load_model_files, raw_records
from mtlrec.loadtest.report import host_info, latency_summary, onnxruntime_providers, write_report
from mtlrec.serving.runners import RunnerError

WARMUP_ITERATIONS = 5
MIN_ITERATIONS = 5
MAX_ITERATIONS = 5000
LATENCY_REPORT_KEYS = (
    "kind",
    "model",
    "version",
    "device",
    "batch_sizes",
    "entries",
    "notes",
    "host",
    "providers",
    "command",
    "started_at",
)
"""The keys of the latency ``report.json``, in order."""

Infer = Callable[[dict[str, np.ndarray]], Any]


@dataclass
class LatencyOptions:
    """One latency benchmark."""

    repo: Path
    model: str
    out: Path
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 64, 1024)
    seconds: float = 2.0
    threads: int | None = None
    seed: int = 0
    command: str = ""


def time_calls(infer: Infer, tensors: dict[str, np.ndarray], seconds: float) -> list[float]:
    """Latencies (ms) of repeated ``infer(tensors)`` calls after a warm-up, within a time budget."""
    for _ in range(WARMUP_ITERATIONS):
        infer(tensors)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while len(latencies) < MIN_ITERATIONS or (time.perf_counter() < end and len(latencies) < MAX_ITERATIONS):
        started = time.perf_counter()
        infer(tensors)
        latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies


def _eager(manifest: dict[str, Any], device: str, threads: int | None) -> tuple[Infer | None, str, str | None]:
    """An eager-PyTorch infer function from the source run, or None and the reason."""
    source = (manifest.get("source_run") or {}).get("path")
    if not source or not Path(source).is_dir():
        return None, "", f"eager skipped: the source run {source or '(not recorded)'} no longer exists"
    import torch

    from mtlrec.train.checkpoint import load_run

    if device == "cuda" and not torch.cuda.is_available():
        return None, "", "eager skipped: CUDA is not available to torch"
    if threads:
        torch.set_num_threads(threads)
    run = load_run(Path(source))
    model = run.model.to(device).eval()

    def infer(tensors: dict[str, np.ndarray]) -> Any:
        features = {k: torch.from_numpy(v).to(device) for k, v in tensors.items()}
        with torch.inference_mode():
            outputs = model(features)
        if device == "cuda":
            torch.cuda.synchronize()
        return {k: v.to("cpu") for k, v in outputs.items()}

    return infer, f"eager torch {torch.__version__} {device} ({source})", None


def bench_latency(options: LatencyOptions) -> dict[str, Any]:
    """Measure every runner at every batch size; write ``options.out / "report.json"``; return the report.

    Raises:
        CheckpointError: the model is not in the repository.
        RunnerError: ``cuda`` asked on a host without it.
    """
    from mtlrec.serving.repository import list_models, open_model

    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {list(options.batch_sizes)}")
    files = load_model_files(options.repo, options.model)
    frame = raw_records(files.schema, files.preprocessor, max(options.batch_sizes), options.seed)
    full = encode_frame(frame, files.preprocessor, files.spec)  # scenario [N]: the runners' convention
    models = list_models(options.repo)
    notes: list[str] = []
    version_dir = options.repo / options.model / str(files.version)
    manifest: dict[str, Any] = {}
    manifest_path = version_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    candidates = [("onnxruntime", options.model, "onnxruntime")]
    twin = f"{options.model}_torchscript"
    if (version_dir / "model.pt").is_file():
        candidates = [("torchscript", options.model, "torchscript")]
        notes.append(f"onnxruntime skipped: {options.model} holds no model.onnx")
    elif twin in models:
        candidates.append(("torchscript", twin, "torchscript"))
    else:
        notes.append(f"torchscript skipped: no {twin} in {options.repo} (export with --format both)")
    entries: list[dict[str, Any]] = []
    started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def measure(label: str, description: str, infer: Infer) -> None:
        for batch in options.batch_sizes:
            tensors = {k: np.ascontiguousarray(v[:batch]) for k, v in full.items()}
            latencies = time_calls(infer, tensors, options.seconds)
            mean_s = float(np.mean(latencies)) / 1000.0
            entries.append(
                {
                    "runner": label,
                    "description": description,
                    "batch_size": batch,
                    "iterations": len(latencies),
                    "latency_ms": latency_summary(latencies),
                    "rows_per_s": round(batch / mean_s, 1) if mean_s > 0 else None,
                }
            )

    # One runtime alive at a time: ONNX Runtime's spinning thread pool would otherwise steal the cores of the next.
    for label, name, backend in candidates:
        try:
            served = open_model(options.repo, name, backend=backend, threads=options.threads, device=options.device)
        except RunnerError:
            raise  # --device cuda without CUDA: the user's error, not a skip
        except MtlrecError as err:
            notes.append(f"{label} skipped: {err.message}")
            continue
        try:
            measure(label, served.runner.description, served.runner.infer)
        finally:
            served.close()
            del served
            gc.collect()
    eager, description, note = _eager(manifest, options.device, options.threads)
    if eager is not None:
        measure("eager", description, eager)
    elif note:
        notes.append(note)
    report = {
        "kind": "bench-latency",
        "model": options.model,
        "version": str(files.version),
        "device": options.device,
        "batch_sizes": list(options.batch_sizes),
        "entries": entries,
        "notes": notes,
        "host": host_info(),
        "providers": onnxruntime_providers(),
        "command": options.command or shlex.join(sys.argv),
        "started_at": started_at,
    }
    write_report(options.out / "report.json", report)
    return report


def latency_table(report: dict[str, Any]) -> Table:
    """One row per runner and batch size: p50 ... max (ms) and rows/s."""
    host = report["host"]
    title = f"{report['model']} v{report['version']} · {report['device']} · {host['cpu']} ({host['cores']} cores)"
    if host.get("gpus"):
        title += f" · {host['gpu']}"
    table = Table(title=title, caption="in-process latency in ms, one runner call per measurement")
    for col in ("runner", "batch", "calls", "p50", "p90", "p95", "p99", "max", "rows/s"):
        table.add_column(col, justify="left" if col == "runner" else "right", no_wrap=True)
    for entry in report["entries"]:
        lat = entry["latency_ms"]
        table.add_row(
            entry["runner"],
            str(entry["batch_size"]),
            f"{entry['iterations']:,}",
            *(f"{lat[k]:,.3f}" for k in ("p50", "p90", "p95", "p99", "max")),
            f"{entry['rows_per_s']:,.0f}",
        )
    return table
