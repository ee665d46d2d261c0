"""The Safety-Gymnasium task ids :func:`cmo_rl.envs.make_safety_env` accepts, with close-match hints.

The ids are discovered once per process from Safety-Gymnasium's own registry
(``safety_gymnasium.utils.registration.safe_registry``, filled by ``import safety_gymnasium``) and
cached, so validating an id costs a set lookup after the first call.

Kept: ids whose ``step`` returns the 6-tuple ``(obs, reward, cost, terminated, truncated, info)``
and that run headless:

* **navigation** (state-based): ``Safety{Point,Car,Racecar,Doggo,Ant}{Goal,Button,Push,Circle}{0,1,2}-v0``
  and ``Safety{robot}Run0-v0``;
* **velocity**: ``Safety{HalfCheetah,Hopper,Ant,Walker2d,Swimmer,Humanoid}Velocity-v{0,1}``;
* **vision** (with ``include_vision=True``): the ``...Vision-v0`` variants of the above, and the
  vision suite ``FadingEasy{0,1,2}`` / ``FadingHard{0,1,2}`` (plain and ``Vision``). ``...Vision``
  ids observe a dict of sensors plus a ``vision`` image (:func:`has_pixel_observations`), which
  the recipes' MLP policies cannot take; the plain Fading ids observe a state vector.

Dropped: the ``...Gymnasium-v*`` ids (gymnasium's 5-tuple API, cost moved into ``info``), the
``...Debug-v0`` ids (keyboard-driven, they need a window) and the ``Race{0,1,2}`` ids (plain and
``Vision``): their scene loads a ``village_floor`` texture that the safety-gymnasium 1.0.0 wheel
does not ship, so MuJoCo fails to build them ("PNG file load error"); :func:`validate_env_id`
says so.

Examples:
    >>> ids = safety_task_ids()
    >>> "SafetyPointGoal1-v0" in ids, "SafetyPointGoal1Vision-v0" in ids
    (True, False)
    >>> validate_env_id("SafetyPointGoal1-v0")
    'SafetyPointGoal1-v0'
"""

from __future__ import annotations

import difflib
import functools
import re

from cmo_rl.envs import compat as _compat  # noqa: F401  (import shim before safety_gymnasium)

__all__ = ["has_pixel_observations", "is_vision_task", "safety_task_ids", "validate_env_id"]

_ROBOTS = "Point|Car|Racecar|Doggo|Ant"
_NAVIGATION = re.compile(rf"^Safety(?:{_ROBOTS})(?:Goal|Button|Push|Circle|Run)\d-v\d+$")
_VELOCITY = re.compile(r"^Safety(?:HalfCheetah|Hopper|Ant|Walker2d|Swimmer|Humanoid)Velocity-v\d+$")
_VISION = re.compile(
    rf"^Safety(?:{_ROBOTS})"
    r"(?:(?:Goal|Button|Push|Circle|Run)\dVision|(?:Race|FadingEasy|FadingHard)\d(?:Vision)?)-v\d+$"
)
#: Registered, but unbuildable with the 1.0.0 wheel (a texture file is missing from the package).
_MISSING_ASSET = re.compile(rf"^Safety(?:{_ROBOTS})Race\d(?:Vision)?-v\d+$")


@functools.lru_cache(maxsize=1)
def _registered_ids() -> frozenset[str]:
    import safety_gymnasium  # noqa: F401  (registers the ids)
    from safety_gymnasium.utils.registration import safe_registry

    return frozenset(safe_registry)


@functools.lru_cache(maxsize=2)
def _task_ids(include_vision: bool) -> tuple[str, ...]:
    keep = [_NAVIGATION, _VELOCITY] + ([_VISION] if include_vision else [])
    return tuple(
        sorted(
            i
            for i in _registered_ids()
            if any(p.match(i) for p in keep) and not _MISSING_ASSET.match(i)
        )
    )


def safety_task_ids(include_vision: bool = False) -> list[str]:
    """Sorted Safety-Gymnasium ids that :func:`~cmo_rl.envs.make_safety_env` builds.

    Args:
        include_vision: also list the pixel-observation tasks (``...Vision-v0``, Race, Fading).

    Examples:
        >>> len(safety_task_ids()), len(safety_task_ids(include_vision=True))
        (77, 202)
    """
    return list(_task_ids(bool(include_vision)))


def is_vision_task(env_id: str) -> bool:
    """Whether ``env_id`` is one of the pixel-observation tasks (a ``Vision``, Race or Fading id).

    Examples:
        >>> is_vision_task("SafetyCarRace1-v0"), is_vision_task("SafetyCarGoal1-v0")
        (True, False)
    """
    return _VISION.match(env_id) is not None


def has_pixel_observations(env_id: str) -> bool:
    """Whether ``env_id`` observes a dict of sensors plus a ``vision`` image (a ``...Vision`` id)
    instead of one flat ``observation`` vector.

    Examples:
        >>> has_pixel_observations("SafetyPointGoal1Vision-v0"), has_pixel_observations("SafetyPointGoal1-v0")
        (True, False)
    """
    return _VISION.match(env_id) is not None and "Vision-v" in env_id


def validate_env_id(env_id: str) -> str:
    """Return ``env_id`` if it is a valid task id, else raise a ``ValueError`` naming close ids.

    Vision ids are valid. Up to 3 suggestions come from :func:`difflib.get_close_matches`.

    Examples:
        >>> try:
        ...     validate_env_id("SafetyPointGaol1-v0")
        ... except ValueError as error:
        ...     print(error)
        unknown Safety-Gymnasium task id 'SafetyPointGaol1-v0'; did you mean 'SafetyPointGoal1-v0', 'SafetyPointGoal2-v0', 'SafetyPointGoal0-v0'? (cmo_rl.envs.safety_task_ids() lists all ids)
    """
    if not isinstance(env_id, str):
        raise ValueError(f"env_id must be a string, got {type(env_id).__name__}: {env_id!r}")
    valid = _task_ids(True)
    if env_id in valid:
        return env_id
    if _MISSING_ASSET.match(env_id) and env_id in _registered_ids():
        raise ValueError(
            f"{env_id!r} cannot be built with safety-gymnasium 1.0.0: the Race scene loads a "
            "'village_floor' texture that the package does not ship (MuJoCo: PNG file load "
            "error); pick another task (cmo_rl.envs.safety_task_ids() lists the ones that build)"
        )
    hint = ""
    if env_id in _registered_ids() and "Debug" in env_id:
        hint = " (a keyboard-driven Debug variant: it needs a window, use the id without 'Debug')"
    elif env_id.startswith("Safety") and "Gymnasium" in env_id:
        hint = " (a gymnasium-API variant without a cost output: use the id without 'Gymnasium')"
    close = difflib.get_close_matches(env_id, valid, n=3, cutoff=0.6)
    suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown Safety-Gymnasium task id {env_id!r}{hint}{suggestion} "
        "(cmo_rl.envs.safety_task_ids() lists all ids)"
    )
