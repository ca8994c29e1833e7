"""MLP: the fully shared baseline of MMLRec, one network for every task and scenario (models.md §3.2).

Every parameter but one bias per head is shared: the network computes one logit per row and head h adds its own
bias b_h::

    x0      = FeatureEmbedding(features)       # [B, d0] (the scenario id is one embedded field, as in MMLRec)
    z       = MLP_dnn(x0)                      # [B, h]
    s       = w · z                            # [B], a Linear to 1 without bias
    logit_h = s + b_h                          # [B, H], b ∈ R^H one registered parameter

On msl this is the "one model for all scenarios" baseline: the scenario reaches the network only as an input
feature, and each scenario head differs from the others by its bias alone.

Deviation from the MMLRec release (models.md §1.4.5): there each head's prediction layer adds its bias *in place*
to the one shared logit tensor, so head h's output carries b_1 + ... + b_h. Here the biases are one [H] parameter
broadcast onto the shared logit out of place, so head h's logit is s + b_h exactly.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = MLPModel(MLPModelConfig(dnn=MLPConfig(hidden=(8,))), schema)
    >>> model.head_logits({"sparse_ids": torch.tensor([[2], [5]])}).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import MLP, FeatureEmbedding, MLPConfig
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class MLPModelConfig(ModelConfig):
    """MLP (fully shared) hyperparameters.

    Default: ``dnn`` (256, 128), the MMLRec code default of ``dnn_hidden_units`` (its msl configs use
    (256, 128, 64)).
    """

    dnn: MLPConfig = Field(default=MLPConfig(hidden=(256, 128)), description="the MLP shared by every head")


@register_model("mlp", tracks=("mtl", "msl", "mtmsl"))
class MLPModel(MultiTaskModel):
    """MLP: one fully shared network gives one logit; the heads differ only by their own bias.

    Args:
        config: the :class:`MLPModelConfig`.
        schema: a fitted schema; one bias per head.

    Attributes:
        bias: [H] the per-head biases b_h, in ``self.heads`` order (zero at init).

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="a"), TaskSpec(name="b")))
        >>> MLPModel(MLPModelConfig(), schema).bias.shape
        torch.Size([2])
    """

    config_class = MLPModelConfig

    def __init__(self, config: MLPModelConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        self.dnn = MLP(self.embedding.output_dim, config.dnn)
        # No bias here: the heads' biases below are the only offsets of the shared score.
        self.out = nn.Linear(self.dnn.output_dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(len(self.heads)))

    def shared_logit(self, features: dict[str, Tensor]) -> Tensor:
        """The score s [B] shared by every head, before the per-head biases."""
        score: Tensor = self.out(self.dnn(self.embedding(features)))  # [B, 1]
        return score.squeeze(1)  # [B]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]: the shared score plus each head's bias."""
        return self.shared_logit(features).unsqueeze(1) + self.bias  # [B, 1] + [H] -> [B, H]
