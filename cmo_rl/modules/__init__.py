"""Policy and value networks built from env specs (keys: see docs/design.md)."""

from cmo_rl.modules.actor_critic import (
    ActorCritic,
    ClippedModeNormal,
    StateIndependentScale,
    actor_critic_from_env,
    make_actor,
    make_cost_critic,
    make_value_critic,
)

__all__ = [
    "ActorCritic",
    "ClippedModeNormal",
    "StateIndependentScale",
    "actor_critic_from_env",
    "make_actor",
    "make_cost_critic",
    "make_value_critic",
]
