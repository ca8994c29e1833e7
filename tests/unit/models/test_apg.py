"""APG: low-rank generated weights, per-scenario cores, rank, generator init and condition."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError, ModelError
from mtlrec.models import build_model
from mtlrec.models.apg import APG, APGLayer
from mtlrec.schema import SCENARIO, FeatureSchema

SMALL: dict[str, Any] = {"embed_dim": 4, "layers": [16, 8], "rank_divisor": 2}


def _apg(schema: FeatureSchema, **config: Any) -> APG:
    torch.manual_seed(0)
    model = build_model("apg", {**SMALL, **config}, schema)
    assert isinstance(model, APG)
    return model


def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter well off its init (S_i ≈ I) so that the checks are not trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(("divisor", "ranks"), [(2, [8, 4]), (3, [6, 3]), (4, [4, 2]), (100, [1, 1])])
def test_apg_rank_is_ceil_of_min_width_over_divisor(tiny_schema: FeatureSchema, divisor: int, ranks: list[int]) -> None:
    model = _apg(tiny_schema, rank_divisor=divisor)
    d0 = model.embedding.output_dim  # 3 sparse + scenario fields of width 4, 2 dense: 18
    assert d0 == 18
    assert [layer.rank for layer in model.layers] == ranks
    for layer, (n, m) in zip(model.layers, [(d0, 16), (16, 8)], strict=True):
        k = layer.rank
        assert k == math.ceil(min(n, m) / divisor)
        assert tuple(layer.u.weight.shape) == (k, n) and tuple(layer.v.weight.shape) == (m, k)  # U [N, K], V [K, M]
        assert layer.core.out_features == k * k + k


def test_apg_core_starts_near_identity(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _apg(tiny_schema)
    z = model.condition(model.embedding(tiny_batch.features))
    for layer in model.layers:
        core, bias = layer.generate(z)
        eye = torch.eye(layer.rank).expand_as(core)
        assert (core - eye).abs().max() < 0.02
        assert bias.abs().max() < 0.02


def test_apg_core_differs_by_scenario_and_is_shared_within_a_scenario(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _apg(tiny_schema)  # at init: the cores differ only slightly, but they differ
    scenario = tiny_batch.features[SCENARIO]
    z = model.condition(model.embedding(tiny_batch.features))
    first = [int((scenario == d).nonzero()[0]) for d in (0, 1)]
    for layer in model.layers:
        core, bias = layer.generate(z)
        for d, row in enumerate(first):
            same = scenario == d
            assert torch.equal(core[same], core[row].expand_as(core[same]))
            assert torch.equal(bias[same], bias[row].expand_as(bias[same]))
        assert not torch.allclose(core[first[0]], core[first[1]], atol=1e-6)


def test_apg_layer_equals_the_explicit_per_row_weight_u_s_v() -> None:
    torch.manual_seed(0)
    layer = APGLayer(7, 5, condition_dim=3, rank_divisor=2, generator_hidden=(4,))
    _perturb(layer)
    x, z = torch.randn(6, 7), torch.randn(6, 3)
    out = layer(x, z)
    core, core_bias = layer.generate(z)
    u, v = layer.u.weight.t(), layer.v.weight.t()  # [N, K], [K, M]
    for i in range(6):
        weight = u @ core[i] @ v  # W_i = U S_i V [N, M]
        offset = (layer.u.bias @ core[i] + core_bias[i]) @ v + layer.v.bias  # [M]
        assert torch.allclose(out[i], x[i] @ weight + offset, atol=1e-5), i


def test_apg_rows_of_one_scenario_share_one_effective_layer(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    """Two rows of a scenario go through the same map: feeding row j's input with row i's condition gives row j."""
    model = _apg(tiny_schema)
    _perturb(model)
    x0 = model.embedding(tiny_batch.features)
    z = model.condition(x0)
    scenario = tiny_batch.features[SCENARIO]
    rows = (scenario == 1).nonzero().squeeze(1)[:2]
    layer = model.layers[0]
    swapped = layer(x0[rows], z[rows.flip(0)])
    assert torch.allclose(swapped, layer(x0[rows], z[rows]), atol=1e-6)
    other = (scenario == 0).nonzero().squeeze(1)[:1]
    assert not torch.allclose(layer(x0[rows[:1]], z[other]), layer(x0[rows[:1]], z[rows[:1]]), atol=1e-4)


def test_apg_condition_is_the_detached_scenario_embedding_by_default(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _apg(tiny_schema)
    x0 = model.embedding(tiny_batch.features)
    z = model.condition(x0)
    assert torch.equal(z, x0[:, 12:16])  # the 4th field of width 4: the scenario, after the 3 sparse fields
    assert not z.requires_grad
    assert _apg(tiny_schema, detach_condition=False).condition(x0).requires_grad


def test_apg_generator_gradient_reaches_the_embedding_only_when_not_detached(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    """With x0's scenario columns cut off from the layers, only the generator can move the scenario embedding."""
    grads = []
    for detach in (True, False):
        model = _apg(tiny_schema, detach_condition=detach)
        x0 = model.embedding(tiny_batch.features)
        h = torch.zeros_like(x0)  # the layers see nothing of x0: only the condition path is left
        z = model.condition(x0)
        for layer in model.layers:
            h = layer(h, z)
        h.sum().backward()
        grads.append(model.embedding.embedding.weight.grad)
    assert grads[0] is None
    assert grads[1] is not None and torch.count_nonzero(grads[1]) > 0


def test_apg_generator_hidden_adds_an_mlp_and_every_parameter_learns(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _apg(tiny_schema, generator_hidden=[6], track="mtmsl")
    assert all(layer.generator.output_dim == 6 for layer in model.layers)
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    sum(losses.values(), torch.zeros(())).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad


def test_apg_has_one_output_linear_per_head(tiny_schema: FeatureSchema) -> None:
    assert len(_apg(tiny_schema).outputs) == 2
    msl = _apg(tiny_schema, track="msl", tasks=["cvr"])
    assert [h.name for h in msl.heads.heads] == ["cvr[app]", "cvr[web]"] and len(msl.outputs) == 2
    assert len(_apg(tiny_schema, track="mtmsl").outputs) == 4


def test_apg_refuses_a_schema_without_scenario_and_bad_options(
    tiny_schema: FeatureSchema, tiny_schema_no_funnel: FeatureSchema
) -> None:
    with pytest.raises(ModelError, match="model `apg` needs a scenario field"):
        build_model("apg", SMALL, tiny_schema_no_funnel)
    with pytest.raises(ConfigError, match="rank_divisor"):
        build_model("apg", {**SMALL, "rank_divisor": 0}, tiny_schema)
    with pytest.raises(ConfigError, match="layers"):
        build_model("apg", {**SMALL, "layers": []}, tiny_schema)
