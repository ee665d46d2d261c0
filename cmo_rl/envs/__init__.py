"""Safety-Gymnasium as TorchRL environments with a ``cost`` key beside ``reward``."""

from cmo_rl.envs import compat as compat  # noqa: F401  (must run before safety_gymnasium imports)
