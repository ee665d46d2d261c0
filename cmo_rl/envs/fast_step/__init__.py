"""Fast steps for Safety-Gymnasium's navigation tasks: the task logic of all sub-envs at once.

A stock ``Builder.step`` of ``SafetyPointGoal1-v0`` spends ~20% of its time in MuJoCo and the
rest in per-env Python over a handful of geoms (cProfile, 2 shared cores, 2026-11-26):
``obs()`` 57% (``_obs_lidar_pseudo`` 30%, the observation-space ``contains`` check 12%),
``_cost()`` 17% (hazard distances), ``simulation_forward`` 18% (``mj_step`` 12%), reward 5%.
:class:`NavigationStepper` keeps the physics per sub-env (the same ``mj_step`` and
``mj_forward`` calls in the same order: MuJoCo's ``mj_forward`` warm-starts its solver from the
previous call, so even the repeated ones are kept) and replaces the rest by numpy over
``[num_envs, n_objects, ...]`` arrays gathered from each sub-env's ``mjData``:

* observations: sensors (copies, hinge ``sin``/``cos``, ball-joint ``quat2mat``), pseudo lidar
  (same binning, ``max_dist``/exponential sensing, aliasing) of every lidar-observed object in
  one ``np.maximum.at``, compass; natural lidar (``mj_ray``) runs stock code per sub-env; no
  observation-space ``contains`` check and no dict-then-flatten;
* costs: hazards (distance), vases (contact, velocity), pillars, gremlins and wrong buttons
  (contacts, matched by precomputed geom-name tables instead of per-contact name lookups),
  Circle's boundary walls; the ``constrain_indicator`` and ``cost_sum`` as stock;
* rewards and ``goal_achieved`` for Goal, Button (contacts), Push and Circle; reward clipping;
* the gremlins' mocap targets without per-step name lookups.

Goal resampling (``update_layout``/``update_world``), ``specific_step``, ``is_alive``, resets
and everything that draws random numbers run Safety-Gymnasium's own code, in stock order.

**Exactness.** Every batched quantity is computed with the same IEEE operations in the same
order as stock, and where stock calls a routine that is not one IEEE operation (BLAS ``dgemv``
for the ego-frame rotation, numpy's complex ``abs``, libm ``pow`` in Circle's reward) the batched
code calls the same routine (:mod:`cmo_rl.envs.fast_step.kernels` says how). So observations,
rewards, costs, termination flags and ``qpos``/``qvel``/``qacc``/``sensordata`` are
bit-identical to stock; there is no tolerance to state. ``tests/envs/test_fast_step.py`` checks
this with ``np.array_equal`` over hundreds of random-action steps (goals met, episode ends,
resets) on every family, level and robot.

Covered: the Goal, Button, Push and Circle tasks, levels 0-2, robots Point, Car, Racecar,
Doggo and Ant (60 ids), made without rendering. Refused, with a reason (the stock step is used):
vision and debug variants, ``render_mode``, Run/Race/Fading and the Velocity tasks, and configs
no registered navigation task uses (dict observations, action noise, orientation reward, vase
displacement cost, static geoms, a compass on a multi-object obstacle).

Examples:
    >>> import cmo_rl
    >>> from cmo_rl.envs.fast_step import fast_step_refusal, supports_fast_step
    >>> supports_fast_step("SafetyPointGoal1-v0"), supports_fast_step("SafetyPointGoal1Vision-v0")
    (True, False)
    >>> print(fast_step_refusal("SafetyPointRun0-v0"))
    'SafetyPointRun0-v0' is a RunLevel0 task; fast steps cover GoalLevel0-2, ButtonLevel0-2, PushLevel0-2, CircleLevel0-2
"""

from __future__ import annotations

from typing import Any

import gymnasium

from cmo_rl.envs import compat as _compat  # noqa: F401  (import shim before safety_gymnasium)
from cmo_rl.envs.fast_reset import _builder, _builder_refusal, _builder_spec
from cmo_rl.envs.fast_step.stepper import NavigationStepper
from cmo_rl.envs.fast_step.structure import SUPPORTED_OBSTACLES, body_names

__all__ = ["NavigationStepper", "fast_step_refusal", "make_stepper", "supports_fast_step"]

_TASKS = frozenset(f"{f}Level{lv}" for f in ("Goal", "Button", "Push", "Circle") for lv in range(3))
_COVERED = "GoalLevel0-2, ButtonLevel0-2, PushLevel0-2, CircleLevel0-2"
_ROBOTS = frozenset({"Point", "Car", "Racecar", "Doggo", "Ant"})


def _refusal_for_id(env_id: str) -> str | None:
    from safety_gymnasium.utils.task_utils import get_task_class_name

    spec, reason = _builder_spec(env_id, "its pixels are rendered per sub-env by the stock step")
    if reason is not None:
        return reason
    kwargs = spec.kwargs or {}
    config = kwargs.get("config") or {}
    task_class = get_task_class_name(kwargs.get("task_id", env_id))
    if task_class not in _TASKS:
        return f"{env_id!r} is a {task_class} task; fast steps cover {_COVERED}"
    if config.get("agent_name") not in _ROBOTS:
        return f"{env_id!r}: robot {config.get('agent_name')!r} is not one of {sorted(_ROBOTS)}"
    return None


def _refusal_for_task(task: Any) -> str | None:
    """Configuration checks on a built task (registered navigation tasks all pass)."""
    name = type(task).__name__
    if name not in _TASKS or not type(task).__module__.startswith("safety_gymnasium.tasks"):
        return f"task class {name} is not covered; fast steps cover {_COVERED}"
    if type(task.agent).__name__ not in _ROBOTS:
        return f"robot {type(task.agent).__name__} is not one of {sorted(_ROBOTS)}"
    if not task.observation_flatten:
        return "observation_flatten=False (dict observations): fast steps produce flat vectors"
    if task.action_noise:
        return "action_noise != 0 is not covered (stock applies it with `if noise:`)"
    if task.reward_conf.reward_orientation:
        return "reward_orientation=True is not covered"
    if task._is_load_static_geoms:
        return "static geoms (contact costs by name) are not covered"
    if task.lidar_conf.type not in ("pseudo", "natural"):
        return f"lidar type {task.lidar_conf.type!r} is invalid (stock raises)"
    for obstacle in task._obstacles:
        kind = type(obstacle).__name__
        if kind not in SUPPORTED_OBSTACLES:
            return f"obstacle {kind} is not covered"
        if kind == "Sigwalls" and obstacle.is_lidar_observed:
            return "lidar on sigwalls is not covered"
        if kind == "Vases" and obstacle.is_constrained and obstacle.displace_cost:
            return "vase displacement cost (displace_cost != 0) is not covered"
        if getattr(obstacle, "is_comp_observed", False) and len(body_names(obstacle)) != 1:
            return f"a compass on {obstacle.name} ({kind}, several objects) is not covered"
    return None


def _refusal_for_env(env: Any) -> str | None:
    builder, reason = _builder_refusal(
        env,
        rendering="rendering reads per-step state that only the stock step keeps",
        vision="vision observations are rendered by the stock step",
    )
    if reason is not None:
        return reason
    return _refusal_for_task(builder.task)


def fast_step_refusal(env_or_id: str | gymnasium.Env) -> str | None:
    """Why fast steps cannot be used for ``env_or_id`` (an env id or env), or None if they can.

    Examples:
        >>> import cmo_rl
        >>> fast_step_refusal("SafetyCarButton2-v0") is None
        True
        >>> print(fast_step_refusal("SafetyCarButton1Vision-v0"))
        'SafetyCarButton1Vision-v0' observes vision: its pixels are rendered per sub-env by the stock step
    """
    if isinstance(env_or_id, str):
        return _refusal_for_id(env_or_id)
    return _refusal_for_env(env_or_id)


def supports_fast_step(env_or_id: str | gymnasium.Env) -> bool:
    """Whether :func:`make_stepper` accepts ``env_or_id`` (a Safety-Gymnasium id or env).

    Examples:
        >>> import cmo_rl
        >>> [supports_fast_step(i) for i in ("SafetyDoggoPush2-v0", "SafetyPointRun0-v0")]
        [True, False]
    """
    return fast_step_refusal(env_or_id) is None


def make_stepper(envs: list) -> NavigationStepper:
    """A :class:`NavigationStepper` over ``envs`` (one task; wrappers allowed).

    Raises:
        ValueError: an env is refused (see :func:`fast_step_refusal`) or the envs are not all
            of one task id.

    Examples:
        >>> import numpy as np, cmo_rl, safety_gymnasium
        >>> envs = [safety_gymnasium.make("SafetyPointGoal1-v0") for _ in range(2)]
        >>> _ = [env.reset(seed=i) for i, env in enumerate(envs)]
        >>> obs, reward, cost, terminated, truncated = make_stepper(envs).step(np.zeros((2, 2)))
        >>> obs.shape, reward.shape, bool(terminated.any())
        ((2, 60), (2,), False)
    """
    if not envs:
        raise ValueError("make_stepper needs at least one env")
    builders = []
    for env in envs:
        reason = _refusal_for_env(env)
        if reason is not None:
            raise ValueError(f"fast steps refused: {reason}")
        builders.append(_builder(env))
    if len({b.task_id for b in builders}) != 1:
        raise ValueError("fast steps batch envs of one task id")
    return NavigationStepper(builders)
