"""ESCM²: the IPS and DR counterfactual risks, the detached propensity and the loss terms."""

from __future__ import annotations

import math

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError, ModelError
from mtlrec.models import build_model
from mtlrec.models.escm2 import ESCM2, counterfactual_losses
from mtlrec.schema import FeatureSchema, TaskSpec

SMALL = {
    "embed_dim": 4,
    "ctr_tower": {"hidden": [8]},
    "cvr_tower": {"hidden": [8]},
    "imputation_tower": {"hidden": [8]},
}

# A hand batch: pCTR, pCVR, click, conversion, imputed error.
P_CTR = [0.5, 0.2, 0.0004, 0.9]  # the third propensity is below the 1e-3 clip
P_CVR = [0.8, 0.3, 0.6, 0.7]
CLICK = [1.0, 1.0, 1.0, 0.0]
CONVERSION = [1.0, 0.0, 1.0, 0.0]
IMPUTED = [0.1, 0.2, 0.3, 0.4]
# e = BCE(conversion, pCVR) on the clicked rows; ô = max(pCTR, 1e-3).
ERRORS = [-math.log(0.8), -math.log(0.7), -math.log(0.6)]
PROPENSITY = [0.5, 0.2, 1e-3]


def _logit(p: list[float]) -> torch.Tensor:
    return torch.logit(torch.tensor(p, dtype=torch.float64))


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _escm2(schema: FeatureSchema, **config: object) -> ESCM2:
    torch.manual_seed(0)
    model = build_model("escm2", {**SMALL, **config}, schema)
    assert isinstance(model, ESCM2)
    return model


def test_ips_risk_is_per_row_inverse_propensity_mean_over_all_rows() -> None:
    cf, imp = counterfactual_losses(_logit(P_CTR), _logit(P_CVR), _t(CLICK), _t(CONVERSION), propensity_clip=1e-3)
    expected = sum(e / p for e, p in zip(ERRORS, PROPENSITY, strict=True)) / 4  # / |D|, not / clicks
    assert imp is None
    assert cf.item() == pytest.approx(expected, rel=1e-9)


def test_dr_risk_and_imputation_loss_match_formulas() -> None:
    cf, imp = counterfactual_losses(
        _logit(P_CTR),
        _logit(P_CVR),
        _t(CLICK),
        _t(CONVERSION),
        propensity_clip=1e-3,
        imputed=_t(IMPUTED),
    )
    rows = zip(ERRORS, PROPENSITY, IMPUTED, strict=False)
    expected_cf = (sum(h + (e - h) / p for e, p, h in rows) + IMPUTED[3]) / 4  # the unclicked row adds ê only
    expected_imp = sum((e - h) ** 2 / p for e, p, h in zip(ERRORS, PROPENSITY, IMPUTED, strict=False)) / 4
    assert imp is not None
    assert cf.item() == pytest.approx(expected_cf, rel=1e-9)
    assert imp.item() == pytest.approx(expected_imp, rel=1e-9)


def test_propensity_clip_caps_the_inverse_propensity_weight() -> None:
    ctr, cvr = torch.tensor([-30.0]), torch.tensor([0.0])  # pCTR ≈ 1e-13, e = log 2
    cf, _ = counterfactual_losses(ctr, cvr, torch.ones(1), torch.zeros(1), propensity_clip=0.01)
    assert cf.item() == pytest.approx(100 * math.log(2), rel=1e-5)


def test_counterfactual_risk_never_reads_conversion_of_unclicked_rows() -> None:
    conversion = torch.tensor([1.0, float("nan")])
    for imputed in (None, torch.zeros(2)):
        cf, imp = counterfactual_losses(
            torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 0.0]), conversion, propensity_clip=1e-3, imputed=imputed
        )
        assert torch.isfinite(cf)
        assert imp is None or torch.isfinite(imp)


def test_counterfactual_risk_has_no_gradient_wrt_ctr_logit_and_dr_cvr_gradient_equals_ips() -> None:
    grads = []
    for imputed in (None, _t(IMPUTED).requires_grad_()):
        ctr, cvr = _logit(P_CTR).requires_grad_(), _logit(P_CVR).requires_grad_()
        cf, _ = counterfactual_losses(ctr, cvr, _t(CLICK), _t(CONVERSION), propensity_clip=1e-3, imputed=imputed)
        cf.backward()
        assert ctr.grad is None  # the propensity is detached
        assert imputed is None or imputed.grad is None  # ê is a constant in L_DR
        grads.append(cvr.grad)
    assert grads[0] is not None and grads[1] is not None
    assert torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("variant", ["ips", "dr"])
def test_escm2_no_counterfactual_gradient_reaches_the_ctr_tower(
    tiny_schema: FeatureSchema, tiny_batch: Batch, variant: str
) -> None:
    model = _escm2(tiny_schema, variant=variant)
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    aux = [losses["counterfactual"]] + ([losses["imputation"]] if variant == "dr" else [])
    sum(aux, torch.zeros(())).backward()
    assert all(p.grad is None for p in model.ctr_tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cvr_tower.parameters())


def test_escm2_imputation_tower_learns_from_its_own_loss_only(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _escm2(tiny_schema, variant="dr")
    assert model.imputation is not None
    _, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    losses["counterfactual"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.imputation.parameters())
    losses["imputation"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.imputation.parameters())


def test_escm2_imputation_tower_and_loss_exist_only_for_dr(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    ips = _escm2(tiny_schema)
    assert ips.imputation is None
    assert not any(name.startswith("imputation") for name, _ in ips.named_parameters())
    _, losses = ips.compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "ctcvr", "counterfactual"}
    _, losses = _escm2(tiny_schema, variant="dr").compute_loss(tiny_batch.features, tiny_batch.labels)
    assert set(losses) == {"ctr", "ctcvr", "counterfactual", "imputation"}


@pytest.mark.parametrize("variant", ["ips", "dr"])
def test_escm2_loss_terms_are_weighted_by_config(tiny_schema: FeatureSchema, tiny_batch: Batch, variant: str) -> None:
    config = {"variant": variant, "cf_weight": 0.3, "ctcvr_weight": 2.0, "imputation_weight": 0.5}
    model = _escm2(tiny_schema, **config).eval()  # eval: the same towers' outputs in both computations
    outputs, losses = model.compute_loss(tiny_batch.features, tiny_batch.labels)
    click, conversion = tiny_batch.labels["ctr"], tiny_batch.labels["cvr"]
    logits = model.logits(tiny_batch.features)
    x0 = model.embedding(tiny_batch.features)
    imputed = model.imputation(x0) if model.imputation is not None else None
    cf, imp = counterfactual_losses(
        logits["ctr"], logits["cvr"], click, conversion, propensity_clip=1e-3, imputed=imputed
    )
    assert losses["counterfactual"].item() == pytest.approx(0.3 * cf.item(), rel=1e-5)
    if imp is not None:
        assert losses["imputation"].item() == pytest.approx(0.5 * imp.item(), rel=1e-5)
    ctcvr = torch.nn.functional.binary_cross_entropy(outputs["ctcvr"].double(), (click * conversion).double())
    assert losses["ctcvr"].item() == pytest.approx(2.0 * ctcvr.item(), rel=1e-5)
    ctr = torch.nn.functional.binary_cross_entropy(outputs["ctr"].double(), click.double())
    assert losses["ctr"].item() == pytest.approx(ctr.item(), rel=1e-5)


def test_escm2_outputs_and_targets_follow_esmm(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    model = _escm2(tiny_schema)
    outputs = model(tiny_batch.features)
    assert list(outputs) == ["ctr", "cvr", "ctcvr"]
    assert torch.allclose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"])
    click, conversion = tiny_batch.labels["ctr"], tiny_batch.labels["cvr"]
    targets = model.targets(tiny_batch.labels)
    assert targets["ctr"].mask is None and targets["ctcvr"].mask is None
    cvr_mask = targets["cvr"].mask
    assert cvr_mask is not None and torch.equal(cvr_mask, click == 1)
    assert torch.equal(targets["ctcvr"].label, click * conversion)


def test_escm2_refuses_schema_without_funnel_and_funnel_option_fixes_it(
    tiny_schema_no_funnel: FeatureSchema,
) -> None:
    with pytest.raises(ModelError, match="ESCM² needs a click→conversion funnel") as err:
        _escm2(tiny_schema_no_funnel)
    assert "funnel: [parent, child]" in str(err.value)
    model = _escm2(tiny_schema_no_funnel, funnel=["income", "marital"])
    assert model.output_names == ["income", "marital", "ctcvr"]


def test_escm2_refuses_names_that_clash_with_outputs_or_loss_terms(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ModelError, match="product output `cvr`"):
        _escm2(tiny_schema, product_name="cvr")
    with pytest.raises(ModelError, match="auxiliary loss terms"):
        _escm2(tiny_schema, product_name="counterfactual")
    tasks = (TaskSpec(name="ctr"), TaskSpec(name="imputation", conditioned_on="ctr"))
    with pytest.raises(ModelError, match="auxiliary loss terms"):
        _escm2(tiny_schema.model_copy(update={"tasks": tasks}))


def test_escm2_refuses_unknown_variant_and_bad_clip(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match="variant"):
        _escm2(tiny_schema, variant="snips")
    with pytest.raises(ConfigError, match="propensity_clip"):
        _escm2(tiny_schema, propensity_clip=0.0)
