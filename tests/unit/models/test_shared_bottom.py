"""SharedBottom: one bottom shared by per-task towers."""

from __future__ import annotations

import torch

from mtlrec.data.dataset import Batch
from mtlrec.models import build_model
from mtlrec.models.shared_bottom import SharedBottom
from mtlrec.schema import FeatureSchema


def test_shared_bottom_has_one_tower_per_task(tiny_schema: FeatureSchema) -> None:
    model = build_model("shared_bottom", {"bottom": {"hidden": [8]}, "tower": {"hidden": [4]}}, tiny_schema)
    assert isinstance(model, SharedBottom)
    assert [head.name for head in model.heads.heads] == ["ctr", "cvr"]
    assert len(model.towers) == 2
    assert model.bottom.output_dim == 8


def test_shared_bottom_logit_is_tower_of_shared_bottom(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    torch.manual_seed(0)
    model = build_model("shared_bottom", {"bottom": {"hidden": [8]}}, tiny_schema)
    assert isinstance(model, SharedBottom)
    shared = model.bottom(model.embedding(tiny_batch.features))
    logits = model.logits(tiny_batch.features)
    for head, task in enumerate(("ctr", "cvr")):
        assert torch.allclose(logits[task], model.towers[head](shared))


def test_shared_bottom_default_loss_masks_the_conditioned_task(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    torch.manual_seed(0)
    model = build_model("shared_bottom", {"bottom": {"hidden": [8]}}, tiny_schema)
    outputs, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    clicked = tiny_batch.labels["ctr"] == 1
    expected = torch.nn.functional.binary_cross_entropy(outputs["cvr"][clicked], tiny_batch.labels["cvr"][clicked])
    assert torch.allclose(losses["cvr"], expected, atol=1e-6)
