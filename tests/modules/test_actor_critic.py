"""Actor and critics built from specs: keys, shapes, distributions, init, functional use."""

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cmo_rl.modules import (
    ClippedModeNormal,
    actor_critic_from_env,
    make_actor,
    make_cost_critic,
    make_value_critic,
)
from cmo_rl.testing import MockCMDPEnv


@pytest.fixture
def env():
    return MockCMDPEnv(num_envs=3, episode_length=5, seed=0)


def _linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_actor_writes_keys_with_design_shapes(env):
    actor = make_actor(env, hidden_layers=(8, 8))
    td = actor(env.reset())
    assert td["loc"].shape == td["scale"].shape == td["action"].shape == (3, 1)
    assert td["action_log_prob"].shape == (3,)
    # scale is exp(init_log_std) everywhere, independent of the state
    torch.testing.assert_close(td["scale"], torch.full((3, 1), math.exp(-0.5)))


def test_actor_samples_by_default_also_in_rollouts(env):
    torch.manual_seed(0)
    actor = make_actor(env, hidden_layers=(8,), init_log_std=0.0)
    with torch.no_grad():
        rollout = env.rollout(5, actor)
    noise = rollout["action"] - rollout["loc"]
    assert noise.std().item() == pytest.approx(1.0, abs=0.5)  # scale exp(0) = 1
    assert bool((noise != 0).all())


def test_actor_log_prob_is_the_gaussian_density(env):
    torch.manual_seed(0)
    actor = make_actor(env, hidden_layers=(8,), init_log_std=0.3)
    td = actor(env.reset())
    a, mu, sigma = td["action"], td["loc"], math.exp(0.3)
    expected = (-0.5 * ((a - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(
        -1
    )
    torch.testing.assert_close(td["action_log_prob"], expected)


def test_deterministic_action_is_mean_clipped_to_bounds(env):
    actor = make_actor(env, hidden_layers=(8,))
    last = _linears(actor)[-1]
    with torch.no_grad():
        last.bias.fill_(3.0)  # mean ~ 3, outside [-1, 1]
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = actor(env.reset())
    assert bool((td["loc"] > 2.5).all())
    torch.testing.assert_close(td["action"], torch.ones(3, 1))
    with torch.no_grad():
        last.bias.fill_(0.0)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = actor(env.reset())
    torch.testing.assert_close(td["action"], td["loc"])
    # stochastic samples are not clipped (the env clips), so log-probs stay exact
    with torch.no_grad():
        last.bias.fill_(3.0)
    with set_exploration_type(ExplorationType.RANDOM):
        td = actor(env.reset())
    assert bool((td["action"] > 1.0).any())


def test_clipped_mode_normal_per_dim_bounds():
    d = ClippedModeNormal(
        torch.tensor([[5.0, -5.0, 0.2]]),
        torch.ones(1, 3),
        low=torch.tensor([-1.0, -2.0, -1.0]),
        high=torch.tensor([1.0, 2.0, 0.1]),
    )
    torch.testing.assert_close(d.deterministic_sample, torch.tensor([[1.0, -2.0, 0.1]]))


def test_tanh_normal_actor_stays_in_bounds():
    obs = Unbounded(shape=(2,))
    act = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), shape=(2,))
    actor = make_actor((obs, act), hidden_layers=(8,), distribution="tanh_normal", init_log_std=1.0)
    td = TensorDict(observation=torch.randn(500, 2), batch_size=[500])
    with torch.no_grad():
        out = actor(td)
    a = out["action"]
    assert bool((a[:, 0] >= -2).all() and (a[:, 0] <= 2).all())
    assert bool((a[:, 1] >= 0).all() and (a[:, 1] <= 1).all())
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        det = actor(td.clone())["action"]
    # deterministic = the mean squashed into the bounds: low + (high - low) * (1 + tanh(mu)) / 2
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    expected = low + (high - low) * (1 + out["loc"].tanh()) / 2
    torch.testing.assert_close(det, expected, atol=1e-5, rtol=1e-5)


def test_orthogonal_init_gains(env):
    actor = make_actor(env, hidden_layers=(16, 16))
    critic = make_value_critic(env, hidden_layers=(16, 16))
    first, *_, last = _linears(actor)
    # first layer [16, 2]: orthonormal columns scaled by sqrt(2)
    torch.testing.assert_close(first.weight.T @ first.weight, 2.0 * torch.eye(2), atol=1e-5, rtol=0)
    # actor head [1, 16]: a row of norm 0.01; critic head of norm 1
    assert last.weight.norm().item() == pytest.approx(0.01, rel=1e-4)
    assert _linears(critic)[-1].weight.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for layer in _linears(actor))


def test_critics_keys_and_shapes(env):
    td = env.reset()
    critic = make_value_critic(env, hidden_layers=(8,))
    cost_critic = make_cost_critic(env, hidden_layers=(8,))
    assert critic(td)["state_value"].shape == (3, 1)
    assert cost_critic(td)["cost_value"].shape == (3, 1)
    assert critic.out_keys == ["state_value"] and cost_critic.out_keys == ["cost_value"]


def test_build_from_spec_pair_and_rollout(env):
    actor, critic, cost_critic = actor_critic_from_env(
        (env.observation_spec, env.action_spec), hidden_layers=(8,), critic_hidden_layers=(4, 4)
    )
    assert len(_linears(critic)) == 3 and len(_linears(actor)) == 2
    with torch.no_grad():
        rollout = env.rollout(5, actor)
    assert rollout["action_log_prob"].shape == (3, 5)
    assert cost_critic(rollout)["cost_value"].shape == (3, 5, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"distribution": "beta"}, "unknown distribution"),
        ({"activation": "sigmoidish"}, "unknown activation"),
        ({"hidden_layers": (8, 0)}, "positive ints"),
    ],
)
def test_bad_arguments_raise_value_error(env, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_actor(env, **kwargs)


def test_bad_specs_raise_value_error():
    obs = Composite(observation=Unbounded(shape=(2,)))
    with pytest.raises(ValueError, match="continuous"):
        make_actor((obs, Categorical(3, shape=())))
    with pytest.raises(ValueError, match="needs a Bounded"):
        make_actor((obs, Unbounded(shape=(1,))), distribution="tanh_normal")
    with pytest.raises(ValueError, match="'observation' entry"):
        make_value_critic((Composite(pixels=Unbounded(shape=(2,))), None))
    with pytest.raises(ValueError, match="did you mean 'hidden_layers'"):
        actor_critic_from_env((obs, Bounded(-1.0, 1.0, shape=(1,))), hiddenLayers=(4,))


def test_unbounded_action_spec_normal_actor_is_unclipped():
    obs, act = Unbounded(shape=(2,)), Unbounded(shape=(1,))
    actor = make_actor((obs, act), hidden_layers=(4,))
    with torch.no_grad():
        _linears(actor)[-1].bias.fill_(5.0)
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        td = actor(TensorDict(observation=torch.zeros(2, 2), batch_size=[2]))
    torch.testing.assert_close(td["action"], td["loc"])
    assert bool((td["action"] > 4).all())


def test_functional_swap_and_functional_call(env):
    actor = make_actor(env, hidden_layers=(8,))
    td = env.reset()
    params = TensorDict.from_module(actor)
    zeros = params.apply(torch.zeros_like)
    with zeros.to_module(actor, preserve_module_state=False):
        out = actor(td.clone())
    torch.testing.assert_close(out["loc"], torch.zeros(3, 1))
    torch.testing.assert_close(out["scale"], torch.ones(3, 1))  # exp(0)
    # the module's own parameters are back afterwards
    torch.testing.assert_close(actor(td.clone())["scale"], torch.full((3, 1), math.exp(-0.5)))

    # gradients reach swapped-in parameters through torch.func.functional_call
    leaves = params.detach().clone().requires_grad_()
    flat = dict(leaves.flatten_keys(".").items())
    out = torch.func.functional_call(actor, flat, (td.clone(),))
    (out["loc"].sum() + out["scale"].sum()).backward()
    assert all(v.grad is not None and bool(v.grad.abs().sum() > 0) for v in flat.values())
    assert all(p.grad is None for p in actor.parameters())


def test_critic_functional_call_gradient(env):
    critic = make_value_critic(env, hidden_layers=(8,))
    td = env.reset()
    params = TensorDict.from_module(critic).detach().clone().requires_grad_()
    with params.to_module(critic, preserve_module_state=False):
        value = critic(td.clone())["state_value"]
    value.sum().backward()
    grads = params.apply(lambda p: p.grad, filter_empty=True)
    assert all(bool(g.abs().sum() > 0) for g in grads.values(True, True))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_actor_on_cuda(env):
    actor = make_actor(env, hidden_layers=(8,), device="cuda")
    td = env.reset().to("cuda")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = actor(td)
    assert out["action"].device.type == "cuda"
    actor_cpu = make_actor(env, hidden_layers=(8,)).to("cuda")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert actor_cpu(env.reset().to("cuda"))["action"].device.type == "cuda"
