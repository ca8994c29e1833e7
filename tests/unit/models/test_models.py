"""The model contract, checked on every registered model.

Every registered model must have an entry in ``MODEL_CASES``: the schema fixture it is built on and a small
config with dropout and batch norm on, so that the train/eval checks mean something. A registered model
without one fails ``test_every_registered_model_has_a_case``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.models import MultiTaskModel, build_model, get_model_class, list_models
from mtlrec.models.blocks import MLP, FeatureEmbedding, Gate, Tower
from mtlrec.schema import FeatureSchema

BatchFactory = Callable[[FeatureSchema, int, int], Batch]

_SMALL = {"hidden": [16], "dropout": 0.2, "batch_norm": True}
_TOWER = {"hidden": [8], "dropout": 0.2}

# model name -> (schema fixture, config). ESMM needs the ctr -> cvr funnel of `tiny_schema`.
MODEL_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "shared_bottom": ("tiny_schema", {"embed_dim": 4, "bottom": _SMALL, "tower": _TOWER}),
    "mmoe": (
        "tiny_schema",
        {"embed_dim": 4, "num_experts": 3, "expert": _SMALL, "gate": {"hidden": [8]}, "tower": _TOWER},
    ),
    "esmm": ("tiny_schema", {"embed_dim": 4, "ctr_tower": _SMALL, "cvr_tower": _SMALL}),
}
REGISTERED = [info.name for info in list_models()]


def _case(name: str, request: pytest.FixtureRequest) -> tuple[MultiTaskModel, Batch]:
    if name not in MODEL_CASES:
        pytest.fail(f"model `{name}` is registered but has no entry in MODEL_CASES")
    fixture, config = MODEL_CASES[name]
    schema: FeatureSchema = request.getfixturevalue(fixture)
    factory: BatchFactory = request.getfixturevalue("batch_factory")
    torch.manual_seed(0)
    return build_model(name, config, schema), factory(schema, 256, 1)


def test_every_registered_model_has_a_case() -> None:
    missing = sorted(set(REGISTERED) - set(MODEL_CASES))
    assert not missing, f"registered models without a test case in MODEL_CASES: {missing}"
    assert not set(MODEL_CASES) - set(REGISTERED), "MODEL_CASES names a model that is not registered"


@pytest.mark.parametrize("name", REGISTERED)
def test_model_outputs_are_named_probabilities_of_shape_b(name: str, request: pytest.FixtureRequest) -> None:
    model, batch = _case(name, request)
    outputs = model(batch.features)
    assert list(outputs) == model.output_names
    for output, value in outputs.items():
        assert value.shape == (batch.size,), output
        assert bool(((value >= 0) & (value <= 1)).all()), output


@pytest.mark.parametrize("name", REGISTERED)
def test_model_builds_with_its_default_config(name: str, request: pytest.FixtureRequest) -> None:
    fixture, _ = MODEL_CASES[name]
    schema: FeatureSchema = request.getfixturevalue(fixture)
    model = build_model(name, None, schema)
    assert isinstance(model, get_model_class(name))
    assert model.config == get_model_class(name).config_class()


@pytest.mark.parametrize("name", REGISTERED)
def test_model_every_parameter_gets_a_gradient_from_compute_loss(name: str, request: pytest.FixtureRequest) -> None:
    model, batch = _case(name, request)
    outputs, losses = model.compute_loss(batch.features, batch.labels)
    assert list(outputs) == model.output_names
    assert losses
    for loss_name, loss in losses.items():
        assert loss.shape == (), loss_name
        assert torch.isfinite(loss), loss_name
    sum(losses.values(), torch.zeros(())).backward()
    # The batch draws every id of every field, so even the shared embedding table gets a gradient overall.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"parameters without a gradient: {no_grad}"


@pytest.mark.parametrize("name", REGISTERED)
def test_model_targets_cover_outputs_with_row_labels(name: str, request: pytest.FixtureRequest) -> None:
    model, batch = _case(name, request)
    targets = model.targets(batch.labels)
    assert set(targets) <= set(model.output_names)
    for output, target in targets.items():
        assert target.label.shape == (batch.size,), output
        assert target.mask is None or target.mask.shape == (batch.size,), output


@pytest.mark.parametrize("name", REGISTERED)
def test_model_is_deterministic_in_eval_mode(name: str, request: pytest.FixtureRequest) -> None:
    model, batch = _case(name, request)
    model.train()
    model.compute_loss(batch.features, batch.labels)  # update the batch-norm running statistics once
    model.eval()
    first, second = model(batch.features), model(batch.features)
    for output in model.output_names:
        assert torch.equal(first[output], second[output]), output


@pytest.mark.parametrize("name", REGISTERED)
def test_model_constructor_takes_at_most_five_args(name: str) -> None:
    params = inspect.signature(get_model_class(name)).parameters
    assert len(params) <= 5, f"{name} takes {len(params)} constructor args"


@pytest.mark.parametrize("block", [FeatureEmbedding, MLP, Tower, Gate])
def test_block_constructor_takes_at_most_five_args(block: type[torch.nn.Module]) -> None:
    assert len(inspect.signature(block).parameters) <= 5
