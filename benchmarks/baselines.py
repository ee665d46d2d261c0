"""Baselines benchmark: PPO-Lagrangian, PID-Lagrangian and CPO on SafetyHalfCheetahVelocity-v1.

Runs the three recipes (``recipes/*.py``, their OmniSafe defaults: cost limit 25, [64, 64] tanh
nets, 20,000 steps per epoch, ...) with the same budget and seed, ``--parallel`` at a time, each
in its own process (one torch thread each), then summarises every run's ``metrics.csv``:

* ``eval``: the final deterministic evaluation (``--eval-episodes`` episodes, after the last
  epoch): mean episode return and cost;
* ``train``: the mean of ``train/episode_return`` / ``train/episode_cost`` over the last
  ``--last-epochs`` epochs (stochastic policy, every finished training episode);

and prints a markdown table (also written, with the commands, to
``<run-root>/baselines_summary.json``). The run recorded in ``docs/results.md``::

    python benchmarks/baselines.py --steps 300000 --parallel 3

Any other recipe option can be passed through with ``--set key=value`` (repeatable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "SafetyHalfCheetahVelocity-v1"
METHODS = {  # recipe file -> (run-directory name, label)
    "ppo_lagrangian": ("ppo_lag", "PPO-Lag"),
    "pid_lagrangian": ("pid_lag", "PID-Lag"),
    "cpo": ("cpo", "CPO"),
}
#: OmniSafe v0.5.0's published on-policy benchmark (10M steps, cost limit 25, mean of 5 seeds):
#: task -> recipe -> (return, cost) of the final policy (PPOLag, CPPOPID, CPO).
OMNISAFE_10M = {
    "SafetyPointGoal1-v0": {
        "ppo_lagrangian": (12.96, 25.80),
        "pid_lagrangian": (8.43, 25.74),
        "cpo": (20.46, 28.84),
    },
    "SafetyCarGoal1-v0": {
        "ppo_lagrangian": (13.27, 21.72),
        "pid_lagrangian": (10.60, 30.66),
        "cpo": (25.52, 43.32),
    },
    "SafetyPointButton1-v0": {
        "ppo_lagrangian": (4.60, 20.8),
        "pid_lagrangian": (1.18, 29.42),
        "cpo": (4.04, 40.00),
    },
    "SafetyHalfCheetahVelocity-v1": {
        "ppo_lagrangian": (2946, 3.4),
        "pid_lagrangian": (2838, 8.1),
        "cpo": (2786, 4.7),
    },
    "SafetyHopperVelocity-v1": {
        "ppo_lagrangian": (961.92, 13.96),
        "pid_lagrangian": (1713.29, 8.96),
        "cpo": (1713.71, 13.40),
    },
    "SafetyAntVelocity-v1": {
        "ppo_lagrangian": (3261.87, 12.05),
        "pid_lagrangian": (3213.36, 14.30),
        "cpo": (3098.54, 14.12),
    },
}


def recipe_command(name: str, args: argparse.Namespace, run_root: Path) -> list[str]:
    """The command line of one recipe run."""
    overrides = [
        f"env_id={args.env_id}",
        f"total_steps={args.steps}",
        f"steps_per_epoch={args.steps_per_epoch}",
        f"num_envs={args.num_envs}",
        f"eval_interval={args.eval_interval}",
        f"eval_episodes={args.eval_episodes}",
        f"seed={args.seed}",
        f"device={args.device}",
        f"run_root={run_root}",
        "progress=false",
        *args.set,
    ]
    return [sys.executable, str(REPO / "recipes" / f"{name}.py"), *overrides]


def summarise(run_dir: Path, last_epochs: int) -> dict[str, float]:
    """Final eval and last-epochs training means of one run's ``metrics.csv``."""
    df = pd.read_csv(run_dir / "metrics.csv")
    evals = df.dropna(subset=["eval/episode_return"])
    tail = df.dropna(subset=["train/episode_return"]).tail(last_epochs)
    final = evals.iloc[-1]
    return {
        "steps": int(df["step"].iloc[-1]),
        "eval_return": float(final["eval/episode_return"]),
        "eval_cost": float(final["eval/episode_cost"]),
        "eval_episodes": int(final["eval/num_episodes"]),
        "train_return": float(tail["train/episode_return"].mean()),
        "train_cost": float(tail["train/episode_cost"].mean()),
        "train_epochs": len(tail),
        "wall_s": float(df["time/total"].dropna().iloc[-1]),
    }


def markdown_table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """One row per method, beside OmniSafe's 10M-step numbers."""
    lines = [
        f"| method | eval return | eval cost | train return (last {args.last_epochs} ep.) "
        "| train cost | wall time | OmniSafe 10M return / cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    reference = OMNISAFE_10M.get(args.env_id, {})
    for name, row in rows.items():
        ref = reference.get(name)
        ref_text = f"{ref[0]:g} / {ref[1]:g}" if ref else "not published"
        lines.append(
            f"| {METHODS[name][1]} | {row['eval_return']:.1f} | {row['eval_cost']:.1f} "
            f"| {row['train_return']:.1f} | {row['train_cost']:.1f} "
            f"| {row['wall_s'] / 60:.0f} min | {ref_text} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--env-id", default=ENV_ID)
    parser.add_argument("--steps", type=int, default=300_000, help="env steps per method")
    parser.add_argument("--steps-per-epoch", type=int, default=20_000)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--eval-interval", type=int, default=5, help="epochs between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--last-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", type=int, default=1, help="recipes run at the same time")
    parser.add_argument("--run-root", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--set", action="append", default=[], help="extra recipe override")
    args = parser.parse_args(argv)

    run_root = args.run_root / time.strftime("%Y%m%d-%H%M%S")
    (run_root / "logs").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    commands = {name: recipe_command(name, args, run_root) for name in args.methods}
    pending, running, failed = list(args.methods), {}, []
    start = time.monotonic()
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = open(run_root / "logs" / f"{name}.log", "w")  # noqa: SIM115 (closed below)
            print(f"[{time.monotonic() - start:7.0f}s] start {name}: {' '.join(commands[name])}")
            running[name] = (subprocess.Popen(commands[name], cwd=REPO, env=env, stdout=log,
                                              stderr=subprocess.STDOUT), log)  # fmt: skip
        time.sleep(5)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                print(f"[{time.monotonic() - start:7.0f}s] {status} {name}", flush=True)
                if proc.returncode:
                    failed.append(name)

    rows = {}
    for name in args.methods:
        if name in failed:
            continue
        runs = sorted((run_root / METHODS[name][0] / args.env_id).iterdir())
        rows[name] = summarise(runs[-1], args.last_epochs)
        rows[name]["run_dir"] = str(runs[-1])
    table = markdown_table(rows, args)
    summary = {
        "env_id": args.env_id,
        "steps_per_method": args.steps,
        "args": {k: str(v) for k, v in vars(args).items()},
        "commands": {k: " ".join(v) for k, v in commands.items()},
        "results": rows,
        "failed": failed,
        "table": table,
    }
    (run_root / "baselines_summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"summary: {run_root / 'baselines_summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
