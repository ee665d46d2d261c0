"""Safety-Gymnasium as TorchRL environments with a ``cost`` key beside ``reward``.

The public names are loaded on first access, so ``import cmo_rl`` (which imports this package
for its import shim) stays light and does not pull in TorchRL.

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
    from cmo_rl.envs.registry import is_vision_task, safety_task_ids, validate_env_id
    from cmo_rl.envs.safety import (
        SafetyGymnasiumBatchEnv,
        make_safety_env,
        observation_norm,
        resolve_device,
    )

_LAZY = {
    "SafetyGymnasiumBatchEnv": "cmo_rl.envs.safety",
    "make_safety_env": "cmo_rl.envs.safety",
    "observation_norm": "cmo_rl.envs.safety",
    "resolve_device": "cmo_rl.envs.safety",
    "is_vision_task": "cmo_rl.envs.registry",
    "safety_task_ids": "cmo_rl.envs.registry",
    "validate_env_id": "cmo_rl.envs.registry",
}

__all__ = [
    "SafetyGymnasiumBatchEnv",
    "is_vision_task",
    "make_safety_env",
    "observation_norm",
    "resolve_device",
    "safety_task_ids",
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
