"""Single-Task: one fully independent network per head, no parameter shared (the MMLRec "Single-Task" baseline).

The MMLRec README defines Single-Task as every task learned with completely independent parameters; the release
ships no class for it (presumably one run per task). Here the H independent networks live in one module so that
one run, one checkpoint and one exported graph serve every head (models.md §3.1)::

    x0_h    = FeatureEmbedding_h(features)     # [B, d0], head h's OWN embedding tables
    z_h     = MLP_bottom,h(x0_h)               # [B, h_b]
    logit_h = Tower_h(z_h)                     # [B]
    logits  = stack_h(logit_h)                 # [B, H]

Heads are tasks (mtl), scenarios (msl) or (task, scenario) pairs (mtmsl). Since a head's loss only reaches its
own network and routing gives each row's loss to its own scenario's head, on msl each scenario's network is
trained only on that scenario's rows: the "one model per scenario" baseline. (With ``batch_norm`` on, a head's
batch statistics in training still pool every row of the batch; its gradient comes from its own rows' labels.)

The scenario stays an input feature of every network (as in MMLRec, which appends it to the sparse fields); on
msl it is constant within a head's rows and so acts as a learned bias.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = SingleTask(SingleTaskConfig(bottom=MLPConfig(hidden=(8,)), tower=MLPConfig(hidden=(4,))), schema)
    >>> model.head_logits({"sparse_ids": torch.tensor([[2], [5]])}).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class SingleTaskConfig(ModelConfig):
    """Single-Task hyperparameters (the same for every head's network).

    Defaults: bottom (256, 128) and tower (64,), the MMLRec code defaults of its multi-task models (models.md §2,
    defaults table), so that each head's network is the SharedBottom network of one task: the comparison isolates
    the effect of sharing. (MTReclib's SingleTask uses (512, 256) + (128, 64), its own multi-task widths.)
    """

    bottom: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="bottom MLP of each head's network")
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each head's tower")


class _HeadNetwork(nn.Module):
    """One head's whole network: its own embedding, bottom MLP and tower."""

    def __init__(self, config: SingleTaskConfig, schema: FeatureSchema) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        self.bottom = MLP(self.embedding.output_dim, config.bottom)
        self.tower = Tower(self.bottom.output_dim, config.tower)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Logits [B] of this head for every row."""
        x0 = self.embedding(features)  # [B, d0]
        out: Tensor = self.tower(self.bottom(x0))  # [B]
        return out


@register_model("single_task", tracks=("mtl", "msl", "mtmsl"))
class SingleTask(MultiTaskModel):
    """Single-Task: one independent network (embedding, bottom MLP, tower) per head, nothing shared.

    Args:
        config: the :class:`SingleTaskConfig`.
        schema: a fitted schema; one network per head.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="a"), TaskSpec(name="b")))
        >>> len(SingleTask(SingleTaskConfig(), schema).networks)
        2
    """

    config_class = SingleTaskConfig

    def __init__(self, config: SingleTaskConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        # One network per head: per task (mtl), per scenario (msl) or per task and scenario (mtmsl).
        self.networks = nn.ModuleList(_HeadNetwork(config, schema) for _ in self.heads.heads)

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        return torch.stack([network(features) for network in self.networks], dim=1)  # [B, H]
