"""cmo_rl: constraint-aware meta-optimization of policy gradient, as TorchRL/TensorDict components.

``import cmo_rl`` is light: it installs the Python 3.11 import shim for safety-gymnasium
(:mod:`cmo_rl.envs.compat`) and nothing else. The public names of the component packages
(:mod:`cmo_rl.envs`, :mod:`cmo_rl.modules`, :mod:`cmo_rl.objectives`, :mod:`cmo_rl.meta`,
:mod:`cmo_rl.testing`) are re-exported here, and the utility modules (``checkpoint``,
``config``, ``evaluation``, ``logging``, ``plotting``, ``signals``, ``training``) are attributes;
all of them load on first access, so ``import cmo_rl`` imports neither torch, TorchRL nor
safety-gymnasium. Map of the package and its keys: ``docs/index.md``, ``docs/design.md``.

>>> import cmo_rl
>>> from cmo_rl import LagrangianPPOLoss, MockCMDPEnv, PIDLagrangian, actor_critic_from_env
>>> env = MockCMDPEnv(num_envs=2, episode_length=3, seed=0)
>>> actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
>>> loss = LagrangianPPOLoss(actor, critic, cost_critic, multiplier=PIDLagrangian(cost_limit=1.0))
>>> cmo_rl.evaluation.constraint_satisfaction_rate([0.5, 2.0], limit=1.0)
0.5
"""

from cmo_rl.envs import compat as _compat  # noqa: F401  (Python 3.11 shim, before anything else)

# isort: split
import importlib
from typing import Any

__version__ = "0.1.0"

#: Submodules reachable as attributes (``cmo_rl.plotting``) without an explicit import.
_SUBMODULES = (
    "checkpoint",
    "config",
    "envs",
    "evaluation",
    "logging",
    "meta",
    "modules",
    "objectives",
    "plotting",
    "signals",
    "testing",
    "training",
)

#: Re-exported name -> the package that defines it (the union of those packages' ``__all__``;
#: ``tests/test_public_api.py`` checks the two stay equal).
_LAZY = {
    **dict.fromkeys(
        [
            "MOCK_ENV_ID",
            "SafetyGymnasiumBatchEnv",
            "enable_fast_reset",
            "fast_reset_enabled",
            "fast_reset_refusal",
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
        ],
        "cmo_rl.envs",
    ),
    **dict.fromkeys(
        [
            "ActorCritic",
            "ClippedModeNormal",
            "StateIndependentScale",
            "actor_critic_from_env",
            "make_actor",
            "make_cost_critic",
            "make_value_critic",
        ],
        "cmo_rl.modules",
    ),
    **dict.fromkeys(
        [
            "CPOStep",
            "CPOUpdate",
            "LagrangeMultiplier",
            "LagrangianPPOLoss",
            "PIDLagrangian",
            "conjugate_gradient",
            "cpo_step_direction",
            "fisher_vector_product",
            "lagrangian_advantage",
            "make_fisher_vector_product",
            "make_value_estimators",
            "normalize_advantages",
            "pid_lagrangian_step",
        ],
        "cmo_rl.objectives",
    ),
    **dict.fromkeys(
        [
            "CONSTRAINT_FEATURES",
            "COORDINATE_FEATURES",
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
            "bilevel_objective",
            "constraint_features",
            "coordinate_features",
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
        ],
        "cmo_rl.meta",
    ),
    "MockCMDPEnv": "cmo_rl.testing",
}

__all__ = [*_SUBMODULES, *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_LAZY})
