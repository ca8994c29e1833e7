"""Building blocks shared by every model: the input embedding, MLPs, towers and gates.

Every model starts from the same input layer (models.md §2): each sparse field f is embedded as e_f ∈ R^k,
the scenario id (when the schema has one) is embedded as one more field, exactly as MMLRec appends the scene
column to the sparse features, and the dense values are appended as they are:

    x0 = concat(e_1, ..., e_F, e_scenario, dense) ∈ R^{(F + has_scenario)·k + D}

On top of ``x0`` the models stack :class:`MLP` blocks (Linear → BatchNorm → activation → Dropout),
per-task :class:`Tower` heads (an MLP and a Linear to one logit) and, for mixture-of-experts models, softmax
:class:`Gate` s.

Example:
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"),))
    >>> tower = Tower(FeatureEmbedding(schema, embed_dim=4).output_dim, MLPConfig(hidden=(8,)))
    >>> tower(torch.zeros(3, 4)).shape
    torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mtlrec.config import StrictModel
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, FeatureSchema

# Why N(0, 0.01²): DeepCTR-Torch and MMLRec draw embeddings from N(0, 1e-4²); at that scale the
# embedding part of x0 is ~1e4 times smaller than the standardised dense values, so the first layer's
# gradient with respect to the embedding columns (proportional to the embeddings) starts near zero.
# 1e-2 keeps x0's sparse part small enough not to dominate at init, while letting both the embeddings
# and the first layer learn from the first step.
EMBEDDING_INIT_STD = 1e-2

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "prelu": nn.PReLU,
}


class FeatureEmbedding(nn.Module):
    """The input layer: sparse fields and scenario embedded in ONE table, then concatenated with dense.

    All fields share one ``nn.Embedding`` whose rows are laid out field after field; a registered buffer
    of per-field offsets shifts each field's ids into its own block, so a single gather embeds the whole
    batch. Ids must lie in ``[0, vocab_size)`` of their field (the
    :class:`~mtlrec.data.preprocess.Preprocessor` guarantees it); an id out of range would read another
    field's rows. It is not checked here, to keep the forward free of host syncs.

    Args:
        schema: a fitted schema (vocabulary sizes and scenario values known).
        embed_dim: the width k of every field's embedding.

    Attributes:
        output_dim: width of x0, ``(F + has_scenario)·k + D``.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, SparseField, TaskSpec
        >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
        ...                        dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> emb = FeatureEmbedding(schema, embed_dim=4)
        >>> emb({"sparse_ids": torch.tensor([[3], [7]]), "dense": torch.zeros(2, 1)}).shape
        torch.Size([2, 5])
    """

    offsets: Tensor

    def __init__(self, schema: FeatureSchema, embed_dim: int) -> None:
        super().__init__()
        self.num_sparse = len(schema.sparse)
        self.num_dense = len(schema.dense)
        self.has_scenario = schema.scenario is not None
        sizes = schema.vocab_sizes() + ([schema.num_scenarios] if self.has_scenario else [])
        self.num_fields = len(sizes)
        self.embed_dim = embed_dim
        self.output_dim = self.num_fields * embed_dim + self.num_dense
        # Exclusive prefix sum of the vocabulary sizes: field f's rows start at offsets[f]. Not persistent: it
        # is derived from the schema, so the state dict holds learned weights only.
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long), persistent=False)
        self.embedding: nn.Embedding | None = None
        if sizes:
            self.embedding = nn.Embedding(sum(sizes), embed_dim)
            nn.init.normal_(self.embedding.weight, mean=0.0, std=EMBEDDING_INIT_STD)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Embed and concatenate the inputs.

        Args:
            features: ``SPARSE_IDS`` int64 [B, F], ``DENSE`` float [B, D] and ``SCENARIO`` int64 [B], those
                the schema has.

        Returns:
            x0 [B, output_dim].
        """
        parts: list[Tensor] = []
        if self.embedding is not None:
            ids: list[Tensor] = []
            if self.num_sparse:
                ids.append(features[SPARSE_IDS])  # [B, F]
            if self.has_scenario:
                ids.append(features[SCENARIO].unsqueeze(1))  # [B, 1]
            rows = torch.cat(ids, dim=1) + self.offsets  # [B, F'] with F' = F + has_scenario
            embedded = self.embedding(rows)  # [B, F', k]
            parts.append(embedded.flatten(1))  # [B, F'·k]
        if self.num_dense:
            parts.append(features[DENSE])  # [B, D]
        return torch.cat(parts, dim=1)  # [B, F'·k + D]


class MLPConfig(StrictModel):
    """A stack of fully connected layers: Linear → (BatchNorm) → activation → (Dropout) per hidden width."""

    hidden: tuple[PositiveInt, ...] = Field(description="output width of each layer; empty = identity")
    activation: Literal["relu", "gelu", "silu", "tanh", "prelu"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each activation")
    batch_norm: bool = Field(default=False, description="BatchNorm1d between each Linear and its activation")


class MLP(nn.Module):
    """Fully connected layers built from an :class:`MLPConfig`.

    Args:
        in_dim: input width.
        cfg: the layer widths, activation, dropout and batch norm.

    Attributes:
        output_dim: the last hidden width (``in_dim`` when ``cfg.hidden`` is empty).

    Example:
        >>> MLP(6, MLPConfig(hidden=(8, 4)))(torch.zeros(2, 6)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_dim: int, cfg: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for out in cfg.hidden:
            layers.append(nn.Linear(width, out))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(_ACTIVATIONS[cfg.activation]())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = out
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in_dim] to [B, output_dim]."""
        out: Tensor = self.layers(x)
        return out


class Tower(nn.Module):
    """A task head: an :class:`MLP` then a Linear to one logit.

    Args:
        in_dim: input width.
        cfg: the hidden layers before the output Linear.

    Example:
        >>> Tower(6, MLPConfig(hidden=(4,)))(torch.zeros(2, 6)).shape
        torch.Size([2])
    """

    def __init__(self, in_dim: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, cfg)
        self.out = nn.Linear(self.mlp.output_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in_dim] to logits [B]."""
        logit: Tensor = self.out(self.mlp(x))  # [B, 1]
        return logit.squeeze(-1)  # [B]


class Gate(nn.Module):
    """A softmax gate over experts: ``softmax(W · MLP(x))``, or ``softmax(W · x)`` without hidden layers.

    Args:
        in_dim: input width.
        num_experts: number of experts E to weigh.
        hidden: optional layers before the final Linear (None = the linear gate of the MMoE paper).

    Example:
        >>> weights = Gate(6, num_experts=3, hidden=None)(torch.zeros(2, 6))
        >>> weights.shape, torch.allclose(weights.sum(dim=1), torch.ones(2))
        (torch.Size([2, 3]), True)
    """

    def __init__(self, in_dim: int, num_experts: int, hidden: MLPConfig | None) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden) if hidden is not None else None
        self.out = nn.Linear(self.mlp.output_dim if self.mlp is not None else in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in_dim] to expert weights [B, E] that sum to 1 on each row."""
        h = self.mlp(x) if self.mlp is not None else x
        scores: Tensor = self.out(h)  # [B, E]
        return torch.softmax(scores, dim=-1)  # [B, E]
