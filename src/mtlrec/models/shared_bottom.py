"""SharedBottom: hard parameter sharing (Caruana, Machine Learning 1997; overview in Ruder, arXiv 2017).

Structure (models.md §3.4): one bottom MLP shared by every task over the input layer, then one tower per
task::

    x0 = FeatureEmbedding(features)        # [B, d0]
    h  = MLP_bottom(x0)                    # [B, h]
    logit_t = Tower_t(h)                   # [B] per task t

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = SharedBottom(SharedBottomConfig(), schema)
    >>> sorted(model({"sparse_ids": torch.tensor([[2], [5]])}))
    ['ctr', 'like']
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class SharedBottomConfig(ModelConfig):
    """SharedBottom hyperparameters.

    Defaults follow the MMLRec code defaults and DeepCTR-Torch (models.md §2, defaults table): bottom
    (256, 128), towers (64,).
    """

    bottom: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="the MLP shared by every task")
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each task's tower")


@register_model("shared_bottom", tracks=("mtl", "msl", "mtmsl"))
class SharedBottom(MultiTaskModel):
    """SharedBottom: one MLP shared by all tasks, then one tower per task.

    Args:
        config: the :class:`SharedBottomConfig`.
        schema: a fitted schema; one tower per task.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> SharedBottom(SharedBottomConfig(bottom=MLPConfig(hidden=(16,))), schema).bottom.output_dim
        16
    """

    config_class = SharedBottomConfig

    def __init__(self, config: SharedBottomConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        self.bottom = MLP(self.embedding.output_dim, config.bottom)
        # One tower per head: per task (mtl), per scenario (msl) or per task and scenario (mtmsl).
        self.towers = nn.ModuleList(Tower(self.bottom.output_dim, config.tower) for _ in self.heads.heads)

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        shared = self.bottom(self.embedding(features))  # [B, h]
        return torch.stack([tower(shared) for tower in self.towers], dim=1)  # [B, H]
