"""PPO-Lagrangian: the clipped PPO surrogate on the Lagrangian advantage, plus both value losses.

With reward and cost advantages :math:`A_R, A_C` and multiplier :math:`\\lambda \\ge 0`
(OmniSafe's ``PPOLag`` surrogate):

.. math::

    A_L = \\frac{A_R - \\lambda A_C}{1 + \\lambda}, \\qquad
    \\rho = \\frac{\\pi_\\theta(a|s)}{\\pi_{\\text{old}}(a|s)}

    \\mathcal{L}_{\\text{objective}} = -\\mathbb{E}\\big[\\min(\\rho A_L,\\;
        \\operatorname{clip}(\\rho, 1-\\epsilon, 1+\\epsilon) A_L)\\big]

    \\mathcal{L}_{\\text{critic}} = c_V\\,\\mathbb{E}[(V_R(s) - \\hat V_R)^2], \\quad
    \\mathcal{L}_{\\text{cost\\_critic}} = c_C\\,\\mathbb{E}[(V_C(s) - \\hat V_C)^2], \\quad
    \\mathcal{L}_{\\text{entropy}} = -c_H\\,\\mathbb{E}[\\mathcal{H}(\\pi_\\theta(\\cdot|s))]

Advantages and targets come from two TorchRL ``GAE`` modules (:func:`make_value_estimators`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives.value import GAE

from cmo_rl.objectives.critic import _CriticLossBase, _unique

__all__ = [
    "LagrangianPPOLoss",
    "lagrangian_advantage",
    "make_value_estimators",
    "normalize_advantages",
]

_EPS = 1e-8


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _explained_variance(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``1 - Var(target - value) / Var(target)`` (population variances), without gradient."""
    with torch.no_grad():
        t, v = target.detach(), value.detach()
        return 1.0 - (t - v).var(correction=0) / (t.var(correction=0) + _EPS)


def _batch_diagnostics(
    advantage: torch.Tensor,
    cost_advantage: torch.Tensor,
    penalised: torch.Tensor,
    values: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The advantage and critic diagnostics of a batch (``values``: reward target, reward
    value, cost target, cost value); shared with the population loss."""
    value_target, value, cost_value_target, cost_value = values
    advantage, cost_advantage = advantage.detach(), cost_advantage.detach()
    return {
        "advantage_mean": advantage.mean(),
        "advantage_std": advantage.std(correction=0),
        "cost_advantage_mean": cost_advantage.mean(),
        "cost_advantage_std": cost_advantage.std(correction=0),
        "lagrangian_advantage_mean": penalised.detach().mean(),
        "explained_variance": _explained_variance(value_target, value),
        "cost_explained_variance": _explained_variance(cost_value_target, cost_value),
    }


def lagrangian_advantage(
    advantage: torch.Tensor, cost_advantage: torch.Tensor, multiplier: torch.Tensor | float
) -> torch.Tensor:
    """The penalised advantage :math:`A_L = (A_R - \\lambda A_C) / (1 + \\lambda)`.

    Args:
        advantage: reward advantage :math:`A_R`, ``[*B, 1]``.
        cost_advantage: cost advantage :math:`A_C`, same shape.
        multiplier: :math:`\\lambda \\ge 0`, a float, a ``[]`` tensor or a tensor broadcastable
            to ``[*B, 1]``. Not detached: gradients flow to a differentiable multiplier.

    Examples:
        >>> lagrangian_advantage(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 1.0]), 0.5)
        tensor([ 0.5000, -1.0000])
    """
    if advantage.shape != cost_advantage.shape:
        raise ValueError(
            f"advantage and cost_advantage shapes differ: {tuple(advantage.shape)} vs "
            f"{tuple(cost_advantage.shape)}"
        )
    return (advantage - multiplier * cost_advantage) / (1.0 + multiplier)


def normalize_advantages(
    advantage: torch.Tensor, cost_advantage: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """OmniSafe's buffer normalisation: standardise :math:`A_R`, only centre :math:`A_C`.

    .. math::

        A_R \\leftarrow \\frac{A_R - \\bar A_R}{\\operatorname{std}(A_R) + 10^{-8}}, \\qquad
        A_C \\leftarrow A_C - \\bar A_C

    (population std over all elements). Keeping the scale of :math:`A_C` keeps the meaning of
    :math:`\\lambda` stable across batches. Tensors with one element are returned unchanged.

    Examples:
        >>> a, c = normalize_advantages(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]))
        >>> a, c
        (tensor([-1.,  1.]), tensor([-1.,  1.]))
    """
    if advantage.numel() > 1:
        advantage = (advantage - advantage.mean()) / (advantage.std(correction=0) + _EPS)
    if cost_advantage.numel() > 1:
        cost_advantage = cost_advantage - cost_advantage.mean()
    return advantage, cost_advantage


def make_value_estimators(
    critic: TensorDictModule,
    cost_critic: TensorDictModule,
    gamma: float = 0.99,
    lmbda: float = 0.95,
    cost_gamma: float | None = None,
    cost_lmbda: float | None = None,
    device: torch.device | str | None = None,
    **gae_kwargs: Any,
) -> tuple[GAE, GAE]:
    """Two TorchRL ``GAE`` modules: reward (default keys) and cost (``cost`` keys).

    .. math::

        \\delta_t = r_t + \\gamma (1 - \\text{term}_t) V(s_{t+1}) - V(s_t), \\qquad
        A_t = \\delta_t + \\gamma\\lambda (1 - \\text{done}_t) A_{t+1}, \\qquad
        \\hat V_t = A_t + V(s_t)

    The reward GAE reads ``("next", "reward")`` and ``state_value`` and writes ``advantage``,
    ``value_target``; the cost GAE reads ``("next", "cost")`` and ``cost_value`` and writes
    ``cost_advantage``, ``cost_value_target``. Run both on a ``[*B, T]`` rollout before the loss.

    Args:
        critic: writes ``state_value``.
        cost_critic: writes ``cost_value``.
        gamma: discount of the reward estimator.
        lmbda: GAE lambda of the reward estimator.
        cost_gamma: discount of the cost estimator (default: ``gamma``).
        cost_lmbda: GAE lambda of the cost estimator (default: ``lmbda``).
        device: device of the estimators' buffers.
        **gae_kwargs: passed to both ``GAE`` constructors (e.g. ``vectorized=False``).

    Examples:
        >>> from cmo_rl.modules import make_cost_critic, make_value_critic
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=2, episode_length=3, seed=0)
        >>> gae, cost_gae = make_value_estimators(make_value_critic(env), make_cost_critic(env))
        >>> td = cost_gae(gae(env.rollout(3)))
        >>> td["advantage"].shape, td["cost_value_target"].shape
        (torch.Size([2, 3, 1]), torch.Size([2, 3, 1]))
    """
    cost_gamma = gamma if cost_gamma is None else cost_gamma
    cost_lmbda = lmbda if cost_lmbda is None else cost_lmbda
    for name, value in (
        ("gamma", gamma),
        ("lmbda", lmbda),
        ("cost_gamma", cost_gamma),
        ("cost_lmbda", cost_lmbda),
    ):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    gae = GAE(gamma=gamma, lmbda=lmbda, value_network=critic, device=device, **gae_kwargs)
    cost_gae = GAE(
        gamma=cost_gamma, lmbda=cost_lmbda, value_network=cost_critic, device=device, **gae_kwargs
    )
    cost_gae.set_keys(
        reward="cost",
        value="cost_value",
        advantage="cost_advantage",
        value_target="cost_value_target",
    )
    return gae, cost_gae


class LagrangianPPOLoss(_CriticLossBase):
    """Clipped PPO on the Lagrangian advantage, with reward and cost critic losses.

    The actor and both critics are held as *plain submodules* (no TorchRL functional copies):
    ``TensorDict.from_module(loss)`` lists their parameters under ``actor_network``,
    ``critic_network`` and ``cost_critic_network``, and swapping parameters in with
    ``params.to_module(loss)`` or ``torch.func.functional_call(loss, params, (td,))`` changes
    what the loss computes, with gradients flowing to the swapped-in tensors.

    Args:
        actor: probabilistic actor (``get_dist`` from ``observation``), e.g.
            :func:`cmo_rl.modules.make_actor`.
        critic: writes ``state_value``.
        cost_critic: writes ``cost_value``.
        clip_epsilon: PPO clip range :math:`\\epsilon`.
        entropy_coeff: :math:`c_H`.
        critic_coeff: :math:`c_V`.
        cost_critic_coeff: :math:`c_C`.
        normalize_advantage: apply :func:`normalize_advantages` to the batch first.
        multiplier: where :math:`\\lambda` comes from — ``None`` (read the ``lagrange_multiplier``
            key of the input, shape ``[]`` or ``[*B, 1]``), a float, a tensor (may require grad),
            or a module with a ``.value`` tensor (:class:`~cmo_rl.objectives.LagrangeMultiplier`,
            :class:`~cmo_rl.objectives.PIDLagrangian`). A module is *not* registered as a
            submodule: its state is updated by its own rule, never by an optimizer over
            ``loss.parameters()``, so move it to the device yourself (the ``.value`` of both
            multiplier modules is detached). The loss itself does not detach :math:`\\lambda`.

    Input keys (``N`` samples, any batch shape): ``observation``, ``action``,
    ``action_log_prob`` ``[*B]``, ``advantage``, ``cost_advantage``, ``value_target``,
    ``cost_value_target`` ``[*B, 1]`` and possibly ``lagrange_multiplier``. Rename with
    :meth:`set_keys` (fields ``action, sample_log_prob, advantage, cost_advantage, value_target,
    cost_value_target, value, cost_value, lagrange_multiplier``).

    Returns a TensorDict with ``loss_objective``, ``loss_critic``, ``loss_cost_critic``,
    ``loss_entropy`` and detached diagnostics ``entropy``, ``kl_approx``, ``clip_fraction``,
    ``ratio_mean``, ``lagrange_multiplier``, ``advantage_mean``/``_std``,
    ``cost_advantage_mean``/``_std`` (before normalisation), ``lagrangian_advantage_mean``,
    ``explained_variance``, ``cost_explained_variance``.

    Examples:
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=4, episode_length=5, seed=0)
        >>> actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(16,))
        >>> gae, cost_gae = make_value_estimators(critic, cost_critic, gamma=0.99, lmbda=0.95)
        >>> loss = LagrangianPPOLoss(actor, critic, cost_critic, multiplier=0.5)
        >>> with torch.no_grad():
        ...     batch = cost_gae(gae(env.rollout(5, actor))).reshape(-1)
        >>> out = loss(batch)
        >>> total = out["loss_objective"] + out["loss_critic"] + out["loss_cost_critic"] + out["loss_entropy"]
        >>> total.backward()
        >>> float(out["lagrange_multiplier"]), float(out["kl_approx"])
        (0.5, 0.0)
    """

    @dataclass
    class _AcceptedKeys(_CriticLossBase._AcceptedKeys):
        """Configurable input keys (change with :meth:`set_keys`): the critic keys of
        :class:`~cmo_rl.objectives.CriticLoss` (``value_target``, ``cost_value_target``,
        ``value``, ``cost_value``, same defaults) and those of the policy term:

        Attributes:
            action: the action taken. Defaults to ``"action"``.
            sample_log_prob: log-probability of ``action`` under the behaviour policy.
                Defaults to ``"action_log_prob"``.
            advantage / cost_advantage: reward / cost advantages ``[*B, 1]``.
            lagrange_multiplier: key of :math:`\\lambda` when no ``multiplier`` is given.
        """

        action: NestedKey = "action"
        sample_log_prob: NestedKey = "action_log_prob"
        advantage: NestedKey = "advantage"
        cost_advantage: NestedKey = "cost_advantage"
        lagrange_multiplier: NestedKey = "lagrange_multiplier"

    tensor_keys: _AcceptedKeys
    _schedulable_buffers = frozenset(
        {"clip_epsilon", "entropy_coeff", "critic_coeff", "cost_critic_coeff"}
    )
    _OUT_KEYS = (
        "loss_objective",
        "loss_critic",
        "loss_cost_critic",
        "loss_entropy",
        "entropy",
        "kl_approx",
        "clip_fraction",
        "ratio_mean",
        "lagrange_multiplier",
        "advantage_mean",
        "advantage_std",
        "cost_advantage_mean",
        "cost_advantage_std",
        "lagrangian_advantage_mean",
        "explained_variance",
        "cost_explained_variance",
    )

    actor_network: ProbabilisticTensorDictSequential

    def __init__(
        self,
        actor: ProbabilisticTensorDictSequential,
        critic: TensorDictModule,
        cost_critic: TensorDictModule,
        *,
        clip_epsilon: float = 0.2,
        entropy_coeff: float = 0.0,
        critic_coeff: float = 1.0,
        cost_critic_coeff: float = 1.0,
        normalize_advantage: bool = True,
        multiplier: nn.Module | torch.Tensor | float | None = None,
    ) -> None:
        if not hasattr(actor, "get_dist"):
            raise ValueError(
                f"actor must be a probabilistic module with get_dist, got {type(actor).__name__}"
            )
        if not 0.0 < float(clip_epsilon) < 1.0:
            raise ValueError(f"clip_epsilon must be in (0, 1), got {clip_epsilon}")
        super().__init__(
            {"actor_network": actor, "critic_network": critic, "cost_critic_network": cost_critic},
            clip_epsilon=clip_epsilon,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            cost_critic_coeff=cost_critic_coeff,
        )
        self.normalize_advantage = bool(normalize_advantage)
        self.multiplier = multiplier

    # ----------------------------------------------------------------------------- multiplier
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "multiplier":  # the property setter, never nn.Module submodule registration
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @property
    def multiplier(self) -> nn.Module | torch.Tensor | None:
        """The multiplier source: a module, a tensor, or ``None`` (read from the input)."""
        if self._multiplier_module is not None:
            return self._multiplier_module
        return self._fixed_multiplier

    @multiplier.setter
    def multiplier(self, value: nn.Module | torch.Tensor | float | None) -> None:
        module, fixed = None, None
        if isinstance(value, nn.Module):
            if not hasattr(value, "value"):
                raise ValueError(
                    f"a multiplier module needs a `.value` tensor, {type(value).__name__} has none"
                )
            module = value
        elif isinstance(value, (float, int)) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"lagrange multiplier must be >= 0, got {value}")
            fixed = torch.tensor(float(value), device=self.clip_epsilon.device)
        elif isinstance(value, torch.Tensor):
            fixed = value
        elif value is not None:
            raise ValueError(
                "multiplier must be None, a float, a tensor or a module with `.value`, got "
                f"{type(value).__name__}"
            )
        # stored outside nn.Module registries: never a parameter of the loss
        self.__dict__["_multiplier_module"] = module
        self.__dict__["_fixed_multiplier"] = fixed
        self.__dict__["_in_keys"] = None

    def _get_multiplier(self, tensordict: TensorDictBase) -> torch.Tensor:
        if self._multiplier_module is not None:
            value = self._multiplier_module.value
        elif self._fixed_multiplier is not None:
            value = self._fixed_multiplier
        else:
            value = tensordict.get(self.tensor_keys.lagrange_multiplier, None)
            if value is None:
                raise KeyError(
                    f"no lagrange multiplier: the key {self.tensor_keys.lagrange_multiplier!r} "
                    "is missing from the input and no `multiplier` was given to the loss"
                )
        value = torch.as_tensor(value)
        if not value.dtype.is_floating_point:
            value = value.float()
        if bool((value.detach() < 0).any()):
            raise ValueError(
                f"lagrange multiplier must be >= 0, got min {float(value.detach().min())}"
            )
        return value

    # ------------------------------------------------------------------------------- keys
    def _collect_in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        in_keys = _unique(
            (
                *self.actor_network.in_keys,
                *self.critic_network.in_keys,
                *self.cost_critic_network.in_keys,
                keys.action,
                keys.sample_log_prob,
                keys.advantage,
                keys.cost_advantage,
                keys.value_target,
                keys.cost_value_target,
            )
        )
        if self.multiplier is None:
            in_keys.append(keys.lagrange_multiplier)
        return in_keys

    # ---------------------------------------------------------------------------- forward
    def _require(self, tensordict: TensorDictBase, key: NestedKey, what: str) -> torch.Tensor:
        value = tensordict.get(key, None)
        if value is None:
            hint = (
                "; run the GAE modules from make_value_estimators(critic, cost_critic, ...) "
                "on the batch first"
                if what.endswith(("advantage", "target"))
                else ""
            )
            raise KeyError(f"the {what} key {key!r} is missing from the input tensordict{hint}")
        return value

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)  # the networks write loc/scale/values here
        keys = self.tensor_keys
        advantage = self._require(tensordict, keys.advantage, "advantage")
        cost_advantage = self._require(tensordict, keys.cost_advantage, "cost advantage")
        value_target = self._require(tensordict, keys.value_target, "value target")
        cost_value_target = self._require(tensordict, keys.cost_value_target, "cost value target")
        action = self._require(tensordict, keys.action, "action")
        old_log_prob = self._require(tensordict, keys.sample_log_prob, "action log-prob")
        if advantage.shape != cost_advantage.shape:
            raise ValueError(
                f"advantage {tuple(advantage.shape)} and cost_advantage "
                f"{tuple(cost_advantage.shape)} must have the same shape"
            )
        if advantage.shape[:-1] != old_log_prob.shape or advantage.shape[-1:] != (1,):
            raise ValueError(
                f"expected advantage of shape [*B, 1] and action_log_prob [*B]; got "
                f"{tuple(advantage.shape)} and {tuple(old_log_prob.shape)}"
            )
        if action.requires_grad or old_log_prob.requires_grad:
            raise ValueError("the stored action and action log-prob must not require grad")
        multiplier = self._get_multiplier(tensordict).to(advantage.device)
        if not _broadcasts_to(multiplier.shape, advantage.shape):
            raise ValueError(
                "the lagrange multiplier must be a scalar or broadcast to the advantage shape "
                f"{tuple(advantage.shape)}, got {tuple(multiplier.shape)}"
            )

        raw_advantage, raw_cost_advantage = advantage.detach(), cost_advantage.detach()
        if self.normalize_advantage:
            advantage, cost_advantage = normalize_advantages(advantage, cost_advantage)
        penalised = lagrangian_advantage(advantage.detach(), cost_advantage.detach(), multiplier)

        dist = self.actor_network.get_dist(tensordict)
        log_prob = dist.log_prob(action)
        if log_prob.shape != old_log_prob.shape:
            raise ValueError(
                f"the actor's log-prob has shape {tuple(log_prob.shape)} but the stored "
                f"{keys.sample_log_prob!r} has shape {tuple(old_log_prob.shape)}"
            )
        log_ratio = (log_prob - old_log_prob).unsqueeze(-1)
        ratio = log_ratio.exp()
        eps = self.clip_epsilon
        clipped = ratio.clamp(1.0 - eps, 1.0 + eps)
        surrogate = torch.minimum(ratio * penalised, clipped * penalised)
        loss_objective = -self._reduce_loss(surrogate, tensordict)

        entropy = self._entropy(dist)
        loss_entropy = -self.entropy_coeff * self._reduce_loss(entropy, tensordict)

        critic_losses, (value, cost_value) = self._critic_terms(
            tensordict, value_target, cost_value_target
        )

        with torch.no_grad():
            out = TensorDict(
                entropy=entropy.detach().mean(),
                kl_approx=(-log_ratio).detach().mean(),
                clip_fraction=((ratio.detach() - 1.0).abs() > eps).float().mean(),
                ratio_mean=ratio.detach().mean(),
                lagrange_multiplier=multiplier.detach().float().mean(),
                **_batch_diagnostics(
                    raw_advantage,
                    raw_cost_advantage,
                    penalised,
                    (value_target, value, cost_value_target, cost_value),
                ),
            )
        out.set("loss_objective", loss_objective)
        out.update(critic_losses)
        out.set("loss_entropy", loss_entropy)
        return out

    @staticmethod
    def _entropy(dist: torch.distributions.Distribution) -> torch.Tensor:
        """Per-sample entropy ``[*B, 1]``: analytic when available, else a 1-sample estimate."""
        try:
            entropy = dist.entropy()
        except NotImplementedError:
            entropy = -dist.log_prob(dist.rsample())
        return entropy.unsqueeze(-1)
