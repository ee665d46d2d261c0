"""Safe-RL objectives: PPO-Lagrangian and critic losses, Lagrange/PID multipliers, the learned
dual and primal rules, the CPO step."""

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
from cmo_rl.objectives.learned_primal import (
    PRIMAL_RULE_FILE,
    LearnedAdam,
    LearnedPrimalRule,
    load_primal_rule,
    primal_rule_vector,
    save_primal_rule,
    set_primal_rule_vector,
)
from cmo_rl.objectives.multipliers import LagrangeMultiplier, PIDLagrangian, pid_lagrangian_step
from cmo_rl.objectives.rule_file import read_rule_file, write_rule_file

__all__ = [
    "PRIMAL_RULE_FILE",
    "CPOStep",
    "CPOUpdate",
    "CriticLoss",
    "LagrangeMultiplier",
    "LagrangianPPOLoss",
    "LearnedAdam",
    "LearnedLagrangian",
    "LearnedPrimalRule",
    "PIDLagrangian",
    "conjugate_gradient",
    "cpo_step_direction",
    "fisher_vector_product",
    "lagrangian_advantage",
    "learned_update",
    "load_primal_rule",
    "make_fisher_vector_product",
    "make_value_estimators",
    "normalize_advantages",
    "pid_lagrangian_step",
    "primal_rule_vector",
    "read_rule_file",
    "rule_vector",
    "save_primal_rule",
    "set_primal_rule_vector",
    "set_rule_vector",
    "write_rule_file",
]
