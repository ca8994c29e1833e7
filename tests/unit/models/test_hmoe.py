"""HMoE: the label-space mixing weights, the mix itself and task-constrained back-propagation."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.models import build_model
from mtlrec.models.hmoe import HMoE
from mtlrec.schema import FeatureSchema

SMALL = {
    "embed_dim": 4,
    "num_experts": 3,
    "expert": {"hidden": [8]},
    "gate": {"hidden": [6]},
    "tower": {"hidden": [5]},
    "weight_net": {"hidden": [6]},
}


def _hmoe(schema: FeatureSchema, **config: object) -> HMoE:
    torch.manual_seed(0)
    model = build_model("hmoe", {**SMALL, **config}, schema)
    assert isinstance(model, HMoE)
    return model


@pytest.mark.parametrize(("track", "heads"), [("mtl", 2), ("mtmsl", 4)])
def test_hmoe_head_weights_are_b_by_h_by_h_and_sum_to_one(
    tiny_schema: FeatureSchema, tiny_batch: Batch, track: str, heads: int
) -> None:
    weights = _hmoe(tiny_schema, track=track).eval().head_weights(tiny_batch.features)
    assert weights.shape == (tiny_batch.size, heads, heads)
    assert bool((weights > 0).all())
    assert torch.allclose(weights.sum(dim=-1), torch.ones(tiny_batch.size, heads), atol=1e-6)


@pytest.mark.parametrize("linear", [False, True])
def test_hmoe_logit_is_output_layer_of_weighted_sum_of_tower_vectors(
    tiny_schema: FeatureSchema, tiny_batch: Batch, linear: bool
) -> None:
    config: dict[str, object] = {"gate": None, "weight_net": None} if linear else {}
    model = _hmoe(tiny_schema, **config).eval()
    x0 = model.embedding(tiny_batch.features)
    weights = model.head_weights(tiny_batch.features)  # [B, H, H]
    vectors = []
    for gate, tower in zip(model.gates, model.towers, strict=True):
        mixed = sum(gate(x0)[:, e : e + 1] * expert(x0) for e, expert in enumerate(model.experts))
        vectors.append(tower(mixed))  # [B, h]
    logits = model.head_logits(tiny_batch.features)
    for s, out in enumerate(model.outputs):
        fused = sum(weights[:, s, j : j + 1] * vectors[j] for j in range(len(vectors)))
        assert torch.allclose(logits[:, s], out(fused).squeeze(-1), atol=1e-6), s


def _grad_norm(module: torch.nn.Module) -> float:
    return float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))


@pytest.mark.parametrize("track", ["mtl", "mtmsl"])
def test_hmoe_head_loss_updates_shared_experts_and_own_head_only(
    tiny_schema: FeatureSchema, tiny_batch: Batch, track: str
) -> None:
    """Task-constrained back-propagation: head s's loss sees other heads' tower vectors as constants."""
    model = _hmoe(tiny_schema, track=track).eval()
    logits = model.head_logits(tiny_batch.features)  # [B, H]
    own = 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, own], tiny_batch.labels["ctr"])
    loss.backward()
    assert _grad_norm(model.experts) > 0
    assert _grad_norm(model.embedding) > 0
    for s in range(len(model.heads)):
        parts = {
            "gate": model.gates[s],
            "tower": model.towers[s],
            "weight_net": model.weight_nets[s],
            "output": model.outputs[s],
        }
        for part, module in parts.items():
            if s == own:
                assert _grad_norm(module) > 0, (part, s)
            else:
                assert _grad_norm(module) == 0, (part, s)


def test_hmoe_head_reads_other_heads_vectors_in_the_forward(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    """The stop-gradient cuts the backward only: head 0's score moves with head 1's tower."""
    model = _hmoe(tiny_schema).eval()
    before = model.head_logits(tiny_batch.features)
    with torch.no_grad():
        for p in model.towers[1].parameters():
            p.add_(0.5)
    after = model.head_logits(tiny_batch.features)
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_hmoe_with_one_head_is_its_own_tower(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _hmoe(tiny_schema, tasks=["ctr"]).eval()
    weights = model.head_weights(tiny_batch.features)
    assert torch.equal(weights, torch.ones(tiny_batch.size, 1, 1))
    assert model.mask.shape == (1, 1)
