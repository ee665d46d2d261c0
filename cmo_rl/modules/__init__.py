"""Policy and value networks built from env specs (keys: see docs/design.md)."""

from cmo_rl.modules import actor_critic as _actor_critic
from cmo_rl.modules.actor_critic import *  # noqa: F403  (the names of its __all__)

__all__ = list(_actor_critic.__all__)
