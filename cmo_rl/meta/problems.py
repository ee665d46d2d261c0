"""Inner problems for the bilevel unroll: a closed-form CMDP family and the RL rollout problem.

Both implement :class:`cmo_rl.meta.bilevel.InnerProblem` (``init_params()``,
``sample_round(params)``).

:class:`ContextualBanditCMDP` is a one-step CMDP repeated for ``episode_length`` steps: a context
``s`` (one of ``S``, uniform) with features :math:`x_s \\in \\mathbb{R}^F`, ``A`` actions, a
linear-softmax policy :math:`\\pi_\\theta(a|s) = \\mathrm{softmax}(W x_s + b)_a` (an
``nn.Linear(F, A)`` evaluated functionally) and

.. math::

    J_R(\\theta) = T\\, \\frac{1}{S}\\sum_s \\sum_a \\pi_\\theta(a|s)\\, r(s, a), \\qquad
    J_C(\\theta) = T\\, \\frac{1}{S}\\sum_s \\sum_a \\pi_\\theta(a|s)\\, c(s, a).

Rewards :math:`r \\sim U(0, 1)` and costs :math:`c = r\\,u`, :math:`u \\sim U(0.5, 1.5)`: the
rewarding actions tend to be costly, so with a cost limit below the uniform policy's cost
(about ``T / 2``) the constraint binds and the best safe policy prefers cheap rewarding
actions. Everything is exact and deterministic, so meta-gradients can be checked against finite
differences, and the family (one task per seed) serves meta-training demos in seconds.

:class:`RolloutCMDP` is the real thing: each round collects ``episode_length`` steps from every
sub-env of a batched TorchRL env with the detached policy, computes GAE advantages for reward
and cost with critics fitted on the side (:class:`~cmo_rl.objectives.CriticLoss`, plain Adam,
outside the meta-graph), and returns the importance-weighted surrogates of
:func:`cmo_rl.meta.functional.surrogate_estimates`. Like the losses, it reads and writes the
tensordict keys of its ``tensor_keys`` (renamed with :meth:`RolloutCMDP.set_keys`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cmo_rl.meta.bilevel import InnerRound
from cmo_rl.meta.functional import log_prob_of, params_of, surrogate_estimates, swapped_params
from cmo_rl.objectives.critic import CriticLoss
from cmo_rl.objectives.lagrangian import make_value_estimators

__all__ = ["ContextualBanditCMDP", "RolloutCMDP"]


def _next(key: NestedKey) -> NestedKey:
    """``key`` under ``"next"`` (where the env writes rewards and costs), as a flat tuple."""
    return unravel_key(("next", key))


class ContextualBanditCMDP:
    """A contextual-bandit CMDP task with closed-form ``J_R``, ``J_C`` (see module docstring).

    Args:
        reward: ``[S, A]`` table of rewards.
        cost: ``[S, A]`` table of costs.
        features: ``[S, F]`` context features.
        episode_length: ``T``, steps per episode (scales returns and costs).
        init_std: std of the fresh policy's weights (bias starts at 0).
        seed: seed of :meth:`init_params`.

    Implements :class:`cmo_rl.meta.bilevel.InnerProblem`.

    Examples:
        >>> task = ContextualBanditCMDP.sample(seed=0, dtype=torch.float64)
        >>> theta = task.init_params()
        >>> j_r, j_c = task.estimates(theta)
        >>> bool(0 < j_c < j_r.new_tensor(task.episode_length)), theta["weight"].shape
        (True, torch.Size([4, 3]))
    """

    def __init__(
        self,
        reward: Tensor,
        cost: Tensor,
        features: Tensor,
        *,
        episode_length: float = 10.0,
        init_std: float = 0.1,
        seed: int = 0,
    ) -> None:
        if reward.dim() != 2 or reward.shape != cost.shape:
            raise ValueError(
                f"reward and cost must be [S, A] tables of one shape, got {tuple(reward.shape)}, "
                f"{tuple(cost.shape)}"
            )
        if features.dim() != 2 or features.shape[0] != reward.shape[0]:
            raise ValueError(
                f"features must be [S, F] with S = {reward.shape[0]}, got {tuple(features.shape)}"
            )
        if episode_length <= 0:
            raise ValueError(f"episode_length must be > 0, got {episode_length}")
        self.reward, self.cost, self.features = reward, cost, features
        self.episode_length = float(episode_length)
        self.init_std = float(init_std)
        self.seed = int(seed)
        num_actions, feature_dim = reward.shape[1], features.shape[1]
        self.policy = nn.Linear(feature_dim, num_actions).to(features.device, features.dtype)

    @classmethod
    def sample(
        cls,
        seed: int,
        *,
        num_contexts: int = 8,
        num_actions: int = 4,
        feature_dim: int = 3,
        episode_length: float = 10.0,
        init_std: float = 0.1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> ContextualBanditCMDP:
        """Draw one task of the family from ``seed`` (tables on CPU, then moved)."""
        gen = torch.Generator().manual_seed(int(seed))
        reward = torch.rand(num_contexts, num_actions, generator=gen, dtype=torch.float64)
        cost = reward * (
            0.5 + torch.rand(num_contexts, num_actions, generator=gen, dtype=torch.float64)
        )
        features = torch.randn(num_contexts, feature_dim, generator=gen, dtype=torch.float64)
        to = dict(dtype=dtype, device=device)
        return cls(
            reward.to(**to),
            cost.to(**to),
            features.to(**to),
            episode_length=episode_length,
            init_std=init_std,
            seed=seed,
        )

    def init_params(self) -> TensorDict:
        """Fresh policy parameters, deterministic in ``seed``: ``W ~ N(0, init_std^2)``, ``b = 0``."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        params = params_of(self.policy)
        weight = torch.randn(params["weight"].shape, generator=gen, dtype=torch.float64)
        params["weight"] = (self.init_std * weight).to(params["weight"])
        params["bias"] = torch.zeros_like(params["bias"])
        return params

    def action_probs(self, params: TensorDictBase) -> Tensor:
        """``pi_theta(a|s)``, ``[S, A]``, differentiable in ``params``."""
        with swapped_params(params, self.policy):
            logits = self.policy(self.features)
        return logits.softmax(-1)

    def estimates(self, params: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Exact ``(J_R, J_C)`` at ``params`` (differentiable scalars)."""
        probs = self.action_probs(params)
        j_r = self.episode_length * (probs * self.reward).sum(-1).mean()
        j_c = self.episode_length * (probs * self.cost).sum(-1).mean()
        return j_r, j_c

    def sample_round(self, params: TensorDictBase) -> InnerRound:
        """The closed-form estimates (no sampling noise) and the measured return / cost."""
        with torch.no_grad():
            j_r, j_c = self.estimates(params)
        return InnerRound(self.estimates, {"return": float(j_r), "cost": float(j_c)})


class RolloutCMDP:
    """One RL task for the bilevel unroll: a batched env, a fresh policy and two critics.

    Per round (:meth:`sample_round`), under the detached parameters ``theta_k``:

    1. collect ``T = episode_length`` steps from each of the env's ``B`` sub-envs
       (``env.rollout(T, actor, break_when_any_done=False)``, random exploration; the env is
       reset at the start of each round);
    2. measure :math:`J_R^{meas}`, :math:`J_C^{meas}`: the per-env sum of ``reward`` / ``cost``
       over the ``T`` steps, averaged over the ``B`` envs (one episode per env when ``T`` is
       the env's episode length);
    3. GAE(``gamma``, ``gae_lambda``) for reward (``advantage``) and cost (``cost_advantage``)
       with the current critics (``cmo_rl.objectives.lagrangian.make_value_estimators``);
       advantages are centred (batch mean subtracted: same expected gradient, less variance),
       not rescaled, so the surrogate's gradient keeps the units of an episode return;
    4. fit both critics to the GAE targets with ``critic_steps`` full-batch Adam steps
       (``critic_lr``) on the sum of the :class:`~cmo_rl.objectives.CriticLoss` terms
       ``loss_critic + loss_cost_critic`` -- on the side, outside the meta-graph;
    5. recompute ``action_log_prob`` under ``theta_k`` (so the ratio is exactly 1 there) and
       return :func:`~cmo_rl.meta.functional.surrogate_estimates` on the batch.

    Args:
        env: batched env (``batch_size=[B]``) with ``reward`` and ``cost`` in its reward spec.
        actor: a ``ProbabilisticActor`` writing ``action`` and ``action_log_prob``; its current
            parameters are the task's ``theta_0``.
        critic: value operator writing ``state_value``.
        cost_critic: value operator writing ``cost_value``.
        episode_length: ``T``.
        gamma: GAE discount.
        gae_lambda: GAE lambda.
        critic_lr: the critics' Adam learning rate.
        critic_steps: the critics' Adam steps per round.

    Metrics of a round: ``return``, ``cost`` (measured), ``time/collect``, ``time/gae``.

    Keys: ``tensor_keys`` (defaults: the env's ``("next", "reward")``, ``("next", "cost")``,
    the critics' ``state_value``, ``cost_value``, the ``GAE`` outputs ``advantage``,
    ``value_target``, ``cost_advantage``, ``cost_value_target`` and the actor's
    ``action_log_prob``, as in :class:`~cmo_rl.objectives.LagrangianPPOLoss`). :meth:`set_keys`
    renames them here and in the task's ``reward_gae``, ``cost_gae`` and ``critic_loss``.

    Examples:
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=4, episode_length=5, seed=0)
        >>> actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
        >>> task = RolloutCMDP(env, actor, critic, cost_critic, episode_length=5)
        >>> theta = task.init_params()
        >>> rnd = task.sample_round(theta)
        >>> j_r, j_c = rnd.estimates(theta)  # differentiable in theta; the measured cost at theta_k
        >>> sorted(rnd.metrics), abs(float(j_c) - rnd.metrics["cost"]) < 1e-5
        (['cost', 'return', 'time/collect', 'time/gae'], True)
    """

    def __init__(
        self,
        env: EnvBase,
        actor: nn.Module,
        critic: nn.Module,
        cost_critic: nn.Module,
        *,
        episode_length: int,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        critic_lr: float = 1e-3,
        critic_steps: int = 10,
    ) -> None:
        if len(env.batch_size) != 1:
            raise ValueError(f"env must have a 1-d batch size [num_envs], got {env.batch_size}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if not 0.0 < gamma <= 1.0 or not 0.0 <= gae_lambda <= 1.0:
            raise ValueError(
                f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {gamma}, {gae_lambda}"
            )
        if critic_steps < 0:
            raise ValueError(f"critic_steps must be >= 0, got {critic_steps}")
        self.env, self.actor = env, actor
        self.critic, self.cost_critic = critic, cost_critic
        self.episode_length = int(episode_length)
        self.critic_steps = int(critic_steps)
        self._theta0 = params_of(actor)
        self.reward_gae, self.cost_gae = make_value_estimators(
            critic, cost_critic, gamma=gamma, lmbda=gae_lambda
        )
        self.critic_loss = CriticLoss(critic, cost_critic)
        critic_params = list(critic.parameters()) + list(cost_critic.parameters())
        self.critic_optim = torch.optim.Adam(critic_params, lr=critic_lr)
        self.tensor_keys = self._AcceptedKeys()
        self.set_keys()  # the estimators and the critic loss read the same keys

    @dataclass
    class _AcceptedKeys(CriticLoss._AcceptedKeys):
        """Configurable keys (change with :meth:`RolloutCMDP.set_keys`): the keys of
        :class:`~cmo_rl.objectives.CriticLoss` (``value`` / ``cost_value``, which the critics
        write, and ``value_target`` / ``cost_value_target``, which the ``GAE`` modules write;
        same defaults) and these:

        Attributes:
            reward / cost: per-step reward and cost, read under ``"next"``. Defaults
                ``"reward"``, ``"cost"``.
            advantage / cost_advantage: what the ``GAE`` modules write (defaults: these names).
            sample_log_prob: log-probability of ``action`` under the sampling parameters.
                Defaults to ``"action_log_prob"``.
        """

        reward: NestedKey = "reward"
        cost: NestedKey = "cost"
        advantage: NestedKey = "advantage"
        cost_advantage: NestedKey = "cost_advantage"
        sample_log_prob: NestedKey = "action_log_prob"

    default_keys = _AcceptedKeys

    def set_keys(self, **kwargs: Any) -> None:
        """Rename keys (fields of ``_AcceptedKeys``; ``None`` restores a default), here and in
        ``reward_gae``, ``cost_gae`` and ``critic_loss``, exactly like ``LossModule.set_keys``.

        Examples:
            >>> from cmo_rl.modules import actor_critic_from_env
            >>> from cmo_rl.testing import MockCMDPEnv
            >>> env = MockCMDPEnv(num_envs=2, episode_length=3, seed=0)
            >>> modules = actor_critic_from_env(env, hidden_layers=(4,))
            >>> task = RolloutCMDP(env, *modules, episode_length=3)
            >>> task.set_keys(cost="penalty", cost_value_target="cost_target")
            >>> task.cost_gae.tensor_keys.reward, task.critic_loss.tensor_keys.cost_value_target
            ('penalty', 'cost_target')
        """
        accepted = {f.name for f in fields(self._AcceptedKeys)}
        for name, key in kwargs.items():
            if name not in accepted:
                raise ValueError(
                    f"{name} is not an accepted key of RolloutCMDP; accepted: {sorted(accepted)}"
                )
            setattr(
                self.tensor_keys, name, getattr(self.default_keys(), name) if key is None else key
            )
        keys = self.tensor_keys
        self.reward_gae.set_keys(
            reward=keys.reward,
            value=keys.value,
            advantage=keys.advantage,
            value_target=keys.value_target,
        )
        self.cost_gae.set_keys(
            reward=keys.cost,
            value=keys.cost_value,
            advantage=keys.cost_advantage,
            value_target=keys.cost_value_target,
        )
        critic_keys = fields(CriticLoss._AcceptedKeys)
        self.critic_loss.set_keys(**{f.name: getattr(keys, f.name) for f in critic_keys})

    def init_params(self) -> TensorDict:
        """``theta_0``: a copy of the actor's parameters at construction."""
        return self._theta0.clone()

    def collect(self, params: TensorDictBase, *, deterministic: bool = False) -> TensorDictBase:
        """``[B, T]`` rollout with ``params`` swapped into the actor (no gradient)."""
        mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
        with (
            torch.no_grad(),
            swapped_params(params.detach(), self.actor),
            set_exploration_type(mode),
        ):
            return self.env.rollout(self.episode_length, self.actor, break_when_any_done=False)

    @torch.enable_grad()
    def _fit_critics(self, batch: TensorDictBase) -> None:
        """``critic_steps`` full-batch Adam steps on ``loss_critic + loss_cost_critic``."""
        data = batch.select(*self.critic_loss.in_keys)
        for _ in range(self.critic_steps):
            out = self.critic_loss(data)
            loss = out["loss_critic"] + out["loss_cost_critic"]
            self.critic_optim.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_optim.step()

    def sample_round(self, params: TensorDictBase) -> InnerRound:
        params = params.detach()
        keys = replace(self.tensor_keys)  # a snapshot: the round's estimates keep its keys
        t0 = time.perf_counter()
        batch = self.collect(params)
        t1 = time.perf_counter()
        episode_return = batch.get(_next(keys.reward)).sum(1).mean()
        episode_cost = batch.get(_next(keys.cost)).sum(1).mean()
        with torch.no_grad():
            self.reward_gae(batch)
            self.cost_gae(batch)
            for key in (keys.advantage, keys.cost_advantage):
                batch[key] = batch[key] - batch[key].mean()
            batch[keys.sample_log_prob] = log_prob_of(self.actor, params, batch)
        self._fit_critics(batch)
        # "action": the key log_prob_of / surrogate_estimates read (cmo_rl.meta.functional)
        data = batch.select(
            *self.actor.in_keys,
            "action",
            keys.sample_log_prob,
            keys.advantage,
            keys.cost_advantage,
        )

        def estimates(theta: TensorDictBase) -> tuple[Tensor, Tensor]:
            return surrogate_estimates(
                self.actor,
                theta,
                data,
                episode_return=episode_return,
                episode_cost=episode_cost,
                episode_length=self.episode_length,
                advantage_key=keys.advantage,
                cost_advantage_key=keys.cost_advantage,
                log_prob_key=keys.sample_log_prob,
            )

        metrics = {
            "return": float(episode_return),
            "cost": float(episode_cost),
            "time/collect": t1 - t0,
            "time/gae": time.perf_counter() - t1,
        }
        return InnerRound(estimates, metrics)

    def evaluate(self, params: TensorDictBase, episodes: int) -> dict[str, float]:
        """Mean return and cost of ``episodes`` (rounded up to whole batches of ``B``)
        deterministic-policy episodes of ``T`` steps."""
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        keys = self.tensor_keys
        returns, costs = [], []
        for _ in range(math.ceil(episodes / self.env.batch_size[0])):
            batch = self.collect(params, deterministic=True)
            returns.append(batch.get(_next(keys.reward)).sum(1).flatten())
            costs.append(batch.get(_next(keys.cost)).sum(1).flatten())
        return {
            "eval/episode_return": float(torch.cat(returns).mean()),
            "eval/episode_cost": float(torch.cat(costs).mean()),
        }
