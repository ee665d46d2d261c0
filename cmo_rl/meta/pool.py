"""Meta-batch tasks in worker processes: :class:`TaskPool` runs the tasks of each
:class:`~cmo_rl.meta.trainer.MetaTrainer` meta-iteration (collection, inner updates and each
task's meta-gradient) in workers and sums their meta-gradients in seed order, so the result does
not depend on the number of workers.

Every task seeds torch's RNG (action sampling) from its task seed (:func:`task_action_seed`),
so a meta-iteration depends only on the meta-parameters and the task seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cmo_rl.meta.trainer import MetaTrainer, TaskOutcome
from cmo_rl.seeding import ACTION_SEED_SHIFT

__all__ = ["TaskPool", "task_action_seed"]


def task_action_seed(task_seed: int) -> int:
    """Seed of torch's RNG (action sampling) while :class:`TaskPool` runs the task ``task_seed``.

    Examples:
        >>> task_action_seed(7) - task_action_seed(6)
        1
    """
    return ACTION_SEED_SHIFT * 2 + int(task_seed)


#: The trainer copy that runs tasks in this (worker) process.
_POOL_TRAINER: Any = None


def _worker_trainer(payload: Mapping[str, Any]) -> MetaTrainer:
    """A trainer that only runs tasks (its outer Adam is never stepped); leaves torch's global
    RNG as it was."""
    settings = dict(payload)
    settings.pop("torch_threads")
    meta_optimizer = copy.deepcopy(settings.pop("meta_optimizer")).to(settings.pop("device"))
    with torch.random.fork_rng(devices=[]):
        return MetaTrainer(meta_optimizer, copy.copy(settings.pop("task_sampler")), **settings)


def _pool_init(payload: Mapping[str, Any]) -> None:
    global _POOL_TRAINER
    torch.set_num_threads(int(payload["torch_threads"]))
    _POOL_TRAINER = _worker_trainer(payload)


#: One task for a worker: the meta-parameters, the task seed and its env index (or ``None``).
Job = tuple[dict[str, torch.Tensor], int, int | None]


def _pool_task(job: Job) -> tuple[list, TaskOutcome]:
    return _run_pool_task(_POOL_TRAINER, job)


def _run_pool_task(trainer: MetaTrainer, job: Job) -> tuple[list, TaskOutcome]:
    state, seed, env_index = job
    trainer.meta_optimizer.load_state_dict(state)
    params = list(trainer.meta_optimizer.parameters())
    for p in params:
        p.grad = None
    cuda = [p.device for p in params[:1] if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(task_action_seed(seed))
        outcome = trainer.run_task(seed, env_index)
    grads = [None if p.grad is None else p.grad.detach().cpu() for p in params]
    return grads, outcome


class TaskPool:
    """Runs the tasks of each meta-iteration of a :class:`~cmo_rl.meta.MetaTrainer` in worker
    processes: ``trainer.task_runner = TaskPool(trainer, num_workers=4)``.

    Every worker holds a copy of the trainer's task sampler and meta-optimizer. Per
    meta-iteration each task (one seed) goes to a free worker with the current meta-parameters;
    the worker runs :meth:`MetaTrainer.run_task` -- collection, inner updates and the task's
    meta-gradient -- with torch's RNG seeded by :func:`task_action_seed`, and returns the
    gradient, which is added to the trainer's ``.grad`` in seed order. A meta-iteration therefore
    depends only on the meta-parameters and the task seeds: the same for any ``num_workers``
    (``0`` runs the tasks here, one after another, the same way). It differs from the trainer's
    own sequential loop, whose tasks draw their actions from one continuing RNG stream.

    Args:
        trainer: the trainer (its sampler must be picklable: env ids, or picklable factories
            such as ``functools.partial(MockCMDPEnv, ...)``).
        num_workers: worker processes (``0``: in this process).
        torch_threads: intra-op threads of each worker.

    Examples:
        >>> import functools
        >>> from cmo_rl.meta import MetaTrainer, RolloutTaskSampler, make_meta_optimizer
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv, episode_length=5)],
        ...                              episode_length=5, vector_envs_per_task=2,
        ...                              hidden_layers=(8,))
        >>> trainer = MetaTrainer(make_meta_optimizer("pid"), sampler, inner_rollouts=2,
        ...                       unroll_steps=2, meta_batch_size=2, cost_limit=1.0, mu=1.0)
        >>> trainer.task_runner = TaskPool(trainer, num_workers=0)
        >>> trainer.meta_iteration()["meta/grad_norm"] > 0
        True
    """

    def __init__(self, trainer: MetaTrainer, num_workers: int, *, torch_threads: int = 1) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        sampler = copy.copy(trainer.task_sampler)
        if hasattr(sampler, "_envs"):  # RolloutTaskSampler: workers build their own envs
            sampler._envs = {}
        params = list(trainer.meta_optimizer.parameters())
        payload = {
            "meta_optimizer": copy.deepcopy(trainer.meta_optimizer).to("cpu"),
            "task_sampler": sampler,
            "device": params[0].device,
            "torch_threads": torch_threads,
            "inner_rollouts": trainer.inner_rollouts,
            "unroll_steps": trainer.unroll_steps,
            "meta_batch_size": trainer.meta_batch_size,
            "cost_limit": trainer.cost_limit,
            "mu": trainer.mu,
            "violation_scale": trainer.violation_scale,
        }
        self.num_workers = int(num_workers)
        self._executor: Any = None
        self._local: Any = None
        if self.num_workers:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(
                self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_init,
                initargs=(payload,),
            )
        else:  # the same worker code, in this process
            self._local = _worker_trainer(payload)

    def __call__(
        self,
        trainer: MetaTrainer,
        seeds: Sequence[int],
        env_indices: Sequence[int | None] | None = None,
    ) -> list[TaskOutcome]:
        """Run the tasks ``seeds`` (on ``env_indices``, default: drawn from the seeds) with
        ``trainer``'s current meta-parameters; their meta-gradients are added to its
        ``.grad`` in seed order."""
        state = {k: v.detach().cpu() for k, v in trainer.meta_optimizer.state_dict().items()}
        indices = [None] * len(seeds) if env_indices is None else list(env_indices)
        jobs = [(state, int(seed), index) for seed, index in zip(seeds, indices, strict=True)]
        if self._executor is not None:
            outcomes = list(self._executor.map(_pool_task, jobs))
        else:
            outcomes = [_run_pool_task(self._local, job) for job in jobs]
        params = list(trainer.meta_optimizer.parameters())
        summaries = []
        for grads, outcome in outcomes:
            for p, g in zip(params, grads):
                if g is None:
                    continue
                g = g.to(p.device)
                p.grad = g if p.grad is None else p.grad.add_(g)
            summaries.append(outcome)
        return summaries

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
