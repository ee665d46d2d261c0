"""Online meta-gradient of the lambda rule (MetaL-style): the rule learns during one run.

Calian et al. (2021, "MetaL") learn the multiplier's update by meta-gradients *online*: no
outer loop over runs, the rule's meta-parameters :math:`\\eta` take one step per epoch of the
run they drive. Here the rule is a
:class:`~cmo_rl.objectives.learned_dual.LearnedLagrangian` inside PPO-Lagrangian. At epoch
:math:`k` the rule sets :math:`\\lambda_k = \\Lambda_\\eta(s_k, J_{C,k})` from its controller
state :math:`s_k` and the measured episode cost, and PPO moves the policy along the penalised
ascent direction on the normalised advantages :math:`\\hat A_R, \\hat A_C` of batch :math:`k`:

.. math::

    u_k(\\lambda) = \\frac{\\hat g_R - \\lambda \\hat g_C}{1 + \\lambda}, \\qquad
    \\hat g_X = \\nabla_\\theta\\, \\mathrm{mean}_t\\big[\\log\\pi_\\theta(a_t|s_t)\\,
        \\hat A_{X,t}\\big]\\Big|_{\\theta_k}, \\qquad
    \\theta_{k+1} \\approx \\theta_k + \\alpha\\, u_k(\\lambda_k)

so the next policy's sensitivity to :math:`\\lambda_k` is

.. math::

    \\frac{\\partial \\theta_{k+1}}{\\partial \\lambda_k} \\approx \\alpha\\, u_k'(\\lambda_k)
        = -\\alpha\\, \\frac{\\hat g_R + \\hat g_C}{(1 + \\lambda_k)^2}.

The *next* epoch's batch, collected by :math:`\\theta_{k+1}`, scores it with the meta-objective of
the bilevel trainer, :math:`M = J_R - \\mu \\max(0, J_C - d)`
(:func:`~cmo_rl.meta.bilevel.meta_objective`), whose policy gradient on the raw advantages is
:math:`g_M = g_R - \\mu\\, [J_{C,k+1} > d]\\, g_C` (:func:`outer_gradient`). The chain rule gives
one meta-gradient per epoch,

.. math::

    \\frac{dM_{k+1}}{d\\eta} = \\big(g_M \\cdot u_k'(\\lambda_k)\\big)\\,
        \\frac{\\partial \\lambda_k}{\\partial \\eta}

(:math:`\\alpha` dropped: a positive constant that Adam's normalisation absorbs), which one
Adam ascent step of :math:`\\eta` (step ``meta_lr``) follows before the rule sets
:math:`\\lambda_{k+1}`. Under the limit the meta-gradient lowers :math:`\\lambda` where the
reward gradient agrees with :math:`-u'`; over it, :math:`\\mu` makes it raise :math:`\\lambda`
where that cuts cost; at :math:`\\lambda = 0` (clipped) nothing moves.

**What the gradient keeps and drops.** Kept: :math:`\\lambda_k`'s dependence on every
meta-parameter through the rule's step at epoch :math:`k` (gains, filters, offset, MLP), and
the first-order effect of :math:`\\lambda_k` on the next policy. Dropped: the dependence through
earlier rule steps (the controller state :math:`s_k` is data: a one-step truncation, as in
MetaL), PPO's clipping, minibatching and Adam preconditioning (the update is taken as a plain
step along :math:`u_k`), the critics, and the data's dependence on :math:`\\theta`. An epoch with
no finished episode takes neither a rule step nor a meta-step.

:class:`OnlineRuleLearner` holds what crosses the epoch boundary (:math:`s_k`, :math:`J_{C,k}`,
:math:`u_k'(\\lambda_k)`) as buffers and the Adam of :math:`\\eta`, so a checkpoint resumes it
exactly. ``recipes/meta_lagrangian.py meta_lr=...`` trains with it (:mod:`cmo_rl.meta_online`
joins it to the PPO-Lagrangian learner).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from cmo_rl.meta.bilevel import meta_objective
from cmo_rl.meta.functional import flatten_params, params_of, surrogate_estimates, values_and_grads
from cmo_rl.objectives.lagrangian import normalize_advantages
from cmo_rl.objectives.learned_dual import LearnedLagrangian

__all__ = [
    "OnlineRuleLearner",
    "lambda_sensitivity",
    "outer_gradient",
    "penalised_direction",
    "policy_gradients",
]

#: ``update_multiplier(rule, J_C) -> metrics``: one rule step (as the recipes' learned_update).
RuleUpdate = Callable[[LearnedLagrangian, float], dict[str, float]]


def penalised_direction(grad_reward: Tensor, grad_cost: Tensor, lam: Tensor | float) -> Tensor:
    """PPO-Lagrangian's ascent direction :math:`u(\\lambda) = (g_R - \\lambda g_C) / (1 + \\lambda)`.

    Examples:
        >>> penalised_direction(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 1.0)
        tensor([ 0.5000, -0.5000])
    """
    return (grad_reward - lam * grad_cost) / (1.0 + lam)


def lambda_sensitivity(grad_reward: Tensor, grad_cost: Tensor, lam: Tensor | float) -> Tensor:
    """:math:`u'(\\lambda) = -(g_R + g_C) / (1 + \\lambda)^2`, the derivative of
    :func:`penalised_direction` in :math:`\\lambda`.

    Examples:
        >>> g_r, g_c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        >>> lambda_sensitivity(g_r, g_c, 1.0)
        tensor([-0.2500, -0.2500])
        >>> h = 1e-3  # a central difference of u agrees
        >>> (penalised_direction(g_r, g_c, 1.0 + h) - penalised_direction(g_r, g_c, 1.0 - h)) / (2 * h)
        tensor([-0.2500, -0.2500])
    """
    return -(grad_reward + grad_cost) / (1.0 + lam) ** 2


def policy_gradients(
    actor: nn.Module, batch: TensorDictBase, advantage: Tensor, cost_advantage: Tensor
) -> tuple[Tensor, Tensor]:
    """``(g_R, g_C)``: :math:`\\nabla_\\theta\\, \\mathrm{mean}_t[\\log\\pi_\\theta(a_t|s_t) A_t]`
    for the given reward and cost advantages at the actor's current parameters (where the
    batch was collected), as flat vectors in :func:`~cmo_rl.meta.functional.flatten_params`
    order. ``batch`` is not modified.

    Examples:
        >>> from cmo_rl.meta.functional import _example_rollout
        >>> actor, batch = _example_rollout()
        >>> ones = torch.ones(2, 3, 1)
        >>> g_r, g_c = policy_gradients(actor, batch, ones, -ones)  # A_C = -A_R
        >>> bool(torch.allclose(g_r, -g_c)), g_r.shape == flatten_params(params_of(actor)).shape
        (True, True)
    """
    data = batch.copy()  # shallow: setting keys leaves ``batch`` alone
    data.set("advantage", advantage.reshape(*batch.shape, 1))
    data.set("cost_advantage", cost_advantage.reshape(*batch.shape, 1))
    _, (g_r, g_c) = values_and_grads(
        lambda p: surrogate_estimates(
            actor, p, data, episode_return=0.0, episode_cost=0.0, episode_length=1
        ),
        params_of(actor),
    )
    return flatten_params(g_r), flatten_params(g_c)


def outer_gradient(
    actor: nn.Module,
    batch: TensorDictBase,
    *,
    episode_cost: float,
    cost_limit: float,
    mu: float,
) -> Tensor:
    """:math:`\\nabla_\\theta M` of the meta-objective
    :math:`M = \\hat J_R - \\mu \\max(0, \\hat J_C - d)` on a batch collected by the actor's
    current parameters, from its *raw* (not normalised) ``advantage`` / ``cost_advantage``
    (per-step units; the episode's measured cost :math:`J_C` decides whether the penalty is
    active): :math:`g_R - \\mu [J_C > d] g_C`, a flat vector.

    Examples:
        >>> from cmo_rl.meta.functional import _example_rollout
        >>> actor, batch = _example_rollout()
        >>> batch["advantage"], batch["cost_advantage"] = torch.randn(2, 3, 1), torch.randn(2, 3, 1)
        >>> g_r, g_c = policy_gradients(actor, batch, batch["advantage"], batch["cost_advantage"])
        >>> under = outer_gradient(actor, batch, episode_cost=1.0, cost_limit=2.0, mu=5.0)
        >>> over = outer_gradient(actor, batch, episode_cost=3.0, cost_limit=2.0, mu=5.0)
        >>> bool(torch.allclose(under, g_r)), bool(torch.allclose(over, g_r - 5.0 * g_c, atol=1e-6))
        (True, True)
    """
    _, (grad,) = values_and_grads(
        lambda p: (
            meta_objective(
                *surrogate_estimates(
                    actor, p, batch, episode_return=0.0, episode_cost=episode_cost,
                    episode_length=1,
                ),
                cost_limit=cost_limit,
                mu=mu,
            ),
        ),
        params_of(actor),
    )  # fmt: skip
    return flatten_params(grad)


class OnlineRuleLearner(nn.Module):
    """The online meta-gradient learner of a lambda rule (see the module docstring).

    Use :meth:`update` in place of the rule's own ``update_multiplier`` once per epoch, after
    GAE and before the advantages are normalised: it takes the meta-step that scores the
    previous epoch's :math:`\\lambda` on this batch, then steps the rule. Checkpoint it as a
    module (the pending record) together with :attr:`optimizer` (the Adam of the rule).

    Args:
        rule: the learned rule that drives the multiplier (its parameters are trained).
        actor: the policy PPO trains (read, never changed).
        meta_lr: Adam step size of the rule's meta-parameters per epoch.
        mu: :math:`\\mu` of the meta-objective.

    Examples:
        >>> from cmo_rl.meta.functional import _example_rollout
        >>> from cmo_rl.objectives.learned_dual import learned_update, rule_vector
        >>> actor, batch = _example_rollout()
        >>> batch["advantage"], batch["cost_advantage"] = torch.randn(2, 3, 1), torch.randn(2, 3, 1)
        >>> rule = LearnedLagrangian(1.0, hidden=0)
        >>> learner, start = OnlineRuleLearner(rule, actor, meta_lr=0.1, mu=10.0), rule_vector(rule)
        >>> learner.update(batch, 3.0, learned_update)["train/rule_meta_grad"]  # nothing pending
        nan
        >>> math.isfinite(learner.update(batch, 3.0, learned_update)["train/rule_meta_grad"])
        True
        >>> bool((rule_vector(rule) != start).any())  # the rule moved
        True
    """

    def __init__(
        self, rule: LearnedLagrangian, actor: nn.Module, *, meta_lr: float, mu: float
    ) -> None:
        super().__init__()
        if not (math.isfinite(float(meta_lr)) and float(meta_lr) > 0):
            raise ValueError(f"meta_lr must be finite and > 0, got {meta_lr}")
        if not (math.isfinite(float(mu)) and float(mu) >= 0):
            raise ValueError(f"mu must be finite and >= 0, got {mu}")
        # plain attributes, not submodules: the run checkpoints rule and actor on their own
        self.__dict__["rule"], self.__dict__["actor"] = rule, actor
        self.mu = float(mu)
        self.optimizer = torch.optim.Adam(rule.parameters(), lr=float(meta_lr))
        device = rule.cost_limit.device
        size = flatten_params(params_of(actor)).numel()
        self.register_buffer("pending", torch.tensor(False, device=device))
        self.register_buffer("pending_cost", torch.tensor(0.0, device=device))
        self.register_buffer("sensitivity", torch.zeros(size, device=device))
        state = rule.state()
        self._state_keys = tuple(state.keys())
        for key, value in state.items():
            self.register_buffer(f"pending_{key}", torch.zeros_like(value))

    def _pending_state(self) -> TensorDict:
        return TensorDict({k: getattr(self, f"pending_{k}") for k in self._state_keys})

    def meta_step(self, batch: TensorDictBase, episode_cost: float) -> dict[str, float]:
        """The previous epoch's :math:`\\lambda` scored on this batch (raw advantages): one Adam
        ascent step of the rule. Returns ``train/rule_meta_grad`` (:math:`g_M \\cdot u'`, NaN
        when nothing is pending; a non-finite one is skipped)."""
        if not bool(self.pending):
            return {"train/rule_meta_grad": math.nan}
        rule = self.rule
        g_m = outer_gradient(
            self.actor,
            batch,
            episode_cost=episode_cost,
            cost_limit=float(rule.cost_limit),
            mu=self.mu,
        )
        meta_grad = torch.dot(g_m, self.sensitivity)
        if torch.isfinite(meta_grad):
            self.optimizer.zero_grad()
            new, _ = rule.step(self._pending_state(), self.pending_cost)
            lam = new["multiplier"]
            if lam.requires_grad:  # (not when every path to it is cut)
                lam.backward(-meta_grad.to(lam.dtype))  # ascent on M
                self.optimizer.step()
        return {"train/rule_meta_grad": float(meta_grad)}

    def update(
        self, batch: TensorDictBase, episode_cost: float, update_multiplier: RuleUpdate
    ) -> dict[str, float]:
        """One epoch: :meth:`meta_step`, then the rule's own step on :math:`J_C`
        (``update_multiplier``), then the record of :math:`u_k'(\\lambda_k)` for the next
        epoch. ``batch`` holds the raw advantages; it is not modified. Returns the rule's
        metrics and ``train/rule_meta_grad``."""
        metrics = self.meta_step(batch, float(episode_cost))
        rule = self.rule
        before = rule.state()
        metrics.update(update_multiplier(rule, episode_cost))
        advantage, cost_advantage = normalize_advantages(
            batch.get("advantage"), batch.get("cost_advantage")
        )
        g_r, g_c = policy_gradients(self.actor, batch, advantage, cost_advantage)
        with torch.no_grad():
            self.sensitivity.copy_(lambda_sensitivity(g_r, g_c, rule.value))
            self.pending_cost.fill_(float(episode_cost))
            for key, value in before.items():
                getattr(self, f"pending_{key}").copy_(value)
            self.pending.fill_(True)
        return metrics
