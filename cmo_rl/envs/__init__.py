"""Safety-Gymnasium as TorchRL environments with a ``cost`` key beside ``reward``.

The public names are loaded on first access, so ``import cmo_rl`` (which imports this package
for its import shim) stays light and does not pull in TorchRL.

Examples:
    >>> from cmo_rl.envs import make_safety_env
    >>> env = make_safety_env("SafetyPointGoal1-v0", num_envs=2, seed=0)
    >>> sorted(env.full_reward_spec.keys())
    ['cost', 'reward']
"""

from cmo_rl.envs import compat as compat  # noqa: F401  (must run before safety_gymnasium imports)

# isort: split
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmo_rl.envs.factory import MOCK_ENV_ID, make_env, max_episode_steps, observation_norm_of
    from cmo_rl.envs.fast_reset import (
        enable_fast_reset,
        fast_reset_enabled,
        fast_reset_refusal,
        supports_fast_reset,
    )
    from cmo_rl.envs.registry import (
        has_pixel_observations,
        is_vision_task,
        safety_task_ids,
        validate_env_id,
    )
    from cmo_rl.envs.safety import SafetyGymnasiumBatchEnv, make_safety_env, resolve_device
    from cmo_rl.envs.stable_vecnorm import StableVecNorm, observation_norm

_LAZY = {
    "SafetyGymnasiumBatchEnv": "cmo_rl.envs.safety",
    "make_safety_env": "cmo_rl.envs.safety",
    "observation_norm": "cmo_rl.envs.stable_vecnorm",
    "StableVecNorm": "cmo_rl.envs.stable_vecnorm",
    "resolve_device": "cmo_rl.envs.safety",
    "has_pixel_observations": "cmo_rl.envs.registry",
    "is_vision_task": "cmo_rl.envs.registry",
    "safety_task_ids": "cmo_rl.envs.registry",
    "validate_env_id": "cmo_rl.envs.registry",
    "enable_fast_reset": "cmo_rl.envs.fast_reset",
    "fast_reset_enabled": "cmo_rl.envs.fast_reset",
    "fast_reset_refusal": "cmo_rl.envs.fast_reset",
    "supports_fast_reset": "cmo_rl.envs.fast_reset",
    "MOCK_ENV_ID": "cmo_rl.envs.factory",
    "make_env": "cmo_rl.envs.factory",
    "max_episode_steps": "cmo_rl.envs.factory",
    "observation_norm_of": "cmo_rl.envs.factory",
}

__all__ = [
    "MOCK_ENV_ID",
    "SafetyGymnasiumBatchEnv",
    "StableVecNorm",
    "enable_fast_reset",
    "fast_reset_enabled",
    "fast_reset_refusal",
    "has_pixel_observations",
    "is_vision_task",
    "make_env",
    "make_safety_env",
    "max_episode_steps",
    "observation_norm",
    "observation_norm_of",
    "resolve_device",
    "safety_task_ids",
    "supports_fast_reset",
    "validate_env_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
