"""The life of one training run: config and resume, logging, evaluation, checkpoints, shutdown.

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

Metric names and the run layout are those of ``docs/metrics.md``; ``step`` is env steps.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from cmo_rl.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from cmo_rl.config import ConfigError
from cmo_rl.envs.factory import max_episode_steps, observation_norm_of
from cmo_rl.logging import RunLogger, make_run_dir
from cmo_rl.signals import graceful_shutdown
from cmo_rl.training.guard import NonFiniteGuard
from cmo_rl.training.rollout_eval import eval_metrics, evaluate_policy, sync_observation_norm
from cmo_rl.training.run_state import (
    hydra_override_keys,
    resolve_resume_config,
    restore_snapshot,
    take_snapshot,
)
from cmo_rl.training.schema import check_consistency

__all__ = ["TrainingRun"]

_PLOTTED = (
    ("train/episode_return", "Return (train)"),
    ("train/episode_cost", "Cost (train)"),
    ("eval/episode_return", "Return (eval)"),
    ("eval/episode_cost", "Cost (eval)"),
    ("train/lambda", "Multiplier"),
)


class TrainingRun:
    """Config/resume resolution, run directory, logger, evaluation and checkpoints of a recipe.

    Args:
        cfg: the recipe's config (validated against its schema already).
        recipe: run-directory name of the recipe (``"ppo_lag"``, ``"pid_lag"``, ``"cpo"``).

    Attributes:
        cfg: the effective config (on resume: the stored config plus allowed changes).
        num_epochs: ``total_steps // steps_per_epoch``.
        epoch: epochs completed (0, or the resumed checkpoint's).
        step: env steps so far.
        guard: the run's :class:`~cmo_rl.training.guard.NonFiniteGuard` (``nan_policy``).
        run_dir: the run directory (set when the run is entered).
    """

    def __init__(self, cfg: DictConfig | Mapping[str, Any], recipe: str) -> None:
        requested = (
            OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        )
        self.recipe = recipe
        self._state: dict[str, Any] | None = None
        self._resume_dir: Path | None = None
        if requested.get("resume"):
            self._resume_dir, self._state = self._load_resume(requested)
            requested = resolve_resume_config(
                requested, self._state["config"], hydra_override_keys()
            )
            requested["resume"] = str(self._resume_dir)
        check_consistency(requested)
        self.cfg = OmegaConf.create(requested)
        self.num_epochs = int(requested["total_steps"]) // int(requested["steps_per_epoch"])
        self.epoch = int(self._state["epoch"]) if self._state else 0
        self.step = int(self._state["step"]) if self._state else 0
        self._time_base = float(self._state["time_total"]) if self._state else 0.0
        if self.epoch >= self.num_epochs:
            raise ConfigError(
                [
                    f"resume: the run in {self._resume_dir} already completed {self.epoch} of "
                    f"{self.num_epochs} epochs; raise total_steps (now {requested['total_steps']}) "
                    "to continue it"
                ]
            )
        self.guard = NonFiniteGuard(str(requested["nan_policy"]))
        self.run_dir: Path | None = None
        self.logger: RunLogger | None = None
        self._attached = False
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_saved = False
        self._stack: ExitStack | None = None
        self._t0 = 0.0
        self._t_batch = 0.0
        self._t_collect = 0.0

    # ------------------------------------------------------------------------------ resume
    def _load_resume(self, requested: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
        try:
            run_dir = make_run_dir(
                requested["run_root"], self.recipe, requested["env_id"], resume=requested["resume"]
            )
        except ValueError as err:
            raise ConfigError([f"resume: {err}"]) from None
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError([f"resume: no valid checkpoint under {run_dir / 'checkpoints'}"])
        try:
            state = load_checkpoint(ckpt, map_location="cpu")
        except CheckpointError as err:
            raise ConfigError([f"resume: {err}"]) from None
        if "config" not in state or "epoch" not in state:
            raise ConfigError([f"resume: {ckpt} is not a checkpoint of a baseline recipe"])
        return run_dir, state

    @property
    def resumed(self) -> bool:
        """Whether this run continues a checkpoint."""
        return self._state is not None

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
        if self._state is not None:
            try:
                restore_snapshot(
                    self._state,
                    modules=self._modules,
                    optimizers=self._optimizers,
                    obs_norm=observation_norm_of(env),
                )
            except ValueError as err:
                raise ConfigError([f"resume: {err}"]) from None
        self._attached = True

    def _take_snapshot(self) -> None:
        self._snapshot = take_snapshot(
            step=self.step,
            epoch=self.epoch,
            time_total=self.time_total,
            modules=self._modules,
            optimizers=self._optimizers,
            obs_norm=observation_norm_of(self._env),
            config=OmegaConf.to_container(self.cfg, resolve=True),
        )
        self._snapshot_saved = False

    def _save_snapshot(self) -> None:
        if self._snapshot is None or self._snapshot_saved or self.run_dir is None:
            return
        save_checkpoint(checkpoint_path(self.run_dir, self._snapshot["step"]), self._snapshot)
        prune_checkpoints(self.run_dir, int(self.cfg.keep_checkpoints))
        self._snapshot_saved = True

    @property
    def time_total(self) -> float:
        """Wall-clock seconds of the run so far, over all resumes."""
        return self._time_base + (time.perf_counter() - self._t0 if self._t0 else 0.0)

    # ------------------------------------------------------------------------------ context
    def __enter__(self) -> TrainingRun:
        if not self._attached:
            raise RuntimeError("call TrainingRun.attach(...) before entering the run")
        cfg = self.cfg
        stack = ExitStack()
        try:
            stack.enter_context(graceful_shutdown())
            if self._resume_dir is not None:
                self.run_dir = self._resume_dir
            else:
                self.run_dir = make_run_dir(cfg.run_root, self.recipe, cfg.env_id)
            self.logger = stack.enter_context(
                RunLogger(
                    self.run_dir,
                    progress_total=int(cfg.total_steps) if cfg.progress else None,
                    resume_step=self.step if self.resumed else None,
                    progress_desc=f"{self.recipe} {cfg.env_id}",
                )
            )
            self.logger.log_hparams(cfg)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self._t0 = time.perf_counter()
        self._take_snapshot()
        self._snapshot_saved = self.resumed  # the resumed checkpoint is this very state
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._stack is not None
        try:
            self._save_snapshot()  # the last completed epoch, never a half-done update
        finally:
            self._stack.close()
            self._stack = None
            self._plot()

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
                yield batch
                if self.epoch != expected:
                    raise RuntimeError("call run.end_epoch(batch, metrics) once per batch")
                start = time.perf_counter()
        finally:
            collector.shutdown()

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
            self._save_snapshot()

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
