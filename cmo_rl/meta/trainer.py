"""Meta-training and meta-testing of a PID or LSTM meta-optimizer.

One meta-iteration (:meth:`MetaTrainer.meta_iteration`):

1. draw ``meta_batch_size`` task seeds; each seed gives a task (an env id drawn uniformly from
   ``env_ids``, the env reseeded, a fresh policy and fresh critics);
2. per task, :func:`cmo_rl.meta.bilevel.bilevel_objective`: ``inner_rollouts`` rounds of
   collect -> GAE -> meta-optimizer step, then ``M = J_R - mu * max(0, J_C - d)`` on a fresh
   batch of the final policy; ``(-M / meta_batch_size).backward()`` task by task (the graph of
   one task is freed before the next is built);
3. clip the meta-gradient's global norm to ``meta_grad_clip`` and take an Adam(``meta_lr``)
   step on the meta-parameters.

:func:`meta_test` runs a *frozen* meta-optimizer (no ``create_graph``, no meta-gradient) on
fresh policies and reports return and cost per round.

Config keys (the CLI's): ``env_ids, total_meta_iters, inner_rollouts, episode_length,
meta_batch_size, eval_episodes, hidden_layers, hidden_size, alpha_theta, alpha_lambda, init_KP,
init_KI, init_KD, init_etaR, init_etaC, init_lambda, meta_lr, unroll_steps, gamma, cost_limit,
mu, lstm_layers, log_interval, checkpoint_interval, vector_envs_per_task, seed, device,
meta_optimizer_type`` (plus optional ``meta_grad_clip, gae_lambda, nan_policy, eval_env_ids,
meta_test_rounds, critic_lr, critic_steps, violation_scale``); see :meth:`MetaTrainer.from_config`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cmo_rl.meta.bilevel import InnerProblem, bilevel_objective, unroll
from cmo_rl.meta.functional import MetaOptimizer
from cmo_rl.meta.lstm import LSTMMetaOptimizer
from cmo_rl.meta.pid import PIDMetaOptimizer
from cmo_rl.meta.problems import RolloutCMDP

__all__ = [
    "MetaTrainer",
    "RolloutTaskSampler",
    "make_meta_optimizer",
    "meta_test",
    "run_frozen",
]

EnvSpec = str | Callable[..., Any]

_REQUIRED_KEYS = (
    "env_ids",
    "inner_rollouts",
    "episode_length",
    "meta_batch_size",
    "hidden_layers",
    "meta_lr",
    "unroll_steps",
    "gamma",
    "cost_limit",
    "mu",
    "vector_envs_per_task",
    "seed",
    "meta_optimizer_type",
)


def make_meta_optimizer(
    meta_optimizer_type: str,
    *,
    hidden_size: int = 20,
    lstm_layers: int = 2,
    alpha_theta: float = 0.01,
    alpha_lambda: float = 0.1,
    init_KP: float = 0.08,
    init_KI: float = 0.015,
    init_KD: float = 0.007,
    init_etaR: float = 1e-3,
    init_etaC: float = 1e-3,
    init_lambda: float = 0.0,
    device: torch.device | str = "cpu",
    **ignored: Any,
) -> MetaOptimizer:
    """``"pid"`` -> :class:`PIDMetaOptimizer` (``init_*`` gains), ``"lstm"`` ->
    :class:`LSTMMetaOptimizer` (``hidden_size``, ``lstm_layers``, ``alpha_theta``,
    ``alpha_lambda``); both start every inner run at ``init_lambda``.

    >>> type(make_meta_optimizer("pid")).__name__
    'PIDMetaOptimizer'
    """
    if meta_optimizer_type == "pid":
        opt: MetaOptimizer = PIDMetaOptimizer(
            init_KP, init_KI, init_KD, init_etaR, init_etaC, init_lambda
        )
    elif meta_optimizer_type == "lstm":
        opt = LSTMMetaOptimizer(hidden_size, lstm_layers, alpha_theta, alpha_lambda, init_lambda)
    else:
        raise ValueError(
            f"meta_optimizer_type must be 'lstm' or 'pid', got {meta_optimizer_type!r}"
        )
    return opt.to(device)


def _env_name(env: EnvSpec) -> str:
    if isinstance(env, str):
        return env
    if isinstance(env, functools.partial):
        return getattr(env.func, "__name__", repr(env.func))
    return getattr(env, "__name__", repr(env))


class RolloutTaskSampler:
    """Builds :class:`~cmo_rl.meta.problems.RolloutCMDP` tasks from env ids or env factories.

    Args:
        env_ids: Safety-Gymnasium ids (built with ``cmo_rl.envs.make_safety_env(id,
            num_envs=..., seed=..., device=..., max_episode_steps=episode_length)``) or
            callables ``factory(num_envs=..., seed=..., device=...) -> EnvBase`` (e.g.
            ``functools.partial(MockCMDPEnv, episode_length=20)``).
        episode_length, gamma, gae_lambda, critic_lr, critic_steps: see ``RolloutCMDP``.
        vector_envs_per_task: ``num_envs`` of each task's env.
        hidden_layers: MLP widths of the fresh policy and critics.
        device: device of env outputs, policy and critics.

    One env per id is built on first use and reseeded for every task (building MuJoCo scenes
    is slow). ``sampler(seed)`` draws the env id from ``seed``; ``sampler(seed, env_index=i)``
    fixes it. The fresh networks' initialisation depends only on ``seed``.

    >>> import functools
    >>> from cmo_rl.testing import MockCMDPEnv
    >>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv, episode_length=5)],
    ...                              episode_length=5, vector_envs_per_task=2, hidden_layers=(8,))
    >>> task = sampler(seed=3)  # a RolloutCMDP with a fresh policy and critics
    >>> task.name, task.env.batch_size
    ('MockCMDPEnv', torch.Size([2]))
    """

    def __init__(
        self,
        env_ids: Sequence[EnvSpec],
        *,
        episode_length: int,
        vector_envs_per_task: int = 1,
        hidden_layers: Sequence[int] = (64, 64),
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        critic_lr: float = 1e-3,
        critic_steps: int = 10,
        device: torch.device | str = "cpu",
    ) -> None:
        if isinstance(env_ids, str) or len(env_ids) == 0:
            raise ValueError(
                f"env_ids must be a non-empty list of ids or factories, got {env_ids!r}"
            )
        if vector_envs_per_task < 1:
            raise ValueError(f"vector_envs_per_task must be >= 1, got {vector_envs_per_task}")
        self.env_ids = list(env_ids)
        self.episode_length = int(episode_length)
        self.vector_envs_per_task = int(vector_envs_per_task)
        self.hidden_layers = tuple(int(h) for h in hidden_layers)
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.critic_lr, self.critic_steps = float(critic_lr), int(critic_steps)
        self.device = torch.device(device)
        self._envs: dict[int, Any] = {}

    def env_name(self, index: int) -> str:
        return _env_name(self.env_ids[index])

    def _factory(self, index: int) -> Callable[..., Any]:
        env = self.env_ids[index]
        if isinstance(env, str):
            from cmo_rl.envs.safety import make_safety_env

            return functools.partial(make_safety_env, env, max_episode_steps=self.episode_length)
        if not callable(env):
            raise ValueError(f"env_ids[{index}] must be an env id or a factory, got {env!r}")
        return env

    def env(self, index: int, seed: int) -> Any:
        """The (cached) env of ``env_ids[index]``, reseeded with ``seed``."""
        if index not in self._envs:
            factory = self._factory(index)
            self._envs[index] = factory(
                num_envs=self.vector_envs_per_task, seed=seed, device=self.device
            )
        env = self._envs[index]
        env.set_seed(seed)
        return env

    def __call__(self, seed: int, env_index: int | None = None) -> RolloutCMDP:
        from cmo_rl.modules.actor_critic import make_actor, make_cost_critic, make_value_critic

        if env_index is None:
            gen = torch.Generator().manual_seed(int(seed))
            env_index = int(torch.randint(len(self.env_ids), (1,), generator=gen))
        env = self.env(env_index, seed)
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(seed))
            layers, dev = self.hidden_layers, self.device
            actor = make_actor(env, hidden_layers=layers, device=dev)
            critic = make_value_critic(env, hidden_layers=layers, device=dev)
            cost_critic = make_cost_critic(env, hidden_layers=layers, device=dev)
        task = RolloutCMDP(
            env,
            actor,
            critic,
            cost_critic,
            episode_length=self.episode_length,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            critic_lr=self.critic_lr,
            critic_steps=self.critic_steps,
        )
        task.name = self.env_name(env_index)
        return task

    def close(self) -> None:
        """Close the cached envs."""
        for env in self._envs.values():
            if hasattr(env, "close"):
                env.close()
        self._envs.clear()


def run_frozen(
    meta_optimizer: MetaOptimizer,
    problem: InnerProblem,
    *,
    budget: int,
    cost_limit: float,
    violation_scale: float | None = None,
    eval_episodes: int = 0,
) -> dict[str, Any]:
    """Train a fresh policy on ``problem`` with the frozen ``meta_optimizer`` for ``budget``
    rounds (first-order gradients only, no meta-graph).

    Returns ``{"rounds": [...], "final_return", "final_cost", "final_lambda"}`` where
    ``rounds[k]`` holds the measured ``return`` / ``cost`` of the policy after ``k`` updates
    and the multiplier ``lambda`` it was trained with (``rounds[budget]`` is the final policy);
    with ``eval_episodes > 0`` and a problem with ``evaluate``, also
    ``eval/episode_return`` / ``eval/episode_cost`` of the final deterministic policy.

    >>> from cmo_rl.meta.problems import ContextualBanditCMDP
    >>> out = run_frozen(make_meta_optimizer("pid"), ContextualBanditCMDP.sample(seed=0),
    ...                  budget=3, cost_limit=3.0)
    >>> len(out["rounds"]), sorted(out["rounds"][0]), out["rounds"][0]["lambda"]
    (4, ['cost', 'lambda', 'return'], 0.0)
    """
    result = unroll(
        meta_optimizer,
        problem,
        inner_steps=budget,
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
        "final_return": final["return"],
        "final_cost": final["cost"],
        "final_lambda": float(result.lagrange_multiplier),
    }
    if eval_episodes > 0 and hasattr(problem, "evaluate"):
        out.update(problem.evaluate(result.params, eval_episodes))
    return out


def meta_test(
    meta_optimizer: MetaOptimizer,
    env_ids: Sequence[EnvSpec],
    budget: int,
    seeds: Iterable[int],
    *,
    cost_limit: float,
    eval_episodes: int = 0,
    violation_scale: float | None = None,
    sampler: RolloutTaskSampler | None = None,
    **task_kwargs: Any,
) -> list[dict[str, Any]]:
    """Meta-test the FROZEN ``meta_optimizer``: for every env in ``env_ids`` and every seed,
    train a fresh policy for ``budget`` rounds and report :func:`run_frozen`'s dict plus
    ``env_id`` and ``seed``.

    ``task_kwargs`` build the :class:`RolloutTaskSampler` (``episode_length`` required;
    ``vector_envs_per_task``, ``hidden_layers``, ``gamma``, ``gae_lambda``, ``device``, ...),
    unless a ``sampler`` is given.

    >>> import functools
    >>> from cmo_rl.testing import MockCMDPEnv
    >>> results = meta_test(make_meta_optimizer("pid"), [functools.partial(MockCMDPEnv)],
    ...                     budget=2, seeds=[0, 1], cost_limit=1.0, episode_length=5,
    ...                     vector_envs_per_task=2, hidden_layers=(8,))
    >>> [(r["env_id"], r["seed"], len(r["rounds"])) for r in results]
    [('MockCMDPEnv', 0, 3), ('MockCMDPEnv', 1, 3)]
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    sampler = sampler if sampler is not None else RolloutTaskSampler(env_ids, **task_kwargs)
    if sampler.env_ids != list(env_ids):
        sampler = RolloutTaskSampler(
            env_ids,
            episode_length=sampler.episode_length,
            vector_envs_per_task=sampler.vector_envs_per_task,
            hidden_layers=sampler.hidden_layers,
            gamma=sampler.gamma,
            gae_lambda=sampler.gae_lambda,
            critic_lr=sampler.critic_lr,
            critic_steps=sampler.critic_steps,
            device=sampler.device,
        )
    results = []
    for index in range(len(sampler.env_ids)):
        for seed in seeds:
            problem = sampler(int(seed), env_index=index)
            out = run_frozen(
                meta_optimizer,
                problem,
                budget=budget,
                cost_limit=cost_limit,
                violation_scale=violation_scale,
                eval_episodes=eval_episodes,
            )
            results.append({"env_id": sampler.env_name(index), "seed": int(seed), **out})
    return results


class MetaTrainer:
    """Bilevel meta-training of ``meta_optimizer`` on tasks drawn from ``task_sampler``.

    Args:
        meta_optimizer: the PID or LSTM meta-optimizer (its parameters are trained).
        task_sampler: ``seed -> InnerProblem`` (a :class:`RolloutTaskSampler`, or e.g.
            ``ContextualBanditCMDP.sample`` for analytic tasks).
        inner_rollouts: inner rounds ``K`` per task.
        unroll_steps: inner updates the meta-gradient flows through (the last ones).
        meta_batch_size: tasks per meta-iteration.
        cost_limit, mu: ``d`` and the penalty of the meta-objective (``d`` also sets the
            violation ``e = (J_C - d) / s`` fed to the meta-optimizer).
        meta_lr, meta_grad_clip: the outer Adam and the max global norm of the meta-gradient.
        violation_scale: ``s`` (default: ``d`` if ``d > 0`` else 1).
        nan_policy: ``"skip"`` (drop a non-finite meta-gradient, count it in
            ``meta/skipped``) or ``"raise"``.
        seed: seeds the task-seed generator and torch's global RNG (action sampling).
        total_meta_iters: default length of :meth:`train`.
        config: the config it was built from (kept for checkpoints / the CLI).

    >>> from cmo_rl.meta.problems import ContextualBanditCMDP
    >>> trainer = MetaTrainer(make_meta_optimizer("pid", init_etaR=0.1, init_etaC=0.1),
    ...                       ContextualBanditCMDP.sample, inner_rollouts=3, unroll_steps=3,
    ...                       meta_batch_size=2, cost_limit=3.0, mu=5.0, meta_lr=0.01)
    >>> metrics = trainer.meta_iteration()
    >>> all(metrics[f"meta/grad_norm/{k}"] > 0 for k in ("KP", "KI", "KD", "etaR", "etaC"))
    True
    """

    def __init__(
        self,
        meta_optimizer: MetaOptimizer,
        task_sampler: Callable[[int], InnerProblem],
        *,
        inner_rollouts: int,
        unroll_steps: int,
        meta_batch_size: int,
        cost_limit: float,
        mu: float,
        meta_lr: float = 3e-4,
        meta_grad_clip: float = 1.0,
        violation_scale: float | None = None,
        nan_policy: str = "skip",
        seed: int = 0,
        total_meta_iters: int = 1,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in dict(
            inner_rollouts=inner_rollouts,
            unroll_steps=unroll_steps,
            meta_batch_size=meta_batch_size,
        ).items():
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if meta_lr <= 0 or meta_grad_clip <= 0:
            raise ValueError(
                f"meta_lr and meta_grad_clip must be > 0, got {meta_lr}, {meta_grad_clip}"
            )
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        if nan_policy not in ("skip", "raise"):
            raise ValueError(f"nan_policy must be 'skip' or 'raise', got {nan_policy!r}")
        if not list(meta_optimizer.parameters()):
            raise ValueError("meta_optimizer has no parameters to meta-train")
        self.meta_optimizer = meta_optimizer
        self.task_sampler = task_sampler
        self.inner_rollouts, self.unroll_steps = int(inner_rollouts), int(unroll_steps)
        self.meta_batch_size = int(meta_batch_size)
        self.cost_limit, self.mu = float(cost_limit), float(mu)
        self.meta_grad_clip = float(meta_grad_clip)
        self.violation_scale = violation_scale
        self.nan_policy = nan_policy
        self.total_meta_iters = int(total_meta_iters)
        self.config = dict(config) if config is not None else {}
        self.outer_optimizer = torch.optim.Adam(meta_optimizer.parameters(), lr=meta_lr)
        self.iteration = 0
        #: ``None``: the tasks run one after another (:meth:`run_task`); else a callable
        #: ``runner(trainer, seeds) -> [run_task-like summary per seed]`` that also leaves the
        #: tasks' summed meta-gradient in ``.grad`` (e.g. ``cmo_rl.training.parallel.TaskPool``).
        self.task_runner: Callable[[MetaTrainer, list[int]], list[dict[str, float]]] | None = None
        self.generator = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MetaTrainer:
        """Build the meta-optimizer, the RL task sampler and the trainer from the CLI's config
        (a dict or an OmegaConf ``DictConfig``; the keys are listed in the module docstring).

        ``alpha_theta`` / ``alpha_lambda`` are the LSTM's output scales for theta and lambda
        steps; ``init_KP .. init_etaC`` the PID's initial gains; ``init_lambda`` both.
        """
        missing = [k for k in _REQUIRED_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"config is missing required keys: {missing}")
        get = cfg.get
        device = torch.device(get("device", "cpu") or "cpu")
        opt = make_meta_optimizer(
            str(cfg["meta_optimizer_type"]),
            hidden_size=int(get("hidden_size", 20)),
            lstm_layers=int(get("lstm_layers", 2)),
            alpha_theta=float(get("alpha_theta", 0.01)),
            alpha_lambda=float(get("alpha_lambda", 0.1)),
            init_KP=float(get("init_KP", 0.08)),
            init_KI=float(get("init_KI", 0.015)),
            init_KD=float(get("init_KD", 0.007)),
            init_etaR=float(get("init_etaR", 1e-3)),
            init_etaC=float(get("init_etaC", 1e-3)),
            init_lambda=float(get("init_lambda", 0.0)),
            device=device,
        )
        sampler = RolloutTaskSampler(
            list(cfg["env_ids"]),
            episode_length=int(cfg["episode_length"]),
            vector_envs_per_task=int(cfg["vector_envs_per_task"]),
            hidden_layers=tuple(int(h) for h in cfg["hidden_layers"]),
            gamma=float(cfg["gamma"]),
            gae_lambda=float(get("gae_lambda", 0.95)),
            critic_lr=float(get("critic_lr", 1e-3)),
            critic_steps=int(get("critic_steps", 10)),
            device=device,
        )
        scale = get("violation_scale", None)
        return cls(
            opt,
            sampler,
            inner_rollouts=int(cfg["inner_rollouts"]),
            unroll_steps=int(cfg["unroll_steps"]),
            meta_batch_size=int(cfg["meta_batch_size"]),
            cost_limit=float(cfg["cost_limit"]),
            mu=float(cfg["mu"]),
            meta_lr=float(cfg["meta_lr"]),
            meta_grad_clip=float(get("meta_grad_clip", 1.0)),
            violation_scale=None if scale is None else float(scale),
            nan_policy=str(get("nan_policy", "skip")),
            seed=int(cfg["seed"]),
            total_meta_iters=int(get("total_meta_iters", 1)),
            config=dict(cfg),
        )

    def _meta_params(self) -> list[nn.Parameter]:
        return list(self.meta_optimizer.parameters())

    def run_task(self, seed: int) -> dict[str, float]:
        """The task of ``seed``: unroll, meta-objective, and ``(-M / meta_batch_size).backward()``
        into the meta-parameters' ``.grad``; returns the task's (undivided) metrics of
        :meth:`meta_iteration` and its ``time/collect``, ``time/inner``, ``time/backward``."""
        problem = self.task_sampler(int(seed))
        result = bilevel_objective(
            self.meta_optimizer,
            problem,
            inner_steps=self.inner_rollouts,
            unroll_steps=self.unroll_steps,
            cost_limit=self.cost_limit,
            mu=self.mu,
            violation_scale=self.violation_scale,
        )
        t0 = time.perf_counter()
        loss = -result.objective / self.meta_batch_size
        if loss.requires_grad:
            loss.backward(inputs=self._meta_params())
        t_backward = time.perf_counter() - t0
        rounds = result.unroll.rounds
        final = result.final_metrics
        return {
            "meta/objective": float(result.objective.detach()),
            "train/return": final.get("return", float(result.return_estimate.detach())),
            "train/cost": final.get("cost", float(result.cost_estimate.detach())),
            "train/lambda": float(result.unroll.lagrange_multiplier.detach()),
            "train/initial_return": rounds[0].get("return", rounds[0]["return_estimate"]),
            "train/initial_cost": rounds[0].get("cost", rounds[0]["cost_estimate"]),
            "time/collect": sum(r["time/round_data"] for r in rounds) + final["time/round_data"],
            "time/inner": sum(r["time/inner_update"] for r in rounds),
            "time/backward": t_backward,
        }

    def meta_iteration(self) -> dict[str, float]:
        """One outer step; returns floats: ``meta/objective``, ``train/return``, ``train/cost``,
        ``train/lambda`` (final policy, task means), ``train/initial_return``,
        ``train/initial_cost`` (round 0), ``meta/grad_norm`` and ``meta/grad_norm/<group>``
        (before clipping), ``meta/<gain>`` (PID), ``meta/skipped``, ``meta/iteration``,
        ``time/collect``, ``time/inner``, ``time/backward``, ``time/iteration``."""
        t_start = time.perf_counter()
        self.outer_optimizer.zero_grad(set_to_none=True)
        meta_params = self._meta_params()
        seeds = torch.randint(2**31 - 1, (self.meta_batch_size,), generator=self.generator)
        sums: dict[str, float] = {}
        t_collect = t_inner = t_backward = 0.0

        def add(key: str, value: float) -> None:
            sums[key] = sums.get(key, 0.0) + value / self.meta_batch_size

        if self.task_runner is not None:
            summaries = self.task_runner(self, seeds.tolist())
        else:
            summaries = [self.run_task(int(seed)) for seed in seeds.tolist()]
        for summary in summaries:
            t_collect += summary.pop("time/collect")
            t_inner += summary.pop("time/inner")
            t_backward += summary.pop("time/backward")
            for key, value in summary.items():
                add(key, value)

        metrics = dict(sums)
        for name, norm in self.meta_optimizer.meta_grad_norms().items():
            metrics[f"meta/grad_norm/{name}"] = norm
        grads = [p.grad for p in meta_params if p.grad is not None]
        total = torch.stack([g.detach().norm() for g in grads]).norm() if grads else torch.zeros(())
        metrics["meta/grad_norm"] = float(total)
        skipped = not math.isfinite(metrics["meta/grad_norm"])
        if skipped and self.nan_policy == "raise":
            raise FloatingPointError(
                f"non-finite meta-gradient at meta-iteration {self.iteration}: "
                + ", ".join(f"{k}={v}" for k, v in metrics.items() if "grad_norm/" in k)
            )
        if not skipped:
            torch.nn.utils.clip_grad_norm_(meta_params, self.meta_grad_clip)
            self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        if isinstance(self.meta_optimizer, PIDMetaOptimizer):
            for name, value in self.meta_optimizer.gains().items():
                metrics[f"meta/{name}"] = float(value.detach())
        self.iteration += 1
        metrics.update(
            {
                "meta/skipped": float(skipped),
                "meta/iteration": float(self.iteration),
                "time/collect": t_collect,
                "time/inner": t_inner,
                "time/backward": t_backward,
                "time/iteration": time.perf_counter() - t_start,
            }
        )
        return metrics

    def train(
        self,
        iterations: int | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Run ``iterations`` (default: up to ``total_meta_iters``) meta-iterations, calling
        ``callback(iteration, metrics)`` after each (logging / checkpoints live there)."""
        n = self.total_meta_iters - self.iteration if iterations is None else int(iterations)
        history = []
        for _ in range(max(0, n)):
            metrics = self.meta_iteration()
            history.append(metrics)
            if callback is not None:
                callback(self.iteration, metrics)
        return history

    def meta_test(
        self,
        env_ids: Sequence[EnvSpec] | None = None,
        budget: int | None = None,
        seeds: Iterable[int] = (0, 1, 2),
        eval_episodes: int = 0,
    ) -> list[dict[str, Any]]:
        """:func:`meta_test` with this trainer's task settings (needs a
        :class:`RolloutTaskSampler`); defaults: the training ``env_ids``, ``inner_rollouts``."""
        if not isinstance(self.task_sampler, RolloutTaskSampler):
            raise ValueError("MetaTrainer.meta_test needs a RolloutTaskSampler as task_sampler")
        sampler = self.task_sampler
        return meta_test(
            self.meta_optimizer,
            sampler.env_ids if env_ids is None else env_ids,
            self.inner_rollouts if budget is None else budget,
            seeds,
            cost_limit=self.cost_limit,
            eval_episodes=eval_episodes,
            violation_scale=self.violation_scale,
            sampler=sampler,
        )

    def state_dict(self) -> dict[str, Any]:
        """Meta-optimizer, outer Adam, iteration count and the task-seed generator."""
        return {
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "iteration": self.iteration,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("meta_optimizer", "outer_optimizer", "iteration") if k not in state]
        if missing:
            raise ValueError(f"MetaTrainer state is missing {missing}")
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.iteration = int(state["iteration"])
        if "generator" in state:
            self.generator.set_state(state["generator"])
