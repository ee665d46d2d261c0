"""Meta-learned update rules for constrained policy optimisation, trained by bilevel optimisation.

``PIDMetaOptimizer`` / ``LSTMMetaOptimizer`` map (policy gradients of return and cost, the
violation, their state) to the next policy parameters and Lagrange multiplier;
``bilevel_objective`` unrolls one on a task and scores the final policy; ``MetaTrainer`` runs
the outer loop; ``meta_test`` evaluates a frozen meta-optimizer; ``batched_inner_step`` is one
inner update of a stack of same-architecture tasks at once (``torch.func.vmap``). See
docs/meta.md.
"""

from cmo_rl.meta.batched import BatchedStep, batched_inner_step, data_surrogate
from cmo_rl.meta.bilevel import (
    BilevelResult,
    InnerProblem,
    InnerRound,
    UnrollResult,
    bilevel_objective,
    default_violation_scale,
    inner_step,
    meta_objective,
    unroll,
    violation,
)
from cmo_rl.meta.features import (
    CONSTRAINT_FEATURES,
    COORDINATE_FEATURES,
    constraint_features,
    coordinate_features,
    preprocess_gradient,
    squash,
)
from cmo_rl.meta.functional import (
    MetaOptimizer,
    detach_params,
    flatten_params,
    global_rms,
    grad_of,
    log_prob_of,
    num_coordinates,
    params_of,
    require_grad,
    surrogate_estimates,
    swapped_params,
    unflatten_params,
    values_and_grads,
)
from cmo_rl.meta.lstm import CoordinatewiseLSTM, LSTMMetaOptimizer
from cmo_rl.meta.pid import PIDMetaOptimizer
from cmo_rl.meta.problems import ContextualBanditCMDP, RolloutCMDP
from cmo_rl.meta.trainer import (
    MetaTrainer,
    RolloutTaskSampler,
    make_meta_optimizer,
    meta_test,
    run_frozen,
)

__all__ = [
    "CONSTRAINT_FEATURES",
    "COORDINATE_FEATURES",
    "BatchedStep",
    "BilevelResult",
    "ContextualBanditCMDP",
    "CoordinatewiseLSTM",
    "InnerProblem",
    "InnerRound",
    "LSTMMetaOptimizer",
    "MetaOptimizer",
    "MetaTrainer",
    "PIDMetaOptimizer",
    "RolloutCMDP",
    "RolloutTaskSampler",
    "UnrollResult",
    "batched_inner_step",
    "bilevel_objective",
    "constraint_features",
    "coordinate_features",
    "data_surrogate",
    "default_violation_scale",
    "detach_params",
    "flatten_params",
    "global_rms",
    "grad_of",
    "inner_step",
    "log_prob_of",
    "make_meta_optimizer",
    "meta_objective",
    "meta_test",
    "num_coordinates",
    "params_of",
    "preprocess_gradient",
    "require_grad",
    "run_frozen",
    "squash",
    "surrogate_estimates",
    "swapped_params",
    "unflatten_params",
    "unroll",
    "values_and_grads",
    "violation",
]
