"""The model contract, checked on every registered model.

Every registered model must have an entry in ``MODEL_CASES``: the schema fixture it is built on and a small
config with dropout and batch norm on, so that the train/eval checks mean something. A registered model
without one fails ``test_every_registered_model_has_a_case``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch

from model_cases import CASES, case_config
from mtlrec.data.dataset import Batch
from mtlrec.errors import ModelError
from mtlrec.models import MultiTaskModel, build_model, get_model_class, list_models
from mtlrec.models.blocks import MLP, FeatureEmbedding, Gate, Tower
from mtlrec.schema import SCENARIO, FeatureSchema

BatchFactory = Callable[[FeatureSchema, int, int], Batch]

REGISTERED = [info.name for info in list_models()]
# (model, track) for every track each registered model supports.
TRACK_CASES = [(info.name, track) for info in list_models() for track in info.tracks]


def _case(name: str, request: pytest.FixtureRequest, track: str = "mtl") -> tuple[MultiTaskModel, Batch]:
    if name not in CASES:
        pytest.fail(f"model `{name}` is registered but has no entry in tests/model_cases.py")
    schema: FeatureSchema = request.getfixturevalue("tiny_schema")
    factory: BatchFactory = request.getfixturevalue("batch_factory")
    torch.manual_seed(0)
    config = case_config(name, track=track, task="ctr")
    return build_model(name, config, schema), factory(schema, 256, 1)


def test_every_registered_model_has_a_case() -> None:
    missing = sorted(set(REGISTERED) - set(CASES))
    assert not missing, f"registered models without a test case in tests/model_cases.py: {missing}"
    assert not set(CASES) - set(REGISTERED), "tests/model_cases.py names a model that is not registered"


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
    schema: FeatureSchema = request.getfixturevalue("tiny_schema")
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


@pytest.mark.parametrize(("name", "track"), TRACK_CASES)
def test_model_on_each_supported_track_outputs_one_probability_per_task_and_row(
    name: str, track: str, request: pytest.FixtureRequest
) -> None:
    model, batch = _case(name, request, track)
    expected_heads = {"mtl": len(model.task_names), "msl": 2, "mtmsl": 2 * len(model.task_names)}[track]
    assert len(model.heads) == expected_heads
    outputs, losses = model.compute_loss(batch.features, batch.labels)
    assert list(outputs) == model.output_names
    assert all(v.shape == (batch.size,) for v in outputs.values())
    sum(losses.values(), torch.zeros(())).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"parameters without a gradient on {track}: {no_grad}"


@pytest.mark.parametrize(("name", "track"), [(n, t) for n, t in TRACK_CASES if t != "mtl"])
def test_scenario_head_sees_only_its_scenarios_rows(name: str, track: str, request: pytest.FixtureRequest) -> None:
    """On msl/mtmsl a row's output (and so its loss) depends on its own scenario's heads only."""
    model, batch = _case(name, request, track)
    model.eval()  # batch norm in eval mode: rows do not interact through batch statistics
    captured: dict[str, torch.Tensor] = {}
    route = model.heads.route

    def spy(head_logits: torch.Tensor, scenario: torch.Tensor | None) -> dict[str, torch.Tensor]:
        head_logits.retain_grad()
        captured["heads"] = head_logits
        return route(head_logits, scenario)

    model.heads.route = spy  # type: ignore[method-assign]
    scenario = batch.features[SCENARIO]
    rows = scenario == 0
    subset = {k: v[rows] for k, v in batch.features.items()}
    labels = {k: v[rows] for k, v in batch.labels.items()}
    _, losses = model.compute_loss(subset, labels)
    sum(losses.values(), torch.zeros(())).backward()
    grad = captured["heads"].grad
    assert grad is not None
    other = [h.index for h in model.heads.heads if h.scenario != 0]
    assert other and torch.count_nonzero(grad[:, other]) == 0
    own = [h.index for h in model.heads.heads if h.scenario == 0]
    assert torch.count_nonzero(grad[:, own]) > 0


@pytest.mark.parametrize("name", REGISTERED)
def test_model_refuses_a_track_it_does_not_support(name: str, request: pytest.FixtureRequest) -> None:
    unsupported = [t for t in ("mtl", "msl", "mtmsl") if t not in get_model_class(name).tracks]
    if not unsupported:
        assert get_model_class(name).tracks == ("mtl", "msl", "mtmsl")
        return
    schema: FeatureSchema = request.getfixturevalue("tiny_schema")
    with pytest.raises(ModelError, match=f"does not support the {unsupported[0]} track"):
        build_model(name, case_config(name, track=unsupported[0], task="ctr"), schema)


def test_msl_track_needs_one_task_and_a_scenario(
    tiny_schema: FeatureSchema, tiny_schema_no_funnel: FeatureSchema
) -> None:
    with pytest.raises(ModelError, match="msl track learns one task"):
        build_model("shared_bottom", {"track": "msl"}, tiny_schema)
    with pytest.raises(ModelError, match="needs a scenario field"):
        build_model("shared_bottom", {"track": "mtmsl"}, tiny_schema_no_funnel)
    with pytest.raises(ModelError, match="unknown: \\['nope'\\]"):
        build_model("shared_bottom", {"tasks": ["nope"]}, tiny_schema)
