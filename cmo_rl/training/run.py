"""Epochs of a baseline recipe on the shared run lifecycle (:class:`cmo_rl.lifecycle.Run`).

A recipe builds its env, networks and losses, then hands the bookkeeping to a
:class:`TrainingRun` and keeps only its algorithm in the loop::

    run = TrainingRun(cfg, recipe="ppo_lag")        # resolves `resume`, validates, no side effects
    cfg = run.cfg                                    # the effective config (the stored one on resume)
    ...                                              # env, eval env, networks, losses, collector
    run.attach(env, eval_env, policy=actor, modules={...}, optimizers={...})  # restores a checkpoint
    with run:                                        # run dir, logger, SIGTERM -> KeyboardInterrupt
        for batch in run.batches(collector):        # times the collection
            ...                                      # the algorithm's update
            run.end_epoch(batch, metrics)            # log, evaluate, snapshot, checkpoint
    # on exit (normal, Ctrl-C, SIGTERM, error): last snapshot saved, logger closed, curves plotted

What is common to every program (run directory, resume, checkpoint policy, logger, signals,
NaN guard) is :class:`~cmo_rl.lifecycle.Run`'s; this class adds what a recipe's epochs need:
the env check, the checkpoint entries of :mod:`cmo_rl.training.run_state`, collection timing,
the per-epoch ``train/``/``time/`` row, evaluation and the learning-curve plot. Metric names
and the run layout are those of ``docs/metrics.md``; ``step`` is env steps.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from cmo_rl.config import ConfigError
from cmo_rl.envs.factory import max_episode_steps, observation_norm_of
from cmo_rl.lifecycle import NonFiniteGuard, Run
from cmo_rl.lifecycle.logging import RunLogger
from cmo_rl.lifecycle.signals import raise_if_signalled
from cmo_rl.training.rollout_eval import eval_metrics, evaluate_policy, sync_observation_norm
from cmo_rl.training.run_state import RESUMABLE_KEYS, recipe_state, restore_snapshot
from cmo_rl.training.schema import RULES, check_consistency

__all__ = ["TrainingRun"]

_PLOTTED = (
    ("train/episode_return", "Return (train)"),
    ("train/episode_cost", "Cost (train)"),
    ("eval/episode_return", "Return (eval)"),
    ("eval/episode_cost", "Cost (eval)"),
    ("train/lambda", "Multiplier"),
)


def _check_resumed(cfg: Mapping[str, Any]) -> None:
    problems = [p for rule in RULES for p in rule.check(cfg)]
    if problems:
        raise ConfigError(problems)


class TrainingRun:
    """The epochs of a recipe run: env check, checkpoint entries, logging, evaluation.

    Args:
        cfg: the recipe's config (validated against its schema already).
        recipe: run-directory name of the recipe (``"ppo_lag"``, ``"pid_lag"``, ``"cpo"``).

    Attributes:
        cfg: the effective config (on resume: the stored config plus allowed changes).
        num_epochs: ``total_steps // steps_per_epoch``.
        epoch: epochs completed (0, or the resumed checkpoint's).
        step: env steps so far.
        guard: the run's :class:`~cmo_rl.lifecycle.guard.NonFiniteGuard` (``nan_policy``).
        run_dir: the run directory (set when the run is entered).
    """

    def __init__(self, cfg: DictConfig | Mapping[str, Any], recipe: str) -> None:
        self.recipe = recipe
        self._run = Run(
            cfg,
            program=recipe,
            task=lambda c: c["env_id"],
            resumable=RESUMABLE_KEYS,
            check=_check_resumed,
            required_state=("config", "step", "epoch"),
        )
        state = self._run.state
        self.cfg = OmegaConf.create(self._run.cfg)
        self.num_epochs = int(self.cfg.total_steps) // int(self.cfg.steps_per_epoch)
        self.epoch = int(state["epoch"]) if state else 0
        self.step = int(state["step"]) if state else 0
        if self.epoch >= self.num_epochs:
            raise ConfigError(
                [
                    f"resume: the run in {self._run.run_dir} already completed {self.epoch} of "
                    f"{self.num_epochs} epochs; raise total_steps (now {self.cfg.total_steps}) "
                    "to continue it"
                ]
            )
        self._attached = False
        self._t_batch = 0.0
        self._t_collect = 0.0

    @property
    def resumed(self) -> bool:
        """Whether this run continues a checkpoint."""
        return self._run.resumed

    @property
    def guard(self) -> NonFiniteGuard:
        """The run's NaN guard (``nan_policy``)."""
        return self._run.guard

    @property
    def run_dir(self) -> Path | None:
        """The run directory (known on resume; created when the run is entered)."""
        return self._run.run_dir

    @property
    def logger(self) -> RunLogger | None:
        """The run's logger while the run is entered."""
        return self._run.logger

    @property
    def time_total(self) -> float:
        """Wall-clock seconds of the run so far, over all resumes."""
        return self._run.time_total

    # ------------------------------------------------------------------------------ setup
    def check_env(self, env: EnvBase) -> None:
        """Config checks that need the env: every epoch must finish episodes (ConfigError)."""
        check_consistency(self.cfg, episode_horizon=max_episode_steps(env))
        per_env = int(self.cfg.steps_per_epoch) // int(self.cfg.num_envs)
        horizon = max_episode_steps(env)
        if per_env % horizon:
            warnings.warn(
                f"steps_per_epoch / num_envs = {per_env} is not a multiple of the episode horizon "
                f"({horizon}): the last episode of every env is cut at the end of each epoch "
                "(bootstrapped, not counted as finished)",
                RuntimeWarning,
                stacklevel=2,
            )

    def attach(
        self,
        env: EnvBase,
        eval_env: EnvBase,
        *,
        policy: nn.Module,
        modules: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
    ) -> None:
        """Register what a checkpoint holds; on resume, load it (RNG states included).

        Call it after the collector is built (building one resets the env, which would move the
        observation statistics) and right before the loop (restoring the RNG must come last).
        """
        self._env, self._eval_env, self._policy = env, eval_env, policy
        self._modules = {"policy": policy, **modules}
        self._optimizers = dict(optimizers)
        if self._run.state is not None:
            try:
                restore_snapshot(
                    self._run.state,
                    modules=self._modules,
                    optimizers=self._optimizers,
                    obs_norm=observation_norm_of(env),
                )
            except ValueError as err:
                raise ConfigError([f"resume: {err}"]) from None
        self._attached = True

    def _take_snapshot(self) -> None:
        self._run.snapshot(
            self.step,
            recipe_state(
                epoch=self.epoch,
                modules=self._modules,
                optimizers=self._optimizers,
                obs_norm=observation_norm_of(self._env),
            ),
        )

    # ------------------------------------------------------------------------------ context
    def __enter__(self) -> TrainingRun:
        if not self._attached:
            raise RuntimeError("call TrainingRun.attach(...) before entering the run")
        self._run.on_close.append(self._plot)
        self._run.open(
            progress_total=int(self.cfg.total_steps),
            progress_desc=f"{self.recipe} {self.cfg.env_id}",
        ).__enter__()
        self._take_snapshot()  # on resume: the resumed checkpoint is this very state
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._run.__exit__(exc_type, exc, tb)

    def _plot(self) -> None:
        import pandas as pd

        from cmo_rl.plotting import plot_learning_curves

        csv = self.run_dir / "metrics.csv"
        try:
            frame = pd.read_csv(csv)
        except (OSError, ValueError):
            return
        metrics = [(m, label) for m, label in _PLOTTED if m in frame and frame[m].notna().any()]
        if not metrics:
            return
        try:
            plot_learning_curves(
                frame,
                self.run_dir / "plots" / "curves.png",
                metrics=metrics,
                cost_limit=float(self.cfg.cost_limit),
                title=f"{self.recipe} on {self.cfg.env_id}",
            )
        except Exception as err:  # a plot must never hide the run's own outcome
            warnings.warn(
                f"could not plot the learning curves: {err}", RuntimeWarning, stacklevel=2
            )

    # ------------------------------------------------------------------------------ loop
    def batches(self, collector: Collector) -> Iterator[TensorDictBase]:
        """Iterate over ``collector``, timing the collection; shuts the collector down at the end."""
        if self.logger is None:
            raise RuntimeError("iterate over run.batches(...) inside `with run:`")
        try:
            start = time.perf_counter()
            for batch in collector:
                self._t_batch = time.perf_counter()
                self._t_collect = self._t_batch - start
                expected = self.epoch + 1
                raise_if_signalled()  # a SIGTERM whose exception a finalizer swallowed
                yield batch
                if self.epoch != expected:
                    raise RuntimeError("call run.end_epoch(batch, metrics) once per batch")
                start = time.perf_counter()
        finally:
            collector.shutdown()

    def record_collection(self, seconds: float) -> None:
        """For loops that collect without :meth:`batches` (a population's shared collector):
        the epoch's batch took ``seconds`` and is ready now (``time/collect``; ``time/update``
        counts from here to :meth:`end_epoch`)."""
        self._t_collect = float(seconds)
        self._t_batch = time.perf_counter()

    def end_epoch(self, batch: TensorDictBase, metrics: Mapping[str, Any]) -> None:
        """Log the epoch's ``train/`` and ``time/`` metrics, evaluate, snapshot, checkpoint."""
        assert self.logger is not None
        cfg = self.cfg
        frames = int(batch.numel())
        self.step += frames
        t_update = time.perf_counter() - self._t_batch
        row = {k: _scalar(v) for k, v in metrics.items()}
        row["train/skipped_updates"] = self.guard.reset()
        row.update(
            {
                "time/collect": self._t_collect,
                "time/update": t_update,
                "time/sps": frames / max(self._t_collect + t_update, 1e-9),
                "time/total": self.time_total,
            }
        )
        self.logger.log_scalars(row, step=self.step)
        self.epoch += 1
        if self.epoch % int(cfg.eval_interval) == 0 or self.epoch == self.num_epochs:
            self.evaluate()
        self.logger.update(frames)
        self._take_snapshot()
        if self.epoch % int(cfg.checkpoint_interval) == 0 or self.epoch == self.num_epochs:
            self._run.save()

    def evaluate(self) -> dict[str, float]:
        """Deterministic evaluation episodes now; logs and returns the ``eval/`` metrics."""
        assert self.logger is not None
        start = time.perf_counter()
        sync_observation_norm(self._env, self._eval_env)
        stats = evaluate_policy(
            self._eval_env,
            self._policy,
            max_steps=max_episode_steps(self._eval_env),
            seed=int(self.cfg.seed),
            device=torch.device(self.cfg.device),
        )
        metrics = eval_metrics(stats, float(self.cfg.cost_limit))
        metrics["time/eval"] = time.perf_counter() - start
        self.logger.log_scalars(metrics, step=self.step)
        return metrics


def _scalar(value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric values must be scalars, got shape {tuple(value.shape)}")
        return float(value.detach().reshape(()).cpu())
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    raise ValueError(f"metric values must be numbers, got {type(value).__name__}")
