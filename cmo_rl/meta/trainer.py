"""Meta-training of a PID or LSTM meta-optimizer: the outer loop.

One meta-iteration (:meth:`MetaTrainer.meta_iteration`):

1. draw ``meta_batch_size`` task seeds; each seed gives a task (an env id drawn uniformly from
   ``env_ids``, or in turn with ``balanced_tasks``; the env reseeded, a fresh policy and fresh
   critics: :class:`~cmo_rl.meta.tasks.RolloutTaskSampler`);
2. per task, :func:`cmo_rl.meta.bilevel.bilevel_objective`: ``inner_rollouts`` rounds of
   collect -> GAE -> meta-optimizer step, then ``M = J_R - mu * max(0, J_C - d)`` on a fresh
   batch of the final policy; ``(-M / meta_batch_size).backward()`` task by task (the graph of
   one task is freed before the next is built);
3. clip the meta-gradient's global norm to ``meta_grad_clip`` and take an Adam(``meta_lr``)
   step on the meta-parameters.

A frozen meta-optimizer (no meta-gradient) is evaluated by :mod:`cmo_rl.meta.frozen`.

Config keys (:data:`TRAINER_KEYS`, all required by :meth:`MetaTrainer.from_config`): the tasks
``env_ids``; the meta-optimizer ``meta_optimizer_type, hidden_size, lstm_layers, alpha_theta,
alpha_lambda, init_KP, init_KI, init_KD, init_etaR, init_etaC, init_lambda``; the task settings
``episode_length, vector_envs_per_task, hidden_layers, gamma, gae_lambda, critic_lr,
critic_steps, device``; the trainer ``inner_rollouts, unroll_steps, meta_batch_size, cost_limit,
mu, meta_lr, meta_grad_clip, violation_scale, nan_policy, seed, total_meta_iters,
balanced_tasks``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cmo_rl.meta.bilevel import InnerProblem, bilevel_objective
from cmo_rl.meta.functional import MetaOptimizer
from cmo_rl.meta.lstm import LSTMMetaOptimizer
from cmo_rl.meta.pid import PIDMetaOptimizer
from cmo_rl.meta.tasks import RolloutTaskSampler, TaskSettings, balanced_env_index

__all__ = [
    "META_OPTIMIZERS",
    "META_OPTIMIZER_KEYS",
    "TRAINER_KEYS",
    "MetaTrainer",
    "TaskOutcome",
    "env_steps_per_round",
    "make_meta_optimizer",
]

#: The meta-optimizer types of ``meta_optimizer_type``.
META_OPTIMIZERS: dict[str, type[MetaOptimizer]] = {
    "lstm": LSTMMetaOptimizer,
    "pid": PIDMetaOptimizer,
}
#: The options a config sets for the meta-optimizers: their constructors' parameters (keyword-only
#: ones, e.g. ``normalize_grads``, are code-level settings); the defaults are the constructors'.
META_OPTIMIZER_KEYS = tuple(
    dict.fromkeys(
        p.name
        for kind in META_OPTIMIZERS.values()
        for p in inspect.signature(kind).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    )
)


def make_meta_optimizer(
    meta_optimizer_type: str, *, device: torch.device | str = "cpu", **options: Any
) -> MetaOptimizer:
    """``"pid"`` -> :class:`PIDMetaOptimizer` (``init_*`` gains), ``"lstm"`` ->
    :class:`LSTMMetaOptimizer` (``hidden_size``, ``lstm_layers``, ``alpha_theta``,
    ``alpha_lambda``); both start every inner run at ``init_lambda``.

    ``options`` go to the constructor, which holds the defaults; options of the other type are
    ignored (one config, or a checkpoint's whole config, serves both types).

    Examples:
        >>> type(make_meta_optimizer("pid")).__name__
        'PIDMetaOptimizer'
        >>> make_meta_optimizer("lstm", hidden_size=4, init_KP=0.5).hidden_size
        4
    """
    if meta_optimizer_type not in META_OPTIMIZERS:
        raise ValueError(
            f"meta_optimizer_type must be one of {sorted(META_OPTIMIZERS)}, got "
            f"{meta_optimizer_type!r}"
        )
    kind = META_OPTIMIZERS[meta_optimizer_type]
    accepted = inspect.signature(kind).parameters
    return kind(**{k: v for k, v in options.items() if k in accepted}).to(device)


@dataclass
class TaskOutcome:
    """One task of a meta-iteration (:meth:`MetaTrainer.run_task`).

    Attributes:
        name: the task's name (its env id for :class:`~cmo_rl.meta.tasks.RolloutTaskSampler`).
        env_steps: env steps the task collected (every round, the final one included).
        metrics: its metrics of :meth:`MetaTrainer.meta_iteration` (undivided, the names
            ``cmo`` logs): ``meta/return`` and ``meta/cost`` are ``J_R`` and ``J_C`` measured
            on the fresh batch of the final policy (the last round); with ``time/collect``,
            ``time/inner``, ``time/backward``.

    Examples:
        >>> from cmo_rl.meta.problems import ContextualBanditCMDP
        >>> trainer = MetaTrainer(make_meta_optimizer("pid"), ContextualBanditCMDP.sample,
        ...                       inner_rollouts=2, unroll_steps=2, meta_batch_size=1,
        ...                       cost_limit=3.0, mu=5.0)
        >>> outcome = trainer.run_task(seed=0)
        >>> outcome.name, outcome.env_steps, {"meta/return", "meta/cost"} <= outcome.metrics.keys()
        ('ContextualBanditCMDP', 0, True)
    """

    name: str
    env_steps: int
    metrics: dict[str, float]


def env_steps_per_round(problem: Any) -> int:
    """Env steps of one round of ``problem``: its ``episode_length`` times its env's batch size
    (0 for a problem without an env).

    Examples:
        >>> from cmo_rl.meta.problems import ContextualBanditCMDP
        >>> env_steps_per_round(ContextualBanditCMDP.sample(seed=0))
        0
    """
    env = getattr(problem, "env", None)
    if env is None:
        return 0
    return int(getattr(problem, "episode_length", 0)) * env.batch_size.numel()


class MetaTrainer:
    """Bilevel meta-training of ``meta_optimizer`` on tasks drawn from ``task_sampler``.

    Args:
        meta_optimizer: the PID or LSTM meta-optimizer (its parameters are trained).
        task_sampler: ``seed -> InnerProblem`` (a :class:`~cmo_rl.meta.tasks.RolloutTaskSampler`,
            or e.g. ``ContextualBanditCMDP.sample`` for analytic tasks).
        inner_rollouts: inner rounds ``K`` per task.
        unroll_steps: inner updates the meta-gradient flows through (the last ones).
        meta_batch_size: tasks per meta-iteration.
        cost_limit: ``d`` of the meta-objective (it also sets the violation
            ``e = (J_C - d) / s`` fed to the meta-optimizer).
        mu: the penalty of the meta-objective ``J_R - mu * max(0, J_C - d)``.
        meta_lr: learning rate of the outer Adam.
        meta_grad_clip: the max global norm of the meta-gradient.
        violation_scale: ``s`` (default: ``d`` if ``d > 0`` else 1).
        nan_policy: ``"skip"`` (drop a non-finite meta-gradient, count it in
            ``meta/skipped_updates``) or ``"raise"``.
        seed: seeds the task-seed generator and torch's global RNG (action sampling).
        total_meta_iters: default length of :meth:`train`.
        balanced_tasks: stratified sampling: the ``n``-th task (``n`` = :attr:`task_count`)
            runs on env ``n mod len(env_ids)`` of the sampler
            (:func:`~cmo_rl.meta.tasks.balanced_env_index`) instead of one drawn from its seed.

    Attributes:
        iteration: meta-iterations done.
        task_count: tasks run by :meth:`meta_iteration` so far.
        env_steps: env steps those tasks collected.
        last_tasks: the :class:`TaskOutcome` of each task of the last meta-iteration.

    Examples:
        >>> from cmo_rl.meta.problems import ContextualBanditCMDP
        >>> trainer = MetaTrainer(make_meta_optimizer("pid", init_etaR=0.1, init_etaC=0.1),
        ...                       ContextualBanditCMDP.sample, inner_rollouts=3, unroll_steps=3,
        ...                       meta_batch_size=2, cost_limit=3.0, mu=5.0, meta_lr=0.01)
        >>> metrics = trainer.meta_iteration()
        >>> all(metrics[f"meta/grad_norm/{k}"] > 0 for k in ("KP", "KI", "KD", "etaR", "etaC"))
        True
        >>> [task.name for task in trainer.last_tasks], trainer.task_count
        (['ContextualBanditCMDP', 'ContextualBanditCMDP'], 2)
    """

    def __init__(
        self,
        meta_optimizer: MetaOptimizer,
        task_sampler: Callable[..., InnerProblem],
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
        balanced_tasks: bool = False,
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
        if balanced_tasks and not hasattr(task_sampler, "env_ids"):
            raise ValueError("balanced_tasks needs a task sampler with env_ids")
        self.meta_optimizer = meta_optimizer
        self.task_sampler = task_sampler
        self.inner_rollouts, self.unroll_steps = int(inner_rollouts), int(unroll_steps)
        self.meta_batch_size = int(meta_batch_size)
        self.cost_limit, self.mu = float(cost_limit), float(mu)
        self.meta_grad_clip = float(meta_grad_clip)
        self.violation_scale = None if violation_scale is None else float(violation_scale)
        self.nan_policy = str(nan_policy)
        self.total_meta_iters = int(total_meta_iters)
        self.balanced_tasks = bool(balanced_tasks)
        self.outer_optimizer = torch.optim.Adam(meta_optimizer.parameters(), lr=float(meta_lr))
        self.iteration = self.task_count = self.env_steps = 0
        self.last_tasks: list[TaskOutcome] = []
        #: ``None``: the tasks run one after another (:meth:`run_task`); else a callable
        #: ``runner(trainer, seeds, env_indices) -> [TaskOutcome per task]`` that also leaves the
        #: tasks' summed meta-gradient in ``.grad`` (e.g. :class:`cmo_rl.meta.pool.TaskPool`).
        self.task_runner: Callable[..., list[TaskOutcome]] | None = None
        self.generator = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MetaTrainer:
        """Build the meta-optimizer, the RL task sampler and the trainer from a config that
        holds every key of :data:`TRAINER_KEYS` (the module docstring lists them; a dict or an
        OmegaConf ``DictConfig``; other keys are ignored).

        ``alpha_theta`` / ``alpha_lambda`` are the LSTM's output scales for theta and lambda
        steps; ``init_KP .. init_etaC`` the PID's initial gains; ``init_lambda`` both.
        """
        missing = [k for k in TRAINER_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"config is missing required keys: {missing}")
        settings = TaskSettings.from_config(cfg)
        optimizer = make_meta_optimizer(
            str(cfg["meta_optimizer_type"]),
            device=settings.device,
            **{k: cfg[k] for k in META_OPTIMIZER_KEYS},
        )
        sampler = RolloutTaskSampler(list(cfg["env_ids"]), settings)
        return cls(optimizer, sampler, **{k: cfg[k] for k in _keyword_only(cls.__init__)})

    def _meta_params(self) -> list[nn.Parameter]:
        return list(self.meta_optimizer.parameters())

    def run_task(self, seed: int, env_index: int | None = None) -> TaskOutcome:
        """The task of ``seed`` (on env ``env_index`` when given): unroll, meta-objective, and
        ``(-M / meta_batch_size).backward()`` into the meta-parameters' ``.grad``."""
        if env_index is None:
            problem = self.task_sampler(int(seed))
        else:
            problem = self.task_sampler(int(seed), env_index=env_index)
        result = bilevel_objective(
            self.meta_optimizer,
            problem,
            inner_rollouts=self.inner_rollouts,
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
        metrics = {
            "meta/objective": float(result.objective.detach()),
            "meta/return": final.get("return", float(result.return_estimate.detach())),
            "meta/cost": final.get("cost", float(result.cost_estimate.detach())),
            "meta/lambda": float(result.unroll.lagrange_multiplier.detach()),
            "meta/initial_return": rounds[0].get("return", rounds[0]["return_estimate"]),
            "meta/initial_cost": rounds[0].get("cost", rounds[0]["cost_estimate"]),
            "time/collect": sum(r["time/round_data"] for r in rounds) + final["time/round_data"],
            "time/inner": sum(r["time/inner_update"] for r in rounds),
            "time/backward": t_backward,
        }
        name = str(getattr(problem, "name", type(problem).__name__))
        steps = (len(rounds) + 1) * env_steps_per_round(problem)
        return TaskOutcome(name, steps, metrics)

    def _next_env_index(self) -> int | None:
        number, self.task_count = self.task_count, self.task_count + 1
        if not self.balanced_tasks:
            return None
        return balanced_env_index(number, len(self.task_sampler.env_ids))

    def meta_iteration(self) -> dict[str, float]:
        """One outer step; returns floats, with the names ``cmo`` logs (``docs/metrics.md``):
        ``meta/objective``, ``meta/return``, ``meta/cost``, ``meta/lambda`` (final policy, task
        means), ``meta/initial_return``, ``meta/initial_cost`` (round 0), ``meta/grad_norm`` and
        ``meta/grad_norm/<group>`` (before clipping), ``meta/<gain>`` (PID),
        ``meta/skipped_updates``, ``meta/iteration``, ``time/collect``, ``time/inner``,
        ``time/backward``, ``time/iteration``. The tasks themselves: :attr:`last_tasks`."""
        t_start = time.perf_counter()
        self.outer_optimizer.zero_grad(set_to_none=True)
        meta_params = self._meta_params()
        seeds = torch.randint(2**31 - 1, (self.meta_batch_size,), generator=self.generator)
        seeds = [int(seed) for seed in seeds.tolist()]
        env_indices = [self._next_env_index() for _ in seeds]
        if self.task_runner is not None:
            outcomes = self.task_runner(self, seeds, env_indices)
        else:
            outcomes = [self.run_task(seed, i) for seed, i in zip(seeds, env_indices)]
        sums: dict[str, float] = {}
        timings = dict.fromkeys(("time/collect", "time/inner", "time/backward"), 0.0)
        for outcome in outcomes:
            for key, value in outcome.metrics.items():
                if key in timings:
                    timings[key] += value
                else:
                    sums[key] = sums.get(key, 0.0) + value / self.meta_batch_size
        self.last_tasks = list(outcomes)
        self.env_steps += sum(outcome.env_steps for outcome in outcomes)

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
                "meta/skipped_updates": float(skipped),
                "meta/iteration": float(self.iteration),
                **timings,
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

    def state_dict(self) -> dict[str, Any]:
        """Meta-optimizer, outer Adam, the counts (iteration, tasks, env steps) and the
        task-seed generator: what a resumed run needs to continue exactly."""
        return {
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "iteration": self.iteration,
            "task_count": self.task_count,
            "env_steps": self.env_steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state from before ``task_count`` existed counts
        ``iteration * meta_batch_size`` tasks, what every meta-iteration runs)."""
        missing = [k for k in ("meta_optimizer", "outer_optimizer", "iteration") if k not in state]
        if missing:
            raise ValueError(f"MetaTrainer state is missing {missing}")
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.iteration = int(state["iteration"])
        self.task_count = int(state.get("task_count", self.iteration * self.meta_batch_size))
        self.env_steps = int(state.get("env_steps", 0))
        if "generator" in state:
            self.generator.set_state(state["generator"])


def _keyword_only(fn: Callable[..., Any]) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


#: The config keys of :meth:`MetaTrainer.from_config`: the task ids, the meta-optimizer type and
#: its options (:data:`META_OPTIMIZER_KEYS`), the :class:`~cmo_rl.meta.tasks.TaskSettings` fields
#: and the trainer's keyword arguments.
TRAINER_KEYS = (
    "env_ids",
    "meta_optimizer_type",
    *META_OPTIMIZER_KEYS,
    *(f.name for f in dataclasses.fields(TaskSettings)),
    *_keyword_only(MetaTrainer.__init__),
)
