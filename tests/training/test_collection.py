"""Collector per epoch (shapes, per-epoch seeding) and finished-episode statistics."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.envs.factory import make_env
from cmo_rl.modules import make_actor
from cmo_rl.seeding import epoch_seed
from cmo_rl.training.collection import EpisodeStats, finished_episodes, make_collector


def _batch(done, reward, cost, steps=None) -> TensorDict:
    nxt = {
        "done": torch.tensor(done, dtype=torch.bool).unsqueeze(-1),
        "episode_reward": torch.tensor(reward).unsqueeze(-1),
        "episode_cost": torch.tensor(cost).unsqueeze(-1),
    }
    if steps is not None:
        nxt["step_count"] = torch.tensor(steps).unsqueeze(-1)
    return TensorDict({"next": nxt}, batch_size=nxt["done"].shape[:-1])


def test_finished_episodes_reads_sums_where_done_only():
    # 2 envs x 4 steps; env 0 finishes at t=1 and t=3, env 1 at t=2; running sums elsewhere
    batch = _batch(
        done=[[False, True, False, True], [False, False, True, False]],
        reward=[[1.0, 3.0, 0.5, 2.5], [-1.0, -2.0, -6.0, 9.0]],
        cost=[[0.0, 1.0, 4.0, 5.0], [1.0, 1.0, 2.0, 7.0]],
        steps=[[1, 2, 1, 2], [1, 2, 3, 1]],
    )
    stats = finished_episodes(batch)
    # boolean-mask order is row-major: (0,1), (0,3), (1,2)
    assert stats.returns.tolist() == [3.0, 2.5, -6.0]
    assert stats.costs.tolist() == [1.0, 5.0, 2.0]
    assert stats.lengths.tolist() == [2.0, 2.0, 3.0]
    assert stats.count == 3
    m = stats.metrics("train")
    assert m["train/num_episodes"] == 3
    assert m["train/episode_return"] == pytest.approx((3.0 + 2.5 - 6.0) / 3)
    assert m["train/episode_cost"] == pytest.approx(8.0 / 3)
    assert m["train/episode_length"] == pytest.approx(7.0 / 3)


def test_finished_episodes_without_episodes_or_counter():
    batch = _batch(done=[[False, False]], reward=[[1.0, 2.0]], cost=[[0.0, 1.0]])
    stats = finished_episodes(batch)
    assert stats.count == 0
    assert stats.metrics("train") == {"train/num_episodes": 0}
    one = finished_episodes(_batch(done=[[True]], reward=[[1.0]], cost=[[2.0]]))
    assert torch.isnan(one.lengths).all()  # no StepCounter: lengths unknown


def test_finished_episodes_missing_keys_are_named():
    td = TensorDict({"next": {"done": torch.ones(2, 1, dtype=torch.bool)}}, batch_size=[2])
    with pytest.raises(KeyError, match="episode_reward"):
        finished_episodes(td)
    with pytest.raises(KeyError, match="done"):
        finished_episodes(TensorDict({}, batch_size=[2]))


def test_epoch_seeds_never_collide_across_epochs():
    seeds = {epoch_seed(5, e) + i for e in range(50) for i in range(64)}
    assert len(seeds) == 50 * 64
    assert all(s > 5 + 64 for s in seeds)  # eval envs use seed + i (i < eval_episodes)


def _collect(first_epoch: int, num_epochs: int, seed: int = 0) -> list[TensorDict]:
    env = make_env("MockCMDP-v0", num_envs=2, seed=123, max_episode_steps=5)
    torch.manual_seed(0)
    actor = make_actor(env, hidden_layers=(4,))
    collector = make_collector(
        env, actor, steps_per_epoch=20, num_epochs=num_epochs, seed=seed, first_epoch=first_epoch
    )
    return [b for b in collector]


def test_make_collector_one_batch_per_epoch_and_reseeds_each_epoch():
    batches = _collect(first_epoch=0, num_epochs=3)
    assert [tuple(b.shape) for b in batches] == [(2, 10)] * 3
    for b in batches:  # every epoch starts from a reset: step counters start at 1
        assert b["next", "step_count"][:, 0].flatten().tolist() == [1, 1]
        assert b["next", "done"].sum() == 4  # 2 envs x 10 steps / 5-step episodes
    # the mock's state s (observation[..., 0]) of epoch 2 depends on the epoch only: a
    # collector starting at epoch 2 sees the same states, whatever happened before
    late = _collect(first_epoch=2, num_epochs=3)
    assert len(late) == 1
    assert torch.equal(late[0]["observation"][..., 0], batches[2]["observation"][..., 0])
    assert not torch.equal(batches[1]["observation"][..., 0], batches[2]["observation"][..., 0])


def test_make_collector_rejects_bad_budgets():
    env = make_env("MockCMDP-v0", num_envs=3, seed=0)
    actor = make_actor(env, hidden_layers=(4,))
    with pytest.raises(ValueError, match="multiple of num_envs"):
        make_collector(env, actor, steps_per_epoch=10, num_epochs=2, seed=0)
    with pytest.raises(ValueError, match="no epoch left"):
        make_collector(env, actor, steps_per_epoch=9, num_epochs=2, seed=0, first_epoch=2)


def test_episode_stats_metrics_prefix():
    stats = EpisodeStats(torch.tensor([4.0]), torch.tensor([1.0]), torch.tensor([10.0]))
    assert stats.metrics("eval") == {
        "eval/num_episodes": 1,
        "eval/episode_return": 4.0,
        "eval/episode_cost": 1.0,
        "eval/episode_length": 10.0,
    }
