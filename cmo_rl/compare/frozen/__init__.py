"""A frozen meta-trained optimizer trains one fresh policy: the "recipe" of meta-LSTM / meta-PID.

    python -m cmo_rl.compare.frozen checkpoint=runs/meta_lstm/SafetyPointGoal1-v0/20250101-120000 \\
        env_id=SafetyPointButton1-v0 seed=0 total_steps=40000 num_envs=4 episode_length=1000

``checkpoint`` is a ``cmo`` checkpoint file, or a ``cmo`` run directory (its newest checkpoint).
The meta-optimizer is rebuilt from the checkpoint's config and weights and never changes here
(no meta-gradient). The policy, critics and inner round are those of the meta-test
(:class:`cmo_rl.meta.RolloutTaskSampler` with the checkpoint's ``gamma``, ``gae_lambda``,
``critic_lr``, ``critic_steps``; no observation normalisation, as in meta-training), with this
run's ``hidden_layers``, episode length ``T = episode_length`` and ``B = num_envs`` envs; the
rounds are :func:`cmo_rl.meta.unroll` without a meta-graph (``differentiable=False``), logged and
evaluated after each update. For ``k = 0 .. total_steps // (B T) - 1``:

.. math::

    \\text{data}_k \\sim \\pi_{\\theta_k}\\ (B \\text{ episodes of } T \\text{ steps}), \\qquad
    (\\theta_{k+1}, \\lambda_{k+1}, s_{k+1}) = \\mathrm{MetaOpt}_\\phi(\\theta_k, g_R, g_C,
        \\lambda_k, e_k, s_k), \\qquad e_k = (J_C - d) / s

with ``d = cost_limit`` and ``s`` the checkpoint's ``violation_scale`` times
``cost_limit / (its cost_limit)`` (the relative violation it was trained on; default ``s = d``).

The run directory (``<run_root>/<run_name>/<env_id>/<timestamp>/``) holds what a baseline
recipe's holds, with the names of ``docs/metrics.md`` and ``step`` in env steps:
``config.yaml``, ``metrics.csv`` (``train/episode_return``, ``train/episode_cost`` of round
``k``'s episodes logged after update ``k``, ``train/lambda``, ``train/violation``, ``time/*``;
``eval/episode_return``, ``eval/episode_cost`` of deterministic episodes every
``eval_interval`` updates and after the last), ``checkpoints/step_<final>.pt`` (the final
policy, multiplier and meta-state) and ``plots/curves.png``. A run is not resumable: an
interrupted one is rerun (it keeps no optimizer state worth restoring beyond what it logs).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cmo_rl.config import ConfigError, Field, device_check, env_id_check
from cmo_rl.envs.factory import MOCK_ENV_ID
from cmo_rl.lifecycle import Run, run_cli
from cmo_rl.lifecycle.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from cmo_rl.lifecycle.signals import raise_if_signalled

__all__ = ["DEFAULTS", "SCHEMA", "load_meta_optimizer", "main", "train"]


def _layers(values: list) -> bool:
    if not values or any(v < 1 for v in values):
        raise ValueError("needs at least one layer width, each >= 1")
    return True


#: Keys and defaults; every key is checked (:data:`SCHEMA`) before any work.
DEFAULTS: dict[str, Any] = {
    "checkpoint": None,
    "env_id": "SafetyPointGoal1-v0",
    "seed": 0,
    "total_steps": 40000,
    "num_envs": 4,
    "episode_length": 1000,
    "cost_limit": 25.0,
    "hidden_layers": [64, 64],
    "eval_interval": 5,
    "eval_episodes": 5,
    "run_root": "runs",
    "run_name": "meta_frozen",
    "progress": True,
    "device": "cpu",
    "torch_threads": 1,
}

SCHEMA: dict[str, Field] = {
    "checkpoint": Field(str),
    "env_id": Field(str, check=env_id_check(MOCK_ENV_ID)),
    "seed": Field(int, ge=0),
    "total_steps": Field(int, ge=1),
    "num_envs": Field(int, ge=1),
    "episode_length": Field(int, ge=1),
    "cost_limit": Field(float, ge=0),
    "hidden_layers": Field(list, items=int, check=_layers),
    "eval_interval": Field(int, ge=1),
    "eval_episodes": Field(int, ge=1),
    "run_root": Field(str),
    "run_name": Field(str),
    "progress": Field(bool),
    "device": Field(str, check=device_check),
    "torch_threads": Field(int, ge=0),
}


def load_meta_optimizer(
    checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[Any, dict[str, Any], Path]:
    """The meta-optimizer of a ``cmo`` checkpoint (file or run directory), its meta-training
    config and the checkpoint file. Raises :class:`~cmo_rl.config.ConfigError` naming the file
    for anything unusable.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.lifecycle.checkpoint import checkpoint_path, save_checkpoint
        >>> from cmo_rl.meta import make_meta_optimizer
        >>> with tempfile.TemporaryDirectory() as d:
        ...     opt = make_meta_optimizer("pid", init_KP=0.5)
        ...     cfg = {"meta_optimizer_type": "pid", "init_KP": 0.1, "cost_limit": 5.0}
        ...     _ = save_checkpoint(checkpoint_path(d, 3), {"meta_optimizer": opt.state_dict(),
        ...                                                 "config": cfg})
        ...     loaded, meta_cfg, path = load_meta_optimizer(d)
        ...     round(float(loaded.gains()["KP"]), 6), meta_cfg["cost_limit"], path.name
        (0.5, 5.0, 'step_000000000003.pt')
    """
    from cmo_rl.meta import make_meta_optimizer

    path = Path(checkpoint)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ConfigError([f"checkpoint: no valid checkpoint under {path / 'checkpoints'}"])
        path = found
    if not path.is_file():
        raise ConfigError([f"checkpoint: {path} is neither a checkpoint file nor a run directory"])
    try:
        state = load_checkpoint(path, map_location=device)
    except CheckpointError as err:
        raise ConfigError([f"checkpoint: {err}"]) from None
    meta_cfg = state.get("config")
    if not isinstance(meta_cfg, Mapping) or "meta_optimizer" not in state:
        raise ConfigError(
            [f"checkpoint: {path} is not a cmo checkpoint (no meta_optimizer/config)"]
        )
    kind = meta_cfg.get("meta_optimizer_type")
    options = {k: v for k, v in meta_cfg.items() if k not in ("meta_optimizer_type", "device")}
    try:
        optimizer = make_meta_optimizer(str(kind), **options, device=device)
        optimizer.load_state_dict(state["meta_optimizer"])
    except (ValueError, RuntimeError, TypeError) as err:
        raise ConfigError(
            [f"checkpoint: {path} does not rebuild a meta-optimizer: {err}"]
        ) from None
    optimizer.requires_grad_(False)
    return optimizer, dict(meta_cfg), path


def _violation_scale(meta_cfg: Mapping[str, Any], cost_limit: float) -> float:
    from cmo_rl.meta import default_violation_scale

    scale = meta_cfg.get("violation_scale")
    trained_limit = float(meta_cfg.get("cost_limit", cost_limit) or 0.0)
    if scale is None or trained_limit <= 0:
        return default_violation_scale(cost_limit)
    return float(scale) * (cost_limit / trained_limit if cost_limit > 0 else 1.0)


def train(cfg: Mapping[str, Any]) -> Path:
    """Run one frozen-optimizer training with ``cfg`` (:data:`SCHEMA` keys, validated);
    returns the run directory.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.lifecycle.checkpoint import save_checkpoint
        >>> from cmo_rl.meta import make_meta_optimizer
        >>> with tempfile.TemporaryDirectory() as d:
        ...     opt = make_meta_optimizer("pid", init_etaR=0.05)
        ...     ckpt = save_checkpoint(f"{d}/meta.pt", {"meta_optimizer": opt.state_dict(),
        ...                            "config": {"meta_optimizer_type": "pid", "init_etaR": 0.05}})
        ...     cfg = {**DEFAULTS, "checkpoint": str(ckpt), "env_id": "MockCMDP-v0", "num_envs": 2,
        ...            "episode_length": 5, "total_steps": 30, "cost_limit": 1.0,
        ...            "hidden_layers": [4], "eval_interval": 2, "eval_episodes": 2,
        ...            "run_root": d, "progress": False}
        ...     run = train(cfg)  # doctest: +ELLIPSIS
        ...     import pandas as pd
        ...     df = pd.read_csv(run / "metrics.csv")
        ...     df["step"].tolist(), df["eval/episode_return"].notna().tolist()
        run directory: ...meta_frozen/MockCMDP-v0/...
        finished: ...meta_frozen/MockCMDP-v0/...
        ([10, 20, 30], [False, True, True])
    """
    from cmo_rl.envs.factory import make_env
    from cmo_rl.meta import RolloutTaskSampler, TaskSettings, unroll

    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    device = torch.device(cfg["device"])
    if int(cfg["torch_threads"]):
        torch.set_num_threads(int(cfg["torch_threads"]))
    optimizer, meta_cfg, ckpt = load_meta_optimizer(cfg["checkpoint"], device)
    episode_length, num_envs = int(cfg["episode_length"]), int(cfg["num_envs"])
    steps_per_round = episode_length * num_envs
    rounds = int(cfg["total_steps"]) // steps_per_round
    if rounds < 1:
        raise ConfigError(
            [
                f"total_steps: got {cfg['total_steps']}, less than one round of num_envs x "
                f"episode_length = {steps_per_round} env steps"
            ]
        )
    cost_limit, seed = float(cfg["cost_limit"]), int(cfg["seed"])
    scale = _violation_scale(meta_cfg, cost_limit)
    factory = functools.partial(make_env, cfg["env_id"], max_episode_steps=episode_length)
    factory.__name__ = cfg["env_id"]  # type: ignore[attr-defined]
    settings = TaskSettings.from_config(
        meta_cfg,  # gamma, gae_lambda, critic_lr, critic_steps of the meta-training
        episode_length=episode_length,
        vector_envs_per_task=num_envs,
        hidden_layers=cfg["hidden_layers"],
        device=device,
    )
    sampler = RolloutTaskSampler([factory], settings)
    torch.manual_seed(seed)
    problem = sampler(seed, env_index=0)
    interval, episodes = int(cfg["eval_interval"]), int(cfg["eval_episodes"])
    run = Run(
        {**cfg, "meta_checkpoint": str(ckpt), "violation_scale": scale},
        program=cfg["run_name"],
        task=lambda c: c["env_id"],
        resumable=(),  # not resumable: an interrupted run is rerun
    )
    run.on_close.append(lambda: _plot(run.run_dir, cost_limit, cfg))
    try:
        with run.open(progress_total=rounds * steps_per_round):

            def on_round(k: int, record: dict[str, float], params: Any) -> None:
                raise_if_signalled()  # a SIGTERM a finalizer swallowed
                step = (k + 1) * steps_per_round
                seconds = record["time/round_data"] + record["time/inner_update"]
                row = {
                    "train/episode_return": float(record["return"]),
                    "train/episode_cost": float(record["cost"]),
                    "train/episode_length": float(episode_length),
                    "train/num_episodes": float(num_envs),
                    "train/lambda": record["lambda"],
                    "train/violation": float(record["cost"]) - cost_limit,
                    "time/collect": record["time/round_data"],
                    "time/update": record["time/inner_update"],
                    "time/sps": steps_per_round / max(seconds, 1e-9),
                    "time/total": run.time_total,
                }
                run.logger.log_scalars(row, step=step)
                if (k + 1) % interval == 0 or k + 1 == rounds:
                    t0 = time.perf_counter()
                    evaluated = problem.evaluate(params, episodes)
                    evaluated["eval/num_episodes"] = float(
                        math.ceil(episodes / num_envs) * num_envs
                    )
                    evaluated["time/eval"] = time.perf_counter() - t0
                    run.logger.log_scalars(evaluated, step=step)
                run.logger.update(steps_per_round)

            result = unroll(
                optimizer,
                problem,
                inner_rollouts=rounds,
                unroll_steps=0,
                cost_limit=cost_limit,
                violation_scale=scale,
                differentiable=False,
                callback=on_round,
            )
            final = {  # the final policy, multiplier and meta-state (saved when the run ends)
                "epoch": rounds,
                "policy": result.params.detach().flatten_keys(".").to_dict(),
                "lagrange_multiplier": result.lagrange_multiplier.detach(),
                "meta_state": result.state.detach().flatten_keys(".").to_dict(),
            }
            run.snapshot(rounds * steps_per_round, final)
    finally:
        sampler.close()
    return run.run_dir


def _plot(run_dir: Path, cost_limit: float, cfg: Mapping[str, Any]) -> None:
    from cmo_rl.plotting import plot_learning_curves

    plot_learning_curves(
        run_dir / "metrics.csv",
        run_dir / "plots" / "curves.png",
        metrics=[
            ("train/episode_return", "Return (train)"),
            ("train/episode_cost", "Cost (train)"),
            ("train/lambda", "Multiplier"),
        ],
        cost_limit=cost_limit,
        title=f"{cfg['run_name']} on {cfg['env_id']}",
    )


@run_cli(schema=SCHEMA)
def _main(cfg: DictConfig) -> None:
    train(cfg)  # prints its run directory when it starts and ends


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``key=value`` arguments over :data:`DEFAULTS` (``checkpoint`` required).

    Examples:
        >>> try:
        ...     main(["seed=-1", "colour=red", "checkpoint=x.pt"])
        ... except SystemExit as err:
        ...     print("exit code", err.code)
        exit code 2
    """
    args = list(sys.argv[1:] if argv is None else argv)
    bad = [a for a in args if "=" not in a]
    if bad:
        sys.stderr.write(f"invalid config (arguments must be key=value): {bad}\n")
        raise SystemExit(2)
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(args))
    _main(cfg)


if __name__ == "__main__":
    main()
