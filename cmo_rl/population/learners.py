"""A population of ``P`` learners as one stack of parameters, and back to modules.

Every learner is an :class:`~cmo_rl.modules.ActorCritic` of the same architecture (as
:func:`cmo_rl.training.setup.make_agent` builds it), independently initialised. The population
engine never runs those modules one by one: it

1. splits one *template* agent into its plain ``nn.Module`` cores (:class:`LearnerNets`): the
   actor's observation -> ``(loc, scale)`` network and its distribution class, and the two
   critics' observation -> value networks, which :func:`torch.func.functional_call` runs with
   any parameters swapped in;
2. stacks the parameters of the ``P`` agents into one :class:`~tensordict.TensorDict` of batch
   size ``[P]`` with the groups ``actor``, ``critic``, ``cost_critic``
   (:func:`stack_learners`; each group is ``TensorDict.from_module`` of that core), which
   ``torch.func.vmap`` maps over;
3. writes learner ``p`` back into ordinary modules (:func:`unstack_learners`), for
   checkpoints, evaluation and collection with the existing code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from cmo_rl.modules import ActorCritic
from cmo_rl.training.setup import make_agent

__all__ = ["GROUPS", "LearnerNets", "make_population", "stack_learners", "unstack_learners"]

#: The parameter groups of a learner, in the order of
#: :func:`cmo_rl.training.onpolicy.make_optimizer` in the recipes.
GROUPS = ("actor", "critic", "cost_critic")


def _cores(agent: Sequence[nn.Module]) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """``(actor core, distribution module, critic core, cost critic core)`` of an agent."""
    actor, critic, cost_critic = agent
    try:
        net_module, dist_module = actor.module[0], actor.module[-1]
    except (AttributeError, TypeError, IndexError) as error:
        raise ValueError("the actor must be a ProbabilisticActor as make_actor builds") from error
    if list(net_module.in_keys) != ["observation"] or list(dist_module.dist_keys) != [
        "loc",
        "scale",
    ]:
        raise ValueError(
            "expected an actor observation -> (loc, scale) -> distribution (make_actor), got "
            f"in_keys {net_module.in_keys} and dist_keys {dist_module.dist_keys}"
        )
    for name, critic_module in (("critic", critic), ("cost_critic", cost_critic)):
        if list(critic_module.in_keys) != ["observation"]:
            raise ValueError(f"the {name} must read 'observation', got {critic_module.in_keys}")
    return net_module.module, dist_module, critic.module, cost_critic.module


@dataclass
class LearnerNets:
    """The stateless computation of one learner: which networks, which distribution.

    Holds the template agent's plain networks; their own parameters are never used by the
    functional calls (:meth:`dist`, :meth:`value`), which take the parameters of one learner
    (``params[p]``, or a vmapped slice of the stack) as flat ``{dotted name: tensor}`` dicts.

    Attributes:
        actor: observation -> ``(loc, scale)``.
        critic: observation -> reward value ``[*B, 1]``.
        cost_critic: observation -> cost value ``[*B, 1]``.
        distribution_class: the actor's distribution class (e.g. ``ClippedModeNormal``).
        distribution_kwargs: its extra constructor arguments (action bounds).
        names: per group, the parameter names in ``module.parameters()`` order (the order
            in which ``clip_grad_norm_`` stacks the per-tensor norms).

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> agent = actor_critic_from_env(make_env("MockCMDP-v0", num_envs=2), hidden_layers=(8,))
        >>> nets = LearnerNets.from_agent(agent)
        >>> nets.names["actor"]
        ('0.0.weight', '0.0.bias', '0.2.weight', '0.2.bias', '1.log_std')
        >>> params = nets.flat_params(stack_learners([agent])[0])
        >>> obs = torch.zeros(3, 2)
        >>> dist = nets.dist(params["actor"], obs)
        >>> bool(torch.equal(dist.mean, agent.actor.module[0].module(obs)[0]))
        True
        >>> nets.value(params["cost_critic"], obs, "cost_critic").shape
        torch.Size([3, 1])
    """

    actor: nn.Module
    critic: nn.Module
    cost_critic: nn.Module
    distribution_class: type
    distribution_kwargs: dict[str, Any] = field(default_factory=dict)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_agent(cls, agent: Sequence[nn.Module]) -> LearnerNets:
        """The cores of ``agent`` (an ``ActorCritic`` of :func:`make_agent`), no copy."""
        actor, dist_module, critic, cost_critic = _cores(agent)
        names = {
            group: tuple(name for name, p in module.named_parameters() if p.requires_grad)
            for group, module in zip(GROUPS, (actor, critic, cost_critic))
        }
        return cls(
            actor=actor,
            critic=critic,
            cost_critic=cost_critic,
            distribution_class=dist_module.distribution_class,
            distribution_kwargs=dict(dist_module.distribution_kwargs),
            names=names,
        )

    def flat_params(self, params: TensorDictBase) -> dict[str, dict[str, torch.Tensor]]:
        """``{group: {dotted name: tensor}}`` in :attr:`names` order (any batch size)."""
        out = {}
        for group in GROUPS:
            flat = params.get(group).flatten_keys(".")
            out[group] = {name: flat.get(name) for name in self.names[group]}
        return out

    def nested_params(
        self, flat: Mapping[str, Mapping[str, torch.Tensor]], batch_size: Sequence[int]
    ) -> TensorDict:
        """The inverse of :meth:`flat_params`: a nested TensorDict of batch size ``batch_size``."""
        groups = {
            group: TensorDict(dict(flat[group]), batch_size=batch_size).unflatten_keys(".")
            for group in GROUPS
        }
        return TensorDict(groups, batch_size=batch_size)

    def dist(self, params: Mapping[str, torch.Tensor], observation: torch.Tensor) -> Any:
        """The policy's distribution at ``observation`` with the actor parameters ``params``.

        Built exactly as the actor's ``get_dist`` builds it (same class, same keywords)."""
        loc, scale = torch.func.functional_call(self.actor, dict(params), (observation,))
        return self.distribution_class(loc=loc, scale=scale, **self.distribution_kwargs)

    def value(
        self, params: Mapping[str, torch.Tensor], observation: torch.Tensor, group: str = "critic"
    ) -> torch.Tensor:
        """The ``group`` critic's value ``[*B, 1]`` at ``observation`` with ``params``."""
        module = self.critic if group == "critic" else self.cost_critic
        return torch.func.functional_call(module, dict(params), (observation,))


def stack_learners(agents: Sequence[Sequence[nn.Module]]) -> TensorDict:
    """The parameters of ``P`` agents stacked: a TensorDict ``[P]`` with groups ``actor``,
    ``critic``, ``cost_critic`` (each ``TensorDict.from_module`` of the core), detached copies.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> env = make_env("MockCMDP-v0", num_envs=2)
        >>> agents = [actor_critic_from_env(env, hidden_layers=(8,)) for _ in range(3)]
        >>> params = stack_learners(agents)
        >>> params.batch_size, params["actor", "1", "log_std"].shape
        (torch.Size([3]), torch.Size([3, 1]))
    """
    if not agents:
        raise ValueError("need at least one agent")
    per_agent = []
    for agent in agents:
        cores = _cores(agent)
        groups = {
            group: TensorDict.from_module(module, as_module=False).detach().clone()
            for group, module in zip(GROUPS, (cores[0], cores[2], cores[3]))
        }
        per_agent.append(TensorDict(groups, batch_size=[]))
    try:
        return torch.stack(per_agent, 0).contiguous()
    except (RuntimeError, ValueError) as error:
        raise ValueError("the agents must share one architecture") from error


def unstack_learners(params: TensorDictBase, agents: Sequence[Sequence[nn.Module]]) -> None:
    """Copy learner ``p`` of ``params`` into ``agents[p]`` (in place, no gradient).

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> cfg = {"hidden_layers": [4], "activation": "tanh", "init_log_std": -0.5}
        >>> agents = make_population(cfg, MockCMDPEnv(num_envs=1), "cpu", size=2)
        >>> params = stack_learners(agents)
        >>> params["actor", "1", "log_std"] += 1.0
        >>> unstack_learners(params, agents)
        >>> [round(float(a.actor.module[0].module[1].log_std.detach()), 2) for a in agents]
        [0.5, 0.5]
    """
    if params.batch_size[:1] != torch.Size([len(agents)]):
        raise ValueError(f"params of batch size {params.batch_size} for {len(agents)} agents")
    with torch.no_grad():
        for p, agent in enumerate(agents):
            cores = _cores(agent)
            for group, module in zip(GROUPS, (cores[0], cores[2], cores[3])):
                target = TensorDict.from_module(module, as_module=False)
                target.update_(params[p].get(group))


def make_population(
    cfg: Mapping[str, Any],
    env: Any,
    device: torch.device | str,
    size: int,
    seeds: Sequence[int] | None = None,
) -> list[ActorCritic]:
    """``size`` agents from :func:`cmo_rl.training.setup.make_agent`, each initialised after
    ``torch.manual_seed(seeds[p])`` when ``seeds`` is given (else from the global RNG in turn).

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> cfg = {"hidden_layers": [8], "activation": "tanh", "init_log_std": -0.5}
        >>> agents = make_population(cfg, make_env("MockCMDP-v0", num_envs=2), "cpu", 2, seeds=[1, 1])
        >>> w = [a.critic.module[0].weight for a in agents]
        >>> bool(torch.equal(w[0], w[1]))  # same seed, same initialisation
        True
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if seeds is not None and len(seeds) != size:
        raise ValueError(f"{len(seeds)} seeds for {size} learners")
    agents = []
    for p in range(size):
        if seeds is not None:
            torch.manual_seed(int(seeds[p]))
        agents.append(make_agent(cfg, env, torch.device(device)))
    return agents
