"""The multiplier each PPO-Lagrangian recipe plugs into the shared loop, checked by hand."""

from __future__ import annotations

import pytest
import torch
from recipe_helpers import compose

from cmo_rl.objectives import LagrangeMultiplier, PIDLagrangian
from cmo_rl.training.lagrangian_ppo import (
    make_lagrange_multiplier,
    make_pid_multiplier,
    pid_update,
)


def test_ppo_lagrangian_multiplier_follows_the_lambda_keys():
    cfg = compose(
        "ppo_lagrangian",
        ["cost_limit=10.0", "init_lambda=1.0", "lambda_lr=0.1", "lambda_optimizer=sgd"],
    )
    lam = make_lagrange_multiplier(cfg, torch.device("cpu"))
    assert isinstance(lam, LagrangeMultiplier)
    assert lam.value.item() == pytest.approx(1.0)
    lam.update(15.0)  # SGD ascent: 1 + 0.1 * (15 - 10)
    assert lam.value.item() == pytest.approx(1.5)


def test_pid_update_logs_the_three_terms_of_lambda():
    cfg = compose(
        "pid_lagrangian",
        [
            "cost_limit=10.0",
            "pid_kp=0.1",
            "pid_ki=0.01",
            "pid_kd=0.01",
            "pid_d_delay=2",
            "pid_delta_p_ema_alpha=0.9",
            "pid_delta_d_ema_alpha=0.5",
            "init_lambda=0.001",
        ],
    )
    pid = make_pid_multiplier(cfg, torch.device("cpu"))
    assert isinstance(pid, PIDLagrangian) and not pid.sum_norm
    # J_C = 20: Delta = 10, I = 0.001 + 0.1, P = 0.1 * 10, C = 0.5 * 20 vs C_{t-2} = 0
    # J_C = 10: Delta = 0,  I = 0.101,       P = 0.9,      C = 10 vs 0
    # J_C = 0:  Delta = -10, I = 0.001,      P = -0.19,    C = 5 vs 10 -> D term 0
    expected = [(0.1, 0.101, 0.1, 0.301), (0.09, 0.101, 0.1, 0.291), (-0.019, 0.001, 0.0, 0.0)]
    for episode_cost, (p, i, d, lam) in zip((20.0, 10.0, 0.0), expected, strict=True):
        terms = pid_update(pid, episode_cost)
        expected_terms = {"train/pid_p": p, "train/pid_i": i, "train/pid_d": d}
        assert terms == pytest.approx(expected_terms, abs=1e-6)  # float32 state
        assert pid.value.item() == pytest.approx(lam, abs=1e-6)  # max(0, p + i + d)
