"""make_env: one key layout (episode sums, step counter, optional norm) for mock and real tasks."""

from __future__ import annotations

import warnings

import pytest
import torch

from cmo_rl.envs.factory import make_env, max_episode_steps, observation_norm_of


def test_mock_env_keys_sums_and_counter():
    env = make_env("MockCMDP-v0", num_envs=3, seed=0, max_episode_steps=4)
    td = env.rollout(6, break_when_any_done=False)
    nxt = td["next"]
    assert set(env.full_reward_spec.keys()) == {"reward", "cost"}
    # episode sums at the first episode end equal the summed per-step signals
    assert torch.allclose(nxt["episode_reward"][:, 3], nxt["reward"][:, :4].sum(1))
    assert torch.allclose(nxt["episode_cost"][:, 3], nxt["cost"][:, :4].sum(1))
    # the counter restarts with the second episode
    assert nxt["step_count"][0, :, 0].tolist() == [1, 2, 3, 4, 1, 2]
    assert max_episode_steps(env) == 4
    assert observation_norm_of(env) is None


def test_mock_env_is_seeded():
    a = make_env("MockCMDP-v0", num_envs=2, seed=5).rollout(3)["observation"]
    b = make_env("MockCMDP-v0", num_envs=2, seed=5).rollout(3)["observation"]
    assert torch.equal(a, b)
    assert make_env("MockCMDP-v0").base_env.episode_length == 50


def test_normalised_env_warns_nothing_and_normalises():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = make_env("MockCMDP-v0", num_envs=8, seed=0, normalize_observations=True)
        td = env.rollout(50)
    norm = observation_norm_of(env)
    assert norm is not None and list(norm.in_keys) == ["observation"]
    state = td["observation"][..., 0].flatten()  # U(-1, 1) states, standardised
    assert abs(float(state.mean())) < 0.2 and abs(float(state.std()) - 1.0) < 0.2


def test_mock_env_rejects_unknown_keywords():
    with pytest.raises(ValueError, match="takes no extra keyword arguments"):
        make_env("MockCMDP-v0", fast_reset=True)


def test_safety_task_has_the_same_layout():
    env = make_env(
        "SafetyPointGoal1-v0", num_envs=2, seed=0, normalize_observations=True, max_episode_steps=3
    )
    td = env.rollout(3)
    assert td["next", "step_count"][:, -1].flatten().tolist() == [3, 3]
    assert bool(td["next", "truncated"][:, -1].all())
    assert torch.equal(td["next", "episode_cost"][:, -1], td["next", "cost"].sum(1))
    assert max_episode_steps(env) == 3
    assert observation_norm_of(env).in_keys == ["observation"]
    assert max_episode_steps(make_env("SafetyHalfCheetahVelocity-v1")) == 1000
