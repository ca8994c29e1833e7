"""ESCM²: Entire Space Counterfactual Multi-task Model (Wang, Chang, Liu, Huang, Chen, Yu, Li, Chu; SIGIR 2022).

Ant Group, "ESCM²: Entire Space Counterfactual Multi-Task Model for Post-Click Conversion Rate Estimation".

ESMM (models.md §3.5) learns pCVR only through pCTCVR = pCTR·pCVR, which overestimates the CVR and ignores that a
conversion is caused by the click. ESCM² (§3.13, §3.16) keeps the ESMM backbone and adds a counterfactual risk on
the CVR tower: the post-click loss, observed on clicked rows only, reweighted by the inverse click propensity so
that it estimates the CVR loss over the entire impression space D::

    x0    = FeatureEmbedding(features)                          # [B, d0]
    a     = Tower_ctr(x0),  b = Tower_cvr(x0)                   # [B] logits each
    pCTR  = σ(a),  pCVR = σ(b),  pCTCVR = pCTR · pCVR           # [B]
    o_i   = click_i                                             # [B] in {0, 1}, the "treatment"
    ô_i   = max(stopgrad(pCTR_i), c)                            # [B] propensity, c = propensity_clip
    e_i   = BCE(conversion_i, pCVR_i)                           # [B], used only where o_i = 1

    L = L_CTR + λ_g · L_CTCVR + λ_c · L_cf (+ L_imp for dr)
      L_CTR   = mean_i BCE(click_i, pCTR_i)                     # term named by the parent task
      L_CTCVR = mean_i BCE(click_i · conversion_i, pCTCVR_i)    # term named ``product_name``
      ips: L_cf = mean_i o_i · e_i / ô_i                        # term "counterfactual", mean over ALL rows
      dr:  ê_i  = Tower_imp(x0)                                 # [B] imputed CVR error
           L_cf = mean_i [ sg(ê_i) + o_i · (e_i − sg(ê_i)) / ô_i ]
           L_imp = mean_i o_i · (sg(e_i) − ê_i)² / ô_i          # term "imputation"

(sg = stop-gradient.) The product BCE is computed in log space from the two logits
(:func:`~mtlrec.models.esmm.product_bce_with_logits`). The propensity is detached, so no counterfactual gradient
reaches the CTR tower: the CTR tower learns from L_CTR and L_CTCVR only, and the CVR tower cannot lower its
counterfactual loss by inflating pCTR. Clipping ô at c caps every inverse-propensity weight at 1/c (1000 by
default); raising c trades bias for variance, and is the only cap needed (a cap W on o/ô equals clipping at 1/W).

In the DR variant the imputed error enters L_cf as a constant and the imputation tower learns from L_imp only
(joint learning as in Wang et al., ICML 2019). Because ê does not depend on the CVR tower, L_cf's gradient on the
CVR tower is the IPS one; DR changes the estimate's value and, through the shared embeddings, adds the imputation
task.

Outputs are ``{parent: pCTR, child: pCVR, product_name: pCTCVR}`` as ESMM; ``targets()`` scores the parent and the
product on every row and the child on clicked rows.

Deviations from released code, and why:

* MMLRec's ``escm`` multiplies a batch-*summed* CVR BCE by per-row inverse propensities (models.md §1.4.7); the
  paper's estimator is per row, averaged over D, as here.
* MMLRec detaches the propensity with a Paddle-only flag, a no-op in PyTorch, so the counterfactual term trains the
  CTR tower; here the propensity is ``detach()`` ed (tested).
* MMLRec never dispatches its DR variant; PaddleRec's DR neither detaches the propensity nor stops L_cf's gradient
  into ê. That gradient, λ_c·(1 − o_i/ô_i) per row, is linear in the unbounded ê and pushes it down on every
  unclicked row, so ê is stop-gradient'ed in L_cf here.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="cvr", conditioned_on="ctr")))
    >>> model = ESCM2(ESCM2Config(variant="dr"), schema)
    >>> labels = {"ctr": torch.tensor([1.0, 0.0]), "cvr": torch.tensor([1.0, 0.0])}
    >>> sorted(model.compute_loss({"sparse_ids": torch.tensor([[2], [5]])}, labels)[1])
    ['counterfactual', 'ctcvr', 'ctr', 'imputation']
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mtlrec.errors import ModelError
from mtlrec.models.base import task_loss
from mtlrec.models.blocks import MLPConfig, Tower
from mtlrec.models.esmm import ESMM, ESMMConfig, product_bce_with_logits
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema

COUNTERFACTUAL = "counterfactual"
IMPUTATION = "imputation"


class ESCM2Config(ESMMConfig):
    """ESCM² hyperparameters: ESMM's (towers, ``funnel``, ``product_name``) plus the counterfactual terms.

    Defaults: towers (256, 128) as ESMM (MMLRec reuses its expert units), the imputation tower alike (our choice:
    the same capacity as the tower whose error it imputes); λ_c = 0.1 and λ_g = 1 as MMLRec's ``escm``; the IPS
    variant as MMLRec runs it. ``propensity_clip`` 1e-3 is our choice: it caps a clicked row's weight at 1000,
    which only binds on clicks the CTR tower found very unlikely (rare once it is trained; pCTR starts near 0.5);
    a larger clip lowers the variance of the counterfactual term at the price of bias on low-CTR rows.
    """

    variant: Literal["ips", "dr"] = Field(
        default="ips",
        description="counterfactual CVR risk: ips = inverse propensity scoring; dr = doubly robust (adds an "
        "imputation tower and its loss)",
    )
    ctcvr_weight: float = Field(default=1.0, ge=0.0, description="λ_g, weight of the pCTCVR (global) loss")
    cf_weight: float = Field(default=0.1, ge=0.0, description="λ_c, weight of the counterfactual CVR loss")
    propensity_clip: float = Field(
        default=1e-3,
        gt=0.0,
        le=1.0,
        description="lower bound c of the propensity ô = max(pCTR, c); caps inverse-propensity weights at 1/c",
    )
    imputation_tower: MLPConfig = Field(
        default=MLPConfig(hidden=(256, 128)), description="layers of the error-imputation tower (dr only)"
    )
    imputation_weight: float = Field(default=1.0, ge=0.0, description="weight of the imputation tower's loss (dr only)")


def counterfactual_losses(
    ctr_logit: Tensor,
    cvr_logit: Tensor,
    click: Tensor,
    conversion: Tensor,
    *,
    propensity_clip: float,
    imputed: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The unweighted counterfactual CVR risk (IPS, or DR when ``imputed`` is given) and the imputation loss.

    Both are means over every row of the batch (the entire impression space), not over the clicked rows. The
    propensity is detached, so neither term has a gradient with respect to ``ctr_logit``.

    Args:
        ctr_logit: [B] CTR logits a; ô = max(σ(a), propensity_clip), detached.
        cvr_logit: [B] CVR logits b; e = BCE(conversion, σ(b)).
        click: [B] in {0, 1}, the observation indicator o.
        conversion: [B] conversion label, read on clicked rows only.
        propensity_clip: lower bound c of the propensity.
        imputed: [B] imputed errors ê for DR; None for IPS.

    Returns:
        ``(L_cf, L_imp)``: IPS ``mean(o·e/ô)`` and None, or DR ``mean(sg(ê) + o·(e − sg(ê))/ô)`` and
        ``mean(o·(sg(e) − ê)²/ô)``.

    Example:
        >>> zero = torch.zeros(2)  # pCTR = pCVR = 1/2; one click without conversion: e = log 2, ô = 1/2
        >>> cf, imp = counterfactual_losses(zero, zero, torch.tensor([1.0, 0.0]), zero, propensity_clip=1e-3)
        >>> round(cf.item(), 4), imp  # mean(2·log 2, 0) = log 2
        (0.6931, None)
    """
    clicked = click > 0.5  # [B] bool, o_i
    propensity = torch.sigmoid(ctr_logit).detach().clamp_min(propensity_clip)  # [B], ô_i
    error = F.binary_cross_entropy_with_logits(cvr_logit, conversion, reduction="none")  # [B], e_i
    zero = torch.zeros_like(error)
    # where(), not o · e: the conversion label of an unclicked row is never read, even if it is not finite.
    if imputed is None:
        return torch.where(clicked, error / propensity, zero).mean(), None
    fixed = imputed.detach()  # [B], ê_i as a constant in L_cf
    correction = torch.where(clicked, (error - fixed) / propensity, zero)  # [B], o_i (e_i − ê_i) / ô_i
    residual = torch.where(clicked, (error.detach() - imputed) ** 2 / propensity, zero)  # [B]
    return (fixed + correction).mean(), residual.mean()


@register_model("escm2", tracks=("mtl",))
class ESCM2(ESMM):
    """ESCM²: ESMM plus an inverse-propensity (or doubly robust) counterfactual CVR loss over all impressions.

    Args:
        config: the :class:`ESCM2Config`.
        schema: a fitted schema with exactly two binary tasks, one ``conditioned_on`` the other (or name them
            with the ``funnel`` option).

    Raises:
        ModelError: the schema has no funnel (and no ``funnel`` option), more than two tasks, a regression task,
            or a task named like the product output or a loss term.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> tasks = (TaskSpec(name="click"), TaskSpec(name="buy", conditioned_on="click"))
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=tasks)
        >>> model = ESCM2(ESCM2Config(product_name="click_buy"), schema)
        >>> model.output_names, model.imputation is None
        (['click', 'buy', 'click_buy'], True)
    """

    config_class = ESCM2Config
    display_name = "ESCM²"

    def __init__(self, config: ESCM2Config, schema: FeatureSchema) -> None:
        super().__init__(config, schema)  # ESMM: funnel, product output, embedding, CTR and CVR towers
        clash = sorted({COUNTERFACTUAL, IMPUTATION} & {config.product_name, self.parent, self.child})
        if clash:
            raise ModelError(
                f"ESCM² names its auxiliary loss terms {COUNTERFACTUAL!r} and {IMPUTATION!r}; "
                f"a task or the product output is also called {clash[0]!r}",
                hint="rename the task, or set the model option `product_name` to another name",
            )
        self.propensity_clip = config.propensity_clip
        self.ctcvr_weight, self.cf_weight = config.ctcvr_weight, config.cf_weight
        self.imputation_weight = config.imputation_weight
        # Built for dr only: an unused tower would hold parameters that never learn.
        self.imputation = Tower(self.embedding.output_dim, config.imputation_tower) if config.variant == "dr" else None

    def compute_loss(
        self, features: dict[str, Tensor], labels: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``{parent: L_CTR, product_name: λ_g·L_CTCVR, "counterfactual": λ_c·L_cf}`` (+ ``"imputation"`` for dr).

        Only the parent's term carries a task name (the trainer's per-task weight applies to it); the others are
        already weighted here and added by the trainer with weight 1.

        Returns:
            ``(outputs, losses)``: outputs as :meth:`forward`, and the scalar loss terms.
        """
        x0 = self.embedding(features)  # [B, d0]
        logits = self._logits(x0)
        targets = self.targets(labels)
        ctr_logit, cvr_logit = logits[self.parent], logits[self.child]
        product = product_bce_with_logits(ctr_logit, cvr_logit, targets[self.product_name].label)  # [B]
        imputed = self.imputation(x0) if self.imputation is not None else None  # [B] or None
        counterfactual, imputation = counterfactual_losses(
            ctr_logit,
            cvr_logit,
            labels[self.parent],
            labels[self.child],
            propensity_clip=self.propensity_clip,
            imputed=imputed,
        )
        losses = {
            self.parent: task_loss(ctr_logit, targets[self.parent], from_logits=True),
            self.product_name: self.ctcvr_weight * product.mean(),
            COUNTERFACTUAL: self.cf_weight * counterfactual,
        }
        if imputation is not None:
            losses[IMPUTATION] = self.imputation_weight * imputation
        return self._outputs(logits), losses
