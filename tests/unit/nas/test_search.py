"""PD-DARTS on generated data: the schedule, determinism, the files written, and the navigator dropping noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mtlrec.data.dataset import open_prepared
from mtlrec.data.prepare import prepare
from mtlrec.errors import CheckpointError, ConfigError
from mtlrec.models import build_model
from mtlrec.nas.architecture import Architecture
from mtlrec.nas.search import SearchConfig, load_search_config, search, supernet_weights, write_search
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import load_init_weights, predict, train

NOISE_FIELDS = 6
SPACE = {
    "embed_dim": 4,
    "num_levels": 2,
    "num_experts": 3,
    "num_blocks": 1,
    "block_dim": 16,
    "candidate_ops": ["identity", "mlp:16", "mlp:32"],
    "op_dropout": 0.0,
    "tower": {"hidden": [16]},
}
SCHEDULE = {"warmup_epochs": 1, "search_epochs": 2, "batch_size": 256, "lr": 3e-3, "num_threads": 1}


def config(**search: Any) -> SearchConfig:
    return SearchConfig.model_validate({"space": SPACE, "search": {**SCHEDULE, **search}})


@pytest.fixture(scope="module")
def noisy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic impressions with 6 pure-noise categorical fields (no label depends on them), 12,000 rows."""
    out = tmp_path_factory.mktemp("noisy")
    settings = out / "generator.yaml"
    settings.write_text(f"num_noise_fields: {NOISE_FIELDS}\nnum_users: 2000\nnum_items: 500\n")
    prepare("synthetic", settings, out / "data", seed=0, rows=12_000)
    return out / "data"


def test_navigator_drops_most_planted_noise_fields(noisy_dir: Path) -> None:
    """Each first-level expert reads a field raw or in its FM term; count the (expert, field) pairs dropped."""
    result = search(noisy_dir, config(mode="bilevel", feature_cost=0.01, search_epochs=3))
    arch = result.architecture
    fields = list(arch.fields or ())
    noise = [f for f in fields if f.startswith("noise_")]
    assert len(noise) == NOISE_FIELDS
    signal = [f for f in fields if f not in noise]
    experts = list(arch.levels[0].experts.values())

    def dropped(names: list[str]) -> float:
        read = [(f in (e.single or ()) or f in (e.interaction or ())) for e in experts for f in names]
        return 1.0 - sum(read) / len(read)

    noise_dropped, signal_dropped = dropped(noise), dropped(signal)
    assert noise_dropped >= 0.8, (noise_dropped, arch.summary())
    assert noise_dropped - signal_dropped >= 0.2, (noise_dropped, signal_dropped, arch.summary())


def test_search_runs_the_schedule_and_ends_discrete(synthetic_dir: Path) -> None:
    result = search(synthetic_dir, config(train_rows=3000, search_epochs=3, warmup_epochs=1))
    assert [h["phase"] for h in result.history] == ["warmup", "search", "search", "search"]
    temperatures = [h["temperature"] for h in result.history[1:]]
    assert temperatures == pytest.approx([1.0, 0.65, 0.3])
    # 6 blocks, fixed ⌈free / epochs left⌉ after each search epoch; the masks all at the end
    assert [h["fixed_now"]["ops"] for h in result.history] == [0, 2, 2, 2]
    assert [h["fixed_now"]["masks"] > 0 for h in result.history] == [False, False, False, True]
    assert result.supernet.is_discrete()
    assert result.history[-1]["architecture"]["ops"] == 0
    assert result.history[0]["rows"] == 3000
    meta = result.architecture.search
    assert meta is not None and len(meta["discretisation_order"]) == 6
    assert set(meta["val"]) == {"ctr", "cvr"}


def test_search_is_deterministic_for_a_seed(synthetic_dir: Path) -> None:
    cfg = config(train_rows=2000, search_epochs=1, mode="bilevel")
    first, second = search(synthetic_dir, cfg), search(synthetic_dir, cfg)
    assert first.architecture.digest() == second.architecture.digest()
    assert first.history[-1]["val"] == second.history[-1]["val"]


def test_written_search_trains_from_scratch_or_from_the_inherited_weights(synthetic_dir: Path, tmp_path: Path) -> None:
    result = search(synthetic_dir, config(train_rows=2000, search_epochs=1))
    files = write_search(result, tmp_path / "arch.json")
    assert (files.log.name, files.weights.name) == ("arch.search.jsonl", "arch.supernet.safetensors")
    assert [json.loads(line)["epoch"] for line in files.log.read_text().splitlines()] == [1, 2]
    arch = Architecture.load(files.architecture)
    assert arch == result.architecture
    data = open_prepared(synthetic_dir)
    model_config = {"embed_dim": arch.embed_dim, "architecture": arch.model_dump(mode="json")}
    weights = supernet_weights(files.architecture, arch)
    # The file rebuilds the search's discrete model exactly.
    rebuilt = build_model("automtl", model_config, data.schema)
    load_init_weights(rebuilt, weights, data.schema.hash())
    result.model.eval()
    val = data.split("val")
    expected, got = predict(result.model, val), predict(rebuilt, val)
    for task in ("ctr", "cvr"):
        assert (expected[task] == got[task]).all(), task
    run_config = build_run_config("automtl", {"model": model_config, "train": {"epochs": 1, "num_threads": 1}})
    inherited = train(data, run_config, tmp_path / "run", init_weights=weights)
    scratch = train(data, run_config)
    assert inherited.history[0]["val_auc"] != scratch.history[0]["val_auc"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["init_weights"] == str(weights.resolve())
    with pytest.raises(CheckpointError, match="holds weights for schema"):
        load_init_weights(rebuilt, weights, "0000000000000000")


def test_inherited_weights_are_refused_for_an_edited_architecture(synthetic_dir: Path, tmp_path: Path) -> None:
    result = search(synthetic_dir, config(train_rows=1000, search_epochs=1, warmup_epochs=0))
    files = write_search(result, tmp_path / "arch.json")
    edited = result.architecture.model_copy(update={"block_dim": 4})
    with pytest.raises(CheckpointError, match="another architecture"):
        supernet_weights(files.architecture, edited)


def test_search_config_file_is_validated_with_the_field_named(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("space: {num_experts: 2}\nsearch: {mode: trilevel}\n")
    with pytest.raises(ConfigError, match=r"search\.mode"):
        load_search_config(path)
    path.write_text("space: {num_experts: 2, candidate_ops: [conv]}\n")
    with pytest.raises(ConfigError, match=r"space\.candidate_ops\.0"):
        load_search_config(path)
    path.write_text("space: {num_experts: 2}\nsearch: {seed: 1}\n")
    assert load_search_config(path, {"seed": 5, "mode": None}).search.seed == 5
