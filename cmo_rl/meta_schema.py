"""Config schema of the ``cmo`` meta-training program (``cmo_rl/conf/default.yaml``).

:data:`SCHEMA` declares one :class:`cmo_rl.config.Field` per key (``meta_test`` is a sub-config);
:func:`check_meta_config` runs it plus the checks that involve several keys, and raises one
:class:`cmo_rl.config.ConfigError` listing every problem (the CLI prints it and exits with code 2).
``docs/configuration.md`` explains every key.

Examples:
    >>> from omegaconf import OmegaConf
    >>> from cmo_rl.config import ConfigError
    >>> cfg = OmegaConf.load(DEFAULT_CONFIG)
    >>> _ = cfg.pop("defaults"), cfg.pop("hydra")
    >>> check_meta_config(cfg)
    >>> cfg.meta_batch_size, cfg.meta_optimizer_type = 0, "lsmt"
    >>> try:
    ...     check_meta_config(cfg)
    ... except ConfigError as err:
    ...     print(err)
    invalid config (2 problems):
      - meta_optimizer_type: got 'lsmt', allowed: one of ['lstm', 'pid'] (did you mean 'lstm'?)
      - meta_batch_size: got 0, out of range; allowed: int >= 1
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cmo_rl.config import Field, Rule, env_id_check, layer_widths, validate_config
from cmo_rl.envs.factory import MOCK_ENV_ID
from cmo_rl.lifecycle import RUN_FIELDS

#: What ``es.target`` meta-trains: the multiplier's rule (a
#: :class:`~cmo_rl.objectives.learned_dual.LearnedLagrangian`) or the actor's optimizer (a
#: :class:`~cmo_rl.objectives.learned_primal.LearnedPrimalRule`).
ES_TARGETS = ("dual", "primal")

__all__ = [
    "CONF_DIR",
    "DEFAULT_CONFIG",
    "ES_TARGETS",
    "RESUMABLE_KEYS",
    "RULES",
    "SCHEMA",
    "by_optimizer_type",
    "check_meta_config",
]

#: The folder of the Hydra config (package data) and its main file.
CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "default.yaml"

_env_id = env_id_check(MOCK_ENV_ID, state_vector=True)


def by_optimizer_type(kind: str, lstm: Any, pid: Any) -> Any:
    """OmegaConf resolver ``${by_type:${meta_optimizer_type},<lstm value>,<pid value>}``.

    A preset value that depends on the meta-optimizer type, e.g. ``meta_lr``: Adam moves every
    meta-parameter by about ``meta_lr`` per step, a relative change for the PID's 5 log-gains
    but an absolute one for each of the LSTM's thousands of weights. Registered on import of
    this module (the ``cmo`` program imports it before Hydra composes the config).

    Examples:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"meta_optimizer_type": "pid",
        ...                         "meta_lr": "${by_type:${meta_optimizer_type},0.02,0.15}"})
        >>> cfg.meta_lr, OmegaConf.merge(cfg, {"meta_optimizer_type": "lstm"}).meta_lr
        (0.15, 0.02)
    """
    return pid if kind == "pid" else lstm


OmegaConf.register_new_resolver("by_type", by_optimizer_type, replace=True)


def env_ids_check(values: list) -> bool:
    """``check`` for a list of task ids: each one valid (close-match hints), no duplicates.

    Examples:
        >>> env_ids_check(["MockCMDP-v0", "SafetyHopperVelocity-v1"])
        True
        >>> env_ids_check(["SafetyHoperVelocity-v1"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: item 0: unknown Safety-Gymnasium task id 'SafetyHoperVelocity-v1'; did you mean ...
    """
    for i, value in enumerate(values):
        try:
            _env_id(value)
        except ValueError as err:
            raise ValueError(f"item {i}: {err}") from None
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"duplicate task ids {duplicates}")
    return True


def _non_empty(values: list) -> bool:
    if not values:
        raise ValueError("needs at least one entry")
    return True


def _train_env_ids(values: list) -> bool:
    return _non_empty(values) and env_ids_check(values)


def _seeds(values: list) -> bool:
    if not values or any(v < 0 for v in values):
        raise ValueError("needs at least one seed, each >= 0")
    if len(set(values)) != len(values):
        raise ValueError("seeds must be distinct")
    return True


SCHEMA: dict[str, Any] = {
    # tasks
    "env_ids": Field(list, items=str, check=_train_env_ids),
    "eval_env_ids": Field(list, items=str, check=env_ids_check),
    "vector_envs_per_task": Field(int, ge=1),
    "episode_length": Field(int, ge=1),
    "balanced_tasks": Field(bool),
    # meta-training algorithm
    "meta_algorithm": Field(str, choices=("bilevel", "es", "online")),
    # meta-optimizer
    "meta_optimizer_type": Field(str, choices=("lstm", "pid")),
    "hidden_size": Field(int, ge=1),
    "lstm_layers": Field(int, ge=1),
    "alpha_theta": Field(float, gt=0),
    "alpha_lambda": Field(float, gt=0),
    "init_KP": Field(float, gt=0),
    "init_KI": Field(float, gt=0),
    "init_KD": Field(float, gt=0),
    "init_etaR": Field(float, gt=0),
    "init_etaC": Field(float, gt=0),
    "init_lambda": Field(float, ge=0),
    # bilevel training
    "total_meta_iters": Field(int, ge=1),
    "meta_batch_size": Field(int, ge=1),
    "inner_rollouts": Field(int, ge=1),
    "unroll_steps": Field(int, ge=1),
    "meta_lr": Field(float, gt=0),
    "meta_grad_clip": Field(float, gt=0),
    "mu": Field(float, ge=0),
    "cost_limit": Field(float, ge=0),
    "violation_scale": Field(float, gt=0, nullable=True),
    "gamma": Field(float, gt=0, le=1),
    "gae_lambda": Field(float, ge=0, le=1),
    "hidden_layers": Field(list, items=int, check=layer_widths),
    "critic_lr": Field(float, gt=0),
    "critic_steps": Field(int, ge=0),
    # evolution strategies (meta_algorithm=es)
    "es": {
        "generations": Field(int, ge=1),
        "pairs": Field(int, ge=1),
        "seeds": Field(int, ge=1),
        "sigma": Field(float, gt=0),
        "lr": Field(float, gt=0),
        "nu": Field(float, ge=0),
        "rule_hidden": Field(int, ge=0),
        "target": Field(str, choices=ES_TARGETS),
        "primal_hidden": Field(int, ge=1),
        "inner": Field(dict),
    },
    # online meta-gradient through a chain of runs (meta_algorithm=online)
    "online": {
        "passes": Field(int, ge=1),
        "seeds": Field(int, ge=1),
        "lr": Field(float, gt=0),
        "rule_hidden": Field(int, ge=0),
        "inner": Field(dict),
    },
    # meta-test
    "eval_episodes": Field(int, ge=0),
    "meta_test": {
        "enabled": Field(bool),
        "rounds": Field(int, ge=0),
        "seeds": Field(list, items=int, check=_seeds),
        "compare_baselines": Field(bool),
    },
    # logging, checkpoints
    "log_interval": Field(int, ge=1),
    **RUN_FIELDS,  # run directory, resume, checkpoints, nan_policy, progress, system
}

#: Keys a resumed run may change: they do not alter the meta-training trajectory (or, like
#: ``total_meta_iters``, only extend it). Every other key keeps the stored run's value.
RESUMABLE_KEYS = frozenset(
    {
        "total_meta_iters",
        "resume",
        "run_root",
        "device",
        "torch_threads",
        "progress",
        "log_interval",
        "checkpoint_interval",
        "keep_checkpoints",
        "nan_policy",
        "eval_env_ids",
        "eval_episodes",
        "meta_test",
        "es",  # es.generations extends a run; other es.* keys change its remaining generations
        "online",  # online.passes extends a chain; other online.* keys change its later links
    }
)


def _held_out_is_held_out(cfg: Mapping[str, Any]) -> list[str]:
    overlap = sorted(set(cfg["env_ids"]) & set(cfg["eval_env_ids"]))
    if not overlap:
        return []
    return [
        f"eval_env_ids: {overlap} are also training tasks (env_ids); the meta-test runs on "
        "every training task anyway, eval_env_ids lists the held-out ones"
    ]


def _rule_learners_run_on_cpu(cfg: Mapping[str, Any]) -> list[str]:
    algorithm = cfg["meta_algorithm"]
    if algorithm in ("es", "online") and str(cfg["device"]) != "cpu":
        return [
            f"device: got {cfg['device']!r}; meta_algorithm={algorithm} trains its "
            "PPO-Lagrangian learners (and meta-tests them as one population) on the CPU "
            "(device=cpu)"
        ]
    return []


#: The checks that involve several keys, reported with the single-key problems.
RULES = (
    Rule(("env_ids", "eval_env_ids"), _held_out_is_held_out),
    Rule(("meta_algorithm", "device"), _rule_learners_run_on_cpu),
)


def check_meta_config(cfg: Mapping[str, Any]) -> None:
    """:data:`SCHEMA` and :data:`RULES`: one :class:`ConfigError` listing every problem,
    single-key and cross-key together.

    Cross-key checks: ``eval_env_ids`` must not repeat a training task (a held-out task is
    held out); ``meta_algorithm=es`` and ``online`` run on ``device=cpu``.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> from cmo_rl.config import ConfigError
        >>> cfg = OmegaConf.load(DEFAULT_CONFIG)
        >>> _ = cfg.pop("defaults"), cfg.pop("hydra")
        >>> cfg.eval_env_ids = [cfg.env_ids[0]]  # a held-out task that is also a training task
        >>> cfg.meta_lr = -1.0
        >>> try:
        ...     check_meta_config(cfg)
        ... except ConfigError as err:
        ...     print([p.split(":")[0] for p in err.problems])
        ['meta_lr', 'eval_env_ids']
    """
    validate_config(cfg, SCHEMA, RULES)
