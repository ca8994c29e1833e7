"""`mtlrec bench latency` on the exported tiny MMoE: one entry per runner and batch size; eager skipped with a note."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.loadtest.latency import LATENCY_REPORT_KEYS, LatencyOptions, bench_latency


def test_every_runner_and_batch_size(exported_repo: Path, tmp_path: Path) -> None:
    report = bench_latency(
        LatencyOptions(repo=exported_repo, model="mmoe", out=tmp_path, batch_sizes=(1, 8), seconds=0.05)
    )
    assert tuple(json.loads((tmp_path / "report.json").read_text())) == LATENCY_REPORT_KEYS
    assert [(e["runner"], e["batch_size"]) for e in report["entries"]] == [
        ("onnxruntime", 1), ("onnxruntime", 8), ("torchscript", 1), ("torchscript", 8), ("eager", 1), ("eager", 8)
    ]  # fmt: skip
    for entry in report["entries"]:
        assert set(entry["latency_ms"]) >= {"p50", "p90", "p95", "p99", "max"}
        assert entry["rows_per_s"] > 0 and entry["iterations"] >= 5
    assert report["device"] == "cpu" and report["host"]["cpu"] and report["notes"] == []


def test_eager_is_skipped_with_a_note_when_the_run_is_gone(exported_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    manifest_path = repo / "mmoe" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source_run"]["path"] = str(tmp_path / "deleted-run")
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["bench", "latency", "--repo", str(repo), "--model", "mmoe", "--batch-sizes", "2", "--seconds", "0.05",
              "--out", str(out)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert {e["runner"] for e in report["entries"]} == {"onnxruntime", "torchscript"}
    assert any("eager skipped" in n for n in report["notes"])


def test_cuda_on_a_host_without_it_is_one_clear_error(exported_repo: Path, tmp_path: Path) -> None:
    import onnxruntime
    import pytest

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has the CUDA provider: the error under test cannot happen here")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["bench", "latency", "--repo", str(exported_repo), "--model", "mmoe", "--device", "cuda",
              "--batch-sizes", "1", "--seconds", "0.05", "--out", str(out)]
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.exit_code == 2, text
    assert "cuda" in text.lower() and "Traceback" not in text
    assert not (out / "report.json").exists()
