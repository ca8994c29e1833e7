"""MMoE: Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong, Chi; KDD 2018, Google).

Structure (models.md §3.6): E expert MLPs over the shared input layer; each task t has its own softmax
gate over the experts and its own tower over the gated mixture::

    x0      = FeatureEmbedding(features)           # [B, d0]
    f_e     = Expert_e(x0)                         # [B, h] for e = 1..E
    g_t     = softmax(W_t · MLP_gate,t(x0))        # [B, E] (linear gate W_t · x0 by default, as in the paper)
    h_t     = Σ_e g_{t,e} f_e                      # [B, h]
    logit_t = Tower_t(h_t)                         # [B]

The experts are a ``ModuleList`` of ordinary :class:`~mtlrec.models.blocks.MLP` s so that each keeps its own
batch norm and PReLU parameters; with the usual 3-8 experts the Python loop costs little next to the matrix
products.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = MMoE(MMoEConfig(num_experts=3), schema)
    >>> model.gate_weights({"sparse_ids": torch.tensor([[2], [5]])})["ctr"].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, Gate, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class MMoEConfig(ModelConfig):
    """MMoE hyperparameters.

    Defaults (models.md §2, defaults table): 4 experts of (256, 128) and towers (64,) as in MMLRec's code
    defaults; a linear gate as in the paper and MTReclib (MMLRec and DeepCTR-Torch put a (64,) MLP before it:
    set ``gate``).
    """

    num_experts: int = Field(default=4, ge=1, description="number of experts E shared by every task")
    expert: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="layers of each expert")
    gate: MLPConfig | None = Field(default=None, description="hidden layers of each gate; None = linear gate")
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each task's tower")


@register_model("mmoe", tracks=("mtl", "msl", "mtmsl"))
class MMoE(MultiTaskModel):
    """MMoE: shared experts mixed by one softmax gate per task, then one tower per task.

    Args:
        config: the :class:`MMoEConfig`.
        schema: a fitted schema; one gate and one tower per task.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> len(MMoE(MMoEConfig(num_experts=2), schema).experts)
        2
    """

    config_class = MMoEConfig

    def __init__(self, config: MMoEConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        in_dim = self.embedding.output_dim
        experts = [MLP(in_dim, config.expert) for _ in range(config.num_experts)]  # independently initialised
        self.experts = nn.ModuleList(experts)
        expert_dim = experts[0].output_dim
        # One gate and one tower per head: per task (mtl), per scenario (msl), per task and scenario (mtmsl).
        heads = self.heads.heads
        self.gates = nn.ModuleList(Gate(in_dim, config.num_experts, config.gate) for _ in heads)
        self.towers = nn.ModuleList(Tower(expert_dim, config.tower) for _ in heads)

    def _experts(self, x0: Tensor) -> Tensor:
        """Outputs of every expert, [B, E, h]."""
        return torch.stack([expert(x0) for expert in self.experts], dim=1)  # [B, E, h]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        x0 = self.embedding(features)  # [B, d0]
        experts = self._experts(x0)  # [B, E, h]
        out: list[Tensor] = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = gate(x0).unsqueeze(1)  # [B, 1, E]
            mixed = torch.bmm(weights, experts).squeeze(1)  # [B, 1, h] -> [B, h]
            out.append(tower(mixed))  # [B]
        return torch.stack(out, dim=1)  # [B, H]

    def gate_weights(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each head's weights over the experts, for inspecting expert use (e.g. gate collapse).

        Args:
            features: the model inputs, as for ``forward``.

        Returns:
            ``{head name: [B, E]}``, each row summing to 1 (head names are task names on the mtl track).
        """
        x0 = self.embedding(features)  # [B, d0]
        return {head.name: gate(x0) for head, gate in zip(self.heads.heads, self.gates, strict=True)}
