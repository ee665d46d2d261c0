"""Env steps per second, policy in the loop: one process vs ``collector.backend=multi_sync``.

Both variants collect the same ``[num_envs, T]`` batches (same envs, same actor, observation
normalisation on) through :func:`cmo_rl.training.collection.make_collector`; the multi-process
one splits the envs over ``--workers`` processes. The two collectors live side by side and are
timed in alternation, batch by batch (``--rounds`` pairs after one warm-up batch each), so a
shared, loaded machine slows both alike; worker start-up is not timed.

    python benchmarks/parallel_collection.py --env SafetyPointGoal1-v0 --envs 8 --steps 100
    python benchmarks/parallel_collection.py --env SafetyHalfCheetahVelocity-v1 --envs 16 --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cmo_rl  # noqa: F401  (safety-gymnasium import shim)
from cmo_rl.envs.factory import make_env
from cmo_rl.modules import make_actor
from cmo_rl.training.collection import make_collector
from cmo_rl.training.parallel import worker_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--envs", type=int, default=8, help="sub-envs in all (num_envs)")
    parser.add_argument("--steps", type=int, default=100, help="steps per sub-env per batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = {
        "env_id": args.env,
        "num_envs": args.envs,
        "max_episode_steps": None,
        "normalize_observations": True,
        "collector": {
            "backend": "multi_sync",
            "num_workers": args.workers,
            "envs_per_worker": None,
            "ray_address": None,
        },
    }
    frames = args.envs * args.steps
    epochs = args.rounds + 1
    collectors, owners = {}, []
    for name, workers in (("1 process", None), (f"{args.workers} workers", worker_spec(cfg))):
        env = make_env(args.env, args.envs, normalize_observations=True)
        actor = make_actor(env, hidden_layers=(64, 64))
        collector = make_collector(
            env, actor, steps_per_epoch=frames, num_epochs=epochs, seed=0, workers=workers
        )
        owners.append(collector)
        collectors[name] = iter(collector)
    for it in collectors.values():  # warm-up: worker start-up, first resets
        next(it)
    times: dict[str, list[float]] = {name: [] for name in collectors}
    cpu: dict[str, list[float]] = {name: [] for name in collectors}
    for _ in range(args.rounds):
        for name, it in collectors.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            batch = next(it)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            assert batch.numel() == frames
    base = statistics.median(times["1 process"])
    print(
        f"{args.env}: {args.envs} envs x {args.steps} steps per batch, {args.rounds} batches each"
    )
    for name, t in times.items():
        med = statistics.median(t)
        print(
            f"  {name:>10}: {frames / med:8.0f} steps/s (median batch {med:.3f} s, "
            f"best {frames / min(t):.0f} steps/s), speed-up {base / med:.2f}x, "
            f"training-process CPU {statistics.median(cpu[name]) / med:.0%} of the batch time"
        )
    for collector in owners:
        collector.shutdown()


if __name__ == "__main__":
    main()
