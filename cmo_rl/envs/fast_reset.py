"""Fast resets for Safety-Gymnasium's MuJoCo-scene tasks (Goal, Button, Push, Circle, Run, ...).

Every ``reset()`` of a ``safety_gymnasium.builder.Builder`` task samples a new layout and rebuilds
the MuJoCo scene from XML (``Builder.reset -> task.reset -> Underlying._build ->
RandomGenerator.build_layout``, then ``World.rebuild -> World.build ->
MjModel.from_xml_string``). cProfile of stock resets (2 shared cores, 2026-11-25):

=====================================  ====================  ======================
work per reset                         stock                 fast
=====================================  ====================  ======================
``from_xml_string`` (compile)          1.1 - 1.5 s           ~1 ms
layout rejection sampling (Button1)    190 - 230 ms          ~30 ms (same draws)
layout rejection sampling (Goal1)      ~1 ms                 ~0.3 ms
``yaml.load(configs/assets.yaml)``     ~6 ms                 ~0.1 ms (parsed once)
XML generation, ``mj_forward``, rest   ~3 ms                 ~3 ms
**reset PointGoal1 / PointPush1**      **1.3 s / 1.6 s**     **4.1 ms / 3.5 ms**
**reset CarButton1**                   **1.6 - 2.7 s**       **40 ms**
=====================================  ====================  ======================

(``python -m cmo_rl.envs.fast_reset`` prints the last two rows on any machine.)

What changes, and why it cannot change what the agent sees:

1. **The skybox texture is not compiled.** ``World.build`` adds a ``<texture type="skybox">``
   made of six HD PNGs (24 MB, ``star_hd.*.png``) to every scene; decoding them is >99% of the
   compile time. A skybox is only ever sampled by the renderer: it has no name, no material or
   geom refers to it, and MuJoCo's physics pipeline (``mj_step``/``mj_forward``: kinematics,
   inertia, collision, constraints, actuation, sensors) never reads ``mjModel.tex_*``. Every
   other element of the scene, the floor's material and its builtin checker texture included,
   is compiled exactly as before, so ``qpos0``, ``body_invweight0``, masses, contacts, sensors
   and ``mjModel.stat`` are the same numbers; only ``tex_*``, ``ntex``, ``mat_texid`` and the
   name-table offsets differ. Hence fast resets are refused where pixels are produced
   (``render_mode`` set, ``observe_vision``, keyboard ``debug`` mode).
2. **``configs/assets.yaml`` is parsed once** per process (a constant package file); each build
   gets a deep copy, so nothing can leak between builds.
3. **Layout rejection sampling without per-draw numpy calls** (:func:`_fast_sample_layout`):
   the same ``RandomState.uniform`` calls in the same order and the same IEEE float operations
   for the keepout test, so the layout and the generator state afterwards are bit-identical.
   Button tasks need ~11k draws per reset, so this is where their remaining ~30 ms go (the
   draws themselves, which the layout depends on).

Items 1 and 2 run Safety-Gymnasium's own ``World.build`` code with two substituted globals
(:func:`_rebind_globals`); the ``safety_gymnasium`` modules are not modified, so stock envs in
the same process are unaffected. Only the env passed to :func:`enable_fast_reset` changes.
``tests/envs/test_fast_reset.py`` checks that observations, rewards, costs, termination flags,
infos and ``qpos``/``qvel`` are bit-identical to the stock env over seeded, generator-continued
and reseeded episodes on PointGoal1, CarButton1 and PointPush1, and layouts on Button2/Goal2.

Examples:
    >>> import cmo_rl, safety_gymnasium
    >>> from cmo_rl.envs.fast_reset import enable_fast_reset, fast_reset_enabled, supports_fast_reset
    >>> supports_fast_reset("SafetyPointGoal1-v0"), supports_fast_reset("SafetyPointGoal1Vision-v0")
    (True, False)
    >>> env = enable_fast_reset(safety_gymnasium.make("SafetyPointGoal1-v0"))
    >>> obs, info = env.reset(seed=0)
    >>> fast_reset_enabled(env), obs.shape
    (True, (60,))
"""

from __future__ import annotations

import copy
import functools
import math
import types
from typing import Any

import gymnasium
import numpy as np
import xmltodict
import yaml

from cmo_rl.envs import compat as _compat  # noqa: F401  (import shim before safety_gymnasium)

__all__ = [
    "enable_fast_reset",
    "fast_reset_enabled",
    "fast_reset_refusal",
    "supports_fast_reset",
]

_BUILDER_ENTRY_POINT = "safety_gymnasium.builder:Builder"


# ----------------------------------------------------------------------------------------------
# The two substitutions, bound as globals of Safety-Gymnasium's own build code.
# ----------------------------------------------------------------------------------------------


def _is_skybox(texture: Any) -> bool:
    return isinstance(texture, dict) and texture.get("@type") == "skybox"


class _RenderFreeXmltodict:
    """``xmltodict`` for ``World.build``: ``unparse`` drops skybox textures from the scene first.

    The skybox is removed from the scene dict itself (``world.xml``), so ``world.xml`` and
    ``world.xml_string`` keep describing exactly the compiled model.
    """

    parse = staticmethod(xmltodict.parse)

    @staticmethod
    def unparse(tree: dict, *args: Any, **kwargs: Any) -> str:
        asset = tree.get("mujoco", {}).get("asset")
        if isinstance(asset, dict) and "texture" in asset:
            textures = asset["texture"]
            if isinstance(textures, list):
                textures[:] = [t for t in textures if not _is_skybox(t)]
            elif _is_skybox(textures):
                del asset["texture"]
        return xmltodict.unparse(tree, *args, **kwargs)


@functools.cache
def _parse_yaml_file(path: str, loader: type) -> Any:
    with open(path, encoding="utf-8") as file:
        return yaml.load(file, Loader=loader)  # noqa: S506  (package file, FullLoader as upstream)


class _CachedYaml:
    """``yaml`` for ``World.build``: ``load`` of a named file is parsed once, then deep-copied."""

    FullLoader = yaml.FullLoader

    @staticmethod
    def load(stream: Any, Loader: type) -> Any:  # noqa: N803  (yaml's own argument name)
        path = getattr(stream, "name", None)
        if not isinstance(path, str):
            return yaml.load(stream, Loader=Loader)  # noqa: S506
        return copy.deepcopy(_parse_yaml_file(path, Loader))


def _fast_sample_layout(self: Any) -> bool:
    """``RandomGenerator.sample_layout`` with the same draws and decisions, minus numpy overhead.

    Upstream draws ``xy`` for each object (up to 100 tries; ``False`` if one never fits) and
    accepts it iff, for every object ``o`` already placed,

    .. math::

        \\sqrt{(x - x_o)^2 + (y - y_o)^2} \\ge (k_o + m) + k

    (keepouts ``k_o``, ``k``; margin ``m``). Here the same ``RandomState.uniform(lo, hi)`` calls
    are made in the same order (an object with several placement rectangles goes through
    upstream's ``draw_placement``, whose ``choice`` call then happens as before) and the test is
    evaluated on Python floats with the same IEEE operations in the same order, so the layout and
    the generator state afterwards are bit-identical; only the per-draw numpy calls are gone.
    """
    margin = self.placements_margin
    uniform = self.random_generator.uniform
    layout = {}
    placed: list[tuple[float, float, float]] = []  # (x_o, y_o, k_o + m)
    for name, (placements, keepout) in self.placements.items():
        rect = None  # the one rectangle draw_placement would sample from without a choice() call
        if placements is None:
            rect = self.constrain_placement(self.placements_extents, keepout)
        else:
            constrained = [
                (xmin, ymin, xmax, ymax)
                for xmin, ymin, xmax, ymax in (
                    self.constrain_placement(placement, keepout) for placement in placements
                )
                if not (xmin > xmax or ymin > ymax)
            ]
            if len(constrained) == 1:
                rect = constrained[0]
        for _ in range(100):
            if rect is None:
                x, y = (float(v) for v in self.draw_placement(placements, keepout))
            else:
                x = uniform(rect[0], rect[2])
                y = uniform(rect[1], rect[3])
            for x_o, y_o, reach_o in placed:
                dx, dy = x - x_o, y - y_o
                if math.sqrt(dx * dx + dy * dy) < reach_o + keepout:
                    break  # conflict: draw again
            else:
                break  # fits
        else:
            return False
        layout[name] = np.array([x, y])
        placed.append((x, y, self.placements[name][1] + margin))
    self.layout = layout
    return True


def _rebind_globals(function: types.FunctionType, **overrides: Any) -> types.FunctionType:
    """A copy of ``function`` (same code object) whose global names ``overrides`` are replaced.

    The original function and its module are untouched. Used on ``World.build`` and
    ``Underlying._build``, which use neither closures nor zero-argument ``super()``.
    """
    if function.__closure__:
        raise ValueError(f"{function.__qualname__} has a closure; cannot rebind its globals")
    namespace = dict(function.__globals__)
    missing = set(overrides) - set(namespace)
    if missing:
        raise ValueError(f"{function.__qualname__} does not use globals {sorted(missing)}")
    namespace.update(overrides)
    rebound = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__
    )
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__doc__ = function.__doc__
    return rebound


@functools.lru_cache(maxsize=1)
def _fast_classes() -> tuple[type, types.FunctionType]:
    """``(FastWorld, fast_underlying_build)``, created on first use (imports safety_gymnasium)."""
    from safety_gymnasium.bases import underlying
    from safety_gymnasium.world import World

    class FastWorld(World):
        """``World`` whose ``build`` skips the skybox and re-parsing ``assets.yaml``."""

        build = _rebind_globals(World.build, xmltodict=_RenderFreeXmltodict, yaml=_CachedYaml)

    fast_underlying_build = _rebind_globals(underlying.Underlying._build, World=FastWorld)
    return FastWorld, fast_underlying_build


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _builder(env: Any) -> Any:
    """The ``safety_gymnasium.builder.Builder`` under ``env`` (wrappers allowed), else None."""
    from safety_gymnasium.builder import Builder

    base = env.unwrapped if isinstance(env, gymnasium.Env) else env
    return base if isinstance(base, Builder) else None


def _builder_spec(env_id: str, vision: str) -> tuple[Any, str | None]:
    """The registry spec of ``env_id`` and why a Builder speed-up refuses it (``None``: it
    does not): an unknown id, another entry point, vision observations (``vision``: why they
    matter), a keyboard debug env. Shared by fast resets and fast steps."""
    import safety_gymnasium  # noqa: F401  (registers the ids)
    from gymnasium.envs.registration import registry

    spec = registry.get(env_id)
    if spec is None:
        return None, f"unknown Safety-Gymnasium id {env_id!r}"
    if spec.entry_point != _BUILDER_ENTRY_POINT:
        return spec, (
            f"{env_id!r} is not a MuJoCo-scene (Builder) task (entry point {spec.entry_point!r})"
        )
    config = (spec.kwargs or {}).get("config") or {}
    if config.get("observe_vision"):
        return spec, f"{env_id!r} observes vision: {vision}"
    if config.get("debug"):
        return spec, f"{env_id!r} is a keyboard debug env: it renders to a window"
    return spec, None


def _refusal_for_id(env_id: str) -> str | None:
    spec, reason = _builder_spec(env_id, "its pixels show the skybox that fast resets skip")
    if reason is not None and spec is not None and spec.entry_point != _BUILDER_ENTRY_POINT:
        return f"{reason}; its reset does not rebuild a scene, so there is nothing to speed up"
    return reason


def _builder_refusal(env: Any, *, rendering: str, vision: str) -> tuple[Any, str | None]:
    """The Builder under ``env`` and why a Builder speed-up refuses the env (``None``: it does
    not): not a Builder env, rendering (``rendering``: why), vision (``vision``: why), a
    keyboard debug env. Shared by fast resets and fast steps."""
    builder = _builder(env)
    if builder is None:
        return None, f"{type(env).__name__} is not a Safety-Gymnasium MuJoCo-scene (Builder) env"
    if builder.render_mode is not None:
        return builder, (
            f"render_mode={builder.render_mode!r}: {rendering}; make the env with render_mode=None"
        )
    if builder.task.observe_vision:
        return builder, f"observe_vision=True: {vision}"
    if builder.task.debug:
        return builder, "debug=True: keyboard debug envs render to a window"
    return builder, None


def _refusal_for_env(env: Any) -> str | None:
    builder, reason = _builder_refusal(
        env,
        rendering="rendered frames would lack the skybox that fast resets skip",
        vision="vision observations show the skybox that fast resets skip",
    )
    if builder is None:
        return f"{reason}; its reset does not rebuild a scene, so there is nothing to speed up"
    return reason


def fast_reset_refusal(env_or_id: str | gymnasium.Env) -> str | None:
    """Why fast resets cannot be enabled on ``env_or_id`` (an env id or env), or None if they can.

    Examples:
        >>> import cmo_rl
        >>> fast_reset_refusal("SafetyPointGoal1-v0") is None
        True
        >>> print(fast_reset_refusal("SafetyCarButton1Vision-v0"))
        'SafetyCarButton1Vision-v0' observes vision: its pixels show the skybox that fast resets skip
    """
    if isinstance(env_or_id, str):
        return _refusal_for_id(env_or_id)
    return _refusal_for_env(env_or_id)


def supports_fast_reset(env_or_id: str | gymnasium.Env) -> bool:
    """Whether :func:`enable_fast_reset` accepts ``env_or_id`` (a Safety-Gymnasium id or env).

    True for non-vision Builder tasks (Goal, Button, Push, Circle, Run, ... with any robot) made
    without ``render_mode``; False for vision/debug variants, rendering envs and the Velocity
    (plain MuJoCo) tasks, whose reset is already cheap.

    Examples:
        >>> import cmo_rl
        >>> [supports_fast_reset(i) for i in ("SafetyCarButton1-v0", "SafetyHalfCheetahVelocity-v1")]
        [True, False]
    """
    return fast_reset_refusal(env_or_id) is None


def fast_reset_enabled(env: Any) -> bool:
    """Whether ``env`` (or the Builder under its wrappers) resets through the fast path.

    Examples:
        >>> import cmo_rl, safety_gymnasium
        >>> env = safety_gymnasium.make("SafetyPointGoal1-v0")
        >>> fast_reset_enabled(env), fast_reset_enabled(enable_fast_reset(env))
        (False, True)
    """
    builder = _builder(env)
    if builder is None:
        return False
    _, fast_underlying_build = _fast_classes()
    build = builder.task.__dict__.get("_build")
    sample_layout = builder.task.random_generator.__dict__.get("sample_layout")
    return (
        getattr(build, "__func__", None) is fast_underlying_build
        and getattr(sample_layout, "__func__", None) is _fast_sample_layout
    )


def enable_fast_reset(env: gymnasium.Env) -> gymnasium.Env:
    """Make every later ``env.reset()`` skip render-only scene work; returns ``env`` itself.

    Works on the env from ``safety_gymnasium.make(...)`` (wrappers allowed) or its ``.unwrapped``
    ``Builder``, before or after its first reset. Idempotent. Only this env instance changes.

    Raises:
        ValueError: ``env`` is not a Builder task, or it renders (``render_mode`` set, vision
            observations, debug mode); the message says which.

    Examples:
        >>> import cmo_rl, safety_gymnasium
        >>> env = enable_fast_reset(safety_gymnasium.make("SafetyCarButton1-v0"))
        >>> obs, info = env.reset(seed=0)  # ~40 ms instead of ~2 s
        >>> fast_reset_enabled(env), obs.shape
        (True, (88,))
    """
    reason = _refusal_for_env(env)
    if reason is not None:
        raise ValueError(f"fast resets refused: {reason}")
    builder = _builder(env)
    fast_world, fast_underlying_build = _fast_classes()
    task = builder.task
    task._build = types.MethodType(fast_underlying_build, task)
    if task.world is not None and not isinstance(task.world, fast_world):
        task.world.__class__ = fast_world  # already built once: later rebuilds take the fast path
    generator = task.random_generator  # shared with the agent; only layout sampling changes
    generator.sample_layout = types.MethodType(_fast_sample_layout, generator)
    return env


def _time_resets(env_id: str, resets: int = 3, fast_resets: int = 30) -> tuple[float, float]:
    """Mean seconds per ``reset(seed=i)`` of ``env_id``: ``(stock, fast)``."""
    import time

    import safety_gymnasium

    means = []
    for fast, count in ((False, resets), (True, fast_resets)):
        env = safety_gymnasium.make(env_id)
        if fast:
            enable_fast_reset(env)
        env.reset(seed=0)
        start = time.perf_counter()
        for seed in range(1, count + 1):
            env.reset(seed=seed)
        means.append((time.perf_counter() - start) / count)
        env.close()
    return means[0], means[1]


if __name__ == "__main__":
    for task_id in ("SafetyPointGoal1-v0", "SafetyCarButton1-v0", "SafetyPointPush1-v0"):
        stock, fast = _time_resets(task_id)
        print(f"{task_id:22s} reset: stock {stock * 1e3:7.1f} ms   fast {fast * 1e3:6.1f} ms")
