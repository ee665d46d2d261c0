"""Safe-RL objectives: PPO-Lagrangian and critic losses, Lagrange/PID multipliers, the learned
dual rule, the CPO step."""

from cmo_rl.objectives.cpo import (
    CPOStep,
    CPOUpdate,
    conjugate_gradient,
    cpo_step_direction,
    fisher_vector_product,
    make_fisher_vector_product,
)
from cmo_rl.objectives.critic import CriticLoss
from cmo_rl.objectives.lagrangian import (
    LagrangianPPOLoss,
    lagrangian_advantage,
    make_value_estimators,
    normalize_advantages,
)
from cmo_rl.objectives.learned_dual import (
    LearnedLagrangian,
    learned_update,
    rule_vector,
    set_rule_vector,
)
from cmo_rl.objectives.multipliers import LagrangeMultiplier, PIDLagrangian, pid_lagrangian_step

__all__ = [
    "CPOStep",
    "CPOUpdate",
    "CriticLoss",
    "LagrangeMultiplier",
    "LagrangianPPOLoss",
    "LearnedLagrangian",
    "PIDLagrangian",
    "conjugate_gradient",
    "cpo_step_direction",
    "fisher_vector_product",
    "lagrangian_advantage",
    "learned_update",
    "make_fisher_vector_product",
    "make_value_estimators",
    "normalize_advantages",
    "pid_lagrangian_step",
    "rule_vector",
    "set_rule_vector",
]
