"""The ``cmo`` meta-test's equal-budget baselines (``meta_test.compare_baselines``).

PPO-Lag and PID-Lag train on every task and seed of the meta-test with the same env-step
budget as the frozen optimizers (``inner_rollouts`` epochs of ``episode_length * vector_envs_per_task``
steps), with the library loop of their recipes
(:func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo` and the recipes' multipliers,
:func:`~cmo_rl.training.lagrangian_ppo.make_lagrange_multiplier`,
:func:`~cmo_rl.training.lagrangian_ppo.make_pid_multiplier`), each on its recipe's yaml
defaults (``recipes/config/<recipe>.yaml``) except the task, budget, episode length, limit, discount,
network and seed, checked with the recipe's schema. The rows join the meta-test's table
(:func:`cmo_rl.meta.report.run_meta_test`, ``baselines=``) in its eval columns.

This is the program layer: it joins the meta-learning wing (:mod:`cmo_rl.meta`) and the
baseline wing (:mod:`cmo_rl.training`), which never import each other.

Examples:
    >>> [(b.label, b.recipe) for b in BASELINES]
    [('ppo_lag', 'ppo_lagrangian'), ('pid_lag', 'pid_lagrangian')]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmo_rl.config import Field, validate_config
from cmo_rl.training.lagrangian_ppo import (
    MultiplierFactory,
    MultiplierUpdate,
    make_lagrange_multiplier,
    make_pid_multiplier,
    pid_update,
    step_multiplier,
    train_lagrangian_ppo,
)
from cmo_rl.training.schema import LAGRANGE, PID, PPO, recipe_schema

__all__ = ["BASELINES", "Baseline", "baseline_runner", "baseline_runs", "recipe_defaults"]

#: The recipes' yaml configs: data of a source checkout (the recipes are not package modules).
RECIPE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"


@dataclass(frozen=True)
class Baseline:
    """One baseline of the comparison: its label (the ``optimizer`` column and run-directory
    name), the recipe whose yaml defaults it takes, its schema and its multiplier.

    Examples:
        >>> ppo_lag = BASELINES[0]
        >>> ppo_lag.config_path.name, "lambda_lr" in ppo_lag.schema
        ('ppo_lagrangian.yaml', True)
    """

    label: str
    recipe: str
    schema: Mapping[str, Field]
    make_multiplier: MultiplierFactory
    update_multiplier: MultiplierUpdate = step_multiplier

    @property
    def config_path(self) -> Path:
        """``recipes/config/<recipe>.yaml``."""
        return RECIPE_CONFIG_DIR / f"{self.recipe}.yaml"


#: PPO-Lag and PID-Lag, as ``recipes/ppo_lagrangian.py`` and ``recipes/pid_lagrangian.py`` run them.
BASELINES = (
    Baseline("ppo_lag", "ppo_lagrangian", recipe_schema(PPO, LAGRANGE), make_lagrange_multiplier),
    Baseline("pid_lag", "pid_lagrangian", recipe_schema(PPO, PID), make_pid_multiplier, pid_update),
)


def recipe_defaults(recipe: str, *, needed_by: str = "meta_test.compare_baselines") -> Any:
    """``recipes/config/<recipe>.yaml`` without its Hydra-only keys (``defaults``, ``hydra``);
    a missing file (an installed package without the source checkout) is a ``ValueError``
    naming ``needed_by``.

    Examples:
        >>> cfg = recipe_defaults("pid_lagrangian")
        >>> cfg.pid_kp, "hydra" in cfg
        (0.1, False)
    """
    from omegaconf import OmegaConf

    path = RECIPE_CONFIG_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise ValueError(
            f"{needed_by} needs the recipe config {path}, which is missing (it ships with a "
            "source checkout of cmo_rl, not with the installed package)"
        )
    base = OmegaConf.load(path)
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    return base


def baseline_runs(
    env_ids: Sequence[str],
    *,
    seeds: Sequence[int],
    inner_rollouts: int,
    episode_length: int,
    vector_envs_per_task: int,
    cost_limit: float,
    gamma: float,
    gae_lambda: float,
    hidden_layers: Sequence[int],
    eval_episodes: int,
    run_root: str | Path,
    device: str = "cpu",
    torch_threads: int = 1,
    held_out: Sequence[str] = (),
    baselines: Sequence[Baseline] = BASELINES,
) -> list[dict[str, Any]]:
    """Every baseline on every task and seed with ``inner_rollouts`` epochs of
    ``episode_length * vector_envs_per_task`` env steps (the meta-test's training budget).

    Each run is :func:`~cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo` with the recipe's
    yaml defaults except the task, budget, episode length, limit, discount, network and seed; its run
    directory goes under ``run_root``. Rows: ``optimizer``, ``env_id``, ``split``, ``seed``,
    ``eval_return``, ``eval_cost`` (deterministic, after the last update), ``env_steps``,
    ``run_dir``.
    """
    import pandas as pd
    from omegaconf import OmegaConf

    held = set(held_out)
    steps_per_epoch = int(episode_length) * int(vector_envs_per_task)
    rows = []
    for baseline in baselines:
        base = recipe_defaults(baseline.recipe)
        for env_id in env_ids:
            for seed in seeds:
                overrides = {
                    "env_id": env_id,
                    "num_envs": int(vector_envs_per_task),
                    "episode_length": int(episode_length),
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": steps_per_epoch * int(inner_rollouts),
                    "minibatch_size": min(int(base.minibatch_size), steps_per_epoch),
                    "cost_limit": float(cost_limit),
                    "gamma": float(gamma),
                    "gae_lambda": float(gae_lambda),
                    "cost_gamma": float(gamma),
                    "cost_gae_lambda": float(gae_lambda),
                    "hidden_layers": [int(h) for h in hidden_layers],
                    "eval_interval": int(inner_rollouts),
                    "eval_episodes": max(1, int(eval_episodes)),
                    "checkpoint_interval": int(inner_rollouts),
                    "run_root": str(run_root),
                    "progress": False,
                    "seed": int(seed),
                    "device": str(device),
                    "torch_threads": int(torch_threads),
                }
                cfg = OmegaConf.merge(base, overrides)
                validate_config(cfg, baseline.schema)
                with torch.random.fork_rng():
                    run_dir = train_lagrangian_ppo(
                        cfg,
                        recipe=baseline.label,
                        make_multiplier=baseline.make_multiplier,
                        update_multiplier=baseline.update_multiplier,
                    )
                frame = pd.read_csv(Path(run_dir) / "metrics.csv")
                last = frame.dropna(subset=["eval/episode_return"]).iloc[-1]
                rows.append(
                    {
                        "optimizer": baseline.label,
                        "env_id": env_id,
                        "split": "held-out" if env_id in held else "train",
                        "seed": int(seed),
                        "eval_return": float(last["eval/episode_return"]),
                        "eval_cost": float(last["eval/episode_cost"]),
                        "env_steps": steps_per_epoch * int(inner_rollouts),
                        "run_dir": str(run_dir),
                    }
                )
    return rows


def baseline_runner(cfg: Mapping[str, Any], run_root: str | Path) -> Callable[..., list[dict]]:
    """:func:`baseline_runs` with the task settings of the ``cmo`` config ``cfg``, runs under
    ``run_root``: the ``baselines`` argument of :func:`cmo_rl.meta.report.run_meta_test`
    (called as ``runner(env_ids, seeds=, inner_rollouts=, held_out=)``).

    Examples:
        >>> runner = baseline_runner({"episode_length": 8, "vector_envs_per_task": 2,
        ...     "cost_limit": 1.0, "gamma": 0.99, "gae_lambda": 0.95, "hidden_layers": [8],
        ...     "eval_episodes": 1, "device": "cpu", "torch_threads": 1}, "runs/baselines")
        >>> runner.keywords["episode_length"], runner.keywords["run_root"]
        (8, 'runs/baselines')
    """
    return functools.partial(
        baseline_runs,
        episode_length=int(cfg["episode_length"]),
        vector_envs_per_task=int(cfg["vector_envs_per_task"]),
        cost_limit=float(cfg["cost_limit"]),
        gamma=float(cfg["gamma"]),
        gae_lambda=float(cfg["gae_lambda"]),
        hidden_layers=list(cfg["hidden_layers"]),
        eval_episodes=int(cfg["eval_episodes"]),
        run_root=run_root,
        device=str(cfg["device"]),
        torch_threads=int(cfg["torch_threads"]),
    )
