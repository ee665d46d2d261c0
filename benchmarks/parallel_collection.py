"""Env steps per second, policy in the loop: one process vs ``collector.backend=multi_sync``.

Both variants collect the same ``[num_envs, T]`` batches (same envs, same actor, observation
normalisation on) through :func:`cmo_rl.training.collection.make_collector`; the multi-process
one splits the envs over ``--workers`` processes. The two collectors live side by side and are
timed in alternation, batch by batch (``--rounds`` pairs after one warm-up batch each), so a
shared, loaded machine slows both alike; worker start-up is not timed.

Besides wall-clock steps/s, the CPU time of every process involved (the training process and,
on Linux, its worker processes, read from ``/proc``) gives *steps per CPU-second* and the cores
the variant actually got. On a machine shared with other jobs the kernel may cap the cores a
session gets (Linux autogroup scheduling shares CPU per session, not per process), so the wall
ratio can hide the speed-up that ``workers x`` (worker steps per CPU-second / one-process steps
per CPU-second) predicts for idle cores.

    python benchmarks/parallel_collection.py --env SafetyPointGoal1-v0 --envs 8 --steps 100
    python benchmarks/parallel_collection.py --env SafetyHalfCheetahVelocity-v1 --envs 16 --steps 200

``--meta TASKS`` times ``MetaTrainer`` meta-iterations (PID meta-optimizer, ``TASKS`` tasks of
``--envs`` envs x ``--steps`` steps per round, 2 inner rounds) with the tasks in this process
(``TaskPool(num_workers=0)``) against ``--workers`` task workers (``TaskPool``), alternating.

    python benchmarks/parallel_collection.py --meta 4 --env SafetyPointGoal1-v0 --envs 2 --steps 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import cmo_rl  # noqa: F401  (safety-gymnasium import shim)
from cmo_rl.envs.factory import make_env
from cmo_rl.modules import make_actor
from cmo_rl.training.collection import make_collector
from cmo_rl.training.parallel import worker_spec


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's live children (Linux; 0 elsewhere)."""
    total, tick, me = 0.0, os.sysconf("SC_CLK_TCK"), str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--envs", type=int, default=8, help="sub-envs in all (num_envs)")
    parser.add_argument("--steps", type=int, default=100, help="steps per sub-env per batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--meta", type=int, default=0, help="time meta-iterations of N tasks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.meta:
        return meta(args)
    cfg = {
        "env_id": args.env,
        "num_envs": args.envs,
        "episode_length": None,
        "normalize_observations": True,
        "collector": {
            "backend": "multi_sync",
            "num_workers": args.workers,
            "envs_per_worker": None,
            "ray_address": None,
        },
    }
    frames = args.envs * args.steps
    collectors, owners = {}, []
    for name, workers in (("1 process", None), (f"{args.workers} workers", worker_spec(cfg))):
        env = make_env(args.env, args.envs, normalize_observations=True)
        actor = make_actor(env, hidden_layers=(64, 64))
        collector = make_collector(
            env, actor, steps_per_epoch=frames, num_epochs=args.rounds + 1, seed=0, workers=workers
        )
        owners.append(collector)
        collectors[name] = iter(collector)
    for it in collectors.values():  # warm-up: worker start-up, first resets
        next(it)
    wall: dict[str, list[float]] = {name: [] for name in collectors}
    cpu: dict[str, list[float]] = {name: [] for name in collectors}
    for _ in range(args.rounds):
        for name, it in collectors.items():
            start, own, kids = time.perf_counter(), time.process_time(), _children_cpu()
            batch = next(it)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - own + _children_cpu() - kids)
            assert batch.numel() == frames
    print(
        f"{args.env}: {args.envs} envs x {args.steps} steps per batch, {args.rounds} batches "
        f"each, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    base = statistics.median(wall["1 process"])
    base_eff = frames / statistics.median(cpu["1 process"])
    for name in collectors:
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"  {name:>10}: {frames / med:7.0f} steps/s (x{base / med:.2f}), "
            f"{frames / med_cpu:6.0f} steps per CPU-s (x{frames / med_cpu / base_eff:.2f}), "
            f"{med_cpu / med:.2f} cores used"
        )
    for collector in owners:
        collector.shutdown()


def meta(args: argparse.Namespace) -> None:
    from cmo_rl.meta import MetaTrainer, RolloutTaskSampler, TaskPool, make_meta_optimizer

    def make_trainer() -> MetaTrainer:
        sampler = RolloutTaskSampler(
            [args.env],
            episode_length=args.steps,
            vector_envs_per_task=args.envs,
            hidden_layers=(64, 64),
            gamma=0.99,
        )
        return MetaTrainer(
            make_meta_optimizer("pid"),
            sampler,
            inner_rollouts=2,
            unroll_steps=2,
            meta_batch_size=args.meta,
            cost_limit=25.0,
            mu=1.0,
            meta_lr=1e-3,
            seed=0,
        )

    trainers = {}
    for name, workers in (("in process", 0), (f"{args.workers} workers", args.workers)):
        trainer = make_trainer()
        trainer.task_runner = TaskPool(trainer, num_workers=workers)
        trainer.meta_iteration()  # warm-up: worker start-up, env construction
        trainers[name] = trainer
    wall: dict[str, list[float]] = {name: [] for name in trainers}
    cpu: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start, own, kids = time.perf_counter(), time.process_time(), _children_cpu()
            trainer.meta_iteration()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - own + _children_cpu() - kids)
    steps = args.meta * 3 * args.envs * args.steps
    print(
        f"{args.env}: meta-iterations of {args.meta} tasks x 3 rounds x {args.envs} envs x "
        f"{args.steps} steps, {args.rounds} each, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    base = statistics.median(wall["in process"])
    for name in trainers:
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"  {name:>10}: {med:6.2f} s per meta-iteration (x{base / med:.2f}), "
            f"{steps / med_cpu:6.0f} env steps per CPU-s, {med_cpu / med:.2f} cores used"
        )
    for trainer in trainers.values():
        trainer.task_runner.close()


if __name__ == "__main__":
    main()
