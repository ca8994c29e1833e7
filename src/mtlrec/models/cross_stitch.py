"""Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert; "Cross-stitch Networks for Multi-task Learning",
CVPR 2016).

One column (a small network) per head; after each column layer a *cross-stitch unit* linearly mixes the H
columns' activations, so the model learns how much each head shares with the others (models.md §3.3)::

    x0        = FeatureEmbedding(features)             # [B, d0]
    s         = MLP_shared(x0)                         # [B, h_s]
    x^0_i     = s                                      # every column starts from s
    for layer l = 1..L:
        u^l_i = Layer^l_i(x^{l-1}_i)                   # [B, h_l] Linear (+BN) + act (+dropout), per column i
        x^l_i = Σ_j α^l_{ij} u^l_j                     # units="task":   α^l ∈ R^{H×H}
        x^l_i,c = Σ_j α^l_{c,ij} u^l_{j,c}             # units="neuron": α^l ∈ R^{h_l×H×H}, one matrix per channel
    logit_i   = Tower_i(x^L_i)                         # [B]

α is initialised to ``init_self`` (paper's best: 0.9) on the diagonal and (1 - init_self)/(H - 1) elsewhere, so
each row sums to 1 and every column starts mostly itself (1.0 when H = 1). The paper trains the α's with a larger
learning rate than the network (10²-10³×, "so that they adapt quickly"); :meth:`CrossStitch.parameter_groups`
gives them ``lr × stitch_lr_multiplier``. Columns are heads: tasks (mtl), scenarios (msl), (task, scenario)
pairs (mtmsl).

Deviation from the MMLRec release: it mixes with a full (H·h)×(H·h) matrix per layer initialised to the identity
(every neuron of every column can feed every neuron of every other column; (H·h)² parameters), without a separate
learning rate. Here ``units`` offers the paper's two granularities (task: H×H scalars, the paper's default;
neuron: one H×H matrix per channel, the paper's "channel-wise" form) with the paper's (0.9, 0.1) init and LR
multiplier.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = CrossStitch(CrossStitchConfig(column=MLPConfig(hidden=(8, 4))), schema)
    >>> model.stitches[0]
    Parameter containing:
    tensor([[0.9000, 0.1000],
            [0.1000, 0.9000]], requires_grad=True)
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class CrossStitchConfig(ModelConfig):
    """Cross-stitch hyperparameters.

    Defaults: shared layer (256,) and columns (256, 128) as the MMLRec code defaults (``shared_hidden_unit`` 256,
    ``dnn_hidden_units``), towers (64,) as MMLRec; ``units="task"``, ``init_self=0.9`` and an LR multiplier of
    100 from the paper (its best init; it suggests 10²-10³ for the α's).
    """

    shared: MLPConfig = Field(
        default=MLPConfig(hidden=(256,)), description="MLP over x0 shared by every column; empty = columns read x0"
    )
    column: MLPConfig = Field(
        default=MLPConfig(hidden=(256, 128)),
        description="layers of each head's column; a cross-stitch unit follows every layer (at least one layer)",
    )
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each head's tower")
    units: Literal["task", "neuron"] = Field(
        default="task",
        description="cross-stitch granularity: task = one H×H matrix per layer (paper default); "
        "neuron = one H×H matrix per channel of the layer",
    )
    init_self: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="initial weight of a column on itself; the others share 1 - init_self equally (paper: 0.9)",
    )
    stitch_lr_multiplier: float = Field(
        default=100.0, gt=0.0, description="learning rate of the cross-stitch units relative to the network"
    )

    @field_validator("column")
    @classmethod
    def _column_has_layers(cls, value: MLPConfig) -> MLPConfig:
        if not value.hidden:
            raise ValueError("needs at least one layer: the cross-stitch units mix the columns' layer outputs")
        return value


def stitch_init(num_heads: int, init_self: float) -> Tensor:
    """The H×H initial mixing matrix: ``init_self`` on the diagonal, the rest of each row shared equally.

    Args:
        num_heads: H.
        init_self: the diagonal value (each row sums to 1; 1.0 when H = 1).

    Example:
        >>> stitch_init(3, 0.8)
        tensor([[0.8000, 0.1000, 0.1000],
                [0.1000, 0.8000, 0.1000],
                [0.1000, 0.1000, 0.8000]])
    """
    if num_heads == 1:
        return torch.ones(1, 1)
    other = (1.0 - init_self) / (num_heads - 1)
    eye = torch.eye(num_heads)
    return eye * init_self + (1.0 - eye) * other  # [H, H]


def cross_stitch(alpha: Tensor, columns: Tensor) -> Tensor:
    """A cross-stitch unit: column i's new activation is Σ_j α_ij · column j's (per channel c for neuron units).

    Args:
        alpha: [H, H] (task units) or [h, H, H] (neuron units, one matrix per channel), row i weighting the
            columns that feed column i. (The branch is on the parameter's rank, fixed at build time.)
        columns: [B, H, h] the columns' activations.

    Returns:
        [B, H, h] the mixed activations.

    Example:
        >>> cross_stitch(torch.tensor([[0.5, 0.5], [0.0, 1.0]]), torch.tensor([[[2.0], [4.0]]]))
        tensor([[[3.],
                 [4.]]])
    """
    if alpha.dim() == 2:
        return torch.einsum("ij,bjc->bic", alpha, columns)  # [B, H, h]
    return torch.einsum("cij,bjc->bic", alpha, columns)  # [B, H, h]


class ColumnLayer(nn.Module):
    """Layer l of every column: column i's Linear (+BN) + activation (+dropout) applied to column i's input.

    Args:
        in_dim: width of each column's input.
        num_heads: the number of columns H.
        cfg: one-layer MLP config of the column layer.

    Example:
        >>> ColumnLayer(6, 2, MLPConfig(hidden=(4,)))(torch.zeros(3, 2, 6)).shape
        torch.Size([3, 2, 4])
    """

    def __init__(self, in_dim: int, num_heads: int, cfg: MLPConfig) -> None:
        super().__init__()
        columns = [MLP(in_dim, cfg) for _ in range(num_heads)]
        self.columns = nn.ModuleList(columns)
        self.output_dim = columns[0].output_dim

    def forward(self, x: Tensor) -> Tensor:
        """Map the columns' inputs [B, H, in_dim] to their outputs [B, H, out], column by column."""
        return torch.stack([column(x[:, i]) for i, column in enumerate(self.columns)], dim=1)  # [B, H, out]


@register_model("cross_stitch", tracks=("mtl", "msl", "mtmsl"))
class CrossStitch(MultiTaskModel):
    """Cross-stitch: one column per head, mixed after every layer by learned cross-stitch units.

    Args:
        config: the :class:`CrossStitchConfig`.
        schema: a fitted schema; one column and one tower per head.

    Attributes:
        stitches: one mixing tensor per column layer, [H, H] (task units) or [h_l, H, H] (neuron units),
            row i weighting the columns that feed column i.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="a"), TaskSpec(name="b")))
        >>> model = CrossStitch(CrossStitchConfig(units="neuron"), schema)
        >>> [tuple(p.shape) for p in model.stitches]
        [(256, 2, 2), (128, 2, 2)]
    """

    config_class = CrossStitchConfig

    def __init__(self, config: CrossStitchConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        self.shared = MLP(self.embedding.output_dim, config.shared)
        num_heads = len(self.heads)
        init = stitch_init(num_heads, config.init_self)  # [H, H]
        layers: list[ColumnLayer] = []
        stitches: list[nn.Parameter] = []
        width = self.shared.output_dim
        for out in config.column.hidden:
            one_layer = config.column.model_copy(update={"hidden": (out,)})
            layers.append(ColumnLayer(width, num_heads, one_layer))
            unit = init if config.units == "task" else init.expand(out, num_heads, num_heads)  # [H, H] | [h, H, H]
            stitches.append(nn.Parameter(unit.clone()))
            width = out
        self.layers = nn.ModuleList(layers)
        self.stitches = nn.ParameterList(stitches)
        self.towers = nn.ModuleList(Tower(width, config.tower) for _ in self.heads.heads)
        self.stitch_lr_multiplier = config.stitch_lr_multiplier

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The network at lr × 1, the cross-stitch units at lr × ``stitch_lr_multiplier`` (paper: 10²-10³)."""
        stitch_ids = {id(p) for p in self.stitches}
        network = [p for p in self.parameters() if id(p) not in stitch_ids]
        return [(network, 1.0), (list(self.stitches), self.stitch_lr_multiplier)]

    def column_outputs(self, features: dict[str, Tensor]) -> Tensor:
        """Every column's output after its last cross-stitch unit, [B, H, h_L] (the towers' inputs)."""
        shared = self.shared(self.embedding(features))  # [B, h_s]
        columns: Tensor = shared.unsqueeze(1).expand(-1, len(self.heads), -1)  # [B, H, h_s]
        for layer, alpha in zip(self.layers, self.stitches, strict=True):
            columns = cross_stitch(alpha, layer(columns))  # [B, H, h_l]
        return columns

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        columns = self.column_outputs(features)  # [B, H, h_L]
        return torch.stack([tower(columns[:, i]) for i, tower in enumerate(self.towers)], dim=1)  # [B, H]
