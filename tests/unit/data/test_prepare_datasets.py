"""``prepare`` end to end for every built-in dataset: load, fit on train, encode, write, reopen, batch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlrec.data.dataset import open_prepared
from mtlrec.data.loaders import list_datasets
from mtlrec.data.prepare import prepare
from mtlrec.errors import DataError
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS

CensusWriter = Callable[..., Path]


def test_every_builtin_dataset_is_registered() -> None:
    names = [info.name for info in list_datasets()]
    assert {"census-income", "synthetic", "tabular"} <= set(names)


def test_prepare_synthetic_then_open_and_batch(tmp_path: Path) -> None:
    result = prepare("synthetic", None, tmp_path, seed=0, rows=5000)
    data = open_prepared(tmp_path)
    assert data.schema == result.schema and data.schema.is_fitted
    assert data.schema.num_scenarios == 3
    train = data.split("train")
    assert len(train) == 4000 and len(data.split("val")) == 500 and len(data.split("test")) == 500
    assert set(train.features) == {SPARSE_IDS, DENSE, SCENARIO}
    assert set(train.labels) == {"ctr", "cvr"}
    sparse = train.features[SPARSE_IDS]
    assert sparse.dtype == torch.int64 and sparse.shape == (4000, len(data.schema.sparse))
    assert bool((sparse >= 0).all()) and bool((sparse < torch.tensor(data.schema.vocab_sizes())).all())
    assert bool(torch.isfinite(train.features[DENSE]).all())
    assert bool((train.labels["cvr"] <= train.labels["ctr"]).all())
    batch = next(train.batches(512, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert batch.size == 512
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["rows"] == {"train": 4000, "val": 500, "test": 500}
    assert info["schema_hash"] == data.schema.hash()
    summary = result.summary["train"]
    assert 0.05 < summary["tasks"]["ctr"] < 0.2
    assert 0.1 < summary["tasks"]["cvr"] < 0.4  # among clicks
    assert set(summary["scenarios"]) == {"scenario_0", "scenario_1", "scenario_2"}


def test_prepare_synthetic_is_deterministic(tmp_path: Path) -> None:
    prepare("synthetic", None, tmp_path / "a", seed=4, rows=2000)
    prepare("synthetic", None, tmp_path / "b", seed=4, rows=2000)
    for name in ("schema.json", "preprocessor.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    a, b = open_prepared(tmp_path / "a").split("test"), open_prepared(tmp_path / "b").split("test")
    for key in a.features:
        assert torch.equal(a.features[key], b.features[key])


def test_prepare_census_on_tiny_upstream_files(tmp_path: Path, write_census: CensusWriter) -> None:
    source = write_census(train_rows=60, test_rows=40, suffix=".bz2")
    result = prepare("census-income", source, tmp_path / "out", seed=0)
    data = open_prepared(tmp_path / "out")
    assert data.schema.hash() == result.schema.hash()
    train = data.split("train")
    assert len(train) == 60 and len(data.split("val")) == 20 and len(data.split("test")) == 20
    assert set(train.features) == {SPARSE_IDS, DENSE}
    assert train.labels["income"].mean().item() == pytest.approx(15 / 60)  # i % 4 == 0
    assert train.labels["never_married"].mean().item() == pytest.approx(12 / 60)  # i % 5 == 0
    assert train.features[DENSE].shape == (60, 7)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["dataset"] == "census-income" and "instance_weight" in info["notes"]["removed_inputs"]


def test_prepare_tabular_from_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    pd.DataFrame(
        {
            "user": rng.choice(["a", "b", "c"], n),
            "price": rng.lognormal(1, 1, n),
            "click": rng.integers(0, 2, n),
        }
    ).to_csv(tmp_path / "rows.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "files: {path: rows.csv}\nsparse: [user]\ndense: [{name: price, normalization: log1p}]\n"
        "tasks: [{name: ctr, label: click}]\n"
    )
    prepare("tabular", spec, tmp_path / "out", seed=0)
    data = open_prepared(tmp_path / "out")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [96, 12, 12]
    assert data.schema.vocab_sizes() == [5]


def test_prepare_refuses_splits_left_empty_by_rows(tmp_path: Path, write_census: CensusWriter) -> None:
    with pytest.raises(DataError, match="val split is empty"):
        prepare("census-income", write_census(), tmp_path / "out", rows=1)
