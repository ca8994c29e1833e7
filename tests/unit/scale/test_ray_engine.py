"""``score --engine ray``: Ray Data with an actor pool gives the local engine's scores, id column first."""

from __future__ import annotations

import os
import sys
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

from mtlrec.scoring.ray_engine import RayScorer, score_with_ray  # noqa: E402

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


def _parquet_folder(raw: pd.DataFrame, folder: Path, starts: tuple[int, ...]) -> Path:
    """``raw`` split at ``starts`` into ``folder/part-<i>.parquet``."""
    folder.mkdir()
    for i, (start, end) in enumerate(zip(starts, (*starts[1:], len(raw)), strict=True)):
        raw.iloc[start:end].to_parquet(folder / f"part-{i}.parquet")
    return folder


def test_ray_scores_a_parquet_folder_and_a_csv_like_the_local_engine(
    repo: Path, local_ray: None, tmp_path: Path
) -> None:
    raw = generate_impressions(3_000, seed=7).drop(columns=["click", "conversion"])
    folder = _parquet_folder(raw, tmp_path / "events", (0, 1_800))
    raw.iloc[:500].to_csv(tmp_path / "events.csv", index=False)
    local = pd.read_parquet(score_file(folder / "part-0.parquet", repo, "mmoe", tmp_path / "local.parquet").out)
    local = pd.concat(
        [local, pd.read_parquet(score_file(folder / "part-1.parquet", repo, "mmoe", tmp_path / "l1.parquet").out)]
    )

    result = score_with_ray(folder, repo, "mmoe", tmp_path / "scores", num_workers=2, batch_size=700)
    scored = pd.read_parquet(tmp_path / "scores")
    assert result.rows == len(scored) == len(raw) and result.files >= 1
    # Exactly one output row per input row: none lost, none duplicated.
    assert scored["impression_id"].is_unique and set(scored["impression_id"]) == set(raw["impression_id"])
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


class DiesOnce(RayScorer):
    """Kills its actor process on the first batch of the whole job (a marker file makes it once, across restarts)."""

    marker = ""

    def __call__(self, batch: object) -> object:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # the process dies as if killed: no exception, no clean-up
        return super().__call__(batch)  # type: ignore[arg-type]


def test_an_actor_that_dies_mid_run_is_replaced_and_the_output_is_complete(
    repo: Path, local_ray: None, tmp_path: Path
) -> None:
    raw = generate_impressions(2_000, seed=5).drop(columns=["click", "conversion"])
    folder = _parquet_folder(raw, tmp_path / "events", (0, 500, 1_000, 1_500))
    DiesOnce.marker = str(tmp_path / "died")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    try:
        result = score_with_ray(
            folder, repo, "mmoe", tmp_path / "scores", num_workers=2, batch_size=300, scorer=DiesOnce
        )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (tmp_path / "died").exists()  # an actor did die
    scored = pd.read_parquet(tmp_path / "scores")
    assert result.rows == len(scored) == len(raw)
    assert scored["impression_id"].is_unique and set(scored["impression_id"]) == set(raw["impression_id"])
    local = pd.read_parquet(score_file(folder / "part-0.parquet", repo, "mmoe", tmp_path / "l.parquet").out)
    merged = local.merge(scored, on="impression_id", suffixes=("_local", ""))
    assert len(merged) == 500 and np.allclose(merged["ctr"], merged["ctr_local"], atol=1e-6)


def test_an_empty_folder_and_an_unreachable_ray_address_fail_clearly_and_write_nothing(
    repo: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    runner = CliRunner()
    out = tmp_path / "scores"
    base = ["score", "--engine", "ray", "--repo", str(repo), "--model", "mmoe", "--out", str(out)]
    empty = runner.invoke(app, [*base[:1], str(tmp_path / "empty"), *base[1:]])
    assert empty.exit_code == 2 and "holds no .csv" in empty.output, empty.output
    events = tmp_path / "events.parquet"
    generate_impressions(20, seed=3).to_parquet(events)
    # A port nothing listens on (bound, then closed): refused at once, not after ray.init's minute of retries.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = runner.invoke(app, [*base[:1], str(events), *base[1:], "--ray-address", f"127.0.0.1:{port}"])
    assert unreachable.exit_code == 2 and "cannot reach the Ray cluster" in unreachable.output, unreachable.output
    malformed = runner.invoke(app, [*base[:1], str(events), *base[1:], "--ray-address", "head-without-port"])
    assert malformed.exit_code == 2 and "not host:port" in malformed.output
    assert not out.exists() and not list(tmp_path.glob(".scores.*"))
