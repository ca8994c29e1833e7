"""AITM: Adaptive Information Transfer Multi-task (Xi, Chen, Yan, Zhang, Zhu, Zhuang, Chen; KDD 2021, Meituan).

"Modeling the Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted
Display Advertising".

A click → conversion funnel learned as a chain (models.md §3.12, §3.16): each task has its own tower on the shared
embeddings, and a later task reads what the earlier task learned through the Adaptive Information Transfer (AIT)
module, an attention over two items: the information transferred from the previous task and its own tower's
output. A calibrator term penalises a conversion probability above the click probability::

    x0    = FeatureEmbedding(features)                        # [B, d0]
    q_t   = MLP_t(x0)                                         # [B, h] per task t = 1..T (funnel order)
    z_1   = q_1                                               # [B, h]
    p_t-1 = Transfer_t-1(z_t-1)                               # [B, h], a Linear, t >= 2
    U     = (p_t-1, q_t)                                      # [B, 2, h]
    a_u   = <h1(u), h2(u)> / sqrt(h)                          # [B, 2] (query · key of each item)
    w     = softmax_u(a)                                      # [B, 2], sums to 1 over the two items
    z_t   = Σ_u w_u · h3(u)                                   # [B, h]
    logit_t = Out_t(z_t),  P_t = σ(logit_t)                   # [B]

Labels and loss: both outputs live on the whole impression space, as in the paper: the parent (click) output
``P_1`` is P(click | impression) and the child output ``P_2`` is the end-to-end P(click ∧ conversion |
impression), NOT the post-click CVR. Both are BCE on every row, the child's label being ``click · conversion``::

    L = BCE(click, P_1) + BCE(click · conversion, P_2)
        + α · mean_i max(P_2,i − P_1,i, 0)                    # "calibrator", α = calibrator_weight

The calibrator is averaged over the batch (AITM-torch issue #4: a sum scales with the batch size). ``targets()``
scores the outputs against the same labels on the same rows as the loss, so the child's reported metrics are
CTCVR metrics over every impression.

The funnel comes from the schema (the child task ``conditioned_on`` the parent) or from the ``funnel`` option;
exactly two tasks are supported, as in MMLRec. The modules are kept per funnel step (``ModuleList`` s), so a longer
chain (click → cart → buy) would only need :func:`~mtlrec.models.esmm.funnel_tasks` to return an ordered chain.

Deviations from released code, and why:

* MMLRec and MTReclib omit the calibrator (MTReclib's maintainer says so in its issue #3); the paper's loss has it,
  so it is here, with the paper's example weight 0.6.
* AITM-torch scores the attention with query · value; the paper (and this module) uses query · key.
* AITM-torch sums the calibrator over the batch; it is averaged here (see above).
* The towers are single MLPs with one dropout rate (AITM-torch uses per-layer rates 0.1/0.3/0.3); set
  ``tower.dropout`` to regularise.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="cvr", conditioned_on="ctr")))
    >>> model = AITM(AITMConfig(), schema)
    >>> model.attention_weights({"sparse_ids": torch.tensor([[2], [5]])})["cvr"].shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mtlrec.errors import ModelError
from mtlrec.models.base import ModelConfig, MultiTaskModel, Target, task_loss
from mtlrec.models.blocks import MLP, FeatureEmbedding, MLPConfig
from mtlrec.models.esmm import funnel_tasks
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema

CALIBRATOR = "calibrator"


class AITMConfig(ModelConfig):
    """AITM hyperparameters.

    Defaults: towers (128, 64, 32) as the paper's code and AITM-torch (without their per-layer dropout; MMLRec's
    convention is dropout 0); calibrator weight α = 0.6, the paper's example run (``--weight 0.6``).
    """

    tower: MLPConfig = Field(
        default=MLPConfig(hidden=(128, 64, 32)),
        description="layers of each task's tower; the last width h is also the attention width",
    )
    calibrator_weight: float = Field(
        default=0.6, ge=0.0, description="α of the calibrator term α·mean(max(p_child − p_parent, 0)); 0 disables it"
    )
    funnel: tuple[str, str] | None = Field(
        default=None,
        description="(parent, child) tasks to treat as a funnel when the schema declares none (a forced fit for "
        "datasets without a real click→conversion relation)",
    )


class AttentionTransfer(nn.Module):
    """The AIT module: softmax attention over the transferred vector and the task's own tower output.

    Each item u gets the score ⟨h1(u), h2(u)⟩/√h; the weights are a softmax over the two items and the output is
    the weighted sum of the h3 projections.

    Args:
        dim: the width h of both items.

    Example:
        >>> z, w = AttentionTransfer(4)(torch.zeros(3, 4), torch.ones(3, 4))
        >>> z.shape, w.shape, torch.allclose(w.sum(dim=1), torch.ones(3))
        (torch.Size([3, 4]), torch.Size([3, 2]), True)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)  # h1
        self.key = nn.Linear(dim, dim)  # h2
        self.value = nn.Linear(dim, dim)  # h3
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, transferred: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse ``transferred`` (p_{t-1}) and ``own`` (q_t), [B, h] each.

        Returns:
            ``(z_t [B, h], weights [B, 2])``; weights column 0 is the transferred item, column 1 the own tower.
        """
        items = torch.stack((transferred, own), dim=1)  # [B, 2, h]
        query: Tensor = self.query(items)  # [B, 2, h]
        key: Tensor = self.key(items)  # [B, 2, h]
        value: Tensor = self.value(items)  # [B, 2, h]
        scores = (query * key).sum(dim=-1) * self.scale  # [B, 2]
        weights = torch.softmax(scores, dim=1)  # [B, 2]
        fused = (weights.unsqueeze(-1) * value).sum(dim=1)  # [B, h]
        return fused, weights


@register_model("aitm", tracks=("mtl",))
class AITM(MultiTaskModel):
    """AITM: per-task towers chained by attention-based information transfer, with a funnel calibrator.

    Args:
        config: the :class:`AITMConfig`.
        schema: a fitted schema with exactly two binary tasks, one ``conditioned_on`` the other (or name them
            with the ``funnel`` option).

    Raises:
        ModelError: the schema has no funnel (and no ``funnel`` option), more than two tasks, or a regression task.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> tasks = (TaskSpec(name="buy", conditioned_on="click"), TaskSpec(name="click"))
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=tasks)
        >>> AITM(AITMConfig(tower=MLPConfig(hidden=(8,))), schema).output_names  # funnel order, parent first
        ['click', 'buy']
    """

    config_class = AITMConfig

    def __init__(self, config: AITMConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.parent, self.child = funnel_tasks(self.tasks, config.funnel, model="AITM")
        if CALIBRATOR in (self.parent, self.child):
            raise ModelError(
                f"AITM names its auxiliary loss term {CALIBRATOR!r}, and a funnel task has that name",
                hint="rename the task",
            )
        self.funnel = (self.parent, self.child)  # task order of every ModuleList below
        self.calibrator_weight = config.calibrator_weight
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        towers = [MLP(self.embedding.output_dim, config.tower) for _ in self.funnel]
        self.towers = nn.ModuleList(towers)
        dim = towers[0].output_dim
        steps = len(self.funnel) - 1
        self.transfers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(steps))  # g_{t-1}: z_{t-1} -> p_{t-1}
        self.attentions = nn.ModuleList(AttentionTransfer(dim) for _ in range(steps))
        self.outputs = nn.ModuleList(nn.Linear(dim, 1) for _ in self.funnel)

    @property
    def output_names(self) -> list[str]:
        """Parent (P(click)) then child (P(click ∧ conversion)), the funnel order."""
        return list(self.funnel)

    def _chain(self, features: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Logits per task and AIT weights per later task, ``({task: [B]}, {task: [B, 2]})``."""
        x0 = self.embedding(features)  # [B, d0]
        z = self.towers[0](x0)  # [B, h], z_1 = q_1
        logits = {self.funnel[0]: self.outputs[0](z).squeeze(-1)}  # [B]
        weights: dict[str, Tensor] = {}
        for step, (transfer, attention) in enumerate(zip(self.transfers, self.attentions, strict=True)):
            task = self.funnel[step + 1]
            own = self.towers[step + 1](x0)  # [B, h], q_t
            z, weights[task] = attention(transfer(z), own)  # [B, h], [B, 2]
            logits[task] = self.outputs[step + 1](z).squeeze(-1)  # [B]
        return logits, weights

    def logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Logit of each output, ``{parent: [B], child: [B]}``."""
        return self._chain(features)[0]

    def attention_weights(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The AIT weights of each later task, for inspecting how much it borrows from the earlier one.

        Args:
            features: the model inputs, as for ``forward``.

        Returns:
            ``{child: [B, 2]}``: column 0 weighs the transferred vector, column 1 the task's own tower; rows sum
            to 1.
        """
        return self._chain(features)[1]

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Probabilities ``{parent: P(click), child: P(click ∧ conversion)}``, [B] each."""
        return {task: torch.sigmoid(logit) for task, logit in self.logits(features).items()}

    def targets(self, labels: dict[str, Tensor]) -> dict[str, Target]:
        """Both outputs on every row: parent against the click, child against ``click · conversion``.

        The product keeps the label meaningful when the funnel is forced on a schema whose child label is not
        already zero wherever the parent is.
        """
        parent = labels[self.parent]
        return {
            self.parent: Target(parent, None, "binary"),
            self.child: Target(parent * labels[self.child], None, "binary"),
        }

    def compute_loss(
        self, features: dict[str, Tensor], labels: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Entire-space BCE of both outputs (named by task) plus the ``calibrator`` term.

        Returns:
            ``(outputs, losses)``: outputs as :meth:`forward`; losses ``{parent, child, "calibrator"}``, the
            calibrator already multiplied by ``calibrator_weight`` (the trainer adds it with weight 1).
        """
        logits = self.logits(features)
        targets = self.targets(labels)
        losses = {task: task_loss(logits[task], targets[task], from_logits=True) for task in self.funnel}
        outputs = {task: torch.sigmoid(logit) for task, logit in logits.items()}
        excess = F.relu(outputs[self.child] - outputs[self.parent])  # [B], > 0 where P(conversion) > P(click)
        losses[CALIBRATOR] = self.calibrator_weight * excess.mean()
        return outputs, losses
