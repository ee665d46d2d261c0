"""Environment throughput: a raw Safety-Gymnasium loop vs TorchRL's wrapper vs ``make_safety_env``.

Every row is env steps per second over *whole episodes*, resets included. Each env is built
and reset untimed (construction and the first reset, a double scene build on stock
Safety-Gymnasium, are excluded), then stepped ``k`` full episodes of ``T`` steps (``T`` = the
task's ``max_episode_steps``; ``k`` = enough for ``--steps``), resetting whenever an episode
ends, so the timed window holds exactly ``k`` resets per env: one reset per ``T`` steps
everywhere. Collectors, which reset when built, are timed from the end of a warm-up batch of
``T/4`` steps per env over the next ``k * T`` steps per env (again ``k`` resets per env).

Each row reports wall time and CPU time (user + system of this process and all its children,
from ``/proc``). On a machine shared with other jobs the wall rate mostly measures the others'
load; steps per CPU-second does not, and the ratios are printed for both.

Rows (``envs``: envs per process, ``2 x n`` for two processes):

* ``a raw loop``: ``--raw-envs`` ``safety_gymnasium.make(id).unwrapped`` envs stepped
  round-robin in a plain Python loop, random actions (numpy), manual time limit. Its cost per
  step does not depend on the number of envs (nothing is batched), so few envs keep the stock
  builds cheap. 2 cores: two such processes side by side (a barrier starts them together; wall
  time of the slower one).
* ``b torchrl SafetyGymnasiumEnv``: TorchRL's stock wrapper (one env), ``env.rollout``, stock
  resets (it builds the env itself).
* ``c make_safety_env``: ``cmo_rl.envs.make_safety_env(id, num_envs=n)``, one batched env in
  this process: ``env.rollout`` and ``torchrl.collectors.Collector`` (random policy). 2 cores:
  ``MultiSyncCollector`` of two workers with ``n`` envs each (``--parallel-env`` adds TorchRL's
  ``ParallelEnv`` of two ``n/2``-env batches: several times slower here). ``n`` is
  ``--envs`` (Builder tasks, fast resets), ``--stock-envs`` (stock resets: the reset dominates,
  so few envs keep the untimed stock builds short) or ``--velocity-envs`` (Velocity tasks: a
  ~50 us physics step needs a big batch to amortize TorchRL's ~1 ms per batched step).
* policy ``MLP`` (``--policy``): a [64, 64] tanh MLP Gaussian actor (``TanhNormal``, log-probs
  on). ``a``: the same MLP called on the stacked observations inside the raw loop; ``c``:
  ``Collector`` (1 core) / ``MultiSyncCollector`` (2 cores). Policy and collector rows use fast
  resets where the task has them (stock otherwise).

``reset`` is ``stock`` or ``fast`` (:mod:`cmo_rl.envs.fast_reset`; Builder tasks only).
Everything runs with ``torch.set_num_threads(1)``. The ratio table compares, per number of
cores, the fastest ``c`` row with the fastest ``a`` row (by steps per CPU-second).

The run recorded in ``docs/performance.md``::

    python benchmarks/env_throughput.py

``--fast-step`` runs another table instead (:mod:`cmo_rl.envs.fast_step`), per task and per
number of sub-envs ``n`` (``--fs-envs``, default 1 4 16 64), random actions in ``[-1, 1]``,
``time.process_time`` (CPU of this process) beside wall time, fast resets everywhere:

* ``raw loop``: ``n`` raw envs stepped one by one (``env.step``, stock task logic);
* ``stepper``: the same ``n`` envs through ``NavigationStepper.step`` (batched task logic, no
  TorchRL);
* ``make_safety_env``: ``make_safety_env(id, n, fast_step=True)``, ``env.rollout`` (TorchRL's
  per-batch overhead included: ``TransformedEnv``, ``RewardSum``, random actions);
* ``physics floor``: the same ``n`` envs calling only ``mj_step`` (frame skip 10) with the same
  actions, no ``mj_forward``, no task logic.

``resets excluded``: no episode ends in the window (time limit lifted); ``resets included``:
every env's episode ends every ``--fs-horizon`` steps (default 250; a fast reset each time,
inside the window). Steps per row: ``--fs-steps`` (rounded up to whole rounds of ``n``)::

    python benchmarks/env_throughput.py --fast-step
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import cmo_rl  # noqa: F401  (import shim: before safety_gymnasium and TorchRL's wrapper)
from cmo_rl.envs.fast_reset import enable_fast_reset, supports_fast_reset
from cmo_rl.training.parallel import shutdown_collector

# isort: split
import gymnasium
import safety_gymnasium


@dataclass
class Row:
    task: str
    variant: str
    cores: int
    reset: str
    policy: bool
    envs: str  # envs per process, e.g. "16" or "2 x 16"
    steps: int
    seconds: float  # wall
    cpu_seconds: float  # user + system, this process and its children, over the same window

    @property
    def rate(self) -> float:
        """Steps per wall second."""
        return self.steps / self.seconds

    @property
    def cpu_rate(self) -> float:
        """Steps per CPU second (all processes of the row together)."""
        return self.steps / self.cpu_seconds


# ----------------------------------------------------------------------------------------------
# clocks
# ----------------------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # fields from 'state' on
    except OSError:
        return None


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants (Linux /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for pid in tree:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


class Window:
    """Wall and CPU seconds between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self._cpu, self._wall = tree_cpu_seconds(), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self._wall
        return wall, tree_cpu_seconds() - self._cpu


# ----------------------------------------------------------------------------------------------
# envs and policies
# ----------------------------------------------------------------------------------------------


def episode_length(task: str) -> int:
    return gymnasium.envs.registry[task].max_episode_steps or 1000


def episodes_per_env(task: str, steps: int, num_envs: int) -> int:
    """Whole episodes each env runs so that all envs together take at least ``steps`` steps."""
    return max(1, math.ceil(steps / (num_envs * episode_length(task))))


def make_mlp(obs_dim: int, act_dim: int, seed: int = 0) -> torch.nn.Module:
    """[64, 64] tanh MLP -> (loc, scale) of a Gaussian, as used by the actor below."""
    from tensordict.nn import NormalParamExtractor

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(obs_dim, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 2 * act_dim),
        NormalParamExtractor(),
    )


def make_actor(env) -> torch.nn.Module:
    """``ProbabilisticActor`` (TanhNormal within the action bounds) on the MLP; log-probs on."""
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ProbabilisticActor, TanhNormal

    spec = env.action_spec
    net = make_mlp(env.observation_spec["observation"].shape[-1], spec.shape[-1])
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low[0], "high": spec.space.high[0]},
        return_log_prob=True,
    )


def raw_envs(task: str, num_envs: int, fast: bool) -> list:
    envs = []
    for _ in range(num_envs):
        env = safety_gymnasium.make(task, disable_env_checker=True).unwrapped
        if fast:
            enable_fast_reset(env)
        envs.append(env)
    return envs


def make_cmo_env(task: str, num_envs: int, fast: bool, seed: int = 0):
    from cmo_rl.envs.safety import make_safety_env

    torch.set_num_threads(1)
    return make_safety_env(task, num_envs=num_envs, seed=seed, fast_reset=fast)


# ----------------------------------------------------------------------------------------------
# timed runs: each returns (steps, wall seconds, CPU seconds)
# ----------------------------------------------------------------------------------------------


def run_raw_loop(envs: list, task: str, episodes: int, policy: bool, seed: int, window=None):
    """The plain loop: ``episodes * T`` rounds over ``envs`` (already reset), reset on end."""
    horizon = episode_length(task)
    space = envs[0].action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    rng = np.random.default_rng(seed)
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    elapsed = [0] * len(envs)
    if policy:
        net = make_mlp(obs.shape[-1], low.shape[0], seed)
        half_range, middle = (high - low) / 2, (high + low) / 2

        def act(observation: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                loc, scale = net(torch.from_numpy(observation.astype(np.float32)))
                unit = torch.tanh(loc + scale * torch.randn_like(loc)).numpy()
            return middle + half_range * unit

    else:

        def act(observation: np.ndarray) -> np.ndarray:
            return rng.uniform(low, high, size=(len(envs), low.shape[0]))

    window = window or Window()
    window.start()
    for _ in range(episodes * horizon):
        actions = act(obs)
        for i, env in enumerate(envs):
            o, _, _, terminated, truncated, _ = env.step(actions[i])
            elapsed[i] += 1
            if terminated or truncated or elapsed[i] >= horizon:
                o, _ = env.reset()
                elapsed[i] = 0
            obs[i] = o
    return (episodes * horizon * len(envs), *window.stop())


class _ProcessWindow(Window):
    """This process only (a raw-loop worker has no children)."""

    def start(self) -> None:
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self._wall, time.process_time() - self._cpu


def _raw_worker(task, num_envs, fast, episodes, policy, seed, barrier, queue) -> None:
    torch.set_num_threads(1)
    envs = raw_envs(task, num_envs, fast)
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)  # the first build (stock: a double build), untimed
    barrier.wait()
    queue.put(run_raw_loop(envs, task, episodes, policy, seed, _ProcessWindow()))


def raw_loop_2proc(task, num_envs, fast, episodes, policy):
    """Two raw-loop processes of ``num_envs`` envs each, side by side: total steps, wall of the
    slower, summed CPU."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_raw_worker,
            args=(task, num_envs, fast, episodes, policy, 100 * k, barrier, queue),
        )
        for k in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return (
        sum(r[0] for r in results),
        max(r[1] for r in results),
        sum(r[2] for r in results),
    )


def time_rollout(env, task: str, episodes: int):
    """``env.rollout`` of ``episodes * T`` steps right after a reset (random actions).

    ``rollout`` does not reset after its last step, so the envs that ended there are reset
    inside the timed window: every env then has ``episodes`` resets, like the other rows.
    """
    from tensordict import TensorDict

    td = env.reset()
    window = Window()
    window.start()
    out = env.rollout(
        episodes * episode_length(task), break_when_any_done=False, auto_reset=False, tensordict=td
    )
    done = out[..., -1].get(("next", "done"))
    if done.any():
        env.reset(TensorDict({"_reset": done}, batch_size=env.batch_size))
    return (out.numel(), *window.stop())


def time_collector(collector, frames_per_batch: int, batches: int):
    """``batches`` batches after a first (warm-up) batch."""
    iterator = iter(collector)
    next(iterator)
    window = Window()
    window.start()
    frames = sum(next(iterator).numel() for _ in range(batches))
    result = (frames, *window.stop())
    shutdown_collector(collector)  # also its weight-sync scheme: else the process hangs at exit
    assert frames == batches * frames_per_batch, (frames, batches, frames_per_batch)
    return result


# ----------------------------------------------------------------------------------------------
# the measurements of one task
# ----------------------------------------------------------------------------------------------


def measure_task(task: str, args: argparse.Namespace, log: Callable[[Row], None]) -> list[Row]:
    from torchrl.collectors import Collector, MultiSyncCollector
    from torchrl.envs import EnvCreator, ParallelEnv
    from torchrl.envs.libs.safety_gymnasium import SafetyGymnasiumEnv

    has_fast = supports_fast_reset(task)
    resets = [r for r in args.resets if has_fast or r == "stock"] or ["stock"]
    extras_reset = "fast" if "fast" in resets else "stock"  # policy and ParallelEnv rows
    horizon = episode_length(task)
    rows: list[Row] = []

    def record(variant, cores, reset, policy, envs, result):
        row = Row(task, variant, cores, reset, policy, envs, *result)
        rows.append(row)
        log(row)

    for reset in resets:
        fast = reset == "fast"
        extras = reset == extras_reset
        policies = (False, True) if args.policy and extras else (False,)
        steps = args.steps if (fast or not has_fast) else args.stock_steps
        n = args.velocity_envs if not has_fast else (args.envs if fast else args.stock_envs)
        n_raw = args.raw_envs
        if 1 in args.cores:
            envs = raw_envs(task, n_raw, fast)
            for i, env in enumerate(envs):
                env.reset(seed=i)  # untimed first build
            for policy in policies:
                result = run_raw_loop(envs, task, episodes_per_env(task, steps, n_raw), policy, 0)
                record("a raw loop", 1, reset, policy, str(n_raw), result)
            del envs

            if not fast:
                env = SafetyGymnasiumEnv(task)
                env.set_seed(0)
                result = time_rollout(env, task, args.torchrl_episodes)
                record("b torchrl SafetyGymnasiumEnv", 1, reset, False, "1", result)
                env.close()

            env = make_cmo_env(task, n, fast)
            episodes = episodes_per_env(task, steps, n)
            record("c make_safety_env", 1, reset, False, str(n), time_rollout(env, task, episodes))
            batch = n * horizon // 4  # T/4 steps per env per batch
            for policy in policies if extras else ():  # random policy too: often the fastest
                actor = make_actor(env) if policy else None
                collector = Collector(
                    env,
                    actor,
                    frames_per_batch=batch,
                    total_frames=-1,
                    auto_register_policy_transforms=False,  # the actor needs no InitTracker
                )
                result = time_collector(collector, batch, 4 * episodes)
                record("c Collector(make_safety_env)", 1, reset, policy, str(n), result)
            env.close()

        if 2 in args.cores:
            raw_episodes = episodes_per_env(task, steps, n_raw)  # same steps as the 1-core row
            for policy in policies:
                result = raw_loop_2proc(task, n_raw // 2, fast, raw_episodes, policy)
                record("a raw loop x2 procs", 2, reset, policy, f"2 x {n_raw // 2}", result)
            if extras and args.parallel_env:
                half = max(1, n // 2)
                create = EnvCreator(functools.partial(make_cmo_env, task, half, fast))
                penv = ParallelEnv(2, create, mp_start_method="spawn")
                result = time_rollout(penv, task, episodes_per_env(task, steps, 2 * half))
                record("c ParallelEnv(2 x make_safety_env)", 2, reset, False, f"2 x {half}", result)
                penv.close()
            episodes = episodes_per_env(task, steps, 2 * n)
            batch = 2 * n * horizon // 4  # T/4 steps per env per batch
            for policy in policies:
                fns = [
                    functools.partial(make_cmo_env, task, n, fast, seed=100 * k) for k in range(2)
                ]
                actor = None
                if policy:
                    spec_env = make_cmo_env(task, 1, False)
                    actor = make_actor(spec_env)
                    spec_env.close()
                collector = MultiSyncCollector(
                    fns,
                    actor,
                    frames_per_batch=batch,
                    total_frames=-1,
                    cat_results=0,
                    use_buffers=True,  # what torchrl infers (and warns about) when unset
                )
                result = time_collector(collector, batch, 4 * episodes)
                variant = "c MultiSyncCollector(2 x make_safety_env)"
                record(variant, 2, reset, policy, f"2 x {n}", result)
    return rows


# ----------------------------------------------------------------------------------------------
# fast steps (--fast-step)
# ----------------------------------------------------------------------------------------------

FAST_STEP_TASKS = [
    "SafetyPointGoal1-v0",
    "SafetyCarButton1-v0",
    "SafetyPointPush1-v0",
    "SafetyDoggoGoal1-v0",
    "SafetyRacecarGoal2-v0",
]


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU of this process) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_fast_step(task: str, n: int, steps: int, horizon: int | None) -> dict:
    """Seconds (wall, CPU) of the four variants over the same rounds of random actions."""
    import mujoco

    from cmo_rl.envs.fast_step import make_stepper
    from cmo_rl.envs.safety import make_safety_env

    rounds = max(1, math.ceil(steps / n))
    envs = raw_envs(task, n, fast=True)
    act_dim = envs[0].action_space.shape[0]
    actions = np.random.default_rng(0).uniform(-1, 1, size=(rounds, n, act_dim))
    limit = horizon or 10**9

    def reset_all() -> None:
        for i, env in enumerate(envs):
            env.reset(seed=i)
            env.task.num_steps = limit

    def raw_loop() -> None:
        for t in range(rounds):
            for i, env in enumerate(envs):
                _, _, _, terminated, truncated, _ = env.step(actions[t, i])
                if terminated or truncated:
                    env.reset()

    stepper = make_stepper(envs)

    def batched() -> None:
        for t in range(rounds):
            _, _, _, terminated, truncated = stepper.step(actions[t])
            for i in np.flatnonzero(terminated | truncated):
                envs[i].reset()

    def floor() -> None:
        for t in range(rounds):
            for i, env in enumerate(envs):
                data = env.task.data
                data.ctrl[:] = actions[t, i]
                mujoco.mj_step(env.task.model, data, 10)

    result = {}
    for name, fn in (("raw loop", raw_loop), ("stepper", batched), ("physics floor", floor)):
        reset_all()
        result[name] = _timed(fn)
    env = make_safety_env(
        task, num_envs=n, seed=0, fast_step=True, max_episode_steps=horizon or 10**9
    )
    torch.set_num_threads(1)
    env.rollout(3, break_when_any_done=False)  # untimed warm-up
    td = env.reset()
    result["make_safety_env"] = _timed(
        lambda: env.rollout(rounds, tensordict=td, auto_reset=False, break_when_any_done=False)
    )
    env.close()
    return {k: (rounds * n, *v) for k, v in result.items()}


def run_fast_step(args: argparse.Namespace) -> None:
    print(
        "| task | resets | envs | variant | steps | wall s | CPU s | steps/s | steps/CPU-s "
        "| x raw (CPU) | / floor (CPU) |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for task in args.tasks:
        for horizon in (None, args.fs_horizon):
            resets = "excluded" if horizon is None else f"every {horizon}"
            for n in args.fs_envs:
                rows = measure_fast_step(task, n, args.fs_steps, horizon)
                raw_cpu, floor_cpu = rows["raw loop"][2], rows["physics floor"][2]
                for name in ("raw loop", "stepper", "make_safety_env", "physics floor"):
                    steps, wall, cpu = rows[name]
                    print(
                        f"| {task} | {resets} | {n} | {name} | {steps} | {wall:.2f} | {cpu:.2f} "
                        f"| {steps / wall:,.0f} | {steps / cpu:,.0f} | {raw_cpu / cpu:.2f} "
                        f"| {floor_cpu / cpu:.2f} |",
                        flush=True,
                    )


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def best(rows: list[Row], *, task, prefix, cores, reset, policy) -> Row | None:
    """The fastest row of a kind (by steps per CPU-second, robust on a shared machine)."""
    found = [
        r
        for r in rows
        if r.task == task
        and r.variant.startswith(prefix)
        and r.cores == cores
        and r.reset == reset
        and r.policy == policy
    ]
    return max(found, key=lambda r: r.cpu_rate) if found else None


def print_table(rows: list[Row]) -> None:
    print()
    print(
        "| task | variant | cores | reset | policy | envs | steps | wall s | CPU s | steps/s | steps/CPU-s |"
    )
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        policy = "MLP" if r.policy else "random"
        print(
            f"| {r.task} | {r.variant} | {r.cores} | {r.reset} | {policy} | {r.envs} | {r.steps} "
            f"| {r.seconds:.1f} | {r.cpu_seconds:.1f} | {r.rate:,.0f} | {r.cpu_rate:,.0f} |"
        )
    print()
    print("| task | ratio | wall | CPU | target |")
    print("|---|---|---:|---:|---:|")

    def ratio(task, name, target, c, a):
        if a and c:
            print(
                f"| {task} | {name} | {c.rate / a.rate:.2f} | {c.cpu_rate / a.cpu_rate:.2f} "
                f"| {target} |"
            )

    for task in dict.fromkeys(r.task for r in rows):
        for policy in (False, True):
            tag = "MLP" if policy else "random"
            for cores in (1, 2):
                for reset in ("stock", "fast"):
                    key = {"task": task, "cores": cores, "reset": reset, "policy": policy}
                    name = f"c / a, {cores} core(s), {reset} resets, {tag}"
                    ratio(
                        task,
                        name,
                        ">= 0.8",
                        best(rows, prefix="c ", **key),
                        best(rows, prefix="a ", **key),
                    )
                key = {"task": task, "cores": cores, "policy": policy}
                name = f"c fast / a stock, {cores} core(s), {tag}"
                c = best(rows, prefix="c ", reset="fast", **key)
                ratio(task, name, ">= 2.5", c, best(rows, prefix="a ", reset="stock", **key))
        key = {"task": task, "cores": 1, "reset": "stock", "policy": False}
        ratio(
            task,
            "c / b, 1 core, stock resets, random",
            "",
            best(rows, prefix="c ", **key),
            best(rows, prefix="b ", **key),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["SafetyPointGoal1-v0", "SafetyHalfCheetahVelocity-v1"]
    )
    parser.add_argument(
        "--envs", type=int, default=16, help="envs per process of c rows (Builder tasks, fast)"
    )
    parser.add_argument(
        "--stock-envs", type=int, default=4, help="envs per process of c rows (stock resets)"
    )
    parser.add_argument(
        "--velocity-envs", type=int, default=64, help="envs per process of c rows (other tasks)"
    )
    parser.add_argument("--raw-envs", type=int, default=2, help="envs of the a rows, in total")
    parser.add_argument(
        "--steps", type=int, default=8000, help="min steps per row (rounded up to whole episodes)"
    )
    parser.add_argument(
        "--stock-steps", type=int, default=4000, help="min steps per row (Builder, stock resets)"
    )
    parser.add_argument("--torchrl-episodes", type=int, default=2, help="episodes of row b")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--resets", nargs="+", default=["stock", "fast"], choices=["stock", "fast"])
    parser.add_argument(
        "--policy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also MLP-policy rows (with fast resets where the task has them)",
    )
    parser.add_argument(
        "--parallel-env",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also the ParallelEnv row (with fast resets where the task has them)",
    )
    parser.add_argument(
        "--fast-step",
        action="store_true",
        help="only the fast-step table (default tasks: PointGoal1, CarButton1, PointPush1, "
        "DoggoGoal1, RacecarGoal2)",
    )
    parser.add_argument("--fs-envs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--fs-steps", type=int, default=1600, help="steps per fast-step row")
    parser.add_argument("--fs-horizon", type=int, default=250, help="episode length (resets)")
    args = parser.parse_args()
    if args.fast_step:
        if args.tasks == parser.get_default("tasks"):
            args.tasks = FAST_STEP_TASKS
        torch.set_num_threads(1)
        print(f"# fast-step throughput  {time.strftime('%Y-%m-%d %H:%M')}  load {os.getloadavg()}")
        run_fast_step(args)
        return
    if args.raw_envs % 2 or args.raw_envs < 2:
        parser.error("--raw-envs must be even and >= 2 (split over 2 processes for 2 cores)")

    torch.set_num_threads(1)
    print(
        f"# env throughput  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()}  "
        f"cpus={os.cpu_count()}  torch {torch.__version__}  python {platform.python_version()}"
    )
    print(f"# args: {vars(args)}")
    rows: list[Row] = []

    def log(r: Row) -> None:
        policy = "MLP" if r.policy else "random"
        print(
            f"{r.task:30s} {r.variant:42s} {r.cores}c {r.reset:5s} {policy:6s} {r.steps:6d} steps"
            f" {r.seconds:6.1f} s {r.rate:7,.0f}/s  CPU {r.cpu_seconds:6.1f} s {r.cpu_rate:7,.0f}/s",
            flush=True,
        )

    start = time.perf_counter()
    load = os.getloadavg()
    for task in args.tasks:
        rows += measure_task(task, args, log)
    print_table(rows)
    print(
        f"\n# total wall time {time.perf_counter() - start:.0f} s; load average at start "
        f"{load[0]:.1f}, at end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
