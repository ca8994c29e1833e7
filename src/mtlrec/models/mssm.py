"""MSSM: Multiple-level Sparse Sharing Model (Ding, Zhou, Wang, Wang, Gao, Hu, Chen; "MSSM: A Multiple-level Sparse
Sharing Model for Efficient Multi-Task Learning", SIGIR 2021 short paper, Ant Group).

Two levels of learned sparse sharing (models.md §3.9), both with hard-concrete gates
(:mod:`~mtlrec.models.hard_concrete`: noisy in training, deterministic in eval, L0 penalty):

* **FSCM** (field-level sparse connection): head t gates every embedded field f with z_{t,f} ∈ [0, 1], so each
  head reads its own subset of fields;
* **CSSM** (cell-level sparse sharing): SNR-style layers of E cells (:class:`~mtlrec.models.snr.SubNetworkRouting`)
  whose connections carry a *vector* gate, one hard-concrete gate per unit of the connection's message::

    x0       = FeatureEmbedding(features) = [e_1 | ... | e_F' | dense]      # [B, F'·k + D]
    x_t      = [z_{t,1} e_1 | ... | z_{t,F'} e_F' | dense]                   # [B, d0] per head t; x: [B, H, d0]
    u^1_{t,i} = post(W^1_i x_t + b^1_i)                                      # [B, h_1]: shared cells, per-head input
    for layer l = 2..L (trans):
      u^l_{t,i} = post(Σ_j z^l_ij ⊙ (W^l_ij u^{l-1}_{t,j}) + b^l_i)          # z^l_ij ∈ [0, 1]^{h_l}
    v_t      = Σ_j z_tj ⊙ (W_tj u^L_{t,j})                                    # [B, h_L], z_tj ∈ [0, 1]^{h_L}
    logit_t  = Tower_t(v_t)                                                  # [B]
    loss     = Σ_t task_t + l0_weight · (Σ P(z_field > 0) + Σ P(z_cell > 0))  # the "l0" term

``variant="aver"`` replaces the per-connection transforms by a gated sum and each cell's own layer, as SNR-Aver
(the vector gates then have h_{l-1} units, and the head connections none but the gate).

Design choices of ours (the paper's full text was not available; models.md §3.9):

* **Which fields are gated**: the F sparse fields and the scenario field (embedded as one more field, F' = F + 1
  when the schema has a scenario). Dense values are kept as they are in every head's input: they are single
  scalars with no embedding to select, and the first layer already weighs each of them.
* **Where the per-head inputs go**: the first layer's cells are shared by the heads (one weight tensor) but fed
  each head's gated input, batched over heads as [B, H, d0]; since the routed layers mix cells, each head keeps
  its own copy of the activations through every layer ([B, H, E, h_l]) and head t reads only its copy, so a
  field closed for head t cannot reach head t by any path. The cells, transforms and CSSM gates are shared by the
  copies (the sharing structure is SNR's); batch norm keeps statistics per head copy, cell and unit, since each
  head's input distribution differs. The cost is H times SNR's; without any embedded field (dense-only schemas)
  FSCM has nothing to gate and a single copy is run.
* **Cells**: E generic cells per layer whose sharing is learned by the gates, rather than the paper's split
  into task-specific and shared cells (as MMLRec's port).
* **Gate draws**: one per forward pass (per mini-batch), folded into the weights; init open
  (``init_log_alpha`` 3.0); constants beta 0.9, gamma -0.1, zeta 1.1.
* ``l0_weight`` 1e-5: the cell-level gates are many (the default mtl network has E²·h_2 + H·E·h_L = 3072 of
  them), so the term starts near 0.03.

Deviations from the MMLRec release (``mssm``): it has no FSCM at all; its CSSM gates are deterministic
σ(logit(u) + log α / β) from nested Python lists that are never registered (only α trains; models.md §1.4), with
no L0 penalty; its transforms are unregistered too. Here FSCM is implemented, every tensor is registered, gates
are hard-concrete with the L0 term, and blocks are one layer per width of ``expert.hidden``.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10), SparseField(name="item", vocab_size=5)),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = MSSM(MSSMConfig(num_experts=3, expert=MLPConfig(hidden=(8, 4))), schema).eval()
    >>> model.field_names, model.field_gate_values().tolist()
    (('user', 'item'), [[1.0, 1.0], [1.0, 1.0]])
    >>> model({"sparse_ids": torch.tensor([[2, 1], [5, 4]])})["like"].shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.hard_concrete import HardConcreteConfig, HardConcreteGate
from mtlrec.models.registry import register_model
from mtlrec.models.snr import L0_TERM, RoutingSpec, SubNetworkRouting, Variant, refuse_l0_task_name
from mtlrec.schema import FeatureSchema


class MSSMConfig(ModelConfig):
    """MSSM hyperparameters.

    Defaults: 4 cells per layer, layer widths (256, 128) and towers (64,) as MMLRec's configs and code defaults
    (models.md §2); ``variant="trans"`` as MMLRec's port (SNR-Trans with per-unit gates). Our choices, the paper's
    values being unknown: ``l0_weight=1e-5`` (see the module docstring) and the gate init and constants of
    :class:`~mtlrec.models.hard_concrete.HardConcreteConfig`, shared by the field and cell gates.
    """

    num_experts: int = Field(default=4, ge=1, description="cells E per layer")
    expert: MLPConfig = Field(
        default=MLPConfig(hidden=(256, 128)),
        description="the layers: one width per layer (each layer has E cells of that width), with the activation, "
        "batch norm and dropout of every cell; at least one layer",
    )
    variant: Variant = Field(
        default="trans",
        description="trans = a transform per gated connection; aver = a gated sum, then each cell's own layer",
    )
    tower: MLPConfig = Field(default=MLPConfig(hidden=(64,)), description="hidden layers of each head's tower")
    l0_weight: float = Field(
        default=1e-5,
        ge=0.0,
        description="weight of the L0 penalty (expected number of open field and cell gates), loss term `l0`; "
        "0 = no term",
    )
    gate: HardConcreteConfig = Field(
        default=HardConcreteConfig(),
        description="hard-concrete constants (beta, gamma, zeta) and log_alpha init of the field and cell gates",
    )

    @field_validator("expert")
    @classmethod
    def _expert_has_layers(cls, value: MLPConfig) -> MLPConfig:
        if not value.hidden:
            raise ValueError("needs at least one layer: the routed cells are its layers")
        return value


@register_model("mssm", tracks=("mtl", "msl", "mtmsl"))
class MSSM(MultiTaskModel):
    """MSSM: per-head field gates (FSCM), then SNR-style cells with per-unit L0 gates (CSSM), one tower per head.

    Args:
        config: the :class:`MSSMConfig`.
        schema: a fitted schema; one set of field gates, head connections and tower per head.

    Attributes:
        field_gate: the FSCM gates, [H, F'] (None when the schema has no sparse or scenario field).
        field_names: the F' gated fields: the sparse fields, then the scenario field.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, SparseField, TaskSpec
        >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
        ...                        dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),))
        >>> model = MSSM(MSSMConfig(expert=MLPConfig(hidden=(8, 4))), schema)
        >>> {name: tuple(z.shape) for name, z in model.gate_values().items()}
        {'layer2': (4, 4, 4), 'heads': (1, 4, 4)}
    """

    config_class = MSSMConfig

    def __init__(self, config: MSSMConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        refuse_l0_task_name(self.task_names)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        num_heads = len(self.heads)
        names = [f.name for f in schema.sparse] + ([schema.scenario.name] if schema.scenario is not None else [])
        self.field_names = tuple(names)
        self.embed_dim = config.embed_dim
        self.num_dense = self.embedding.num_dense
        self.field_gate: HardConcreteGate | None = None
        if self.embedding.num_fields:
            self.field_gate = HardConcreteGate((num_heads, self.embedding.num_fields), config.gate)
        copies = num_heads if self.field_gate is not None else 1
        spec = RoutingSpec(config.num_experts, config.expert, config.variant, cell_level=True, gate=config.gate)
        self.routing = SubNetworkRouting(self.embedding.output_dim, num_heads, copies, spec)
        self.towers = nn.ModuleList(Tower(self.routing.output_dim, config.tower) for _ in self.heads.heads)
        self.l0_weight = config.l0_weight

    def gated_inputs(self, features: dict[str, Tensor]) -> Tensor:
        """Each head's field-gated input, [B, H, d0] ([B, 1, d0] when no field is embedded)."""
        x0: Tensor = self.embedding(features)  # [B, F'·k + D]
        if self.field_gate is None:
            return x0.unsqueeze(1)  # [B, 1, D]
        z = self.field_gate()  # [H, F']
        heads, fields = z.shape
        columns = z.unsqueeze(2).expand(heads, fields, self.embed_dim).reshape(heads, -1)  # [H, F'·k]
        columns = F.pad(columns, (0, self.num_dense), value=1.0)  # [H, d0]: dense columns pass ungated
        return x0.unsqueeze(1) * columns  # [B, H, d0]

    def head_inputs(self, features: dict[str, Tensor]) -> Tensor:
        """Every head's routed input, [B, H, h_L] (the towers' inputs)."""
        out: Tensor = self.routing(self.gated_inputs(features))  # [B, H, h_L]
        return out

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        inputs = self.head_inputs(features)  # [B, H, h_L]
        return torch.stack([tower(inputs[:, i]) for i, tower in enumerate(self.towers)], dim=1)  # [B, H]

    def field_gate_values(self) -> Tensor:
        """The eval FSCM gate values, [H, F'] (row = head, column = ``field_names``); [H, 0] without fields."""
        if self.field_gate is None:
            return torch.ones(len(self.heads), 0)
        out: Tensor = self.field_gate.eval_value()
        return out

    def gate_values(self) -> dict[str, Tensor]:
        """The eval CSSM gate values: see :meth:`~mtlrec.models.snr.SubNetworkRouting.gate_values`."""
        out: dict[str, Tensor] = self.routing.gate_values()
        return out

    def expected_open_gates(self) -> Tensor:
        """Σ P(z > 0) over the field and cell gates (the L0 penalty before ``l0_weight``)."""
        total: Tensor = self.routing.expected_open_gates()
        if self.field_gate is not None:
            total = total + self.field_gate.expected_open()
        return total

    def compute_loss(
        self, features: dict[str, Tensor], labels: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The task losses, plus ``l0 = l0_weight · expected open gates`` when ``l0_weight > 0``."""
        outputs, losses = super().compute_loss(features, labels)
        if self.l0_weight > 0:
            losses[L0_TERM] = self.l0_weight * self.expected_open_gates()
        return outputs, losses
