"""Hard-concrete gates: eval and train values, range, init, the L0 penalty and its agreement with sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mtlrec.config import validate
from mtlrec.errors import ConfigError
from mtlrec.models.hard_concrete import HardConcreteConfig, HardConcreteGate


def _gate(log_alpha: torch.Tensor, **cfg: float) -> HardConcreteGate:
    gate = HardConcreteGate(tuple(log_alpha.shape), HardConcreteConfig(**cfg))
    with torch.no_grad():
        gate.log_alpha.copy_(log_alpha)
    return gate


def test_hard_concrete_eval_value_is_the_noise_free_stretched_sigmoid() -> None:
    log_alpha = torch.tensor([-20.0, -3.0, -1.0, 0.0, 0.5, 2.0, 20.0])
    gate = _gate(log_alpha).eval()
    expected = torch.clamp(torch.sigmoid(log_alpha) * 1.2 - 0.1, 0.0, 1.0)
    first, second = gate(), gate()
    assert torch.equal(first, second)
    assert torch.allclose(first, expected)
    assert first[0] == 0.0 and first[-1] == 1.0  # closed / open exactly
    assert torch.equal(gate.eval_value(), first)


def test_hard_concrete_eval_does_not_touch_the_rng() -> None:
    gate = _gate(torch.zeros(5)).eval()
    torch.manual_seed(1)
    gate()
    after_gate = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_gate)


def test_hard_concrete_train_samples_vary_stay_in_unit_interval_and_hit_both_ends() -> None:
    gate = _gate(torch.zeros(10_000)).train()
    torch.manual_seed(0)
    first, second = gate(), gate()
    assert not torch.equal(first, second)
    for z in (first, second):
        assert bool(((z >= 0) & (z <= 1)).all())
        # Stretching then clipping puts mass on exactly 0 and exactly 1 (the point of the hard-concrete).
        assert bool((z == 0).any()) and bool((z == 1).any()) and bool(((z > 0) & (z < 1)).any())


def test_hard_concrete_train_sample_follows_the_formula_and_is_reproducible_for_a_seed() -> None:
    log_alpha = torch.tensor([-1.0, 0.0, 1.5])
    gate = _gate(log_alpha, beta=0.5, gamma=-0.2, zeta=1.3).train()
    torch.manual_seed(7)
    z = gate()
    torch.manual_seed(7)
    again = gate()
    assert torch.equal(z, again)
    torch.manual_seed(7)
    u = torch.rand(3) * (1 - 2e-6) + 1e-6
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / 0.5)
    assert torch.allclose(z, torch.clamp(s * 1.5 - 0.2, 0.0, 1.0), atol=1e-6)


def test_hard_concrete_penalty_is_the_sum_of_open_probabilities() -> None:
    log_alpha = torch.tensor([[-2.0, 0.0], [1.0, 4.0]])
    gate = _gate(log_alpha, beta=0.7, gamma=-0.2, zeta=1.2)
    expected = torch.sigmoid(log_alpha - 0.7 * math.log(0.2 / 1.2))
    assert torch.allclose(gate.open_probability(), expected)
    assert torch.allclose(gate.expected_open(), expected.sum())
    assert gate.expected_open().shape == ()


@pytest.mark.parametrize("log_alpha", [-1.5, 0.0, 2.0])
def test_hard_concrete_penalty_matches_the_sampled_frequency_of_open_gates(log_alpha: float) -> None:
    gate = _gate(torch.full((40_000,), log_alpha)).train()
    torch.manual_seed(0)
    frequency = (gate() > 0).float().mean()
    assert abs(float(frequency) - float(gate.open_probability()[0].detach())) < 0.01


def test_hard_concrete_default_init_is_open() -> None:
    gate = HardConcreteGate((3, 4), HardConcreteConfig())
    assert torch.equal(gate.eval_value(), torch.ones(3, 4))
    assert torch.allclose(gate.open_probability(), torch.full((3, 4), 0.9943), atol=1e-4)
    assert gate.log_alpha.requires_grad


def test_hard_concrete_train_sample_passes_gradient_to_log_alpha() -> None:
    gate = _gate(torch.zeros(1000)).train()
    torch.manual_seed(0)
    gate().sum().backward()
    grad = gate.log_alpha.grad
    assert grad is not None
    assert bool((grad >= 0).all()) and bool((grad > 0).any())  # raising log_alpha opens the gate


@pytest.mark.parametrize(("field", "value"), [("gamma", 0.1), ("zeta", 1.0), ("beta", 0.0)])
def test_hard_concrete_config_refuses_constants_that_break_the_stretch(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        validate(HardConcreteConfig, {field: value}, "gate")
