"""PLE: expert and gate layout per level, gate sums, the level wiring and the absent last shared gate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mtlrec.data.dataset import Batch
from mtlrec.models import build_model
from mtlrec.models.ple import PLE
from mtlrec.schema import FeatureSchema

SMALL = {
    "embed_dim": 4,
    "num_levels": 2,
    "shared_experts": 2,
    "specific_experts": 3,
    "expert": {"hidden": [8]},
    "tower": {"hidden": [4]},
}


def _ple(schema: FeatureSchema, **config: object) -> PLE:
    torch.manual_seed(0)
    model = build_model("ple", {**SMALL, **config}, schema)
    assert isinstance(model, PLE)
    return model


def test_ple_builds_only_the_experts_and_gates_it_uses(tiny_schema: FeatureSchema) -> None:
    model = _ple(tiny_schema, num_levels=3)
    assert len(model.cgc) == 3
    for index, level in enumerate(model.cgc):
        assert len(level.specific) == 2 and all(len(group.experts) == 3 for group in level.specific)
        assert len(level.shared.experts) == 2  # not `specific_experts` of them (MMLRec bug, models.md §1.4.6)
        assert len(level.head_gates) == 2
        assert (level.shared_gate is None) == (index == 2)
    assert model.cgc[0].shared_gate is not None and model.cgc[0].shared_gate.out.out_features == 2 * 3 + 2
    assert model.cgc[0].head_gates[0].out.out_features == 3 + 2


def test_ple_single_level_has_no_shared_gate(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _ple(tiny_schema, num_levels=1)
    assert model.cgc[0].shared_gate is None
    assert not any("shared_gate" in name for name, _ in model.named_parameters())
    (level,) = model.levels(tiny_batch.features)
    assert level.shared is None and level.shared_gate is None


@pytest.mark.parametrize("gate", [None, {"hidden": [6]}])
def test_ple_gate_weights_sum_to_one(tiny_schema: FeatureSchema, tiny_batch: Batch, gate: object) -> None:
    model = _ple(tiny_schema, gate=gate, track="mtmsl")
    ones = torch.ones(tiny_batch.size)
    levels = model.levels(tiny_batch.features)
    for index, level in enumerate(levels):
        assert len(level.head_gates) == 4
        for weights in level.head_gates:
            assert weights.shape == (tiny_batch.size, 3 + 2)
            assert bool((weights >= 0).all()) and torch.allclose(weights.sum(dim=1), ones)
        if index < len(levels) - 1:
            assert level.shared_gate is not None
            assert level.shared_gate.shape == (tiny_batch.size, 4 * 3 + 2)
            assert torch.allclose(level.shared_gate.sum(dim=1), ones)


def test_ple_head_output_is_its_gate_mixture_of_own_and_shared_experts(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _ple(tiny_schema, num_levels=1).eval()
    x0 = model.embedding(tiny_batch.features)
    level = model.cgc[0]
    (out,) = model.levels(tiny_batch.features)
    shared = level.shared(x0)  # [B, S, e]
    for head in range(2):
        experts = torch.cat([level.specific[head](x0), shared], dim=1)  # [B, K+S, e]
        expected = (out.head_gates[head].unsqueeze(2) * experts).sum(dim=1)
        assert torch.allclose(out.heads[head], expected, atol=1e-6)
    logits = model.logits(tiny_batch.features)
    assert torch.allclose(logits["cvr"], model.towers[1](out.heads[1]), atol=1e-6)


def test_ple_level_two_experts_read_their_own_heads_level_one_output(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _ple(tiny_schema).eval()
    seen: dict[str, Tensor] = {}

    def capture(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            seen[name] = inputs[0]

        return hook

    second = model.cgc[1]
    handles = [group.register_forward_pre_hook(capture(f"head{h}")) for h, group in enumerate(second.specific)]
    handles.append(second.shared.register_forward_pre_hook(capture("shared")))
    handles += [gate.register_forward_pre_hook(capture(f"gate{h}")) for h, gate in enumerate(second.head_gates)]
    first, _ = model.levels(tiny_batch.features)
    for handle in handles:
        handle.remove()
    assert first.shared is not None
    for head in range(2):
        assert seen[f"head{head}"] is first.heads[head]
        assert seen[f"gate{head}"] is first.heads[head]
    assert seen["shared"] is first.shared
    assert not torch.allclose(first.heads[0], first.heads[1])


def test_ple_level_two_head_experts_depend_only_on_that_heads_path(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    """Head 0's level-2 experts get no gradient through head 1's level-1 experts or gate."""
    model = _ple(tiny_schema).eval()
    first, _ = model.levels(tiny_batch.features)
    model.cgc[1].specific[0](first.heads[0]).sum().backward()
    level_one = model.cgc[0]
    for name, param in level_one.named_parameters():
        touched = param.grad is not None and param.grad.abs().sum() > 0
        own = name.startswith(("specific.0.", "head_gates.0.", "shared."))
        assert touched == own, name
