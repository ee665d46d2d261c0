"""A frozen meta-optimizer trains fresh policies: one run (:func:`run_frozen`) and the meta-test
of several optimizers on every task and seed (:func:`meta_test`).

Frozen: first-order gradients only, no meta-graph, the meta-parameters never change. For every
task of a :class:`~cmo_rl.meta.tasks.RolloutTaskSampler` and every held-out seed ``s``, each
optimizer trains a fresh policy for ``inner_rollouts`` inner rounds, then a fresh batch of the final
policy gives the measured return ``J_R``, cost ``J_C`` and the meta-objective

.. math::

    M = J_R - \\mu \\max(0, J_C - d).

Common random numbers: run ``(task, s)`` of every optimizer uses the same env seed, the same
initial policy and critics, and starts from ``torch.manual_seed(s)`` (action sampling), so the
paired difference ``M_learned - M_initial`` over seeds carries no seed-to-seed noise of its own.

Examples:
    >>> import functools
    >>> from cmo_rl.meta import RolloutTaskSampler, make_meta_optimizer
    >>> from cmo_rl.testing import MockCMDPEnv
    >>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv, episode_length=5)],
    ...                              episode_length=5, vector_envs_per_task=2, hidden_layers=(4,))
    >>> rows = meta_test({"initial": make_meta_optimizer("pid", init_etaR=0.05)}, sampler,
    ...                  seeds=[7, 8], inner_rollouts=2, cost_limit=1.0, mu=2.0)
    >>> [(r["optimizer"], r["seed"], len(r["rounds"])) for r in rows]
    [('initial', 7, 3), ('initial', 8, 3)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cmo_rl.meta.bilevel import InnerProblem, unroll
from cmo_rl.meta.functional import MetaOptimizer
from cmo_rl.meta.tasks import RolloutTaskSampler

__all__ = ["meta_test", "run_frozen"]


def run_frozen(
    meta_optimizer: MetaOptimizer,
    problem: InnerProblem,
    *,
    inner_rollouts: int,
    cost_limit: float,
    violation_scale: float | None = None,
    eval_episodes: int = 0,
) -> dict[str, Any]:
    """Train a fresh policy on ``problem`` with the frozen ``meta_optimizer`` for
    ``inner_rollouts`` rounds (:func:`~cmo_rl.meta.bilevel.unroll` with
    ``differentiable=False``).

    Returns ``{"rounds": [...], "return", "cost", "lambda"}``: the measured ``return`` /
    ``cost`` of the final policy (a fresh batch after the last update) and the final multiplier
    ``lambda``, the names of :func:`meta_test`'s rows; ``rounds[k]`` holds the same three of the
    policy after ``k`` updates, ``lambda`` the multiplier it was trained with
    (``rounds[inner_rollouts]`` is the final policy);
    with ``eval_episodes > 0`` and a problem with ``evaluate``, also
    ``eval/episode_return`` / ``eval/episode_cost`` of the final deterministic policy.

    Examples:
        >>> from cmo_rl.meta import ContextualBanditCMDP, make_meta_optimizer
        >>> out = run_frozen(make_meta_optimizer("pid"), ContextualBanditCMDP.sample(seed=0),
        ...                  inner_rollouts=3, cost_limit=3.0)
        >>> len(out["rounds"]), sorted(out["rounds"][0]), out["rounds"][0]["lambda"]
        (4, ['cost', 'lambda', 'return'], 0.0)
    """
    result = unroll(
        meta_optimizer,
        problem,
        inner_rollouts=inner_rollouts,
        unroll_steps=0,
        cost_limit=cost_limit,
        violation_scale=violation_scale,
        differentiable=False,
    )
    final = problem.sample_round(result.params).metrics
    lam = [meta_optimizer.init_lambda] + [r["lambda"] for r in result.rounds]
    measured = [*result.rounds, final]
    rounds = [
        {"return": r["return"], "cost": r["cost"], "lambda": lam_k}
        for r, lam_k in zip(measured, lam)
    ]
    out: dict[str, Any] = {
        "rounds": rounds,
        "return": final["return"],
        "cost": final["cost"],
        "lambda": float(result.lagrange_multiplier),
    }
    if eval_episodes > 0 and hasattr(problem, "evaluate"):
        out.update(problem.evaluate(result.params, eval_episodes))
    return out


def meta_test(
    optimizers: Mapping[str, MetaOptimizer],
    sampler: RolloutTaskSampler,
    *,
    seeds: Sequence[int],
    inner_rollouts: int,
    cost_limit: float,
    mu: float,
    violation_scale: float | None = None,
    eval_episodes: int = 0,
    held_out: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every ``optimizers[label]`` (frozen) on every task of ``sampler`` and every seed, with
    common random numbers (module docstring).

    Returns one row per ``(task, seed, label)``, in that order: ``optimizer``, ``env_id``,
    ``split`` (``"train"``, or ``"held-out"`` when the task is in ``held_out``), ``seed``,
    ``objective``, ``return``, ``cost``, ``lambda`` (final), ``rounds`` (per-round
    ``return``/``cost``/``lambda``, :func:`run_frozen`), ``env_steps`` and, with
    ``eval_episodes > 0``, ``eval_return``/``eval_cost`` (deterministic).

    Examples:
        >>> import functools
        >>> from cmo_rl.meta import PIDMetaOptimizer
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv)], episode_length=5,
        ...                              vector_envs_per_task=2, hidden_layers=(8,))
        >>> rows = meta_test({"pid": PIDMetaOptimizer()}, sampler, seeds=[0, 1], inner_rollouts=2,
        ...                  cost_limit=1.0, mu=10.0)
        >>> [(r["optimizer"], r["env_id"], r["seed"], r["env_steps"]) for r in rows]
        [('pid', 'MockCMDPEnv', 0, 30), ('pid', 'MockCMDPEnv', 1, 30)]
    """
    if inner_rollouts < 1:
        raise ValueError(f"inner_rollouts must be >= 1, got {inner_rollouts}")
    rows = []
    settings = sampler.settings
    devices = [settings.device] if settings.device.type == "cuda" else []
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
                        inner_rollouts=inner_rollouts,
                        cost_limit=cost_limit,
                        violation_scale=violation_scale,
                        eval_episodes=eval_episodes,
                    )
                ret, cost = float(out["return"]), float(out["cost"])
                row = {
                    "optimizer": label,
                    "env_id": env_id,
                    "split": "held-out" if env_id in held else "train",
                    "seed": int(seed),
                    "objective": ret - mu * max(0.0, cost - cost_limit),
                    "return": ret,
                    "cost": cost,
                    "lambda": float(out["lambda"]),
                    "rounds": out["rounds"],
                    "env_steps": (inner_rollouts + 1) * settings.steps_per_round,
                }
                if "eval/episode_return" in out:
                    row["eval_return"] = float(out["eval/episode_return"])
                    row["eval_cost"] = float(out["eval/episode_cost"])
                rows.append(row)
    return rows
