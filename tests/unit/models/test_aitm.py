"""AITM: the AIT attention, the funnel order, entire-space labels and the calibrator."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from mtlrec.data.dataset import Batch
from mtlrec.errors import ModelError
from mtlrec.models import build_model
from mtlrec.models.aitm import AITM, AttentionTransfer
from mtlrec.schema import FeatureSchema, TaskSpec

BatchFactory = Callable[[FeatureSchema, int, int], Batch]

SMALL = {"embed_dim": 4, "tower": {"hidden": [8, 6]}}


def _aitm(schema: FeatureSchema, **config: object) -> AITM:
    torch.manual_seed(0)
    model = build_model("aitm", {**SMALL, **config}, schema)
    assert isinstance(model, AITM)
    return model


def _fixed_logits(model: AITM, p_parent: list[float], p_child: list[float]) -> None:
    """Make ``model.logits`` return the logits of the given probabilities, whatever the features."""
    hand = {
        model.parent: torch.logit(torch.tensor(p_parent, dtype=torch.float64)).float().requires_grad_(),
        model.child: torch.logit(torch.tensor(p_child, dtype=torch.float64)).float().requires_grad_(),
    }
    model.logits = lambda features: hand  # type: ignore[method-assign]


def test_aitm_attention_weights_are_b_by_2_and_sum_to_one(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    weights = _aitm(tiny_schema).attention_weights(tiny_batch.features)
    assert list(weights) == ["cvr"]  # only the later task attends
    w = weights["cvr"]
    assert w.shape == (tiny_batch.size, 2)
    assert bool((w >= 0).all())
    assert torch.allclose(w.sum(dim=1), torch.ones(tiny_batch.size))


def test_ait_scores_each_item_by_query_dot_key_not_value() -> None:
    torch.manual_seed(0)
    ait = AttentionTransfer(3)
    transferred, own = torch.randn(5, 3), torch.randn(5, 3)
    fused, weights = ait(transferred, own)
    items = torch.stack((transferred, own), dim=1)  # [B, 2, h]
    scores = (ait.query(items) * ait.key(items)).sum(-1) / math.sqrt(3)
    expected_w = torch.softmax(scores, dim=1)
    assert torch.allclose(weights, expected_w, atol=1e-6)
    expected_z = expected_w[:, :1] * ait.value(transferred) + expected_w[:, 1:] * ait.value(own)
    assert torch.allclose(fused, expected_z, atol=1e-6)
    # Q·V (AITM-torch's bug) gives other weights: the check above would catch it.
    wrong = torch.softmax((ait.query(items) * ait.value(items)).sum(-1) / math.sqrt(3), dim=1)
    assert not torch.allclose(weights, wrong, atol=1e-3)


def test_aitm_child_logit_is_output_of_ait_over_transfer_and_own_tower(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _aitm(tiny_schema).eval()
    x0 = model.embedding(tiny_batch.features)
    q_parent, q_child = model.towers[0](x0), model.towers[1](x0)
    logits = model.logits(tiny_batch.features)
    assert torch.allclose(logits["ctr"], model.outputs[0](q_parent).squeeze(-1), atol=1e-6)  # z_1 = q_1
    z_child, _ = model.attentions[0](model.transfers[0](q_parent), q_child)
    assert torch.allclose(logits["cvr"], model.outputs[1](z_child).squeeze(-1), atol=1e-6)


def test_aitm_calibrator_equals_formula_on_hand_batch(tiny_schema: FeatureSchema) -> None:
    model = _aitm(tiny_schema)
    _fixed_logits(model, p_parent=[0.5, 0.2, 0.9, 0.1], p_child=[0.25, 0.4, 0.95, 0.1])
    labels = {"ctr": torch.tensor([1.0, 0.0, 1.0, 0.0]), "cvr": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    _, losses = model.compute_loss({}, labels)
    # excess = max(p_child - p_parent, 0) = [0, 0.2, 0.05, 0], batch mean 0.0625, times α = 0.6
    assert losses["calibrator"].item() == pytest.approx(0.6 * 0.0625, rel=1e-5)


def test_aitm_calibrator_penalises_only_child_above_parent(tiny_schema: FeatureSchema) -> None:
    model = _aitm(tiny_schema, calibrator_weight=1.0)
    _fixed_logits(model, p_parent=[0.5, 0.2, 0.9], p_child=[0.25, 0.4, 0.9])
    labels = {"ctr": torch.zeros(3), "cvr": torch.zeros(3)}
    _, losses = model.compute_loss({}, labels)
    losses["calibrator"].backward()
    child_grad = model.logits({})["cvr"].grad
    parent_grad = model.logits({})["ctr"].grad
    assert child_grad is not None and parent_grad is not None
    # Row 1 (0.4 > 0.2): gradient descent lowers the child and raises the parent; other rows are untouched.
    assert child_grad[1] > 0 and parent_grad[1] < 0
    assert child_grad[0] == 0 and child_grad[2] == 0 and parent_grad[0] == 0


def test_aitm_calibrator_is_zero_when_child_never_exceeds_parent(tiny_schema: FeatureSchema) -> None:
    model = _aitm(tiny_schema)
    _fixed_logits(model, p_parent=[0.5, 0.3], p_child=[0.1, 0.3])
    _, losses = model.compute_loss({}, {"ctr": torch.zeros(2), "cvr": torch.zeros(2)})
    assert losses["calibrator"].item() == 0.0


def test_aitm_calibrator_weight_zero_disables_it(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    _, losses = _aitm(tiny_schema, calibrator_weight=0.0).compute_loss(tiny_batch.features, tiny_batch.labels)
    assert losses["calibrator"].item() == 0.0


def test_aitm_both_tasks_are_bce_over_all_rows_with_child_label_click_times_conversion(
    tiny_schema: FeatureSchema, tiny_batch: Batch
) -> None:
    model = _aitm(tiny_schema)
    outputs, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "cvr", "calibrator"}
    click, conversion = tiny_batch.labels["ctr"], tiny_batch.labels["cvr"]
    expected_ctr = F.binary_cross_entropy(outputs["ctr"].detach().double(), click.double())
    expected_cvr = F.binary_cross_entropy(outputs["cvr"].detach().double(), (click * conversion).double())
    assert losses["ctr"].item() == pytest.approx(expected_ctr.item(), rel=1e-5)
    assert losses["cvr"].item() == pytest.approx(expected_cvr.item(), rel=1e-5)


def test_aitm_targets_match_the_loss_labels_on_every_row(tiny_schema: FeatureSchema) -> None:
    model = _aitm(tiny_schema)
    # A conversion label on an unclicked row (a forced funnel) is not a click-and-conversion.
    labels = {"ctr": torch.tensor([1.0, 0.0, 1.0]), "cvr": torch.tensor([1.0, 1.0, 0.0])}
    targets = model.targets(labels)
    assert set(targets) == {"ctr", "cvr"}
    assert targets["ctr"].mask is None and targets["cvr"].mask is None
    assert torch.equal(targets["ctr"].label, labels["ctr"])
    assert torch.equal(targets["cvr"].label, torch.tensor([1.0, 0.0, 0.0]))


def test_aitm_orders_outputs_by_funnel_whatever_the_schema_order(tiny_schema: FeatureSchema) -> None:
    tasks = (TaskSpec(name="buy", conditioned_on="click"), TaskSpec(name="click"))
    model = _aitm(tiny_schema.model_copy(update={"tasks": tasks}))
    assert model.output_names == ["click", "buy"]
    assert model.funnel == ("click", "buy")


def test_aitm_refuses_schema_without_funnel_and_funnel_option_fixes_it(
    tiny_schema_no_funnel: FeatureSchema, batch_factory: BatchFactory
) -> None:
    with pytest.raises(ModelError, match="AITM needs a click→conversion funnel") as err:
        _aitm(tiny_schema_no_funnel)
    assert "funnel: [parent, child]" in str(err.value)
    model = _aitm(tiny_schema_no_funnel, funnel=["marital", "income"])
    assert model.output_names == ["marital", "income"]
    batch = batch_factory(tiny_schema_no_funnel, 8, 0)
    outputs, losses = model.compute_loss(batch.features, batch.labels)
    assert list(outputs) == ["marital", "income"]
    assert set(losses) == {"marital", "income", "calibrator"}


def test_aitm_refuses_more_than_two_tasks(tiny_schema: FeatureSchema) -> None:
    schema = tiny_schema.model_copy(update={"tasks": (*tiny_schema.tasks, TaskSpec(name="like"))})
    with pytest.raises(ModelError, match="AITM models exactly two tasks"):
        _aitm(FeatureSchema.model_validate(schema.model_dump()))


def test_aitm_refuses_a_task_named_like_the_calibrator_term(tiny_schema: FeatureSchema) -> None:
    tasks = (TaskSpec(name="calibrator"), TaskSpec(name="cvr", conditioned_on="calibrator"))
    with pytest.raises(ModelError, match="calibrator"):
        _aitm(tiny_schema.model_copy(update={"tasks": tasks}))
