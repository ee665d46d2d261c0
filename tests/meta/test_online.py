"""The online meta-gradient of the lambda rule (cmo_rl.meta.online) against hand computation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import jacfwd

from cmo_rl.meta.functional import _example_rollout
from cmo_rl.meta.online import (
    OnlineRuleLearner,
    lambda_sensitivity,
    outer_gradient,
    penalised_direction,
    policy_gradients,
)
from cmo_rl.objectives import normalize_advantages
from cmo_rl.objectives.learned_dual import LearnedLagrangian, learned_update, rule_vector


def _batches(seed: int = 0):
    """The example actor and two batches with random raw advantages."""
    actor, batch = _example_rollout()
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(2):
        b = batch.clone()
        b["advantage"] = torch.randn(2, 3, 1, generator=generator)
        b["cost_advantage"] = torch.randn(2, 3, 1, generator=generator)
        batches.append(b)
    return actor, batches


def test_sensitivity_is_the_derivative_of_the_penalised_direction():
    g_r, g_c = torch.randn(7), torch.randn(7)
    for lam in (0.0, 0.3, 4.0):
        expected = jacfwd(lambda x: penalised_direction(g_r, g_c, x))(torch.tensor(lam))
        torch.testing.assert_close(lambda_sensitivity(g_r, g_c, lam), expected)


def test_outer_gradient_switches_on_the_penalty_above_the_limit():
    actor, (batch, _) = _batches()
    g_r, g_c = policy_gradients(actor, batch, batch["advantage"], batch["cost_advantage"])
    under = outer_gradient(actor, batch, episode_cost=0.5, cost_limit=1.0, mu=7.0)
    over = outer_gradient(actor, batch, episode_cost=1.5, cost_limit=1.0, mu=7.0)
    torch.testing.assert_close(under, g_r)
    torch.testing.assert_close(over, g_r - 7.0 * g_c)


def test_policy_gradient_is_the_mean_score_times_advantage():
    actor, (batch, _) = _batches()
    adv = batch["advantage"]
    g_r, _ = policy_gradients(actor, batch, adv, torch.zeros_like(adv))
    # by hand: autograd of mean(log pi * A) through the module's own parameters
    dist = actor.get_dist(batch.copy())
    log_prob = dist.log_prob(batch["action"]).reshape(2, 3, -1).sum(-1)
    params = [p for p in actor.parameters()]
    grads = torch.autograd.grad((log_prob * adv.squeeze(-1)).mean(), params)
    names = [n for n, _ in actor.named_parameters()]
    by_name = dict(zip(names, grads))
    expected = torch.cat([by_name[k].reshape(-1) for k in sorted(by_name)])
    # the same numbers (flatten_params orders the leaves by key)
    torch.testing.assert_close(torch.sort(g_r).values, torch.sort(expected).values)


def _learner(hidden: int = 3, meta_lr: float = 0.05, mu: float = 10.0):
    actor, batches = _batches()
    rule = LearnedLagrangian(1.0, kp=0.5, ki=0.2, kd=0.1, offset=0.4, hidden=hidden, horizon=10)
    return OnlineRuleLearner(rule, actor, meta_lr=meta_lr, mu=mu), rule, actor, batches


def test_meta_grad_is_outer_gradient_dot_recorded_sensitivity():
    learner, rule, actor, (first, second) = _learner()
    learner.update(first, 2.0, learned_update)
    lam = rule.value
    a, c = normalize_advantages(first["advantage"], first["cost_advantage"])
    sensitivity = lambda_sensitivity(*policy_gradients(actor, first, a, c), lam)
    g_m = outer_gradient(actor, second, episode_cost=3.0, cost_limit=1.0, mu=10.0)
    out = learner.meta_step(second, 3.0)
    assert out["train/rule_meta_grad"] == pytest.approx(float(g_m @ sensitivity), rel=1e-5)


def test_rule_gradient_matches_finite_differences_of_lambda():
    """The gradient handed to Adam is -dM/dlambda * dlambda/deta (central differences of the
    rule's recorded step in each meta-parameter)."""
    learner, rule, _, (first, second) = _learner()
    learner.update(first, 2.0, learned_update)
    state, cost = learner._pending_state(), learner.pending_cost.clone()
    base = rule_vector(rule)
    meta_grad = learner.meta_step(second, 3.0)["train/rule_meta_grad"]
    analytic = torch.cat([p.grad.reshape(-1) for p in rule.parameters()])

    probe = copy.deepcopy(rule)
    h, numeric = 1e-3, torch.zeros_like(base)
    for i in range(base.numel()):
        values = []
        for sign in (1.0, -1.0):
            v = base.clone()
            v[i] += sign * h
            torch.nn.utils.vector_to_parameters(v, probe.parameters())
            with torch.no_grad():
                values.append(float(probe.step(state, cost)[0]["multiplier"]))
        numeric[i] = (values[0] - values[1]) / (2 * h)
    assert numeric.abs().max() > 0
    torch.testing.assert_close(analytic, -meta_grad * numeric, rtol=2e-2, atol=2e-4)


def test_the_meta_step_moves_lambda_the_way_that_raises_the_objective():
    for cost in (0.2, 3.0):  # under and over the limit
        learner, rule, _, (first, second) = _learner(hidden=0)
        learner.update(first, 2.0, learned_update)
        state, jc = learner._pending_state(), learner.pending_cost.clone()
        with torch.no_grad():
            before = float(rule.step(state, jc)[0]["multiplier"])
        meta_grad = learner.meta_step(second, cost)["train/rule_meta_grad"]
        with torch.no_grad():
            after = float(rule.step(state, jc)[0]["multiplier"])
        assert meta_grad != 0.0
        assert (after - before) * meta_grad > 0, (cost, before, after, meta_grad)


def test_nothing_moves_without_a_pending_record_or_when_lambda_is_clipped():
    learner, rule, _, (first, _) = _learner()
    start = rule_vector(rule)
    assert torch.isnan(torch.tensor(learner.meta_step(first, 3.0)["train/rule_meta_grad"]))
    assert torch.equal(rule_vector(rule), start)
    # lambda clipped at 0: far under the limit with a negative offset; no gradient reaches eta
    low = LearnedLagrangian(10.0, offset=-5.0, hidden=0, init_lambda=0.0)
    actor, (a, b) = _batches()
    clipped = OnlineRuleLearner(low, actor, meta_lr=0.1, mu=1.0)
    clipped.update(a, 0.0, learned_update)
    start = rule_vector(low)
    clipped.update(b, 0.0, learned_update)
    assert float(low.value) == 0.0 and torch.equal(rule_vector(low), start)


def test_state_dict_round_trip_continues_identically():
    learner, rule, actor, (first, second) = _learner()
    learner.update(first, 2.0, learned_update)
    twin_rule = copy.deepcopy(rule)
    twin = OnlineRuleLearner(twin_rule, actor, meta_lr=0.05, mu=10.0)
    twin.load_state_dict(learner.state_dict())
    twin.optimizer.load_state_dict(learner.optimizer.state_dict())
    out = learner.update(second, 3.0, learned_update)
    twin_out = twin.update(second, 3.0, learned_update)
    assert out == twin_out
    assert torch.equal(rule_vector(rule), rule_vector(twin_rule))


def test_bad_settings_are_refused():
    actor, _ = _batches()
    rule = LearnedLagrangian(1.0, hidden=0)
    with pytest.raises(ValueError, match="meta_lr"):
        OnlineRuleLearner(rule, actor, meta_lr=0.0, mu=1.0)
    with pytest.raises(ValueError, match="mu"):
        OnlineRuleLearner(rule, actor, meta_lr=0.1, mu=float("nan"))
