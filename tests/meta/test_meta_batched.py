"""batched_inner_step: B vmapped inner updates equal B sequential ``inner_step`` calls, values and
meta-gradients (float64, two chained updates so second-order terms count)."""

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.meta.batched import batched_inner_step, data_surrogate
from cmo_rl.meta.bilevel import inner_step, meta_objective, violation
from cmo_rl.meta.functional import log_prob_of, params_of, values_and_grads
from cmo_rl.meta.lstm import LSTMMetaOptimizer
from cmo_rl.meta.pid import PIDMetaOptimizer
from cmo_rl.modules import make_actor
from cmo_rl.testing import MockCMDPEnv

B, N, T = 3, 2, 4
COST_LIMIT, SCALE, MU = 1.0, 2.0, 3.0


def _pid():
    return PIDMetaOptimizer(
        init_KP=0.5, init_KI=0.2, init_KD=0.1, init_etaR=0.005, init_etaC=0.005, init_lambda=0.2
    ).double()


def _lstm():
    torch.manual_seed(1)
    return LSTMMetaOptimizer(
        hidden_size=5, lstm_layers=2, alpha_theta=0.1, init_lambda=0.2
    ).double()


@pytest.fixture(scope="module")
def problem():
    """A float64 actor, B tasks with distinct parameters and distinct mock-CMDP data."""
    torch.manual_seed(0)
    env = MockCMDPEnv(num_envs=N, episode_length=T, seed=0)
    actor = make_actor(env, hidden_layers=(6,))
    with torch.no_grad():
        batches = torch.stack([env.rollout(T, actor) for _ in range(B)]).double()
    actor.double()
    batches["advantage"] = torch.randn(B, N, T, 1, dtype=torch.float64)
    batches["cost_advantage"] = torch.randn(B, N, T, 1, dtype=torch.float64)
    data = TensorDict(
        batch=batches,
        episode_return=torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
        episode_cost=torch.tensor([0.8, 1.5, 3.0], dtype=torch.float64),  # e < 0, > 0, > 0
        batch_size=[B],
    )
    theta0 = params_of(actor)
    params = torch.stack([theta0.apply(lambda p: p + 0.3 * torch.randn_like(p)) for _ in range(B)])
    with torch.no_grad():  # each task's data as if sampled by its own theta_0 (rho = 1 there)
        log_probs = [log_prob_of(actor, params[b], batches[b]) for b in range(B)]
        batches["action_log_prob"] = torch.stack(log_probs)
    return actor, params, data


def _initial(opt, params):
    lam = torch.tensor([0.2, 0.0, 1.3], dtype=torch.float64)
    state = torch.stack([opt.init_state(params[b]) for b in range(B)])
    state["integral"] = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    state["prev_violation"] = torch.tensor([0.1, -0.3, 0.6], dtype=torch.float64)
    if "h" in state.keys():  # the same nonzero LSTM state on every call
        gen = torch.Generator().manual_seed(2)
        for key in ("h", "c"):
            state[key] = 0.5 * torch.randn(state[key].shape, generator=gen, dtype=torch.float64)
    return lam, state


def _score(actor, params, lam, data):
    """A scalar of the outputs: the meta-objective of each task's theta_2 plus its lambda_2."""
    j_r, j_c = data_surrogate(actor, episode_length=T)(params, data)
    return meta_objective(j_r, j_c, cost_limit=COST_LIMIT, mu=MU) + lam


def _sequential(opt, actor, params, data, steps=2, first_order_last=False):
    lam, state = _initial(opt, params)
    estimates = data_surrogate(actor, episode_length=T)
    outs, score = [], 0.0
    for b in range(B):
        theta, la, s = params[b], lam[b], state[b]
        fn = lambda q, b=b: estimates(q, data[b])  # noqa: E731
        for k in range(steps):
            if first_order_last and k == steps - 1:  # inner gradients without create_graph
                (_, j_c), (g_r, g_c) = values_and_grads(fn, theta, create_graph=False)
                e = violation(j_c, COST_LIMIT, SCALE)
                theta, la, s = opt.step(theta, g_r, g_c, la, e, s)
            else:
                theta, la, s, _ = inner_step(
                    opt, fn, theta, la, s,
                    cost_limit=COST_LIMIT, violation_scale=SCALE, differentiable=True,
                )  # fmt: skip
        outs.append((theta, la, s))
        score = score + _score(actor, theta, la, data[b])
    stacked = [torch.stack([o[i] for o in outs]) for i in range(3)]
    return stacked, score


def _batched(opt, actor, params, data, steps=2):
    lam, state = _initial(opt, params)
    estimates = data_surrogate(actor, episode_length=T)
    theta, la, s = params, lam, state
    for _ in range(steps):
        out = batched_inner_step(
            opt, estimates, theta, la, s, data, cost_limit=COST_LIMIT, violation_scale=SCALE
        )
        theta, la, s = out.params, out.lagrange_multiplier, out.state
    score = torch.func.vmap(lambda p, lam, d: _score(actor, p, lam, d))(theta, la, data).sum()
    return [theta, la, s], score


def _assert_td_close(a, b):
    assert sorted(a.keys(True, True)) == sorted(b.keys(True, True))
    for key in a.keys(True, True):
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


def _meta_grads(opt, score):
    return torch.autograd.grad(score, list(opt.parameters()))


@pytest.mark.parametrize("make_opt", [_pid, _lstm], ids=["pid", "lstm"])
def test_batched_equals_sequential_values_and_meta_gradient(problem, make_opt):
    actor, params, data = problem
    opt = make_opt()
    (theta_s, lam_s, state_s), score_s = _sequential(opt, actor, params, data)
    (theta_b, lam_b, state_b), score_b = _batched(opt, actor, params, data)
    _assert_td_close(theta_b, theta_s)
    _assert_td_close(state_b, state_s)
    torch.testing.assert_close(lam_b, lam_s, rtol=1e-10, atol=1e-12)
    moved = max(float((theta_b - params)[k].detach().abs().max()) for k in params.keys(True, True))
    assert moved > 1e-3  # the policies did move
    assert lam_s.unique().numel() == B  # distinct tasks, distinct multipliers
    torch.testing.assert_close(score_b, score_s, rtol=1e-10, atol=1e-12)

    grads_s, grads_b = _meta_grads(opt, score_s), _meta_grads(opt, score_b)
    for g_s, g_b in zip(grads_s, grads_b):
        torch.testing.assert_close(g_b, g_s, rtol=1e-8, atol=1e-12)
    flat_b = torch.cat([g.reshape(-1) for g in grads_b])
    assert flat_b.abs().max() > 1e-4

    # the match includes second-order terms: dropping create_graph in the last update changes it
    _, score_fo = _sequential(opt, actor, params, data, first_order_last=True)
    flat_fo = torch.cat([g.reshape(-1) for g in _meta_grads(opt, score_fo)])
    assert (flat_fo - flat_b).abs().max() > 1e-4 * flat_b.abs().max()


def test_first_step_values_match_inner_step_records(problem):
    actor, params, data = problem
    opt = _pid()
    lam, state = _initial(opt, params)
    out = batched_inner_step(
        opt, data_surrogate(actor, episode_length=T), params, lam, state, data,
        cost_limit=COST_LIMIT, violation_scale=SCALE,
    )  # fmt: skip
    for b in range(B):
        *_, record = inner_step(
            opt, lambda q, b=b: data_surrogate(actor, episode_length=T)(q, data[b]), params[b],
            lam[b], state[b], cost_limit=COST_LIMIT, violation_scale=SCALE, differentiable=True,
        )  # fmt: skip
        assert out.return_estimate[b].item() == pytest.approx(record["return_estimate"], abs=1e-12)
        assert out.cost_estimate[b].item() == pytest.approx(record["cost_estimate"], abs=1e-12)
        assert out.violation[b].item() == pytest.approx(record["violation"], abs=1e-12)
    # at theta_0 (rho = 1) the estimates are the measured values: e = (J_C - d) / s by hand
    torch.testing.assert_close(out.return_estimate, data["episode_return"])
    expected = torch.tensor([0.8 - 1.0, 1.5 - 1.0, 3.0 - 1.0], dtype=torch.float64) / 2.0
    torch.testing.assert_close(out.violation, expected)


def test_not_differentiable_mode_matches_and_has_no_graph(problem):
    actor, params, data = problem
    opt = _lstm()
    lam, state = _initial(opt, params)
    kwargs = dict(cost_limit=COST_LIMIT, violation_scale=SCALE)
    estimates = data_surrogate(actor, episode_length=T)
    frozen = batched_inner_step(
        opt, estimates, params, lam, state, data, differentiable=False, **kwargs
    )
    live = batched_inner_step(opt, estimates, params, lam, state, data, **kwargs)
    assert not frozen.lagrange_multiplier.requires_grad
    assert not any(v.requires_grad for v in frozen.params.values(True, True))
    assert live.lagrange_multiplier.requires_grad
    _assert_td_close(frozen.params, live.params.detach())
    chunked = batched_inner_step(opt, estimates, params, lam, state, data, chunk_size=2, **kwargs)
    _assert_td_close(chunked.params.detach(), live.params.detach())


def test_bad_input_is_named(problem):
    actor, params, data = problem
    opt = _pid()
    lam, state = _initial(opt, params)
    estimates = data_surrogate(actor, episode_length=T)
    kwargs = dict(cost_limit=COST_LIMIT)
    with pytest.raises(ValueError, match="stacked over tasks"):
        batched_inner_step(opt, estimates, params[0], lam, state, data, **kwargs)
    with pytest.raises(ValueError, match="lagrange_multiplier must have a leading"):
        batched_inner_step(opt, estimates, params, lam[:2], state, data, **kwargs)
    with pytest.raises(ValueError, match="lagrange_multiplier must have a leading"):
        batched_inner_step(opt, estimates, params, lam[0], state, data, **kwargs)
    with pytest.raises(ValueError, match="data must have a leading"):
        batched_inner_step(opt, estimates, params, lam, state, data[:2], **kwargs)
    with pytest.raises(ValueError, match="violation scale"):
        batched_inner_step(opt, estimates, params, lam, state, data, violation_scale=0.0, **kwargs)
    with pytest.raises(ValueError, match="episode_cost"):
        batched_inner_step(
            opt, estimates, params, lam, state, data.exclude("episode_cost"), **kwargs
        )
    with pytest.raises(ValueError, match="episode_length"):
        data_surrogate(actor, episode_length=0)
