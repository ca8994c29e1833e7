"""STAR: Star Topology Adaptive Recommender (Sheng, Zhao, Zhu, Ding, Chen, Liu, Zhou, Gai; CIKM 2021, Alibaba).

One model serves D scenarios (domains): every layer has a *shared* part, trained on all rows, and a
*scenario-specific* part, trained only on that scenario's rows, combined element-wise (models.md §3.10, §3.16)::

    x0   = FeatureEmbedding(features)                                 # [B, d0] = [features | e_scenario | dense]
    x    = x0 without the scenario embedding e_d                      # [B, n], n = d0 - k
    z    = PN(x, d) ⊕ e_d                                             # [B, d0]   (partitioned normalization)
    PN(x, d) = (γ ⊙ γ_d) · (x − μ_d) / sqrt(σ²_d + ε) + (β + β_d)      # γ, β [n]; γ_d, β_d [D, n]
    h_0  = z;  h_l = act(h_{l-1} (W_l ⊙ W_{l,d}) + b_l + b_{l,d})      # W_l [in, out], W_{l,d} [D, in, out]
    s_m,t = h_L (w_t ⊙ w_{t,d}) + b_t + b_{t,d}       (msl, mtmsl)     # [B] one head per task and scenario
    s_m,t = Linear_t(h_L)                             (mtl)            # [B] one head per task
    s_a,t = AuxTower_t(e_d)       (or of x0: ``aux_inputs="all"``)     # [B]
    logit_t = s_m,t + s_a,t                                           # [B], no activation on the logit

* **Partitioned normalization.** In training μ_d, σ²_d are the (biased) batch statistics of the rows of scenario
  d only, computed with one-hot [B, D] matmuls (no boolean indexing), and per-scenario running averages
  (buffers [D, n]) move towards them with ``norm_momentum`` (unbiased variance, as ``nn.BatchNorm1d``). In eval
  each row is normalised with its own scenario's running statistics (a gather). A scenario with fewer than two
  rows in a batch keeps its running statistics (one row has no variance).
* **Star-topology layers.** W_{l,d} and w_{t,d} start at ones and b_{l,d}, b_{t,d} at zeros, so at init every
  scenario's path equals the shared network. All D paths of a layer are computed with one matmul against the
  [in, D·out] stack of effective weights, then each row's own path is gathered: D× the FLOPs of one path, which
  is cheap for the handful of scenarios these datasets have, and static-shaped for export (gathering a [B, in,
  out] weight per row would allocate B·in·out floats instead).
* **Tracks.** The scenario is the STAR domain on every track (``needs_scenario``). On mtl the heads are one plain
  Linear per task over the row's scenario path; on msl / mtmsl each head (t, d) is the scenario-d slice of a
  star output layer of task t, and :class:`~mtlrec.models.base.HeadLayout` routes each row to its own head.
* **Auxiliary network.** One small tower per task over the scenario embedding (paper: the domain indicator), whose
  output s_a is added to the main logit, so the scenario can shift the prediction directly.

Deviations from the MMLRec release (models.md §1.4) and from Scenario-Wise-Rec, and why:

* every per-scenario weight, bias, γ_d, β_d and running statistic is a registered parameter or buffer (MMLRec
  keeps them in Python lists, so most are never trained or saved);
* PN is applied to the network input, with real per-scenario statistics and running averages (MMLRec applies a
  domain BN after the first layer only, and its mask bug disables it; Scenario-Wise-Rec normalises with the whole
  batch's statistics and has no running averages, a train / eval mismatch);
* the auxiliary network is present (MMLRec has none); no ReLU on the final logit (Scenario-Wise-Rec applies one,
  which forces s_m ≥ 0);
* on mtl the scenario stays the domain (MMLRec's STAR treats the *tasks* as domains there);
* the scenario embedding bypasses PN (our choice): it is constant within a scenario, so its per-scenario
  variance is 0; normalised it would be 0 in training and (e_d − running mean)/√ε in eval, i.e. noise amplified
  ~300× from an embedding that moved since the running mean was taken. Passed through unchanged it adds a
  per-scenario constant to the first layer, as b_{1,d} does.

Example:
    >>> import torch
    >>> from mtlrec.schema import FeatureSchema, ScenarioField, SparseField, TaskSpec
    >>> schema = FeatureSchema(sparse=(SparseField(name="user", vocab_size=10),),
    ...                        scenario=ScenarioField(name="site", values=("app", "web")),
    ...                        tasks=(TaskSpec(name="ctr"),))
    >>> model = STAR(STARConfig(layers=(8, 4), track="msl"), schema)
    >>> [h.name for h in model.heads.heads]
    ['ctr[app]', 'ctr[web]']
    >>> model({"sparse_ids": torch.tensor([[2], [5]]), "scenario": torch.tensor([0, 1])})["ctr"].shape
    torch.Size([2])
"""

from __future__ import annotations

import itertools
import math
from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mtlrec.models.base import ModelConfig, MultiTaskModel
from mtlrec.models.blocks import _ACTIVATIONS, FeatureEmbedding, MLPConfig, Tower
from mtlrec.models.registry import register_model
from mtlrec.schema import SCENARIO, FeatureSchema


class STARConfig(ModelConfig):
    """STAR hyperparameters.

    Defaults: star layers (256, 128) as MMLRec's ``dnn_hidden_units`` (Scenario-Wise-Rec uses (128, 64, 32));
    auxiliary tower (32,) as Scenario-Wise-Rec (MMLRec has no auxiliary network; set ``aux: null`` to drop it);
    auxiliary input = the scenario embedding, as the paper's domain indicator; PN momentum 0.1 and ε 1e-5 as
    ``nn.BatchNorm1d``.
    """

    layers: tuple[PositiveInt, ...] = Field(
        default=(256, 128), min_length=1, description="output width of each star-topology layer"
    )
    activation: Literal["relu", "gelu", "silu", "tanh", "prelu"] = Field(
        default="relu", description="activation after each star-topology layer"
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each star-topology layer")
    partitioned_norm: bool = Field(
        default=True, description="normalise the input with per-scenario statistics (PN); False = no normalisation"
    )
    norm_momentum: float = Field(
        default=0.1, gt=0.0, le=1.0, description="PN running statistics: running ← (1 − m)·running + m·batch"
    )
    norm_eps: float = Field(default=1e-5, gt=0.0, description="PN: ε added to the variance")
    aux: MLPConfig | None = Field(
        default=MLPConfig(hidden=(32,)),
        description="hidden layers of the auxiliary tower of each task (then a Linear to one logit); null = none",
    )
    aux_inputs: Literal["scenario", "all"] = Field(
        default="scenario", description="input of the auxiliary towers: the scenario embedding, or the whole x0"
    )


class PartitionedNorm(nn.Module):
    """Batch normalisation with per-scenario statistics and shared ⊙ per-scenario affine parameters.

    Args:
        num_features: width n of the input.
        num_scenarios: number of scenarios D.
        momentum: weight of the batch statistics in the running averages.
        eps: added to the variance.

    Example:
        >>> norm = PartitionedNorm(3, num_scenarios=2)
        >>> out = norm(torch.randn(8, 3), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
        >>> out.shape, norm.running_mean.shape
        (torch.Size([8, 3]), torch.Size([2, 3]))
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, num_scenarios: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_scenarios = num_scenarios
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))  # γ, shared
        self.bias = nn.Parameter(torch.zeros(num_features))  # β, shared
        self.scenario_weight = nn.Parameter(torch.ones(num_scenarios, num_features))  # γ_d
        self.scenario_bias = nn.Parameter(torch.zeros(num_scenarios, num_features))  # β_d
        self.register_buffer("running_mean", torch.zeros(num_scenarios, num_features))
        self.register_buffer("running_var", torch.ones(num_scenarios, num_features))

    def batch_statistics(self, x: Tensor, scenario: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-scenario mean and biased variance of the batch, and the row count of each scenario.

        Args:
            x: [B, n] inputs.
            scenario: [B] int64 scenario ids.

        Returns:
            ``(mean [D, n], var [D, n], count [D])``; a scenario without rows gets mean 0 and variance 0.
        """
        one_hot = F.one_hot(scenario, self.num_scenarios).to(x.dtype)  # [B, D]
        count = one_hot.sum(dim=0)  # [D]
        denominator = count.clamp_min(1.0).unsqueeze(1)  # [D, 1]
        mean = one_hot.t() @ x / denominator  # [D, n]
        centred = x - mean.index_select(0, scenario)  # [B, n]
        var = one_hot.t() @ centred.square() / denominator  # [D, n]
        return mean, var, count

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Move the running statistics of each scenario with at least two rows towards the batch's."""
        present = (count >= 2).unsqueeze(1)  # [D, 1]
        unbiased = var * (count / (count - 1.0).clamp_min(1.0)).unsqueeze(1)  # [D, n]
        new_mean = torch.lerp(self.running_mean, mean, self.momentum)  # [D, n]
        new_var = torch.lerp(self.running_var, unbiased, self.momentum)  # [D, n]
        self.running_mean.copy_(torch.where(present, new_mean, self.running_mean))
        self.running_var.copy_(torch.where(present, new_var, self.running_var))

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        """Normalise each row with its scenario's statistics (batch in training, running in eval).

        Args:
            x: [B, n] inputs.
            scenario: [B] int64 scenario ids.

        Returns:
            [B, n] normalised and scaled inputs.
        """
        if self.training:
            mean, var, count = self.batch_statistics(x, scenario)
            self._update_running(mean.detach(), var.detach(), count)
        else:
            mean, var = self.running_mean, self.running_var
        centred = x - mean.index_select(0, scenario)  # [B, n]
        inv_std = (var.index_select(0, scenario) + self.eps).rsqrt()  # [B, n]
        gamma = self.weight * self.scenario_weight.index_select(0, scenario)  # [B, n]
        beta = self.bias + self.scenario_bias.index_select(0, scenario)  # [B, n]
        return centred * inv_std * gamma + beta  # [B, n]


class StarLinear(nn.Module):
    """A star-topology linear layer: effective weight W ⊙ W_d and bias b + b_d for scenario d.

    Args:
        in_dim: input width.
        out_dim: output width.
        num_scenarios: number of scenarios D.

    Example:
        >>> layer = StarLinear(4, 3, num_scenarios=2)
        >>> layer(torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, num_scenarios: int) -> None:
        super().__init__()
        self.num_scenarios = num_scenarios
        self.out_dim = out_dim
        # Shared part: nn.Linear's default init (uniform ±1/√in for both); stored [in, out] as the paper writes it.
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))
        # Scenario part: ones and zeros, so that every scenario's layer starts as the shared layer.
        self.scenario_weight = nn.Parameter(torch.ones(num_scenarios, in_dim, out_dim))
        self.scenario_bias = nn.Parameter(torch.zeros(num_scenarios, out_dim))

    def all_paths(self, x: Tensor) -> Tensor:
        """The layer of every scenario applied to every row, [B, D, out]."""
        weight = self.weight * self.scenario_weight  # [D, in, out]
        stacked = weight.permute(1, 0, 2).reshape(weight.shape[1], -1)  # [in, D·out]
        paths = (x @ stacked).reshape(-1, self.num_scenarios, self.out_dim)  # [B, D, out]
        return paths + self.bias + self.scenario_bias  # [B, D, out]

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        """Each row through its own scenario's layer: [B, in] and [B] ids to [B, out]."""
        index = scenario.reshape(-1, 1, 1).expand(-1, 1, self.out_dim)  # [B, 1, out]
        return self.all_paths(x).gather(1, index).squeeze(1)  # [B, out]


@register_model("star", tracks=("mtl", "msl", "mtmsl"))
class STAR(MultiTaskModel):
    """STAR: partitioned normalization, shared ⊙ per-scenario layers and a scenario auxiliary tower.

    Args:
        config: the :class:`STARConfig`.
        schema: a fitted schema with a scenario field (the STAR domains).

    Example:
        >>> from mtlrec.schema import DenseField, FeatureSchema, ScenarioField, TaskSpec
        >>> schema = FeatureSchema(dense=(DenseField(name="age"),), tasks=(TaskSpec(name="ctr"),),
        ...                        scenario=ScenarioField(name="site", values=("app", "web", "tv")))
        >>> model = STAR(STARConfig(layers=(8,)), schema)
        >>> tuple(model.layers[0].scenario_weight.shape)
        (3, 9, 8)
    """

    config_class = STARConfig
    needs_scenario = True

    def __init__(self, config: STARConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        self.embedding = FeatureEmbedding(schema, config.embed_dim)
        num_scenarios = schema.num_scenarios
        # x0 = [sparse embeddings | scenario embedding | dense]: the scenario embedding's columns.
        self.scenario_start = self.embedding.num_sparse * config.embed_dim
        self.scenario_end = self.scenario_start + config.embed_dim
        in_dim = self.embedding.output_dim
        num_normalised = in_dim - config.embed_dim
        self.norm: PartitionedNorm | None = None
        if config.partitioned_norm and num_normalised > 0:
            self.norm = PartitionedNorm(num_normalised, num_scenarios, config.norm_momentum, config.norm_eps)
        widths = [in_dim, *config.layers]
        self.layers = nn.ModuleList(StarLinear(i, o, num_scenarios) for i, o in itertools.pairwise(widths))
        after: list[nn.Module] = [_ACTIVATIONS[config.activation]() for _ in config.layers]
        if config.dropout > 0:
            after = [nn.Sequential(act, nn.Dropout(config.dropout)) for act in after]
        self.activations = nn.ModuleList(after)
        hidden = widths[-1]
        # Output layers: one plain Linear per task on mtl; one star layer per task on msl/mtmsl, whose scenario-d
        # slice is head (task, d).
        outputs: list[nn.Module]
        if self.heads.routed:
            outputs = [StarLinear(hidden, 1, num_scenarios) for _ in self.tasks]
        else:
            outputs = [nn.Linear(hidden, 1) for _ in self.tasks]
        self.outputs = nn.ModuleList(outputs)
        self.aux: nn.ModuleList | None = None
        self.aux_on_scenario = config.aux_inputs == "scenario"
        if config.aux is not None:
            aux_dim = config.embed_dim if self.aux_on_scenario else in_dim
            self.aux = nn.ModuleList(Tower(aux_dim, config.aux) for _ in self.tasks)

    def main_input(self, x0: Tensor, scenario: Tensor) -> Tensor:
        """The star network's input z: PN of x0's feature columns, then the scenario embedding unchanged.

        Args:
            x0: [B, d0] the embedded inputs.
            scenario: [B] int64 scenario ids.

        Returns:
            [B, d0] (the columns reordered: normalised features first).
        """
        scenario_embedding = x0[:, self.scenario_start : self.scenario_end]  # [B, k]
        rest = torch.cat([x0[:, : self.scenario_start], x0[:, self.scenario_end :]], dim=1)  # [B, d0 - k]
        if self.norm is not None:
            rest = self.norm(rest, scenario)  # [B, d0 - k]
        return torch.cat([rest, scenario_embedding], dim=1)  # [B, d0]

    def head_logits(self, features: dict[str, Tensor]) -> Tensor:
        """Logit (or regression value) of every head, [B, H]: star network score plus auxiliary score."""
        scenario = features[SCENARIO]  # [B]
        x0 = self.embedding(features)  # [B, d0]
        h = self.main_input(x0, scenario)  # [B, d0]
        for layer, activation in zip(self.layers, self.activations, strict=True):
            h = activation(layer(h, scenario))  # [B, out]
        if self.heads.routed:
            paths = [cast(StarLinear, out).all_paths(h).squeeze(2) for out in self.outputs]  # T × [B, D]
            main = torch.cat(paths, dim=1)  # [B, T·D], task-major like the heads
        else:
            main = torch.cat([out(h) for out in self.outputs], dim=1)  # [B, T]
        if self.aux is None:
            return main
        aux_in = x0[:, self.scenario_start : self.scenario_end] if self.aux_on_scenario else x0  # [B, k] or [B, d0]
        aux = torch.stack([tower(aux_in) for tower in self.aux], dim=1)  # [B, T]
        # Task t's auxiliary score goes to each of its heads (t, d), task-major like the heads.
        per_head = aux.unsqueeze(2).expand(-1, -1, self.heads.num_scenarios).reshape(aux.shape[0], -1)  # [B, H]
        return main + per_head  # [B, H]
