"""MMoE: independent experts, per-task gates and the gated mixture."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.models import build_model
from mtlrec.models.mmoe import MMoE
from mtlrec.schema import FeatureSchema, TaskSpec

BatchFactory = Callable[[FeatureSchema, int, int], Batch]
SMALL = {"embed_dim": 4, "num_experts": 3, "expert": {"hidden": [8]}, "tower": {"hidden": [4]}}


def _mmoe(schema: FeatureSchema, **config: object) -> MMoE:
    torch.manual_seed(0)
    model = build_model("mmoe", {**SMALL, **config}, schema)
    assert isinstance(model, MMoE)
    return model


def test_mmoe_experts_differ_after_init(tiny_schema: FeatureSchema) -> None:
    model = _mmoe(tiny_schema)
    weights = [torch.cat([p.flatten() for p in expert.parameters()]) for expert in model.experts]
    for first, second in itertools.combinations(weights, 2):
        assert not torch.equal(first, second)


def test_mmoe_gate_is_linear_by_default(tiny_schema: FeatureSchema) -> None:
    model = _mmoe(tiny_schema)
    assert all(gate.mlp is None for gate in model.gates)


@pytest.mark.parametrize("gate", [None, {"hidden": [6]}])
def test_mmoe_gate_weights_are_b_by_e_and_sum_to_one(
    tiny_schema: FeatureSchema, tiny_batch: Batch, gate: dict[str, object] | None
) -> None:
    weights = _mmoe(tiny_schema, gate=gate).gate_weights(tiny_batch.features)
    assert list(weights) == ["ctr", "cvr"]
    for task, w in weights.items():
        assert w.shape == (tiny_batch.size, 3), task
        assert torch.allclose(w.sum(dim=1), torch.ones(tiny_batch.size)), task


def test_mmoe_logit_is_tower_of_gate_weighted_expert_sum(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mmoe(tiny_schema).eval()
    x0 = model.embedding(tiny_batch.features)
    gates = model.gate_weights(tiny_batch.features)
    logits = model.logits(tiny_batch.features)
    for head, task in enumerate(("ctr", "cvr")):
        mixed = sum(gates[task][:, e : e + 1] * expert(x0) for e, expert in enumerate(model.experts))
        assert torch.allclose(logits[task], model.towers[head](mixed), atol=1e-6)


def test_mmoe_regression_task_outputs_raw_values_and_mse(
    tiny_schema_no_funnel: FeatureSchema, batch_factory: BatchFactory
) -> None:
    tasks = (TaskSpec(name="income", kind="regression"), TaskSpec(name="marital"))
    schema = tiny_schema_no_funnel.model_copy(update={"tasks": tasks})
    batch = batch_factory(schema, 64, 0)
    model = _mmoe(schema)
    outputs, losses = model.compute_loss(batch.features, batch.labels)
    assert torch.equal(outputs["income"], model.logits(batch.features)["income"])
    expected = ((outputs["income"] - batch.labels["income"]) ** 2).mean()
    assert torch.allclose(losses["income"], expected)
