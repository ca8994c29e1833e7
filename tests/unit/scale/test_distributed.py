"""DDP with 2 gloo processes on tiny data: the rank-0 run has the single-process format, metrics are gathered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mtlrec.data.dataset import open_prepared
from mtlrec.train import distributed
from mtlrec.train.checkpoint import RUN_FILES, load_run
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import evaluate_model, train, train_distributed

CONFIG = {
    "model": {"embed_dim": 4},
    "train": {"epochs": 2, "batch_size": 256, "num_threads": 1, "early_stopping": {"patience": 1}},
}


def _tensors(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: (tuple(handle.get_tensor(k).shape), handle.get_tensor(k).dtype) for k in handle.keys()}  # noqa: SIM118


@pytest.mark.timeout(180)
def test_ddp_two_gloo_ranks_write_a_single_process_format_run_with_gathered_metrics(
    sharded_dir: Path, tmp_path: Path
) -> None:
    config = build_run_config("mmoe", CONFIG)
    single = tmp_path / "single"
    train(sharded_dir, config, single)
    ddp = tmp_path / "ddp"
    result = train_distributed(sharded_dir, config, ddp, nproc=2)

    # Same files, same config, same tensors (names, shapes, dtypes), same run.json keys: export cannot tell.
    assert sorted(p.name for p in ddp.iterdir()) == sorted(RUN_FILES) == sorted(p.name for p in single.iterdir())
    assert (ddp / "config.json").read_text() == (single / "config.json").read_text()
    assert _tensors(ddp / "model.safetensors") == _tensors(single / "model.safetensors")
    ddp_info, single_info = (json.loads((d / "run.json").read_text()) for d in (ddp, single))
    assert ddp_info.keys() == single_info.keys() and ddp_info["schema_hash"] == single_info["schema_hash"]
    assert ddp_info["engine"]["world_size"] == 2 and ddp_info["engine"]["backend"] == "gloo"
    assert ddp_info["engine"]["batch_size_per_rank"] == 128

    # Validation metrics cover the whole split (gathered from both ranks), and match the saved best weights.
    data = open_prepared(sharded_dir)
    run = load_run(ddp)
    stored = json.loads((ddp / "metrics.json").read_text())["val"]
    full = evaluate_model(run.model, data.split("val"), list(data.schema.scenario.values or ()))
    for task, metrics in full["tasks"].items():
        assert stored["tasks"][task]["rows"] == metrics["rows"]
        assert stored["tasks"][task]["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    assert full["tasks"]["ctr"]["rows"] == data.num_rows("val")
    assert result.best_epoch == ddp_info["best_epoch"] and len(result.history) == len(ddp_info["history"])
    # Rows are summed over the ranks: every training row is seen once per epoch (less the equalising cut).
    assert data.num_rows("train") - 2 * len(data.shards("train")) <= result.history[0]["rows"]


def test_a_single_process_run_is_world_one() -> None:
    ctx = distributed.setup()
    assert (ctx.world, ctx.rank, ctx.enabled, ctx.is_main) == (1, 0, False, True)
    assert distributed.all_reduce_sum([1.0, 2.0], ctx) == [1.0, 2.0] and distributed.gather_to_main(3, ctx) == [3]


@pytest.mark.timeout(180)
def test_ddp_is_deterministic_for_a_seed_and_a_world_size(sharded_dir: Path, tmp_path: Path) -> None:
    config = build_run_config("mmoe", {**CONFIG, "train": {**CONFIG["train"], "epochs": 1}})
    first, second = tmp_path / "first", tmp_path / "second"
    one = train_distributed(sharded_dir, config, first, nproc=2)
    two = train_distributed(sharded_dir, config, second, nproc=2)
    # Same seed, same world size: the same shuffles, the same all-reduced gradients, the same weights bit for bit.
    with (
        safe_open(str(first / "model.safetensors"), framework="pt") as a,
        safe_open(str(second / "model.safetensors"), framework="pt") as b,
    ):
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():  # noqa: SIM118
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    assert [h["train_loss"] for h in one.history] == [h["train_loss"] for h in two.history]
    assert json.loads((first / "metrics.json").read_text()) == json.loads((second / "metrics.json").read_text())
