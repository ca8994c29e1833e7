"""``score --engine ray``: Ray Data with an actor pool gives the local engine's scores, id column first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.data.dataset import open_prepared
from mtlrec.data.loaders.synthetic import generate_impressions
from mtlrec.errors import DataError
from mtlrec.export.api import ExportOptions, export_run
from mtlrec.serving.score import score_file
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import train

ray = pytest.importorskip("ray", reason="ray (the [ray] extra) is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) is not installed")

from mtlrec.scoring.ray_engine import score_with_ray  # noqa: E402

TINY_MMOE = {"embed_dim": 4, "num_experts": 2, "expert": {"hidden": [8]}, "tower": {"hidden": [4]}}


@pytest.fixture(scope="module")
def repo(sharded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MMoE trained one epoch on the sharded data, exported as ONNX."""
    root = tmp_path_factory.mktemp("ray_export")
    config = build_run_config("mmoe", {"model": TINY_MMOE, "train": {"epochs": 1, "batch_size": 512}})
    train(open_prepared(sharded_dir), config, root / "run")
    return export_run(root / "run", root / "repo", ExportOptions(format="onnx", batch_sizes=(1, 7))).repo


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module: 2 workers + 1 reader (the engine leaves a Ray it did not start running)."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_scores_a_parquet_folder_and_a_csv_like_the_local_engine(
    repo: Path, local_ray: None, tmp_path: Path
) -> None:
    raw = generate_impressions(3_000, seed=7).drop(columns=["click", "conversion"])
    folder = tmp_path / "events"
    folder.mkdir()
    raw.iloc[:1_800].to_parquet(folder / "part-0.parquet")
    raw.iloc[1_800:].to_parquet(folder / "part-1.parquet")
    raw.iloc[:500].to_csv(tmp_path / "events.csv", index=False)
    local = pd.read_parquet(score_file(folder / "part-0.parquet", repo, "mmoe", tmp_path / "local.parquet").out)
    local = pd.concat(
        [local, pd.read_parquet(score_file(folder / "part-1.parquet", repo, "mmoe", tmp_path / "l1.parquet").out)]
    )

    result = score_with_ray(folder, repo, "mmoe", tmp_path / "scores", num_workers=2, batch_size=700)
    scored = pd.read_parquet(tmp_path / "scores")
    assert result.rows == len(scored) == len(raw) and result.files >= 1
    assert list(scored.columns) == ["impression_id", "ctr", "cvr"]
    merged = scored.merge(local, on="impression_id", suffixes=("", "_local"))
    assert len(merged) == len(raw)
    for task in ("ctr", "cvr"):
        assert np.allclose(merged[task], merged[f"{task}_local"], atol=1e-6)

    from_csv = score_with_ray(tmp_path / "events.csv", repo, "mmoe", tmp_path / "csv_scores", num_workers=1)
    csv_scores = pd.read_parquet(from_csv.out)
    # CSV ids are carried as written (text), as the local engine does ("007" stays "007").
    assert csv_scores["impression_id"].map(type).eq(str).all()
    csv_scores["impression_id"] = csv_scores["impression_id"].astype("int64")
    csv_scores = csv_scores.merge(local, on="impression_id", suffixes=("", "_local"))
    assert len(csv_scores) == 500 and np.allclose(csv_scores["ctr"], csv_scores["ctr_local"], atol=1e-6)


def test_ray_engine_needs_the_id_column_and_the_model_columns(repo: Path, tmp_path: Path) -> None:
    raw = generate_impressions(50, seed=1)
    raw.drop(columns=["impression_id"]).to_parquet(tmp_path / "no_id.parquet")
    with pytest.raises(DataError, match="no id column"):
        score_with_ray(tmp_path / "no_id.parquet", repo, "mmoe", tmp_path / "out")
    raw.drop(columns=["price"]).to_parquet(tmp_path / "no_price.parquet")
    with pytest.raises(DataError, match="lacks the columns price"):
        score_with_ray(tmp_path / "no_price.parquet", repo, "mmoe", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_score_cli_keeps_local_as_the_default_and_refuses_a_folder_there(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    generate_impressions(20, seed=2).to_parquet(folder / "a.parquet")
    runner = CliRunner()
    args = ["score", str(folder), "--repo", str(repo), "--model", "mmoe", "--out", str(tmp_path / "o.parquet")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--engine ray" in result.output
    skip = runner.invoke(app, [*args, "--engine", "ray", "--on-error", "skip"])
    assert skip.exit_code == 2 and "not supported" in skip.output
