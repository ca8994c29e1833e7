"""PLE: Progressive Layered Extraction (Tang, Liu, Zhao, Gong; RecSys 2020 best paper, Tencent).

PLE stacks L levels of Customized Gate Control (CGC, models.md §3.7). At each level every head h owns K
head-specific experts, all heads share S experts, and head h's gate mixes its own experts with the shared ones; a
shared gate over *all* experts builds the shared branch's input to the next level::

    x0 = FeatureEmbedding(features)                                   # [B, d0]
    level 1 inputs: a^0_h = x0 for every head h, a^0_s = x0
    level l = 1..L:
        E^l_h = [Expert^l_{h,k}(a^{l-1}_h)]_k                         # [B, K, e]  head h's own experts
        E^l_s = [Expert^l_{s,k}(a^{l-1}_s)]_k                         # [B, S, e]  shared experts
        a^l_h = softmax(Gate^l_h(a^{l-1}_h)) · [E^l_h; E^l_s]         # [B, K+S] · [B, K+S, e] -> [B, e]
        a^l_s = softmax(Gate^l_s(a^{l-1}_s)) · [E^l_1; ...; E^l_H; E^l_s]   # [B, H·K+S] -> [B, e], only if l < L
    logit_h = Tower_h(a^L_h)                                          # [B]

Heads are tasks (mtl), scenarios (msl) or (task, scenario) pairs (mtmsl). Gates are linear by default
(``softmax(W · a)``, as the paper and MTReclib; set ``gate`` for an MLP before it, as MMLRec and DeepCTR-Torch do).
Every level's experts use the same ``expert`` layers, as MMLRec and DeepCTR-Torch (level ≥ 2 experts read the
e-wide outputs of the level before).

Deviation from the MMLRec release (models.md §1.4.6): it builds ``specific_experts`` shared experts per level but
uses only ``shared_experts`` of them; here exactly the experts and gates that are used are built, and the last
level has no shared gate (its output would feed nothing), so every parameter is trained. The paper's joint loss
on per-task sample spaces is the default loss of the contract (a ``conditioned_on`` task is scored on its
parent's positive rows); its dynamic task weights are not implemented (no peer implements them).

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = PLE(PLEConfig(expert=MLPConfig(hidden=(8,)), tower=MLPConfig(hidden=(4,))), schema)
    >>> [out.shared is None for out in model.levels({"sparse_ids": torch.tensor([[2], [5]])})]
    [False, True]
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, Gate, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class PLEConfig(ModelConfig):
    """PLE hyperparameters.

    Defaults (models.md §1.3 and §2, defaults table): 2 levels, 2 shared and 3 head-specific experts per level as
    in every MMLRec config; experts (256, 128) and towers (64,) as the MMLRec code defaults; a linear gate as in the
    paper and MTReclib (MMLRec and DeepCTR-Torch put a (64,) MLP before it: set ``gate``).
    """

    num_levels: int = Field(default=2, ge=1, description="number of stacked CGC levels L")
    shared_experts: int = Field(default=2, ge=1, description="shared experts S per level")
    specific_experts: int = Field(default=3, ge=1, description="experts K of each head per level")
    expert: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="layers of each expert")
    gate: MLPConfig | None = Field(default=None, description="hidden layers of each gate; None = linear gate")
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each head's tower")


class LevelOutput(NamedTuple):
    """What one CGC level computes, for the next level and for inspection.

    Attributes:
        heads: each head's output a^l_h, [B, e] each, in ``self.heads`` order.
        shared: the shared branch's output a^l_s [B, e]; None at the last level (no shared gate).
        head_gates: each head's weights over (its own K experts, then the S shared ones), [B, K+S] each.
        shared_gate: the shared gate's weights over (head 1's experts, ..., head H's, shared), [B, H·K+S];
            None at the last level.
    """

    heads: list[Tensor]
    shared: Tensor | None
    head_gates: list[Tensor]
    shared_gate: Tensor | None


class ExpertGroup(nn.Module):
    """``count`` independently initialised expert MLPs reading the same input.

    Example:
        >>> ExpertGroup(6, 3, MLPConfig(hidden=(4,)))(torch.zeros(2, 6)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, in_dim: int, count: int, cfg: MLPConfig) -> None:
        super().__init__()
        experts = [MLP(in_dim, cfg) for _ in range(count)]
        self.experts = nn.ModuleList(experts)
        self.output_dim = experts[0].output_dim

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in_dim] to every expert's output, [B, count, e]."""
        return torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, count, e]


class CGCLevel(nn.Module):
    """One Customized Gate Control level: per-head and shared experts, per-head gates, an optional shared gate.

    Args:
        in_dim: width of this level's inputs (x0 at level 1, the expert width e after).
        num_heads: H.
        config: the PLE config (expert counts and layers, gate layers).
        shared_gate: whether to build the shared gate (every level but the last).
    """

    def __init__(self, in_dim: int, num_heads: int, config: PLEConfig, *, shared_gate: bool) -> None:
        super().__init__()
        k, s = config.specific_experts, config.shared_experts
        self.specific = nn.ModuleList(ExpertGroup(in_dim, k, config.expert) for _ in range(num_heads))
        self.shared = ExpertGroup(in_dim, s, config.expert)
        self.head_gates = nn.ModuleList(Gate(in_dim, k + s, config.gate) for _ in range(num_heads))
        self.shared_gate = Gate(in_dim, num_heads * k + s, config.gate) if shared_gate else None
        self.output_dim = self.shared.output_dim

    def forward(self, head_inputs: list[Tensor], shared_input: Tensor) -> LevelOutput:
        """Run the level: head h's experts and gate read ``head_inputs[h]``, the shared ones ``shared_input``."""
        shared = self.shared(shared_input)  # [B, S, e]
        heads: list[Tensor] = []
        head_gates: list[Tensor] = []
        own_experts: list[Tensor] = []
        for experts, gate, x in zip(self.specific, self.head_gates, head_inputs, strict=True):
            own = experts(x)  # [B, K, e]
            weights = gate(x)  # [B, K+S]
            mixed = torch.bmm(weights.unsqueeze(1), torch.cat([own, shared], dim=1))  # [B, 1, e]
            heads.append(mixed.squeeze(1))  # [B, e]
            head_gates.append(weights)
            own_experts.append(own)
        if self.shared_gate is None:
            return LevelOutput(heads, None, head_gates, None)
        everything = torch.cat([*own_experts, shared], dim=1)  # [B, H·K+S, e]
        shared_weights = self.shared_gate(shared_input)  # [B, H·K+S]
        shared_out = torch.bmm(shared_weights.unsqueeze(1), everything).squeeze(1)  # [B, e]
        return LevelOutput(heads, shared_out, head_gates, shared_weights)


@register_model("ple", tracks=("mtl", "msl", "mtmsl"))
class PLE(MultiTaskModel):
    """PLE: stacked CGC levels of head-specific and shared experts with per-head gates, then one tower per head.

    Args:
        config: the :class:`PLEConfig`.
        schema: a fitted schema; head-specific experts, a gate and a tower per head.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="a"), TaskSpec(name="b")))
        >>> model = PLE(PLEConfig(num_levels=1), schema)
        >>> len(model.cgc), model.cgc[0].shared_gate is None
        (1, True)
    """

    config_class = PLEConfig

    def __init__(self, config: PLEConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        num_heads = len(self.heads)
        levels: list[CGCLevel] = []
        width = self.embedding.output_dim
        for level in range(config.num_levels):
            levels.append(CGCLevel(width, num_heads, config, shared_gate=level < config.num_levels - 1))
            width = levels[-1].output_dim
        self.cgc = nn.ModuleList(levels)
        self.towers = nn.ModuleList(Tower(width, config.tower) for _ in self.heads.heads)

    def levels(self, features: dict[str, Tensor]) -> list[LevelOutput]:
        """Every level's outputs and gate weights, for inspecting expert use (e.g. gate collapse).

        Args:
            features: the model inputs, as for ``forward``.

        Returns:
            One :class:`LevelOutput` per level, first level first.
        """
        x0 = self.embedding(features)  # [B, d0]
        head_inputs = [x0] * len(self.heads)
        shared_input = x0
        out: list[LevelOutput] = []
        for level in self.cgc:
            result: LevelOutput = level(head_inputs, shared_input)
            out.append(result)
            head_inputs = result.heads
            if result.shared is not None:
                shared_input = result.shared  # [B, e]
        return out

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        last = self.levels(features)[-1]
        return torch.stack([tower(x) for tower, x in zip(self.towers, last.heads, strict=True)], dim=1)  # [B, H]
