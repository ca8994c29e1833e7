"""Sharded prepared data: written chunk by chunk, read back whole or by rank slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlrec.data.dataset import ShardWriter, open_prepared, owned_slices
from mtlrec.data.loaders.base import get_dataset
from mtlrec.data.prepare import prepare
from mtlrec.data.preprocess import Preprocessor
from mtlrec.data.streaming import ChunkedLoader, StreamingFit
from mtlrec.errors import DataError

ROWS, SHARD_ROWS = 6_000, 1_000  # as conftest.py prepares them


def _sorted_rows(data: torch.Tensor) -> np.ndarray:
    """Rows of an [N, F] tensor in lexicographic order (to compare sets of rows)."""
    array = data.numpy()
    return array[np.lexsort(array.T[::-1])]


def test_prepare_writes_shards_of_at_most_shard_rows_when_asked(sharded_dir: Path) -> None:
    data = open_prepared(sharded_dir)
    shards = data.shards("train")
    assert [p.name for p in shards] == [f"part-{i:05d}.parquet" for i in range(len(shards))]
    assert data.num_rows("train") == round(ROWS * 0.8) and len(shards) == -(-data.num_rows("train") // SHARD_ROWS)
    assert all(pq.ParquetFile(p).metadata.num_rows <= SHARD_ROWS for p in shards)
    info = json.loads((sharded_dir / "dataset.json").read_text())
    assert info["shard_rows"] == SHARD_ROWS and info["streamed"] is True
    assert info["shards"]["val"] == [str(p.relative_to(sharded_dir)) for p in data.shards("val")]
    assert info["rows"] == {name: data.num_rows(name) for name in ("train", "val", "test")}


def test_streamed_prepare_holds_the_same_rows_and_preprocessor_as_in_memory(
    sharded_dir: Path, single_file_dir: Path
) -> None:
    streamed, loaded = open_prepared(sharded_dir), open_prepared(single_file_dir)
    assert streamed.schema.hash() == loaded.schema.hash()
    assert streamed.preprocessor.state.vocabularies == loaded.preprocessor.state.vocabularies
    for name, stats in loaded.preprocessor.state.dense_stats.items():
        other = streamed.preprocessor.state.dense_stats[name]
        assert other.fill_value == pytest.approx(stats.fill_value)  # the median sample held every value
        assert other.center == pytest.approx(stats.center, rel=1e-9) and other.scale == pytest.approx(stats.scale)
    for split in ("train", "val", "test"):  # the same rows in each split, in another order
        a, b = streamed.split(split), loaded.split(split)
        assert np.array_equal(_sorted_rows(a.features["sparse_ids"]), _sorted_rows(b.features["sparse_ids"]))


def test_rank_slices_cover_every_row_once_with_balanced_sizes(sharded_dir: Path) -> None:
    data = open_prepared(sharded_dir)
    shards = data.shards("train")
    world = 3
    parts = [owned_slices(shards, rank, world) for rank in range(world)]
    sizes = [sum(s.rows for s in p) for p in parts]
    assert sum(sizes) == data.num_rows("train") and max(sizes) - min(sizes) <= len(shards)
    whole = data.split("train").features["sparse_ids"]
    joined = torch.cat([data.split("train", rank, world).features["sparse_ids"] for rank in range(world)])
    assert np.array_equal(_sorted_rows(whole), _sorted_rows(joined))


def test_shard_writer_rolls_files_and_keeps_an_empty_split_readable(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "split", shard_rows=4)
    for start in (0, 3, 6):
        writer.write(pa.table({"x": np.arange(start, start + 3)}))
    paths = writer.close()
    assert [pq.read_table(p).column("x").to_pylist() for p in paths] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    empty = ShardWriter(tmp_path / "empty", shard_rows=4).close(empty=pa.table({"x": np.zeros(0, np.int64)}))
    assert len(empty) == 1 and pq.read_table(empty[0]).num_rows == 0


def test_sharding_a_dataset_loaded_in_memory_when_its_loader_cannot_stream(tmp_path: Path) -> None:
    assert not isinstance(get_dataset("tabular"), ChunkedLoader)
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {"user": rng.integers(0, 30, n).astype(str), "price": rng.random(n), "click": rng.integers(0, 2, n)}
    )
    frame.to_csv(tmp_path / "events.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "files: {path: events.csv, split: {val: 0.2, test: 0.2}}\nsparse: [user]\ndense: [price]\n"
        "tasks: [{name: ctr, label: click}]\n"
    )
    out = tmp_path / "data"
    prepare("tabular", spec, out, shard_rows=50)
    data = open_prepared(out)
    assert len(data.shards("train")) > 1 and len(data.split("train")) == data.num_rows("train") == 240
    assert not (out / "train.parquet").exists()
    prepare("tabular", spec, out)  # back to one file per split: the old shards are removed
    assert (out / "train.parquet").is_file() and not list((out / "train").glob("part-*.parquet"))


def test_streaming_fit_equals_the_in_memory_fit_on_chunks(single_file_dir: Path) -> None:
    loader = get_dataset("synthetic")
    assert isinstance(loader, ChunkedLoader)
    frames = [parts["train"] for parts in loader.iter_split_chunks(None, seed=1, rows=3_000, chunk_rows=512)]
    fit = StreamingFit(loader.chunked_schema(None), sample_values=10_000)
    for frame in frames:
        fit.update(frame)
    expected = Preprocessor.fit(pd.concat(frames, ignore_index=True), loader.chunked_schema(None))
    assert fit.result().state.vocabularies == expected.state.vocabularies
    assert fit.result().schema.hash() == expected.schema.hash()


def test_prepare_refuses_a_non_positive_shard_size(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="shard-rows"):
        prepare("synthetic", None, tmp_path, rows=100, shard_rows=0)
