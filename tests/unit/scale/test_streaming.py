"""Streamed training: the same batches as the in-memory path, bounded buffers, the automatic switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlrec.data.dataset import open_prepared, owned_slices
from mtlrec.data.streaming import StreamingData, in_memory_bytes, open_split, use_streaming
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import evaluate_model, evaluate_run, train

TINY = {"epochs": 2, "batch_size": 256, "num_threads": 1, "early_stopping": None}


def tiny_config(**train: Any) -> Any:
    return build_run_config("mmoe", {"model": {"embed_dim": 4}, "train": {**TINY, **train}})


def test_streamed_batches_equal_in_memory_batches_without_shuffle(sharded_dir: Path) -> None:
    data = open_prepared(sharded_dir)
    loaded = data.split("train")
    streamed = StreamingData(data.schema, owned_slices(data.shards("train")), buffer_rows=300)
    pairs = list(zip(loaded.batches(384), streamed.batches(384), strict=True))
    assert len(pairs) == -(-len(loaded) // 384)
    for a, b in pairs:
        for key in a.features:
            assert torch.equal(a.features[key], b.features[key]) and b.features[key].is_contiguous()
        for key in a.labels:
            assert torch.equal(a.labels[key], b.labels[key])


def test_streamed_shuffle_yields_every_row_once_in_a_new_order_per_epoch(sharded_dir: Path) -> None:
    data = open_prepared(sharded_dir)
    streamed = StreamingData(data.schema, owned_slices(data.shards("train")), buffer_rows=1_500)
    generator = torch.Generator().manual_seed(0)
    epochs = [torch.cat([b.features["sparse_ids"] for b in streamed.batches(256, shuffle=True, generator=generator)])]
    epochs.append(
        torch.cat([b.features["sparse_ids"] for b in streamed.batches(256, shuffle=True, generator=generator)])
    )
    plain = data.split("train").features["sparse_ids"]
    for rows in epochs:
        assert rows.shape == plain.shape
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, plain.tolist()))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], plain)
    limited = StreamingData(data.schema, owned_slices(data.shards("train")), buffer_rows=500, limit=1_001)
    assert sum(b.size for b in limited.batches(100, shuffle=True, generator=generator)) == len(limited) == 1_001


def test_streaming_and_in_memory_train_the_same_model_when_shuffling_is_off(sharded_dir: Path) -> None:
    loaded = train(sharded_dir, tiny_config(), streaming=False, shuffle=False)
    streamed = train(sharded_dir, tiny_config(), streaming=True, shuffle=False, buffer_rows=700)
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), streamed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.val_metrics == streamed.val_metrics


def test_training_streams_automatically_above_the_memory_budget(sharded_dir: Path, tmp_path: Path) -> None:
    data = open_prepared(sharded_dir)
    need = in_memory_bytes(data.schema, data.num_rows("train"))
    assert use_streaming(data, "train", memory_budget=need - 1) and not use_streaming(data, "train", memory_budget=need)
    assert isinstance(open_split(data, "val", memory_budget=1), StreamingData)
    result = train(data, tiny_config(epochs=1), tmp_path / "run", memory_budget=need - 1)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["engine"] == {
        "world_size": 1,
        "backend": None,
        "batch_size_per_rank": 256,
        "streaming": True,
        "shuffle": True,
    }
    # The streamed validation metrics are those of the whole split, as evaluated in memory.
    again = evaluate_model(result.model, data.split("val"), list(data.schema.scenario.values or ()))
    for task, metrics in result.val_metrics["tasks"].items():
        assert again["tasks"][task] == pytest.approx(metrics)
    assert evaluate_run(tmp_path / "run", "test")["tasks"]["ctr"]["rows"] == data.num_rows("test")
