"""``mtlrec search`` and ``mtlrec train --arch``: end to end on generated data, and their answers to bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_run import run_cli as run

SEARCH_YAML = """
space: {embed_dim: 4, num_experts: 2, num_blocks: 1, block_dim: 8, candidate_ops: [identity, "mlp:8"],
        tower: {hidden: [8]}}
search: {warmup_epochs: 1, search_epochs: 1, batch_size: 512, train_rows: 2000, num_threads: 1}
"""


@pytest.fixture(scope="module")
def searched(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("search")
    (root / "search.yaml").write_text(SEARCH_YAML)
    code, text = run("search", "--data", synthetic_dir, "--config", root / "search.yaml", "--out", root / "arch.json")
    assert code == 0, text
    assert "AutoMTL architecture" in text and "heads" in text and "architecture written to" in text
    assert "epoch  2 search" in text  # the per-epoch line with the architecture's state
    return root / "arch.json"


def test_search_writes_the_architecture_its_log_and_weights(searched: Path) -> None:
    stored = json.loads(searched.read_text())
    assert stored["format"] == "mtlrec.automtl-architecture" and stored["schema_hash"]
    assert (searched.parent / "arch.search.jsonl").is_file()
    assert (searched.parent / "arch.supernet.safetensors").is_file()


@pytest.mark.parametrize("inherit", [False, True])
def test_train_arch_trains_the_searched_model(
    searched: Path, synthetic_dir: Path, tmp_path: Path, inherit: bool
) -> None:
    flags = ["--init-from-supernet"] if inherit else []
    code, text = run(
        "train", "--data", synthetic_dir, "--arch", searched, "--epochs", "1", "--out", tmp_path / "run", *flags
    )
    assert code == 0, text
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_name"] == "automtl"
    assert config["model"]["architecture"]["schema_hash"] == json.loads(searched.read_text())["schema_hash"]
    assert ("from arch.supernet.safetensors" in text) == inherit


def test_train_arch_refuses_another_model_other_data_and_a_lone_init_flag(
    searched: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, text = run("train", "--data", synthetic_dir, "--arch", searched, "--model", "mmoe", "--out", out)
    assert code == 2 and "--model is `mmoe`" in text and "Traceback" not in text
    code, text = run("train", "--data", synthetic_dir, "--model", "automtl", "--init-from-supernet", "--out", out)
    assert code == 2 and "--init-from-supernet needs --arch" in text
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(searched.read_text()), "schema_hash": "0123456789abcdef"}))
    code, text = run("train", "--data", synthetic_dir, "--arch", other, "--out", out)
    assert code == 2 and "was searched on data with schema 0123456789abcdef" in text
    code, text = run("train", "--data", synthetic_dir, "--arch", other, "--init-from-supernet", "--out", out)
    assert code == 2


def test_search_names_a_bad_config_key(synthetic_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("search: {epochz: 3}\n")
    code, text = run("search", "--data", synthetic_dir, "--config", tmp_path / "bad.yaml", "--out", tmp_path / "a.json")
    assert code == 2 and "search.epochz: unknown key" in text and "Traceback" not in text
