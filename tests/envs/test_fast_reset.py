"""Fast resets must be invisible to the agent: bit-identical trajectories, refused when rendering."""

from __future__ import annotations

import types

import numpy as np
import pytest

import cmo_rl  # noqa: F401  (import shim: must come before safety_gymnasium)
from cmo_rl.envs.fast_reset import (
    _fast_sample_layout,
    enable_fast_reset,
    fast_reset_enabled,
    fast_reset_refusal,
    supports_fast_reset,
)

# isort: split
import safety_gymnasium
from safety_gymnasium.utils.random_generator import RandomGenerator

EPISODE_STEPS = 25  # task.num_steps: the Builder truncates episodes here (episode boundaries)


def _rollout(env, actions: np.ndarray, resets: list[int | None]) -> list[tuple]:
    """Everything the agent sees, plus the MuJoCo state, as exact bytes, over several episodes.

    ``resets[i]`` seeds the i-th reset (None: continue the generator, as a collector does).
    """
    builder = env.unwrapped
    builder.task.num_steps = EPISODE_STEPS
    record = []
    step = 0
    for seed in resets:
        obs, info = env.reset(seed=seed)
        data = builder.task.data
        record.append(("reset", obs.tobytes(), data.qpos.tobytes(), sorted(info.items())))
        truncated = terminated = False
        while not (terminated or truncated):
            obs, reward, cost, terminated, truncated, info = env.step(actions[step])
            step += 1
            record.append(
                (
                    obs.tobytes(),
                    np.float64(reward).tobytes(),
                    np.float64(cost).tobytes(),
                    terminated,
                    truncated,
                    sorted(info.items()),
                    data.qpos.tobytes(),
                    data.qvel.tobytes(),
                )
            )
    return record


@pytest.mark.parametrize(
    "env_id", ["SafetyPointGoal1-v0", "SafetyCarButton1-v0", "SafetyPointPush1-v0"]
)
def test_trajectories_bit_identical_to_stock(env_id: str) -> None:
    stock = safety_gymnasium.make(env_id)
    fast = enable_fast_reset(safety_gymnasium.make(env_id))
    assert fast_reset_enabled(fast) and not fast_reset_enabled(stock)
    actions = np.random.default_rng(0).uniform(
        -1, 1, size=(4 * EPISODE_STEPS, *stock.action_space.shape)
    )
    resets = [7, None, 123]  # seeded, generator-continued, reseeded
    expected = _rollout(stock, actions, resets)
    got = _rollout(fast, actions, resets)
    assert len(got) == len(expected) == len(resets) * (EPISODE_STEPS + 1)
    assert sum(r[4] for r in expected if r[0] != "reset") == len(resets)  # 3 truncations
    for i, (e, g) in enumerate(zip(expected, got)):
        assert e == g, f"{env_id}: record {i} differs"

    # The compiled models differ only in render-only tables (the skybox) and name bookkeeping.
    m_stock, m_fast = stock.unwrapped.task.model, fast.unwrapped.task.model
    differing = {
        name
        for name in dir(m_stock)
        if not name.startswith("_")
        and isinstance(getattr(m_stock, name), (np.ndarray, int, float))
        and not np.array_equal(getattr(m_stock, name), getattr(m_fast, name), equal_nan=True)
    }
    render_only = {"ntex", "ntexdata", "nbuffer", "mat_texid"}
    assert differing, "the fast model should lack the skybox"
    assert all(n in render_only or n.startswith(("tex_", "name", "nnames")) for n in differing), (
        sorted(differing)
    )
    counts = {
        "body": "nbody",
        "geom": "ngeom",
        "jnt": "njnt",
        "actuator": "nu",
        "sensor": "nsensor",
    }
    for kind, count in {**counts, "site": "nsite", "eq": "neq", "mat": "nmat"}.items():
        count = getattr(m_stock, count)
        names = [getattr(m_stock, kind)(i).name for i in range(count)]
        assert names == [getattr(m_fast, kind)(i).name for i in range(count)]
    for field in ("meaninertia", "meanmass", "meansize", "extent", "center"):
        assert np.array_equal(getattr(m_stock.stat, field), getattr(m_fast.stat, field))
    assert m_stock.ntex == m_fast.ntex + 1 and "skybox" not in fast.unwrapped.task.world.xml_string


def test_enable_after_first_reset_and_idempotent() -> None:
    stock = safety_gymnasium.make("SafetyPointGoal0-v0")
    fast = safety_gymnasium.make("SafetyPointGoal0-v0")
    stock.reset(seed=1)
    fast.reset(seed=1)  # world already built the stock way: its class is swapped
    enable_fast_reset(enable_fast_reset(fast.unwrapped))
    assert fast_reset_enabled(fast)
    assert type(fast.unwrapped.task.world).__name__ == "FastWorld"
    a, _ = stock.reset(seed=5)
    b, _ = fast.reset(seed=5)
    assert a.tobytes() == b.tobytes()
    assert "skybox" not in fast.unwrapped.task.world.xml_string


def _layouts(generator: RandomGenerator, seeds: range) -> list:
    out = []
    for seed in seeds:
        generator.set_random_seed(seed)
        try:
            layout = generator.build_layout()
        except AssertionError as error:  # upstream's "no placement satisfies keepout"
            out.append(("assert", str(error)))
            continue
        state = generator.random_generator.get_state()
        out.append(
            (
                [(k, v.dtype, v.tobytes()) for k, v in layout.items()],
                state[1].tobytes(),
                state[2:],
            )
        )
    return out


def _stock_vs_fast(placements: dict, extents, margin: float, seeds: range) -> list:
    stock, fast = RandomGenerator(), RandomGenerator()
    for generator in (stock, fast):
        generator.set_placements_info(placements, extents, margin)
    fast.sample_layout = types.MethodType(_fast_sample_layout, fast)
    expected = _layouts(stock, seeds)
    assert _layouts(fast, seeds) == expected
    return expected


@pytest.mark.parametrize("env_id", ["SafetyPointButton2-v0", "SafetyPointGoal2-v0"])
def test_layout_sampling_identical_to_stock(env_id: str) -> None:
    task = safety_gymnasium.make(env_id).unwrapped.task
    task._build_placements_dict()
    conf = task.placements_conf
    layouts = _stock_vs_fast(conf.placements, conf.extents, conf.margin, range(4))
    assert all(layout[0] != "assert" for layout in layouts)


def test_layout_sampling_with_several_rectangles_and_margin() -> None:
    """Objects with several placement rectangles go through upstream's choice(); a margin."""
    placements = {
        "agent": ([(-2, -2, 0, 0), (0, 0, 2, 2), (-0.1, -2, 0.1, -1.9)], 0.4),  # 3rd too small
        "wide": ([(-2, -2, 2, 2)], 0.3),
        "sides": ([(-2, -2, -0.5, 2), (0.5, -2, 2, 2)], 0.6),
        **{f"hazard{i}": (None, 0.35) for i in range(8)},
    }
    layouts = _stock_vs_fast(placements, (-2, -2, 2, 2), 0.1, range(12))
    assert sum(layout[0] != "assert" for layout in layouts) == 12
    # No rectangle fits the keepout: the same AssertionError as upstream.
    layouts = _stock_vs_fast({"x": ([(0, 0, 0.1, 0.1)], 0.2)}, (-2, -2, 2, 2), 0.0, range(1))
    assert layouts == [("assert", "Failed to find any placements with satisfy keepout")]


def test_supports_fast_reset_by_id() -> None:
    assert supports_fast_reset("SafetyPointGoal1-v0")
    assert supports_fast_reset("SafetyDoggoPush2-v0")
    assert not supports_fast_reset("SafetyPointGoal1Vision-v0")
    assert not supports_fast_reset("SafetyPointGoal1Debug-v0")
    assert not supports_fast_reset("SafetyHalfCheetahVelocity-v1")
    assert "unknown" in fast_reset_refusal("SafetyPointGoal9-v0")


@pytest.mark.parametrize(
    ("env_id", "kwargs", "match"),
    [
        ("SafetyPointGoal1-v0", {"render_mode": "rgb_array"}, "render_mode='rgb_array'"),
        ("SafetyPointGoal1Vision-v0", {}, "observe_vision"),
        ("SafetyHalfCheetahVelocity-v1", {}, "not a Safety-Gymnasium MuJoCo-scene"),
    ],
)
def test_rendering_vision_and_velocity_envs_are_refused_and_untouched(
    env_id: str, kwargs: dict, match: str
) -> None:
    env = safety_gymnasium.make(env_id, **kwargs)
    assert not supports_fast_reset(env)
    with pytest.raises(ValueError, match=match):
        enable_fast_reset(env)
    assert not fast_reset_enabled(env)
    task = getattr(env.unwrapped, "task", None)
    if task is not None:  # nothing was patched
        assert "_build" not in vars(task)
        assert "sample_layout" not in vars(task.random_generator)
