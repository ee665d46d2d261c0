"""Meta-learned update rules for constrained policy optimisation, trained by bilevel optimisation.

``PIDMetaOptimizer`` / ``LSTMMetaOptimizer`` map (policy gradients of return and cost, the
violation, their state) to the next policy parameters and Lagrange multiplier;
``bilevel_objective`` unrolls one on a task and scores the final policy; ``RolloutTaskSampler``
builds the tasks (``TaskSettings``, ``EnvFactory``); ``MetaTrainer`` runs the outer loop
(``TaskPool``: its tasks in worker processes; ``MetricWindow``: what a run logs);
``run_frozen`` / ``meta_test`` evaluate a frozen meta-optimizer and ``run_meta_test`` writes the
report of a run's meta-test; ``batched_inner_step`` is one inner update of a stack of
same-architecture tasks at once (``torch.func.vmap``). ``cmo_rl.meta.es`` is evolution
strategies over whole training runs (estimator, rank fitness, a run's score);
``cmo_rl.meta.online`` the online (MetaL-style) meta-gradient of a lambda rule during one run
(``OnlineRuleLearner``). See docs/meta.md.

Nothing here imports the baseline wing (:mod:`cmo_rl.training`) or the recipes; the ES program,
which meta-trains a lambda rule over whole PPO-Lagrangian runs, joins the wings in the program
layer (:mod:`cmo_rl.meta_es`).
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
from cmo_rl.meta.es import (
    EvolutionStrategy,
    antithetic_noise,
    centered_ranks,
    es_gradient,
    pair_scores,
    run_fitness,
)
from cmo_rl.meta.features import (
    CONSTRAINT_FEATURES,
    COORDINATE_FEATURES,
    constraint_features,
    coordinate_features,
    preprocess_gradient,
    squash,
)
from cmo_rl.meta.frozen import meta_test, run_frozen
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
from cmo_rl.meta.metrics import MetricWindow, iteration_metrics, log_line
from cmo_rl.meta.online import (
    OnlineRuleLearner,
    lambda_sensitivity,
    outer_gradient,
    penalised_direction,
    policy_gradients,
)
from cmo_rl.meta.pid import PID_GAINS, PIDMetaOptimizer
from cmo_rl.meta.pool import TaskPool, task_action_seed
from cmo_rl.meta.problems import ContextualBanditCMDP, RolloutCMDP
from cmo_rl.meta.report import (
    format_meta_test_table,
    run_meta_test,
    summarize_meta_test,
    write_meta_test_rows,
)
from cmo_rl.meta.tasks import EnvFactory, RolloutTaskSampler, TaskSettings, balanced_env_index
from cmo_rl.meta.trainer import (
    META_OPTIMIZER_KEYS,
    META_OPTIMIZERS,
    TRAINER_KEYS,
    MetaTrainer,
    TaskOutcome,
    env_steps_per_round,
    make_meta_optimizer,
)

__all__ = [
    "BatchedStep",
    "BilevelResult",
    "CONSTRAINT_FEATURES",
    "COORDINATE_FEATURES",
    "ContextualBanditCMDP",
    "CoordinatewiseLSTM",
    "EnvFactory",
    "EvolutionStrategy",
    "InnerProblem",
    "InnerRound",
    "LSTMMetaOptimizer",
    "META_OPTIMIZERS",
    "META_OPTIMIZER_KEYS",
    "MetaOptimizer",
    "MetaTrainer",
    "MetricWindow",
    "OnlineRuleLearner",
    "PIDMetaOptimizer",
    "PID_GAINS",
    "RolloutCMDP",
    "RolloutTaskSampler",
    "TRAINER_KEYS",
    "TaskOutcome",
    "TaskPool",
    "TaskSettings",
    "UnrollResult",
    "antithetic_noise",
    "balanced_env_index",
    "batched_inner_step",
    "bilevel_objective",
    "centered_ranks",
    "constraint_features",
    "coordinate_features",
    "data_surrogate",
    "default_violation_scale",
    "detach_params",
    "env_steps_per_round",
    "es_gradient",
    "flatten_params",
    "format_meta_test_table",
    "global_rms",
    "grad_of",
    "inner_step",
    "iteration_metrics",
    "lambda_sensitivity",
    "log_line",
    "log_prob_of",
    "make_meta_optimizer",
    "meta_objective",
    "meta_test",
    "num_coordinates",
    "outer_gradient",
    "pair_scores",
    "params_of",
    "penalised_direction",
    "policy_gradients",
    "preprocess_gradient",
    "require_grad",
    "run_fitness",
    "run_frozen",
    "run_meta_test",
    "squash",
    "summarize_meta_test",
    "surrogate_estimates",
    "swapped_params",
    "task_action_seed",
    "unflatten_params",
    "unroll",
    "values_and_grads",
    "violation",
    "write_meta_test_rows",
]
