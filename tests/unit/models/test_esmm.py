"""ESMM: funnel detection, outputs, targets and the entire-space loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlrec.data.dataset import Batch
from mtlrec.errors import ModelError
from mtlrec.models import build_model
from mtlrec.models.esmm import ESMM, product_bce_with_logits
from mtlrec.schema import FeatureSchema, TaskSpec

SMALL = {"embed_dim": 4, "ctr_tower": {"hidden": [8]}, "cvr_tower": {"hidden": [8]}}


def _esmm(schema: FeatureSchema, **config: object) -> ESMM:
    torch.manual_seed(0)
    model = build_model("esmm", {**SMALL, **config}, schema)
    assert isinstance(model, ESMM)
    return model


def test_esmm_refuses_schema_when_no_task_is_conditioned(tiny_schema_no_funnel: FeatureSchema) -> None:
    with pytest.raises(ModelError, match="conditioned_on") as err:
        _esmm(tiny_schema_no_funnel)
    assert "funnel" in str(err.value)
    assert "`income`" in str(err.value) and "`marital`" in str(err.value)


def test_esmm_refuses_schema_when_extra_tasks_beyond_the_funnel(tiny_schema: FeatureSchema) -> None:
    schema = tiny_schema.model_copy(update={"tasks": (*tiny_schema.tasks, TaskSpec(name="like"))})
    with pytest.raises(ModelError, match="exactly two tasks") as err:
        _esmm(FeatureSchema.model_validate(schema.model_dump()))
    assert "`like`" in str(err.value)


def test_esmm_refuses_schema_when_conversion_is_regression(tiny_schema: FeatureSchema) -> None:
    tasks = (TaskSpec(name="ctr"), TaskSpec(name="gmv", kind="regression", conditioned_on="ctr"))
    with pytest.raises(ModelError, match="binary"):
        _esmm(tiny_schema.model_copy(update={"tasks": tasks}))


def test_esmm_refuses_product_name_when_it_is_a_task_name(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ModelError, match="product_name"):
        _esmm(tiny_schema, product_name="cvr")


def test_esmm_finds_the_funnel_whatever_the_task_order(tiny_schema: FeatureSchema) -> None:
    tasks = (TaskSpec(name="buy", conditioned_on="click"), TaskSpec(name="click"))
    model = _esmm(tiny_schema.model_copy(update={"tasks": tasks}), product_name="click_buy")
    assert model.output_names == ["click", "buy", "click_buy"]


def test_esmm_product_output_is_ctr_times_cvr(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _esmm(tiny_schema)
    outputs = model(tiny_batch.features)
    assert list(outputs) == ["ctr", "cvr", "ctcvr"]
    assert torch.allclose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"])


def test_esmm_targets_mask_cvr_to_clicked_rows(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _esmm(tiny_schema)
    click, conversion = tiny_batch.labels["ctr"], tiny_batch.labels["cvr"]
    targets = model.targets(tiny_batch.labels)
    assert targets["ctr"].mask is None and torch.equal(targets["ctr"].label, click)
    cvr_mask = targets["cvr"].mask
    assert cvr_mask is not None and torch.equal(cvr_mask, click == 1)
    assert targets["ctcvr"].mask is None
    assert torch.equal(targets["ctcvr"].label, click * conversion)


def test_esmm_loss_terms_are_ctr_and_ctcvr_only(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    _, losses = _esmm(tiny_schema).compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "ctcvr"}


def test_esmm_loss_equals_manual_bce_over_all_rows(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _esmm(tiny_schema)
    outputs, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    click = tiny_batch.labels["ctr"].double()
    ctcvr = (tiny_batch.labels["ctr"] * tiny_batch.labels["cvr"]).double()
    p_ctr = outputs["ctr"].detach().double()
    p_ctcvr = (outputs["ctr"] * outputs["cvr"]).detach().double()
    expected = F.binary_cross_entropy(p_ctr, click) + F.binary_cross_entropy(p_ctcvr, ctcvr)
    assert (losses["ctr"] + losses["ctcvr"]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_esmm_cvr_tower_learns_only_through_the_product(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _esmm(tiny_schema)
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    losses["ctr"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.cvr_tower.parameters())
    losses["ctcvr"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cvr_tower.parameters())


def test_product_bce_matches_float64_reference_at_moderate_logits() -> None:
    a = torch.tensor([-3.0, -0.5, 0.0, 1.0, 4.0, 2.0])
    b = torch.tensor([2.0, -1.0, 0.0, -2.0, 3.0, -4.0])
    label = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    p = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    expected = F.binary_cross_entropy(p, label.double(), reduction="none")
    assert torch.allclose(product_bce_with_logits(a, b, label).double(), expected, atol=1e-6)


def test_product_bce_is_exact_and_finite_when_logits_saturate() -> None:
    a = torch.tensor([30.0, -60.0, 60.0, -60.0], requires_grad=True)
    b = torch.tensor([30.0, -60.0, 60.0, 60.0], requires_grad=True)
    label = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = product_bce_with_logits(a, b, label)
    # p = σ(30)² ≈ 1 - 2e^-30 with label 0: -log(1 - p) ≈ 30 - log 2, where float32 probabilities give inf.
    assert loss[0].item() == pytest.approx(30 - math.log(2), rel=1e-5)
    assert loss[1].item() == pytest.approx(120.0, rel=1e-5)  # p ≈ e^-120, label 1
    assert loss[2].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[3].item() == pytest.approx(0.0, abs=1e-6)
    loss.sum().backward()
    assert a.grad is not None and b.grad is not None
    assert bool(torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all())
    # d/da = σ(a)σ(b)(1 - σ(a)) / (1 - p) ≈ e^-30 / 2e^-30: the gradient survives at saturation
    assert a.grad[0].item() == pytest.approx(0.5, rel=1e-4)
