"""Single-Task: one independent network per head, nothing shared."""

from __future__ import annotations

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.models import build_model
from mtlrec.models.single_task import SingleTask
from mtlrec.schema import SCENARIO, FeatureSchema

SMALL = {"embed_dim": 4, "bottom": {"hidden": [8], "batch_norm": True}, "tower": {"hidden": [4]}}


def _single_task(schema: FeatureSchema, **config: object) -> SingleTask:
    torch.manual_seed(0)
    model = build_model("single_task", {**SMALL, **config}, schema)
    assert isinstance(model, SingleTask)
    return model


def _head_params(model: SingleTask) -> list[set[int]]:
    return [{id(p) for p in network.parameters()} for network in model.networks]


@pytest.mark.parametrize("track", ["mtl", "mtmsl"])
def test_single_task_has_one_network_per_head_sharing_no_parameter(tiny_schema: FeatureSchema, track: str) -> None:
    model = _single_task(tiny_schema, track=track)
    assert len(model.networks) == len(model.heads) == {"mtl": 2, "mtmsl": 4}[track]
    owned = _head_params(model)
    for i, first in enumerate(owned):
        for second in owned[i + 1 :]:
            assert not first & second
    # Every parameter of the model belongs to exactly one head's network (its embedding included).
    assert sum(len(ids) for ids in owned) == len(list(model.parameters()))
    assert all(network.embedding.embedding is not None for network in model.networks)


@pytest.mark.parametrize("track", ["mtl", "msl", "mtmsl"])
def test_single_task_head_loss_gradients_never_reach_another_heads_parameters(
    tiny_schema: FeatureSchema, tiny_batch: Batch, track: str
) -> None:
    model = _single_task(tiny_schema, track=track, tasks=["ctr"] if track == "msl" else None).train()
    for head in range(len(model.heads)):
        model.zero_grad(set_to_none=True)
        model.head_logits(tiny_batch.features)[:, head].sum().backward()
        for other, network in enumerate(model.networks):
            touched = [n for n, p in network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
            if other == head:
                assert touched
            else:
                assert not touched, (head, other, touched)


def test_single_task_msl_scenario_network_learns_only_from_its_rows(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _single_task(tiny_schema, track="msl", tasks=["ctr"]).eval()
    rows = tiny_batch.features[SCENARIO] == 1
    features = {k: v[rows] for k, v in tiny_batch.features.items()}
    labels = {k: v[rows] for k, v in tiny_batch.labels.items()}
    _, losses = model.compute_loss(features, labels)
    losses["ctr"].backward()
    # The routing gather hands the other scenario's head exact zeros.
    assert all(p.grad is None or not p.grad.any() for p in model.networks[0].parameters())
    assert all(p.grad is not None and p.grad.any() for p in model.networks[1].parameters())


def test_single_task_head_logit_is_its_own_network(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _single_task(tiny_schema).eval()
    logits = model.logits(tiny_batch.features)
    for head, task in enumerate(("ctr", "cvr")):
        network = model.networks[head]
        expected = network.tower(network.bottom(network.embedding(tiny_batch.features)))
        assert torch.allclose(logits[task], expected)
    # Independent initialisation: the two networks' embeddings differ.
    first, second = (n.embedding.embedding for n in model.networks)
    assert first is not None and second is not None
    assert not torch.equal(first.weight, second.weight)
