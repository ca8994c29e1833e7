"""The CLI end to end on generated data, and its answers to bad input: one clear message, exit 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlrec import __version__
from mtlrec.cli.app import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(code: int, out: str, err: str, *needles: str) -> None:
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, (needle, text)


def test_version_prints_the_package_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and __version__ in out


def test_data_list_shows_every_dataset_with_tasks() -> None:
    code, out, _ = run("data", "list")
    assert code == 0
    for needle in ("census-income", "synthetic", "tabular", "never_married", "ctr"):
        assert needle in out


def test_models_list_shows_registered_models() -> None:
    code, out, _ = run("models", "list")
    assert code == 0
    for name in ("shared_bottom", "mmoe", "esmm"):
        assert name in out


def test_prepare_train_evaluate_json_end_to_end(tmp_path: Path) -> None:
    code, out, err = run("data", "prepare", "synthetic", "--out", tmp_path / "data", "--rows", "3000")
    assert code == 0, out + err
    assert "ctr" in out and "scenario" in out
    config = tmp_path / "mmoe.yaml"
    config.write_text("model: {name: mmoe, num_experts: 2, expert: {hidden: [16]}}\ntrain: {epochs: 1}\n")
    code, out, err = run("train", "--data", tmp_path / "data", "--config", config, "--out", tmp_path / "run")
    assert code == 0, out + err
    code, out, err = run("evaluate", tmp_path / "run", "--split", "test", "--json")
    assert code == 0, err
    payload = json.loads(out)  # exactly one JSON object on stdout
    assert set(payload) == {"split", "tasks", "scenarios"}
    assert payload["split"] == "test"
    assert set(payload["tasks"]["ctr"]) == {"auc", "logloss", "rows"}
    code, out, _ = run("evaluate", tmp_path / "run", "--split", "val")
    assert code == 0 and "cvr" in out


def test_train_names_an_unknown_config_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: {name: mmoe, n_experts: 3}\n")
    assert_user_error(*run("train", "--data", tmp_path, "--config", config, "--out", tmp_path / "r"), "n_experts")


def test_prepare_names_the_missing_upstream_files(tmp_path: Path) -> None:
    code, out, err = run("data", "prepare", "census-income", "--source", tmp_path, "--out", tmp_path / "o")
    assert_user_error(code, out, err, "census-income.data", str(tmp_path))


def test_prepare_refuses_a_label_used_as_feature(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("user,click\na,1\nb,0\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("files: {path: rows.csv}\nsparse: [user, click]\ntasks: [{name: ctr, label: click}]\n")
    code, out, err = run("data", "prepare", "tabular", "--source", spec, "--out", tmp_path / "o")
    assert_user_error(code, out, err, "label leakage", "click")


def test_prepare_refuses_an_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("user,click\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("files: {path: rows.csv}\nsparse: [user]\ntasks: [{name: ctr, label: click}]\n")
    code, out, err = run("data", "prepare", "tabular", "--source", spec, "--out", tmp_path / "o")
    assert_user_error(code, out, err, "empty")


def test_prepare_names_a_non_numeric_dense_value(tmp_path: Path) -> None:
    rows = "\n".join(f"u{i % 7},{i}.5,{i % 2}" for i in range(40))
    (tmp_path / "rows.csv").write_text("user,price,click\n" + rows + "\nu1,cheap,0\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "files: {train: rows.csv, val: rows.csv, test: rows.csv}\n"
        "sparse: [user]\ndense: [price]\ntasks: [{name: ctr, label: click}]\n"
    )
    code, out, err = run("data", "prepare", "tabular", "--source", spec, "--out", tmp_path / "o")
    assert_user_error(code, out, err, "price", "cheap")


@pytest.mark.parametrize("split", ["train", "bogus"])
def test_evaluate_refuses_other_splits(split: str, tmp_path: Path) -> None:
    assert_user_error(*run("evaluate", tmp_path, "--split", split), "--split")


def test_evaluate_names_a_missing_run(tmp_path: Path) -> None:
    assert_user_error(*run("evaluate", tmp_path / "nope"), "run directory not found")
