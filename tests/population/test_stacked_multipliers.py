"""Stacked Lagrange and PID multipliers equal ``P`` separate modules, step for step."""

from __future__ import annotations

import pytest
import torch

from cmo_rl.objectives import LagrangeMultiplier, PIDLagrangian
from cmo_rl.population import StackedLagrange, StackedPID
from cmo_rl.training.lagrangian_ppo import pid_update

COSTS = torch.tensor(
    [[30.0, 5.0, 25.0], [12.5, 40.0, 0.0], [0.0, 0.0, 60.0], [26.0, 24.0, 25.0], [9.0, 33.0, 1.0]]
)
MEASURED = torch.tensor(
    [[True, True, True], [True, False, True], [True, True, False], [False, True, True]]
    + [[True] * 3]
)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("upper_bound", [None, 0.6])
def test_stacked_lagrange_equals_separate_modules(optimizer, upper_bound):
    limits, inits, lrs = [25.0, 10.0, 20.0], [0.001, 0.5, 1.0], [0.035, 0.1, 0.01]
    modules = [
        LagrangeMultiplier(d, i, lr, upper_bound=upper_bound, optimizer=optimizer)
        for d, i, lr in zip(limits, inits, lrs)
    ]
    stack = StackedLagrange.from_modules(modules)
    for costs, measured in zip(COSTS, MEASURED):
        for module, cost, seen in zip(modules, costs, measured):
            module.update(cost if seen else torch.tensor([]))
        values = stack.update(costs, measured)
        assert torch.equal(values, torch.stack([m.value for m in modules]))
    assert bool((values > 0).any())
    fresh = [
        LagrangeMultiplier(d, 0.0, lr, upper_bound=upper_bound, optimizer=optimizer)
        for d, lr in zip(limits, lrs)
    ]
    stack.copy_to(fresh)  # a checkpoint: the modules continue exactly
    for module, other in zip(modules, fresh):
        assert torch.equal(module.update(30.0), other.update(30.0))
    if optimizer == "adam":
        assert StackedLagrange.from_modules(modules).step.tolist() == [5.0, 5.0, 5.0]


def test_stacked_lagrange_built_directly():
    stack = StackedLagrange(torch.tensor([25.0, 10.0]), 0.5, 0.1, size=2, optimizer="sgd")
    assert stack.update(torch.tensor([35.0, 0.0])).tolist() == pytest.approx([1.5, 0.0])
    with pytest.raises(ValueError, match="finite"):
        stack.update(torch.tensor([float("nan"), 1.0]))
    stack.update(torch.tensor([float("nan"), 1.0]), measured=torch.tensor([False, True]))


def test_stacked_pid_equals_separate_modules():
    gains = [(0.1, 0.01, 0.01), (0.5, 0.05, 0.2), (0.0, 0.02, 0.0)]
    limits = [25.0, 10.0, 20.0]
    modules = [
        PIDLagrangian(
            d, kp, ki, kd, d_delay=3, pid_delta_p_ema_alpha=0.9, pid_delta_d_ema_alpha=0.5,
            sum_norm=False, penalty_max=2.0,
        )
        for d, (kp, ki, kd) in zip(limits, gains)
    ]  # fmt: skip
    stack = StackedPID.from_modules(modules)
    for costs, measured in zip(COSTS, MEASURED):
        terms = []
        for module, cost, seen in zip(modules, costs, measured):
            terms.append(pid_update(module, float(cost)) if seen else None)
        values = stack.update(costs, measured)
        assert torch.equal(values, torch.stack([m.value for m in modules]))
        for p, expected in enumerate(terms):
            for key, value in (expected or {}).items():
                assert float(stack.terms[key][p]) == value, key
    for key in modules[0].state().keys():
        assert torch.equal(stack.state[key], torch.stack([m.state()[key] for m in modules]))
    fresh = [
        PIDLagrangian(d, kp, ki, kd, d_delay=3, pid_delta_p_ema_alpha=0.9,
                      pid_delta_d_ema_alpha=0.5, sum_norm=False, penalty_max=2.0)
        for d, (kp, ki, kd) in zip(limits, gains)
    ]  # fmt: skip
    stack.copy_to(fresh)
    assert [float(m.update(50.0)) for m in fresh] == [float(m.update(50.0)) for m in modules]


def test_stacked_pid_needs_shared_constants():
    modules = [PIDLagrangian(10.0, d_delay=2), PIDLagrangian(10.0, d_delay=3)]
    with pytest.raises(ValueError, match="share"):
        StackedPID.from_modules(modules)
