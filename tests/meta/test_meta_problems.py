"""RolloutCMDP: its critics are fitted by CriticLoss (the same numbers as the loss it replaced),
and it reads and writes the keys of its ``tensor_keys``, renamed with ``set_keys`` like a loss."""

from __future__ import annotations

import copy

import pytest
import torch

from cmo_rl.meta.functional import values_and_grads
from cmo_rl.meta.problems import RolloutCMDP
from cmo_rl.modules import actor_critic_from_env
from cmo_rl.objectives import CriticLoss, LagrangianPPOLoss
from cmo_rl.testing import MockCMDPEnv


def _task(critic_steps: int = 3) -> RolloutCMDP:
    torch.manual_seed(0)
    env = MockCMDPEnv(num_envs=3, episode_length=4, seed=0)
    actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
    return RolloutCMDP(env, actor, critic, cost_critic, episode_length=4, critic_steps=critic_steps)


def _round(task: RolloutCMDP):
    """One round at theta_0 from a fixed RNG state: metrics, (J_R, J_C), gradients."""
    theta = task.init_params()
    torch.manual_seed(1)
    rnd = task.sample_round(theta)
    (j_r, j_c), (g_r, g_c) = values_and_grads(rnd.estimates, theta)
    metrics = {k: v for k, v in rnd.metrics.items() if not k.startswith("time/")}
    return metrics, torch.stack([j_r, j_c]).detach(), g_r, g_c


def _critic_params(task: RolloutCMDP) -> list[torch.Tensor]:
    return [p.detach().clone() for m in (task.critic, task.cost_critic) for p in m.parameters()]


def test_fit_critics_is_critic_loss_with_the_numbers_of_the_former_inline_loss():
    task = _task(critic_steps=4)
    assert isinstance(task.critic_loss, CriticLoss)
    with torch.no_grad():
        batch = task.collect(task.init_params())
    gen = torch.Generator().manual_seed(0)
    batch["value_target"] = torch.randn(*batch.shape, 1, generator=gen)
    batch["cost_value_target"] = torch.randn(*batch.shape, 1, generator=gen)
    # the former RolloutCMDP._fit_critics, on copies of the critics and of their Adam
    critic, cost_critic = copy.deepcopy(task.critic), copy.deepcopy(task.cost_critic)
    optim = torch.optim.Adam([*critic.parameters(), *cost_critic.parameters()], lr=1e-3)
    obs = batch.select(*critic.in_keys)
    targets = (batch["value_target"], batch["cost_value_target"])
    for _ in range(4):
        value = critic(obs.copy())["state_value"]
        cost_value = cost_critic(obs.copy())["cost_value"]
        loss = (value - targets[0]).pow(2).mean() + (cost_value - targets[1]).pow(2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    task._fit_critics(batch)
    expected = [p.detach() for m in (critic, cost_critic) for p in m.parameters()]
    for got, want in zip(_critic_params(task), expected, strict=True):
        assert torch.equal(got, want)  # bit for bit
    assert set(batch.keys()) >= {"value_target", "cost_value_target"}


def test_default_keys_are_the_losses_keys():
    task = _task()
    keys = task.tensor_keys
    ppo = LagrangianPPOLoss.default_keys()
    for name in (
        "value",
        "cost_value",
        "advantage",
        "cost_advantage",
        "value_target",
        "cost_value_target",
        "sample_log_prob",
    ):
        assert getattr(keys, name) == getattr(ppo, name), name
    assert (keys.reward, keys.cost) == ("reward", "cost")
    assert task.cost_gae.tensor_keys.reward == "cost"
    assert task.cost_gae.tensor_keys.value == "cost_value"
    assert task.reward_gae.tensor_keys.advantage == "advantage"
    assert task.critic_loss.tensor_keys.cost_value_target == "cost_value_target"


def test_renamed_keys_give_the_same_round():
    reference = _round(_task())
    task = _task()
    renamed = {
        "cost": "penalty",
        "reward": ("task", "reward"),
        "advantage": "adv",
        "cost_advantage": ("costs", "adv"),
        "value_target": "returns",
        "cost_value_target": ("costs", "target"),
        "sample_log_prob": "old_log_prob",
    }
    task.set_keys(**renamed)
    assert task.cost_gae.tensor_keys.reward == "penalty"
    assert task.cost_gae.tensor_keys.advantage == ("costs", "adv")
    assert task.reward_gae.tensor_keys.value_target == "returns"
    assert task.critic_loss.in_keys == ["observation", "returns", ("costs", "target")]
    collect = task.collect
    seen = []

    def collect_renamed(params, **kwargs):  # an env that writes the renamed reward and cost
        batch = collect(params, **kwargs)
        batch.rename_key_(("next", "cost"), ("next", "penalty"))
        batch.rename_key_(("next", "reward"), ("next", "task", "reward"))
        seen.append(batch)
        return batch

    task.collect = collect_renamed
    metrics, estimates, g_r, g_c = _round(task)
    assert metrics == reference[0]
    assert torch.equal(estimates, reference[1])
    assert (g_r == reference[2]).all() and (g_c == reference[3]).all()
    (batch,) = seen
    for key in ("adv", ("costs", "adv"), "returns", ("costs", "target"), "old_log_prob"):
        assert key in batch.keys(include_nested=True), key
    # the actor still writes its own action_log_prob; the recomputed one went to old_log_prob
    for key in ("advantage", "cost_advantage", "value_target", ("next", "cost")):
        assert key not in batch.keys(include_nested=True), key
    evaluation = task.evaluate(task.init_params(), episodes=3)
    assert set(evaluation) == {"eval/episode_return", "eval/episode_cost"}


def test_set_keys_validates_and_restores_defaults():
    task = _task()
    with pytest.raises(ValueError, match="not an accepted key.*cost_value"):
        task.set_keys(costs="penalty")
    task.set_keys(cost="penalty")
    task.set_keys(cost=None)
    assert task.tensor_keys.cost == "cost" and task.cost_gae.tensor_keys.reward == "cost"
