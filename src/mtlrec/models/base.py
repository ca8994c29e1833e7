"""The model contract.

Every model is a :class:`MultiTaskModel`: built from ``(config, schema)``, it maps the schema's input tensors to
named outputs and declares its own training targets and losses, so the trainer never asks which model it holds.

* ``forward(features) -> {output: Tensor [B]}``: probabilities for binary outputs, values for regression.
* ``targets(labels) -> {output: Target}``: which label and which rows each evaluated output is scored on
  (a task ``conditioned_on`` another is defined only where the parent label is 1, e.g. cvr on clicked rows).
* ``compute_loss(features, labels) -> (outputs, {loss_name: scalar})``: by default one term per schema task,
  BCE-with-logits (or MSE) averaged over the task's rows. Loss names equal to task names get the trainer's per-task
  weights; any other term (an auxiliary loss) is added with weight 1.

Most models only implement :meth:`MultiTaskModel.logits`; funnel models (ESMM) override ``forward``,
``targets`` and ``compute_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mtlrec.config import StrictModel
from mtlrec.schema import FeatureSchema


class ModelConfig(StrictModel):
    """Fields every model config has. Subclasses add their own, each with a default and a reason."""

    embed_dim: int = Field(default=8, ge=1, description="width of every sparse-field embedding (MMLRec default 8)")


@dataclass(frozen=True)
class Target:
    """What an output is scored against: ``label`` [B], ``mask`` [B] bool of the rows where it is defined."""

    label: Tensor
    mask: Tensor | None
    kind: Literal["binary", "regression"]


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` [B] over ``mask`` [B]; zero (with a gradient path) when the mask is empty."""
    if mask is None:
        return values.mean()
    # where(), not values * mask: a NaN on a masked-out row must not poison the loss.
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp_min(1).to(values.dtype)


def task_loss(prediction: Tensor, target: Target, *, from_logits: bool) -> Tensor:
    """BCE (binary) or MSE (regression) of one output, averaged over the target's rows.

    Args:
        prediction: [B] logits (``from_logits``) or probabilities / values.
        target: the label and mask.
        from_logits: whether ``prediction`` is a logit (numerically safer BCE).
    """
    if target.kind == "regression":
        per_row = (prediction - target.label) ** 2
    elif from_logits:
        per_row = F.binary_cross_entropy_with_logits(prediction, target.label, reduction="none")
    else:
        per_row = F.binary_cross_entropy(prediction.clamp(1e-7, 1 - 1e-7), target.label, reduction="none")
    return masked_mean(per_row, target.mask)


class MultiTaskModel(nn.Module):
    """Base class of every registered model; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    tracks: ClassVar[tuple[str, ...]] = ("mtl",)

    def __init__(self, config: ModelConfig, schema: FeatureSchema) -> None:
        super().__init__()
        self.config = config
        self.schema = schema

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs of ``forward``, in export order (default: the schema's tasks)."""
        return self.schema.task_names

    def logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pre-activation output per task, [B] each. Implemented by models that use the default forward/loss."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits() or override forward()")

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Probabilities (binary) or values (regression) per output, [B] each."""
        logits = self.logits(features)
        return {
            t.name: torch.sigmoid(logits[t.name]) if t.kind == "binary" else logits[t.name] for t in self.schema.tasks
        }

    def targets(self, labels: dict[str, Tensor]) -> dict[str, Target]:
        """One target per schema task; a ``conditioned_on`` task is masked to its parent's positive rows."""
        out: dict[str, Target] = {}
        for task in self.schema.tasks:
            mask = labels[task.conditioned_on] > 0.5 if task.conditioned_on else None
            out[task.name] = Target(labels[task.name], mask, task.kind)
        return out

    def compute_loss(
        self, features: dict[str, Tensor], labels: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Return ``(outputs, losses)``: outputs as ``forward``, one loss term per task (plus any auxiliary)."""
        logits = self.logits(features)
        targets = self.targets(labels)
        losses = {name: task_loss(logits[name], target, from_logits=True) for name, target in targets.items()}
        outputs = {
            t.name: torch.sigmoid(logits[t.name]) if t.kind == "binary" else logits[t.name] for t in self.schema.tasks
        }
        return outputs, losses
