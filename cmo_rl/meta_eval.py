"""Meta-test of a ``cmo`` run: frozen optimizers train fresh policies; before/after table.

For every task (the training tasks, then the held-out ``eval_env_ids``) and every held-out seed
``s``, each optimizer trains a fresh policy for ``budget`` inner rounds with its meta-parameters
frozen (:func:`cmo_rl.meta.run_frozen`), then a fresh batch of the final policy gives the
measured return ``J_R``, cost ``J_C`` and the meta-objective

.. math::

    M = J_R - \\mu \\max(0, J_C - d).

Common random numbers: run ``(task, s)`` of every optimizer uses the same env seed, the same
initial policy and critics, and starts from ``torch.manual_seed(s)`` (action sampling), so the
paired difference ``M_learned - M_initial`` over seeds carries no seed-to-seed noise of its own.

``compare_baselines``: PPO-Lag and PID-Lag (``recipes/ppo_lagrangian.py``,
``recipes/pid_lagrangian.py`` with their yaml defaults) train on the same task and seed with the
same env-step budget ``budget * episode_length * vector_envs_per_task``; every optimizer is then
compared on deterministic evaluation episodes (``eval/episode_return``, ``eval/episode_cost``).

>>> import functools
>>> from cmo_rl.meta import RolloutTaskSampler, make_meta_optimizer
>>> from cmo_rl.testing import MockCMDPEnv
>>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv, episode_length=5)],
...                              episode_length=5, vector_envs_per_task=2, hidden_layers=(4,))
>>> rows = frozen_runs({"initial": make_meta_optimizer("pid", init_etaR=0.05)}, sampler,
...                    seeds=[7, 8], budget=2, cost_limit=1.0, mu=2.0)
>>> [(r["optimizer"], r["seed"], len(r["rounds"])) for r in rows]
[('initial', 7, 3), ('initial', 8, 3)]
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cmo_rl.evaluation import mean_ci95
from cmo_rl.meta import RolloutTaskSampler, run_frozen
from cmo_rl.meta.functional import MetaOptimizer

__all__ = [
    "BASELINES",
    "baseline_runs",
    "format_meta_test_table",
    "frozen_runs",
    "summarize_meta_test",
]

#: Baseline recipes of the equal-budget comparison: (label, recipe file stem).
BASELINES = (("ppo_lag", "ppo_lagrangian"), ("pid_lag", "pid_lagrangian"))
_RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def frozen_runs(
    optimizers: Mapping[str, MetaOptimizer],
    sampler: RolloutTaskSampler,
    *,
    seeds: Sequence[int],
    budget: int,
    cost_limit: float,
    mu: float,
    violation_scale: float | None = None,
    eval_episodes: int = 0,
    held_out: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every ``optimizers[label]`` (frozen) on every task of ``sampler`` and every seed.

    Returns one row per ``(task, seed, label)``: ``optimizer``, ``env_id``, ``split``
    (``"train"`` or ``"held-out"`` when the task is in ``held_out``), ``seed``, ``objective``,
    ``return``, ``cost``, ``lambda`` (final), ``rounds`` (per-round ``return``/``cost``/``lambda``),
    ``env_steps`` and, with ``eval_episodes > 0``, ``eval_return``/``eval_cost`` (deterministic).

    >>> import functools
    >>> from cmo_rl.meta import PIDMetaOptimizer
    >>> from cmo_rl.testing import MockCMDPEnv
    >>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv)], episode_length=5,
    ...                              vector_envs_per_task=2, hidden_layers=(8,))
    >>> rows = frozen_runs({"pid": PIDMetaOptimizer()}, sampler, seeds=[0, 1], budget=2,
    ...                    cost_limit=1.0, mu=10.0)
    >>> [(r["optimizer"], r["env_id"], r["seed"], r["env_steps"]) for r in rows]
    [('pid', 'MockCMDPEnv', 0, 30), ('pid', 'MockCMDPEnv', 1, 30)]
    """
    rows = []
    devices = [sampler.device] if sampler.device.type == "cuda" else []
    held = set(held_out)
    for index in range(len(sampler.env_ids)):
        env_id = sampler.env_name(index)
        for seed in seeds:
            for label, optimizer in optimizers.items():
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(int(seed))
                    problem = sampler(int(seed), env_index=index)
                    out = run_frozen(
                        optimizer,
                        problem,
                        budget=budget,
                        cost_limit=cost_limit,
                        violation_scale=violation_scale,
                        eval_episodes=eval_episodes,
                    )
                ret, cost = float(out["final_return"]), float(out["final_cost"])
                row = {
                    "optimizer": label,
                    "env_id": env_id,
                    "split": "held-out" if env_id in held else "train",
                    "seed": int(seed),
                    "objective": ret - mu * max(0.0, cost - cost_limit),
                    "return": ret,
                    "cost": cost,
                    "lambda": float(out["final_lambda"]),
                    "rounds": out["rounds"],
                    "env_steps": (budget + 1)
                    * sampler.episode_length
                    * sampler.vector_envs_per_task,
                }
                if "eval/episode_return" in out:
                    row["eval_return"] = float(out["eval/episode_return"])
                    row["eval_cost"] = float(out["eval/episode_cost"])
                rows.append(row)
    return rows


def _load_recipe(stem: str) -> Any:
    path = _RECIPES_DIR / f"{stem}.py"
    if not path.is_file():
        raise ValueError(
            f"meta_test.compare_baselines needs the baseline recipe {path}, which is missing "
            "(it ships with a source checkout of cmo_rl, not with the installed package)"
        )
    spec = importlib.util.spec_from_file_location(f"cmo_recipe_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline_runs(
    env_ids: Sequence[str],
    *,
    seeds: Sequence[int],
    budget: int,
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
    baselines: Sequence[tuple[str, str]] = BASELINES,
) -> list[dict[str, Any]]:
    """PPO-Lag and PID-Lag on every task and seed with ``budget`` epochs of
    ``episode_length * vector_envs_per_task`` env steps (the meta-test's training budget).

    Each run is the baseline recipe's own ``train(cfg)`` with its yaml defaults except the
    task, budget, horizon, limit, discount, network and seed; its run directory goes under
    ``run_root``. Rows: ``optimizer``, ``env_id``, ``split``, ``seed``, ``eval_return``,
    ``eval_cost`` (deterministic, after the last update), ``env_steps``, ``run_dir``.
    """
    import pandas as pd
    from omegaconf import OmegaConf

    from cmo_rl.config import validate_config

    held = set(held_out)
    steps_per_epoch = int(episode_length) * int(vector_envs_per_task)
    rows = []
    for label, stem in baselines:
        module = _load_recipe(stem)
        base = OmegaConf.load(_RECIPES_DIR / "config" / f"{stem}.yaml")
        for key in ("defaults", "hydra"):
            base.pop(key, None)
        for env_id in env_ids:
            for seed in seeds:
                overrides = {
                    "env_id": env_id,
                    "num_envs": int(vector_envs_per_task),
                    "max_episode_steps": int(episode_length),
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": steps_per_epoch * int(budget),
                    "minibatch_size": min(int(base.minibatch_size), steps_per_epoch),
                    "cost_limit": float(cost_limit),
                    "gamma": float(gamma),
                    "gae_lambda": float(gae_lambda),
                    "cost_gamma": float(gamma),
                    "cost_gae_lambda": float(gae_lambda),
                    "hidden_layers": [int(h) for h in hidden_layers],
                    "eval_interval": int(budget),
                    "eval_episodes": max(1, int(eval_episodes)),
                    "checkpoint_interval": int(budget),
                    "run_root": str(run_root),
                    "progress": False,
                    "seed": int(seed),
                    "device": str(device),
                    "torch_threads": int(torch_threads),
                }
                cfg = OmegaConf.merge(base, overrides)
                validate_config(cfg, module.SCHEMA)
                with torch.random.fork_rng():
                    run_dir = module.train(cfg)
                frame = pd.read_csv(Path(run_dir) / "metrics.csv")
                last = frame.dropna(subset=["eval/episode_return"]).iloc[-1]
                rows.append(
                    {
                        "optimizer": label,
                        "env_id": env_id,
                        "split": "held-out" if env_id in held else "train",
                        "seed": int(seed),
                        "eval_return": float(last["eval/episode_return"]),
                        "eval_cost": float(last["eval/episode_cost"]),
                        "env_steps": steps_per_epoch * int(budget),
                        "run_dir": str(run_dir),
                    }
                )
    return rows


def _paired(rows: Sequence[Mapping[str, Any]], a: str, b: str, metric: str) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``metric[b] - metric[a]`` paired by (task, seed)."""
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if metric in r:
            by_key.setdefault((r["env_id"], r["seed"]), {})[r["optimizer"]] = r[metric]
    diffs = [v[b] - v[a] for v in by_key.values() if a in v and b in v]
    if not diffs:
        return math.nan, math.nan
    return mean_ci95(diffs)


def summarize_meta_test(
    rows: Sequence[Mapping[str, Any]], *, before: str = "initial", after: str = "learned"
) -> list[dict[str, Any]]:
    """Per group (each task, then ``all train`` / ``all held-out``) and optimizer: the mean of
    every metric over seeds; plus a ``change`` entry: paired ``after - before`` mean and CI.

    >>> rows = [dict(optimizer=o, env_id="T", split="train", seed=s, objective=v)
    ...         for o, s, v in [("initial", 0, 1.0), ("learned", 0, 3.0),
    ...                         ("initial", 1, 2.0), ("learned", 1, 3.0)]]
    >>> [(g["group"], g["optimizer"], g["objective"]) for g in summarize_meta_test(rows)][:3]
    [('T', 'initial', 1.5), ('T', 'learned', 3.0), ('T', 'change', 1.5)]
    """
    metrics = ("objective", "return", "cost", "eval_return", "eval_cost")
    groups: list[tuple[str, list[Mapping[str, Any]]]] = []
    for env_id in dict.fromkeys(r["env_id"] for r in rows):
        groups.append((env_id, [r for r in rows if r["env_id"] == env_id]))
    for split in ("train", "held-out"):
        members = [r for r in rows if r["split"] == split]
        if len({r["env_id"] for r in members}) > 1:
            groups.append((f"all {split}", members))
    out = []
    for name, members in groups:
        split = members[0]["split"]
        for label in dict.fromkeys(r["optimizer"] for r in members):
            mine = [r for r in members if r["optimizer"] == label]
            entry: dict[str, Any] = {"group": name, "split": split, "optimizer": label}
            entry["seeds"] = len({r["seed"] for r in mine})
            for m in metrics:
                values = [r[m] for r in mine if m in r]
                entry[m] = sum(values) / len(values) if values else math.nan
            out.append(entry)
        labels = {r["optimizer"] for r in members}
        if before in labels and after in labels:
            entry = {"group": name, "split": split, "optimizer": "change"}
            for m in metrics:
                mean, half = _paired(members, before, after, m)
                entry[m], entry[f"{m}_ci95"] = mean, half
            out.append(entry)
    return out


def _cell(value: float, half: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:+.4g}" if half is not None else f"{value:.4g}"
    if half is not None and math.isfinite(half):
        text += f" ± {half:.2g}"
    return text


def format_meta_test_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of :func:`summarize_meta_test` (``change`` rows: paired
    difference ± 95% CI half-width over seeds).

    >>> print(format_meta_test_table([{"group": "T", "split": "train", "optimizer": "initial",
    ...     "objective": 1.5, "return": 2.0, "cost": 0.5}]))  # doctest: +NORMALIZE_WHITESPACE
    task  split  optimizer  objective  return  cost  eval return  eval cost
    T     train  initial    1.5        2       0.5   -            -
    """
    header = [
        "task",
        "split",
        "optimizer",
        "objective",
        "return",
        "cost",
        "eval return",
        "eval cost",
    ]
    lines = [header]
    for e in summary:
        change = e["optimizer"] == "change"
        cells = [
            _cell(e.get(m, math.nan), e.get(f"{m}_ci95", math.nan) if change else None)
            for m in ("objective", "return", "cost", "eval_return", "eval_cost")
        ]
        lines.append([str(e["group"]), str(e["split"]), str(e["optimizer"]), *cells])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines
    )
