"""Inner updates of a meta-batch: a sequential loop over tasks against one ``torch.func.vmap``.

For ``B`` in ``--tasks`` same-architecture tasks, each with its own policy parameters and its own
batch of ``--envs x --episode-length`` steps, one timed *window* is what the meta-gradient pays
per meta-batch in ``cmo``:

* ``--unroll`` differentiable inner updates (surrogate forward, ``create_graph`` inner
  gradients ``g_R, g_C``, meta-optimizer step), then
* the meta-objective ``M = J_R(theta_K) - mu max(0, J_C(theta_K) - d)`` on the same data and
  the meta-backward ``(-sum_b M_b).backward()`` into the meta-parameters.

``loop``: today's path, ``cmo_rl.meta.bilevel.inner_step`` task after task (each task's
backward on its own, as ``MetaTrainer.run_task`` does). ``vmap``:
``cmo_rl.meta.batched.batched_inner_step`` on the stacked tasks and one backward. Both compute
the same numbers (tests/meta/test_meta_batched.py). Robots: ``point`` (obs 60, act 2, like
SafetyPointGoal1) and ``cheetah`` (obs 17, act 6, HalfCheetah), a ``--hidden`` tanh actor
(``make_actor``); the batch is random observations, actions sampled by each task's policy and
random advantages (the inner update's cost does not depend on the values). Times are the
median of ``--repeats`` windows after one warm-up window per (robot, optimizer).

For context, ``--share-env`` (default ``SafetyHalfCheetahVelocity-v1``, the cheapest robot to
simulate; ``none`` to skip) runs a short real meta-iteration with ``MetaTrainer`` (1 task,
``--unroll`` inner rounds, all differentiable, one warm-up iteration, then one timed) and
reports the share of inner updates + meta-backward in it, and the whole-iteration speed-up
that share and the measured vmap ratio at ``--meta-batch`` tasks imply:
``1 / (1 - share + share / ratio)``.

Run (the numbers in docs/performance.md, "Batching inner updates with torch.vmap")::

    python benchmarks/meta_vmap.py

(defaults: ``--tasks 1 2 4 8 16 --envs 4 --episode-length 1000 --hidden 64 64 --unroll 2
--repeats 3 --device cpu --threads 1``; under 3 minutes on 2 cores). On a GPU:
``--device cuda``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

import cmo_rl  # noqa: F401  (import shim before safety_gymnasium)
from cmo_rl.meta import (
    MetaTrainer,
    RolloutTaskSampler,
    batched_inner_step,
    data_surrogate,
    inner_step,
    make_meta_optimizer,
    meta_objective,
)
from cmo_rl.meta.functional import log_prob_of, params_of, swapped_params
from cmo_rl.modules import make_actor

ROBOTS = {"point": (60, 2), "cheetah": (17, 6)}
COST_LIMIT, MU = 25.0, 50.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_tasks(robot: str, num_tasks: int, args, device: torch.device, seed: int = 0):
    """An actor, ``num_tasks`` stacked parameter sets and their stacked round data."""
    obs_dim, act_dim = ROBOTS[robot]
    torch.manual_seed(seed)
    specs = (Unbounded(shape=(obs_dim,)), Bounded(-1.0, 1.0, shape=(act_dim,)))
    actor = make_actor(specs, hidden_layers=tuple(args.hidden), device=device)
    theta0 = params_of(actor)
    params = torch.stack(
        [theta0.apply(lambda p: p + 0.05 * torch.randn_like(p)) for _ in range(num_tasks)]
    )
    n, t = args.envs, args.episode_length
    batches = []
    with torch.no_grad():
        for b in range(num_tasks):
            batch = TensorDict(
                observation=torch.randn(n, t, obs_dim, device=device), batch_size=[n, t]
            )
            with swapped_params(params[b], actor):
                actor(batch)
            batch["action_log_prob"] = log_prob_of(actor, params[b], batch)
            batch["advantage"] = torch.randn(n, t, 1, device=device)
            batch["cost_advantage"] = torch.randn(n, t, 1, device=device)
            batches.append(batch.select("observation", "action", "action_log_prob", "advantage",
                                        "cost_advantage"))  # fmt: skip
    data = TensorDict(
        batch=torch.stack(batches),
        episode_return=100.0 * torch.rand(num_tasks, device=device),
        episode_cost=50.0 * torch.rand(num_tasks, device=device),
        batch_size=[num_tasks],
    )
    return actor, params, data


def window_loop(opt, actor, params, data, args) -> None:
    """Today's path: ``inner_step`` task after task, each task's meta-backward on its own."""
    estimates = data_surrogate(actor, episode_length=args.episode_length)
    meta_params = list(opt.parameters())
    for b in range(params.batch_size[0]):
        theta = params[b]
        lam, state = opt.init_multiplier(theta), opt.init_state(theta)
        fn = lambda q, b=b: estimates(q, data[b])  # noqa: E731
        for _ in range(args.unroll):
            theta, lam, state, _ = inner_step(
                opt, fn, theta, lam, state,
                cost_limit=COST_LIMIT, violation_scale=COST_LIMIT, differentiable=True,
            )  # fmt: skip
        j_r, j_c = fn(theta)
        loss = -meta_objective(j_r, j_c, cost_limit=COST_LIMIT, mu=MU)
        loss.backward(inputs=meta_params)


def window_vmap(opt, actor, params, data, args) -> None:
    """``batched_inner_step`` on all tasks at once, one meta-backward."""
    estimates = data_surrogate(actor, episode_length=args.episode_length)
    num_tasks = params.batch_size[0]
    theta = params
    lam = torch.stack([opt.init_multiplier(params[0])] * num_tasks)
    state = torch.stack([opt.init_state(params[0])] * num_tasks)
    for _ in range(args.unroll):
        out = batched_inner_step(
            opt, estimates, theta, lam, state, data,
            cost_limit=COST_LIMIT, violation_scale=COST_LIMIT,
        )  # fmt: skip
        theta, lam, state = out.params, out.lagrange_multiplier, out.state
    j_r, j_c = torch.func.vmap(estimates)(theta, data)
    loss = -meta_objective(j_r, j_c, cost_limit=COST_LIMIT, mu=MU).sum()
    loss.backward(inputs=list(opt.parameters()))


def timed(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_opt(kind: str, args, device: torch.device):
    return make_meta_optimizer(
        kind,
        init_lambda=0.2,
        hidden_size=args.hidden_size,
        lstm_layers=args.lstm_layers,
        device=device,
    )


def bench_windows(args, device: torch.device) -> list[dict]:
    rows = []
    for robot in args.robots:
        for kind in args.kinds:
            opt = make_opt(kind, args, device)
            actor, params, data = make_tasks(robot, 1, args, device)
            window_loop(opt, actor, params, data, args)  # warm-up
            window_vmap(opt, actor, params, data, args)
            for num_tasks in args.tasks:
                actor, params, data = make_tasks(robot, num_tasks, args, device, seed=num_tasks)
                run = dict(robot=robot, kind=kind, tasks=num_tasks)
                for name, window in (("loop", window_loop), ("vmap", window_vmap)):
                    call = functools.partial(window, opt, actor, params, data, args)
                    run[name] = timed(call, device, args.repeats)
                    opt.zero_grad(set_to_none=True)
                run["ratio"] = run["loop"] / run["vmap"]
                rows.append(run)
                print(
                    f"  {robot} {kind} B={num_tasks}: loop {run['loop']:.3f} s, "
                    f"vmap {run['vmap']:.3f} s, ratio {run['ratio']:.2f}",
                    flush=True,
                )
    return rows


def bench_share(args, kind: str, device: torch.device) -> dict:
    """Time split of a short real meta-iteration (1 task) on ``--share-env``."""
    sampler = RolloutTaskSampler(
        [args.share_env],
        episode_length=args.episode_length,
        vector_envs_per_task=args.envs,
        hidden_layers=tuple(args.hidden),
        device=device,
    )
    trainer = MetaTrainer(
        make_opt(kind, args, device),
        sampler,
        inner_rollouts=args.unroll,
        unroll_steps=args.unroll,
        meta_batch_size=1,
        cost_limit=COST_LIMIT,
        mu=MU,
        meta_lr=1e-4,
        seed=0,
    )
    trainer.meta_iteration()  # warm-up: env build, first allocations
    m = trainer.meta_iteration()
    sampler.close()
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--robots", nargs="+", default=list(ROBOTS), choices=list(ROBOTS))
    parser.add_argument("--kinds", nargs="+", default=["pid", "lstm"])
    parser.add_argument("--envs", type=int, default=4, help="vector_envs_per_task")
    parser.add_argument("--episode-length", type=int, default=1000)
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 64])
    parser.add_argument("--hidden-size", type=int, default=20)
    parser.add_argument("--lstm-layers", type=int, default=2)
    parser.add_argument("--unroll", type=int, default=2, help="differentiable updates per window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=8, help="B of the projected speed-up")
    parser.add_argument("--share-env", default="SafetyHalfCheetahVelocity-v1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(
        f"# meta_vmap: tasks={args.tasks} envs={args.envs} T={args.episode_length} "
        f"hidden={args.hidden} unroll={args.unroll} repeats={args.repeats} device={device} "
        f"threads={torch.get_num_threads()} torch={torch.__version__} "
        f"python={platform.python_version()}",
        flush=True,
    )
    rows = bench_windows(args, device)

    shares = {}
    if args.share_env != "none":
        for kind in args.kinds:
            m = bench_share(args, kind, device)
            inner = m["time/inner"] + m["time/backward"]
            shares[kind] = (inner / m["time/iteration"], m)
            print(
                f"  {args.share_env} {kind} meta-iteration: {m['time/iteration']:.2f} s, collect "
                f"{m['time/collect']:.2f} s, inner {m['time/inner']:.3f} s, backward "
                f"{m['time/backward']:.3f} s",
                flush=True,
            )

    print(
        f"\nWindow = {args.unroll} differentiable inner updates + meta-objective + meta-backward "
        f"per task, {args.envs} x {args.episode_length} steps per task, seconds (median of "
        f"{args.repeats}):\n"
    )
    print("| robot (obs/act) | meta-opt | B | loop s | vmap s | loop / vmap |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        obs, act = ROBOTS[r["robot"]]
        print(
            f"| {r['robot']} ({obs}/{act}) | {r['kind']} | {r['tasks']} | {r['loop']:.3f} | "
            f"{r['vmap']:.3f} | {r['ratio']:.2f} |"
        )
    if shares:
        print(
            f"\nShare of inner updates + meta-backward in a real meta-iteration on "
            f"{args.share_env} (1 task, {args.unroll} rounds of {args.envs} x "
            f"{args.episode_length} steps), and the whole-iteration speed-up implied by the "
            f"cheetah vmap ratio at B = {args.meta_batch}:\n"
        )
        print(
            "| meta-opt | iteration s | inner + backward s | share | vmap ratio | implied speed-up |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for kind, (share, m) in shares.items():
            match = [
                r for r in rows
                if r["kind"] == kind and r["tasks"] == args.meta_batch and r["robot"] == "cheetah"
            ]  # fmt: skip
            ratio = match[0]["ratio"] if match else float("nan")
            speedup = 1.0 / (1.0 - share + share / ratio)
            print(
                f"| {kind} | {m['time/iteration']:.2f} | "
                f"{m['time/inner'] + m['time/backward']:.3f} | {100 * share:.1f}% | "
                f"{ratio:.2f} | {speedup:.3f}x |"
            )
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
