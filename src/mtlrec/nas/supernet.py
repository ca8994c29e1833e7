"""The DESAN supernet of AutoMTL (Jiang et al., KDD 2024; automtl.md §1): every candidate of every choice, live.

Notation: K experts per level, L levels, B blocks per expert, F' embedded fields (sparse fields, then the scenario)
with embeddings e_f ∈ R^k, n_d dense values x_d, x0 = [flatten(e); x_d] ∈ R^{d0}, H heads::

    navigator j (level 1):  a_j = M(β^single_j), b_j = M(β^inter_j) ∈ [0, 1]^{F'}
                            u_j = [flatten(a_j ⊙ e) ; FM(b_j ⊙ e) ; x_d]                 # [B, D], D = F'k + k + n_d
    expert (l, j):          h = Block_B ∘ … ∘ Block_1(u),   Block(x) = Σ_o softmax(α/τ)_o · o(x)   # [B, block_dim]
    consumer c of level l:  w_c = m_c ⊙ softmax(W_c x0) / Σ(m_c ⊙ softmax(W_c x0)),  m_c = M(β^route_c) ∈ [0, 1]^K
                            z_c = Σ_j w_{c,j} h_{l,j}                                       # [B, block_dim]
    head t:                 logit_t = Tower_t(z_t)                                          # [B]

Candidate ops are ``identity`` and ``mlp:h`` (see :mod:`mtlrec.models.automtl`). The mlp candidates of one block
share one fused first Linear (in → Σh) and BatchNorm, which is the same function as separate layers (BatchNorm
is per channel) at one matrix product instead of one per candidate; their input dropout mask is shared.

Masks M (feature navigator, expert routing) are hard-concrete gates (Louizos et al. 2018,
:mod:`mtlrec.models.hard_concrete`): a sample in [0, 1], exactly 0 or 1 with non-zero probability, during the
search; their noise-free value in eval; 1 during warm-up. Their expected number of open gates Σ P(z > 0) is the
sparsity cost the search adds to the architecture loss, so a field or an expert that does not pay for itself
is closed. This replaces the release's straight-through Bernoulli gate, which was never switched on
(automtl.md §7.2 items 2-4: masks stayed 1 during the whole search and took effect only at export).

Progressive discretisation (:meth:`Supernet.discretize`) fixes the most confident blocks to their argmax candidate
(a fixed block then runs that candidate only, with its trained weights); the masks are all fixed, to 1[log α > 0],
with the last blocks.
:meth:`Supernet.derive` turns the fully fixed supernet into an :class:`~mtlrec.nas.architecture.Architecture`
(repairing empty choices and pruning experts nothing reads), and :meth:`Supernet.to_discrete` builds the
``automtl`` model with the supernet's weights of the chosen parts, computing the same function in eval.

Example:
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),
    ...                                SparseField(name="item", vocab_size=5)), tasks=(TaskSpec(name="ctr"),))
    >>> space = SearchSpace(embed_dim=4, num_experts=2, num_blocks=1, block_dim=8,
    ...                     candidate_ops=("identity", "mlp:8"))
    >>> net = Supernet(space, schema)
    >>> net({"sparse_ids": torch.tensor([[2, 3], [5, 1]])})["ctr"].shape
    torch.Size([2])
    >>> net.discretize(1.0)["ops"], net.is_discrete()
    (4, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtlrec.errors import ConfigError
from mtlrec.models.automtl import (
    AutoMTL,
    AutoMTLConfig,
    MLPOp,
    embedded_fields,
    field_embeddings,
    fm_interaction,
)
from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import FeatureEmbedding, Gate, MLPConfig, Tower
from mtlrec.models.hard_concrete import HardConcreteConfig, HardConcreteGate
from mtlrec.nas.architecture import Architecture, ExpertSpec, LevelSpec, OpName, TowerSpec, parse_op
from mtlrec.schema import DENSE, FeatureSchema

Phase = Literal["warmup", "search"]
# The AutoMTL release's candidate list, in its order (automtl.md §1.4).
AUTOMTL_OPS: tuple[str, ...] = ("identity", "mlp:16", "mlp:32", "mlp:64", "mlp:128", "mlp:256", "mlp:512", "mlp:1024")


class SearchSpace(ModelConfig):
    """The DESAN search space: levels, experts, blocks, candidate ops, masks.

    Defaults are the AutoMTL release's (automtl.md §1, §4): 2 levels of 4 experts of 3 blocks, width 64, the 8
    candidates identity and mlp:16..1024, dropout 0.2, embeddings of 16, tower [64] with BatchNorm and dropout.
    Mask gates start open (``init_log_alpha`` 2: eval value 0.96, sampled exactly 1 about half the time), our
    choice so that the search starts from the dense MMoE-like network, as the release does.
    """

    embed_dim: int = Field(default=16, ge=1, description="width of every field embedding (AutoMTL: 16)")
    num_levels: PositiveInt = Field(default=2, description="expert levels L (AutoMTL: 2)")
    num_experts: PositiveInt = Field(default=4, description="experts per level K (AutoMTL: 4)")
    num_blocks: PositiveInt = Field(default=3, description="searchable blocks per expert B (AutoMTL: 3)")
    block_dim: PositiveInt = Field(default=64, description="output width of every block (AutoMTL: 64)")
    candidate_ops: tuple[OpName, ...] = Field(
        default=AUTOMTL_OPS, min_length=1, description="the ops every block chooses among"
    )
    op_dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="dropout on the input of mlp ops")
    tower: TowerSpec = Field(default=TowerSpec(hidden=(64,), dropout=0.2, batch_norm=True))
    search_features: bool = Field(default=True, description="search the per-expert feature navigator masks")
    search_routing: bool = Field(default=True, description="search the expert routing masks")
    masks: HardConcreteConfig = Field(
        default=HardConcreteConfig(init_log_alpha=2.0), description="the hard-concrete mask gates"
    )
    alpha_init_std: float = Field(default=1e-3, ge=0.0, description="α ~ N(0, std²) (AutoMTL: 1e-3)")

    @model_validator(mode="after")
    def _distinct_ops(self) -> SearchSpace:
        if len(set(self.candidate_ops)) != len(self.candidate_ops):
            raise ValueError(f"candidate_ops names an op twice: {list(self.candidate_ops)}")
        return self


class MixedOp(nn.Module):
    """One searchable block: ``Σ_o softmax(α/τ)_o · o(x)``, or its fixed op once discretised.

    Args:
        in_dim: input width.
        out_dim: output width (the block width).
        ops: candidate op names.
        dropout: input dropout of the mlp candidates.
        alpha_std: std of the initial α.
    """

    def __init__(self, in_dim: int, out_dim: int, ops: tuple[str, ...], dropout: float, alpha_std: float) -> None:
        super().__init__()
        self.names = ops
        parsed = [parse_op(op) for op in ops]
        widths = [w for kind, w in parsed if kind == "mlp"]
        self.slices: list[tuple[int, int, int] | None] = []  # per op: (start, end, index in outs) or None
        start = 0
        for kind, width in parsed:
            if kind == "mlp":
                self.slices.append((start, start + width, sum(s is not None for s in self.slices)))
                start += width
            else:
                self.slices.append(None)
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_dim, sum(widths)) if widths else None  # fused first layers of the mlp ops
        self.norm = nn.BatchNorm1d(sum(widths)) if widths else None
        self.outs = nn.ModuleList(nn.Linear(w, out_dim) for w in widths)
        has_identity = any(kind == "identity" for kind, _ in parsed)
        self.project = nn.Linear(in_dim, out_dim, bias=False) if has_identity and in_dim != out_dim else None
        self.alpha = nn.Parameter(torch.randn(len(ops)) * alpha_std)
        self.fixed: int | None = None
        self.temperature = 1.0

    def probabilities(self) -> Tensor:
        """softmax(α/τ) over the candidates, [n_ops]."""
        return torch.softmax(self.alpha / self.temperature, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in] to [B, out]: the softmax mixture, or the fixed op."""
        if self.fixed is not None:
            return self._run(self.fixed, x)
        p = self.probabilities()  # [n_ops]
        hidden = None
        if self.hidden is not None and self.norm is not None:
            hidden = torch.relu(self.norm(self.hidden(self.dropout(x))))  # [B, Σh]
        out: Tensor | None = None
        for i, where in enumerate(self.slices):
            if where is None:
                y = self.project(x) if self.project is not None else x  # [B, out]
            else:
                assert hidden is not None
                y = self.outs[where[2]](hidden[:, where[0] : where[1]])  # [B, out]
            out = p[i] * y if out is None else out + p[i] * y
        assert out is not None
        return out

    def _run(self, i: int, x: Tensor) -> Tensor:
        """Candidate ``i`` alone (its slice of the fused layers), [B, out]."""
        where = self.slices[i]
        if where is None:
            return self.project(x) if self.project is not None else x
        assert self.hidden is not None and self.norm is not None
        a, b, m = where
        norm = self.norm
        assert norm.running_mean is not None and norm.running_var is not None
        h = F.linear(self.dropout(x), self.hidden.weight[a:b], self.hidden.bias[a:b])  # [B, h]
        # Slices of the running statistics are views: batch norm updates them in place, in the fused buffers.
        h = F.batch_norm(
            h,
            norm.running_mean[a:b],
            norm.running_var[a:b],
            norm.weight[a:b],
            norm.bias[a:b],
            training=self.training,
            momentum=norm.momentum if norm.momentum is not None else 0.1,
            eps=norm.eps,
        )
        out: Tensor = self.outs[m](torch.relu(h))  # [B, out]
        return out

    def entropy(self) -> float:
        """Entropy of softmax(α/τ): low = confident."""
        p = self.probabilities().detach()
        return float(-(p * torch.log(p.clamp_min(1e-12))).sum())


class MaskGate(nn.Module):
    """A tensor of searchable on/off masks: hard-concrete gates plus their fixed values once discretised.

    Args:
        shape: the mask tensor's shape.
        cfg: the hard-concrete constants and init.

    Attributes:
        fixed: -1 where the mask is still searched, else its fixed value 0 or 1.
    """

    fixed: Tensor

    def __init__(self, shape: tuple[int, ...], cfg: HardConcreteConfig) -> None:
        super().__init__()
        self.gate = HardConcreteGate(shape, cfg)
        self.register_buffer("fixed", torch.full(shape, -1.0))
        self.warmup = True

    @property
    def log_alpha(self) -> nn.Parameter:
        """The learnable location parameters."""
        return self.gate.log_alpha

    def forward(self) -> Tensor:
        """The mask values: 1 in warm-up; else the fixed value, or a gate sample (train) / noise-free value."""
        if self.warmup:
            return torch.ones_like(self.fixed)
        return torch.where(self.fixed >= 0, self.fixed, self.gate())

    def free(self) -> Tensor:
        """Bool mask of the entries still searched."""
        return self.fixed < 0

    def penalty(self) -> tuple[Tensor, int]:
        """Σ P(z > 0) over the free entries (the L0 cost) and their count."""
        free = self.free()
        return (self.gate.open_probability() * free).sum(), int(free.sum())

    def decided(self) -> Tensor:
        """The value each entry has or would get if fixed now: the fixed value, else 1[log α > 0]."""
        return torch.where(self.fixed >= 0, self.fixed, (self.log_alpha.detach() > 0).float())


class Supernet(MultiTaskModel):
    """The DESAN supernet: mixed-op experts, hard-concrete routing and navigator masks, towers.

    Args:
        config: the :class:`SearchSpace`.
        schema: a fitted schema.
    """

    tracks = ("mtl", "msl", "mtmsl")
    config_class = SearchSpace

    def __init__(self, config: SearchSpace, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.space = config
        self.fields = embedded_fields(schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        n_fields, k, n_dense = len(self.fields), config.embed_dim, len(schema.dense)
        self.use_fm = n_fields >= 2
        self.input_dim = n_fields * k + (k if self.use_fm else 0) + n_dense  # D, every level-1 expert's input
        gate_dim = self.embedding.output_dim
        n_experts = config.num_experts
        self.levels = nn.ModuleList()  # [level][expert] -> ModuleList of MixedOp blocks
        for level in range(config.num_levels):
            experts = nn.ModuleList()
            for _ in range(n_experts):
                blocks = nn.ModuleList()
                in_dim = self.input_dim if level == 0 else config.block_dim
                for _ in range(config.num_blocks):
                    op = MixedOp(
                        in_dim, config.block_dim, config.candidate_ops, config.op_dropout, config.alpha_init_std
                    )
                    blocks.append(op)
                    in_dim = config.block_dim
                experts.append(blocks)
            self.levels.append(experts)
        self.head_names = [h.name for h in self.heads.heads]
        consumers = [n_experts] * (config.num_levels - 1) + [len(self.head_names)]
        self.gates = nn.ModuleList(
            nn.ModuleList(Gate(gate_dim, n_experts, hidden=None) for _ in range(n)) for n in consumers
        )
        self.routing = nn.ModuleList(MaskGate((n, n_experts), config.masks) for n in consumers)
        self.single = MaskGate((n_experts, n_fields), config.masks)
        self.interaction = MaskGate((n_experts, n_fields), config.masks)
        if not config.search_routing:
            for mask in self.routing_masks():
                mask.fixed.fill_(1.0)
        if not config.search_features:
            self.single.fixed.fill_(1.0)
            self.interaction.fixed.fill_(1.0)
        if not self.use_fm:  # no FM term with fewer than 2 fields: nothing to choose
            self.interaction.fixed.fill_(0.0)
        tower = MLPConfig(hidden=config.tower.hidden, dropout=config.tower.dropout, batch_norm=config.tower.batch_norm)
        self.towers = nn.ModuleList(Tower(config.block_dim, tower) for _ in self.head_names)
        self.phase: Phase = "warmup"
        self.set_phase("warmup", 1.0)

    # ----------------------------------------------------------------------------------------- parameters
    def mixed_ops(self) -> Iterator[tuple[str, MixedOp]]:
        """Every block as ``("e{level}_{expert}/{block}", op)``."""
        for level in range(len(self.levels)):
            for j, blocks in enumerate(self.expert_ops(level)):
                for b, op in enumerate(blocks):
                    yield f"e{level + 1}_{j}/{b}", op

    def expert_ops(self, level: int) -> list[list[MixedOp]]:
        """The blocks of every expert of ``level`` (0-based)."""
        experts = cast(nn.ModuleList, self.levels[level])
        return [[cast(MixedOp, op) for op in cast(nn.ModuleList, blocks)] for blocks in experts]

    def routing_masks(self) -> list[MaskGate]:
        """The routing masks, one [consumers, K] family per level."""
        return [cast(MaskGate, mask) for mask in self.routing]

    def consumer_gates(self, level: int) -> list[Gate]:
        """The softmax gates of the consumers of ``level`` (0-based)."""
        return [cast(Gate, gate) for gate in cast(nn.ModuleList, self.gates[level])]

    def masks(self) -> list[MaskGate]:
        """Every mask family: the navigators' single and interaction masks, then the routing per level."""
        return [self.single, self.interaction, *self.routing_masks()]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, by role: every block's α and every mask's log α."""
        return [op.alpha for _, op in self.mixed_ops()] + [m.log_alpha for m in self.masks()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (embeddings, ops, gates, towers)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_phase(self, phase: Phase, temperature: float) -> None:
        """Warm-up (masks all 1) or search (masks sampled), and the softmax temperature τ of the blocks."""
        self.phase = phase
        for mask in self.masks():
            mask.warmup = phase == "warmup"
        for _, op in self.mixed_ops():
            op.temperature = temperature

    # -------------------------------------------------------------------------------------------- forward
    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit of every head, [B, H]."""
        e = field_embeddings(self.embedding, features)  # [B, F', k] or None
        dense = features[DENSE] if self.embedding.num_dense else None  # [B, n_d]
        parts = ([e.flatten(1)] if e is not None else []) + ([dense] if dense is not None else [])
        x0 = torch.cat(parts, dim=1)  # [B, d0]
        batch = x0.shape[0]
        n_experts = self.space.num_experts
        inputs: list[Tensor] = []
        if e is not None:
            a = self.single()  # [K, F']
            inputs.append((e.unsqueeze(1) * a[None, :, :, None]).flatten(2))  # [B, K, F'·k]
            if self.use_fm:
                b = self.interaction()  # [K, F']
                inputs.append(fm_interaction(e.unsqueeze(1) * b[None, :, :, None]))  # [B, K, k]
        if dense is not None:
            inputs.append(dense.unsqueeze(1).expand(batch, n_experts, dense.shape[1]))  # [B, K, n_d]
        u = torch.cat(inputs, dim=2)  # [B, K, D]
        outputs = [self._expert(blocks, u[:, j]) for j, blocks in enumerate(self.expert_ops(0))]  # K x [B, block_dim]
        for level in range(1, len(self.levels)):
            mixed = self._mix(level - 1, outputs, x0)
            outputs = [self._expert(blocks, z) for blocks, z in zip(self.expert_ops(level), mixed, strict=True)]
        mixed = self._mix(len(self.levels) - 1, outputs, x0)
        return torch.stack([tower(z) for tower, z in zip(self.towers, mixed, strict=True)], dim=1)  # [B, H]

    @staticmethod
    def _expert(blocks: list[MixedOp], x: Tensor) -> Tensor:
        for op in blocks:
            x = op(x)
        return x

    def _mix(self, level: int, outputs: list[Tensor], x0: Tensor) -> list[Tensor]:
        """Each consumer's masked, renormalised gate mixture of the level's expert outputs, [B, block_dim] each."""
        stacked = torch.stack(outputs, dim=1)  # [B, K, block_dim]
        m = self.routing_masks()[level]()  # [C, K]
        mixed: list[Tensor] = []
        for c, gate in enumerate(self.consumer_gates(level)):
            w = gate(x0) * m[c]  # [B, K]
            w = w / (w.sum(dim=1, keepdim=True) + 1e-9)  # renormalised over the kept experts
            mixed.append(torch.bmm(w.unsqueeze(1), stacked).squeeze(1))  # [B, block_dim]
        return mixed

    # ----------------------------------------------------------------------------------- search machinery
    def mask_penalties(self) -> dict[str, Tensor]:
        """The L0 costs: expected number of open gates Σ P(z > 0) over the free feature masks, and the routing's."""
        out: dict[str, Tensor] = {}
        for name, family in (("features", [self.single, self.interaction]), ("experts", self.routing_masks())):
            total, count = torch.zeros(()), 0
            for mask in family:
                value, n = mask.penalty()
                total, count = total + value, count + n
            if count:
                out[name] = total
        return out

    def free_counts(self) -> dict[str, int]:
        """How many choices are still searched: blocks and mask entries."""
        return {
            "ops": sum(op.fixed is None for _, op in self.mixed_ops()),
            "masks": sum(int(m.free().sum()) for m in self.masks()),
        }

    def is_discrete(self) -> bool:
        """True when every block and mask is fixed."""
        counts = self.free_counts()
        return counts["ops"] == 0 and counts["masks"] == 0

    @torch.no_grad()
    def discretize(self, share: float, *, masks: bool | None = None) -> dict[str, Any]:
        """Fix the most confident ``share`` of the free blocks (rounded up; 1.0 fixes all), and the masks.

        Blocks go to their argmax candidate in order of increasing entropy of softmax(α/τ). Mask entries are all
        fixed at once, to 1[log α > 0], when ``masks`` is true (default: when ``share`` is 1): fixing them by
        confidence |log α| as they go would fix first the entries that never moved from their open init.

        Returns:
            ``{"ops": blocks fixed, "masks": mask entries fixed, "fixed_ops": [{"block", "op", "p", "entropy"}]}``.
        """
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"discretize share must lie in (0, 1], got {share}")
        free_ops = [(op.entropy(), name, op) for name, op in self.mixed_ops() if op.fixed is None]
        n_ops = math.ceil(share * len(free_ops))
        fixed_ops = []
        for entropy, name, op in sorted(free_ops, key=lambda t: t[0])[:n_ops]:
            p = op.probabilities()
            choice = int(torch.argmax(p))
            op.fixed = choice
            fixed_ops.append({"block": name, "op": op.names[choice], "p": float(p[choice]), "entropy": entropy})
        n_masks = 0
        if masks if masks is not None else share >= 1.0:
            for mask in self.masks():
                free = mask.free()
                n_masks += int(free.sum())
                mask.fixed.copy_(mask.decided())
        return {"ops": n_ops, "masks": n_masks, "fixed_ops": fixed_ops}

    def state_summary(self) -> dict[str, Any]:
        """The architecture's current state, for the per-epoch log: blocks, navigators, routing."""
        blocks = {}
        for name, op in self.mixed_ops():
            p = op.probabilities().detach()
            best = int(torch.argmax(p)) if op.fixed is None else op.fixed
            blocks[name] = {"op": op.names[best], "p": round(float(p[best]), 4), "fixed": op.fixed is not None}
        single, inter = self.single.decided(), self.interaction.decided()
        navigators = {
            f"e1_{j}": {
                "fields_on": int(single[j].sum()),
                "fm_fields_on": int(inter[j].sum()) if self.use_fm else 0,
                "free": int(self.single.free()[j].sum() + self.interaction.free()[j].sum()),
            }
            for j in range(self.space.num_experts)
        }
        routing = {}
        for level, mask in enumerate(self.routing_masks()):
            names = self._consumers(level)
            on = mask.decided()
            for c, consumer in enumerate(names):
                routing[consumer] = [f"e{level + 1}_{j}" for j in range(self.space.num_experts) if on[c, j] > 0]
        return {"blocks": blocks, "navigators": navigators, "routing": routing, **self.free_counts()}

    def _consumers(self, level: int) -> list[str]:
        if level + 1 < len(self.levels):
            return [f"e{level + 2}_{j}" for j in range(self.space.num_experts)]
        return self.head_names

    # ------------------------------------------------------------------------------------------ derivation
    @torch.no_grad()
    def derive(self) -> tuple[Architecture, list[str]]:
        """The discrete architecture of a fully discretised supernet, and the repairs it needed.

        Repairs (the release has none, automtl.md §7.2 item 5): a consumer whose masks are all 0 keeps its
        expert of highest log α; a first-level expert left with no input keeps its field of highest log α.
        Experts no consumer reads are pruned, from the heads down.
        """
        if not self.is_discrete():
            self.discretize(1.0)
        repairs: list[str] = []
        n_experts = self.space.num_experts
        n_levels = len(self.levels)
        routes: list[dict[str, list[int]]] = [{} for _ in range(n_levels)]
        keep: list[list[int]] = [[] for _ in range(n_levels)]
        # From the heads down: only the consumers that are kept need (and get) a routing row.
        for level in range(n_levels - 1, -1, -1):
            mask = self.routing_masks()[level]
            consumers = self._consumers(level)
            wanted = range(len(consumers)) if level + 1 == n_levels else keep[level + 1]
            for c in wanted:
                on = mask.fixed[c]  # [K]
                row = [j for j in range(n_experts) if on[j] > 0]
                if not row:
                    row = [int(torch.argmax(mask.log_alpha[c]))]
                    repairs.append(f"{consumers[c]} read no expert: kept e{level + 1}_{row[0]}")
                routes[level][consumers[c]] = row
            keep[level] = sorted({j for row in routes[level].values() for j in row})
        single, inter = self.single.fixed.clone(), self.interaction.fixed.clone()
        n_dense = len(self.schema.dense)
        levels: list[LevelSpec] = []
        for level in range(n_levels):
            experts = self.expert_ops(level)
            specs: dict[str, ExpertSpec] = {}
            for j in keep[level]:
                blocks = tuple(op.names[op.fixed] for op in experts[j] if op.fixed is not None)
                name = f"e{level + 1}_{j}"
                if level > 0:
                    specs[name] = ExpertSpec(blocks=blocks)
                    continue
                if self.fields and single[j].sum() == 0 and inter[j].sum() < 2 and n_dense == 0:
                    best = int(torch.argmax(self.single.log_alpha[j]))
                    repairs.append(f"{name} saw no input: kept field {self.fields[best]}")
                    single[j, best] = 1.0
                specs[name] = ExpertSpec(
                    blocks=blocks,
                    single=tuple(f for i, f in enumerate(self.fields) if single[j, i] > 0),
                    interaction=tuple(f for i, f in enumerate(self.fields) if inter[j, i] > 0),
                )
            routing = {c: tuple(f"e{level + 1}_{j}" for j in row) for c, row in routes[level].items()}
            levels.append(LevelSpec(experts=specs, routing=routing))
        arch = Architecture(
            schema_hash=self.schema.hash(),
            fields=tuple(self.fields),
            embed_dim=self.space.embed_dim,
            block_dim=self.space.block_dim,
            op_dropout=self.space.op_dropout,
            tower=self.space.tower,
            levels=tuple(levels),
        )
        return arch, repairs

    @torch.no_grad()
    def to_discrete(self, arch: Architecture) -> AutoMTL:
        """The ``automtl`` model of ``arch`` (derived from this supernet) with the supernet's trained weights.

        In eval mode it computes what the discretised supernet computes (up to float rounding), except where a
        first-level identity block's input width happens to equal ``block_dim`` after fields were dropped (the
        discrete block is then a true identity while the supernet's was a projection).
        """
        config = AutoMTLConfig(
            embed_dim=self.space.embed_dim, track=self.space.track, tasks=self.space.tasks, architecture=arch
        )
        model = AutoMTL(config, self.schema)
        model.embedding.load_state_dict(self.embedding.state_dict())
        k, n_fields = self.space.embed_dim, len(self.fields)
        position = {f: i for i, f in enumerate(self.fields)}
        for level, level_spec in enumerate(arch.levels):
            for e, (name, spec) in enumerate(level_spec.experts.items()):
                j = int(name.split("_")[1])
                columns: list[int] | None = None
                if level == 0:
                    navigator = model.navigator_list()[e]
                    chosen = spec.single if spec.single is not None else self.fields
                    single = sorted(position[f] for f in chosen)
                    columns = [i * k + d for i in single for d in range(k)]
                    if navigator.use_fm:
                        columns += [n_fields * k + d for d in range(k)]
                    base = n_fields * k + (k if self.use_fm else 0)
                    columns += [base + d for d in range(navigator.num_dense)]
                blocks = model.expert_blocks(level)[e]
                for b, (target, op) in enumerate(zip(blocks, self.expert_ops(level)[j], strict=True)):
                    _copy_op(op, target, columns if b == 0 else None)
            own = [int(n.split("_")[1]) for n in level_spec.experts]
            for c, route in enumerate(model.routes[level]):
                if len(route) < 2:
                    continue
                consumer = self._consumer_index(level, arch, c)
                source = self.consumer_gates(level)[consumer]
                target_gate = model.gate(level, c)
                rows = [own[r] for r in route]
                target_gate.out.weight.copy_(source.out.weight[rows])
                target_gate.out.bias.copy_(source.out.bias[rows])
        model.towers.load_state_dict(self.towers.state_dict())
        return model

    def _consumer_index(self, level: int, arch: Architecture, c: int) -> int:
        """Position in this supernet of the c-th consumer of ``level`` in ``arch``."""
        if level + 1 == len(arch.levels):
            return c
        return int(list(arch.levels[level + 1].experts)[c].split("_")[1])


def _copy_op(op: MixedOp, target: nn.Module, columns: list[int] | None) -> None:
    """Copy a fixed mixed op's chosen candidate into the discrete op (input ``columns`` of the first block)."""
    assert op.fixed is not None
    where = op.slices[op.fixed]
    if where is None:
        if isinstance(target, nn.Linear) and op.project is not None:
            weight = op.project.weight
            target.weight.copy_(weight[:, columns] if columns is not None else weight)
        return
    assert isinstance(target, MLPOp) and op.hidden is not None and op.norm is not None
    a, b, m = where
    weight = op.hidden.weight[a:b]
    target.hidden.weight.copy_(weight[:, columns] if columns is not None else weight)
    target.hidden.bias.copy_(op.hidden.bias[a:b])
    norm, new = op.norm, target.norm
    assert norm.running_mean is not None and norm.running_var is not None
    assert new.running_mean is not None and new.running_var is not None
    new.weight.copy_(norm.weight[a:b])
    new.bias.copy_(norm.bias[a:b])
    new.running_mean.copy_(norm.running_mean[a:b])
    new.running_var.copy_(norm.running_var[a:b])
    target.out.load_state_dict(op.outs[m].state_dict())


@contextmanager
def frozen_batch_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norm keeps normalising with batch statistics but leaves its running statistics unchanged.

    The bi-level search runs the architecture step on validation batches in train mode (as DARTS does); with
    momentum 0 the running statistics stay those of the training data.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
