"""HMoE: Hybrid of implicit and explicit Mixture-of-Experts (Li, Zhang, Yang, Wang, Zhu, Xu, Gai, Zhang; CIKM 2020,
Alibaba/AliExpress), "Improving Multi-Scenario Learning to Rank in E-commerce by Exploiting Task Relationships in
the Label Space".

Structure (models.md §3.14, §3.16). The paper's "scenarios" are this model's heads, whatever they are: tasks on
the mtl track, scenarios on msl, (task, scenario) pairs on mtmsl. Two parts:

* implicit (feature space): an MMoE over the heads, whose per-head tower MLP gives a hidden vector r_j;
* explicit (label space): per head s a task-weight net gives a softmax w_s over all heads, and head s scores the
  w_s-weighted mix of every head's hidden vector, with **task-constrained back-propagation**: head s's loss
  reaches the other heads' vectors r_j (j ≠ s) only as constants, so it never updates their towers or gates::

    x0      = FeatureEmbedding(features)                           # [B, d0]
    f_e     = Expert_e(x0)                                         # [B, h_e] for e = 1..E
    g_j     = Gate_j(x0)                                           # [B, E] softmax, per head j
    r_j     = MLP_tower,j(Σ_e g_{j,e} f_e)                         # [B, h] per head j
    R       = stack_j r_j                                          # [B, H, h]
    w_s     = softmax(Linear_s(MLP_weight,s(x0)))                  # [B, H] per head s;  W = stack_s w_s  [B, H, H]
    fused_s = w_ss r_s + Σ_{j≠s} w_sj stopgrad(r_j)                # [B, h]
            = (W ⊙ I) R + (W ⊙ (1 - I)) stopgrad(R)   (row s)      # one pair of bmm for all s, no loop over pairs
    logit_s = Linear_s(fused_s)                                    # [B]

The mixing runs on the towers' hidden vectors rather than on their scores, as in MMLRec (the paper mixes the
scenario-specific outputs; mixing the last hidden layer keeps a per-head output layer on top of the mix).

With a single head (one task on mtl) the softmax over one head is 1 and the explicit part is the identity, so the
weight net receives no gradient; it is still built so that the model has the same structure on every layout.

Deviations from the MMLRec release: none in the math. MMLRec trains every scenario head on every row (its domain
mask is discarded, models.md §1.4); here each row's loss uses its own scenario's head (:class:`HeadLayout`).

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = HMoE(HMoEConfig(num_experts=2), schema)
    >>> weights = model.head_weights({"sparse_ids": torch.tensor([[2], [5]])})
    >>> weights.shape, torch.allclose(weights.sum(dim=-1), torch.ones(2, 2))
    (torch.Size([2, 2, 2]), True)
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, Gate, MLPConfig
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class HMoEConfig(ModelConfig):
    """HMoE hyperparameters.

    Defaults (models.md §2, defaults table), all from MMLRec's code defaults: 4 experts of (256, 128), a (64,)
    MLP before each softmax gate, towers (64,), and a (64,) MLP in each head's task-weight net. The paper gives no
    sizes beyond these structures.
    """

    num_experts: int = Field(default=4, ge=1, description="number of experts E shared by every head")
    expert: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="layers of each expert")
    gate: MLPConfig | None = Field(
        default=MLPConfig(hidden=(64,)),
        description="hidden layers of each head's expert gate (MMLRec (64,)); None = linear gate as in MMoE",
    )
    tower: MLPConfig = Field(
        default=MLPConfig(hidden=(64,)),
        description="hidden layers of each head's tower; its last layer is the vector r_j mixed across heads",
    )
    weight_net: MLPConfig | None = Field(
        default=MLPConfig(hidden=(64,)),
        description="hidden layers of each head's task-weight net (softmax over heads); None = linear",
    )


@register_model("hmoe", tracks=("mtl", "msl", "mtmsl"))
class HMoE(MultiTaskModel):
    """HMoE: MMoE towers whose hidden vectors are mixed across heads, other heads' vectors stop-gradient.

    Args:
        config: the :class:`HMoEConfig`.
        schema: a fitted schema; one gate, tower, task-weight net and output layer per head.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> model = HMoE(HMoEConfig(num_experts=2, tower=MLPConfig(hidden=(8,))), schema)
        >>> len(model.experts), model.outputs[0].in_features
        (2, 8)
    """

    config_class = HMoEConfig
    mask: Tensor

    def __init__(self, config: HMoEConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        in_dim = self.embedding.output_dim
        experts = [MLP(in_dim, config.expert) for _ in range(config.num_experts)]  # independently initialised
        self.experts = nn.ModuleList(experts)
        expert_dim = experts[0].output_dim
        heads = self.heads.heads
        num_heads = len(heads)
        self.gates = nn.ModuleList(Gate(in_dim, config.num_experts, config.gate) for _ in heads)
        towers = [MLP(expert_dim, config.tower) for _ in heads]
        self.towers = nn.ModuleList(towers)
        # A task-weight net is a softmax gate over the heads: MLP then Linear to H, softmax.
        self.weight_nets = nn.ModuleList(Gate(in_dim, num_heads, config.weight_net) for _ in heads)
        self.outputs = nn.ModuleList(nn.Linear(towers[0].output_dim, 1) for _ in heads)
        # Identity over (s, j): 1 where head s mixes its own vector (gradient flows), 0 where it mixes another's.
        self.register_buffer("mask", torch.eye(num_heads), persistent=False)

    def _tower_vectors(self, x0: Tensor) -> Tensor:
        """The implicit part: each head's tower hidden vector r_j over its gated expert mix, [B, H, h]."""
        experts = torch.stack([expert(x0) for expert in self.experts], dim=1)  # [B, E, h_e]
        vectors: list[Tensor] = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = gate(x0).unsqueeze(1)  # [B, 1, E]
            mixed = torch.bmm(weights, experts).squeeze(1)  # [B, h_e]
            vectors.append(tower(mixed))  # [B, h]
        return torch.stack(vectors, dim=1)  # [B, H, h]

    def _head_weights(self, x0: Tensor) -> Tensor:
        """The explicit part's mixing weights, [B, H, H]: row s is head s's softmax over the heads."""
        return torch.stack([net(x0) for net in self.weight_nets], dim=1)  # [B, H, H]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        x0 = self.embedding(features)  # [B, d0]
        vectors = self._tower_vectors(x0)  # [B, H, h]
        weights = self._head_weights(x0)  # [B, H, H]
        own = weights * self.mask  # [B, H, H], diagonal w_ss only
        others = weights - own  # [B, H, H], off-diagonal w_sj (j ≠ s) only
        # Task-constrained back-propagation: head s reaches r_j (j ≠ s) only as a constant.
        fused = torch.bmm(own, vectors) + torch.bmm(others, vectors.detach())  # [B, H, h]
        logits = [out(fused[:, s]) for s, out in enumerate(self.outputs)]  # H × [B, 1]
        return torch.cat(logits, dim=1)  # [B, H]

    def head_weights(self, features: dict[str, Tensor]) -> Tensor:
        """Each head's weights over all heads in the label-space mix, for inspecting learned head relationships.

        Args:
            features: the model inputs, as for ``forward``.

        Returns:
            [B, H, H]: entry (b, s, j) is the weight head s gives head j's tower vector on row b; rows sum to 1.
        """
        return self._head_weights(self.embedding(features))  # [B, H, H]
