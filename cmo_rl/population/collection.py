"""On-policy collection for a population: every learner's envs stepped side by side.

Learner ``p`` has its own env (``num_envs`` sub-envs, its own seeds and observation
normaliser, as :func:`cmo_rl.training.setup.make_envs` builds it for that seed). Each env step,
one ``torch.func.vmap`` of the actor networks over the learners' stacked parameters gives every
learner's ``loc`` and ``scale``; each learner then samples its action with the actor's own
distribution module inside its torch RNG stream (:class:`~cmo_rl.population.rng.LearnerRNG`) and
its env steps. The batch of learner ``p`` is what :func:`cmo_rl.training.collection.make_collector`
collects in that learner's single-seed run: the envs are reset once when the collector is built
and, at the start of each epoch, re-seeded with :func:`~cmo_rl.seeding.epoch_seed` and reset;
the per-step flow is the TorchRL ``Collector``'s (policy, ``step_and_maybe_reset``, carry the
next observation). ``vectorize=False`` runs each learner's own actor module instead of the
vmapped networks: the same kernels as a single run, bit for bit (a reference for tests); the
vmapped forward differs from it in the last bits (batched instead of plain matrix products).

The envs themselves are stepped one learner after another: a learner's env keeps its own
seeds and normaliser statistics, which one batched env of ``P x num_envs`` sub-envs would pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from cmo_rl.population.learners import LearnerNets, _cores
from cmo_rl.population.rng import LearnerRNG
from cmo_rl.seeding import epoch_seed

__all__ = ["PopulationCollector"]


class PopulationCollector:
    """One ``[P, num_envs, T]`` batch per call of :meth:`collect` (``T = steps_per_epoch /
    num_envs``), learner ``p``'s slice equal to its single-seed run's batch.

    Args:
        envs: one training env per learner (same task and ``num_envs``).
        agents: one agent per learner (``ActorCritic``); their distribution modules sample the
            actions, and with ``vectorize=False`` their actors run whole.
        nets: the learners' architecture (:meth:`LearnerNets.from_agent`).
        rng: the learners' RNG streams; the envs' first reset runs in them.
        seeds: the learners' seeds (the envs are re-seeded each epoch from them).
        steps_per_epoch: env steps per learner and epoch (a multiple of ``num_envs``).
        vectorize: one vmapped actor forward per env step (else each learner's own actor).

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.population import LearnerRNG, LearnerNets, make_population, stack_learners
        >>> seeds = [0, 1]
        >>> envs = [make_env("MockCMDP-v0", 2, seed=s, max_episode_steps=5) for s in seeds]
        >>> cfg = {"hidden_layers": [8], "activation": "tanh", "init_log_std": -0.5}
        >>> agents = make_population(cfg, envs[0], "cpu", 2, seeds=seeds)
        >>> rng = LearnerRNG(seeds)
        >>> collector = PopulationCollector(envs, agents, LearnerNets.from_agent(agents[0]), rng,
        ...                                 seeds=seeds, steps_per_epoch=10)
        >>> batch = collector.collect(stack_learners(agents), epoch=0)
        >>> tuple(batch.shape), int(batch["next", "done"].sum())  # 2 learners x 2 envs x 5 steps
        ((2, 2, 5), 4)
    """

    def __init__(
        self,
        envs: Sequence[EnvBase],
        agents: Sequence[Sequence[torch.nn.Module]],
        nets: LearnerNets,
        rng: LearnerRNG,
        *,
        seeds: Sequence[int],
        steps_per_epoch: int,
        vectorize: bool = True,
    ) -> None:
        size = len(envs)
        if not (len(agents) == len(seeds) == len(rng) == size):
            raise ValueError(
                f"{size} envs, {len(agents)} agents, {len(seeds)} seeds, {len(rng)} RNG streams"
            )
        num_envs = int(envs[0].batch_size.numel()) if envs[0].batch_size else 1
        if steps_per_epoch < 1 or steps_per_epoch % num_envs:
            raise ValueError(
                f"steps_per_epoch ({steps_per_epoch}) must be a positive multiple of num_envs "
                f"({num_envs})"
            )
        self.envs = list(envs)
        self.agents = list(agents)
        self.nets = nets
        self.rng = rng
        self.seeds = [int(s) for s in seeds]
        self.frames = int(steps_per_epoch) // num_envs
        self.vectorize = bool(vectorize)
        self._dist_modules = [_cores(agent)[1] for agent in self.agents]
        self._loc_scale = torch.func.vmap(self._actor_forward)
        self._carriers: list[TensorDictBase] = []
        # TorchRL's Collector, when built, resets its env and runs the policy once on the reset
        # data (to learn its output keys): the same draws here keep each learner's streams
        # where its single-seed run has them
        for p, env in enumerate(self.envs):
            with rng.activate(p), torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                self._carriers.append(env.reset())
                self.agents[p].actor(self._carriers[p].clone())

    def _actor_forward(
        self, params: dict[str, torch.Tensor], observation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.functional_call(self.nets.actor, params, (observation,))

    def collect(self, params: TensorDictBase, epoch: int) -> TensorDict:
        """Epoch ``epoch``'s batch of every learner with the stacked parameters ``params``
        (``[P]``, :func:`~cmo_rl.population.stack_learners`); with ``vectorize=False`` the
        agents' own parameters are used (keep them equal to ``params``)."""
        size = len(self.envs)
        for p, env in enumerate(self.envs):
            with self.rng.activate(p), torch.no_grad():
                env.set_seed(epoch_seed(self.seeds[p], epoch), static_seed=True)
                self._carriers[p].update(env.reset())
        actor_params = self.nets.flat_params(params)["actor"]
        steps: list[list[TensorDictBase]] = [[] for _ in range(size)]
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            for _ in range(self.frames):
                if self.vectorize:
                    observation = torch.stack([c.get("observation") for c in self._carriers])
                    loc, scale = self._loc_scale(actor_params, observation)
                for p, env in enumerate(self.envs):
                    carrier = self._carriers[p]
                    with self.rng.activate(p, torch_only=True):  # the action draw
                        if self.vectorize:
                            carrier.set("loc", loc[p])
                            carrier.set("scale", scale[p])
                            self._dist_modules[p](carrier)
                        else:
                            self.agents[p].actor(carrier)
                    output, following = env.step_and_maybe_reset(carrier)
                    steps[p].append(output)
                    self._carriers[p] = following
        return torch.stack([torch.stack(s, dim=-1) for s in steps])
