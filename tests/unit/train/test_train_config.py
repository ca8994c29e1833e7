"""Run configs: every key checked, file and CLI values merged, mismatches refused with the field named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtlrec.errors import ConfigError
from mtlrec.train.config import build_run_config, load_run_config


def test_build_run_config_applies_overrides_when_given() -> None:
    cfg = build_run_config("mmoe", {"train": {"epochs": 5}}, {"epochs": 2, "lr": None})
    assert cfg.train.epochs == 2
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model_name == "mmoe"


def test_build_run_config_refuses_unknown_model_key() -> None:
    with pytest.raises(ConfigError, match=r"model: num_expertz: unknown key"):
        build_run_config("mmoe", {"model": {"num_expertz": 3}})


def test_build_run_config_refuses_unknown_train_key() -> None:
    with pytest.raises(ConfigError, match=r"train: learning_rate: unknown key"):
        build_run_config("mmoe", {"train": {"learning_rate": 0.1}})


def test_build_run_config_refuses_unknown_section() -> None:
    with pytest.raises(ConfigError, match="unknown top-level keys: optim"):
        build_run_config("mmoe", {"optim": {}})


def test_build_run_config_refuses_model_mismatch() -> None:
    with pytest.raises(ConfigError, match=r"model\.name is `mmoe` but `esmm`"):
        build_run_config("esmm", {"model": {"name": "mmoe"}})


def test_build_run_config_needs_a_model() -> None:
    with pytest.raises(ConfigError, match="no model given"):
        build_run_config(None, {})


def test_load_run_config_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "nope.yaml", "mmoe")


def test_load_run_config_refuses_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: mmoe}\ntrain: {epochs: many}\n")
    with pytest.raises(ConfigError, match="train: epochs"):
        load_run_config(path, None)


CONFIGS = sorted(Path(__file__).resolve().parents[3].glob("configs/*/*.yaml"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.stem.endswith("-search")])
def test_shipped_run_configs_validate(path: Path) -> None:
    cfg = load_run_config(path, None)
    assert cfg.model_name == path.stem.split("-", 1)[0]  # <model>.yaml or <model>-<variant>.yaml


def test_generated_configs_are_up_to_date() -> None:
    """configs/<dataset>/<model>.yaml written by scripts/make_configs.py match its tables (none missing or edited)."""
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "make_configs.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("-search")])
def test_shipped_search_configs_validate(path: Path) -> None:
    from mtlrec.nas.search import load_search_config

    load_search_config(path)
