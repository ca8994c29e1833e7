"""STAR: partitioned normalization, star-topology layers, auxiliary tower, per-scenario isolation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError, ModelError
from mtlrec.models import build_model
from mtlrec.models.star import STAR, PartitionedNorm, StarLinear
from mtlrec.schema import SCENARIO, SPARSE_IDS, FeatureSchema

SMALL: dict[str, Any] = {"embed_dim": 4, "layers": [8, 6], "aux": {"hidden": [4]}}


def _star(schema: FeatureSchema, **config: Any) -> STAR:
    torch.manual_seed(0)
    model = build_model("star", {**SMALL, **config}, schema)
    assert isinstance(model, STAR)
    return model


def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its init (W_d = 1, b_d = 0, γ = 1, ...) so that the checks are not trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def test_star_layer_equals_the_shared_layer_at_init() -> None:
    torch.manual_seed(0)
    layer = StarLinear(5, 3, num_scenarios=4)
    x = torch.randn(7, 5)
    shared = x @ layer.weight + layer.bias  # [B, out]
    paths = layer.all_paths(x)  # [B, D, out]
    for d in range(4):
        assert torch.allclose(paths[:, d], shared, atol=1e-6)
    assert torch.equal(layer.scenario_weight, torch.ones(4, 5, 3))
    assert torch.equal(layer.scenario_bias, torch.zeros(4, 3))


def test_star_layer_uses_shared_times_scenario_weight_of_each_row() -> None:
    torch.manual_seed(0)
    layer = StarLinear(5, 3, num_scenarios=3)
    _perturb(layer)
    x, scenario = torch.randn(6, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    out = layer(x, scenario)
    for i, d in enumerate(scenario.tolist()):
        expected = x[i] @ (layer.weight * layer.scenario_weight[d]) + layer.bias + layer.scenario_bias[d]
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_star_model_scores_every_scenario_alike_at_init_when_the_features_are_equal(tiny_schema: FeatureSchema) -> None:
    """At init (W_d = 1, b_d = 0, γ_d = 1, β_d = 0) only the scenario embedding tells scenarios apart."""
    model = _star(tiny_schema, aux=None, track="msl", tasks=["ctr"]).eval()
    x0 = torch.randn(4, model.embedding.output_dim)
    x0[:, model.scenario_start : model.scenario_end] = 0.0  # same input row for every scenario
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    h0, h1 = model.main_input(x0, zeros), model.main_input(x0, ones)
    assert torch.equal(h0, h1)
    for layer, activation in zip(model.layers, model.activations, strict=True):
        h0, h1 = activation(layer(h0, zeros)), activation(layer(h1, ones))
        assert torch.allclose(h0, h1)
    paths = model.outputs[0].all_paths(h0)  # [B, D, 1]
    assert torch.allclose(paths[:, 0], paths[:, 1])


def test_partitioned_norm_batch_statistics_are_those_of_each_scenarios_rows() -> None:
    x = torch.randn(20, 3)
    scenario = torch.tensor([0, 2] * 10)
    mean, var, count = PartitionedNorm(3, num_scenarios=3).batch_statistics(x, scenario)
    assert count.tolist() == [10.0, 0.0, 10.0]
    for d in (0, 2):
        rows = x[scenario == d]
        assert torch.allclose(mean[d], rows.mean(dim=0), atol=1e-6)
        assert torch.allclose(var[d], rows.var(dim=0, unbiased=False), atol=1e-6)
    assert torch.equal(mean[1], torch.zeros(3)) and torch.equal(var[1], torch.zeros(3))


def test_partitioned_norm_training_output_is_each_row_normalised_within_its_scenario() -> None:
    norm = PartitionedNorm(3, num_scenarios=2).train()
    x, scenario = torch.randn(12, 3), torch.tensor([0, 1, 1] * 4)
    out = norm(x, scenario)
    for d in (0, 1):
        rows = x[scenario == d]
        expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + norm.eps)
        assert torch.allclose(out[scenario == d], expected, atol=1e-5)


def test_partitioned_norm_running_stats_move_only_for_scenarios_in_the_batch() -> None:
    norm = PartitionedNorm(3, num_scenarios=4, momentum=0.1).train()
    x = torch.randn(9, 3)
    scenario = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 3])  # scenario 1 absent; scenario 3 has a single row
    norm(x, scenario)
    rows = x[scenario == 0]
    assert torch.allclose(norm.running_mean[0], 0.1 * rows.mean(0), atol=1e-6)
    assert torch.allclose(norm.running_var[0], 0.9 + 0.1 * rows.var(0, unbiased=True), atol=1e-6)
    assert not torch.equal(norm.running_mean[2], torch.zeros(3))
    for kept in (1, 3):  # absent, or one row (no variance): the running statistics stay as they were
        assert torch.equal(norm.running_mean[kept], torch.zeros(3)), kept
        assert torch.equal(norm.running_var[kept], torch.ones(3)), kept


def test_partitioned_norm_eval_uses_the_running_stats_of_each_rows_scenario() -> None:
    norm = PartitionedNorm(2, num_scenarios=2)
    _perturb(norm)
    norm.running_mean.copy_(torch.tensor([[1.0, -1.0], [3.0, 0.5]]))
    norm.running_var.copy_(torch.tensor([[4.0, 1.0], [0.25, 9.0]]))
    norm.eval()
    x, scenario = torch.randn(5, 2), torch.tensor([1, 0, 1, 1, 0])
    out = norm(x, scenario)
    for i, d in enumerate(scenario.tolist()):
        gamma = norm.weight * norm.scenario_weight[d]
        beta = norm.bias + norm.scenario_bias[d]
        expected = (x[i] - norm.running_mean[d]) / torch.sqrt(norm.running_var[d] + norm.eps) * gamma + beta
        assert torch.allclose(out[i], expected, atol=1e-6), i
    # Eval rows do not interact: a row scores the same alone, and the running stats do not move.
    assert torch.allclose(norm(x[:1], scenario[:1]), out[:1])
    assert torch.equal(norm.running_mean, torch.tensor([[1.0, -1.0], [3.0, 0.5]]))


@pytest.mark.parametrize("track", ["mtl", "mtmsl"])
def test_star_train_mode_row_ignores_rows_of_other_scenarios(
    tiny_schema: FeatureSchema, tiny_batch: Batch, track: str
) -> None:
    model = _star(tiny_schema, track=track).train()
    _perturb(model)
    features = tiny_batch.features
    other = features[SCENARIO] != 0
    changed = dict(features)
    changed[SPARSE_IDS] = torch.where(other.unsqueeze(1), features[SPARSE_IDS].flip(0), features[SPARSE_IDS])
    changed["dense"] = torch.where(other.unsqueeze(1), 5.0 * torch.randn_like(features["dense"]), features["dense"])
    own = ~other
    before, after = model.head_logits(features), model.head_logits(changed)
    assert torch.allclose(before[own], after[own], atol=1e-5)
    assert not torch.allclose(before[other], after[other], atol=1e-3)
    # Control: changing rows of the same scenario does move a scenario-0 row (the batch statistics are shared).
    same = dict(features)
    first = int(own.nonzero()[0])
    same["dense"] = torch.where((own & (torch.arange(len(own)) != first)).unsqueeze(1), 3.0, features["dense"])
    assert not torch.allclose(model.head_logits(same)[first], before[first], atol=1e-4)


def test_star_scenario_weights_learn_only_from_their_scenarios_rows(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _star(tiny_schema, track="mtmsl").train()
    rows = tiny_batch.features[SCENARIO] == 0
    features = {k: v[rows] for k, v in tiny_batch.features.items()}
    labels = {k: v[rows] for k, v in tiny_batch.labels.items()}
    _, losses = model.compute_loss(features, labels)
    sum(losses.values(), torch.zeros(())).backward()
    assert model.norm is not None
    specific = [model.norm.scenario_weight, model.norm.scenario_bias]
    specific += [p for layer in [*model.layers, *model.outputs] for p in (layer.scenario_weight, layer.scenario_bias)]
    for param in specific:
        assert param.grad is not None
        assert torch.count_nonzero(param.grad[0]) > 0
        assert torch.count_nonzero(param.grad[1]) == 0


def test_star_logit_is_main_score_plus_auxiliary_score_without_activation(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _star(tiny_schema, track="mtmsl").eval()
    _perturb(model)
    features = tiny_batch.features
    scenario = features[SCENARIO]
    x0 = model.embedding(features)
    h = model.main_input(x0, scenario)
    for layer, activation in zip(model.layers, model.activations, strict=True):
        h = activation(layer(h, scenario))
    e_d = x0[:, model.scenario_start : model.scenario_end]
    heads = model.head_logits(features)  # [B, T·D]
    assert model.aux is not None
    for t in range(2):
        out = model.outputs[t]
        for d in range(2):
            main = h @ (out.weight * out.scenario_weight[d]) + out.bias + out.scenario_bias[d]  # [B, 1]
            expected = main.squeeze(1) + model.aux[t](e_d)
            assert torch.allclose(heads[:, t * 2 + d], expected, atol=1e-5)
    assert (heads < 0).any(), "no ReLU on the final logit"


def test_star_mtl_heads_are_one_linear_per_task(tiny_schema: FeatureSchema) -> None:
    model = _star(tiny_schema)
    assert [h.name for h in model.heads.heads] == ["ctr", "cvr"]
    assert all(isinstance(out, torch.nn.Linear) for out in model.outputs)


def test_star_aux_inputs_all_reads_x0_and_aux_null_drops_the_tower(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _star(tiny_schema, aux_inputs="all")
    assert model.aux is not None
    assert model.aux[0].mlp.layers[0].in_features == model.embedding.output_dim
    plain = _star(tiny_schema, aux=None)
    assert plain.aux is None
    assert plain.head_logits(tiny_batch.features).shape == (tiny_batch.size, 2)


def test_star_scenario_embedding_bypasses_pn_and_pn_can_be_turned_off(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _star(tiny_schema).train()
    x0 = model.embedding(tiny_batch.features)
    z = model.main_input(x0, tiny_batch.features[SCENARIO])
    k = model.scenario_end - model.scenario_start
    assert torch.equal(z[:, -k:], x0[:, model.scenario_start : model.scenario_end])
    plain = _star(tiny_schema, partitioned_norm=False)
    assert plain.norm is None
    z = plain.main_input(x0, tiny_batch.features[SCENARIO])
    assert torch.equal(torch.sort(z, dim=1).values, torch.sort(x0, dim=1).values)  # the same columns, reordered


def test_star_registers_every_per_scenario_tensor(tiny_schema: FeatureSchema) -> None:
    model = _star(tiny_schema, track="msl", tasks=["ctr"])
    state = model.state_dict()
    d0 = model.embedding.output_dim
    assert state["norm.running_mean"].shape == (2, d0 - 4)
    assert state["norm.running_var"].shape == (2, d0 - 4)
    assert state["norm.scenario_weight"].shape == (2, d0 - 4)
    assert state["layers.0.scenario_weight"].shape == (2, d0, 8)
    assert state["layers.1.scenario_weight"].shape == (2, 8, 6)
    assert state["outputs.0.scenario_weight"].shape == (2, 6, 1)


def test_star_refuses_a_schema_without_scenario_and_bad_options(
    tiny_schema: FeatureSchema, tiny_schema_no_funnel: FeatureSchema
) -> None:
    with pytest.raises(ModelError, match="model `star` needs a scenario field"):
        build_model("star", SMALL, tiny_schema_no_funnel)
    with pytest.raises(ConfigError, match="layers"):
        build_model("star", {**SMALL, "layers": []}, tiny_schema)
    with pytest.raises(ConfigError, match="aux_inputs"):
        build_model("star", {**SMALL, "aux_inputs": "user"}, tiny_schema)
