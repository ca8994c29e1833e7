"""AutoMTL: a searched multi-task network (Jiang, Zhu, Wang, Yuan, Huang; KDD 2024), built from its architecture file.

The ``automtl`` model is the *discrete* network derived by ``mtlrec search`` (DESAN search space + PD-DARTS, see
:mod:`mtlrec.nas`): only the chosen ops, the kept experts and the selected fields exist, so the exported graph
holds nothing of the search. Its config carries the whole :class:`~mtlrec.nas.architecture.Architecture`.

Structure (automtl.md §1.2, generalised to L levels), with e_f ∈ R^k the field embeddings (sparse fields, then the
scenario), x_d the dense values and x0 = [flatten(e); x_d] ∈ R^{d0}::

    level 1, expert j:  u_j = [flatten(e_{S_j}) ; FM(e_{I_j}) ; x_d]          # [B, |S_j|·k + k·[|I_j|≥2] + n_d]
                        h_j = Block_{j,B} ∘ … ∘ Block_{j,1}(u_j)               # [B, block_dim]
                        FM(v) = ½((Σ_f v_f)² − Σ_f v_f²)                       # [B, k], element-wise over k
    level l, expert c:  z_c = Σ_{j ∈ R_c} softmax(W_c x0)_j · h_j             # [B, block_dim], gate over R_c only
                        h_c = Blocks_c(z_c)
    head t:             logit_t = Tower_t(Σ_{j ∈ R_t} softmax(W_t x0)_j · h_j) # [B]

with S_j / I_j the expert's navigator selections (``single`` / ``interaction``) and R_c the experts a consumer reads
(``routing``). A consumer reading one expert has no gate. Ops: ``identity`` (pass-through, or a bias-free Linear
when the widths differ) and ``mlp:h`` = Dropout(p) → Linear(in→h) → BatchNorm(h) → ReLU → Linear(h→block_dim).

Deviations from the AutoMTL release (automtl.md §7), all deliberate:

* dropped fields are removed from the expert's input (its first layer is narrower), not multiplied by zero;
  experts that no consumer reads do not exist (the file refuses them);
* a gate's softmax spans only the experts the consumer reads (the release spreads mass over pruned experts and
  never renormalises);
* gates read x0 with the dense values (the release's gate input is the raw embeddings padded with zeros);
* an ``mlp`` op ends with its second Linear, without the release's final ReLU, so that every op's output is signed
  like the identity path it is mixed with during the search.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),
    ...                                SparseField(name="item", vocab_size=5)),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> arch = {"embed_dim": 4, "block_dim": 8, "levels": [
    ...     {"experts": {"a": {"blocks": ["mlp:16"], "single": ["user"]}, "b": {"blocks": ["identity"]}},
    ...      "routing": {"ctr": ["a", "b"], "like": ["b"]}}]}
    >>> model = AutoMTL(AutoMTLConfig(embed_dim=4, architecture=arch), schema)
    >>> model({"sparse_ids": torch.tensor([[2, 3], [5, 1]])})["ctr"].shape
    torch.Size([2])
"""

from __future__ import annotations

from typing import cast

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import FeatureEmbedding, Gate, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.nas.architecture import Architecture, ExpertSpec, LevelSpec, TowerSpec, parse_op
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema


def embedded_fields(schema: FeatureSchema) -> list[str]:
    """The fields :class:`FeatureEmbedding` embeds, in its column order: sparse fields, then the scenario."""
    return schema.sparse_names + ([schema.scenario.name] if schema.scenario is not None else [])


def field_embeddings(embedding: FeatureEmbedding, features: dict[str, Tensor]) -> Tensor | None:
    """Per-field embeddings [B, F', k] from the shared table (None when the schema embeds no field)."""
    if embedding.embedding is None:
        return None
    ids: list[Tensor] = []
    if embedding.num_sparse:
        ids.append(features[SPARSE_IDS])  # [B, F]
    if embedding.has_scenario:
        ids.append(features[SCENARIO].unsqueeze(1))  # [B, 1]
    rows = torch.cat(ids, dim=1) + embedding.offsets  # [B, F']
    out: Tensor = embedding.embedding(rows)  # [B, F', k]
    return out


def fm_interaction(v: Tensor) -> Tensor:
    """Second-order FM term ½((Σ_f v_f)² − Σ_f v_f²) over the field axis (-2): [..., F, k] -> [..., k]."""
    return 0.5 * (v.sum(dim=-2).pow(2) - v.pow(2).sum(dim=-2))


class MLPOp(nn.Module):
    """The ``mlp:h`` op: Dropout(p) → Linear(in→h) → BatchNorm(h) → ReLU → Linear(h→out).

    Example:
        >>> MLPOp(6, 16, 4, dropout=0.1)(torch.zeros(3, 6)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in] to [B, out]."""
        h = torch.relu(self.norm(self.hidden(self.dropout(x))))  # [B, h]
        out: Tensor = self.out(h)  # [B, out]
        return out


def make_op(name: str, in_dim: int, out_dim: int, dropout: float) -> nn.Module:
    """The module of op ``name`` from ``in_dim`` to ``out_dim`` (identity with unequal widths = bias-free Linear)."""
    kind, width = parse_op(name)
    if kind == "mlp":
        return MLPOp(in_dim, width, out_dim, dropout)
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)


class NavigatedInput(nn.Module):
    """A first-level expert's input: selected field embeddings, their FM term, the dense values.

    Args:
        single: positions (in the embedded-field order) of the fields whose embeddings are kept.
        interaction: positions of the fields in the FM term (the term is left out for fewer than 2 fields).
        embed_dim: the embedding width k.
        num_dense: the number of dense values.

    Attributes:
        output_dim: ``len(single)·k + k·[len(interaction) ≥ 2] + num_dense``.
    """

    single_index: Tensor
    interaction_index: Tensor

    def __init__(self, single: list[int], interaction: list[int], embed_dim: int, num_dense: int) -> None:
        super().__init__()
        self.register_buffer("single_index", torch.tensor(sorted(single), dtype=torch.long), persistent=False)
        self.register_buffer("interaction_index", torch.tensor(sorted(interaction), dtype=torch.long), persistent=False)
        self.num_single = len(single)
        self.use_fm = len(interaction) >= 2
        self.num_dense = num_dense
        self.output_dim = self.num_single * embed_dim + (embed_dim if self.use_fm else 0) + num_dense

    def forward(self, e: Tensor | None, dense: Tensor | None) -> Tensor:
        """Build the input [B, output_dim] from field embeddings e [B, F', k] and dense values [B, n_d]."""
        parts: list[Tensor] = []
        if e is not None and self.num_single:
            parts.append(e.index_select(1, self.single_index).flatten(1))  # [B, |S|·k]
        if e is not None and self.use_fm:
            parts.append(fm_interaction(e.index_select(1, self.interaction_index)))  # [B, k]
        if dense is not None and self.num_dense:
            parts.append(dense)  # [B, n_d]
        return torch.cat(parts, dim=1)  # [B, output_dim]


def default_architecture() -> Architecture:
    """The fixed architecture of a config without one: 2 levels of 2 ``mlp:64`` experts, full routing.

    It fits any schema (no field names, no head names), so ``automtl`` builds and trains without a search; a
    searched file replaces it (``mtlrec train --arch``).
    """
    one = ExpertSpec(blocks=("mlp:64",))
    return Architecture(
        embed_dim=8,
        block_dim=64,
        levels=(LevelSpec(experts={"e1_0": one, "e1_1": one}), LevelSpec(experts={"e2_0": one, "e2_1": one})),
    )


class AutoMTLConfig(ModelConfig):
    """The ``automtl`` model: the architecture, whole.

    Defaults: without an architecture file, :func:`default_architecture` (an MMoE-like 2-level network, our
    choice, so that the model builds on any schema); ``embed_dim`` must equal the architecture's (the CLI's
    ``--arch`` sets both).
    """

    architecture: Architecture = Field(
        default_factory=default_architecture,
        description="the discrete network (ops, routing, feature navigators, widths); `mtlrec search` writes one",
    )

    @model_validator(mode="after")
    def _same_embed_dim(self) -> AutoMTLConfig:
        if self.embed_dim != self.architecture.embed_dim:
            raise ValueError(
                f"embed_dim {self.embed_dim} differs from the architecture's embed_dim {self.architecture.embed_dim}"
            )
        return self


def _tower_config(spec: TowerSpec) -> MLPConfig:
    return MLPConfig(hidden=spec.hidden, dropout=spec.dropout, batch_norm=spec.batch_norm, activation="relu")


@register_model("automtl", tracks=("mtl", "msl", "mtmsl"))
class AutoMTL(MultiTaskModel):
    """AutoMTL: a searched network of heterogeneous experts with learned routing and feature selection.

    Args:
        config: the :class:`AutoMTLConfig` (its ``architecture`` is the network).
        schema: a fitted schema; the architecture's fields, heads and schema hash are checked against it.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> [len(level) for level in AutoMTL(AutoMTLConfig(), schema).experts]
        [2, 2]
    """

    config_class = AutoMTLConfig

    def __init__(self, config: AutoMTLConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        arch = config.architecture
        fields = embedded_fields(schema)
        head_names = [h.name for h in self.heads.heads]
        arch.check_for(schema_hash=schema.hash(), fields=fields, heads=head_names, num_dense=len(schema.dense))
        self.architecture = arch
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        gate_dim = self.embedding.output_dim  # x0 = [flatten(e); dense]
        position = {name: i for i, name in enumerate(fields)}
        every = list(range(len(fields)))

        self.navigators = nn.ModuleList()
        self.experts = nn.ModuleList()  # one ModuleList of experts (each an nn.Sequential of blocks) per level
        self.gates = nn.ModuleList()  # one ModuleDict per level: consumer position -> gate (2+ inputs only)
        self.routes: list[list[list[int]]] = []  # [level][consumer] -> positions of the experts it reads
        for i, level in enumerate(arch.levels):
            blocks: list[nn.Module] = []
            for expert in level.experts.values():
                if i == 0:
                    single = every if expert.single is None else [position[f] for f in expert.single]
                    inter = every if expert.interaction is None else [position[f] for f in expert.interaction]
                    navigator = NavigatedInput(single, inter, config.embed_dim, len(schema.dense))
                    self.navigators.append(navigator)
                    in_dim = navigator.output_dim
                else:
                    in_dim = arch.block_dim
                blocks.append(self._expert(expert, in_dim))
            self.experts.append(nn.ModuleList(blocks))
            consumers = list(arch.levels[i + 1].experts) if i + 1 < len(arch.levels) else head_names
            own = list(level.experts)
            routes = [[own.index(n) for n in arch.inputs_of(i, c)] for c in consumers]
            self.routes.append(routes)
            self.gates.append(
                nn.ModuleDict({str(c): Gate(gate_dim, len(r), hidden=None) for c, r in enumerate(routes) if len(r) > 1})
            )
        self.towers = nn.ModuleList(Tower(arch.block_dim, _tower_config(arch.tower)) for _ in head_names)

    def _expert(self, expert: ExpertSpec, in_dim: int) -> nn.Sequential:
        """The chosen op of every block, chained: in_dim -> block_dim -> ... -> block_dim."""
        arch = self.architecture
        ops: list[nn.Module] = []
        for op in expert.blocks:
            ops.append(make_op(op, in_dim, arch.block_dim, arch.op_dropout))
            in_dim = arch.block_dim
        return nn.Sequential(*ops)

    def navigator_list(self) -> list[NavigatedInput]:
        """The first-level experts' input builders, in expert order."""
        return [cast(NavigatedInput, n) for n in self.navigators]

    def expert_blocks(self, level: int) -> list[nn.Sequential]:
        """The experts of ``level`` (0-based), each the sequence of its blocks' ops."""
        return [cast(nn.Sequential, e) for e in cast(nn.ModuleList, self.experts[level])]

    def gate(self, level: int, consumer: int) -> Gate:
        """The gate of the ``consumer``-th consumer of ``level``'s experts (it must read 2 or more)."""
        return cast(Gate, cast(nn.ModuleDict, self.gates[level])[str(consumer)])

    def _mix(self, level: int, consumer: int, outputs: list[Tensor], x0: Tensor) -> Tensor:
        """The gated mixture a consumer reads from ``outputs`` (the experts of ``level``), [B, block_dim]."""
        route = self.routes[level][consumer]
        if len(route) == 1:
            return outputs[route[0]]  # [B, block_dim]
        weights = self.gate(level, consumer)(x0).unsqueeze(1)  # [B, 1, n]
        stacked = torch.stack([outputs[j] for j in route], dim=1)  # [B, n, block_dim]
        return torch.bmm(weights, stacked).squeeze(1)  # [B, block_dim]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit of every head, [B, H]."""
        e = field_embeddings(self.embedding, features)  # [B, F', k] or None
        dense = features[DENSE] if self.embedding.num_dense else None  # [B, n_d]
        parts = ([e.flatten(1)] if e is not None else []) + ([dense] if dense is not None else [])
        x0 = torch.cat(parts, dim=1)  # [B, d0]: the gates' input, as FeatureEmbedding's output
        outputs = [
            expert(navigator(e, dense))  # [B, block_dim]
            for navigator, expert in zip(self.navigator_list(), self.expert_blocks(0), strict=True)
        ]
        for level in range(1, len(self.experts)):
            outputs = [
                expert(self._mix(level - 1, c, outputs, x0)) for c, expert in enumerate(self.expert_blocks(level))
            ]
        last = len(self.experts) - 1
        logits = [tower(self._mix(last, h, outputs, x0)) for h, tower in enumerate(self.towers)]  # H x [B]
        return torch.stack(logits, dim=1)  # [B, H]
