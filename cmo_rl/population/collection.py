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

With ``vectorize=True`` and envs as :func:`cmo_rl.envs.factory.make_env` builds them, the
learners' envs are stepped as one TorchRL env of batch ``[P, num_envs]``
(:func:`~cmo_rl.population.env.population_env`: per-learner seeds and normaliser statistics,
each learner's slice its own env's step bit for bit), so TorchRL's per-step work is paid once
per step instead of once per learner; each learner's action is still drawn from its policy's
distribution in its own torch RNG stream. Otherwise (``vectorize=False``, or envs it cannot
batch) each learner's env is stepped on its own, as in its single run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.modules import IndependentNormal

from cmo_rl.population.compiling import CompiledOrEager
from cmo_rl.population.env import batching_refusal, population_env
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
        vectorize: one vmapped actor forward per env step (else each learner's own actor),
            and the envs stepped as one batched env where they allow it.
        compile: ``torch.compile`` the vmapped actor forward (~4x faster per step; eager if
            compiling fails).

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
        compile: bool = False,
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
        self._loc_scale = CompiledOrEager(
            torch.func.vmap(self._actor_forward), what="the population policy", compile=compile
        )
        self._carriers: list[TensorDictBase] = []
        # TorchRL's Collector, when built, resets its env and runs the policy once on the reset
        # data (to learn its output keys): the same draws here keep each learner's streams
        # where its single-seed run has them
        for p, env in enumerate(self.envs):
            with rng.activate(p), torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                self._carriers.append(env.reset())
                self.agents[p].actor(self._carriers[p].clone())
        #: why the envs are stepped learner after learner (``None``: as one batched env)
        self.batching_refusal = batching_refusal(self.envs) if self.vectorize else "vectorize=False"
        if self.batching_refusal is None:
            self._batched_env = population_env(self.envs)
            self._carrier = torch.stack(self._carriers)
            dist_module = self._dist_modules[0]
            self._dist_class = dist_module.distribution_class
            self._dist_kwargs = dict(dist_module.distribution_kwargs)
            self._log_prob_key = dist_module.log_prob_key
            self._gaussian = issubclass(self._dist_class, IndependentNormal) and not (
                self._dist_kwargs.get("tanh_loc", False)
            )

    def _actor_forward(
        self, params: dict[str, torch.Tensor], observation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.functional_call(self.nets.actor, params, (observation,))

    def collect(self, params: TensorDictBase, epoch: int) -> TensorDict:
        """Epoch ``epoch``'s batch of every learner with the stacked parameters ``params``
        (``[P]``, :func:`~cmo_rl.population.stack_learners`); with ``vectorize=False`` the
        agents' own parameters are used (keep them equal to ``params``)."""
        if self.batching_refusal is None:
            return self._collect_batched(params, epoch)
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

    def _sample(
        self, loc: torch.Tensor, scale: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each learner's action drawn as its actor's distribution module draws it (``rsample``
        where the distribution has one) in the learner's torch stream (``generators[p]``, or
        swapped in for distributions that draw from the global one); the log-probabilities of
        all learners in one call (elementwise, so equal to per-learner calls)."""
        if self._gaussian:  # Normal.rsample: loc + eps * scale, eps drawn by normal_()
            eps = torch.empty_like(loc)
            for p, generator in enumerate(generators):
                eps[p].normal_(generator=generator)
            action = loc + eps * scale
        else:
            actions = []
            for p in range(loc.shape[0]):
                with self.rng.activate(p, torch_only=True):
                    dist = self._dist_class(loc[p], scale[p], **self._dist_kwargs)
                    actions.append(dist.rsample() if dist.has_rsample else dist.sample())
            action = torch.stack(actions)
        log_prob = self._dist_class(loc, scale, **self._dist_kwargs).log_prob(action)
        return action, log_prob

    def _collect_batched(self, params: TensorDictBase, epoch: int) -> TensorDict:
        env, carrier = self._batched_env, self._carrier
        with torch.no_grad():
            env.base_env.set_seeds([epoch_seed(seed, epoch) for seed in self.seeds])
            carrier.update(env.reset())
        actor_params = self.nets.flat_params(params)["actor"]
        steps: list[TensorDictBase] = []
        generators = self.rng.generators() if self._gaussian else []
        with torch.no_grad():
            for _ in range(self.frames):
                loc, scale = self._loc_scale(actor_params, carrier.get("observation"))
                action, log_prob = self._sample(loc, scale, generators)
                carrier.update(
                    {"loc": loc, "scale": scale, "action": action, self._log_prob_key: log_prob}
                )
                output, carrier = env.step_and_maybe_reset(carrier)
                steps.append(output)
        if self._gaussian:
            self.rng.keep_generators(generators)
        self._carrier = carrier
        return torch.stack(steps, dim=-1)
