"""Collection across processes and machines: TorchRL's ``MultiSyncCollector`` and ``RayCollector``.

:func:`cmo_rl.training.collection.make_collector` hands a run's collection here when its config
block ``collector:`` asks for workers (:class:`CollectorConfig`):

============  ============================================================================
``backend``   what collects an epoch's ``[num_envs, T]`` batch
============  ============================================================================
``sync``      one TorchRL ``Collector`` in the training process (the default)
``multi_sync`` ``num_workers`` processes on this machine (TorchRL ``MultiSyncCollector``)
``ray``       ``num_workers`` Ray actors, on this machine or a cluster (``RayCollector``)
============  ============================================================================

Each worker owns ``envs_per_worker = num_envs / num_workers`` sub-envs (:class:`WorkerEnv`) and
a CPU copy of the policy, whose weights are pushed to it before every batch; the worker batches
``[envs_per_worker, T]`` are joined in worker order into ``[num_envs, T]`` and moved to
``device``, so a recipe sees the same batch layout whatever the backend.

Seeding (what keeps ``resume`` exact). Before each batch, worker ``w`` seeds its sub-envs with
``epoch_seed(seed, epoch) + w * envs_per_worker`` (sub-env ``j`` of the whole batch gets
``epoch_seed + j``, as in the single-process path) and its torch RNG (action sampling) with
:func:`worker_action_seed`. A batch therefore depends only on the policy weights, the seed and
the epoch index, as in the ``sync`` path. What differs from ``sync``: the action noise comes
from the workers' RNGs (not the training process's), and the Mock CMDP draws its dynamics from
one generator per env object, so its ``multi_sync`` data differ from ``sync`` (Safety-Gymnasium
seeds every sub-env on its own, so reset states match ``sync`` exactly).

Observation normalisation with ``multi_sync``: the workers' ``VecNormV2`` (``StableVecNorm``) share the training
env's statistics (shared memory, TorchRL's lock), so checkpoints and evaluation read the same
statistics as in the ``sync`` path; the order in which workers add their rows to the running sums
varies from run to run, which costs bitwise reproducibility (float rounding) when
``normalize_observations=true``. Across machines nothing can be shared, so ``backend=ray`` needs
``normalize_observations=false`` (a :class:`~cmo_rl.config.ConfigError` says so).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.envs import EnvBase

from cmo_rl.config import ConfigError
from cmo_rl.seeding import ACTION_SEED_SHIFT, epoch_seed

__all__ = [
    "BACKENDS",
    "CollectorConfig",
    "WorkerCollector",
    "WorkerEnv",
    "WorkerSpec",
    "shutdown_collector",
    "worker_action_seed",
    "worker_spec",
]

#: The values of ``collector.backend``.
BACKENDS = ("sync", "multi_sync", "ray")


def worker_action_seed(env_seed: int, worker_index: int) -> int:
    """Seed of worker ``worker_index``'s torch RNG for the batch whose env seed is ``env_seed``.

    Examples:
        >>> worker_action_seed(1000003, 0), worker_action_seed(1000003, 1) - worker_action_seed(1000003, 0)
        (1099512627779, 1)
    """
    return ACTION_SEED_SHIFT + int(env_seed) + int(worker_index)


@dataclass(frozen=True)
class CollectorConfig:
    """The ``collector:`` block of a recipe config.

    Args:
        backend: ``"sync"`` (one process), ``"multi_sync"`` (processes on this machine) or
            ``"ray"`` (Ray actors).
        num_workers: processes / actors (``1`` for ``sync``).
        envs_per_worker: sub-envs per worker; ``None``: ``num_envs / num_workers``. When set,
            ``num_workers * envs_per_worker`` must equal ``num_envs``.
        ray_address: ``ray.init(address=...)`` for ``backend=ray`` (``None``: a local Ray,
            started on first use unless one is running; ``"auto"``: the cluster this machine
            belongs to; ``"ray://host:10001"``: a remote cluster's client server).

    Examples:
        >>> CollectorConfig.from_config({"num_envs": 8, "collector": {"backend": "multi_sync",
        ...     "num_workers": 2, "envs_per_worker": None, "ray_address": None}}).envs_per_worker
        4
        >>> CollectorConfig.from_config({"num_envs": 8}).backend  # no block: one process
        'sync'
    """

    backend: str = "sync"
    num_workers: int = 1
    envs_per_worker: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"collector.backend must be one of {list(BACKENDS)}, got {self.backend!r}"
            )
        if self.num_workers < 1:
            raise ValueError(f"collector.num_workers must be >= 1, got {self.num_workers}")
        if self.envs_per_worker is not None and self.envs_per_worker < 1:
            raise ValueError(f"collector.envs_per_worker must be >= 1, got {self.envs_per_worker}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> CollectorConfig:
        """Read ``cfg.collector`` (absent: ``sync``) and resolve ``envs_per_worker`` against
        ``cfg.num_envs``; inconsistent values raise one :class:`~cmo_rl.config.ConfigError`."""
        block = cfg.get("collector", None)
        if block is None:
            return cls()
        block = dict(block)
        num_envs = int(cfg["num_envs"])
        backend = str(block.get("backend", "sync"))
        workers = int(block.get("num_workers", 1))
        per_worker = block.get("envs_per_worker", None)
        problems = []
        if backend == "sync" and workers != 1:
            problems.append(
                f"collector.num_workers: got {workers} with backend=sync (one process); use "
                "collector.backend=multi_sync (this machine) or ray"
            )
        elif num_envs % workers:
            problems.append(
                f"collector.num_workers: got {workers}, must divide num_envs ({num_envs}): each "
                "worker steps num_envs / num_workers sub-envs"
            )
        elif per_worker is not None and int(per_worker) * workers != num_envs:
            problems.append(
                f"collector.envs_per_worker: got {per_worker}, but num_workers ({workers}) x "
                f"envs_per_worker must equal num_envs ({num_envs}); set it to null to derive it"
            )
        if backend == "ray" and bool(cfg.get("normalize_observations", False)):
            problems.append(
                "normalize_observations: must be false with collector.backend=ray (the running "
                "statistics cannot be shared across machines); use backend=multi_sync to keep it"
            )
        if problems:
            raise ConfigError(problems)
        address = block.get("ray_address", None)
        return cls(
            backend=backend,
            num_workers=workers,
            envs_per_worker=num_envs // workers,
            ray_address=None if address is None else str(address),
        )


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its envs: the collector block plus the task options.

    Build it with :func:`worker_spec` from a recipe config; pass it to
    :func:`~cmo_rl.training.collection.make_collector` as ``workers=``.

    Examples:
        >>> spec = WorkerSpec(CollectorConfig("multi_sync", num_workers=2, envs_per_worker=2),
        ...                   "MockCMDP-v0", max_episode_steps=5)
        >>> spec.collector.backend, spec.env_id
        ('multi_sync', 'MockCMDP-v0')
    """

    collector: CollectorConfig
    env_id: str
    max_episode_steps: int | None = None


def worker_spec(cfg: Mapping[str, Any]) -> WorkerSpec | None:
    """The :class:`WorkerSpec` of a recipe config, or ``None`` for ``collector.backend=sync``.

    Examples:
        >>> cfg = {"env_id": "MockCMDP-v0", "num_envs": 4, "episode_length": 10,
        ...        "collector": {"backend": "multi_sync", "num_workers": 2, "envs_per_worker": None,
        ...                      "ray_address": None}}
        >>> spec = worker_spec(cfg)
        >>> spec.collector.num_workers, spec.collector.envs_per_worker, spec.max_episode_steps
        (2, 2, 10)
        >>> worker_spec({**cfg, "collector": None}) is None
        True
    """
    collector = CollectorConfig.from_config(cfg)
    if collector.backend == "sync":
        return None
    horizon = cfg.get("episode_length", None)
    return WorkerSpec(collector, str(cfg["env_id"]), None if horizon is None else int(horizon))


# ------------------------------------------------------------------------------------ workers
#: The env built by :class:`WorkerEnv` in this (worker) process, and its sub-env seed offset.
_WORKER_ENV: tuple[EnvBase, int, int] | None = None


@dataclass(frozen=True)
class WorkerEnv:
    """Picklable factory of worker ``worker_index``'s env: :func:`cmo_rl.envs.factory.make_env`
    with ``num_envs`` sub-envs (``RewardSum`` and ``StepCounter`` included).

    ``norm`` (from the training env, ``multi_sync`` only) appends a ``VecNormV2`` whose
    statistics *are* the training env's (shared memory) and updates them under its lock.
    The built env is registered in the process, for the per-epoch seeding hook.

    Examples:
        >>> env = WorkerEnv("MockCMDP-v0", num_envs=2, worker_index=1, max_episode_steps=5)()
        >>> tuple(env.batch_size), env.rollout(5)["next", "step_count"][:, -1].flatten().tolist()
        ((2,), [5, 5])
    """

    env_id: str
    num_envs: int
    worker_index: int
    max_episode_steps: int | None = None
    norm: dict[str, Any] | None = None

    def __call__(self) -> EnvBase:
        global _WORKER_ENV
        from cmo_rl.envs.factory import make_env

        env = make_env(self.env_id, self.num_envs, max_episode_steps=self.max_episode_steps)
        if self.norm is not None:
            env.append_transform(_shared_norm(self.norm))
        _WORKER_ENV = (env, self.worker_index, self.num_envs)
        return env


class _SharedStats:
    """Shared-memory tensors that stay shared when pickled into a worker process.

    TorchRL sends env factories to workers through ``cloudpickle``, which would copy tensors by
    value; this holder pickles its TensorDict with ``ForkingPickler`` (shared-memory handles).
    """

    def __init__(self, td: TensorDictBase) -> None:
        self.td = td

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        from multiprocessing.reduction import ForkingPickler

        import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions)

        return (_load_shared, (bytes(ForkingPickler.dumps(self.td)),))


def _load_shared(data: bytes) -> _SharedStats:
    import pickle

    return _SharedStats(pickle.loads(data))


def _norm_share(norm: nn.Module) -> dict[str, Any]:
    """The training env's ``VecNormV2`` settings and statistics, moved to shared memory."""
    if norm._loc is None:
        raise RuntimeError("the observation norm is not initialised: reset the env first")
    stats = TensorDict({"loc": norm._loc, "var": norm._var, "count": norm._count}, batch_size=[])
    stats.share_memory_()
    return {
        "in_keys": list(norm.in_keys),
        "out_keys": list(norm.out_keys),
        "decay": norm.decay,
        "eps": norm.eps,
        "reduce_batch_dims": norm.reduce_batch_dims,
        "stats": _SharedStats(stats),
        "lock": norm.lock,
    }


def _shared_norm(share: Mapping[str, Any]) -> nn.Module:
    from cmo_rl.envs.stable_vecnorm import StableVecNorm

    return StableVecNorm(
        in_keys=share["in_keys"],
        out_keys=share["out_keys"],
        decay=share["decay"],
        eps=share["eps"],
        reduce_batch_dims=share["reduce_batch_dims"],
        shared_data=share["stats"].td,
        lock=share["lock"],
    )


class _WorkerEpochSeeder:
    """``pre_collect_hook`` of a worker's collector: seed its envs and RNG for the next epoch."""

    def __init__(self, seed: int, first_epoch: int) -> None:
        self.seed, self.epoch = int(seed), int(first_epoch)

    def __call__(self) -> None:
        if _WORKER_ENV is None:
            raise RuntimeError("no WorkerEnv was built in this process")
        env, index, per_worker = _WORKER_ENV
        base = epoch_seed(self.seed, self.epoch)
        env.set_seed(base + index * per_worker, static_seed=True)
        torch.manual_seed(worker_action_seed(base, index))
        self.epoch += 1


# ------------------------------------------------------------------------------------ collector
class WorkerCollector:
    """Iterates like a TorchRL collector: one ``[num_envs, T]`` batch per remaining epoch,
    collected by ``num_workers`` processes (``multi_sync``) or Ray actors (``ray``).

    Build it through :func:`~cmo_rl.training.collection.make_collector` (``workers=``). The
    TorchRL collector is started on the first iteration, so a checkpoint restored after
    construction (``TrainingRun.attach``) is what the workers see; the policy's current
    weights are pushed to the workers before every batch. Call :meth:`shutdown` at the end
    (``TrainingRun.batches`` does).

    Args:
        env: the training env (its observation norm, if any, is shared with the workers).
        policy: the actor, on ``device``; workers run CPU copies.
        spec: :class:`WorkerSpec`.
        steps_per_epoch: frames per batch, all envs together, as for ``make_collector``.
        num_epochs: epochs of the whole run, as for ``make_collector``.
        seed: the run's seed, as for ``make_collector``.
        first_epoch: index of the first epoch collected, as for ``make_collector``.
        device: policy and storage device, as for ``make_collector``.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import make_actor
        >>> env = make_env("MockCMDP-v0", num_envs=4, max_episode_steps=5)
        >>> spec = WorkerSpec(CollectorConfig("multi_sync", 2, 2), "MockCMDP-v0", 5)
        >>> collector = WorkerCollector(env, make_actor(env, hidden_layers=(4,)), spec,
        ...                             steps_per_epoch=20, num_epochs=3, seed=0, first_epoch=1)
        >>> collector.remaining, collector.steps  # no process starts before the first iteration
        (2, 5)
    """

    def __init__(
        self,
        env: EnvBase,
        policy: nn.Module,
        spec: WorkerSpec,
        *,
        steps_per_epoch: int,
        num_epochs: int,
        seed: int,
        first_epoch: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        cfg = spec.collector
        if cfg.backend not in ("multi_sync", "ray"):
            raise ValueError(f"WorkerCollector runs multi_sync or ray, got backend={cfg.backend!r}")
        workers, per_worker = cfg.num_workers, cfg.envs_per_worker
        num_envs = int(env.batch_size.numel()) if env.batch_size else 1
        if per_worker is None or workers * per_worker != num_envs:
            raise ValueError(
                f"num_workers ({workers}) x envs_per_worker ({per_worker}) must equal the env's "
                f"num_envs ({num_envs})"
            )
        if steps_per_epoch < 1 or steps_per_epoch % num_envs:
            raise ValueError(
                f"steps_per_epoch ({steps_per_epoch}) must be a positive multiple of num_envs "
                f"({num_envs})"
            )
        self.remaining = int(num_epochs) - int(first_epoch)
        if self.remaining < 1:
            raise ValueError(
                f"no epoch left to collect: first_epoch={first_epoch}, num_epochs={num_epochs}"
            )
        from cmo_rl.envs.factory import observation_norm_of

        self.env, self.policy, self.spec = env, policy, spec
        self.norm = observation_norm_of(env)
        if self.norm is not None and cfg.backend == "ray":
            raise ValueError("backend=ray needs an env without observation normalisation")
        self.num_envs, self.steps = num_envs, int(steps_per_epoch) // num_envs
        self.seed, self.first_epoch = int(seed), int(first_epoch)
        self.device = torch.device(device)
        self._worker_policy: nn.Module | None = None
        self._collector: Any = None

    # -------------------------------------------------------------------------------- build
    def _sync_weights(self) -> None:
        """Copy the policy's current weights into the CPU copy the workers mirror."""
        assert self._worker_policy is not None
        weights = TensorDict.from_module(self.policy).data.to("cpu")
        weights.to_module(self._worker_policy)

    def _env_fns(self, norm: dict[str, Any] | None) -> list[WorkerEnv]:
        cfg = self.spec.collector
        return [
            WorkerEnv(self.spec.env_id, cfg.envs_per_worker, w, self.spec.max_episode_steps, norm)
            for w in range(cfg.num_workers)
        ]

    def _build(self) -> Any:
        cfg = self.spec.collector
        frames = cfg.envs_per_worker * self.steps
        self._worker_policy = copy.deepcopy(self.policy).to("cpu")
        self._sync_weights()
        common = dict(
            reset_at_each_iter=True,
            env_device="cpu",
            policy_device="cpu",
            storing_device="cpu",
        )
        if cfg.backend == "multi_sync":
            from torchrl.collectors import MultiSyncCollector

            norm = None
            if self.norm is not None:
                if self.norm._loc is None:
                    self.env.reset()  # initialise the statistics (as building a Collector does)
                norm = _norm_share(self.norm)
            return MultiSyncCollector(
                self._env_fns(norm),
                self._worker_policy,
                frames_per_batch=[frames] * cfg.num_workers,
                total_frames=self.remaining * frames * cfg.num_workers,
                cat_results="stack",
                pre_collect_hook=_WorkerEpochSeeder(self.seed, self.first_epoch),
                update_at_each_batch=True,
                auto_register_policy_transforms=False,
                **common,
            )
        from torchrl.collectors.distributed import RayCollector

        import_ray()
        _allow_slow_worker_starts()
        return RayCollector(
            self._env_fns(None),
            self._worker_policy,
            frames_per_batch=frames * cfg.num_workers,
            total_frames=self.remaining * frames * cfg.num_workers,
            collector_kwargs=[
                {
                    "pre_collect_hook": _WorkerEpochSeeder(self.seed, self.first_epoch),
                    "auto_register_policy_transforms": False,
                }
                for _ in range(cfg.num_workers)
            ],
            remote_configs={"num_cpus": 1, "num_gpus": 0, "memory": 2 * 1024**3},
            ray_init_config=ray_init_config(cfg.ray_address),
            sync=True,
            update_after_each_batch=True,
            **common,
        )

    # -------------------------------------------------------------------------------- iterate
    def __iter__(self) -> Iterator[TensorDictBase]:
        if self._collector is None:
            self._collector = self._build()
        cfg = self.spec.collector
        iterator = iter(self._collector)
        for _ in range(self.remaining):
            self._sync_weights()  # the collector pushes the CPU copy's weights before the batch
            batch = next(iterator)
            if batch.batch_size[:2] != torch.Size([cfg.num_workers, cfg.envs_per_worker]):
                raise RuntimeError(f"unexpected worker batch shape {tuple(batch.batch_size)}")
            batch = batch.reshape(self.num_envs, self.steps)
            yield batch.to(self.device) if self.device.type != "cpu" else batch

    def shutdown(self) -> None:
        """Stop the workers (idempotent)."""
        if self._collector is not None:
            collector, self._collector = self._collector, None
            shutdown_collector(collector)


def shutdown_collector(collector: Any) -> None:
    """``collector.shutdown()``, then shut its weight-sync schemes down too.

    torchrl 0.14.1's ``MultiSyncCollector.shutdown`` leaves its ``SharedMemWeightSyncScheme``
    alive; if that object is only collected at interpreter exit, its ``__del__`` puts a "stop"
    on a multiprocessing queue, which starts a feeder thread during finalisation and hangs the
    process forever (seen in ``benchmarks/env_throughput.py``). Shutting the schemes down while
    the interpreter is alive makes their ``__del__`` a no-op.

    Examples:
        >>> from torchrl.collectors import Collector
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> collector = Collector(MockCMDPEnv(num_envs=2), None, frames_per_batch=4, total_frames=4)
        >>> shutdown_collector(collector)  # no schemes: just ``shutdown()``
    """
    collector.shutdown()
    for scheme in (getattr(collector, "_weight_sync_schemes", None) or {}).values():
        scheme.shutdown()


# ------------------------------------------------------------------------------------ ray
#: Seconds the training process waits for Ray workers to join the weight-sync store.
RAY_CONNECT_TIMEOUT_S = 600


def _allow_slow_worker_starts() -> None:
    """Raise torchrl's weight-sync store timeout (a private 60 s constant) to
    :data:`RAY_CONNECT_TIMEOUT_S`: on a loaded machine two Ray actors took longer than 60 s to
    start, and the collector failed with ``DistStoreError: wait timeout after 60000ms``."""
    from datetime import timedelta

    from torchrl.weight_update import _ray

    if hasattr(_ray, "_DIST_TIMEOUT"):
        _ray._DIST_TIMEOUT = max(_ray._DIST_TIMEOUT, timedelta(seconds=RAY_CONNECT_TIMEOUT_S))


def import_ray() -> Any:
    """``import ray``, or an ``ImportError`` that says how to install it."""
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is in scripts/setup_env.sh
        raise ImportError(
            "collector.backend=ray needs Ray: pip install 'cmo_rl[scale]' (or run "
            "scripts/setup_env.sh)"
        ) from err
    return ray


def ray_init_config(address: str | None) -> dict[str, Any]:
    """``ray.init`` kwargs for ``collector.ray_address`` (used only when Ray is not running yet:
    ``None`` starts a local Ray on this machine, ``"auto"`` joins the cluster of this node,
    ``"ray://head:10001"`` connects to a remote cluster's client server).

    Examples:
        >>> ray_init_config(None), ray_init_config("auto")
        ({'address': None, 'log_to_driver': False}, {'address': 'auto', 'log_to_driver': False})
    """
    return {"address": address, "log_to_driver": False}
