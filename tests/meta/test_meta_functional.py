"""Functional parameter handling: flatten/unflatten, gradients, the importance-weighted surrogate."""

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torch.func import functional_call

import cmo_rl  # noqa: F401
from cmo_rl.meta.functional import (
    detach_params,
    flatten_params,
    global_rms,
    grad_of,
    log_prob_of,
    num_coordinates,
    params_of,
    require_grad,
    surrogate_estimates,
    unflatten_params,
    values_and_grads,
)
from cmo_rl.modules import make_actor
from cmo_rl.testing import MockCMDPEnv


def test_params_of_is_a_detached_copy():
    lin = nn.Linear(3, 2)
    params = params_of(lin)
    params["weight"] = params["weight"] + 1.0
    assert not torch.equal(params["weight"], lin.weight)
    assert not params["bias"].requires_grad
    assert num_coordinates(params) == 8


def test_flatten_unflatten_roundtrip_nested():
    params = params_of(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    vec = flatten_params(params)
    assert vec.shape == (3 * 4 + 4 + 4 * 2 + 2,)
    back = unflatten_params(vec, params)
    for key in params.keys(True, True):
        assert torch.equal(back[key], params[key])
    with pytest.raises(ValueError, match="shape"):
        unflatten_params(vec[:-1], params)


def test_global_rms_hand_value():
    td = TensorDict(a=torch.tensor([1.0, -2.0]), b={"c": torch.tensor([[2.0]])})
    assert global_rms(td).item() == pytest.approx(((1 + 4 + 4) / 3) ** 0.5)


def test_grad_of_and_second_order():
    # f(w) = sum w^3 -> g = 3 w^2; d/da of sum g(a w) at a=1 = sum 6 w^2
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(grad_of(lambda q: (q["w"] ** 3).sum(), TensorDict(w=w))["w"], 3 * w**2)
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    g = grad_of(lambda q: (q["w"] ** 3).sum(), TensorDict(w=a * w), create_graph=True)
    (d,) = torch.autograd.grad(g["w"].sum(), a)
    assert d.item() == pytest.approx(6 * (w**2).sum().item())


def test_values_and_grads_unused_leaf_and_no_grad_caller():
    params = TensorDict(w=torch.tensor([1.0, 2.0]), unused=torch.ones(3))
    with torch.no_grad():  # gradients still computed
        (f,), (g,) = values_and_grads(lambda q: ((q["w"] ** 2).sum(),), params)
    assert f.item() == 5.0
    assert torch.equal(g["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(g["unused"], torch.zeros(3))
    with pytest.raises(ValueError, match="scalars"):
        values_and_grads(lambda q: (q["w"],), params)


def test_require_grad_keeps_graph_leaves():
    a = torch.tensor(2.0, requires_grad=True)
    params = require_grad(TensorDict(x=a * torch.ones(2), y=torch.ones(2)))
    assert params["x"].grad_fn is not None  # kept as is (still connected to a)
    assert params["y"].is_leaf and params["y"].requires_grad
    assert not detach_params(params)["x"].requires_grad


def _batch(seed: int = 0):
    torch.manual_seed(seed)
    env = MockCMDPEnv(num_envs=3, episode_length=5, seed=seed)
    actor = make_actor(env, hidden_layers=(8,))
    params = params_of(actor)
    with torch.no_grad(), params.to_module(actor, preserve_module_state=False):
        batch = env.rollout(5, actor, break_when_any_done=False)
    batch["advantage"] = torch.randn(3, 5, 1)
    batch["cost_advantage"] = torch.randn(3, 5, 1)
    return actor, params, batch


def _hand_log_prob(actor, params, batch):
    """log N(a; mu(o), sigma) summed over action dims, from the raw MLP and log_std."""
    net = actor.module[0].module  # TensorDictModule(Sequential(mlp, StateIndependentScale))
    flat = {k: v for k, v in params.flatten_keys(".").items()}
    prefix = "module.0.module."
    sub = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    assert len(sub) == len(flat) > 0
    loc, scale = functional_call(net, sub, (batch["observation"],))
    return torch.distributions.Normal(loc, scale).log_prob(batch["action"]).sum(-1)


def test_log_prob_of_matches_hand_gaussian():
    actor, params, batch = _batch()
    expected = _hand_log_prob(actor, params, batch)
    assert torch.allclose(log_prob_of(actor, params, batch), expected, atol=1e-5)
    assert torch.allclose(batch["action_log_prob"], expected, atol=1e-5)


def test_surrogate_value_and_policy_gradient():
    actor, params, batch = _batch()
    episode_length = 5
    j_r, j_c = surrogate_estimates(
        actor,
        require_grad(params),
        batch,
        episode_return=7.0,
        episode_cost=3.0,
        episode_length=episode_length,
    )
    # value at the sampling parameters: the measured return / cost
    assert j_r.item() == pytest.approx(7.0, abs=1e-5)
    assert j_c.item() == pytest.approx(3.0, abs=1e-5)
    # gradient: T * mean(grad log pi * A), with the log-prob written by hand
    g_r = grad_of(
        lambda q: surrogate_estimates(
            actor, q, batch, episode_return=7.0, episode_cost=3.0, episode_length=episode_length
        )[0],
        params,
    )
    g_hand = grad_of(
        lambda q: (
            episode_length
            * (_hand_log_prob(actor, q, batch) * batch["advantage"].squeeze(-1)).mean()
        ),
        params,
    )
    for key in params.keys(True, True):
        assert torch.allclose(g_r[key], g_hand[key], atol=1e-5), key
    assert flatten_params(g_r).abs().sum() > 0


def test_surrogate_away_from_sampling_point():
    actor, params, batch = _batch(1)
    moved = params.apply(lambda p: p + 0.05)
    j_r, _ = surrogate_estimates(
        actor, moved, batch, episode_return=1.0, episode_cost=0.0, episode_length=5
    )
    ratio = (_hand_log_prob(actor, moved, batch) - batch["action_log_prob"]).exp()
    expected = 1.0 + 5 * ((ratio - 1) * batch["advantage"].squeeze(-1)).mean()
    assert j_r.item() == pytest.approx(expected.item(), abs=1e-5)


def test_surrogate_rejects_missing_keys():
    actor, params, batch = _batch()
    del batch["cost_advantage"]
    with pytest.raises(ValueError, match="cost_advantage"):
        surrogate_estimates(
            actor, params, batch, episode_return=0.0, episode_cost=0.0, episode_length=5
        )
