"""SNR: Sub-Network Routing (Ma, Zhao, Chen, Li, Hong, Chi; "SNR: Sub-Network Routing for Flexible Parameter
Sharing in Multi-Task Learning", AAAI 2019, Google).

The shared bottom is split into E blocks (sub-networks) per layer. The connections between the blocks of
consecutive layers, and from the last layer's blocks to every head, are gated by hard-concrete variables
z ∈ [0, 1] (:mod:`~mtlrec.models.hard_concrete`) trained with an L0 penalty, so each head learns which blocks it
shares with the others (models.md §3.8)::

    x0        = FeatureEmbedding(features)                          # [B, d0]
    u^1_i     = post(W^1_i x0 + b^1_i)                              # [B, h_1], blocks i = 1..E read x0
    for layer l = 2..L, block i:
      trans:  u^l_i = post(Σ_j z^l_ij · W^l_ij u^{l-1}_j + b^l_i)  # W^l_ij: h_{l-1} → h_l, one per connection
      aver:   u^l_i = post(W^l_i (Σ_j z^l_ij · u^{l-1}_j) + b^l_i)  # W^l_i: h_{l-1} → h_l, one per block
    for head t:
      trans:  v_t = Σ_j z_tj · W_tj u^L_j                           # [B, h_L], W_tj: h_L → h_L
      aver:   v_t = Σ_j z_tj · u^L_j                                # [B, h_L]
    logit_t   = Tower_t(v_t)                                        # [B]
    loss      = Σ_t task_t + l0_weight · Σ_gates P(z > 0)           # the "l0" term: expected open gates

``post`` is the rest of an MLP layer: (BatchNorm) → activation → (Dropout). ``expert.hidden`` gives the layer
widths h_1..h_L, ``num_experts`` the number of blocks E per layer. Heads are tasks (mtl), scenarios (msl) or
(task, scenario) pairs (mtmsl).

Reading of the paper: the transforms of SNR-Trans *are* the layer's weights, split into E×E blocks: with every gate
open, SNR-Trans is exactly a shared-bottom MLP of widths (E·h_1, ..., E·h_L) followed by one linear map per head,
and closing z^l_ij removes the block (i, j) of that weight matrix. SNR-Aver is SNR-Trans with the transforms tied
over the incoming connections (W^l_ij = W^l_i): a block averages its inputs, then applies its own layer. The head
connections carry a square transform in SNR-Trans (the tower's first Linear follows; together they are one linear
map per connection) and none in SNR-Aver.

Implementation: every layer's blocks are computed by one einsum over a registered [E, ...] weight tensor (the
transforms of a layer are ONE tensor [E, E, h_{l-1}, h_l]); the gates are drawn once per forward pass and folded
into the transforms, so there is no per-row gate tensor and the graph exports like a plain MLP.

Deviations from the MMLRec release (``snr_trans``):

* gates: MMLRec computes σ(logit(u) + log α / β) from a learnable matrix u and one scalar α per gate module, with
  no noise and no L0 penalty; here each connection has its own ``log_alpha``, noisy in training and deterministic
  in eval, and ``l0_weight`` adds the paper's L0 penalty (MMLRec has none);
* MMLRec keeps the transform matrices in nested Python lists, so they are never trained (models.md §1.4); here
  every tensor is registered;
* MMLRec's blocks are whole DNNs; here a block is one layer of each width in ``expert.hidden``, as in the paper
  (the shared bottom split into blocks layer by layer);
* the SNR-Aver variant (``variant="aver"``) is offered; MMLRec has SNR-Trans only.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = SNR(SNRConfig(num_experts=3, expert=MLPConfig(hidden=(8, 4))), schema).eval()
    >>> {name: tuple(z.shape) for name, z in model.gate_values().items()}
    {'layer2': (3, 3), 'heads': (2, 3)}
    >>> model({"sparse_ids": torch.tensor([[2], [5]])})["ctr"].shape
    torch.Size([2])
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mtlrec.errors import ModelError
from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import _ACTIVATIONS, FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.hard_concrete import HardConcreteConfig, HardConcreteGate
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema

Variant = Literal["trans", "aver"]
# Name of the auxiliary loss term (weight 1 in the trainer unless `train.loss_weights` says otherwise).
L0_TERM = "l0"


def uniform_parameter(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """A parameter drawn from U(-1/√fan_in, 1/√fan_in), the bound nn.Linear uses for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def refuse_l0_task_name(task_names: list[str]) -> None:
    """Raise when a task is named like the L0 term, whose loss would overwrite that task's."""
    if L0_TERM in task_names:
        raise ModelError(
            f"a task is named `{L0_TERM}`, the name of this model's L0 penalty term",
            hint="rename the task in the schema",
        )


@dataclass(frozen=True)
class RoutingSpec:
    """What a :class:`SubNetworkRouting` body is made of.

    Attributes:
        num_blocks: E, the blocks (cells) per layer.
        layers: the layer widths (``hidden``) and the activation, batch norm and dropout of every layer.
        variant: trans (a transform per connection) or aver (a plain gated sum, then the block's own layer).
        cell_level: False = one scalar gate per connection (SNR); True = one gate per unit of the connection's
            message (MSSM's cell-level gates: h_l units in trans, h_{l-1} in aver, h_L to the heads).
        gate: the hard-concrete constants and init.
    """

    num_blocks: int
    layers: MLPConfig
    variant: Variant
    cell_level: bool
    gate: HardConcreteConfig


class SubNetworkRouting(nn.Module):
    """L layers of E blocks with hard-concrete gated connections between layers and to the H heads.

    The input comes in ``copies`` versions, [B, A, d_in] with A = 1 (every head reads the same input, SNR) or
    A = H (head t reads copy t, MSSM's field-gated inputs). Each copy runs through the same blocks and gates;
    batch norm keeps statistics per copy, block and unit. Head t reads copy t (or the only one) of the last layer.
    A layer's activation module is shared by its blocks (a ``prelu`` has one slope per layer, as in
    :class:`~mtlrec.models.blocks.MLP`).

    Args:
        in_dim: d_in, width of the input read by the first layer's blocks.
        num_heads: H.
        copies: A, 1 or H.
        spec: blocks, layers, variant, gate granularity and gate constants.

    Attributes:
        weights: per layer: [E, d_in, h_1] (layer 1); [E, E, h_{l-1}, h_l] (trans, [out, in, ...]) or
            [E, h_{l-1}, h_l] (aver).
        biases: per layer, [E, h_l].
        gates: per layer boundary l-1 → l, gates of shape [E, E] (scalar) or [E, E, g] (cell level).
        head_gate: [H, E] or [H, E, h_L].
        head_weight: [H, E, h_L, h_L] in trans, None in aver.
        output_dim: h_L.

    Example:
        >>> spec = RoutingSpec(3, MLPConfig(hidden=(8, 4)), "trans", False, HardConcreteConfig())
        >>> SubNetworkRouting(6, 2, 1, spec)(torch.zeros(5, 1, 6)).shape
        torch.Size([5, 2, 4])
    """

    def __init__(self, in_dim: int, num_heads: int, copies: int, spec: RoutingSpec) -> None:
        super().__init__()
        widths = spec.layers.hidden
        if not widths:
            raise ModelError("sub-network routing needs at least one layer (`expert.hidden` is empty)")
        if copies not in (1, num_heads):
            raise ModelError(f"the input must come in 1 or {num_heads} copies, not {copies}")
        num_blocks = spec.num_blocks
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.copies = copies
        self.variant = spec.variant
        self.cell_level = spec.cell_level
        self.widths = tuple(widths)
        self.output_dim = widths[-1]
        trans = spec.variant == "trans"
        weights = [uniform_parameter((num_blocks, in_dim, widths[0]), in_dim)]
        biases = [uniform_parameter((num_blocks, widths[0]), in_dim)]
        gates: list[HardConcreteGate] = []
        for h_in, h_out in itertools.pairwise(widths):
            # Trans: the layer is one dense Linear(E·h_in, E·h_out) split into E×E blocks, hence fan_in E·h_in.
            fan_in = num_blocks * h_in if trans else h_in
            shape = (num_blocks, num_blocks, h_in, h_out) if trans else (num_blocks, h_in, h_out)
            weights.append(uniform_parameter(shape, fan_in))
            biases.append(uniform_parameter((num_blocks, h_out), fan_in))
            units = (h_out if trans else h_in,) if spec.cell_level else ()
            gates.append(HardConcreteGate((num_blocks, num_blocks, *units), spec.gate))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)
        self.gates = nn.ModuleList(gates)
        self.posts = nn.ModuleList(_post_layer(copies * num_blocks * width, spec.layers) for width in widths)
        last = widths[-1]
        head_units = (last,) if spec.cell_level else ()
        self.head_gate = HardConcreteGate((num_heads, num_blocks, *head_units), spec.gate)
        self.head_weight: nn.Parameter | None = None
        if trans:
            self.head_weight = uniform_parameter((num_heads, num_blocks, last, last), num_blocks * last)

    def forward(self, x: Tensor) -> Tensor:
        """Map the input copies [B, A, d_in] to every head's input [B, H, h_L]."""
        u = torch.einsum("bad,edk->baek", x, self.weights[0]) + self.biases[0]  # [B, A, E, h_1]
        u = self._post(0, u)
        for layer in range(1, len(self.widths)):
            u = self._post(layer, self._route(layer, u))  # [B, A, E, h_l]
        return self._to_heads(u)  # [B, H, h_L]

    def _post(self, layer: int, pre: Tensor) -> Tensor:
        """(BatchNorm) → activation → (Dropout) of layer ``layer`` on [B, A, E, h], per copy, block and unit."""
        out: Tensor = self.posts[layer](pre.flatten(1))  # [B, A·E·h]
        return out.reshape(pre.shape)  # [B, A, E, h]

    def _route(self, layer: int, u: Tensor) -> Tensor:
        """Pre-activation of layer ``layer``'s blocks from the previous layer's outputs u [B, A, E, h_in]."""
        e = self.num_blocks
        z = self.gates[layer - 1]()  # [E, E] or [E, E, g], row = receiving block
        weight = self.weights[layer]
        if self.variant == "trans":
            gated = weight * z.reshape(e, e, 1, -1)  # [E, E, h_in, h_out]: z scales the transform of each connection
            pre = torch.einsum("baih,oihk->baok", u, gated)  # [B, A, E, h_out]
        else:
            if not self.cell_level:  # scalar gates: one matmul
                mixed = torch.einsum("baih,oi->baoh", u, z)  # [B, A, E, h_in]
            else:  # per-unit gates: elementwise over the E incoming blocks (faster than a per-unit bmm)
                mixed = u[:, :, 0:1] * z[:, 0]  # [B, A, 1, h_in] * [E, h_in] -> [B, A, E, h_in]
                for i in range(1, e):
                    mixed = mixed + u[:, :, i : i + 1] * z[:, i]  # [B, A, E, h_in]
            pre = torch.einsum("baoh,ohk->baok", mixed, weight)  # [B, A, E, h_out]
        out: Tensor = pre + self.biases[layer]  # [B, A, E, h_out]
        return out

    def _to_heads(self, u: Tensor) -> Tensor:
        """Every head's input [B, H, h_L] from the last layer's blocks u [B, A, E, h_L]."""
        heads, e = self.num_heads, self.num_blocks
        z: Tensor = self.head_gate()  # [H, E] or [H, E, h_L]
        if self.head_weight is not None:  # trans
            gated = self.head_weight * z.reshape(heads, e, 1, -1)  # [H, E, h_L, h_L]
            if self.copies == 1:
                return torch.einsum("bij,hijk->bhk", u[:, 0], gated)  # [B, H, h_L]
            return torch.einsum("bhij,hijk->bhk", u, gated)  # [B, H, h_L]
        # Aver: an elementwise gated sum; u [B, A, E, h_L] broadcasts over the heads when A = 1.
        return (u * z.reshape(heads, e, -1)).sum(2)  # [B, H, E, h_L] -> [B, H, h_L]

    def expected_open_gates(self) -> Tensor:
        """The L0 penalty of every connection gate: Σ P(z > 0) (a scalar)."""
        total = self.head_gate.expected_open()
        for gate in self._gates():
            total = total + gate.expected_open()
        return total

    def _gates(self) -> list[HardConcreteGate]:
        """The gates between consecutive layers, typed."""
        return [cast(HardConcreteGate, gate) for gate in self.gates]

    def gate_values(self) -> dict[str, Tensor]:
        """The eval (noise-free) gate values, whatever the mode.

        Returns:
            ``{"layer<l>": [E, E(, g)]}`` for the connections into layer l = 2..L (row = receiving block) and
            ``{"heads": [H, E(, h_L)]}`` for the connections into the heads.
        """
        values = {f"layer{i + 2}": gate.eval_value() for i, gate in enumerate(self._gates())}
        values["heads"] = self.head_gate.eval_value()
        return values


def _post_layer(width: int, cfg: MLPConfig) -> nn.Sequential:
    """(BatchNorm) → activation → (Dropout) over ``width`` features, as after an MLP layer's Linear."""
    parts: list[nn.Module] = []
    if cfg.batch_norm:
        parts.append(nn.BatchNorm1d(width))
    parts.append(_ACTIVATIONS[cfg.activation]())
    if cfg.dropout > 0:
        parts.append(nn.Dropout(cfg.dropout))
    return nn.Sequential(*parts)


class SNRConfig(ModelConfig):
    """SNR hyperparameters.

    Defaults: 4 blocks per layer, layer widths (256, 128) and towers (64,) as MMLRec's configs and code defaults
    (models.md §2); ``variant="trans"`` as MMLRec's ``snr_trans``. ``l0_weight=1e-4`` is our choice (MMLRec has no
    penalty; models.md §3.8 suggests 1e-4 to 1e-3): the default network has E² + H·E = 24 gates (mtl, 2 tasks),
    so the term starts near 0.0024, small next to a BCE of ~0.69; it decides the connections the task losses do
    not need. Gate constants: see :class:`~mtlrec.models.hard_concrete.HardConcreteConfig`.
    """

    num_experts: int = Field(default=4, ge=1, description="blocks (sub-networks) E per layer")
    expert: MLPConfig = Field(
        default=MLPConfig(hidden=(256, 128)),
        description="the layers: one width per layer (each layer has E blocks of that width), with the activation, "
        "batch norm and dropout of every block; at least one layer",
    )
    variant: Variant = Field(
        default="trans",
        description="trans = a transform matrix per gated connection (SNR-Trans); "
        "aver = a gated sum of the lower blocks, then each block's own layer (SNR-Aver)",
    )
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each head's tower")
    l0_weight: float = Field(
        default=1e-4,
        ge=0.0,
        description="weight of the L0 penalty (expected number of open gates), loss term `l0`; 0 = no term",
    )
    gate: HardConcreteConfig = Field(
        default=HardConcreteConfig(), description="hard-concrete constants (beta, gamma, zeta) and log_alpha init"
    )

    @field_validator("expert")
    @classmethod
    def _expert_has_layers(cls, value: MLPConfig) -> MLPConfig:
        if not value.hidden:
            raise ValueError("needs at least one layer: the routed blocks are its layers")
        return value


@register_model("snr", tracks=("mtl", "msl", "mtmsl"))
class SNR(MultiTaskModel):
    """SNR: layers of blocks whose connections are L0-gated (hard-concrete), then one tower per head.

    Args:
        config: the :class:`SNRConfig`.
        schema: a fitted schema; one set of head connections and one tower per head.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> model = SNR(SNRConfig(expert=MLPConfig(hidden=(8, 4))), schema)
        >>> [tuple(w.shape) for w in model.routing.weights]
        [(4, 1, 8), (4, 4, 8, 4)]
    """

    config_class = SNRConfig

    def __init__(self, config: SNRConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        refuse_l0_task_name(self.task_names)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        spec = RoutingSpec(config.num_experts, config.expert, config.variant, cell_level=False, gate=config.gate)
        self.routing = SubNetworkRouting(self.embedding.output_dim, len(self.heads), 1, spec)
        self.towers = nn.ModuleList(Tower(self.routing.output_dim, config.tower) for _ in self.heads.heads)
        self.l0_weight = config.l0_weight

    def head_inputs(self, features: dict[str, Tensor]) -> Tensor:
        """Every head's routed input, [B, H, h_L] (the towers' inputs)."""
        x0 = self.embedding(features)  # [B, d0]
        out: Tensor = self.routing(x0.unsqueeze(1))  # [B, 1, d0] -> [B, H, h_L]
        return out

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        inputs = self.head_inputs(features)  # [B, H, h_L]
        return torch.stack([tower(inputs[:, i]) for i, tower in enumerate(self.towers)], dim=1)  # [B, H]

    def expected_open_gates(self) -> Tensor:
        """Σ P(z > 0) over every connection gate (the L0 penalty before ``l0_weight``)."""
        out: Tensor = self.routing.expected_open_gates()
        return out

    def gate_values(self) -> dict[str, Tensor]:
        """The eval gate value of every connection: see :meth:`SubNetworkRouting.gate_values`."""
        out: dict[str, Tensor] = self.routing.gate_values()
        return out

    def compute_loss(
        self, features: dict[str, Tensor], labels: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The task losses, plus ``l0 = l0_weight · expected open gates`` when ``l0_weight > 0``."""
        outputs, losses = super().compute_loss(features, labels)
        if self.l0_weight > 0:
            losses[L0_TERM] = self.l0_weight * self.expected_open_gates()
        return outputs, losses
