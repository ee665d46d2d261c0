"""Building blocks of the baseline recipes (``recipes/*.py``), one concept per module.

==========================  ========================================================================
module                      what
==========================  ========================================================================
``collection``              ``make_collector`` (one re-seeded batch per epoch), ``finished_episodes``
``onpolicy``                ``compute_advantages``, ``minibatch_epochs`` (KL early stop), learning rates
``parallel``                collection in worker processes or Ray actors; meta-batch tasks in workers
``rollout_eval``            ``evaluate_policy`` (deterministic episodes), ``sync_observation_norm``
``guard``                   ``NonFiniteGuard``: skip or stop on NaN/inf losses and gradients
``lagrangian_ppo``          ``train_lagrangian_ppo``: the loop of the PPO-Lag and PID-Lag recipes
``run_state``               checkpoint snapshot/restore, the config of a resumed run
``run``                     ``TrainingRun``: run dir, logger, evaluation, checkpoints, shutdown
``schema``                  config schemas of the recipes and cross-key checks
``setup``                   seeds, threads, envs, networks, estimators, collector from a config
==========================  ========================================================================

Modules are imported explicitly (``from cmo_rl.training.run import TrainingRun``), so importing
this package stays light.
"""

import importlib
from typing import Any

_MODULES = (
    "collection",
    "guard",
    "lagrangian_ppo",
    "onpolicy",
    "parallel",
    "rollout_eval",
    "run",
    "run_state",
    "schema",
    "setup",
)

#: Re-exported name -> its module, loaded on first access (``cmo_rl.training.TrainingRun``).
_LAZY = {
    **dict.fromkeys(
        ["EpisodeStats", "epoch_seed", "finished_episodes", "make_collector"],
        "cmo_rl.training.collection",
    ),
    **dict.fromkeys(
        ["NAN_POLICIES", "NonFiniteError", "NonFiniteGuard", "exit_on_nonfinite"],
        "cmo_rl.training.guard",
    ),
    **dict.fromkeys(["step_multiplier", "train_lagrangian_ppo"], "cmo_rl.training.lagrangian_ppo"),
    **dict.fromkeys(
        [
            "CriticLoss",
            "approx_kl",
            "compute_advantages",
            "linear_lr",
            "make_optimizer",
            "minibatch_epochs",
            "set_lr",
            "train_metrics",
        ],
        "cmo_rl.training.onpolicy",
    ),
    **dict.fromkeys(
        [
            "BACKENDS",
            "CollectorConfig",
            "TaskPool",
            "WorkerCollector",
            "WorkerEnv",
            "WorkerSpec",
            "shutdown_collector",
            "task_action_seed",
            "worker_action_seed",
            "worker_spec",
        ],
        "cmo_rl.training.parallel",
    ),
    **dict.fromkeys(
        ["eval_metrics", "evaluate_policy", "sync_observation_norm"], "cmo_rl.training.rollout_eval"
    ),
    "TrainingRun": "cmo_rl.training.run",
    **dict.fromkeys(
        [
            "RESUMABLE_KEYS",
            "hydra_override_keys",
            "resolve_resume_config",
            "restore_snapshot",
            "take_snapshot",
        ],
        "cmo_rl.training.run_state",
    ),
    **dict.fromkeys(
        [
            "COLLECTOR",
            "COLLECTOR_BACKENDS",
            "COMMON",
            "CPO",
            "LAGRANGE",
            "PID",
            "PPO",
            "check_consistency",
            "collector_check",
            "recipe_schema",
        ],
        "cmo_rl.training.schema",
    ),
    **dict.fromkeys(
        [
            "make_agent",
            "make_envs",
            "make_estimators",
            "make_run_collector",
            "seed_everything",
            "set_torch_threads",
        ],
        "cmo_rl.training.setup",
    ),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES, *_LAZY})
