"""The [scale] paths through the CLI: `train --nproc 2` gives a run that exports and serves; bad input is refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from cli_run import run_cli as run
from cli_run import tiny_mmoe_config
from mtlrec.data.dataset import SCHEMA_HASH_KEY, open_prepared
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError
from mtlrec.serving.app import create_app
from mtlrec.serving.repository import open_model
from mtlrec.serving.schemas import records_to_frame

RECORDS: list[dict[str, Any]] = [
    {"user_id": "u1", "item_id": 3, "price": 12.5, "scenario": "scenario_0"},
    {"user_id": "never-seen", "device": "ios", "scenario": "scenario_1"},
]


@pytest.fixture(scope="module")
def ddp_repo(sharded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mtlrec train --nproc 2` (gloo, 2 CPU processes) then `mtlrec export`, as a user runs them."""
    root = tmp_path_factory.mktemp("ddp_cli")
    config = tiny_mmoe_config(root / "mmoe.yaml", train="{epochs: 1, batch_size: 512, num_threads: 1}")
    code, out = run("train", "--data", sharded_dir, "--config", config, "--nproc", 2, "--out", root / "run")
    assert code == 0, out
    assert "launching 2 processes" in out
    code, out = run("export", root / "run", "--repo", root / "repo", "--format", "onnx")
    assert code == 0, out
    return root / "repo"


@pytest.fixture(scope="module")
def client(ddp_repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ddp_repo, max_delay_ms=1.0)) as c:
        yield c


@pytest.mark.timeout(240)
def test_a_two_process_ddp_run_exports_and_serves_like_any_run(client: TestClient, ddp_repo: Path) -> None:
    response = client.post("/v1/models/mmoe/predict", json={"records": RECORDS})
    assert response.status_code == 200, response.text
    served = open_model(ddp_repo, "mmoe")
    try:
        expected = served.predict_frame(records_to_frame(RECORDS, served.schema))
    finally:
        served.close()
    predictions = response.json()["predictions"]
    for task in ("ctr", "cvr"):
        got = np.array([p[task] for p in predictions], dtype=np.float32)
        assert np.all((got > 0) & (got < 1))
        np.testing.assert_allclose(got, expected[task], rtol=1e-6, atol=1e-7)


def test_nproc_above_the_cpus_is_refused_before_anything_is_written(sharded_dir: Path, tmp_path: Path) -> None:
    import os

    too_many = (os.cpu_count() or 1) + 1
    code, out = run("train", "--data", sharded_dir, "--model", "mmoe", "--nproc", too_many, "--out", tmp_path / "run")
    assert code == 2, out
    assert f"--nproc {too_many} is above this machine's" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def mixed_dir(sharded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the sharded data with one train shard replaced by a shard of another preparation."""
    other = tmp_path_factory.mktemp("other")
    prepare("synthetic", None, other, seed=1, rows=2_500, shard_rows=1_000, chunk_rows=700)
    assert open_prepared(other).schema.hash() != open_prepared(sharded_dir).schema.hash()
    mixed = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(sharded_dir, mixed)
    intruder = mixed / "train" / "part-00001.parquet"
    shutil.copyfile(other / "train" / "part-00000.parquet", intruder)
    assert pq.read_schema(intruder).metadata[SCHEMA_HASH_KEY.encode()].decode() == open_prepared(other).schema.hash()
    return mixed, intruder


def test_a_shard_with_another_schema_hash_is_named_and_nothing_is_trained(
    mixed_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    mixed, intruder = mixed_dir
    with pytest.raises(DataError, match=r"part-00001\.parquet was encoded with schema"):
        open_prepared(mixed).shards("train")
    open_prepared(mixed).shards("val")  # the untouched splits still read
    code, out = run("train", "--data", mixed, "--model", "mmoe", "--epochs", 1, "--out", tmp_path / "run")
    assert code == 2, out
    assert intruder.name in out and "another preparation" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_every_prepared_file_carries_its_schema_hash(sharded_dir: Path, single_file_dir: Path) -> None:
    for root in (sharded_dir, single_file_dir):
        data = open_prepared(root)
        for split in ("train", "val", "test"):
            for path in data.shards(split):
                assert pq.read_schema(path).metadata[SCHEMA_HASH_KEY.encode()].decode() == data.schema.hash()
