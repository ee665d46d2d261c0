"""One ES generation of ``cmo meta_algorithm=es``: wall and CPU seconds at population 8 and 16.

A generation trains ``P = 2 * es.pairs * es.seeds`` PPO-Lagrangian learners per task as one
population (:mod:`cmo_rl.meta_es`), then takes one ES step. Each row is a fresh ``cmo`` process
running **one generation** on one task with ``P`` members (``es.pairs = P / 2``, one seed),
``meta_test.enabled=false``, timed whole (process start, imports, env construction, the
population's training, the ES step, checkpoint and ``rule.pt``).

The members' schedule is ``es.inner``'s default (10 envs, 10,000-step epochs, 10 PPO passes of
64-sample minibatches, ``[64, 64]``) shortened to ``--steps`` env steps per member, so the rows
finish in minutes; the env-step rate of the population (``P * steps / wall``) then gives the
projected time of a default generation (200,000 steps per member), since a generation's cost is
linear in its env steps (the per-process start-up, a few seconds, is included in the rate and
so slightly overstated in the projection). ``--compile`` adds rows with the population's
minibatch step and policy compiled (``+es.inner.compile=true``).

Columns: P, compiled, env steps (all members), wall s, CPU s (user + system of the process and
its children), env steps per wall-second and per CPU-second, peak RSS, projected wall minutes
of a default generation.

Run::

    python benchmarks/es_generation.py                              # the docs table (P = 8, 16)
    python benchmarks/es_generation.py --sizes 8 --task MockCMDP-v0 --steps 2000   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STEPS_PER_MEMBER = 200_000  # es.inner.total_steps in cmo_rl/conf/default.yaml


def _one(task: str, size: int, steps: int, compiled: bool, target: str = "dual") -> dict:
    steps_per_epoch = min(10_000, steps)
    with tempfile.TemporaryDirectory() as root:
        cmd = [
            sys.executable, "-m", "cmo_rl.cli", "meta_algorithm=es", f"env_ids=[{task}]",
            "eval_env_ids=[]", "es.generations=1", f"es.pairs={size // 2}", "es.seeds=1",
            f"es.inner.total_steps={steps}", f"es.inner.steps_per_epoch={steps_per_epoch}",
            f"es.target={target}", "meta_test.enabled=false", "progress=false",
            f"run_root={root}",
        ]  # fmt: skip
        if task == "MockCMDP-v0":
            cmd.append("episode_length=100")
        if compiled:
            cmd.append("+es.inner.compile=true")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    env_steps = size * (steps // steps_per_epoch) * steps_per_epoch
    return {
        "P": size,
        "target": target,
        "compiled": compiled,
        "env_steps": env_steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "sps_wall": env_steps / wall,
        "sps_cpu": env_steps / cpu,
        "peak_rss_mb": after.ru_maxrss / 1024,
        "default_generation_min": size * DEFAULT_STEPS_PER_MEMBER / (env_steps / wall) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="SafetyPointGoal1-v0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per member")
    parser.add_argument("--compile", action="store_true", help="also the compiled rows")
    parser.add_argument(
        "--targets", nargs="+", default=["dual"], choices=["dual", "primal"],
        help="es.target of the rows (primal: the actors' optimizer is the learned rule)",
    )  # fmt: skip
    args = parser.parse_args()
    if any(size < 2 or size % 2 for size in args.sizes):
        raise SystemExit("--sizes: each P must be even (antithetic pairs) and >= 2")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.task}")
    print(f"# one generation, {args.steps} env steps per member; projection: 200k per member")
    print("| P | es.target | compiled | env steps | wall s | CPU s | steps/wall-s | steps/CPU-s "
          "| peak RSS MB | default generation, min |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for target in args.targets:
            for compiled in (False, True) if args.compile else (False,):
                r = _one(args.task, size, args.steps, compiled, target)
                _print_row(r)


def _print_row(r: dict) -> None:
    print(
        f"| {r['P']} | {r['target']} | {'yes' if r['compiled'] else 'no'} | {r['env_steps']:,} | "
        f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['sps_wall']:.0f} | "
        f"{r['sps_cpu']:.0f} | {r['peak_rss_mb']:.0f} | "
        f"{r['default_generation_min']:.1f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
