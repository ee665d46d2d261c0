"""The ``cmo`` command: meta-train a constraint-aware optimizer, log, checkpoint, meta-test.

    cmo                                            # cmo_rl/conf/default.yaml
    cmo preset=quick                               # a real meta-training in a few minutes
    cmo meta_optimizer_type=pid meta_lr=5e-4 device=cpu
    cmo resume=runs/meta_lstm/SafetyPointGoal1-v0/20250101-120000 total_meta_iters=1000
    python recipes/meta_train.py preset=quick      # the same program

One run (:func:`train`):

1. the config is checked (:func:`cmo_rl.meta_schema.check_meta_config`; with ``resume``, the
   run's stored config plus the allowed changes, :data:`~cmo_rl.meta_schema.RESUMABLE_KEYS`, by
   the recipes' :func:`~cmo_rl.training.run_state.resolve_resume_config`) before any work: one message naming every bad key, exit code 2, no traceback;
2. :meth:`cmo_rl.meta.MetaTrainer.from_config` builds the meta-optimizer, the task sampler and
   the outer Adam; a resumed run loads its checkpoint (meta-optimizer, outer Adam, task-seed
   generator, RNG states, iteration, env steps, the partial logging window);
3. ``total_meta_iters`` meta-iterations; every ``log_interval`` of them one row of
   ``metrics.csv`` / TensorBoard (means over the window, ``step`` = meta-iteration, names of
   ``docs/metrics.md``); a checkpoint every ``checkpoint_interval``, at the end and on
   Ctrl-C / SIGTERM (the state after the last *completed* meta-iteration);
4. the meta-test (``meta_test.enabled``): the initial and the learned optimizer, frozen, train
   fresh policies on every training task and on the held-out ``eval_env_ids`` with the same
   seeds (:mod:`cmo_rl.meta_eval`); the before/after table is printed and saved as
   ``meta_test.txt`` / ``meta_test.csv``; optionally PPO-Lag and PID-Lag on the same budget;
5. plots: ``plots/meta_training.png`` (meta-objective, return and cost per task, PID gains)
   and ``plots/meta_test_return.png``, ``plots/meta_test_cost.png`` (per task: mean over seeds
   after each inner round of the meta-test runs, initial vs learned).

Exit codes: 0 done, 2 bad config (or an unreadable checkpoint to resume), 3 non-finite
meta-gradient with ``nan_policy=raise``, 130 / 143 Ctrl-C / SIGTERM (after the checkpoint).
"""

from __future__ import annotations

import copy
import csv
import difflib
import math
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from cmo_rl.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    cpu_state_copy,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from cmo_rl.config import ConfigError, run_cli
from cmo_rl.logging import RunLogger, make_run_dir
from cmo_rl.meta_schema import (
    CONF_DIR,
    MOCK_ENV_ID,
    RESUMABLE_KEYS,
    SCHEMA,
    check_meta_config,
)
from cmo_rl.signals import graceful_shutdown
from cmo_rl.training.run_state import resolve_resume_config

__all__ = [
    "TRAINER_KEYS",
    "EnvFactory",
    "TrackedConfig",
    "check_override_keys",
    "main",
    "train",
]

#: The keys handed to :meth:`cmo_rl.meta.MetaTrainer.from_config` (its documented key list).
TRAINER_KEYS = (
    "env_ids",
    "total_meta_iters",
    "inner_rollouts",
    "episode_length",
    "meta_batch_size",
    "hidden_layers",
    "hidden_size",
    "alpha_theta",
    "alpha_lambda",
    "init_KP",
    "init_KI",
    "init_KD",
    "init_etaR",
    "init_etaC",
    "init_lambda",
    "meta_lr",
    "unroll_steps",
    "gamma",
    "cost_limit",
    "mu",
    "lstm_layers",
    "vector_envs_per_task",
    "seed",
    "device",
    "meta_optimizer_type",
    "meta_grad_clip",
    "gae_lambda",
    "nan_policy",
    "critic_lr",
    "critic_steps",
    "violation_scale",
)
#: Exit code of a run stopped by a non-finite meta-gradient (``nan_policy=raise``).
NONFINITE_EXIT_CODE = 3
_GAINS = ("KP", "KI", "KD", "etaR", "etaC")


class TrackedConfig(Mapping[str, Any]):
    """Read-only view of a nested plain-dict config that records which keys are read.

    Attribute or item access (``cfg.meta_lr``, ``cfg["meta_test"]["rounds"]``) of a leaf
    records its dotted name; ``key in cfg`` does not. :meth:`unread` lists the leaves never
    read: the test that every key of ``default.yaml`` is used runs the program on this view.

    >>> cfg = TrackedConfig({"lr": 0.1, "sub": {"a": 1, "b": 2}})
    >>> cfg.lr, cfg.sub.a, sorted(cfg.unread())
    (0.1, 1, ['sub.b'])
    """

    def __init__(self, data: Mapping[str, Any], _prefix: str = "", _reads: set | None = None):
        self._data = data
        self._prefix = _prefix
        self._reads: set[str] = set() if _reads is None else _reads

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        name = f"{self._prefix}{key}"
        if isinstance(value, Mapping):
            return TrackedConfig(value, f"{name}.", self._reads)
        self._reads.add(name)
        return value

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {self._prefix}{key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def unread(self) -> set[str]:
        """Dotted names of the leaves that were never read."""

        def leaves(data: Mapping[str, Any], prefix: str) -> Iterator[str]:
            for key, value in data.items():
                if isinstance(value, Mapping):
                    yield from leaves(value, f"{prefix}{key}.")
                else:
                    yield f"{prefix}{key}"

        return set(leaves(self._data, self._prefix)) - self._reads


class EnvFactory:
    """``factory(num_envs=, seed=, device=)`` of one task id for
    :class:`cmo_rl.meta.RolloutTaskSampler`; its ``__name__`` is the id (the per-task metric
    names use it). ``MockCMDP-v0`` is :class:`cmo_rl.testing.MockCMDPEnv`; other ids go to
    :func:`cmo_rl.envs.make_safety_env` with ``max_episode_steps=episode_length``.

    >>> env = EnvFactory("MockCMDP-v0", episode_length=4)(num_envs=2, seed=0, device="cpu")
    >>> EnvFactory("MockCMDP-v0", 4).__name__, tuple(env.batch_size), env.episode_length
    ('MockCMDP-v0', (2,), 4)
    """

    def __init__(self, env_id: str, episode_length: int) -> None:
        self.__name__ = self.env_id = str(env_id)
        self.episode_length = int(episode_length)

    def __call__(self, *, num_envs: int, seed: int, device: torch.device | str) -> Any:
        if self.env_id == MOCK_ENV_ID:
            from cmo_rl.testing import MockCMDPEnv

            return MockCMDPEnv(
                num_envs=num_envs, episode_length=self.episode_length, seed=seed, device=device
            )
        from cmo_rl.envs import make_safety_env

        return make_safety_env(
            self.env_id, num_envs, seed=seed, device=device, max_episode_steps=self.episode_length
        )

    def __repr__(self) -> str:
        return f"EnvFactory({self.env_id!r}, episode_length={self.episode_length})"


# ------------------------------------------------------------------------------ resume
def _load_resume(requested: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The run directory and its newest checkpoint; writes nothing."""
    recipe = f"meta_{requested['meta_optimizer_type']}"
    try:
        run_dir = make_run_dir(
            requested["run_root"], recipe, requested["env_ids"][0], resume=requested["resume"]
        )
    except ValueError as err:
        raise ConfigError([f"resume: {err}"]) from None
    ckpt = latest_checkpoint(run_dir, verify=False)
    if ckpt is None:
        raise ConfigError([f"resume: no checkpoint under {run_dir / 'checkpoints'}"])
    try:
        state = load_checkpoint(ckpt, map_location="cpu")
    except CheckpointError as err:
        raise ConfigError(
            [
                f"resume: {err}; nothing in {run_dir} was changed (move that file away to "
                "resume from the checkpoint before it)"
            ]
        ) from None
    needed = (
        "config",
        "step",
        "time_total",
        "env_steps",
        "meta_optimizer",
        "outer_optimizer",
        "iteration",
        "initial_meta_optimizer",
        "window",
        "rng",
    )
    missing = [k for k in needed if k not in state]
    if missing:
        raise ConfigError([f"resume: {ckpt} is not a cmo checkpoint (it lacks {missing})"])
    return run_dir, state


# ------------------------------------------------------------------------------ bookkeeping
class TaskRecorder:
    """Wraps a task sampler; records each task's final round and the env steps consumed.

    The last ``sample_round`` of a task in :func:`cmo_rl.meta.bilevel_objective` is the fresh
    batch of the final policy, so its ``return`` / ``cost`` are the task's ``J_R``, ``J_C``.

    With ``num_envs`` given (``balanced_tasks``), the ``n``-th task asked for uses env id
    ``n mod num_envs`` instead of one drawn from its seed: a meta-batch whose size is a multiple
    of ``len(env_ids)`` holds every task equally often (stratified sampling: the same expected
    meta-gradient, without the variance of the task mix). ``count`` is the number of tasks
    built so far (``iteration * meta_batch_size``; restored on resume).

    >>> import functools
    >>> from cmo_rl.meta import RolloutTaskSampler
    >>> from cmo_rl.testing import MockCMDPEnv
    >>> envs = [functools.partial(MockCMDPEnv, episode_length=e) for e in (3, 4)]
    >>> recorder = TaskRecorder(RolloutTaskSampler(envs, episode_length=3), num_envs=2)
    >>> [recorder(seed).problem.env.episode_length for seed in (5, 5, 5)], recorder.count
    ([3, 4, 3], 3)
    """

    def __init__(self, sampler: Any, num_envs: int | None = None, count: int = 0) -> None:
        self.sampler = sampler
        self.num_envs = num_envs
        self.count = int(count)
        self._tasks: list[_RecordedTask] = []

    def __call__(self, seed: int, env_index: int | None = None) -> _RecordedTask:
        if env_index is None and self.num_envs:
            env_index = self.count % self.num_envs
        task = _RecordedTask(self.sampler(seed, env_index))
        self.count += 1
        self._tasks.append(task)
        return task

    def pop(self) -> tuple[list[tuple[str, float, float]], int]:
        """``[(task name, J_R, J_C), ...]`` of the tasks since the last call, and their env steps."""
        tasks, self._tasks = self._tasks, []
        finals = [(t.name, t.last["return"], t.last["cost"]) for t in tasks if t.last]
        return finals, sum(t.env_steps for t in tasks)


class _RecordedTask:
    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self.name = str(getattr(problem, "name", type(problem).__name__))
        self.last: dict[str, float] = {}
        self.env_steps = 0
        env = getattr(problem, "env", None)
        horizon = getattr(problem, "episode_length", 0)
        self._steps_per_round = int(horizon) * (env.batch_size.numel() if env is not None else 0)

    def init_params(self) -> Any:
        return self.problem.init_params()

    def sample_round(self, params: Any) -> Any:
        rnd = self.problem.sample_round(params)
        self.last = dict(rnd.metrics)
        self.env_steps += self._steps_per_round
        return rnd


class MetricWindow:
    """Accumulates per-iteration metrics between two logged rows.

    Means over the iterations in the window for most names (per-task names: over the tasks'
    occurrences), the latest value for state-like names (PID gains, ``meta/lr``), the sum for
    ``meta/skipped_updates``. Its state goes into the checkpoint (weights-only safe).

    >>> w = MetricWindow()
    >>> w.add({"meta/objective": 1.0, "meta/KP": 0.1, "meta/skipped_updates": 1.0})
    >>> w.add({"meta/objective": 3.0, "meta/KP": 0.2, "meta/skipped_updates": 0.0})
    >>> w.flush()
    {'meta/objective': 2.0, 'meta/KP': 0.2, 'meta/skipped_updates': 1.0}
    """

    _LATEST = tuple(f"meta/{g}" for g in _GAINS) + ("meta/lr",)
    _SUM = ("meta/skipped_updates",)

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, row: Mapping[str, float]) -> None:
        for key, value in row.items():
            if key in self._LATEST:
                self.sums[key], self.counts[key] = float(value), 1
            else:
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
                self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        """The row to log; empties the window."""
        row = {k: v if k in self._SUM else v / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {str(k): float(v) for k, v in state["sums"].items()}
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}


def iteration_metrics(
    metrics: Mapping[str, float],
    tasks: list[tuple[str, float, float]],
    *,
    cost_limit: float,
) -> dict[str, float]:
    """``docs/metrics.md`` names of one meta-iteration, from :meth:`MetaTrainer.meta_iteration`'s
    dict and the tasks' final ``(name, J_R, J_C)``.

    >>> row = iteration_metrics({"meta/objective": 1.0, "train/return": 2.0, "train/cost": 4.0,
    ...                          "train/lambda": 0.5, "meta/skipped": 0.0, "meta/iteration": 3.0},
    ...                         [("A", 1.0, 2.0), ("B", 3.0, 6.0)], cost_limit=3.0)
    >>> row["meta/return"], row["meta/return/B"], row["meta/violation"], row["meta/skipped_updates"]
    (2.0, 3.0, 1.5, 0.0)
    """
    renamed = {
        "train/return": "meta/return",
        "train/cost": "meta/cost",
        "train/lambda": "meta/lambda",
        "train/initial_return": "meta/initial_return",
        "train/initial_cost": "meta/initial_cost",
        "meta/skipped": "meta/skipped_updates",
    }
    row = {}
    for key, value in metrics.items():
        if key == "meta/iteration":
            continue
        row[renamed.get(key, key)] = float(value)
    per_task: dict[str, list[tuple[float, float]]] = {}
    for name, ret, cost in tasks:
        per_task.setdefault(name, []).append((ret, cost))
    for name, values in per_task.items():
        row[f"meta/return/{name}"] = sum(r for r, _ in values) / len(values)
        row[f"meta/cost/{name}"] = sum(c for _, c in values) / len(values)
    if tasks:
        row["meta/violation"] = sum(max(0.0, c - cost_limit) for _, _, c in tasks) / len(tasks)
    return row


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(dict(cfg))


# ------------------------------------------------------------------------------ the program
def trainer_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The dict :meth:`MetaTrainer.from_config` gets: :data:`TRAINER_KEYS`, task ids turned
    into :class:`EnvFactory` objects (so ``MockCMDP-v0`` works and metrics carry the ids)."""
    out = {key: cfg[key] for key in TRAINER_KEYS}
    out["env_ids"] = [EnvFactory(e, out["episode_length"]) for e in out["env_ids"]]
    out["hidden_layers"] = list(out["hidden_layers"])
    return out


class _Printer:
    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger

    def __call__(self, text: str) -> None:
        if self.logger.progress is not None:
            self.logger.progress.write(text)
        else:
            print(text, flush=True)


def train(
    cfg: Any, *, explicit: set[str] | None = None, tracked: list[TrackedConfig] | None = None
) -> Path:
    """Run ``cmo`` with ``cfg`` (a Hydra ``DictConfig`` or a dict); returns the run directory.

    Args:
        cfg: the composed config (checked here first).
        explicit: keys set on the command line (for ``resume``; ``None``: all keys).
        tracked: if given, the :class:`TrackedConfig` the program read is appended (tests).

    Raises:
        ConfigError: a bad config or an unusable checkpoint, before anything is written.
    """
    from cmo_rl.meta import MetaTrainer

    requested = _plain(cfg)
    check_meta_config(requested)
    state: dict[str, Any] | None = None
    run_dir: Path | None = None
    if requested.get("resume"):
        run_dir, state = _load_resume(requested)
        requested = resolve_resume_config(
            requested,
            state["config"],
            explicit,
            resumable=RESUMABLE_KEYS,
            allow_new_keys=True,  # keys newer than the run's config take their defaults
        )
        requested["resume"] = str(run_dir)
        check_meta_config(requested)
    c = TrackedConfig(requested)
    if tracked is not None:
        tracked.append(c)

    if c.torch_threads:
        torch.set_num_threads(int(c.torch_threads))
    _seed_everything(int(c.seed))
    trainer = MetaTrainer.from_config(trainer_config(c))
    initial = copy.deepcopy(trainer.meta_optimizer)
    balanced = len(c.env_ids) if c.balanced_tasks else None
    recorder = TaskRecorder(trainer.task_sampler, num_envs=balanced)
    window = MetricWindow()
    env_steps, time_base = 0, 0.0
    if state is not None:
        try:
            trainer.load_state_dict(state)
            initial.load_state_dict(state["initial_meta_optimizer"])
            window.load_state_dict(state["window"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ConfigError([f"resume: the checkpoint does not fit this config: {err}"]) from None
        env_steps, time_base = int(state["env_steps"]), float(state["time_total"])
        recorder.count = trainer.iteration * trainer.meta_batch_size
    sampler = trainer.task_sampler
    trainer.task_sampler = recorder
    total = int(c.total_meta_iters)
    cost_limit = float(c.cost_limit)
    log_interval, ckpt_interval = int(c.log_interval), int(c.checkpoint_interval)
    keep = int(c.keep_checkpoints)
    recipe = f"meta_{c.meta_optimizer_type}"
    if run_dir is None:
        run_dir = make_run_dir(c.run_root, recipe, c.env_ids[0])

    t0 = time.perf_counter()
    snapshot: dict[str, Any] = {}
    saved = {"step": -1}

    def time_total() -> float:
        return time_base + time.perf_counter() - t0

    def take_snapshot() -> None:
        nonlocal snapshot
        snapshot = {
            "step": trainer.iteration,
            "time_total": time_total(),
            "env_steps": env_steps,
            **cpu_state_copy(trainer.state_dict()),
            "initial_meta_optimizer": cpu_state_copy(initial.state_dict()),
            "window": window.state_dict(),
            "rng": capture_rng_state(),
            "config": copy.deepcopy(requested),
        }

    def save() -> None:
        if not snapshot or saved["step"] == snapshot["step"]:
            return
        save_checkpoint(checkpoint_path(run_dir, snapshot["step"]), snapshot)
        prune_checkpoints(run_dir, keep)
        saved["step"] = snapshot["step"]

    progress_total = total if c.progress else None
    with (
        graceful_shutdown(),
        RunLogger(
            run_dir,
            progress_total=progress_total,
            resume_step=trainer.iteration if state is not None else None,
            progress_desc=f"{recipe} {_tasks_label(c.env_ids)}",
            progress_unit="iter",
        ) as logger,
    ):
        echo = _Printer(logger)
        logger.log_hparams(requested)
        if c.resume is not None:
            restore_rng_state(state["rng"])
            saved["step"] = trainer.iteration  # the checkpoint we resumed from
            echo(f"resumed {c.resume} at meta-iteration {trainer.iteration}")
        else:
            echo(f"run directory: {run_dir}")
        take_snapshot()

        def on_iteration(it: int, metrics: dict[str, float]) -> None:
            nonlocal env_steps
            tasks, steps = recorder.pop()
            env_steps += steps
            row = iteration_metrics(metrics, tasks, cost_limit=cost_limit)
            row["meta/lr"] = float(trainer.outer_optimizer.param_groups[0]["lr"])
            window.add(row)
            if it % log_interval == 0 or it == total:
                out = window.flush()
                out["meta/env_steps"] = env_steps
                out["time/total"] = time_total()
                logger.log_scalars(out, step=it)
                echo(_log_line(it, total, out, cost_limit))
            logger.update(1)
            take_snapshot()
            if it % ckpt_interval == 0 or it == total:
                save()

        try:
            if trainer.iteration >= total:
                echo(f"meta-training already complete ({trainer.iteration} of {total} iterations)")
            trainer.train(callback=on_iteration)
            save()
            if c.meta_test.enabled:
                _run_meta_test(c, trainer, initial, sampler, run_dir, logger, echo)
        finally:  # also on Ctrl-C / SIGTERM: the last completed meta-iteration
            save()
            trainer.task_sampler = sampler
            sampler.close()
            logger.close()
            _plot(run_dir, cost_limit, recipe, c)
    return run_dir


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries below us use the global RNG)
    torch.manual_seed(seed)


def _log_line(it: int, total: int, row: Mapping[str, float], cost_limit: float) -> str:
    def fmt(key: str, label: str) -> str:
        value = row.get(key)
        return f"{label} {value:.4g}" if value is not None and math.isfinite(value) else ""

    parts = [
        f"[{it}/{total}]",
        fmt("meta/objective", "objective"),
        fmt("meta/return", "return"),
        fmt("meta/cost", "cost") + f" (limit {cost_limit:g})",
        fmt("meta/lambda", "lambda"),
    ]
    parts += [fmt(f"meta/{g}", g) for g in _GAINS]
    parts.append(fmt("time/iteration", "s/it"))
    if row.get("meta/skipped_updates"):
        parts.append(f"skipped {int(row['meta/skipped_updates'])}")
    return "  ".join(p for p in parts if p)


# ------------------------------------------------------------------------------ meta-test
def _run_meta_test(
    c: TrackedConfig,
    trainer: Any,
    initial: Any,
    train_sampler: Any,
    run_dir: Path,
    logger: RunLogger,
    echo: Any,
) -> None:
    from cmo_rl.meta import RolloutTaskSampler
    from cmo_rl.meta_eval import (
        baseline_runs,
        format_meta_test_table,
        frozen_runs,
        summarize_meta_test,
    )

    start = time.perf_counter()
    mt = c.meta_test
    budget = int(mt.rounds) or int(c.inner_rollouts)
    seeds = [int(s) for s in mt.seeds]
    held_out = list(c.eval_env_ids)
    env_ids = list(c.env_ids) + held_out
    horizon, num_envs = int(c.episode_length), int(c.vector_envs_per_task)
    sampler = RolloutTaskSampler(
        [EnvFactory(e, horizon) for e in env_ids],
        episode_length=horizon,
        vector_envs_per_task=num_envs,
        hidden_layers=train_sampler.hidden_layers,
        gamma=train_sampler.gamma,
        gae_lambda=train_sampler.gae_lambda,
        critic_lr=train_sampler.critic_lr,
        critic_steps=train_sampler.critic_steps,
        device=train_sampler.device,
    )
    cost_limit, mu = float(c.cost_limit), float(c.mu)
    eval_episodes = int(c.eval_episodes)
    echo(
        f"meta-test: initial vs learned {c.meta_optimizer_type} optimizer (frozen) on "
        f"{len(env_ids)} task(s) x {len(seeds)} held-out seeds ..."
    )
    try:
        rows = frozen_runs(
            {"initial": initial, "learned": trainer.meta_optimizer},
            sampler,
            seeds=seeds,
            budget=budget,
            cost_limit=cost_limit,
            mu=mu,
            violation_scale=trainer.violation_scale,
            eval_episodes=eval_episodes,
            held_out=held_out,
        )
    finally:
        sampler.close()
    if mt.compare_baselines:
        echo("meta-test: PPO-Lag and PID-Lag on the same budget and seeds ...")
        rows += baseline_runs(
            env_ids,
            seeds=seeds,
            budget=budget,
            episode_length=horizon,
            vector_envs_per_task=num_envs,
            cost_limit=cost_limit,
            gamma=float(c.gamma),
            gae_lambda=float(c.gae_lambda),
            hidden_layers=list(c.hidden_layers),
            eval_episodes=eval_episodes,
            run_root=run_dir / "baselines",
            device=str(c.device),
            torch_threads=int(c.torch_threads),
            held_out=held_out,
        )
    summary = summarize_meta_test(rows)
    per_1000 = cost_limit * 1000.0 / horizon
    header = [
        f"meta-test after {trainer.iteration} meta-iterations ({time.perf_counter() - start:.0f} s):"
        f" every optimizer (frozen) trains a fresh policy for {budget} inner rounds of "
        f"{num_envs} envs x {horizon} steps on each task, for each of {len(seeds)} held-out seeds "
        f"{seeds} (common random numbers: same env seeds, initial policy and action noise).",
        f"return, cost: one fresh batch of the final policy ({num_envs} episodes of {horizon} "
        f"steps); objective = return - mu * max(0, cost - d), mu = {mu:g}; eval: "
        f"{eval_episodes} deterministic episodes.",
        f"cost limit d = {cost_limit:g} per {horizon}-step episode (= {per_1000:g} per 1000 "
        "steps). 'change' = learned - initial, paired by task and seed, ± 95% CI half-width.",
    ]
    if hasattr(initial, "gains"):
        before, after = initial.gains(), trainer.meta_optimizer.gains()
        header.append(
            "PID gains, initial -> learned: "
            + ", ".join(
                f"{k} {float(before[k].detach()):.3g} -> {float(after[k].detach()):.3g}"
                for k in before
            )
        )
    if mt.compare_baselines:
        header.append(
            f"ppo_lag / pid_lag: the baseline recipes with the same {budget} x {num_envs * horizon}"
            " env steps of training and the same seeds (eval columns only)."
        )
    table = format_meta_test_table(summary)
    text = "\n".join(header) + "\n\n" + table + "\n"
    (run_dir / "meta_test.txt").write_text(text)
    _write_rows(run_dir / "meta_test.csv", rows)
    echo("\n" + text)

    learned = [r for r in rows if r["optimizer"] == "learned" and "eval_return" in r]
    if learned:
        metrics: dict[str, float] = {}
        for env_id in env_ids:
            mine = [r for r in learned if r["env_id"] == env_id]
            metrics[f"eval/episode_return/{env_id}"] = _mean(r["eval_return"] for r in mine)
            metrics[f"eval/episode_cost/{env_id}"] = _mean(r["eval_cost"] for r in mine)
        metrics["eval/episode_return"] = _mean(r["eval_return"] for r in learned)
        metrics["eval/episode_cost"] = _mean(r["eval_cost"] for r in learned)
        metrics["eval/num_episodes"] = float(len(learned) * eval_episodes)
        metrics["time/eval"] = time.perf_counter() - start
        logger.log_scalars(metrics, step=trainer.iteration)
    _plot_meta_test(rows, run_dir / "plots" / "meta_test.png", cost_limit)


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k != "rounds" and k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot_meta_test(rows: list[dict[str, Any]], out_png: Path, cost_limit: float) -> None:
    import pandas as pd

    from cmo_rl.plotting import plot_learning_curves

    frames = {}
    for label in ("initial", "learned"):
        mine = [r for r in rows if r["optimizer"] == label and "rounds" in r]
        if not mine:
            return
        columns: dict[str, list[float]] = {}
        for env_id in dict.fromkeys(r["env_id"] for r in mine):
            runs = [r["rounds"] for r in mine if r["env_id"] == env_id]
            for metric in ("return", "cost"):
                columns[f"meta/{metric}/{env_id}"] = [
                    _mean(run[k][metric] for run in runs) for k in range(len(runs[0]))
                ]
        n = len(next(iter(columns.values())))
        frames[label] = pd.DataFrame({"round": list(range(n)), **columns})
    names = [c for c in frames["learned"].columns if c != "round"]
    for metric in ("return", "cost"):
        try:
            plot_learning_curves(
                frames,
                out_png.with_name(f"{out_png.stem}_{metric}.png"),
                x="round",
                metrics=[(n, metric) for n in names if n.split("/")[1] == metric],
                cost_limit=cost_limit,
                title=f"meta-test: mean {metric} over seeds after k frozen-optimizer updates",
                x_label="inner round",
            )
        except Exception as err:  # a plot must never hide the run's own outcome
            warnings.warn(f"could not plot the meta-test: {err}", RuntimeWarning, stacklevel=2)


def _plot(run_dir: Path, cost_limit: float, recipe: str, c: TrackedConfig) -> None:
    from cmo_rl.plotting import plot_meta_training

    try:
        plot_meta_training(
            run_dir / "metrics.csv",
            run_dir / "plots" / "meta_training.png",
            cost_limit=cost_limit,
            title=f"{recipe} on {', '.join(c.env_ids)}",
        )
    except Exception as err:  # e.g. interrupted before the first logged row
        warnings.warn(
            f"could not plot the meta-training curves: {err}", RuntimeWarning, stacklevel=2
        )


# ------------------------------------------------------------------------------ entry point
def _explicit_keys() -> set[str] | None:
    """Top-level keys set on the command line of the running Hydra app (``None`` outside)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    keys = set()
    for override in HydraConfig.get().overrides.task:
        keys.add(override.split("=", 1)[0].lstrip("+~").split(".", 1)[0])
    return keys


@run_cli
def _main(cfg: Any) -> None:
    try:
        train(cfg, explicit=_explicit_keys())
    except FloatingPointError as err:  # nan_policy=raise
        sys.stderr.write(f"stopped: {err} (nan_policy=raise; nan_policy=skip skips such steps)\n")
        sys.stderr.flush()
        raise SystemExit(NONFINITE_EXIT_CODE) from None


def check_override_keys(args: list[str]) -> None:
    """Reject command-line overrides of keys that are not in the config (``meta_lrr=1``,
    ``+foo=1``) with the same one-message :class:`ConfigError` as other config problems, before
    Hydra (whose struct-mode error would exit with code 1) sees them.

    >>> check_override_keys(["meta_lr=1e-3", "meta_test.rounds=2", "preset=quick", "-m"])
    >>> try:
    ...     check_override_keys(["meta_lrr=1e-3"])
    ... except ConfigError as err:
    ...     print(err)
    invalid config (1 problem):
      - meta_lrr: unknown key (did you mean meta_lr?)
    """
    problems = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if "/" in key or key.split(".", 1)[0] in ("hydra", "preset"):
            continue  # Hydra's own settings and config-group choices
        node: Any = SCHEMA
        for depth, part in enumerate(key.split(".")):
            if not isinstance(node, Mapping) or part not in node:
                known = list(node) if isinstance(node, Mapping) else []
                close = difflib.get_close_matches(part, known, n=1)
                prefix = ".".join(key.split(".")[:depth])
                hint = (
                    f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
                )
                problems.append(f"{key}: unknown key{hint}")
                break
            node = node[part]
    if problems:
        raise ConfigError(problems)


def _tasks_label(env_ids: list[str]) -> str:
    """``"SafetyPointGoal1-v0"`` or ``"SafetyPointGoal1-v0 +2 tasks"`` for the progress bar."""
    more = len(env_ids) - 1
    return env_ids[0] + (f" +{more} task{'s' if more > 1 else ''}" if more else "")


def main() -> None:
    """Console script ``cmo`` (and ``python recipes/meta_train.py``): Hydra overrides as args."""
    import hydra

    try:
        check_override_keys(sys.argv[1:])
    except ConfigError as err:
        sys.stderr.write(f"{err}\n")
        raise SystemExit(2) from None
    hydra.main(config_path=str(CONF_DIR), config_name="default", version_base=None)(_main)()


if __name__ == "__main__":
    main()
