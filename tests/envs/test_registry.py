"""Task-id discovery and validation with close-match suggestions."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from cmo_rl.envs import registry
from cmo_rl.envs.registry import is_vision_task, safety_task_ids, validate_env_id

ROBOTS = ("Point", "Car", "Racecar", "Doggo", "Ant")
NAV_TASKS = ("Goal", "Button", "Push", "Circle")
VELOCITY_ROBOTS = ("HalfCheetah", "Hopper", "Ant", "Walker2d", "Swimmer", "Humanoid")


def test_state_based_ids_are_exactly_the_canonical_set() -> None:
    navigation = {
        f"Safety{robot}{task}{level}-v0"
        for robot, task, level in itertools.product(ROBOTS, NAV_TASKS, range(3))
    }
    run = {f"Safety{robot}Run0-v0" for robot in ROBOTS}
    velocity = {f"Safety{r}Velocity-v{v}" for r in VELOCITY_ROBOTS for v in (0, 1)}
    ids = safety_task_ids()
    assert ids == sorted(ids)
    assert set(ids) == navigation | run | velocity  # 60 + 5 + 12
    assert len(ids) == 77


def test_vision_ids_are_added_on_request() -> None:
    state = set(safety_task_ids())
    full = set(safety_task_ids(include_vision=True))
    vision = full - state
    assert state < full
    assert "SafetyPointGoal1Vision-v0" in vision and "SafetyCarFadingEasy2-v0" in vision
    assert not any(re.search(r"Race\d", i) for i in full)  # unbuildable upstream (below)
    assert "SafetyDoggoFadingHard1Vision-v0" in vision
    assert all(is_vision_task(i) for i in vision)
    assert not any(is_vision_task(i) for i in state)
    # the 6-tuple API only: gymnasium-API and keyboard debug variants are never listed
    assert not any("Gymnasium" in i or "Debug" in i for i in full)


def test_validate_accepts_every_listed_id_and_returns_it() -> None:
    for env_id in safety_task_ids(include_vision=True):
        assert validate_env_id(env_id) == env_id


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("SafetyPointGaol1-v0", "'SafetyPointGoal1-v0'"),
        ("SafetyHalfCheetahVelocity-v2", "'SafetyHalfCheetahVelocity-v1'"),
        ("safetycargoal1-v0", "'SafetyCarGoal1-v0'"),
    ],
)
def test_unknown_id_names_close_matches(bad: str, expected: str) -> None:
    with pytest.raises(ValueError, match="did you mean") as info:
        validate_env_id(bad)
    message = str(info.value)
    assert repr(bad) in message and expected in message
    suggestions = message.split("did you mean ")[1].split("?")[0].split(", ")
    assert 1 <= len(suggestions) <= 3


def test_unrelated_id_has_no_suggestion_and_variants_are_explained() -> None:
    with pytest.raises(ValueError) as info:
        validate_env_id("CartPole-v1")
    assert "did you mean" not in str(info.value) and "safety_task_ids()" in str(info.value)
    with pytest.raises(ValueError, match="Debug"):
        validate_env_id("SafetyCarGoal1Debug-v0")
    with pytest.raises(ValueError, match="without 'Gymnasium'"):
        validate_env_id("SafetyPointGoal1Gymnasium-v0")
    with pytest.raises(ValueError, match="must be a string"):
        validate_env_id(None)  # type: ignore[arg-type]


def test_validation_is_cached_and_fast() -> None:
    validate_env_id("SafetyPointGoal1-v0")  # warm the cache
    assert registry._task_ids.cache_info().currsize >= 1
    start = time.perf_counter()
    for _ in range(1000):
        validate_env_id("SafetyPointGoal1-v0")
    assert time.perf_counter() - start < 0.1  # ~1 us per call; generous for a loaded machine


@pytest.mark.parametrize("env_id", ["SafetyCarRace1-v0", "SafetyPointRace0Vision-v0"])
def test_race_ids_are_refused_with_the_reason(env_id: str) -> None:
    # registered by safety-gymnasium 1.0.0, but MuJoCo cannot build them: a texture is missing
    assert env_id in registry._registered_ids()
    with pytest.raises(ValueError, match="village_floor"):
        validate_env_id(env_id)


def test_race_ids_really_fail_to_build_upstream() -> None:
    """The reason given above is the real one: the stock env raises MuJoCo's load error."""
    import safety_gymnasium

    env = safety_gymnasium.make("SafetyPointRace1-v0")  # the scene is built at reset
    with pytest.raises(ValueError, match="PNG file load error"):
        env.reset(seed=0)


def test_pixel_observation_ids() -> None:
    from cmo_rl.envs import has_pixel_observations

    full = safety_task_ids(include_vision=True)
    pixel = [i for i in full if has_pixel_observations(i)]
    assert pixel and all(i.endswith(("Vision-v0", "Vision-v1")) for i in pixel)
    # the plain Fading ids are vision-suite tasks with a flat state observation
    assert is_vision_task("SafetyPointFadingEasy1-v0")
    assert not has_pixel_observations("SafetyPointFadingEasy1-v0")
