"""MockCMDPEnv: reward/cost follow the docstring formula, episodes truncate at T, specs hold."""

from __future__ import annotations

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from cmo_rl.testing import MockCMDPEnv


def test_reward_and_cost_follow_the_formula(mock_cmdp: MockCMDPEnv) -> None:
    # r_t = a_t, c_t = max(0, a_t) (1 + s_t) / 2 with s_t = observation[..., 0] before the step
    actions = torch.linspace(-1.5, 1.5, 4 * 8).reshape(4, 8, 1)  # includes out-of-range values
    t = iter(range(8))

    def policy(td):
        return td.set("action", actions[:, next(t)])

    rollout = mock_cmdp.rollout(8, policy)
    a = actions.clamp(-1.0, 1.0)
    s = rollout["observation"][..., :1]
    torch.testing.assert_close(rollout["next", "reward"], a)
    torch.testing.assert_close(rollout["next", "cost"], a.clamp_min(0.0) * (1.0 + s) / 2.0)
    # a hand-checked entry: a = 1.5 -> clipped to 1, cost = (1 + s) / 2
    assert rollout["next", "cost"][3, 7, 0] == pytest.approx((1.0 + float(s[3, 7, 0])) / 2.0)
    # the state is drawn in [-1, 1) and the phase is t / T
    assert bool((s >= -1).all() and (s < 1).all())
    expected_phase = torch.arange(8, dtype=torch.float32).div(8).expand(4, 8)
    torch.testing.assert_close(rollout["observation"][..., 1], expected_phase)


def test_truncates_at_episode_length_and_resets() -> None:
    env = MockCMDPEnv(num_envs=2, episode_length=3, seed=1)
    rollout = env.rollout(7, break_when_any_done=False)
    truncated = rollout["next", "truncated"][..., 0]
    expected = torch.tensor([False, False, True, False, False, True, False]).expand(2, 7)
    assert torch.equal(truncated, expected)
    assert torch.equal(rollout["next", "done"][..., 0], expected)
    assert not rollout["next", "terminated"].any()
    # after each truncation the phase restarts at 0
    torch.testing.assert_close(
        rollout["observation"][0, :, 1], torch.tensor([0, 1, 2] * 2 + [0]) / 3
    )


def test_specs_dtypes_and_shapes(mock_cmdp: MockCMDPEnv) -> None:
    check_env_specs(mock_cmdp)
    td = mock_cmdp.rollout(5)
    for key in (("next", "reward"), ("next", "cost")):
        assert td[key].dtype == torch.float32 and td[key].shape == (4, 5, 1)
    for key in ("done", "terminated", "truncated"):
        assert td["next", key].dtype == torch.bool and td["next", key].shape == (4, 5, 1)
    assert set(mock_cmdp.full_reward_spec.keys()) == {"reward", "cost"}


def test_same_seed_same_states_different_seed_differs() -> None:
    def states(seed: int) -> torch.Tensor:
        env = MockCMDPEnv(num_envs=3, episode_length=10, seed=seed)
        return env.rollout(6)["observation"][..., 0]

    assert torch.equal(states(3), states(3))
    assert not torch.equal(states(3), states(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_envs": 0}, "num_envs"), ({"episode_length": 0}, "episode_length")],
)
def test_rejects_bad_sizes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MockCMDPEnv(**kwargs)
