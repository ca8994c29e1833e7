"""PEPNet: Gate NU ranges, the EPNet/PPNet structure, detached gate inputs and persona-field validation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtlrec.data.dataset import Batch
from mtlrec.errors import ModelError
from mtlrec.models import build_model
from mtlrec.models.pepnet import GateNU, PEPNet
from mtlrec.schema import SCENARIO, FeatureSchema

SMALL = {"embed_dim": 4, "layers": [8, 6], "gate_hidden": 5}


def _pepnet(schema: FeatureSchema, **config: object) -> PEPNet:
    torch.manual_seed(0)
    model = build_model("pepnet", {**SMALL, **config}, schema)
    assert isinstance(model, PEPNet)
    return model


def _all_gates(model: PEPNet) -> list[GateNU]:
    gates = [model.epnet_gate]
    for tower in model.towers:
        gates += list(tower.gates)
    return gates


@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_gate_nu_lies_in_zero_gamma(gamma: float) -> None:
    torch.manual_seed(0)
    gate = GateNU(6, hidden=4, out_dim=3, gamma=gamma)
    delta = gate(torch.randn(512, 6) * 3)
    assert bool(((delta > 0) & (delta < gamma)).all())
    with torch.no_grad():  # saturate: σ → 0 and σ → 1 reach the bounds, never beyond
        gate.out.bias.copy_(torch.tensor([-200.0, 0.0, 200.0]))
        gate.out.weight.zero_()
    delta = gate(torch.randn(4, 6))
    assert torch.equal(delta[:, 0], torch.zeros(4)) and torch.equal(delta[:, 2], torch.full((4,), gamma))
    assert torch.allclose(delta[:, 1], torch.full((4,), gamma / 2))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_pepnet_every_gate_lies_in_zero_gamma(tiny_schema: FeatureSchema, tiny_batch: Batch, gamma: float) -> None:
    model = _pepnet(tiny_schema, gamma=gamma).eval()
    captured: list[Tensor] = []
    handles = [g.register_forward_hook(lambda _m, _i, out: captured.append(out)) for g in _all_gates(model)]
    with torch.no_grad():
        model(tiny_batch.features)
    for handle in handles:
        handle.remove()
    assert len(captured) == 1 + 2 * 2  # EPNet + (2 tower layers) × (2 heads)
    for delta in captured:
        assert bool(((delta > 0) & (delta < gamma)).all())
    # γ = 2 starts near the identity: every gate ≈ 1 on average at init.
    if gamma == 2.0:
        assert all(abs(float(d.mean()) - 1.0) < 0.3 for d in captured)


def test_pepnet_logit_is_gated_tower_over_gated_general_input(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _pepnet(tiny_schema).eval()
    x0 = model.embedding(tiny_batch.features)  # [B, 3·4 + 4 + 2]
    general = torch.cat([x0[:, :12], x0[:, 16:]], dim=1)  # sparse fields and dense, no scenario
    domain = x0[:, 12:16]
    o_ep = model.epnet_gate(torch.cat([domain, general], dim=1)) * general
    assert model.general_dim == 14 and model.prior_dim == 4 + 14
    prior = torch.cat([domain, o_ep], dim=1)
    logits = model.head_logits(tiny_batch.features)
    for head, tower in enumerate(model.towers):
        h = o_ep
        for gate, layer in zip(tower.gates, tower.layers, strict=True):
            h = torch.relu(layer(gate(prior) * h))
        assert torch.allclose(logits[:, head], tower.out(h).squeeze(-1), atol=1e-6), head


def test_pepnet_field_granularity_shares_one_gate_per_field(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _pepnet(tiny_schema, epnet_granularity="field").eval()
    assert model.epnet_gate.out.out_features == 3 + 2  # 3 sparse fields and 2 dense columns
    gates = model.epnet_gates(tiny_batch.features)  # [B, 14]
    assert gates.shape == (tiny_batch.size, 14)
    for field in range(3):
        block = gates[:, field * 4 : (field + 1) * 4]
        assert torch.equal(block, block[:, :1].expand(-1, 4)), field
    assert not torch.equal(gates[:, 0], gates[:, 4])
    dimension = _pepnet(tiny_schema).eval()
    assert dimension.epnet_gate.out.out_features == 14


def _embedding_grad(model: PEPNet, batch: Batch, frozen: list[GateNU]) -> tuple[Tensor, Tensor]:
    """Gradient of the summed loss on the embedding table and on the EPNet gate, with ``frozen`` gates' outputs
    detached (their values unchanged)."""
    model.zero_grad()
    for gate in frozen:
        forward = gate.forward
        gate.forward = lambda x, f=forward: f(x).detach()  # type: ignore[method-assign]
    try:
        _, losses = model.compute_loss(batch.features, batch.labels)
        sum(losses.values(), torch.zeros(())).backward()
    finally:
        for gate in frozen:
            del gate.forward  # back to the class's forward
    weight = model.embedding.embedding
    assert weight is not None and weight.weight.grad is not None
    ep = model.epnet_gate.out.weight.grad
    return weight.weight.grad.clone(), (ep.clone() if ep is not None else torch.zeros(()))


@pytest.mark.parametrize("track", ["mtl", "mtmsl"])
def test_pepnet_no_gradient_reaches_the_general_embedding_through_a_gate(
    tiny_schema: FeatureSchema, tiny_batch: Batch, track: str
) -> None:
    model = _pepnet(tiny_schema, track=track).eval()
    rows = model.embedding.offsets
    general_rows, scenario_rows = slice(0, int(rows[3])), slice(int(rows[3]), None)
    grad, ep_grad = _embedding_grad(model, tiny_batch, [])
    frozen, _ = _embedding_grad(model, tiny_batch, _all_gates(model))
    # The general fields reach the loss through O_ep = δ ⊙ E only: freezing every gate changes nothing there.
    assert torch.count_nonzero(grad[general_rows]) > 0
    assert torch.allclose(grad[general_rows], frozen[general_rows], atol=1e-7)
    # Control: the scenario embedding is learned through the gates, so freezing them removes its gradient.
    assert torch.count_nonzero(grad[scenario_rows]) > 0 and torch.count_nonzero(frozen[scenario_rows]) == 0
    # PPNet gates read O_ep detached: freezing them leaves the EPNet gate's gradient as it was.
    ppnet_gates = [g for g in _all_gates(model) if g is not model.epnet_gate]
    _, ep_frozen = _embedding_grad(model, tiny_batch, ppnet_gates)
    assert torch.count_nonzero(ep_grad) > 0 and torch.allclose(ep_grad, ep_frozen, atol=1e-7)


def test_pepnet_persona_fields_are_learned_through_ppnet_gates(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _pepnet(tiny_schema, persona_fields=["item"]).eval()
    assert model.prior_dim == 2 * 4 + 14  # item and scenario embeddings, then O_ep
    rows = model.embedding.offsets
    user, item = slice(int(rows[0]), int(rows[1])), slice(int(rows[1]), int(rows[2]))
    grad, _ = _embedding_grad(model, tiny_batch, [])
    ppnet_gates = [g for g in _all_gates(model) if g is not model.epnet_gate]
    frozen, _ = _embedding_grad(model, tiny_batch, ppnet_gates)
    assert not torch.allclose(grad[item], frozen[item])  # item is also a persona: its gate path counts
    assert torch.allclose(grad[user], frozen[user], atol=1e-7)  # user is general only


def test_pepnet_output_depends_on_the_scenario_on_the_mtl_track(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _pepnet(tiny_schema).eval()
    flipped = {**tiny_batch.features, SCENARIO: 1 - tiny_batch.features[SCENARIO]}
    assert not torch.allclose(model(tiny_batch.features)["ctr"], model(flipped)["ctr"])


@pytest.mark.parametrize(
    ("fields", "unknown"), [(["user", "nope"], r"unknown: \['nope'\]"), (["site"], r"unknown: \['site'\]")]
)
def test_pepnet_refuses_persona_fields_that_are_not_sparse_fields(
    tiny_schema: FeatureSchema, fields: list[str], unknown: str
) -> None:
    with pytest.raises(ModelError, match=unknown) as info:
        _pepnet(tiny_schema, persona_fields=fields)
    assert "['user', 'item', 'category']" in str(info.value)


def test_pepnet_refuses_a_persona_field_named_twice(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ModelError, match="distinct sparse fields"):
        _pepnet(tiny_schema, persona_fields=["user", "user"])


def test_pepnet_needs_a_scenario_even_on_the_mtl_track(tiny_schema_no_funnel: FeatureSchema) -> None:
    with pytest.raises(ModelError, match="model `pepnet` needs a scenario field"):
        _pepnet(tiny_schema_no_funnel)


def test_pepnet_is_deterministic_in_eval_with_dropout(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _pepnet(tiny_schema, dropout=0.5)
    train_a, train_b = model(tiny_batch.features)["ctr"], model(tiny_batch.features)["ctr"]
    assert not torch.equal(train_a, train_b)
    model.eval()
    assert torch.equal(model(tiny_batch.features)["ctr"], model(tiny_batch.features)["ctr"])
