"""Fast steps must be invisible to the agent: bit-identical to stock Safety-Gymnasium steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmo_rl  # noqa: F401  (import shim: must come before safety_gymnasium)
from cmo_rl.envs import make_safety_env
from cmo_rl.envs.fast_reset import enable_fast_reset
from cmo_rl.envs.fast_step import fast_step_refusal, kernels, make_stepper, supports_fast_step

# isort: split
import safety_gymnasium

ROBOTS = ("Point", "Car", "Racecar", "Doggo", "Ant")
FAMILIES = ("Goal", "Button", "Push", "Circle")
ALL_IDS = [f"Safety{r}{f}{lv}-v0" for f in FAMILIES for lv in range(3) for r in ROBOTS]
STATE = ("qpos", "qvel", "qacc", "qacc_warmstart", "act", "sensordata", "mocap_pos", "time")


def _force_goal(builder) -> None:
    """Put the goal (button / under the box) where it is met next step; same edit on both sides."""
    task = builder.task
    model, data = task.model, task.data
    family = type(task).__name__
    if family.startswith("Goal"):
        model.body("goal").pos[:2] = data.body("agent").xpos[:2]
    elif family.startswith("Button"):
        model.body(f"button{task.buttons.goal_button}").pos[:2] = data.body("agent").xpos[:2]
    elif family.startswith("Push"):
        model.body("goal").pos[:2] = data.body("push_box").xpos[:2]


def _force_cost(builder) -> None:
    """Move hazard 0 under the agent (Circle: the agent 1.5 m along x, past the walls)."""
    task = builder.task
    if "hazards" in task._geoms:
        task.model.body("hazard0").pos[:2] = task.data.body("agent").xpos[:2]
    elif "sigwalls" in task._geoms:
        task.data.qpos[0] += 1.5  # Point: slide joint x; Car/Racecar/Doggo/Ant: free joint x


def _configure(builder, horizon: int, config) -> None:
    builder.task.num_steps = horizon
    if config is not None:
        config(builder.task)


def compare_with_stock(
    env_id: str,
    *,
    num_envs: int = 3,
    steps: int = 120,
    horizon: int = 40,
    seed: int = 0,
    config=None,
) -> dict[str, int]:
    """Step ``num_envs`` stock envs one by one and the same envs through the stepper.

    Random actions (20% beyond the bounds, so clipping is exercised), a goal forced every 11
    steps and a cost provoked (:func:`_force_cost`) every 13 steps on a rotating sub-env, episodes ending at ``horizon + 3 i`` (sub-env ``i``) then reset
    with a fresh seed. Asserts bit-equality of everything ``step`` returns and of the MuJoCo
    state after every step; returns event counts (so tests can check what was exercised).
    """
    make = lambda: enable_fast_reset(safety_gymnasium.make(env_id).unwrapped)  # noqa: E731
    stock = [make() for _ in range(num_envs)]
    fast = [make() for _ in range(num_envs)]
    for envs in (stock, fast):
        for i, env in enumerate(envs):
            _configure(env, horizon + 3 * i, config)
            env.reset(seed=seed + i)
    stepper = make_stepper(fast)
    rng = np.random.default_rng(seed)
    low, high = stock[0].action_space.low, stock[0].action_space.high
    counts = {"goals": 0, "costs": 0, "terminations": 0, "truncations": 0}
    for t in range(steps):
        if t % 11 == 4:
            for envs in (stock, fast):
                _force_goal(envs[t % num_envs])
        if t % 13 == 6:
            for envs in (stock, fast):
                _force_cost(envs[t % num_envs])
        actions = rng.uniform(low * 1.2, high * 1.2, size=(num_envs, len(low)))
        expected = [env.step(actions[i]) for i, env in enumerate(stock)]
        obs, reward, cost, terminated, truncated = stepper.step(actions)
        for i, (e_obs, e_reward, e_cost, e_term, e_trunc, info) in enumerate(expected):
            where = f"{env_id} step {t} sub-env {i}"
            assert obs.dtype == np.float64 and np.array_equal(obs[i], e_obs), where
            assert np.float64(e_reward).tobytes() == reward[i].tobytes(), where
            assert np.float64(e_cost).tobytes() == cost[i].tobytes(), where
            assert (terminated[i], truncated[i]) == (e_term, e_trunc), where
            s_data, f_data = stock[i].task.data, fast[i].task.data
            for name in STATE:
                assert np.array_equal(getattr(s_data, name), getattr(f_data, name)), (where, name)
            assert stock[i].steps == fast[i].steps, where
            counts["goals"] += bool(info.get("goal_met"))
            counts["costs"] += bool(e_cost > 0)
            counts["terminations"] += bool(e_term)
            counts["truncations"] += bool(e_trunc)
            if e_term or e_trunc:
                stock[i].reset(seed=1000 + t)
                fast[i].reset(seed=1000 + t)
    return counts


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_every_navigation_task_bit_identical(env_id: str) -> None:
    counts = compare_with_stock(env_id, steps=60, horizon=25)
    assert counts["truncations"] + counts["terminations"] >= 3
    if "Circle" not in env_id:
        assert counts["goals"] >= 3


@pytest.mark.parametrize(
    "env_id",
    [
        "SafetyPointGoal1-v0",
        "SafetyCarButton1-v0",
        "SafetyPointPush1-v0",
        "SafetyDoggoGoal1-v0",
        "SafetyRacecarGoal2-v0",
        "SafetyAntGoal2-v0",
        "SafetyPointCircle2-v0",
    ],
)
def test_long_runs_bit_identical(env_id: str) -> None:
    counts = compare_with_stock(env_id, num_envs=4, steps=300, horizon=90)
    assert counts["truncations"] + counts["terminations"] >= 8


def test_costs_are_exercised() -> None:
    """Hazards, gremlins and wrong buttons, and the Circle walls produce costs (bit-identical)."""
    assert compare_with_stock("SafetyPointGoal1-v0", steps=40)["costs"] >= 3
    assert compare_with_stock("SafetyCarButton2-v0", steps=80, horizon=80)["costs"] >= 10
    assert compare_with_stock("SafetyPointCircle1-v0", steps=40)["costs"] >= 3
    assert compare_with_stock("SafetyCarCircle2-v0", steps=40)["costs"] >= 3


def _natural_lidar(task) -> None:
    task.lidar_conf.type = "natural"


def _exponential_lidar_no_alias(task) -> None:
    task.lidar_conf.max_dist = None
    task.lidar_conf.exp_gain = 0.7
    task.lidar_conf.alias = False


def _compass_raw_costs(task) -> None:
    task.goal.is_comp_observed = True
    task.compass_conf.shape = 3
    task.cost_conf.constrain_indicator = False
    task.build_observation_space()


def _no_continue_goal(task) -> None:
    task.mechanism_conf.continue_goal = False


@pytest.mark.parametrize(
    ("env_id", "config"),
    [
        ("SafetyCarGoal1-v0", _natural_lidar),
        ("SafetyPointButton1-v0", _exponential_lidar_no_alias),
        ("SafetyAntGoal2-v0", _compass_raw_costs),
        ("SafetyPointPush2-v0", _compass_raw_costs),
        ("SafetyPointGoal1-v0", _no_continue_goal),
    ],
)
def test_task_configurations_bit_identical(env_id: str, config) -> None:
    counts = compare_with_stock(env_id, steps=50, horizon=30, config=config)
    if config is _no_continue_goal:
        assert counts["terminations"] >= 3


# ----------------------------------------------------------------------------------------------
# the batched env
# ----------------------------------------------------------------------------------------------


def _rollout(env_id: str, fast_step: bool, steps: int = 60) -> list:
    env = make_safety_env(env_id, num_envs=3, seed=5, fast_step=fast_step, max_episode_steps=20)
    assert env.base_env.fast_step is fast_step
    torch.manual_seed(0)
    td = env.rollout(steps, break_when_any_done=False)
    return [td[key] for key in td.keys(include_nested=True, leaves_only=True)]


@pytest.mark.parametrize("env_id", ["SafetyPointGoal1-v0", "SafetyCarButton1-v0"])
def test_batch_env_rollouts_identical(env_id: str) -> None:
    stock, fast = _rollout(env_id, False), _rollout(env_id, True)
    assert len(stock) == len(fast)
    for a, b in zip(stock, fast):
        assert torch.equal(a, b)


def test_switch_defaults_and_refusals() -> None:
    assert make_safety_env("SafetyPointGoal1-v0", num_envs=1).base_env.fast_step
    assert not make_safety_env("SafetyPointRun0-v0", num_envs=1).base_env.fast_step
    assert not make_safety_env("SafetyHalfCheetahVelocity-v1", num_envs=1).base_env.fast_step
    for env_id, kwargs, match in [
        ("SafetyPointRun0-v0", {}, "RunLevel0"),
        ("SafetyPointGoal1-v0", {"render_mode": "rgb_array"}, "render_mode"),
        ("SafetyHalfCheetahVelocity-v1", {}, r"not a MuJoCo-scene \(Builder\) task"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_safety_env(env_id, num_envs=1, fast_step=True, **kwargs)
    assert supports_fast_step("SafetyAntCircle2-v0")
    assert "observes vision" in fast_step_refusal("SafetyPointGoal1Vision-v0")
    assert "debug" in fast_step_refusal("SafetyPointGoal1Debug-v0")
    assert "unknown" in fast_step_refusal("SafetyPointGoal9-v0")


def test_env_level_refusals() -> None:
    env = safety_gymnasium.make("SafetyPointGoal1-v0")
    assert fast_step_refusal(env) is None
    env.unwrapped.task.action_noise = 0.1
    assert "action_noise" in fast_step_refusal(env)
    with pytest.raises(ValueError, match="action_noise"):
        make_stepper([env])
    env = safety_gymnasium.make("SafetyPointGoal1-v0", render_mode="rgb_array")
    assert "render_mode" in fast_step_refusal(env)
    env = safety_gymnasium.make("SafetyPointGoal2-v0")
    env.unwrapped.task.vases.displace_cost = 1.0
    assert "displace" in fast_step_refusal(env)


# ----------------------------------------------------------------------------------------------
# the kernels against the stock scalar expressions
# ----------------------------------------------------------------------------------------------


def test_kernels_match_scalar_expressions() -> None:
    rng = np.random.default_rng(0)
    n, k = 400, 12
    pos = rng.normal(size=(n, k, 3)) * rng.choice([1e-3, 1.0, 5.0], size=(n, k, 1))
    agent = rng.normal(size=(n, 3))
    mat = np.linalg.qr(rng.normal(size=(n, 3, 3)))[0]
    ego = kernels.ego_xy(pos, agent, mat)
    for i in range(0, n, 7):
        for j in range(k):
            world = np.concatenate([pos[i, j, :2], [0]]) - agent[i]
            assert np.matmul(world, mat[i])[:2].tobytes() == ego[i, j].tobytes()
    out = np.zeros(n * 16)
    block = np.arange(n)[:, None].repeat(k, 1) * 16
    kernels.pseudo_lidar(ego, out, block, 16, 3, 1.0, True)
    out = out.reshape(n, 16)
    for i in range(0, n, 5):  # BaseTask._obs_lidar_pseudo, verbatim minus the ego_xy call
        expected = np.zeros(16)
        for e in ego[i]:
            z = complex(*e)
            dist, angle = np.abs(z), np.angle(z) % (np.pi * 2)
            bin_size = (np.pi * 2) / 16
            b = int(angle / bin_size)
            sensor = max(0, 3 - dist) / 3
            expected[b] = max(expected[b], sensor)
            alias = (angle - bin_size * b) / bin_size
            expected[(b + 1) % 16] = max(expected[(b + 1) % 16], alias * sensor)
            expected[(b - 1) % 16] = max(expected[(b - 1) % 16], (1 - alias) * sensor)
        assert expected.tobytes() == out[i].tobytes()
    for i in range(0, n, 3):
        assert np.sqrt(np.sum(np.square(pos[i, 0, :2] - agent[i, :2]))) == kernels.dist_xy(
            pos[i, 0], agent[i]
        )
        assert np.sqrt(np.sum(np.square(pos[i, 0] - agent[i]))) == kernels.dist_xyz(
            pos[i, 0], agent[i]
        )
    assert kernels.repeated_add(np.array([0, 1, 3]), 0.1).tolist() == [0.0, 0.1, 0.1 + 0.1 + 0.1]
