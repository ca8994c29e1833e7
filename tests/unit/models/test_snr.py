"""SNR: the routed layers' formulas, closed gates cutting blocks exactly, Trans vs Aver, and the L0 term."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError, ModelError
from mtlrec.models import build_model
from mtlrec.models.snr import SNR
from mtlrec.schema import FeatureSchema, TaskSpec

# No batch norm or dropout: the formula checks below spell out Linear + ReLU.
SMALL = {"embed_dim": 4, "num_experts": 3, "expert": {"hidden": [8, 6]}, "tower": {"hidden": [4]}}
CLOSED = -20.0  # eval z = clamp(σ(-20)·1.2 - 0.1, 0, 1) = 0 exactly


def _snr(schema: FeatureSchema, seed: int = 0, **config: object) -> SNR:
    torch.manual_seed(seed)
    model = build_model("snr", {**SMALL, **config}, schema)
    assert isinstance(model, SNR)
    return model


def _randomise_gates(model: SNR, seed: int) -> None:
    """Spread log_alpha over [-3, 3] so eval gates take values strictly inside (0, 1) as well as 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in [*model.routing.gates, model.routing.head_gate]:
            gate.log_alpha.copy_(torch.rand(gate.log_alpha.shape, generator=gen) * 6 - 3)


@pytest.mark.parametrize("variant", ["trans", "aver"])
def test_snr_head_inputs_follow_the_routing_formula(
    tiny_schema: FeatureSchema, tiny_batch: Batch, variant: str
) -> None:
    model = _snr(tiny_schema, variant=variant).eval()
    _randomise_gates(model, seed=1)
    r = model.routing
    gates = model.gate_values()
    z2, zh = gates["layer2"], gates["heads"]  # [E, E], [H, E]
    assert bool(((z2 > 0) & (z2 < 1)).any())
    x0 = model.embedding(tiny_batch.features)
    u1 = [torch.relu(x0 @ r.weights[0][j] + r.biases[0][j]) for j in range(3)]  # blocks read x0
    if variant == "trans":  # v_i = Σ_j z_ij W_ij u_j, per-connection transforms
        u2 = [
            torch.relu(sum(z2[i, j] * u1[j] @ r.weights[1][i, j] for j in range(3)) + r.biases[1][i]) for i in range(3)
        ]
        assert r.head_weight is not None
        heads = [sum(zh[h, j] * u2[j] @ r.head_weight[h, j] for j in range(3)) for h in range(2)]
    else:  # v_i = Σ_j z_ij u_j, then block i's own layer
        u2 = [torch.relu(sum(z2[i, j] * u1[j] for j in range(3)) @ r.weights[1][i] + r.biases[1][i]) for i in range(3)]
        heads = [sum(zh[h, j] * u2[j] for j in range(3)) for h in range(2)]
    expected = torch.stack([torch.as_tensor(h) for h in heads], dim=1)  # [B, H, h_L]
    assert torch.allclose(model.head_inputs(tiny_batch.features), expected, atol=1e-5)


def _perturb_block(model: SNR, layer: int, block: int) -> None:
    with torch.no_grad():
        model.routing.weights[layer][block].add_(1.0)
        model.routing.biases[layer][block].add_(1.0)


@pytest.mark.parametrize("variant", ["trans", "aver"])
@pytest.mark.parametrize("closed", [True, False])
def test_snr_closed_head_connections_cut_a_last_layer_block_exactly(
    tiny_schema: FeatureSchema, tiny_batch: Batch, variant: str, closed: bool
) -> None:
    model = _snr(tiny_schema, variant=variant, expert={"hidden": [8, 6], "batch_norm": True}).eval()
    if closed:
        with torch.no_grad():
            model.routing.head_gate.log_alpha[:, 1] = CLOSED  # block 1 of the last layer feeds no head
    before = model.head_logits(tiny_batch.features)
    _perturb_block(model, layer=1, block=1)
    after = model.head_logits(tiny_batch.features)
    assert torch.equal(before, after) == closed


@pytest.mark.parametrize("variant", ["trans", "aver"])
def test_snr_closed_inner_connections_cut_a_first_layer_block_exactly(
    tiny_schema: FeatureSchema, tiny_batch: Batch, variant: str
) -> None:
    model = _snr(tiny_schema, variant=variant).eval()
    with torch.no_grad():
        model.routing.gates[0].log_alpha[:, 2] = CLOSED  # block 2 of layer 1 feeds no block of layer 2
    before = model.head_logits(tiny_batch.features)
    _perturb_block(model, layer=0, block=2)
    assert torch.equal(before, model.head_logits(tiny_batch.features))
    _perturb_block(model, layer=0, block=0)  # an open block does matter
    assert not torch.equal(before, model.head_logits(tiny_batch.features))


def test_snr_one_closed_connection_cuts_only_that_pair(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    """Closing head 0 ← block 1 makes head 0 blind to block 1 while head 1 still reads it."""
    model = _snr(tiny_schema).eval()
    with torch.no_grad():
        model.routing.head_gate.log_alpha[0, 1] = CLOSED
    before = model.head_logits(tiny_batch.features)
    _perturb_block(model, layer=1, block=1)
    after = model.head_logits(tiny_batch.features)
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.equal(before[:, 1], after[:, 1])


def test_snr_aver_is_trans_with_transforms_tied_over_incoming_connections(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    aver = _snr(tiny_schema, variant="aver").eval()
    trans = _snr(tiny_schema, variant="trans").eval()
    _randomise_gates(aver, seed=2)
    ra, rt = aver.routing, trans.routing
    assert rt.head_weight is not None and ra.head_weight is None
    assert rt.weights[1].shape == (3, 3, 8, 6) and ra.weights[1].shape == (3, 8, 6)
    trans.embedding.load_state_dict(aver.embedding.state_dict())
    trans.towers.load_state_dict(aver.towers.state_dict())
    with torch.no_grad():
        rt.weights[0].copy_(ra.weights[0])
        rt.weights[1].copy_(ra.weights[1].unsqueeze(1).expand(3, 3, 8, 6))  # W_ij = W_i for every j
        rt.head_weight.copy_(torch.eye(6).expand(2, 3, 6, 6))  # identity transforms into the heads
        for target, source in zip(rt.biases, ra.biases, strict=True):
            target.copy_(source)
        for t_gate, s_gate in zip([*rt.gates, rt.head_gate], [*ra.gates, ra.head_gate], strict=True):
            t_gate.log_alpha.copy_(s_gate.log_alpha)
    assert torch.allclose(trans.head_logits(tiny_batch.features), aver.head_logits(tiny_batch.features), atol=1e-5)
    # The variants differ once the transforms are free.
    free = _snr(tiny_schema, variant="trans").eval()
    assert not torch.allclose(free.head_logits(tiny_batch.features), aver.head_logits(tiny_batch.features))


def test_snr_train_mode_resamples_gates_and_is_reproducible_for_a_seed(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _snr(tiny_schema, gate={"init_log_alpha": 0.0}).train()
    torch.manual_seed(3)
    first, second = model.head_logits(tiny_batch.features), model.head_logits(tiny_batch.features)
    assert not torch.equal(first, second)
    torch.manual_seed(3)
    assert torch.equal(model.head_logits(tiny_batch.features), first)


def test_snr_gates_start_open(tiny_schema: FeatureSchema) -> None:
    model = _snr(tiny_schema)
    values = model.gate_values()
    assert {k: tuple(v.shape) for k, v in values.items()} == {"layer2": (3, 3), "heads": (2, 3)}
    assert all(torch.equal(v, torch.ones_like(v)) for v in values.values())


def test_snr_l0_term_is_weight_times_expected_open_gates(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _snr(tiny_schema, l0_weight=0.01)
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "cvr", "l0"}
    gates = [*model.routing.gates, model.routing.head_gate]
    expected = 0.01 * sum(float(g.open_probability().sum().detach()) for g in gates)
    assert losses["l0"] > 0
    assert torch.allclose(losses["l0"], torch.tensor(expected))
    assert torch.allclose(losses["l0"], torch.tensor(0.01 * 15 * 0.99427), atol=1e-4)  # 3·3 + 2·3 gates, init open
    losses["l0"].backward()
    assert all(g.log_alpha.grad is not None and bool((g.log_alpha.grad > 0).all()) for g in gates)


def test_snr_l0_term_is_absent_when_its_weight_is_zero(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _snr(tiny_schema, l0_weight=0.0)
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "cvr"}


def test_snr_single_layer_gates_only_the_head_connections(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _snr(tiny_schema, expert={"hidden": [5]}, track="mtmsl")
    assert list(model.gate_values()) == ["heads"]
    assert model.gate_values()["heads"].shape == (4, 3)
    assert model.head_logits(tiny_batch.features).shape == (tiny_batch.size, 4)


def test_snr_refuses_an_expert_without_layers(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match=r"expert: .*at least one layer"):
        _snr(tiny_schema, expert={"hidden": []})


def test_snr_refuses_a_task_named_like_its_l0_term(tiny_schema_no_funnel: FeatureSchema) -> None:
    schema = tiny_schema_no_funnel.model_copy(update={"tasks": (TaskSpec(name="l0"), TaskSpec(name="ctr"))})
    with pytest.raises(ModelError, match="`l0`"):
        _snr(schema)
