"""The learned dual rule: a fresh rule is PID-Lag; each meta-parameter changes lambda as stated."""

from __future__ import annotations

import math

import pytest
import torch

from cmo_rl.objectives import PIDLagrangian
from cmo_rl.objectives.learned_dual import (
    LearnedLagrangian,
    learned_update,
    rule_vector,
    set_rule_vector,
)

PID_ARGS = dict(kp=0.1, ki=0.01, kd=0.01, d_delay=3)
COSTS = [40.0, 35.0, [], 10.0, 60.0, 25.0, 0.0, [30.0, 50.0], 5.0, 80.0, 20.0]


def _pid() -> PIDLagrangian:
    return PIDLagrangian(
        25.0, **PID_ARGS, pid_delta_p_ema_alpha=0.95, pid_delta_d_ema_alpha=0.95, sum_norm=False,
        penalty_max=100.0, init_lambda=0.001,
    )  # fmt: skip


def _rule(**kwargs) -> LearnedLagrangian:
    args = dict(PID_ARGS, delta_p_ema_alpha=0.95, delta_d_ema_alpha=0.95, init_lambda=0.001)
    return LearnedLagrangian(25.0, **{**args, **kwargs})


@pytest.mark.parametrize("hidden", [0, 8])
def test_a_fresh_rule_is_the_pid_lagrangian_multiplier(hidden):
    pid, rule = _pid(), _rule(hidden=hidden, horizon=len(COSTS))
    for cost in COSTS:  # an empty batch skips the step in both
        assert torch.allclose(pid.update(cost), rule.update(cost).detach(), rtol=1e-6, atol=1e-7)
        for key in ("integral", "delta_p", "cost_d", "cost_d_history", "history_index"):
            assert torch.allclose(getattr(pid, key).float(), getattr(rule, key).float(), atol=1e-6)
    assert int(rule.updates) == len(COSTS) - 1  # the empty batch is no update


def test_offset_and_correction_add_to_lambda_and_lambda_max_clips():
    base, shifted = _rule(hidden=0), _rule(hidden=0, offset=0.5)
    assert float(shifted.update(40.0)) == pytest.approx(float(base.update(40.0)) + 0.5)
    # a constant MLP output c (zero weights, bias c) adds c
    rule = _rule(hidden=4)
    with torch.no_grad():
        rule.correction[2].bias.fill_(0.25)
    assert float(rule.update(40.0)) == pytest.approx(float(_rule(hidden=0).update(40.0)) + 0.25)
    assert rule.last_terms["correction"] == pytest.approx(0.25)
    capped = _rule(hidden=0, offset=500.0, lambda_max=3.0)
    assert float(capped.update(40.0)) == 3.0
    floored = _rule(hidden=0, offset=-500.0)
    assert float(floored.update(40.0)) == 0.0


def test_the_mlp_sees_the_documented_features():
    """x = (delta/s, P/s, D/s, I, lambda_prev, t/T), checked through a linear read-out."""
    rule = LearnedLagrangian(10.0, kp=1.0, ki=0.5, kd=1.0, d_delay=1, delta_p_ema_alpha=0.5,
                             delta_d_ema_alpha=0.5, init_lambda=0.0, hidden=6, horizon=4)  # fmt: skip
    seen = []
    rule.correction.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    rule.update(30.0)  # delta 20, P 10, C 15 (D 15 - 0), I 10, lambda_prev 0, t 0
    rule.update(14.0)  # delta 4, P 7, C 14.5 (D (14.5 - 15)^+ = 0), I 12, lambda_prev, t 1/4
    first_lambda = 10.0 + 10.0 + 15.0  # Kp P + I + Kd D (zero MLP output)
    expected = torch.tensor([[2.0, 1.0, 1.5, 10.0, 0.0, 0.0],
                             [0.4, 0.7, 0.0, 12.0, first_lambda, 0.25]])  # fmt: skip
    assert torch.allclose(torch.stack(seen), expected)


def test_lambda_is_differentiable_in_the_meta_parameters():
    rule = _rule(hidden=4)
    lam = rule.update(40.0)
    grads = torch.autograd.grad(lam, [rule.offset, rule.log_gains, rule.correction[2].bias])
    assert grads[0].item() == pytest.approx(1.0)  # d lambda / d offset, lambda inside (0, max)
    # d lambda / d log kp = kp * P (the other gains' terms: I = ki delta, D = kd (C - 0))
    p = 0.05 * 15.0
    assert grads[1][0].item() == pytest.approx(0.1 * p, rel=1e-5)
    assert grads[1][1].item() == pytest.approx(0.01 * 15.0, rel=1e-5)
    assert grads[1][2].item() == pytest.approx(0.01 * 0.05 * 40.0, rel=1e-5)
    assert grads[2].item() == pytest.approx(1.0)
    assert not rule.integral.requires_grad  # the stored state is detached


def test_vector_round_trip_state_dict_and_reset():
    rule = _rule(hidden=4, horizon=10)
    for cost in (40.0, 10.0):
        rule.update(cost)
    v = rule_vector(rule)
    assert v.numel() == 3 + 2 + 1 + (6 * 4 + 4) + (4 + 1)
    assert torch.allclose(v[:3], torch.tensor([math.log(0.1), math.log(0.01), math.log(0.01)]))
    other = set_rule_vector(_rule(hidden=4, horizon=10), v * 0 + 0.3)
    assert torch.equal(rule_vector(other), torch.full_like(v, 0.3))
    other.load_state_dict(rule.state_dict())  # a checkpoint: parameters and controller state
    assert torch.equal(other.multiplier, rule.multiplier) and int(other.updates) == 2
    assert float(other.update(30.0)) == float(rule.update(30.0))
    rule.reset_state()
    assert int(rule.updates) == 0 and float(rule.value) == 0.0
    assert torch.equal(rule_vector(rule), v)  # the learned values stay
    with pytest.raises(ValueError, match="has 39 meta-parameters, got a vector of 3"):
        set_rule_vector(rule, torch.zeros(3))


def test_learned_update_reports_the_terms():
    rule = _rule(hidden=0)
    row = learned_update(rule, 40.0)
    assert set(row) == {"train/pid_p", "train/pid_i", "train/pid_d", "train/rule_correction"}
    assert row["train/pid_p"] + row["train/pid_i"] + row["train/pid_d"] == pytest.approx(
        float(rule.value)
    )


def test_bad_arguments_are_named_together():
    with pytest.raises(ValueError) as err:
        LearnedLagrangian(float("nan"), kp=0.0, delta_p_ema_alpha=1.0, d_delay=0, hidden=-1)
    for name in ("cost_limit", "kp, ki, kd", "delta_p_ema_alpha", "d_delay", "hidden"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="episode_cost must be finite"):
        _rule().update(float("nan"))


def test_building_a_rule_leaves_the_global_rng_alone_and_is_deterministic():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    a = _rule(hidden=8)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(99)
    assert torch.equal(rule_vector(_rule(hidden=8)), rule_vector(a))
