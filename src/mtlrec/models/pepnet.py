"""PEPNet: Parameter and Embedding Personalized Network (Chang, Zhang, Fu, Zang, Guan, Lu, Li, Niu, Song, Gai;
KDD 2023, Kuaishou), "PEPNet: Parameter and Embedding Personalized Network for Infusing with Personalized Prior
Information".

Structure (models.md §3.15, §3.16). One building block, the Gate Neural Unit, scales its target elementwise::

    GateNU(x) = γ · σ(W2 ReLU(W1 x + b1) + b2)               # in (0, γ); ≈ 1 at init for γ = 2

The input layer x0 = [e_1 | ... | e_F | e_scenario | dense] (:class:`~mtlrec.models.blocks.FeatureEmbedding`)
is split by static slices into the paper's three inputs:

* E   = [e_1 | ... | e_F | dense]            # [B, d_E]  general features (x0 without the scenario part)
* E_d = e_scenario                            # [B, k]    domain features
* P   = [e_p for p in persona_fields | E_d]   # [B, d_P]  persona prior (the scenario embedding always)

**EPNet** (embedding personalisation, scenario-aware): the scenario decides how much each dimension (or field)
of the general embedding counts; E passes into the gate only as a constant, so the gate cannot move E::

    δ_dom = GateNU_ep(concat(E_d, stopgrad(E)))    # [B, d_E] per dimension, or [B, F + D] per field, expanded
    O_ep  = δ_dom ⊙ E                              # [B, d_E]

**PPNet** (parameter personalisation, task-aware): one tower per head; every layer's *input* is scaled by its own
GateNU of the persona prior and the (constant) personalised embedding::

    prior   = concat(P, stopgrad(O_ep))                            # [B, d_P + d_E]
    H^(0)   = O_ep                                                 # [B, d_E]
    δ^(l)   = GateNU_{j,l}(prior)                                  # [B, width of H^(l)] per head j, layer l
    H^(l+1) = act(Linear_{j,l}(δ^(l) ⊙ H^(l)))                     # [B, layers[l]]
    logit_j = Linear_j(H^(L))                                      # [B]

Choices where the description leaves room:

* E excludes the scenario embedding: it is the domain input E_d of the EPNet gate (the paper separates domain
  features from general ones), so the towers see the scenario only through the gates. Dense values are part of E:
  with ``epnet_granularity="field"`` each dense column is a field of width 1.
* The persona prior always holds the scenario embedding (as MMLRec) and, before it, the embeddings of the sparse
  fields named in ``persona_fields`` (the paper's user/item/author ids). A persona field may also be general: its
  embedding then enters the towers through O_ep and the gates through P, as in the paper.
* The gate inputs that the paper detaches are E (EPNet) and O_ep (PPNet); E_d and P are not detached, since the
  gates are how they are learned.

Deviations from the MMLRec release: its EPNet gate scales the whole x0, scenario embedding included, and feeds the
detached x0 (not the personalised O_ep) into the PPNet gates; here E and O_ep are used as in the paper. MMLRec
reads the scene feature unconditionally and so crashes on mtl configs (models.md §1.4); here PEPNet runs on every
track of a schema with a scenario (on mtl the scenario personalises the task towers). Like every model here, a
row's loss reaches only its own scenario's head.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, ScenarioField, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        scenario=ScenarioField(name="site", values=("app", "web")),
    ...                        tasks=(TaskSpec(name="ctr"), TaskSpec(name="like")))
    >>> model = PEPNet(PEPNetConfig(layers=(8,), gate_hidden=4), schema)
    >>> sorted(model({"sparse_ids": torch.tensor([[2], [5]]), "scenario": torch.tensor([0, 1])}))
    ['ctr', 'like']
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mtlrec.errors import ModelError
from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import FeatureEmbedding
from mtlrec.models.registry import register_model
from mtlrec.schema import FeatureSchema


class PEPNetConfig(ModelConfig):
    """PEPNet hyperparameters.

    Defaults: towers (256, 128) and GateNU hidden width 128 from MMLRec's code defaults (models.md §2); γ = 2 from
    the paper (gates in (0, 2), ≈ 1 at init, so the gated network starts as the plain one); per-dimension EPNet
    gates and the scenario embedding as the only persona as in MMLRec; ReLU and no dropout as the MMLRec configs.
    """

    layers: tuple[PositiveInt, ...] = Field(
        default=(256, 128), min_length=1, description="hidden widths of each head's PPNet tower"
    )
    gate_hidden: PositiveInt = Field(default=128, description="hidden width of every Gate NU (EPNet and PPNet)")
    gamma: float = Field(default=2.0, gt=0.0, description="Gate NU scale γ: every gate lies in (0, γ)")
    epnet_granularity: Literal["dimension", "field"] = Field(
        default="dimension",
        description="EPNet gate per dimension of E, or one gate per field (a sparse field's k dims share it; each "
        "dense column is a field)",
    )
    persona_fields: tuple[str, ...] = Field(
        default=(),
        description="sparse fields whose embeddings form the PPNet persona prior, with the scenario embedding "
        "(the paper: user, item and author ids); empty = the scenario embedding only",
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each tower layer's activation")


class GateNU(nn.Module):
    """Gate Neural Unit: ``γ · σ(W2 ReLU(W1 x + b1) + b2)``, an elementwise scale in (0, γ).

    Args:
        in_dim: input width.
        hidden: width of the hidden layer.
        out_dim: number of gates.
        gamma: the scale γ.

    Example:
        >>> gate = GateNU(6, hidden=4, out_dim=3, gamma=2.0)
        >>> delta = gate(torch.randn(5, 6))
        >>> delta.shape, bool(((delta > 0) & (delta < 2)).all())
        (torch.Size([5, 3]), True)
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, gamma: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        self.gamma = gamma

    def forward(self, x: Tensor) -> Tensor:
        """Map [B, in_dim] to gates [B, out_dim] in (0, γ)."""
        scores: Tensor = self.out(torch.relu(self.hidden(x)))  # [B, out_dim]
        return self.gamma * torch.sigmoid(scores)  # [B, out_dim]


class PPNetTower(nn.Module):
    """One head's PPNet tower: every layer's input is scaled by a Gate NU of the prior, then a Linear to one logit.

    Args:
        in_dim: width of the tower input H^(0) (O_ep).
        prior_dim: width of the gate input (persona prior and O_ep).
        config: the model config (layers, gate_hidden, gamma, dropout).

    Example:
        >>> tower = PPNetTower(6, 4, PEPNetConfig(layers=(8, 4), gate_hidden=5))
        >>> tower(torch.randn(3, 6), torch.randn(3, 4)).shape
        torch.Size([3])
    """

    def __init__(self, in_dim: int, prior_dim: int, config: PEPNetConfig) -> None:
        super().__init__()
        widths = (in_dim, *config.layers)
        # Gate l scales the input of layer l, so it has that input's width.
        self.gates = nn.ModuleList(GateNU(prior_dim, config.gate_hidden, w, config.gamma) for w in widths[:-1])
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:
        """Map the input [B, in_dim] and the gate input [B, prior_dim] to logits [B]."""
        h = x  # [B, in_dim]
        for gate, layer in zip(self.gates, self.layers, strict=True):
            h = self.dropout(torch.relu(layer(gate(prior) * h)))  # [B, layers[l]]
        logit: Tensor = self.out(h)  # [B, 1]
        return logit.squeeze(-1)  # [B]


@register_model("pepnet", tracks=("mtl", "msl", "mtmsl"))
class PEPNet(MultiTaskModel):
    """PEPNet: scenario-gated embeddings (EPNet) feeding per-head towers with persona-gated layers (PPNet).

    Args:
        config: the :class:`PEPNetConfig`.
        schema: a fitted schema with a scenario field; ``persona_fields`` must name its sparse fields.

    Raises:
        ModelError: a ``persona_fields`` entry is not a sparse field of the schema, or is named twice.

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),),
        ...                        scenario=ScenarioField(name="site", values=("app", "web")))
        >>> model = PEPNet(PEPNetConfig(embed_dim=4, layers=(8,)), schema)
        >>> model.general_dim, model.prior_dim
        (1, 5)
    """

    config_class = PEPNetConfig
    needs_scenario = True
    dim_to_field: Tensor

    def __init__(self, config: PEPNetConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        sparse = schema.sparse_names
        unknown = [name for name in config.persona_fields if name not in sparse]
        if unknown or len(set(config.persona_fields)) != len(config.persona_fields):
            raise ModelError(
                f"pepnet option `persona_fields` {list(config.persona_fields)} must name distinct sparse fields of "
                f"the schema; unknown: {unknown}",
                hint=f"the schema's sparse fields are {sparse}" if sparse else "the schema has no sparse field",
            )
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        k = config.embed_dim
        num_sparse, num_dense = len(sparse), len(schema.dense)
        # Static slices of x0 = [e_1 .. e_F | e_scenario | dense].
        self._sparse_end = num_sparse * k
        self._scenario_end = self._sparse_end + k
        self._has_dense = num_dense > 0
        self._persona = [sparse.index(name) for name in config.persona_fields]
        self.general_dim = num_sparse * k + num_dense  # d_E
        self.prior_dim = (len(self._persona) + 1) * k + self.general_dim  # d_P + d_E
        if config.epnet_granularity == "field":
            fields = [f for f in range(num_sparse) for _ in range(k)] + list(range(num_sparse, num_sparse + num_dense))
            ep_out = num_sparse + num_dense
        else:
            fields = list(range(self.general_dim))
            ep_out = self.general_dim
        # Dimension d of E reads gate dim_to_field[d]: the identity per dimension, the field's gate per field.
        self.register_buffer("dim_to_field", torch.tensor(fields, dtype=torch.long), persistent=False)
        self.epnet_gate = GateNU(k + self.general_dim, config.gate_hidden, ep_out, config.gamma)
        self.towers = nn.ModuleList(PPNetTower(self.general_dim, self.prior_dim, config) for _ in self.heads.heads)

    def _split(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The general embedding E [B, d_E], the scenario embedding E_d [B, k] and the persona part P [B, d_P]."""
        k = self.config.embed_dim
        parts: list[Tensor] = []  # static per schema: no empty slice reaches the exported graph
        if self._sparse_end:
            parts.append(x0[:, : self._sparse_end])  # [B, F·k]
        if self._has_dense:
            parts.append(x0[:, self._scenario_end :])  # [B, D]
        general = torch.cat(parts, dim=1)  # [B, d_E]
        domain = x0[:, self._sparse_end : self._scenario_end]  # [B, k]
        persona = [x0[:, f * k : (f + 1) * k] for f in self._persona]  # len(persona_fields) × [B, k]
        return general, domain, torch.cat([*persona, domain], dim=1)  # [B, d_P]

    def _epnet(self, general: Tensor, domain: Tensor) -> Tensor:
        """The EPNet gate δ_dom over E, expanded to one value per dimension, [B, d_E]."""
        gates: Tensor = self.epnet_gate(torch.cat([domain, general.detach()], dim=1))  # [B, d_E] or [B, F + D]
        return gates.index_select(1, self.dim_to_field)  # [B, d_E]

    def epnet_gates(self, features: dict[str, Tensor]) -> Tensor:
        """The EPNet gate δ_dom on every dimension of the general embedding E, for inspection.

        Args:
            features: the model inputs, as for ``forward``.

        Returns:
            [B, d_E] in (0, γ); with ``epnet_granularity="field"`` the dimensions of one field share a value.
        """
        general, domain, _ = self._split(self.embedding(features))
        return self._epnet(general, domain)  # [B, d_E]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]."""
        general, domain, persona = self._split(self.embedding(features))  # [B, d_E], [B, k], [B, d_P]
        personalised = self._epnet(general, domain) * general  # O_ep [B, d_E]
        prior = torch.cat([persona, personalised.detach()], dim=1)  # [B, d_P + d_E]
        return torch.stack([tower(personalised, prior) for tower in self.towers], dim=1)  # [B, H]
