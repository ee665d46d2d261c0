"""The bilevel problem: unroll a meta-optimizer on one task, score the final policy.

Read top to bottom: what a problem provides (:class:`InnerRound`, :class:`InnerProblem`), the
violation and the meta-objective, one inner step, the truncated unroll, the bilevel objective.

Inner loop (one task), for ``k = 0 .. K-1`` (``K = inner_rollouts``):

.. math::

    \\text{data}_k &\\sim \\pi_{\\mathrm{stopgrad}(\\theta_k)} \\\\
    \\hat J_R(\\theta), \\hat J_C(\\theta) &: \\text{differentiable estimates on data}_k
        \\text{ (value at } \\theta_k \\text{ = measured return / cost)} \\\\
    g_R = \\nabla_\\theta \\hat J_R(\\theta_k),&\\quad g_C = \\nabla_\\theta \\hat J_C(\\theta_k)
        \\quad (\\texttt{create\\_graph=True}) \\\\
    e_k &= (\\hat J_C(\\theta_k) - d) / s \\\\
    (\\theta_{k+1}, \\lambda_{k+1}, s_{k+1}) &= \\mathrm{MetaOpt}_\\phi(\\theta_k, g_R, g_C,
        \\lambda_k, e_k, s_k)

Meta-objective on the final policy, with a fresh batch collected by :math:`\\theta_K`:

.. math::

    M(\\phi) = \\hat J_R(\\theta_K) - \\mu \\max(0, \\hat J_C(\\theta_K) - d)

Truncation: only the last ``unroll_steps`` updates are differentiated. At the start of that
window ``theta``, ``lambda`` and the meta-state are detached (earlier steps run under
``torch.no_grad`` with first-order gradients only), so memory grows with ``unroll_steps``, not
``K``. Dependencies kept: through every update in the window, through the gradients'
dependence on ``theta`` (second-order terms of the surrogates), and through the violation
``e_k`` (the surrogate's value at ``theta_k`` is data but its gradient is the cost policy
gradient). Dropped: the dependence of the *sampled data* on ``theta`` (the batch is collected
under ``stopgrad(theta_k)``), and anything fitted on the side (critics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tensordict import TensorDictBase
from torch import Tensor

from cmo_rl.meta.functional import MetaOptimizer, detach_params, require_grad, values_and_grads

__all__ = [
    "BilevelResult",
    "InnerProblem",
    "InnerRound",
    "UnrollResult",
    "bilevel_objective",
    "default_violation_scale",
    "inner_step",
    "meta_objective",
    "unroll",
    "violation",
]

Estimates = Callable[[TensorDictBase], tuple[Tensor, Tensor]]
#: ``callback(k, record, theta_{k+1})`` after inner round ``k`` of :func:`unroll`.
RoundCallback = Callable[[int, dict[str, float], TensorDictBase], None]


@dataclass
class InnerRound:
    """One round of data from a problem.

    Attributes:
        estimates: ``theta -> (J_R, J_C)``, differentiable scalar estimates of the episode return
            and cost on this round's data; at the sampling parameters their value is the
            measured return / cost.
        metrics: measured diagnostics of the round (floats), e.g. ``"return"``, ``"cost"``,
            ``"time/collect"``.

    Examples:
        >>> from cmo_rl.meta.problems import ContextualBanditCMDP
        >>> task = ContextualBanditCMDP.sample(seed=0)
        >>> theta = task.init_params()
        >>> rnd = task.sample_round(theta)  # an InnerRound
        >>> j_r, j_c = rnd.estimates(theta)  # at the sampling parameters: the measured values
        >>> {k: round(v, 2) for k, v in rnd.metrics.items()}, round(float(j_c), 2)
        ({'return': 5.12, 'cost': 5.21}, 5.21)
    """

    estimates: Estimates
    metrics: dict[str, float] = field(default_factory=dict)


class InnerProblem(Protocol):
    """A task the meta-optimizer trains a fresh policy on."""

    def init_params(self) -> TensorDictBase:
        """Fresh policy parameters ``theta_0`` (detached)."""
        ...

    def sample_round(self, params: TensorDictBase) -> InnerRound:
        """Collect data with the (detached) ``params`` and return its estimates."""
        ...


def default_violation_scale(cost_limit: float) -> float:
    """``s`` in ``e = (J_C - d) / s``: the cost limit when positive (a relative violation), else 1.

    Examples:
        >>> default_violation_scale(25.0), default_violation_scale(0.0)
        (25.0, 1.0)
    """
    return float(cost_limit) if cost_limit > 0 else 1.0


def violation(cost: Tensor, cost_limit: float, scale: float) -> Tensor:
    """``e = (J_C - d) / s`` (differentiable in ``cost``).

    Examples:
        >>> violation(torch.tensor(30.0), 25.0, 25.0)
        tensor(0.2000)
    """
    if scale <= 0:
        raise ValueError(f"violation scale must be > 0, got {scale}")
    return (cost - cost_limit) / scale


def meta_objective(ret: Tensor, cost: Tensor, *, cost_limit: float, mu: float) -> Tensor:
    """``M = J_R - mu * max(0, J_C - d)`` (to be maximised).

    Examples:
        >>> meta_objective(torch.tensor(10.0), torch.tensor(30.0), cost_limit=25.0, mu=2.0)
        tensor(0.)
        >>> meta_objective(torch.tensor(10.0), torch.tensor(20.0), cost_limit=25.0, mu=2.0)
        tensor(10.)
    """
    return ret - mu * (cost - cost_limit).clamp_min(0.0)


def _sync(params: TensorDictBase) -> None:
    device = params.device
    if device is None:
        leaf = next(iter(params.values(True, True)))
        device = leaf.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inner_step(
    meta_opt: MetaOptimizer,
    estimates: Estimates,
    params: TensorDictBase,
    lagrange_multiplier: Tensor,
    state: TensorDictBase,
    *,
    cost_limit: float,
    violation_scale: float,
    differentiable: bool,
) -> tuple[TensorDictBase, Tensor, TensorDictBase, dict[str, float]]:
    """One meta-optimizer update on one round's estimates.

    With ``differentiable=True`` the gradients are taken with ``create_graph=True`` and the
    update is recorded for the meta-backward; otherwise only first-order gradients are taken
    and the update runs under ``torch.no_grad``.

    Returns ``(theta_{k+1}, lambda_{k+1}, s_{k+1}, record)`` with ``record`` holding floats:
    ``return_estimate``, ``cost_estimate``, ``violation``, ``lambda`` (the new multiplier).

    Examples:
        >>> from cmo_rl.meta import ContextualBanditCMDP, PIDMetaOptimizer
        >>> task, opt = ContextualBanditCMDP.sample(seed=0), PIDMetaOptimizer()
        >>> theta = task.init_params()
        >>> theta1, lam1, state1, record = inner_step(
        ...     opt, task.sample_round(theta).estimates, theta, opt.init_multiplier(theta),
        ...     opt.init_state(theta), cost_limit=3.0, violation_scale=3.0, differentiable=True)
        >>> round(record["violation"], 3), lam1.requires_grad  # (5.205 - 3) / 3; on the meta-graph
        (0.735, True)
    """
    params = require_grad(params)
    (j_r, j_c), (g_r, g_c) = values_and_grads(estimates, params, create_graph=differentiable)
    e = violation(j_c, cost_limit, violation_scale)
    if differentiable:
        new = meta_opt.step(params, g_r, g_c, lagrange_multiplier, e, state)
    else:
        with torch.no_grad():
            new = meta_opt.step(
                detach_params(params), g_r, g_c, lagrange_multiplier.detach(), e.detach(), state
            )
    new_params, new_lam, new_state = new
    record = {
        "return_estimate": float(j_r.detach()),
        "cost_estimate": float(j_c.detach()),
        "violation": float(e.detach()),
        "lambda": float(new_lam.detach()),
    }
    return new_params, new_lam, new_state, record


@dataclass
class UnrollResult:
    """End of an unroll: ``theta_K``, ``lambda_K``, ``s_K`` and one record per round (floats:
    the problem's measured metrics, the estimates, violation, new lambda, timings).

    Examples:
        >>> from cmo_rl.meta import ContextualBanditCMDP, PIDMetaOptimizer
        >>> result = unroll(PIDMetaOptimizer(), ContextualBanditCMDP.sample(seed=0),
        ...                 inner_rollouts=3, unroll_steps=1, cost_limit=3.0, differentiable=False)
        >>> sorted(result.state.keys()), len(result.rounds), result.params["weight"].shape
        (['integral', 'prev_violation'], 3, torch.Size([4, 3]))
    """

    params: TensorDictBase
    lagrange_multiplier: Tensor
    state: TensorDictBase
    rounds: list[dict[str, float]]


def unroll(
    meta_opt: MetaOptimizer,
    problem: InnerProblem,
    *,
    inner_rollouts: int,
    unroll_steps: int,
    cost_limit: float,
    violation_scale: float | None = None,
    differentiable: bool = True,
    callback: RoundCallback | None = None,
) -> UnrollResult:
    """Train a fresh policy on ``problem`` for ``inner_rollouts`` rounds with ``meta_opt``.

    The last ``unroll_steps`` updates are differentiable (window start: ``theta``, ``lambda``,
    state detached); with ``differentiable=False`` none are (meta-testing a frozen optimizer).
    ``callback(k, record, params)`` runs after round ``k``'s update with that round's record
    (what :attr:`UnrollResult.rounds` keeps) and ``theta_{k+1}`` (per-round logging, evaluation).

    Examples:
        >>> from cmo_rl.meta import ContextualBanditCMDP, PIDMetaOptimizer
        >>> opt = PIDMetaOptimizer(init_etaR=0.1, init_etaC=0.1)
        >>> result = unroll(opt, ContextualBanditCMDP.sample(seed=0), inner_rollouts=4,
        ...                 unroll_steps=2, cost_limit=3.0)
        >>> [round(r["cost"], 2) for r in result.rounds]  # above d = 3 all along ...
        [5.21, 5.4, 5.58, 5.74]
        >>> [round(r["lambda"], 3) for r in result.rounds]  # ... so lambda rises
        [0.075, 0.088, 0.105, 0.123]
        >>> result.lagrange_multiplier.requires_grad  # the last 2 updates are on the meta-graph
        True
        >>> seen = []
        >>> _ = unroll(opt, ContextualBanditCMDP.sample(seed=0), inner_rollouts=2, unroll_steps=0,
        ...            cost_limit=3.0, differentiable=False,
        ...            callback=lambda k, record, _: seen.append((k, round(record["cost"], 2))))
        >>> seen
        [(0, 5.21), (1, 5.4)]
    """
    if inner_rollouts < 1:
        raise ValueError(f"inner_rollouts must be >= 1, got {inner_rollouts}")
    if differentiable and unroll_steps < 1:
        raise ValueError(f"unroll_steps must be >= 1 to get a meta-gradient, got {unroll_steps}")
    scale = default_violation_scale(cost_limit) if violation_scale is None else violation_scale
    params = detach_params(problem.init_params())
    lam = meta_opt.init_multiplier(params)
    state = meta_opt.init_state(params)
    window_start = max(0, inner_rollouts - unroll_steps) if differentiable else inner_rollouts
    rounds = []
    for k in range(inner_rollouts):
        if k == window_start:  # truncation: the meta-gradient starts here
            params, lam, state = detach_params(params), lam.detach(), state.detach()
        _sync(params)
        t0 = time.perf_counter()
        rnd = problem.sample_round(detach_params(params))
        _sync(params)
        t1 = time.perf_counter()
        params, lam, state, record = inner_step(
            meta_opt,
            rnd.estimates,
            params,
            lam,
            state,
            cost_limit=cost_limit,
            violation_scale=scale,
            differentiable=k >= window_start,
        )
        _sync(params)
        t2 = time.perf_counter()
        rounds.append(
            {**rnd.metrics, **record, "time/round_data": t1 - t0, "time/inner_update": t2 - t1}
        )
        if callback is not None:
            callback(k, rounds[-1], params)
    return UnrollResult(params, lam, state, rounds)


@dataclass
class BilevelResult:
    """The meta-objective of one task (a differentiable scalar) and what produced it.

    Examples:
        >>> from cmo_rl.meta import ContextualBanditCMDP, PIDMetaOptimizer
        >>> res = bilevel_objective(PIDMetaOptimizer(), ContextualBanditCMDP.sample(seed=0),
        ...                         inner_rollouts=2, unroll_steps=2, cost_limit=3.0, mu=5.0)
        >>> penalty = 5.0 * (res.cost_estimate - 3.0).clamp_min(0.0)
        >>> expected = res.return_estimate - penalty
        >>> bool(torch.isclose(res.objective, expected)), len(res.unroll.rounds)
        (True, 2)
    """

    objective: Tensor
    return_estimate: Tensor
    cost_estimate: Tensor
    final_metrics: dict[str, float]
    unroll: UnrollResult


def bilevel_objective(
    meta_opt: MetaOptimizer,
    problem: InnerProblem,
    *,
    inner_rollouts: int,
    unroll_steps: int,
    cost_limit: float,
    mu: float,
    violation_scale: float | None = None,
) -> BilevelResult:
    """Unroll ``meta_opt`` on ``problem``, then score ``theta_K`` on a fresh round:
    ``M = J_R(theta_K) - mu * max(0, J_C(theta_K) - d)``; ``-M`` is the meta-loss.

    Examples:
        >>> from cmo_rl.meta import ContextualBanditCMDP, PIDMetaOptimizer
        >>> opt = PIDMetaOptimizer()
        >>> res = bilevel_objective(opt, ContextualBanditCMDP.sample(seed=0), inner_rollouts=4,
        ...                         unroll_steps=2, cost_limit=3.0, mu=5.0)
        >>> (-res.objective).backward()  # the meta-gradient reaches all five gains
        >>> all(float(p.grad) != 0.0 for p in opt.parameters())
        True
    """
    result = unroll(
        meta_opt,
        problem,
        inner_rollouts=inner_rollouts,
        unroll_steps=unroll_steps,
        cost_limit=cost_limit,
        violation_scale=violation_scale,
    )
    t0 = time.perf_counter()
    final = problem.sample_round(detach_params(result.params))
    j_r, j_c = final.estimates(result.params)
    objective = meta_objective(j_r, j_c, cost_limit=cost_limit, mu=mu)
    metrics = {**final.metrics, "time/round_data": time.perf_counter() - t0}
    return BilevelResult(objective, j_r, j_c, metrics, result)
