"""APG: Adaptive Parameter Generation (Yan, Wang, Chen, Han, Cheng, Peng, Wu, Huang, Gai; NeurIPS 2022, Alibaba).

Instead of one weight matrix per layer shared by every row, each row i gets its own weights W_i = G(z_i),
generated from a condition vector z_i (models.md §3.11). Generating a full N×M matrix per row is too costly, so the
weights are low-rank: U and V are shared and only a small K×K core S_i (and its bias) is generated::

    x0   = FeatureEmbedding(features)                          # [B, d0]
    z_i  = stopgrad(e_scenario,i)                               # [B, k] condition (``detach_condition``)
    S_i, b_S,i = G(z_i)                                         # [B, K, K], [B, K]; G = Linear (or a small MLP)
    APG(x) = act( ((x U + b_U) S_i + b_S,i) V + b_V )           # U [N, K], V [K, M]; K = ceil(min(N, M) / r)
           = act( x W_i + c_i ),  W_i = U S_i V                 # the equivalent per-row layer
    h    = APG_L(… APG_1(x0))                                   # widths ``layers``
    logit_h = Linear_h(h)                                       # [B] per head; routed by scenario on msl/mtmsl

The per-row core is one ``torch.bmm`` of [B, 1, K] by [B, K, K]. Rows of the same scenario have the same
condition, hence the same core and weights.

Choices (ours unless said):

* **Condition**: the scenario embedding, the same row of the shared embedding table that x0 carries (MMLRec:
  the embedding of the scene feature). User-feature ("mix-wise") and self ("self-wise") conditions of the paper
  are not implemented.
* **Detached condition** by default (``detach_condition``, as MMLRec; NextRec makes it optional): the scenario
  embedding is then learned only as an input feature, and the generator cannot shrink or blow up its own input
  to change the generated weights; the generator's gradient still trains the generator.
* **Generator init**: the last generator layer's bias is flatten(I_K) for S and 0 for b_S, and its weight is
  drawn from N(0, 0.01²), so S_i starts near the identity (each layer starts as the fixed low-rank layer U V)
  while already differing slightly between scenarios, and every generator parameter gets a gradient from the
  first step. (A zero weight would give S_i = I exactly, but would cut the gradient of hidden generator layers.)
* **Over-parameterisation** U = U1 U2 through a width P (the paper's and MMLRec's ``mf_p``) is not implemented;
  MMLRec disables it (``use_mf_p=False``). U and V are shared by every row (MMLRec ``use_uv_shared=True``).
* **Tracks**: APG reads the scenario on every track (``needs_scenario``): on mtl one head per task, on msl /
  mtmsl one per task and scenario. MMLRec crashes on mtl configs (models.md §1.4), so mtl is our extension.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, ScenarioField, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        scenario=ScenarioField(name="site", values=("app", "web")),
    ...                        tasks=(TaskSpec(name="ctr"),))
    >>> model = APG(APGConfig(layers=(8, 4), track="msl"), schema)
    >>> [layer.rank for layer in model.layers]
    [2, 1]
    >>> model({"sparse_ids": torch.tensor([[2], [5]]), "scenario": torch.tensor([0, 1])})["ctr"].shape
    torch.Size([2])
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import _ACTIVATIONS, MLP, FeatureEmbedding, MLPConfig
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema

# Why 1e-2: small enough that S_i ≈ I at init (the layer starts as the shared low-rank layer), large enough that
# the cores of different scenarios differ and every generator layer gets a gradient from the first step.
GENERATOR_INIT_STD = 1e-2


class APGConfig(ModelConfig):
    """APG hyperparameters.

    Defaults (models.md §2, defaults table, and §3.11): layers (256, 128) as MMLRec's ``dnn_hidden_units``;
    rank divisor 4 as MMLRec's ``mf_k``; a single Linear generator and a detached scenario condition, as MMLRec.
    """

    layers: tuple[PositiveInt, ...] = Field(default=(256, 128), min_length=1, description="width of each APG layer")
    rank_divisor: PositiveInt = Field(
        default=4, description="r: each layer's core rank is K = ceil(min(in, out) / r) (MMLRec mf_k)"
    )
    generator_hidden: tuple[PositiveInt, ...] = Field(
        default=(),
        description="hidden ReLU layers of the generator before its output Linear; empty = one Linear (MMLRec)",
    )
    detach_condition: bool = Field(
        default=True, description="stop the generator's gradient at the scenario embedding (MMLRec)"
    )
    activation: Literal["relu", "gelu", "silu", "tanh", "prelu"] = Field(
        default="relu", description="activation after each APG layer"
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each APG layer")


class APGLayer(nn.Module):
    """One APG layer: shared low-rank factors U, V and a per-row K×K core generated from a condition.

    Args:
        in_dim: input width N.
        out_dim: output width M.
        condition_dim: width of the condition vector z.
        rank_divisor: r, so that the core rank is K = ceil(min(N, M) / r).
        generator_hidden: hidden widths of the generator MLP (empty = one Linear).

    Attributes:
        rank: the core rank K.

    Example:
        >>> layer = APGLayer(6, 4, condition_dim=3, rank_divisor=2)
        >>> layer.rank, layer(torch.randn(5, 6), torch.randn(5, 3)).shape
        (2, torch.Size([5, 4]))
    """

    def __init__(
        self, in_dim: int, out_dim: int, condition_dim: int, rank_divisor: int, generator_hidden: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self.rank = math.ceil(min(in_dim, out_dim) / rank_divisor)
        k = self.rank
        self.u = nn.Linear(in_dim, k)  # x U + b_U, U = u.weight.T [N, K]
        self.v = nn.Linear(k, out_dim)  # · V + b_V, V = v.weight.T [K, M]
        self.generator = MLP(condition_dim, MLPConfig(hidden=generator_hidden))  # identity when empty
        self.core = nn.Linear(self.generator.output_dim, k * k + k)  # → (S [K·K], b_S [K])
        nn.init.normal_(self.core.weight, mean=0.0, std=GENERATOR_INIT_STD)
        with torch.no_grad():
            self.core.bias.copy_(torch.cat([torch.eye(k).flatten(), torch.zeros(k)]))

    def generate(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        """Each row's core and core bias.

        Args:
            condition: [B, c] condition vectors z.

        Returns:
            ``(S [B, K, K], b_S [B, K])``.
        """
        k = self.rank
        params = self.core(self.generator(condition))  # [B, K·K + K]
        core = params[:, : k * k].reshape(-1, k, k)  # [B, K, K]
        return core, params[:, k * k :]  # [B, K, K], [B, K]

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        """The linear part ((x U + b_U) S_i + b_S,i) V + b_V, before the activation.

        Args:
            x: [B, N] inputs.
            condition: [B, c] condition vectors.

        Returns:
            [B, M].
        """
        core, core_bias = self.generate(condition)  # [B, K, K], [B, K]
        low = self.u(x).unsqueeze(1)  # [B, 1, K]
        mixed = torch.bmm(low, core).squeeze(1) + core_bias  # [B, K]
        out: Tensor = self.v(mixed)  # [B, M]
        return out


@register_model("apg", tracks=("mtl", "msl", "mtmsl"))
class APG(MultiTaskModel):
    """APG: layers whose low-rank weights are generated per row from the scenario embedding.

    Args:
        config: the :class:`APGConfig`.
        schema: a fitted schema with a scenario field (the condition).

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),),
        ...                        scenario=ScenarioField(name="site", values=("app", "web")))
        >>> [layer.rank for layer in APG(APGConfig(), schema).layers]
        [3, 32]
    """

    config_class = APGConfig
    needs_scenario = True

    def __init__(self, config: APGConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        # x0 = [sparse embeddings | scenario embedding | dense]: the scenario embedding's columns.
        self.scenario_start = self.embedding.num_sparse * config.embed_dim
        self.scenario_end = self.scenario_start + config.embed_dim
        self.detach_condition = config.detach_condition
        widths = [self.embedding.output_dim, *config.layers]
        self.layers = nn.ModuleList(
            APGLayer(n, m, config.embed_dim, config.rank_divisor, config.generator_hidden)
            for n, m in itertools.pairwise(widths)
        )
        after: list[nn.Module] = [_ACTIVATIONS[config.activation]() for _ in config.layers]
        if config.dropout > 0:
            after = [nn.Sequential(act, nn.Dropout(config.dropout)) for act in after]
        self.activations = nn.ModuleList(after)
        # One output Linear per head: per task (mtl), per scenario (msl), per task and scenario (mtmsl).
        self.outputs = nn.ModuleList(nn.Linear(widths[-1], 1) for _ in self.heads.heads)

    def condition(self, x0: Tensor) -> Tensor:
        """The generator's condition z: the scenario embedding inside x0, detached unless configured otherwise.

        Args:
            x0: [B, d0] the embedded inputs.

        Returns:
            [B, k].
        """
        z = x0[:, self.scenario_start : self.scenario_end]  # [B, k]
        return z.detach() if self.detach_condition else z

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        x0 = self.embedding(features)  # [B, d0]
        z = self.condition(x0)  # [B, k]
        h = x0
        for layer, activation in zip(self.layers, self.activations, strict=True):
            h = activation(layer(h, z))  # [B, out]
        return torch.cat([out(h) for out in self.outputs], dim=1)  # [B, H]
