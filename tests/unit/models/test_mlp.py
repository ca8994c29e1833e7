"""MLP (fully shared): one shared score, heads that differ only by their own bias."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.models import build_model
from mtlrec.models.mlp import MLPModel
from mtlrec.schema import SCENARIO, FeatureSchema

SMALL = {"embed_dim": 4, "dnn": {"hidden": [8, 4]}}


def _mlp(schema: FeatureSchema, **config: object) -> MLPModel:
    torch.manual_seed(0)
    model = build_model("mlp", {**SMALL, **config}, schema)
    assert isinstance(model, MLPModel)
    return model


def test_mlp_has_one_bias_parameter_and_no_output_bias(tiny_schema: FeatureSchema) -> None:
    model = _mlp(tiny_schema, track="mtmsl")
    assert model.bias.shape == (4,)
    assert torch.equal(model.bias, torch.zeros(4))
    assert model.out.bias is None
    assert any(p is model.bias for p in model.parameters())


@pytest.mark.parametrize("track", ["mtl", "mtmsl"])
def test_mlp_head_logit_is_shared_score_plus_own_bias(
    tiny_schema: FeatureSchema, tiny_batch: Batch, track: str
) -> None:
    model = _mlp(tiny_schema, track=track).eval()
    with torch.no_grad():
        model.bias.copy_(torch.arange(len(model.heads), dtype=torch.float32) + 0.5)
    score = model.shared_logit(tiny_batch.features)
    heads = model.head_logits(tiny_batch.features)
    # Not cumulative (the MMLRec in-place bug would give head h the sum of biases 0..h).
    assert torch.allclose(heads, score.unsqueeze(1) + model.bias)
    assert torch.allclose(heads[:, -1] - heads[:, 0], torch.full_like(score, float(len(model.heads) - 1)))
    # The shared score itself is untouched by the heads.
    assert torch.allclose(model.shared_logit(tiny_batch.features), score)


def test_mlp_msl_scenario_bias_gets_gradient_only_from_its_rows(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mlp(tiny_schema, track="msl", tasks=["ctr"]).eval()
    rows = tiny_batch.features[SCENARIO] == 0
    features = {k: v[rows] for k, v in tiny_batch.features.items()}
    labels = {k: v[rows] for k, v in tiny_batch.labels.items()}
    _, losses = model.compute_loss(features, labels)
    losses["ctr"].backward()
    grad = model.bias.grad
    assert grad is not None
    assert grad[0] != 0 and grad[1] == 0
    # Every other parameter is shared, so rows of scenario 0 train it.
    assert model.out.weight.grad is not None and model.out.weight.grad.abs().sum() > 0


def test_mlp_scenario_is_an_input_feature(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _mlp(tiny_schema, track="msl", tasks=["ctr"]).eval()
    features = dict(tiny_batch.features)
    flipped = {**features, SCENARIO: 1 - features[SCENARIO]}
    assert model.embedding.has_scenario
    assert not torch.allclose(model.shared_logit(features), model.shared_logit(flipped))
