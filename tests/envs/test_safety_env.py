"""SafetyGymnasiumBatchEnv / make_safety_env: specs, cost signals, resets, seeding, GAE on cost."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector
from torchrl.envs.utils import check_env_specs
from torchrl.objectives.value import GAE

import cmo_rl  # noqa: F401  (import shim before safety_gymnasium)
from cmo_rl.envs import SafetyGymnasiumBatchEnv, make_safety_env

# isort: split
import safety_gymnasium


def _fixed_actions(env, steps: int, seed: int = 0) -> torch.Tensor:
    """``[steps, *action_shape]`` uniform actions inside the spec bounds, from a fixed generator."""
    generator = torch.Generator().manual_seed(seed)
    low, high = env.action_spec.space.low, env.action_spec.space.high
    return torch.rand((steps, *low.shape), generator=generator) * (high - low) + low


def _replay(actions: torch.Tensor):
    """A rollout policy writing ``actions[t]`` at step ``t``."""
    steps = iter(range(len(actions)))
    return lambda td: td.set("action", actions[next(steps)])


def _teleport_point_agent(raw, xy: np.ndarray) -> None:
    """Move a Point robot to world ``xy`` through its two slide joints (axes rotate with it)."""
    model, data = raw.task.model, raw.task.data
    joints = [model.joint("x"), model.joint("y")]
    axes = np.stack([data.xaxis[j.id][:2] for j in joints], axis=1)
    offsets = np.linalg.solve(axes, np.asarray(xy[:2]) - raw.task.agent.pos[:2])
    for joint, offset in zip(joints, offsets):
        data.qpos[joint.qposadr[0]] += offset
    data.qvel[:] = 0.0
    mujoco.mj_forward(model, data)


# ----------------------------------------------------------------------------------------------
# specs, keys, dtypes
# ----------------------------------------------------------------------------------------------

# one per robot (Point, Car, Racecar, Doggo, Ant, velocity robots) and per task type
SPEC_CASES = [
    ("SafetyPointGoal1-v0", 1),
    ("SafetyCarButton1-v0", 2),
    ("SafetyRacecarPush1-v0", 1),
    ("SafetyDoggoCircle1-v0", 1),
    ("SafetyAntGoal0-v0", 1),
    ("SafetyHalfCheetahVelocity-v1", 3),
    ("SafetyHopperVelocity-v1", 2),
]


@pytest.mark.parametrize(("env_id", "num_envs"), SPEC_CASES)
def test_check_env_specs_and_key_layout(env_id: str, num_envs: int) -> None:
    env = make_safety_env(env_id, num_envs, seed=0)
    check_env_specs(env)
    td = env.rollout(4, break_when_any_done=False)
    assert td.batch_size == (num_envs, 4)
    assert set(env.full_reward_spec.keys()) == {"reward", "cost"}
    for key in ("reward", "cost", "episode_reward", "episode_cost"):
        assert td["next", key].dtype == torch.float32
        assert td["next", key].shape == (num_envs, 4, 1)
    for key in ("done", "terminated", "truncated"):
        assert td["next", key].dtype == torch.bool and td["next", key].shape == (num_envs, 4, 1)
    obs = td["observation"]
    assert obs.dtype == torch.float32 and obs.ndim == 3 and obs.shape[:2] == (num_envs, 4)
    assert bool(torch.isfinite(obs).all())
    assert env.base_env.fast_reset == ("Velocity" not in env_id)
    assert len(env.base_env.raw_envs) == num_envs


def test_racecar_action_bounds_are_clipped_and_cast() -> None:
    env = SafetyGymnasiumBatchEnv("SafetyRacecarGoal1-v0", 1, seed=0)
    raw = env.raw_envs[0]
    np.testing.assert_allclose(env.action_spec.space.high[0].numpy(), [20.0, 0.785], rtol=1e-6)
    np.testing.assert_allclose(env.action_spec.space.low[0].numpy(), [-20.0, -0.785], rtol=1e-6)
    td = env.reset()
    td["action"] = torch.tensor([[100.0, -3.0]])
    env.step(td)
    # the raw env received the clipped action in its own float64 dtype
    np.testing.assert_allclose(raw.task.data.ctrl, [20.0, -0.785], rtol=1e-6)


def test_observation_normalisation_tracks_running_stats() -> None:
    plain = make_safety_env("SafetySwimmerVelocity-v1", 3, seed=4)
    normed = make_safety_env("SafetySwimmerVelocity-v1", 3, seed=4, normalize_observations=True)
    check_env_specs(make_safety_env("SafetyPointGoal1-v0", 2, seed=0, normalize_observations=True))
    actions = _fixed_actions(plain, 12)
    raw = plain.rollout(12, _replay(actions))
    out = normed.rollout(12, _replay(actions))
    torch.testing.assert_close(out["next", "reward"], raw["next", "reward"])  # same trajectory
    # statistics: every observation row seen (the reset rows and every step's next rows)
    seen = torch.cat([raw["observation"][:, 0], raw["next", "observation"].flatten(0, 1)])
    norm = normed.transform[-1]
    loc, scale = norm._get_loc_scale()
    torch.testing.assert_close(loc["observation"], seen.mean(0), rtol=1e-4, atol=1e-5)
    std = seen.var(0, unbiased=False).sqrt().clamp_min(1e-4)
    torch.testing.assert_close(scale["observation"], std, rtol=2e-3, atol=1e-4)
    last = (raw["next", "observation"][:, -1] - loc["observation"]) / scale["observation"]
    torch.testing.assert_close(out["next", "observation"][:, -1], last, rtol=1e-4, atol=1e-4)
    assert out["next", "observation"].abs().max() < raw["next", "observation"].abs().max() * 10


# ----------------------------------------------------------------------------------------------
# cost signals: made to happen, not assumed
# ----------------------------------------------------------------------------------------------


def test_hazard_cost_when_agent_is_teleported_onto_a_hazard() -> None:
    env = SafetyGymnasiumBatchEnv("SafetyPointGoal1-v0", 1, seed=3)
    td = env.reset()
    raw = env.raw_envs[0]
    td["action"] = torch.zeros(1, 2)
    td = env.step(td)
    assert td["next", "cost"].item() == 0.0  # the layout keeps the start out of hazards
    hazard = raw.task.hazards.pos[0]
    _teleport_point_agent(raw, hazard)
    assert raw.task.agent.dist_xy(hazard) < 1e-6
    td = env.step(td["next"].clone().set("action", torch.zeros(1, 2)))
    cost = td["next", "cost"]
    assert cost.dtype == torch.float32 and cost.shape == (1, 1)
    assert cost.item() == 1.0  # constrain_indicator: cost = 1 inside a hazard


def test_velocity_cost_when_the_root_velocity_exceeds_the_limit() -> None:
    env = SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", 2, seed=0)
    td = env.reset().set("action", torch.zeros(2, 6))
    td = env.step(td)
    assert torch.equal(td["next", "cost"], torch.zeros(2, 1))
    raw = env.raw_envs[1]
    qvel = raw.data.qvel.copy()
    qvel[0] = 10.0  # m/s forward, threshold 3.2096
    raw.set_state(raw.data.qpos.copy(), qvel)
    td = env.step(td["next"].clone().set("action", torch.zeros(2, 6)))
    assert td["next", "cost"].flatten().tolist() == [0.0, 1.0]
    assert td["next", "reward"][1].item() > 5.0  # the forward reward saw the same speed


# ----------------------------------------------------------------------------------------------
# episodes: sums, truncation, partial resets
# ----------------------------------------------------------------------------------------------


def _episode_sums(values: torch.Tensor, done: torch.Tensor) -> tuple[list, list]:
    """Hand-computed running sums per sub-env: (sums at each done, running sums every step)."""
    finished, running = [], torch.zeros_like(values)
    for i in range(values.shape[0]):
        total = 0.0
        for t in range(values.shape[1]):
            total += float(values[i, t, 0])
            running[i, t, 0] = total
            if done[i, t, 0]:
                finished.append((i, t, total))
                total = 0.0
    return finished, running


@pytest.mark.parametrize(
    "env_id",
    [
        "SafetyHopperVelocity-v1",  # terminations at different times: partial resets
        "SafetySwimmerVelocity-v1",  # no termination, but non-zero costs
    ],
)
def test_episode_sums_equal_summed_steps_at_episode_end(env_id: str) -> None:
    env = make_safety_env(env_id, 3, seed=0, max_episode_steps=20)
    td = env.rollout(60, break_when_any_done=False)
    done = td["next", "done"]
    for key, total_key in (("reward", "episode_reward"), ("cost", "episode_cost")):
        finished, running = _episode_sums(td["next", key], done)
        assert len(finished) >= 6
        for i, t, total in finished:
            assert td["next", total_key][i, t, 0].item() == pytest.approx(total, rel=1e-5, abs=1e-4)
        torch.testing.assert_close(td["next", total_key], running, rtol=1e-5, atol=1e-4)
    if env_id.startswith("SafetyHopper"):
        ends = done[..., 0].float().argmax(dim=1)  # first episode end per sub-env
        assert td["next", "terminated"].any() and len(set(ends.tolist())) > 1
    else:
        assert td["next", "cost"].sum() > 0
        # truncation at max_episode_steps for every sub-env, nothing else
        assert torch.equal(done[:, :, 0], (torch.arange(1, 61) % 20 == 0).expand(3, 60))


def test_collector_batches_carry_cost_and_episode_sums() -> None:
    env = make_safety_env("SafetySwimmerVelocity-v1", 2, seed=0, max_episode_steps=10)
    collector = Collector(env, policy=None, frames_per_batch=40, total_frames=80)
    try:
        batches = [batch.clone() for batch in collector]
    finally:
        collector.shutdown()
    assert len(batches) == 2
    for batch in batches:
        assert batch.batch_size == (2, 20)  # episodes of 10 align with the batches
        assert batch["next", "cost"].dtype == torch.float32
        finished, _ = _episode_sums(batch["next", "cost"], batch["next", "done"])
        assert len(finished) == 4
        for i, t, total in finished:
            assert batch["next", "episode_cost"][i, t, 0].item() == pytest.approx(total)


def test_auto_partial_reset_restarts_only_finished_sub_envs() -> None:
    env = make_safety_env("SafetyHopperVelocity-v1", 3, seed=1)
    td = env.rollout(80, break_when_any_done=False)
    init = env.base_env.raw_envs[0].init_qpos
    fresh = torch.as_tensor(np.concatenate([init[1:], np.zeros(6)]), dtype=torch.float32)
    done = td["next", "done"][..., 0]
    assert done.any() and not done.all(dim=0).any()  # some, never all at once
    for i in range(3):
        for t in range(79):
            now, nxt = td["observation"][i, t + 1], td["next", "observation"][i, t]
            if done[i, t]:
                torch.testing.assert_close(now, fresh, atol=1.1e-2, rtol=0)  # reset noise 5e-3
                assert td["episode_reward"][i, t + 1].item() == 0.0
            else:
                assert torch.equal(now, nxt)


def test_manual_partial_reset_and_per_sub_env_truncation() -> None:
    env = SafetyGymnasiumBatchEnv("SafetySwimmerVelocity-v1", 3, seed=0, max_episode_steps=5)
    td = env.reset()
    for _ in range(2):
        td = env.step(td.set("action", torch.zeros(3, 2)))["next"].clone()
    before = td["observation"].clone()
    td.set("_reset", torch.tensor([[False], [True], [False]]))
    td = env.reset(td)
    assert torch.equal(td["observation"][[0, 2]], before[[0, 2]])
    assert not torch.equal(td["observation"][1], before[1])
    truncations = []
    for _ in range(5):
        stepped, td = env.step_and_maybe_reset(td.set("action", torch.zeros(3, 2)))
        truncations.append(stepped["next", "truncated"][:, 0].tolist())
    # sub-envs 0 and 2 truncate after 5 steps in total, sub-env 1 five steps after its reset
    assert truncations == [
        [False, False, False],
        [False, False, False],
        [True, False, True],
        [False, False, False],
        [False, True, False],
    ]


def test_stepping_a_finished_sub_env_without_reset_raises() -> None:
    env = SafetyGymnasiumBatchEnv("SafetySwimmerVelocity-v1", 2, seed=0, max_episode_steps=1)
    td = env.reset().set("action", torch.zeros(2, 2))
    td = env.step(td)
    assert td["next", "truncated"].all()
    with pytest.raises(RuntimeError, match=r"sub-envs \[0, 1\].*reset them"):
        env.step(td["next"].clone().set("action", torch.zeros(2, 2)))


def test_truncation_horizon_defaults_and_override() -> None:
    assert SafetyGymnasiumBatchEnv("SafetyPointGoal1-v0").max_episode_steps == 1000
    assert SafetyGymnasiumBatchEnv("SafetyPointCircle0-v0").max_episode_steps == 500
    env = SafetyGymnasiumBatchEnv("SafetyPointGoal1-v0", max_episode_steps=1200)
    assert env.max_episode_steps == 1200
    assert env.raw_envs[0].task.num_steps == 1200  # the Builder must not cut at its 1000
    short = make_safety_env("SafetyCarGoal1-v0", 2, seed=0, max_episode_steps=3)
    td = short.rollout(7, break_when_any_done=False)
    assert td["next", "truncated"][0, :, 0].tolist() == [False, False, True] * 2 + [False]


# ----------------------------------------------------------------------------------------------
# seeding
# ----------------------------------------------------------------------------------------------


def test_same_seed_same_rollout_different_seed_differs() -> None:
    def run(seed: int) -> TensorDict:
        env = make_safety_env("SafetyPointGoal1-v0", 2, seed=seed)
        return env.rollout(15, _replay(_fixed_actions(env, 15)))

    a, b, c = run(7), run(7), run(8)
    for key in ("observation", ("next", "observation"), ("next", "reward"), ("next", "cost")):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["observation"][:, 0], c["observation"][:, 0])
    assert not torch.equal(a["observation"][0, 0], a["observation"][1, 0])  # seed + i
    # sub-env 1 of seed 7 and sub-env 0 of seed 8 both start from seed 8
    assert torch.equal(a["observation"][1, 0], c["observation"][0, 0])


def test_set_seed_applies_at_the_next_reset() -> None:
    env = SafetyGymnasiumBatchEnv("SafetyPointButton1-v0", 1)
    env.set_seed(11)
    first = env.reset()["observation"]
    other = env.reset()["observation"]  # unseeded reset: the RNG stream moves on
    env.set_seed(11)
    assert torch.equal(env.reset()["observation"], first)
    assert not torch.equal(first, other)


# ----------------------------------------------------------------------------------------------
# GAE on cost
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["SafetySwimmerVelocity-v1", "SafetyHopperVelocity-v1"])
def test_gae_on_cost_matches_hand_computation(env_id: str) -> None:
    env = make_safety_env(env_id, 3, seed=0, max_episode_steps=20)
    td = env.rollout(60, break_when_any_done=False)
    obs_dim = td["observation"].shape[-1]
    critic = TensorDictModule(
        torch.nn.Linear(obs_dim, 1), in_keys=["observation"], out_keys=["cost_value"]
    )
    gamma, lmbda = 0.9, 0.8
    gae = GAE(gamma=gamma, lmbda=lmbda, value_network=critic)
    gae.set_keys(
        reward="cost",
        value="cost_value",
        advantage="cost_advantage",
        value_target="cost_value_target",
    )
    with torch.no_grad():
        gae(td)
        value = critic.module(td["observation"])
        next_value = critic.module(td["next", "observation"])
    cost = td["next", "cost"]
    terminated = td["next", "terminated"].float()
    done = td["next", "done"].float()
    advantage = torch.zeros_like(cost)
    running = torch.zeros(3, 1)
    for t in reversed(range(60)):
        delta = cost[:, t] + gamma * (1 - terminated[:, t]) * next_value[:, t] - value[:, t]
        running = delta + gamma * lmbda * (1 - done[:, t]) * running
        advantage[:, t] = running
    torch.testing.assert_close(td["cost_advantage"], advantage, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(td["cost_value_target"], advantage + value, rtol=1e-4, atol=1e-5)
    assert "advantage" not in td.keys() and "value_target" not in td.keys()
    assert done.any()
    if env_id.startswith("SafetySwimmer"):
        assert cost.sum() > 0


# ----------------------------------------------------------------------------------------------
# bad input, before any env is built
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("SafetyPointGaol1-v0",), {}, "did you mean 'SafetyPointGoal1-v0'"),
        (("SafetyPointGoal1-v0", 0), {}, "num_envs must be a positive int, got 0"),
        (("SafetyPointGoal1-v0", -2), {}, "num_envs"),
        (("SafetyPointGoal1-v0", 2.0), {}, "num_envs"),
        (("SafetyPointGoal1-v0", True), {}, "num_envs"),
        (("SafetyPointGoal1-v0", 1, None, "tpu"), {}, "unsupported device 'tpu'"),
        (("SafetyPointGoal1-v0", 1, None, "gpu:0"), {}, "unsupported device"),
        (("SafetyPointGoal1-v0",), {"max_episode_steps": 0}, "max_episode_steps"),
        (("SafetyPointGoal1-v0", 1, "7"), {}, "seed must be an int"),
        (("SafetyHalfCheetahVelocity-v1",), {"fast_reset": True}, "not a MuJoCo-scene"),
        (("SafetyPointGoal1Vision-v0",), {"fast_reset": True}, "observes vision"),
        (
            ("SafetyPointGoal1-v0",),
            {"fast_reset": True, "render_mode": "rgb_array"},
            "render_mode='rgb_array'",
        ),
        (("SafetyPointGoal1-v0",), {"render_mode": "movie"}, "render_mode 'movie'"),
    ],
)
def test_bad_input_raises_value_error_before_building(
    args: tuple, kwargs: dict, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*_, **__):
        raise AssertionError("an env was built before the arguments were validated")

    monkeypatch.setattr(safety_gymnasium, "make", no_build)
    with pytest.raises(ValueError, match=match):
        make_safety_env(*args, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_without_cuda_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False"):
        make_safety_env("SafetyPointGoal1-v0", device="cuda")


def test_unknown_task_kwarg_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="rejected the keyword arguments.*hazard_count"):
        make_safety_env("SafetyPointGoal1-v0", hazard_count=3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_outputs() -> None:
    env = make_safety_env("SafetyPointGoal1-v0", 2, seed=0, device="cuda")
    check_env_specs(env)
    td = env.rollout(3)
    assert td.device.type == "cuda" and td["next", "cost"].device.type == "cuda"


# ----------------------------------------------------------------------------------------------
# vision / rendering (need an offscreen OpenGL context)
# ----------------------------------------------------------------------------------------------


def _skip_without_gl(error: Exception) -> None:
    text = f"{type(error).__name__}: {error}"
    if any(word in text for word in ("OpenGL", "EGL", "GLFW", "gl context", "mjr_makeContext")):
        pytest.skip(f"no offscreen OpenGL here: {text[:200]}")
    raise error


def test_vision_task_has_one_key_per_observation_entry() -> None:
    try:
        env = make_safety_env("SafetyPointGoal1Vision-v0", 1, seed=0)
        td = env.rollout(2)
    except Exception as error:  # noqa: BLE001
        _skip_without_gl(error)
    assert env.base_env.fast_reset is False
    assert td["vision"].dtype == torch.uint8 and td["vision"].shape == (1, 2, 256, 256, 3)
    assert td["vision"].float().std() > 0  # an actual image
    keys = set(env.base_env.observation_keys)
    assert {"vision", "accelerometer", "goal_lidar", "hazards_lidar"} <= keys
    assert "observation" not in keys
    for key in keys - {"vision"}:
        assert td[key].dtype == torch.float32
    check_env_specs(env)


def test_render_mode_rgb_array_renders_and_disables_fast_reset() -> None:
    env = make_safety_env(
        "SafetyPointGoal0-v0", 1, seed=0, render_mode="rgb_array", width=48, height=32
    )
    assert env.base_env.fast_reset is False
    try:
        env.reset()
        frame = env.base_env.render()
    except Exception as error:  # noqa: BLE001
        _skip_without_gl(error)
    assert frame.shape == (32, 48, 3) and frame.dtype == np.uint8
