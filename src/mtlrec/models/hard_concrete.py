"""Hard-concrete gates: the L0 relaxation of Louizos, Welling, Kingma ("Learning Sparse Neural Networks through
L0 Regularization", ICLR 2018), used by SNR and MSSM to learn which connections stay open.

Each gate has one learnable ``log_alpha``; its value ``z`` lies in [0, 1] and is exactly 0 or exactly 1 with
non-zero probability, so a closed gate removes its connection::

    train: u ~ U(eps, 1 - eps)                                   # one draw per gate and forward pass
           s = sigmoid((log u - log(1 - u) + log_alpha) / beta)  # binary concrete sample
    eval:  s = sigmoid(log_alpha)                                # deterministic, no noise
    z = clamp(s · (zeta - gamma) + gamma, 0, 1)                  # stretch to (gamma, zeta), then clip
    L0 = Σ sigmoid(log_alpha - beta · log(-gamma / zeta))        # expected number of open gates, P(z > 0)

Constants: gamma -0.1 and zeta 1.1 are Louizos et al.'s; beta 0.9 is the temperature of the SNR/MSSM ports
(models.md §3.8; Louizos et al. use 2/3). All three are config fields.

Choices of ours (the paper leaves them to the user):

* **One draw per forward pass** (per mini-batch), not one per row: a gate's value is then shared by the whole
  batch, so SNR/MSSM can fold the gates into their transform matrices (no [B, O, I, h] intermediate) and the
  train and eval code paths are the same but for the value of z. The draw uses torch's global RNG, so a run is
  reproducible from its seed.
* **Init** ``log_alpha = init_log_alpha = 3.0`` for every gate, so the network starts as its dense version: in
  eval every gate is exactly 1 (σ(3)·1.2 - 0.1 = 1.04 ≥ 1); in training a gate is exactly 1 with probability 0.70,
  strictly inside (0, 1) with probability 0.29 (where the task losses reach ``log_alpha``) and 0 with
  probability 0.006; its L0 term P(z > 0) = σ(3 + 2.16) = 0.994. The L0 penalty then closes the gates that the
  tasks do not need.

Example:
    >>> gate = HardConcreteGate((2, 3), HardConcreteConfig())
    >>> gate.eval()().tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    >>> round(gate.expected_open().detach().item(), 2)
    5.97
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlrec.config import StrictModel

# Keeps log u and log(1 - u) finite: u is drawn from U(EPS, 1 - EPS).
EPS = 1e-6


class HardConcreteConfig(StrictModel):
    """Hard-concrete gate constants and init.

    Defaults: gamma -0.1, zeta 1.1 from Louizos et al.; beta 0.9 as the MMLRec and NextRec SNR ports (Louizos et al.
    use 2/3);
    ``init_log_alpha`` 3.0 is our choice: every gate starts open (see the module docstring for the numbers).
    """

    beta: float = Field(
        default=0.9, gt=0.0, description="temperature of the concrete distribution (Louizos et al.: 2/3)"
    )
    gamma: float = Field(default=-0.1, lt=0.0, description="lower end of the stretch interval (< 0)")
    zeta: float = Field(default=1.1, gt=1.0, description="upper end of the stretch interval (> 1)")
    init_log_alpha: float = Field(
        default=3.0,
        description="initial log_alpha of every gate; 3.0 = open (eval z = 1, P(z > 0) = 0.994 in training); "
        "0.0 = Louizos' 50% drop-rate init",
    )


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates z ∈ [0, 1]: noisy in training, deterministic in eval.

    Args:
        shape: the shape of the gate tensor (one learnable ``log_alpha`` per gate).
        cfg: the constants and the init.

    Attributes:
        log_alpha: the learnable location parameters, of ``shape``.

    Example:
        >>> gate = HardConcreteGate((4,), HardConcreteConfig(init_log_alpha=-20.0)).eval()
        >>> gate().tolist()
        [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, shape: tuple[int, ...], cfg: HardConcreteConfig) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(shape, cfg.init_log_alpha))
        self.beta = cfg.beta
        self.gamma = cfg.gamma
        self.zeta = cfg.zeta
        # log_alpha shift of P(z > 0) = sigmoid(log_alpha - beta·log(-gamma/zeta)).
        self.open_shift = cfg.beta * math.log(-cfg.gamma / cfg.zeta)

    def forward(self) -> Tensor:
        """The gate values z, of ``shape``: one fresh sample in training, the noise-free value in eval."""
        if not self.training:
            return self.eval_value()
        u = torch.rand_like(self.log_alpha) * (1.0 - 2.0 * EPS) + EPS  # U(eps, 1 - eps), torch's RNG
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return self._stretch(s)

    def eval_value(self) -> Tensor:
        """The noise-free gate values used in eval, of ``shape`` (whatever the module's mode)."""
        return self._stretch(torch.sigmoid(self.log_alpha))

    def _stretch(self, s: Tensor) -> Tensor:
        """Stretch s ∈ (0, 1) to (gamma, zeta) and clip to [0, 1]."""
        return torch.clamp(s * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)

    def open_probability(self) -> Tensor:
        """P(z > 0) of every gate under the training distribution, of ``shape``."""
        return torch.sigmoid(self.log_alpha - self.open_shift)

    def expected_open(self) -> Tensor:
        """The L0 penalty: the expected number of open gates, Σ P(z > 0) (a scalar)."""
        return self.open_probability().sum()
