"""Cross-stitch: the units' init and shapes, the mixing math and the faster learning rate of the units."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError
from mtlrec.models import build_model
from mtlrec.models.cross_stitch import CrossStitch, cross_stitch, stitch_init
from mtlrec.schema import FeatureSchema

SMALL = {"embed_dim": 4, "shared": {"hidden": [8]}, "column": {"hidden": [6, 4]}, "tower": {"hidden": [4]}}


def _cross_stitch(schema: FeatureSchema, **config: object) -> CrossStitch:
    torch.manual_seed(0)
    model = build_model("cross_stitch", {**SMALL, **config}, schema)
    assert isinstance(model, CrossStitch)
    return model


@pytest.mark.parametrize(("track", "heads"), [("mtl", 2), ("mtmsl", 4)])
def test_cross_stitch_task_units_start_at_0_9_diagonal_with_rows_summing_to_one(
    tiny_schema: FeatureSchema, track: str, heads: int
) -> None:
    model = _cross_stitch(tiny_schema, track=track)
    assert len(model.stitches) == 2
    off = 0.1 / (heads - 1)
    expected = torch.full((heads, heads), off) + torch.eye(heads) * (0.9 - off)
    for alpha in model.stitches:
        assert alpha.shape == (heads, heads)
        assert torch.allclose(alpha, expected)
        assert torch.allclose(alpha.sum(dim=1), torch.ones(heads))


def test_cross_stitch_neuron_units_hold_one_matrix_per_channel(tiny_schema: FeatureSchema) -> None:
    model = _cross_stitch(tiny_schema, units="neuron", init_self=0.7)
    assert [tuple(a.shape) for a in model.stitches] == [(6, 2, 2), (4, 2, 2)]
    for alpha in model.stitches:
        assert torch.allclose(alpha, stitch_init(2, 0.7).expand_as(alpha))
    # Each channel's matrix is its own parameter entry, not a view of one shared matrix.
    with torch.no_grad():
        model.stitches[0][0, 0, 0] = 5.0
    assert model.stitches[0].detach()[1, 0, 0].item() == pytest.approx(0.7)


def test_cross_stitch_single_head_unit_is_one(tiny_schema: FeatureSchema) -> None:
    model = _cross_stitch(tiny_schema, tasks=["ctr"])
    assert all(torch.equal(alpha.detach(), torch.ones(1, 1)) for alpha in model.stitches)
    assert torch.equal(stitch_init(1, 0.9), torch.ones(1, 1))


def test_cross_stitch_parameter_groups_give_units_the_lr_multiplier(tiny_schema: FeatureSchema) -> None:
    model = _cross_stitch(tiny_schema, stitch_lr_multiplier=250.0)
    (network, one), (stitches, scale) = model.parameter_groups()
    assert (one, scale) == (1.0, 250.0)
    assert [id(p) for p in stitches] == [id(p) for p in model.stitches]
    # Every parameter is in exactly one group.
    grouped = [id(p) for p in network] + [id(p) for p in stitches]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert not {id(p) for p in network} & {id(p) for p in stitches}
    optimizer = torch.optim.Adam([{"params": p, "lr": 1e-3 * s} for p, s in model.parameter_groups()])
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, pytest.approx(0.25)]


def test_cross_stitch_default_multiplier_is_100(tiny_schema: FeatureSchema) -> None:
    model = build_model("cross_stitch", None, tiny_schema)
    assert [scale for _, scale in model.parameter_groups()] == [1.0, 100.0]


def test_cross_stitch_unit_mixes_columns_task_and_channel_wise() -> None:
    columns = torch.randn(5, 3, 4)  # [B, H, h]
    alpha = torch.randn(3, 3)
    mixed = cross_stitch(alpha, columns)
    for i in range(3):
        expected = sum(alpha[i, j] * columns[:, j] for j in range(3))
        assert torch.allclose(mixed[:, i], expected, atol=1e-6)
    per_channel = torch.randn(4, 3, 3)
    mixed = cross_stitch(per_channel, columns)
    for i in range(3):
        for c in range(4):
            expected = sum(per_channel[c, i, j] * columns[:, j, c] for j in range(3))
            assert torch.allclose(mixed[:, i, c], expected, atol=1e-6)


def test_cross_stitch_identity_units_make_independent_columns(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _cross_stitch(tiny_schema, init_self=1.0).eval()
    shared = model.shared(model.embedding(tiny_batch.features))
    logits = model.logits(tiny_batch.features)
    for head, task in enumerate(("ctr", "cvr")):
        x = shared
        for layer in model.layers:
            x = layer.columns[head](x)
        assert torch.allclose(logits[task], model.towers[head](x), atol=1e-6)


def test_cross_stitch_refuses_columns_without_layers(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match=r"column: .*at least one layer"):
        build_model("cross_stitch", {"column": {"hidden": []}}, tiny_schema)
