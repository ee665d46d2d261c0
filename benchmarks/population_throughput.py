"""Training throughput: the single-seed PPO-Lag recipe loop against a population of P learners.

Rows, per task (``--tasks``):

* ``(a) single``: ``train_lagrangian_ppo`` (what ``recipes/ppo_lagrangian.py`` runs) for one
  seed;
* ``(b) P=k``: ``train_population`` with ``seeds=[0..k-1]`` (``recipes/ppo_lagrangian.py
  seeds=[...]``), eager, and with ``--compile`` also compiled (``compile=true``).

Every row is a fresh Python process (so its peak RSS and CPU time are its own) running
``--epochs`` epochs of OmniSafe 0.5.0's PPOLag schedule per learner: ``--steps-per-epoch``
env steps (OmniSafe: 20,000; the minibatch steps per env step, ``update_iters *
steps_per_epoch / 64``, do not depend on it, so a shorter epoch measures the same rates),
``update_iters=40`` passes of 64-sample minibatches, ``[64, 64]`` tanh, observation
normalisation, ``num_envs=1``, one torch thread. Evaluation (one episode at the end) is
excluded from the rates; the first epoch's times include ``torch.compile``'s warm-up, which is
why ``--epochs`` defaults to 2 and the rates are taken from the last epoch only.

Columns: env steps of all learners per CPU-second (``time.process_time``: user + system of
the process) and per wall-second over the last whole epoch (from one ``end_epoch`` of the first
learner to the next: collection, update, every learner's logging and snapshot), that epoch's
collection and update seconds (the population's, for all learners), peak RSS, and the
speed-up in env steps per CPU-second over ``(a)``.

Run::

    python benchmarks/population_throughput.py                       # the docs table
    python benchmarks/population_throughput.py --sizes 1 4 --tasks SafetyPointGoal1-v0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("SafetyHalfCheetahVelocity-v1", "SafetyPointGoal1-v0")


def _child(args: argparse.Namespace) -> None:
    """One measured run; prints a JSON line."""
    import pandas as pd
    import torch
    from omegaconf import OmegaConf

    import cmo_rl  # noqa: F401  (import shim)
    from cmo_rl.population import train_population
    from cmo_rl.training.lagrangian_ppo import make_lagrange_multiplier, train_lagrangian_ppo

    torch.set_num_threads(1)
    cfg = OmegaConf.load(REPO / "recipes" / "config" / "ppo_lagrangian.yaml")
    for hydra_only in ("defaults", "hydra"):
        cfg.pop(hydra_only)
    steps = int(args.steps_per_epoch)
    cfg = OmegaConf.merge(
        cfg,
        {
            "env_id": args.task,
            "num_envs": 1,
            "steps_per_epoch": steps,
            "total_steps": steps * int(args.epochs),
            "update_iters": 40,
            "minibatch_size": 64,
            "hidden_layers": [64, 64],
            "normalize_observations": True,
            "eval_interval": 10**6,
            "eval_episodes": 1,
            "checkpoint_interval": 10**6,
            "progress": False,
            "torch_threads": 1,
            "run_root": tempfile.mkdtemp(),
            "compile": bool(args.compiled),
        },
    )
    from cmo_rl.training.run import TrainingRun

    stamps: list[tuple[object, float, float]] = []  # (run, wall, CPU) at each end_epoch call
    end_epoch = TrainingRun.end_epoch

    def stamped(self, batch, metrics):
        stamps.append((self, time.perf_counter(), time.process_time()))
        return end_epoch(self, batch, metrics)

    TrainingRun.end_epoch = stamped
    if args.size == 0:
        cfg.compile = False
        dirs = [train_lagrangian_ppo(cfg, recipe="a", make_multiplier=make_lagrange_multiplier)]
    else:
        cfg.seeds = list(range(args.size))
        dirs = train_population(cfg, recipe="b", make_multiplier=make_lagrange_multiplier)
    first = [(wall, cpu) for run, wall, cpu in stamps if run is stamps[0][0]]
    (wall0, cpu0), (wall1, cpu1) = first[-2], first[-1]  # one whole epoch, all learners
    frame = pd.read_csv(dirs[0] / "metrics.csv")
    last = frame.dropna(subset=["time/collect"]).iloc[-1]
    print(
        json.dumps(
            {
                "wall": wall1 - wall0,
                "cpu": cpu1 - cpu0,
                "collect": float(last["time/collect"]),
                "update": float(last["time/update"]),
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "learners": max(args.size, 1),
            }
        )
    )


def _measure(task: str, size: int, compiled: bool, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        f"--task={task}",
        f"--size={size}",
        f"--steps-per-epoch={args.steps_per_epoch}",
        f"--epochs={args.epochs}",
        *(["--compiled"] if compiled else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{command} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps-per-epoch", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also run compiled populations")
    parser.add_argument(
        "--compile-sizes", nargs="+", type=int, help="sizes to compile (default: --sizes)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    print(f"# {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} cpus")
    print(
        f"# per learner: {args.epochs} epochs of {args.steps_per_epoch} env steps, "
        "update_iters=40, minibatch 64, [64, 64], 1 env, 1 thread; rates over the last epoch"
    )
    print(
        "| task | run | env steps / CPU-s | env steps / wall-s | collect s | update s "
        "| peak RSS MB | speed-up (CPU) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for task in args.tasks:
        rows = [("(a) single", 0, False)]
        rows += [(f"(b) P={k} eager", k, False) for k in args.sizes]
        if args.compile:
            rows += [(f"(b) P={k} compiled", k, True) for k in args.compile_sizes or args.sizes]
        base = None
        for label, size, compiled in rows:
            r = _measure(task, size, compiled, args)
            steps = args.steps_per_epoch * r["learners"]
            per_cpu, per_wall = steps / r["cpu"], steps / r["wall"]
            base = per_cpu if base is None else base
            print(
                f"| {task} | {label} | {per_cpu:.0f} | {per_wall:.0f} | {r['collect']:.1f} "
                f"| {r['update']:.1f} | {r['rss_mb']:.0f} | {per_cpu / base:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
