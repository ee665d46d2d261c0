"""Config schemas of the baseline recipes (``recipes/*.py``), checked by :mod:`cmo_rl.config`.

``COMMON`` holds the keys every recipe has (task, budget, model, critic training, evaluation,
logging, system); ``PPO``, ``LAGRANGE``, ``PID`` and ``CPO`` the algorithm-specific ones.
:func:`recipe_schema` merges them; :data:`RULES` are the checks that involve several keys,
reported together with the single-key problems in one :class:`cmo_rl.config.ConfigError`, which
the recipes' ``run_cli`` turns into one message and exit code 2; :func:`check_consistency`
adds the one check that needs the built env (the episode horizon).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmo_rl.config import ConfigError, Field, Rule, env_id_check, layer_widths, validate_config
from cmo_rl.envs.factory import MOCK_ENV_ID
from cmo_rl.lifecycle import RUN_FIELDS

__all__ = [
    "COLLECTOR",
    "COLLECTOR_BACKENDS",
    "COMMON",
    "CPO",
    "LAGRANGE",
    "LEARNED",
    "PID",
    "PPO",
    "RULES",
    "check_consistency",
    "collector_check",
    "recipe_schema",
    "seed_list",
]

_ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "silu", "leaky_relu")


def seed_list(values: list) -> bool:
    """``check`` of ``seeds``: a non-empty list of distinct seeds ``>= 0``.

    Examples:
        >>> seed_list([0, 1, 2])
        True
        >>> seed_list([0, 0])
        Traceback (most recent call last):
        ...
        ValueError: each seed at most once
    """
    if not values:
        raise ValueError("give at least one seed, e.g. seeds=[0,1,2] (or seeds=null: one run)")
    if any(v < 0 for v in values):
        raise ValueError("seeds must be >= 0")
    if len(set(values)) != len(values):
        raise ValueError("each seed at most once")
    return True


#: ``collector.backend`` values (:data:`cmo_rl.training.parallel.BACKENDS`).
COLLECTOR_BACKENDS = ("sync", "multi_sync", "ray")
#: The ``collector:`` block (:class:`cmo_rl.training.parallel.CollectorConfig`).
COLLECTOR: dict[str, Field] = {
    "backend": Field(str, choices=COLLECTOR_BACKENDS),
    "num_workers": Field(int, ge=1),
    "envs_per_worker": Field(int, ge=1, nullable=True),
    "ray_address": Field(str, nullable=True),
}


def collector_check(block: Mapping[str, Any]) -> bool:
    """``check`` of the optional ``collector:`` block: its keys follow :data:`COLLECTOR`.

    Examples:
        >>> collector_check({"backend": "multi_sync", "num_workers": 2, "envs_per_worker": None,
        ...                  "ray_address": None})
        True
        >>> collector_check({"backend": "mpi", "num_workers": 2, "envs_per_worker": None,
        ...                  "ray_address": None})
        Traceback (most recent call last):
        ...
        ValueError: collector.backend: got 'mpi', allowed: one of ['sync', 'multi_sync', 'ray']
    """
    try:
        validate_config(block, COLLECTOR)
    except ConfigError as err:
        raise ValueError("; ".join(f"collector.{p}" for p in err.problems)) from None
    return True


COMMON: dict[str, Field] = {
    # task
    "env_id": Field(str, check=env_id_check(MOCK_ENV_ID, state_vector=True)),
    "num_envs": Field(int, ge=1),
    "episode_length": Field(int, ge=1, nullable=True),
    "normalize_observations": Field(bool),
    "cost_limit": Field(float, ge=0),
    # budget
    "total_steps": Field(int, ge=1),
    "steps_per_epoch": Field(int, ge=1),
    # model
    "hidden_layers": Field(list, items=int, check=layer_widths),
    "activation": Field(str, choices=_ACTIVATIONS),
    "init_log_std": Field(float, ge=-20, le=2),
    "distribution": Field(str, choices=("normal", "tanh_normal"), required=False),  # absent: normal
    # optimisation of the networks trained by gradient steps
    "lr": Field(float, gt=0),
    "update_iters": Field(int, ge=1),
    "minibatch_size": Field(int, ge=1),
    "target_kl": Field(float, gt=0),
    "max_grad_norm": Field(float, gt=0, nullable=True),
    "gamma": Field(float, ge=0, le=1),
    "gae_lambda": Field(float, ge=0, le=1),
    "cost_gamma": Field(float, ge=0, le=1),
    "cost_gae_lambda": Field(float, ge=0, le=1),
    # evaluation, logging, checkpoints
    "eval_interval": Field(int, ge=1),
    "eval_episodes": Field(int, ge=1),
    **RUN_FIELDS,  # run directory, resume, checkpoints, nan_policy, progress, system
    "seeds": Field(list, items=int, nullable=True, required=False, check=seed_list),
    # collection: processes / Ray actors (optional block; absent: one process)
    "collector": Field(dict, required=False, check=collector_check),
}

PPO: dict[str, Field] = {
    "lr_decay": Field(bool),
    "clip_epsilon": Field(float, gt=0, lt=1),
    "entropy_coeff": Field(float, ge=0),
    "kl_early_stop": Field(bool),
    "compile": Field(bool, required=False),  # absent: false
}

LAGRANGE: dict[str, Field] = {
    "init_lambda": Field(float, ge=0),
    "lambda_lr": Field(float, gt=0),
    "lambda_optimizer": Field(str, choices=("adam", "sgd")),
}

PID: dict[str, Field] = {
    "pid_kp": Field(float, ge=0),
    "pid_ki": Field(float, ge=0),
    "pid_kd": Field(float, ge=0),
    "pid_d_delay": Field(int, ge=1),
    "pid_delta_p_ema_alpha": Field(float, ge=0, le=1),
    "pid_delta_d_ema_alpha": Field(float, ge=0, le=1),
    "init_lambda": Field(float, ge=0),
    "lambda_max": Field(float, gt=0),
}


def _readable_rule(value: str) -> bool:
    from cmo_rl import pretrained  # package data, imported when a rule is named

    pretrained.describe(value)  # raises ValueError naming the problem
    return True


def _readable_primal_rule(value: str) -> bool:
    from cmo_rl.objectives.learned_primal import load_primal_rule

    load_primal_rule(value)  # raises ValueError naming the file and the problem
    return True


#: The learned rules of ``recipes/meta_lagrangian.py``: the dual rule (a fresh one starts from
#: ``PID``) and, optionally, a primal rule in place of the actor's Adam.
LEARNED: dict[str, Field] = {
    **PID,
    "rule": Field(str, nullable=True, check=_readable_rule),
    "primal_rule": Field(str, nullable=True, check=_readable_primal_rule),
    "rule_hidden": Field(int, ge=0),
    "meta_lr": Field(float, ge=0),
    "mu": Field(float, ge=0),
}

CPO: dict[str, Field] = {
    "cg_iters": Field(int, ge=1),
    "cg_damping": Field(float, ge=0),
    "line_search_steps": Field(int, ge=1),
    "line_search_decay": Field(float, gt=0, lt=1),
    "kl_tolerance": Field(float, ge=1),
    "fvp_sample_freq": Field(int, ge=1),
}


def recipe_schema(*parts: Mapping[str, Field]) -> dict[str, Field]:
    """``COMMON`` merged with ``parts`` (a key in two parts must have the same rule).

    Examples:
        >>> sorted(set(recipe_schema(PPO, LAGRANGE)) - set(COMMON))[:4]
        ['clip_epsilon', 'compile', 'entropy_coeff', 'init_lambda']
    """
    schema = dict(COMMON)
    for part in parts:
        for key, rule in part.items():
            if key in schema and schema[key] != rule:
                raise ValueError(f"conflicting schema rules for {key!r}")
            schema[key] = rule
    return schema


def _epoch_fits_envs(cfg: Mapping[str, Any]) -> list[str]:
    num_envs, spe = int(cfg["num_envs"]), int(cfg["steps_per_epoch"])
    if spe % num_envs:
        return [f"steps_per_epoch: got {spe}, must be a multiple of num_envs ({num_envs})"]
    return []


def _budget_holds_an_epoch(cfg: Mapping[str, Any]) -> list[str]:
    spe = int(cfg["steps_per_epoch"])
    if int(cfg["total_steps"]) < spe:
        return [f"total_steps: got {cfg['total_steps']}, must be >= steps_per_epoch ({spe})"]
    return []


def _minibatch_fits_epoch(cfg: Mapping[str, Any]) -> list[str]:
    spe = int(cfg["steps_per_epoch"])
    if int(cfg["minibatch_size"]) > spe:
        return [f"minibatch_size: got {cfg['minibatch_size']}, must be <= steps_per_epoch ({spe})"]
    return []


def _compile_needs_a_population(cfg: Mapping[str, Any]) -> list[str]:
    if cfg.get("compile") and not cfg.get("seeds"):
        return ["compile: true compiles the population update; give seeds=[...] too"]
    return []


#: The checks of a recipe config that involve several keys (reported with the single-key
#: problems, in one message, by :func:`cmo_rl.config.validate_config`).
RULES = (
    Rule(("num_envs", "steps_per_epoch"), _epoch_fits_envs),
    Rule(("total_steps", "steps_per_epoch"), _budget_holds_an_epoch),
    Rule(("minibatch_size", "steps_per_epoch"), _minibatch_fits_epoch),
    Rule(("compile", "seeds"), _compile_needs_a_population),
)


def check_consistency(cfg: Mapping[str, Any], episode_horizon: int | None = None) -> None:
    """:data:`RULES`, and with ``episode_horizon`` known (the env is built) the check that every
    env finishes an episode each epoch (``steps_per_epoch / num_envs >= episode_horizon``),
    else the measured episode cost that drives the multiplier would never exist; raises one
    :class:`~cmo_rl.config.ConfigError`.

    Examples:
        >>> cfg = {"num_envs": 3, "steps_per_epoch": 100, "total_steps": 50, "minibatch_size": 64}
        >>> try:
        ...     check_consistency(cfg)
        ... except ConfigError as err:
        ...     print(err)
        invalid config (2 problems):
          - steps_per_epoch: got 100, must be a multiple of num_envs (3)
          - total_steps: got 50, must be >= steps_per_epoch (100)
    """
    problems = [p for rule in RULES for p in rule.check(cfg)]
    num_envs, spe = int(cfg["num_envs"]), int(cfg["steps_per_epoch"])
    if episode_horizon is not None and spe // num_envs < episode_horizon:
        problems.append(
            f"steps_per_epoch: got {spe}, i.e. {spe // num_envs} steps per env per epoch, fewer "
            f"than the episode horizon ({episode_horizon}): no episode would finish, so the "
            "episode cost would never be measured; raise steps_per_epoch, lower num_envs or "
            "set episode_length"
        )
    if problems:
        raise ConfigError(problems)
