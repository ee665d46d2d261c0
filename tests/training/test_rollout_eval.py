"""Deterministic evaluation episodes on the mock CMDP, and the eval env's observation norm."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from cmo_rl.envs.factory import make_env, observation_norm_of
from cmo_rl.modules import make_actor
from cmo_rl.training.collection import EpisodeStats
from cmo_rl.training.rollout_eval import eval_metrics, evaluate_policy, sync_observation_norm


class _Recorder(nn.Module):
    """Constant action ``a``; records the observed mock state ``s_t``, shape ``[B]`` per step."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a, self.states = a, []

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        self.states.append(obs[..., 0].clone())
        return torch.full((*obs.shape[:-1], 1), self.a)


def test_constant_policy_return_and_cost_by_hand():
    T, a = 6, 0.5
    env = make_env("MockCMDP-v0", num_envs=3, max_episode_steps=T)
    recorder = _Recorder(a)
    policy = TensorDictModule(recorder, in_keys=["observation"], out_keys=["action"])
    stats = evaluate_policy(env, policy, max_steps=T, seed=7)
    states = torch.stack(recorder.states[:T], dim=1)  # [B, T]
    # r_t = a, c_t = max(0, a) (1 + s_t) / 2
    assert torch.allclose(stats.returns, torch.full((3,), a * T))
    assert torch.allclose(stats.costs, (a * (1 + states) / 2).sum(1), atol=1e-6)
    assert stats.lengths.tolist() == [T] * 3
    again = evaluate_policy(env, policy, max_steps=T, seed=7)
    assert torch.equal(again.costs, stats.costs)  # seeded: same episodes
    other = evaluate_policy(env, policy, max_steps=T, seed=8)
    assert not torch.equal(other.costs, stats.costs)


def test_actor_is_evaluated_with_its_clipped_mean():
    T = 5
    env = make_env("MockCMDP-v0", num_envs=2, max_episode_steps=T)
    actor = make_actor(env, hidden_layers=(4,), init_log_std=1.0)
    last = actor.module[0].module[0][-1]  # the mean MLP's output layer
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(2.0)  # mean 2 -> deterministic action clip(2) = 1, every step
    stats = evaluate_policy(env, actor, max_steps=T, seed=0)
    assert stats.returns.tolist() == [float(T)] * 2  # r = a = 1; sampling would give less


def test_unfinished_episodes_are_an_error():
    env = make_env("MockCMDP-v0", num_envs=2, max_episode_steps=10)
    policy = TensorDictModule(_Recorder(0.0), in_keys=["observation"], out_keys=["action"])
    with pytest.raises(RuntimeError, match="2 of 2 evaluation episodes did not finish"):
        evaluate_policy(env, policy, max_steps=9)
    with pytest.raises(ValueError, match="max_steps"):
        evaluate_policy(env, policy, max_steps=0)


def test_eval_metrics_constraint_satisfaction():
    stats = EpisodeStats(
        torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 25.0, 25.5, 40.0]), torch.ones(4)
    )
    out = eval_metrics(stats, cost_limit=25.0)
    assert out["eval/constraint_satisfaction"] == 0.5  # 0 and 25 are <= 25
    assert out["eval/episode_cost"] == pytest.approx(22.625)
    assert out["eval/num_episodes"] == 4


def test_sync_observation_norm_copies_freezes_and_never_shares():
    train = make_env("MockCMDP-v0", num_envs=4, seed=0, normalize_observations=True)
    evaluation = make_env("MockCMDP-v0", num_envs=2, seed=1, normalize_observations=True)
    train.rollout(10)
    sync_observation_norm(train, evaluation)
    src, dst = observation_norm_of(train), observation_norm_of(evaluation)
    loc, scale = dst.loc["observation"].clone(), dst.scale["observation"].clone()
    assert torch.equal(loc, src.loc["observation"]) and torch.equal(scale, src.scale["observation"])
    assert dst.frozen and not src.frozen
    evaluation.rollout(10)  # frozen: evaluation does not move the statistics
    train.rollout(10)  # training goes on: the eval copy does not follow until the next sync
    assert torch.equal(dst.loc["observation"], loc)
    assert not torch.equal(src.loc["observation"], loc)


def test_sync_observation_norm_needs_both_or_neither():
    plain = make_env("MockCMDP-v0", num_envs=2)
    normed = make_env("MockCMDP-v0", num_envs=2, normalize_observations=True)
    sync_observation_norm(plain, make_env("MockCMDP-v0", num_envs=2))  # no-op
    with pytest.raises(ValueError, match="both envs must normalise observations"):
        sync_observation_norm(normed, plain)
