"""MSSM: field gates (FSCM) cutting fields per head, cell-level vector gates (CSSM), per-head paths, the L0 term."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError
from mtlrec.models import build_model
from mtlrec.models.mssm import MSSM
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, DenseField, FeatureSchema, TaskSpec

SMALL = {"embed_dim": 4, "num_experts": 3, "expert": {"hidden": [8, 6]}, "tower": {"hidden": [4]}}
CLOSED = -20.0  # eval z = 0 exactly


def _mssm(schema: FeatureSchema, seed: int = 0, **config: object) -> MSSM:
    torch.manual_seed(seed)
    model = build_model("mssm", {**SMALL, **config}, schema)
    assert isinstance(model, MSSM)
    return model


def _with_field(features: dict[str, torch.Tensor], field: int, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    sparse = features[SPARSE_IDS].clone()
    sparse[:, field] = ids
    return {**features, SPARSE_IDS: sparse}


def test_mssm_gates_every_embedded_field_per_head_and_cells_per_unit(tiny_schema: FeatureSchema) -> None:
    model = _mssm(tiny_schema, track="mtmsl")
    assert model.field_names == ("user", "item", "category", "site")  # sparse fields, then the scenario
    assert model.field_gate_values().shape == (4, 4)  # [H, F'] with H = 2 tasks × 2 scenarios
    shapes = {name: tuple(z.shape) for name, z in model.gate_values().items()}
    assert shapes == {"layer2": (3, 3, 6), "heads": (4, 3, 6)}  # one gate per unit of each connection
    aver = _mssm(tiny_schema, variant="aver")
    assert {name: tuple(z.shape) for name, z in aver.gate_values().items()} == {
        "layer2": (3, 3, 8),  # aver gates the lower cell's units
        "heads": (2, 3, 6),
    }


@pytest.mark.parametrize("variant", ["trans", "aver"])
def test_mssm_closed_field_gate_makes_the_head_blind_to_that_field(
    tiny_schema: FeatureSchema, tiny_batch: Batch, variant: str
) -> None:
    model = _mssm(tiny_schema, variant=variant, expert={"hidden": [8, 6], "batch_norm": True}).eval()
    assert model.field_gate is not None
    with torch.no_grad():
        model.field_gate.log_alpha[0, 1] = CLOSED  # head 0 (ctr) ignores field 1 (item)
    before = model.head_logits(tiny_batch.features)
    shifted = (tiny_batch.features[SPARSE_IDS][:, 1] + 1) % 9
    after = model.head_logits(_with_field(tiny_batch.features, 1, shifted))
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.equal(before[:, 1], after[:, 1])  # head 1 still reads it


def test_mssm_closed_scenario_field_gate_removes_the_scenario_embedding(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _mssm(tiny_schema).eval()
    assert model.field_gate is not None
    with torch.no_grad():
        model.field_gate.log_alpha[1, 3] = CLOSED  # head 1 ignores the scenario field
    before = model.head_logits(tiny_batch.features)
    flipped = {**tiny_batch.features, SCENARIO: 1 - tiny_batch.features[SCENARIO]}
    after = model.head_logits(flipped)
    assert torch.equal(before[:, 1], after[:, 1])
    assert not torch.equal(before[:, 0], after[:, 0])


def test_mssm_gated_inputs_scale_field_embeddings_and_keep_dense_values(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _mssm(tiny_schema).eval()
    assert model.field_gate is not None
    with torch.no_grad():
        model.field_gate.log_alpha[0] = CLOSED  # head 0: every field closed
        model.field_gate.log_alpha[1] = torch.tensor([0.0, 3.0, CLOSED, 0.5])
    z = model.field_gate_values()[1]  # [F']
    x0 = model.embedding(tiny_batch.features)  # [B, 4·4 + 2]
    inputs = model.gated_inputs(tiny_batch.features)  # [B, H, d0]
    assert inputs.shape == (tiny_batch.size, 2, 18)
    assert torch.equal(inputs[:, 0, :16], torch.zeros(tiny_batch.size, 16))
    for h in (0, 1):
        assert torch.equal(inputs[:, h, 16:], tiny_batch.features[DENSE])  # dense values pass as they are
    expected = (x0[:, :16].reshape(-1, 4, 4) * z.reshape(1, 4, 1)).reshape(-1, 16)
    assert torch.allclose(inputs[:, 1, :16], expected)
    assert 0 < z[0] < 1 and z[1] == 1 and z[2] == 0


def test_mssm_head_inputs_follow_the_cell_routing_formula(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mssm(tiny_schema).eval()
    r = model.routing
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in [*r.gates, r.head_gate]:
            gate.log_alpha.copy_(torch.rand(gate.log_alpha.shape, generator=gen) * 6 - 3)
    z2, zh = model.gate_values()["layer2"], model.gate_values()["heads"]  # [E, E, h_2], [H, E, h_2]
    x = model.gated_inputs(tiny_batch.features)  # [B, H, d0]
    assert r.head_weight is not None
    for h in range(2):  # each head runs its own copy of the cells on its own gated input
        u1 = [torch.relu(x[:, h] @ r.weights[0][j] + r.biases[0][j]) for j in range(3)]
        u2 = [
            torch.relu(sum(z2[i, j] * (u1[j] @ r.weights[1][i, j]) for j in range(3)) + r.biases[1][i])
            for i in range(3)
        ]
        v = sum(zh[h, j] * (u2[j] @ r.head_weight[h, j]) for j in range(3))
        assert torch.allclose(model.head_inputs(tiny_batch.features)[:, h], torch.as_tensor(v), atol=1e-5)


def test_mssm_closed_unit_gates_zero_that_unit_of_the_head_input(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mssm(tiny_schema).eval()
    with torch.no_grad():
        model.routing.head_gate.log_alpha[1, :, 4] = CLOSED  # unit 4 of every connection into head 1
    inputs = model.head_inputs(tiny_batch.features)  # [B, H, h_L]
    assert torch.equal(inputs[:, 1, 4], torch.zeros(tiny_batch.size))
    assert bool((inputs[:, 0, 4] != 0).any()) and bool((inputs[:, 1, :4] != 0).any())


def test_mssm_head_output_ignores_other_heads_field_gates(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mssm(tiny_schema).eval()
    assert model.field_gate is not None
    before = model.head_logits(tiny_batch.features)
    with torch.no_grad():
        model.field_gate.log_alpha[1] = CLOSED
    after = model.head_logits(tiny_batch.features)
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.equal(before[:, 1], after[:, 1])


def test_mssm_train_mode_resamples_field_and_cell_gates_and_is_reproducible(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _mssm(tiny_schema, gate={"init_log_alpha": 0.0}).train()
    torch.manual_seed(5)
    first, second = model.gated_inputs(tiny_batch.features), model.gated_inputs(tiny_batch.features)
    assert not torch.equal(first, second)
    torch.manual_seed(5)
    assert torch.equal(model.gated_inputs(tiny_batch.features), first)


def test_mssm_l0_term_counts_field_and_cell_gates(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mssm(tiny_schema, l0_weight=1e-3)
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "cvr", "l0"}
    assert model.field_gate is not None
    gates = [model.field_gate, *model.routing.gates, model.routing.head_gate]
    count = sum(g.log_alpha.numel() for g in gates)
    assert count == 2 * 4 + 3 * 3 * 6 + 2 * 3 * 6
    expected = 1e-3 * torch.stack([g.open_probability().sum() for g in gates]).sum()
    assert losses["l0"] > 0
    assert torch.allclose(losses["l0"], expected)
    assert torch.allclose(losses["l0"], torch.tensor(1e-3 * count * 0.99427), atol=1e-5)  # all open at init
    losses["l0"].backward()
    assert all(g.log_alpha.grad is not None and bool((g.log_alpha.grad > 0).all()) for g in gates)


def test_mssm_l0_term_is_absent_when_its_weight_is_zero(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    _, losses = _mssm(tiny_schema, l0_weight=0.0).compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "cvr"}


def test_mssm_without_embedded_fields_runs_one_ungated_copy() -> None:
    schema = FeatureSchema(
        dense=(DenseField(name="price"), DenseField(name="age")), tasks=(TaskSpec(name="a"), TaskSpec(name="b"))
    )
    model = _mssm(schema)
    assert model.field_gate is None and model.routing.copies == 1
    assert model.field_gate_values().shape == (2, 0)
    features = {DENSE: torch.randn(5, 2)}
    assert model.gated_inputs(features).shape == (5, 1, 2)
    outputs, losses = model.compute_loss(features, {"a": torch.ones(5), "b": torch.zeros(5)})
    assert outputs["a"].shape == (5,) and set(losses) == {"a", "b", "l0"}


def test_mssm_refuses_an_expert_without_layers(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match=r"expert: .*at least one layer"):
        _mssm(tiny_schema, expert={"hidden": []})
