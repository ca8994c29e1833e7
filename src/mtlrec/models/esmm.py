"""ESMM: Entire Space Multi-task Model (Ma, Zhao, Huang, Wang, Hu, Zhu, Gai; SIGIR 2018, Alibaba).

Conversion is observed only after a click, so a CVR model trained on clicked rows is biased (sample selection)
and starved of data. ESMM (models.md §3.5) learns pCVR over the *entire* impression space through the identity
pCTCVR = pCTR × pCVR: shared embeddings feed a CTR tower and a CVR tower, and only pCTR and the product are
supervised, on every impression::

    x0    = FeatureEmbedding(features)                       # [B, d0]
    pCTR  = σ(Tower_ctr(x0)),  pCVR = σ(Tower_cvr(x0))       # [B] each
    pCTCVR = pCTR · pCVR                                     # [B]
    L = BCE(click, pCTR) + BCE(click · conversion, pCTCVR)   # no direct CVR loss

The funnel comes from the schema: the child task C (conversion) is ``conditioned_on`` the parent P (click).
Outputs are ``{P: pCTR, C: pCVR, product_name: pCTCVR}`` (MMLRec returns only pCTR and pCTCVR; pCVR is served
too because bidding needs it). Evaluation scores C on clicked rows only and the product on all rows.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, TaskSpec, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="cvr", conditioned_on="ctr")))
    >>> ESMM(ESMMConfig(), schema).output_names
    ['ctr', 'cvr', 'ctcvr']
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mtlrec.errors import ModelError
from mtlrec.models.base import ModelConfig, MultiTaskModel, Target, masked_mean, task_loss
from mtlrec.models.blocks import FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema, TaskSpec


class ESMMConfig(ModelConfig):
    """ESMM hyperparameters.

    Defaults (models.md §2, defaults table): both towers (256, 128), as DeepCTR-Torch and MMLRec (which reuses
    its expert units for both towers).
    """

    ctr_tower: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="tower of the parent (click) task")
    cvr_tower: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="tower of the child (conversion)")
    funnel: tuple[str, str] | None = Field(
        default=None,
        description="(parent, child) tasks to treat as a funnel when the schema declares none; a forced fit "
        "for datasets without a real click→conversion relation (torch-rechub does this on Census)",
    )
    # Same character rule as schema names: the product is an exported output name.
    product_name: str = Field(
        default="ctcvr", pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", description="name of the pCTR·pCVR output"
    )


def product_bce_with_logits(ctr_logit: Tensor, cvr_logit: Tensor, label: Tensor) -> Tensor:
    """Per-row BCE of p = σ(a)·σ(b) against ``label``, computed from the logits a, b without clamping.

    Why not BCE on the probability: clamping the product (``BCE(p.clamp(eps, 1 - eps))``) zeroes the gradient
    wherever the clamp is active, and pCTR·pCVR of two small rates reaches 1e-7 easily; σ(a)·σ(b) also
    underflows in float32. In log space both terms are exact:

    * log p = logsigmoid(a) + logsigmoid(b);
    * 1 - σ(a)σ(b) = (e^-a + e^-b + e^-(a+b)) / ((1 + e^-a)(1 + e^-b)), so
      log(1 - p) = logsumexp(-a, -b, -a-b) + log p, finite with a finite gradient for every finite a, b
      (unlike log1p(-exp(log p)), which needs a clamp as p → 1).

    Args:
        ctr_logit: a [B], the parent tower's logit.
        cvr_logit: b [B], the child tower's logit.
        label: [B] in {0, 1}, the product label (click · conversion).

    Returns:
        [B] per-row binary cross-entropy.

    Example:
        >>> zero = torch.zeros(1)
        >>> product_bce_with_logits(zero, zero, label=zero)  # p = 1/4, label 0: -log(3/4)
        tensor([0.2877])
    """
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)  # [B]
    terms = torch.stack((-ctr_logit, -cvr_logit, -ctr_logit - cvr_logit))  # [3, B]
    log_not_p = torch.logsumexp(terms, dim=0) + log_p  # [B]
    return -(label * log_p + (1.0 - label) * log_not_p)


def funnel_tasks(
    tasks: tuple[TaskSpec, ...], explicit: tuple[str, str] | None = None, model: str = "ESMM"
) -> tuple[str, str]:
    """The (parent, child) task names of a click→conversion funnel among ``tasks``; refuse any other layout.

    ``explicit`` (the config's ``funnel``) names the pair for a schema that declares no ``conditioned_on``.
    Shared by the funnel models (ESMM, ESCM², AITM); ``model`` names the caller in the errors.
    """
    names = [t.name for t in tasks]
    described = ", ".join(
        f"`{t.name}`" + (f" (conditioned_on `{t.conditioned_on}`)" if t.conditioned_on else "") for t in tasks
    )
    pairs = [(t.conditioned_on, t.name) for t in tasks if t.conditioned_on is not None and t.conditioned_on in names]
    if explicit is not None:
        unknown = [name for name in explicit if name not in names]
        if unknown or explicit[0] == explicit[1]:
            raise ModelError(
                f"{model} option `funnel` {list(explicit)} must name two different tasks of the schema: {described}",
                hint="set funnel: [<click task>, <conversion task>]",
            )
        if pairs and pairs[0] != explicit:
            raise ModelError(
                f"{model} option `funnel` {list(explicit)} contradicts the schema's funnel {list(pairs[0])}",
                hint="drop the `funnel` option: the schema's conditioned_on already defines it",
            )
        pairs = [explicit]
    if not pairs:
        raise ModelError(
            f"{model} needs a click→conversion funnel, i.e. a task with `conditioned_on`; "
            f"this schema's tasks are {described}",
            hint="declare the conversion task with `conditioned_on: <click task>`, set the model option "
            "`funnel: [parent, child]` to force a pair, or use shared_bottom/mmoe",
        )
    if len(tasks) != 2:
        raise ModelError(
            f"{model} models exactly two tasks, a click task and a conversion task conditioned_on it; "
            f"{len(tasks)} are selected: {described}",
            hint="select the funnel's two tasks with the model option `tasks: [click, conversion]`, "
            "or use shared_bottom / mmoe for the others",
        )
    parent, child = pairs[0]
    kinds = {t.name: t.kind for t in tasks}
    if kinds[parent] != "binary" or kinds[child] != "binary":
        raise ModelError(
            f"{model} needs binary click and conversion tasks; "
            f"`{parent}` is {kinds[parent]}, `{child}` is {kinds[child]}",
            hint="pCTCVR = pCTR·pCVR is a probability; use shared_bottom / mmoe for a regression task",
        )
    return parent, child


@register_model("esmm", tracks=("mtl",))
class ESMM(MultiTaskModel):
    """ESMM: CTR and CVR towers on shared embeddings, trained on pCTR and pCTCVR = pCTR·pCVR everywhere.

    Args:
        config: the :class:`ESMMConfig`.
        schema: a fitted schema with exactly two tasks, one ``conditioned_on`` the other.

    Raises:
        ModelError: the schema has no funnel, more than two tasks, a regression child, or a task named like
            the product output.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> tasks = (TaskSpec(name="click"), TaskSpec(name="buy", conditioned_on="click"))
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=tasks)
        >>> ESMM(ESMMConfig(product_name="click_buy"), schema).output_names
        ['click', 'buy', 'click_buy']
    """

    config_class = ESMMConfig
    # How errors name the model (ESCM² subclasses ESMM).
    display_name: ClassVar[str] = "ESMM"

    def __init__(self, config: ESMMConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.parent, self.child = funnel_tasks(self.tasks, config.funnel, model=self.display_name)
        if config.product_name in schema.task_names:
            raise ModelError(
                f"{self.display_name}'s product output `{config.product_name}` has the name of a schema task",
                hint="set the model option `product_name` to another name",
            )
        self.product_name = config.product_name
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        self.ctr_tower = Tower(self.embedding.output_dim, config.ctr_tower)
        self.cvr_tower = Tower(self.embedding.output_dim, config.cvr_tower)

    @property
    def output_names(self) -> list[str]:
        """Parent (pCTR), child (pCVR) and product (pCTCVR)."""
        return [self.parent, self.child, self.product_name]

    def _logits(self, x0: Tensor) -> dict[str, Tensor]:
        return {self.parent: self.ctr_tower(x0), self.child: self.cvr_tower(x0)}  # [B] each

    def logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The two towers' logits, ``{parent: a, child: b}``, [B] each (the product has no logit)."""
        return self._logits(self.embedding(features))

    def _outputs(self, logits: dict[str, Tensor]) -> dict[str, Tensor]:
        p_ctr = torch.sigmoid(logits[self.parent])  # [B]
        p_cvr = torch.sigmoid(logits[self.child])  # [B]
        return {self.parent: p_ctr, self.child: p_cvr, self.product_name: p_ctr * p_cvr}

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Probabilities ``{parent: pCTR, child: pCVR, product_name: pCTR·pCVR}``, [B] each."""
        return self._outputs(self.logits(features))

    def targets(self, labels: dict[str, Tensor]) -> dict[str, Target]:
        """Parent on all rows, child on the parent's positive rows, product (label parent·child) on all."""
        parent, child = labels[self.parent], labels[self.child]
        return {
            self.parent: Target(parent, None, "binary"),
            self.child: Target(child, parent > 0.5, "binary"),
            self.product_name: Target(parent * child, None, "binary"),
        }

    def compute_loss(
        self, features: dict[str, Tensor], labels: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Entire-space loss: ``{parent: BCE(pCTR), product_name: BCE(pCTCVR)}`` on all rows, no CVR term.

        The parent's term carries the task name, so the trainer's per-task weight applies to it; the product
        term is an extra term (weight 1).

        Returns:
            ``(outputs, losses)``: outputs as :meth:`forward`, and the two scalar loss terms.
        """
        logits = self.logits(features)
        targets = self.targets(labels)
        product = product_bce_with_logits(logits[self.parent], logits[self.child], targets[self.product_name].label)
        losses = {
            self.parent: task_loss(logits[self.parent], targets[self.parent], from_logits=True),
            self.product_name: masked_mean(product, None),
        }
        return self._outputs(logits), losses
