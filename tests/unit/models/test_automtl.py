"""The discrete AutoMTL model built from an architecture: navigators, routing, only the chosen ops, clear errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError, ModelError
from mtlrec.models import build_model
from mtlrec.models.automtl import AutoMTL, MLPOp, fm_interaction
from mtlrec.models.blocks import Gate
from mtlrec.schema import SPARSE_IDS, FeatureSchema


def arch(**level1: Any) -> dict[str, Any]:
    """A 2-level architecture over tiny_schema (fields user, item, category, site; tasks ctr, cvr)."""
    experts = level1 or {
        "a": {"blocks": ["mlp:16", "identity"], "single": ["user", "site"], "interaction": ["item", "category"]},
        "b": {"blocks": ["identity"], "single": ["item"], "interaction": []},
    }
    return {
        "embed_dim": 4,
        "block_dim": 8,
        "op_dropout": 0.0,
        "tower": {"hidden": [8]},
        "levels": [
            {"experts": experts, "routing": {"c": ["a", "b"], "d": ["b"]}},
            {
                "experts": {"c": {"blocks": ["mlp:8"]}, "d": {"blocks": ["identity"]}},
                "routing": {"ctr": ["c", "d"], "cvr": ["d"]},
            },
        ],
    }


def build(schema: FeatureSchema, architecture: dict[str, Any]) -> AutoMTL:
    torch.manual_seed(0)
    model = build_model("automtl", {"embed_dim": 4, "architecture": architecture}, schema)
    assert isinstance(model, AutoMTL)
    return model.eval()


def test_navigator_input_keeps_only_the_selected_fields_and_the_fm_term(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = build(tiny_schema, arch())
    first, second = model.navigator_list()
    # a: 2 fields · 4 + FM 4 + 2 dense; b: 1 field · 4 + no FM (fewer than 2 fields) + 2 dense
    assert (first.output_dim, second.output_dim) == (14, 6)
    first_op = model.expert_blocks(0)[0][0]
    assert isinstance(first_op, MLPOp) and first_op.hidden.in_features == 14
    assert isinstance(model.expert_blocks(0)[1][0], nn.Linear)  # identity 6 -> 8: a bias-free projection


def test_output_ignores_a_field_no_expert_reads(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    # "category" is only in expert a's FM term; drop it there too: then only the gates read it.
    level1 = {
        "a": {"blocks": ["mlp:16"], "single": ["user", "site"], "interaction": ["item", "user"]},
        "b": {"blocks": ["identity"], "single": ["item"], "interaction": []},
    }
    model = build(tiny_schema, arch(**level1))
    features = dict(tiny_batch.features)
    changed = dict(features, **{SPARSE_IDS: features[SPARSE_IDS].clone()})
    changed[SPARSE_IDS][:, 2] = (changed[SPARSE_IDS][:, 2] + 1) % 5  # another category for every row
    with torch.no_grad():
        embedding = model.embedding.embedding
        assert embedding is not None
        category_rows = slice(12 + 9, 12 + 9 + 5)
        gate_columns = slice(2 * 4, 3 * 4)
        # The gates read x0 (all fields); zero the gates' category weights to isolate the experts.
        for level in range(2):
            for consumer in range(2):
                if len(model.routes[level][consumer]) > 1:
                    model.gate(level, consumer).out.weight[:, gate_columns] = 0.0
        assert embedding.weight[category_rows].abs().sum() > 0
        before, after = model(features), model(changed)
    for task in ("ctr", "cvr"):
        assert torch.equal(before[task], after[task]), task


def test_fm_interaction_is_the_sum_over_field_pairs() -> None:
    v = torch.randn(5, 4, 3)  # [B, F, k]
    pairs = sum(v[:, i] * v[:, j] for i in range(4) for j in range(i + 1, 4))
    assert torch.allclose(fm_interaction(v), pairs, atol=1e-5)


def test_consumer_of_one_expert_has_no_gate_and_gates_span_only_the_kept_experts(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = build(tiny_schema, arch())
    assert model.routes == [[[0, 1], [1]], [[0, 1], [1]]]
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    assert len(gates) == 2 and all(g.out.out_features == 2 for g in gates)
    # cvr reads expert d alone, whose single block is an identity: its tower input IS expert d's output.
    captured: dict[str, torch.Tensor] = {}
    model.towers[1].register_forward_hook(lambda _m, inputs, _o: captured.update(cvr=inputs[0]))
    model.expert_blocks(1)[1].register_forward_hook(lambda _m, _i, out: captured.update(d=out))
    model(tiny_batch.features)
    assert torch.equal(captured["cvr"], captured["d"])


def test_only_the_chosen_ops_exist(tiny_schema: FeatureSchema) -> None:
    model = build(tiny_schema, arch())
    assert sum(isinstance(m, MLPOp) for m in model.modules()) == 2  # mlp:16 of a, mlp:8 of c
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "alpha" in n], names


def test_model_refuses_an_architecture_of_another_schema(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ModelError, match="searched on data with schema 0123"):
        build(tiny_schema, {**arch(), "schema_hash": "0123456789abcdef"})
    assert build(tiny_schema, {**arch(), "schema_hash": tiny_schema.hash()}) is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"single": ["user", "price_bucket"]}, r"names fields the schema does not embed: \['price_bucket'\]"),
        ({"interaction": ["nope"]}, "does not embed"),
    ],
)
def test_model_refuses_unknown_fields(tiny_schema: FeatureSchema, change: dict[str, Any], message: str) -> None:
    level1 = {"a": {"blocks": ["identity"], **change}, "b": {"blocks": ["identity"]}}
    with pytest.raises(ModelError, match=message):
        build(tiny_schema, arch(**level1))


def test_model_refuses_routing_that_names_other_heads(tiny_schema_no_funnel: FeatureSchema) -> None:
    with pytest.raises(ModelError, match=r"model's heads are \['income', 'marital'\]"):
        build(tiny_schema_no_funnel, arch(a={"blocks": ["identity"]}, b={"blocks": ["identity"]}))


def test_model_refuses_an_expert_with_no_input(tiny_schema_no_funnel: FeatureSchema) -> None:
    architecture = {
        "embed_dim": 4,
        "levels": [{"experts": {"a": {"blocks": ["identity"], "single": [], "interaction": ["user"]}}}],
    }
    schema = tiny_schema_no_funnel.model_copy(update={"dense": ()})
    with pytest.raises(ModelError, match="expert `a` sees no input"):
        build(schema, architecture)


def test_config_refuses_an_embed_dim_other_than_the_architecture(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match="embed_dim 8 differs from the architecture's embed_dim 4"):
        build_model("automtl", {"embed_dim": 8, "architecture": arch()}, tiny_schema)


def test_eval_outputs_are_deterministic_and_train_mode_learns(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = build(tiny_schema, {**arch(), "op_dropout": 0.3})
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        _, terms = model.compute_loss(tiny_batch.features, tiny_batch.labels)
        loss = torch.stack(list(terms.values())).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    assert torch.equal(model(tiny_batch.features)["ctr"], model(tiny_batch.features)["ctr"])
