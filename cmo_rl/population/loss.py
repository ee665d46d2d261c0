"""The PPO-Lagrangian loss of one learner as a pure function of its parameters (vmappable).

The same maths, op for op, as :class:`cmo_rl.objectives.LagrangianPPOLoss` with
``normalize_advantage=False`` (the recipes normalise once per batch) and no loss mask, but on
plain tensors and a ``{group: {name: tensor}}`` parameter dict, so that
``torch.func.vmap(torch.func.grad(...))`` runs it for a whole population at once:

1. :math:`A_L = (A_R - \\lambda A_C)/(1 + \\lambda)`
   (:func:`~cmo_rl.objectives.lagrangian_advantage`);
2. :math:`\\rho = \\exp(\\log\\pi_\\theta(a|s) - \\log\\pi_{old}(a|s))`,
   :math:`\\mathcal{L}_{obj} = -\\mathbb{E}[\\min(\\rho A_L, \\mathrm{clip}(\\rho, 1\\pm\\epsilon) A_L)]`;
3. :math:`\\mathcal{L}_{ent} = -c_H \\mathbb{E}[\\mathcal{H}]` (the loss class's own entropy
   rule), :math:`\\mathcal{L}_{critic} = c_V \\mathbb{E}[(V_R - \\hat V_R)^2]`,
   :math:`\\mathcal{L}_{cost\\_critic} = c_C \\mathbb{E}[(V_C - \\hat V_C)^2]`;
4. the total is summed in the order ``minibatch_epochs`` sums the ``loss_*`` terms, and the
   diagnostics are those of the loss class (all of them with ``all_diagnostics=True``).

``tests/population/test_loss.py`` checks values and gradients against the loss class.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from cmo_rl.objectives import LagrangianPPOLoss, lagrangian_advantage
from cmo_rl.objectives.lagrangian import _batch_diagnostics
from cmo_rl.population.learners import LearnerNets

__all__ = ["LossCoefficients", "approx_kl_of", "lagrangian_ppo_loss"]

#: the ``loss_*`` terms in the order the loss class writes them (and minibatch_epochs sums them)
LOSS_KEYS = ("loss_objective", "loss_critic", "loss_cost_critic", "loss_entropy")

Params = Mapping[str, Mapping[str, Tensor]]


@dataclass(frozen=True)
class LossCoefficients:
    """The loss constants, as the loss class holds them: float32 ``[]`` tensors.

    Examples:
        >>> c = LossCoefficients.make(clip_epsilon=0.2, entropy_coeff=0.0)
        >>> c.clip_epsilon.dtype, float(c.critic_coeff)
        (torch.float32, 1.0)
    """

    clip_epsilon: Tensor
    entropy_coeff: Tensor
    critic_coeff: Tensor
    cost_critic_coeff: Tensor

    @classmethod
    def make(
        cls, *, device: torch.device | str | None = None, **coefficients: float
    ) -> LossCoefficients:
        """From floats: ``clip_epsilon``, ``entropy_coeff``, ``critic_coeff``,
        ``cost_critic_coeff`` as ``LagrangianPPOLoss`` takes them; an omitted one takes that
        constructor's default (declared there only)."""
        unknown = set(coefficients) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown loss coefficients {sorted(unknown)}; known: {list(_FIELDS)}")
        defaults = inspect.signature(LagrangianPPOLoss.__init__).parameters
        values = [float(coefficients.get(k, defaults[k].default)) for k in _FIELDS]
        if not 0.0 < values[0] < 1.0:
            raise ValueError(f"clip_epsilon must be in (0, 1), got {values[0]}")
        if any(v < 0 for v in values[1:]):
            raise ValueError(f"coefficients must be >= 0, got {values[1:]}")
        return cls(*(torch.tensor(v, dtype=torch.float32, device=device) for v in values))


_FIELDS = ("clip_epsilon", "entropy_coeff", "critic_coeff", "cost_critic_coeff")


def lagrangian_ppo_loss(
    nets: LearnerNets,
    params: Params,
    minibatch: Mapping[str, Tensor],
    multiplier: Tensor,
    coeffs: LossCoefficients,
    all_diagnostics: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(total loss, {loss_* terms and detached diagnostics})`` of one learner on a minibatch.

    Args:
        nets: the learner's networks (:class:`~cmo_rl.population.learners.LearnerNets`).
        params: ``{group: {name: tensor}}`` (one learner; a vmapped slice of the stack).
        minibatch: ``observation``, ``action``, ``action_log_prob`` ``[B]``, ``advantage``,
            ``cost_advantage``, ``value_target``, ``cost_value_target`` ``[B, 1]``.
        multiplier: :math:`\\lambda`, a ``[]`` tensor (not differentiated).
        coeffs: the loss constants.
        all_diagnostics: every diagnostic of the loss class; else only ``entropy``,
            ``kl_approx``, ``clip_fraction``, ``ratio_mean``, ``lagrange_multiplier`` (the ones
            :func:`~cmo_rl.training.onpolicy.train_metrics` and the KL check use).

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> from cmo_rl.population.learners import stack_learners
        >>> agent = actor_critic_from_env(make_env("MockCMDP-v0", num_envs=2), hidden_layers=(8,))
        >>> nets = LearnerNets.from_agent(agent)
        >>> params = nets.flat_params(stack_learners([agent])[0])
        >>> with torch.no_grad():
        ...     dist = nets.dist(params["actor"], torch.zeros(4, 2))
        ...     action = dist.sample()
        >>> mb = {"observation": torch.zeros(4, 2), "action": action,
        ...       "action_log_prob": dist.log_prob(action), "advantage": torch.ones(4, 1),
        ...       "cost_advantage": torch.ones(4, 1), "value_target": torch.zeros(4, 1),
        ...       "cost_value_target": torch.zeros(4, 1)}
        >>> total, out = lagrangian_ppo_loss(nets, params, mb, torch.tensor(1.0),
        ...                                  LossCoefficients.make())
        >>> float(out["loss_objective"]), float(out["kl_approx"])  # A_L = (1 - 1) / 2 = 0
        (-0.0, 0.0)
    """
    advantage = minibatch["advantage"]
    cost_advantage = minibatch["cost_advantage"]
    value_target = minibatch["value_target"]
    cost_value_target = minibatch["cost_value_target"]
    observation = minibatch["observation"]
    action = minibatch["action"]
    old_log_prob = minibatch["action_log_prob"]

    # 1. the penalised advantage
    penalised = lagrangian_advantage(advantage.detach(), cost_advantage.detach(), multiplier)

    # 2. clipped surrogate
    dist = nets.dist(params["actor"], observation)
    log_prob = dist.log_prob(action)
    log_ratio = (log_prob - old_log_prob).unsqueeze(-1)
    ratio = log_ratio.exp()
    eps = coeffs.clip_epsilon
    clipped = ratio.clamp(1.0 - eps, 1.0 + eps)
    surrogate = torch.minimum(ratio * penalised, clipped * penalised)
    loss_objective = -surrogate.mean()

    # 3. entropy bonus and both critics
    entropy = LagrangianPPOLoss._entropy(dist)
    loss_entropy = -coeffs.entropy_coeff * entropy.mean()
    value = nets.value(params["critic"], observation, "critic")
    loss_critic = (value - value_target.detach()).pow(2).mean()
    cost_value = nets.value(params["cost_critic"], observation, "cost_critic")
    loss_cost_critic = (cost_value - cost_value_target.detach()).pow(2).mean()
    losses = {
        "loss_objective": loss_objective,
        "loss_critic": coeffs.critic_coeff * loss_critic,
        "loss_cost_critic": coeffs.cost_critic_coeff * loss_cost_critic,
        "loss_entropy": loss_entropy,
    }

    # 4. total in minibatch_epochs' order, diagnostics
    total = sum(losses[k] for k in LOSS_KEYS)
    ratio_d = ratio.detach()
    out = {
        "entropy": entropy.detach().mean(),
        "kl_approx": (-log_ratio).detach().mean(),
        "clip_fraction": ((ratio_d - 1.0).abs() > eps).float().mean(),
        "ratio_mean": ratio_d.mean(),
        "lagrange_multiplier": multiplier.detach().float().mean(),
    }
    if all_diagnostics:
        values = (value_target, value, cost_value_target, cost_value)
        out.update(_batch_diagnostics(advantage, cost_advantage, penalised, values))
    out.update({k: v.detach() for k, v in losses.items()})
    return total, out


def approx_kl_of(
    nets: LearnerNets,
    actor_params: Mapping[str, Tensor],
    observation: Tensor,
    action: Tensor,
    old_log_prob: Tensor,
) -> Tensor:
    """:func:`cmo_rl.training.onpolicy.approx_kl` of one learner, as a ``[]`` tensor: the mean
    of :math:`(r - 1) - \\log r` over the batch (never negative).

    Examples:
        >>> from cmo_rl.population.learners import make_population, stack_learners
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> cfg = {"hidden_layers": [8], "activation": "tanh", "init_log_std": -0.5}
        >>> agents = make_population(cfg, MockCMDPEnv(num_envs=2), "cpu", size=1)
        >>> nets = LearnerNets.from_agent(agents[0])
        >>> actor = nets.flat_params(stack_learners(agents)[0])["actor"]
        >>> obs, action = torch.zeros(5, 2), torch.zeros(5, 1)
        >>> old = nets.dist(actor, obs).log_prob(action) + 0.25
        >>> round(float(approx_kl_of(nets, actor, obs, action, old)), 6)
        0.028801
    """
    with torch.no_grad():
        dist = nets.dist(actor_params, observation)
        log_ratio = dist.log_prob(action) - old_log_prob
        return (torch.expm1(log_ratio) - log_ratio).mean()
