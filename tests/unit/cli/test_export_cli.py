"""``mtlrec export`` and ``mtlrec repo validate`` through the CLI: exit codes, messages, no tracebacks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cli_run import run_cli as run
from cli_run import tiny_mmoe_config
from mtlrec.export import quantize
from mtlrec.export.triton_config import parse, render


@pytest.fixture(scope="module")
def run_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_export")
    config = tiny_mmoe_config(root / "mmoe.yaml")
    code, out = run("train", "--data", synthetic_dir, "--config", config, "--out", root / "run")
    assert code == 0, out
    return root / "run"


@pytest.fixture(scope="module")
def repo(run_dir: Path) -> Path:
    repo = run_dir.parent / "repo"
    code, out = run("export", run_dir, "--repo", repo, "--format", "both", "--max-batch-size", "64")
    assert code == 0, out
    assert "version 1 added" in out and "mmoe_ensemble" in out
    return repo


def test_export_then_repo_validate_passes(repo: Path) -> None:
    assert sorted(p.name for p in repo.iterdir()) == ["mmoe", "mmoe_ensemble", "mmoe_preprocess", "mmoe_torchscript"]
    code, out = run("repo", "validate", repo)
    assert code == 0, out
    assert "4 models valid" in out


def test_export_options_reach_the_config(run_dir: Path, tmp_path: Path) -> None:
    args = ["--name", "ranker", "--instance-kind", "cpu", "--instances", "3", "--no-dynamic-batching"]
    code, out = run("export", run_dir, "--repo", tmp_path / "r", "--max-batch-size", "32", "--version", "7", *args)
    assert code == 0, out
    cfg = parse((tmp_path / "r" / "ranker" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 32 and not cfg.HasField("dynamic_batching")
    assert (cfg.instance_group[0].kind, cfg.instance_group[0].count) == (2, 3)  # KIND_CPU
    assert (tmp_path / "r" / "ranker" / "7" / "model.onnx").is_file()
    assert (tmp_path / "r" / "ranker_ensemble" / "7").is_dir()


def test_broken_repository_fails_validate_with_each_problem(repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(repo, broken)

    def edit(model: str, change: Any) -> None:
        path = broken / model / "config.pbtxt"
        cfg = parse(path.read_text())
        change(cfg)
        path.write_text(render(cfg))

    edit("mmoe", lambda cfg: setattr(cfg.input[0], "name", "sparse_x"))
    edit("mmoe_torchscript", lambda cfg: cfg.dynamic_batching.preferred_batch_size.append(128))

    def typo(cfg: Any) -> None:
        step = cfg.ensemble_scheduling.step[1]
        del step.output_map["ctr"]
        step.output_map["ctr_typo"] = "ctr"

    edit("mmoe_ensemble", typo)
    (broken / "mmoe_preprocess" / "1" / "model.py").unlink()

    code, out = run("repo", "validate", broken)

    assert code == 1, out
    assert "Traceback" not in out
    lines = out.splitlines()
    assert any(line.startswith("mmoe:") and "'sparse_x'" in line for line in lines), out
    assert "mmoe_torchscript: preferred_batch_size 128 > max_batch_size 64" in lines, out
    assert any(line.startswith("mmoe_ensemble:") and "'ctr_typo'" in line for line in lines), out
    assert "mmoe_preprocess: version 1 has no model.py" in lines, out


def test_export_of_missing_run_is_a_user_error(tmp_path: Path) -> None:
    code, out = run("export", tmp_path / "nope", "--repo", tmp_path / "r")
    assert code == 2 and "run directory not found" in out and "Traceback" not in out
    assert not (tmp_path / "r").exists()


def test_export_refuses_an_existing_version(run_dir: Path, repo: Path) -> None:
    code, out = run("export", run_dir, "--repo", repo, "--format", "both", "--version", "1", "--max-batch-size", "64")
    assert code == 2 and "already exists" in out and "add version 2" in out


def test_quantize_refused_above_threshold_writes_nothing(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def big_drop(*_: Any) -> dict[str, dict[str, float]]:
        return {"ctr": {"auc_fp32": 0.7, "auc_int8": 0.69, "delta": -0.01, "rows": 100.0}}

    monkeypatch.setattr(quantize, "quantization_auc_change", big_drop)
    code, out = run("export", run_dir, "--repo", tmp_path / "r", "--quantize", "int8", "--max-auc-drop", "0.002")
    assert code == 2, out
    assert "exceeds the allowed AUC drop" in out and "`ctr`" in out
    assert not (tmp_path / "r").exists()


def test_quantize_reports_auc_change_in_manifest(run_dir: Path, tmp_path: Path) -> None:
    code, out = run("export", run_dir, "--repo", tmp_path / "r", "--quantize", "int8", "--max-auc-drop", "1")
    assert code == 0, out
    assert "int8 AUC change" in out
    manifest = (tmp_path / "r" / "mmoe" / "1" / "manifest.json").read_text()
    assert '"mode": "int8"' in manifest and '"auc_change"' in manifest
    code, out = run("repo", "validate", tmp_path / "r")
    assert code == 0, out
