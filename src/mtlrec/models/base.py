"""The model contract.

Every model is a :class:`MultiTaskModel`: built from ``(config, schema)``, it maps the schema's input tensors to
named outputs and declares its own training targets and losses, so the trainer never asks which model it holds.

* ``forward(features) -> {output: Tensor [B]}``: probabilities for binary outputs, values for regression.
* ``config.track`` lays out the heads (models.md §2): ``mtl`` one head per task; ``msl`` one head per scenario
  (a single task); ``mtmsl`` one head per (task, scenario), task-major. Multi-head models compute every head for
  every row (``head_logits -> [B, H]``) and :class:`HeadLayout` routes each row to its own scenario's head with a
  gather, so the outputs stay one tensor per task, a row's loss reaches only its own scenario's head, and the graph
  keeps static shapes for export.
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
from mtlrec.errors import ModelError
from mtlrec.schema import SCENARIO, FeatureSchema, TaskSpec

Track = Literal["mtl", "msl", "mtmsl"]
TRACKS: tuple[Track, ...] = ("mtl", "msl", "mtmsl")


class ModelConfig(StrictModel):
    """Fields every model config has. Subclasses add their own, each with a default and a reason."""

    embed_dim: int = Field(default=8, ge=1, description="width of every sparse-field embedding (MMLRec default 8)")
    track: Track = Field(
        default="mtl",
        description="head layout: mtl = one head per task; msl = one head per scenario (one task); "
        "mtmsl = one head per task and scenario. Each row is scored by its own scenario's head.",
    )
    tasks: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="the schema tasks this model learns and serves; None = all of them"
    )


@dataclass(frozen=True)
class Head:
    """One output head: a task, and on the msl/mtmsl tracks the scenario id whose rows it scores."""

    index: int
    task: str
    scenario: int | None
    name: str


class HeadLayout:
    """The heads of a model (task-major: head ``t·D + d`` is task t, scenario d) and the per-row routing.

    Args:
        task_names: the tasks the model learns.
        track: mtl, msl or mtmsl.
        scenarios: the scenario values (ids are their positions); ignored on mtl.

    Example:
        >>> layout = HeadLayout(["ctr"], "msl", ("app", "web"))
        >>> [h.name for h in layout.heads]
        ['ctr[app]', 'ctr[web]']
        >>> layout.route(torch.tensor([[0.1, 0.9], [0.2, 0.8]]), torch.tensor([1, 0]))["ctr"]
        tensor([0.9000, 0.2000])
    """

    def __init__(self, task_names: list[str], track: Track, scenarios: tuple[str, ...]) -> None:
        self.task_names = list(task_names)
        self.track = track
        self.routed = track != "mtl"
        self.num_scenarios = len(scenarios) if self.routed else 1
        heads: list[Head] = []
        for task in self.task_names:
            if not self.routed:
                heads.append(Head(len(heads), task, None, task))
                continue
            for d, value in enumerate(scenarios):
                heads.append(Head(len(heads), task, d, f"{task}[{value}]"))
        self.heads = tuple(heads)

    def __len__(self) -> int:
        return len(self.heads)

    def route(self, head_logits: Tensor, scenario: Tensor | None) -> dict[str, Tensor]:
        """Each task's output for each row: its own scenario's head on msl/mtmsl.

        Args:
            head_logits: [B, H] in head order.
            scenario: [B] int64 scenario ids (required when routed).

        Returns:
            ``{task: [B]}``.
        """
        if not self.routed:
            return {task: head_logits[:, t] for t, task in enumerate(self.task_names)}
        if scenario is None:
            raise ModelError(
                f"the {self.track} track routes rows by scenario, but the inputs carry no `{SCENARIO}` tensor"
            )
        per_task = head_logits.reshape(-1, len(self.task_names), self.num_scenarios)  # [B, T, D]
        index = scenario.reshape(-1, 1, 1).expand(-1, len(self.task_names), 1)  # [B, T, 1]
        chosen = per_task.gather(2, index).squeeze(2)  # [B, T]
        return {task: chosen[:, t] for t, task in enumerate(self.task_names)}


def select_tasks(schema: FeatureSchema, names: tuple[str, ...] | None) -> tuple[TaskSpec, ...]:
    """The schema's tasks named in ``names`` (schema order), or all of them; an unknown name is refused."""
    if names is None:
        return schema.tasks
    unknown = [n for n in names if n not in schema.task_names]
    if unknown or len(set(names)) != len(names):
        raise ModelError(
            f"model option `tasks` {list(names)} must name distinct schema tasks; unknown: {unknown}",
            hint=f"the schema's tasks are {schema.task_names}",
        )
    return tuple(t for t in schema.tasks if t.name in names)


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
    # Scenario-conditioned models (APG, PEPNet) read the scenario on every track.
    needs_scenario: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, schema: FeatureSchema) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        cls = type(self)
        if config.track not in cls.tracks:
            raise ModelError(
                f"model `{cls.name}` does not support the {config.track} track",
                hint=f"`{cls.name}` supports: {', '.join(cls.tracks)} (see `mtlrec models list`)",
            )
        if (config.track != "mtl" or cls.needs_scenario) and schema.scenario is None:
            why = f"the {config.track} track" if config.track != "mtl" else f"model `{cls.name}`"
            raise ModelError(
                f"{why} needs a scenario field, and this dataset's schema has none",
                hint="use a dataset with a scenario (`mtlrec data list` shows them) or the mtl track",
            )
        self.tasks = select_tasks(schema, config.tasks)
        if config.track == "msl" and len(self.tasks) != 1:
            raise ModelError(
                f"the msl track learns one task with one head per scenario; {len(self.tasks)} tasks are selected "
                f"({', '.join(t.name for t in self.tasks)})",
                hint="pick one with the model option `tasks: [NAME]`, or use the mtmsl track for several tasks",
            )
        scenarios = tuple(schema.scenario.values or ()) if schema.scenario is not None else ()
        self.heads = HeadLayout([t.name for t in self.tasks], config.track, scenarios)

    @property
    def task_names(self) -> list[str]:
        """The tasks this model learns, in schema order."""
        return [t.name for t in self.tasks]

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs of ``forward``, in export order (default: the model's tasks)."""
        return self.task_names

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """``(parameters, learning-rate multiplier)`` groups for the optimiser; default: one group at 1.0.

        A model overrides it when the paper trains some parameters faster (Cross-stitch's mixing units).
        """
        return [(list(self.parameters()), 1.0)]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit of every head for every row, [B, H] in ``self.heads`` order. Multi-head models implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement head_logits(), logits() or forward()")

    def logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pre-activation output per task, [B] each: the heads routed by scenario (see :class:`HeadLayout`)."""
        return self.heads.route(self.head_logits(features), features.get(SCENARIO))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Probabilities (binary) or values (regression) per output, [B] each."""
        logits = self.logits(features)
        return {t.name: torch.sigmoid(logits[t.name]) if t.kind == "binary" else logits[t.name] for t in self.tasks}

    def targets(self, labels: dict[str, Tensor]) -> dict[str, Target]:
        """One target per task; a ``conditioned_on`` task is masked to its parent's positive rows."""
        out: dict[str, Target] = {}
        for task in self.tasks:
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
        outputs = {t.name: torch.sigmoid(logits[t.name]) if t.kind == "binary" else logits[t.name] for t in self.tasks}
        return outputs, losses
