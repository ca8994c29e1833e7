"""The training loop on generated data: learning, determinism, early stopping, checkpoints, evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_cases import case_config
from mtlrec.data.dataset import open_prepared
from mtlrec.errors import CheckpointError, ConfigError, DataError
from mtlrec.models import list_models
from mtlrec.train.checkpoint import RUN_FILES, load_run, save_run
from mtlrec.train.config import build_run_config
from mtlrec.train.loop import build_model_for, evaluate_model, evaluate_run, predict, train

FAST_TRAIN = {"epochs": 4, "batch_size": 256, "lr": 3e-3, "num_threads": 1, "early_stopping": {"patience": 2}}
REGISTERED = sorted(info.name for info in list_models())
# Every model learns on msl (one head per scenario); mtmsl (the same routing with two tasks) for two of them, to keep
# the suite short: the contract tests in tests/unit/models run every model on every track.
SCENARIO_TRACKS = [(info.name, "msl") for info in list_models() if "msl" in info.tracks] + [
    (name, "mtmsl") for name in ("shared_bottom", "star")
]


def small_config(name: str, track: str = "mtl", **train: Any) -> Any:
    model = case_config(name, track=track, regularized=False, task="ctr")
    return build_run_config(name, {"model": model, "train": {**FAST_TRAIN, **train}})


@pytest.mark.parametrize("name", REGISTERED)
def test_model_learns_planted_signal_when_trained_on_synthetic(name: str, synthetic_dir: Path) -> None:
    data = open_prepared(synthetic_dir)
    result = train(data, small_config(name))
    schema = data.schema
    test = evaluate_model(result.model, data.split("test"), list(schema.scenario.values or ()))
    # The generator plants user/item/context signal for both tasks: a model that learned nothing scores 0.5.
    for task in ("ctr", "cvr"):
        assert test["tasks"][task]["auc"] > 0.6, (task, test["tasks"][task])
    assert set(test["scenarios"]) == set(schema.scenario.values or ())


@pytest.mark.parametrize(("name", "track"), SCENARIO_TRACKS)
def test_model_learns_on_the_scenario_tracks_with_metrics_per_scenario(
    name: str, track: str, synthetic_dir: Path
) -> None:
    data = open_prepared(synthetic_dir)
    result = train(data, small_config(name, track, epochs=3))
    scenarios = list(data.schema.scenario.values or ())
    test = evaluate_model(result.model, data.split("test"), scenarios)
    tasks = ["ctr"] if track == "msl" else ["ctr", "cvr"]
    assert sorted(test["tasks"]) == sorted(result.model.output_names) and set(tasks) <= set(test["tasks"])
    for task in tasks:
        assert test["tasks"][task]["auc"] > 0.6, (track, task, test["tasks"][task])
        for scenario in scenarios:  # each scenario's rows are scored by that scenario's own head
            assert test["scenarios"][scenario][task]["rows"] > 0


def test_train_is_deterministic_for_a_seed(synthetic_dir: Path) -> None:
    data = open_prepared(synthetic_dir)
    first = train(data, small_config("mmoe", epochs=2, seed=3))
    second = train(data, small_config("mmoe", epochs=2, seed=3))
    assert first.val_metrics == second.val_metrics
    for (k, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_train_restores_the_best_validation_epoch(synthetic_dir: Path) -> None:
    data = open_prepared(synthetic_dir)
    result = train(data, small_config("shared_bottom", epochs=4, lr=0.05, early_stopping={"patience": 4}))
    best = max(result.history, key=lambda h: h["val_auc"])
    assert result.best_epoch == best["epoch"]
    # The restored weights reproduce the best epoch's validation metrics exactly: evaluate == predict.
    again = evaluate_model(result.model, data.split("val"), list(data.schema.scenario.values or ()))
    assert again["tasks"] == result.val_metrics["tasks"]


def test_train_refuses_loss_weight_for_a_term_the_model_lacks(synthetic_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no loss for: cvr"):
        train(open_prepared(synthetic_dir), small_config("esmm", loss_weights={"cvr": 2.0}))


def test_train_refuses_early_stopping_on_unknown_output(synthetic_dir: Path) -> None:
    cfg = small_config("mmoe", early_stopping={"task": "ctcvr"})
    with pytest.raises(ConfigError, match=r"early_stopping\.task `ctcvr`"):
        train(open_prepared(synthetic_dir), cfg)


def test_checkpoint_round_trip_gives_identical_predictions(synthetic_dir: Path, tmp_path: Path) -> None:
    data = open_prepared(synthetic_dir)
    result = train(data, small_config("esmm", epochs=1), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)
    run = load_run(tmp_path / "run")
    test = data.split("test")
    before, after = predict(result.model, test), predict(run.model, test)
    assert before.keys() == after.keys() == {"ctr", "cvr", "ctcvr"}
    for name in before:
        assert (before[name] == after[name]).all(), name
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["schema_hash"] == data.schema.hash()
    assert {"torch", "mtlrec", "python"} <= set(info["versions"])


def test_save_run_keeps_the_old_run_when_writing_fails(synthetic_dir: Path, tmp_path: Path) -> None:
    data = open_prepared(synthetic_dir)
    result = train(data, small_config("mmoe", epochs=1), tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()

    class Broken:
        schema = data.preprocessor.schema

        def save(self, path: Path) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_run(tmp_path / "run", result.model, result.config, Broken(), {}, {})  # type: ignore[arg-type]
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_evaluate_run_reports_tasks_and_scenarios(synthetic_dir: Path, tmp_path: Path) -> None:
    train(open_prepared(synthetic_dir), small_config("shared_bottom", epochs=1), tmp_path / "run")
    metrics = evaluate_run(tmp_path / "run", "test")
    assert metrics["split"] == "test"
    assert set(metrics["tasks"]) == {"ctr", "cvr"}
    assert {"auc", "logloss", "rows"} <= set(metrics["tasks"]["ctr"])
    assert metrics["tasks"]["cvr"]["rows"] < metrics["tasks"]["ctr"]["rows"]  # cvr only on clicked rows
    assert sum(s["ctr"]["rows"] for s in metrics["scenarios"].values()) == metrics["tasks"]["ctr"]["rows"]


def test_evaluate_run_refuses_data_of_another_schema(synthetic_dir: Path, tmp_path: Path) -> None:
    train(open_prepared(synthetic_dir), small_config("mmoe", epochs=1), tmp_path / "run")
    other = tmp_path / "other"
    shutil.copytree(synthetic_dir, other)
    schema = json.loads((other / "schema.json").read_text())
    schema["sparse"][0]["min_count"] = 7
    (other / "schema.json").write_text(json.dumps(schema))
    state = json.loads((other / "preprocessor.json").read_text())
    state["schema"] = schema
    (other / "preprocessor.json").write_text(json.dumps(state))
    with pytest.raises(DataError, match="prepared with another schema"):
        evaluate_run(tmp_path / "run", "test", other)


def test_load_run_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors"):
        load_run(tmp_path / "run")


TRACK_CASES = [(info.name, track) for info in list_models() for track in info.tracks]


@pytest.mark.parametrize(("name", "track"), TRACK_CASES)
def test_every_model_and_track_round_trips_through_a_run_directory(
    name: str, track: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    data = open_prepared(synthetic_dir)
    config = build_run_config(name, {"model": case_config(name, track=track, task="ctr"), "train": {"epochs": 1}})
    model = build_model_for(data, config)
    batch = next(iter(data.split("train").batches(512, shuffle=False)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # move the weights and any batch-norm / running statistics away from their init
        _, losses = model.compute_loss(batch.features, batch.labels)
        optimizer.zero_grad()
        torch.autograd.backward(torch.stack(list(losses.values())).sum())
        optimizer.step()
    save_run(tmp_path / "run", model, config, data.preprocessor, {}, {})
    run = load_run(tmp_path / "run")
    assert run.model.config == model.config and run.model.output_names == model.output_names
    test = data.split("test")
    before, after = predict(model, test), predict(run.model, test)
    for output in model.output_names:
        assert np.array_equal(before[output], after[output]), output


@pytest.mark.parametrize(("start_from_epoch", "epochs_run"), [(0, 2), (3, 4)])
def test_early_stopping_waits_for_start_from_epoch(start_from_epoch: int, epochs_run: int, synthetic_dir: Path) -> None:
    # min_delta 1.0: no epoch after the first can count as an improvement, so patience 1 stops at epoch 2, unless
    # start_from_epoch holds the run until after that epoch.
    stopping = {"patience": 1, "min_delta": 1.0, "start_from_epoch": start_from_epoch}
    result = train(open_prepared(synthetic_dir), small_config("shared_bottom", epochs=6, early_stopping=stopping))
    assert len(result.history) == epochs_run
    assert result.best_epoch == 1
