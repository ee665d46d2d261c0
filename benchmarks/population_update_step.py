"""Minibatch steps of a population update: ``PopulationPPO`` (eager, compiled) against the
single-learner ``minibatch_epochs`` step of the recipes.

For each population size ``P`` in ``--sizes``, ``P`` independently initialised learners
(``[64, 64]`` tanh actor and critics, obs 60 / act 2 like SafetyPointGoal1) each get their own
batch of ``--steps x --minibatch`` random samples, and one pass (``update_iters=1``, no KL
stop) runs ``--steps`` minibatch steps of PPO-Lag for all of them: gather, vmapped gradient,
per-network clip, Adam. The reference is one learner's ``minibatch_epochs`` pass with
``LagrangianPPOLoss`` and ``make_optimizer``'s Adam (what ``train_lagrangian_ppo`` runs), the
same number of steps. Each timing includes the one KL measurement at the end of the pass (as
both updates do), runs after one warm-up pass (which, compiled, includes compilation, reported
separately) and is the median of ``--repeats``. Columns: wall ms per minibatch step (all
learners), CPU ms per step (``time.process_time``), wall ms per learner-step, and the speed-up
over ``P`` reference steps (from CPU times, which a busy shared machine disturbs less).

Run::

    python benchmarks/population_update_step.py               # eager and compiled
    python benchmarks/population_update_step.py --no-compile  # eager only (quick)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

import cmo_rl  # noqa: F401  (import shim)
from cmo_rl.lifecycle.guard import NonFiniteGuard
from cmo_rl.modules import actor_critic_from_env
from cmo_rl.objectives import LagrangianPPOLoss
from cmo_rl.population import LearnerNets, LossCoefficients, PopulationPPO, stack_learners
from cmo_rl.training.onpolicy import approx_kl, make_optimizer, minibatch_epochs


def _agents(size: int, obs_dim: int, act_dim: int, hidden: list[int]) -> list:
    specs = (Unbounded(shape=(obs_dim,)), Bounded(-1.0, 1.0, shape=(act_dim,)))
    return [actor_critic_from_env(specs, hidden_layers=hidden) for _ in range(size)]


def _batch(agents: list, n: int, obs_dim: int) -> TensorDict:
    nets = LearnerNets.from_agent(agents[0])
    params = stack_learners(agents)
    obs = torch.randn(len(agents), n, obs_dim)
    with torch.no_grad():
        dist = torch.func.vmap(lambda p, o: nets.dist(p, o).sample(), randomness="different")
        action = dist(nets.flat_params(params)["actor"], obs)
        log_prob = torch.func.vmap(lambda p, o, a: nets.dist(p, o).log_prob(a))(
            nets.flat_params(params)["actor"], obs, action
        )
    size = len(agents)
    return TensorDict(
        observation=obs,
        action=action,
        action_log_prob=log_prob,
        advantage=torch.randn(size, n, 1),
        cost_advantage=torch.randn(size, n, 1),
        value_target=torch.randn(size, n, 1),
        cost_value_target=torch.randn(size, n, 1),
        batch_size=[size, n],
    )


def _timed(fn, repeats: int) -> tuple[float, float, float]:
    """(first call wall s, median wall s, median CPU s) of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return first, statistics.median(walls), statistics.median(cpus)


def reference(args: argparse.Namespace) -> tuple[float, float]:
    """ms (wall, CPU) per minibatch step of one learner's ``minibatch_epochs``."""
    agent = _agents(1, args.obs_dim, args.act_dim, args.hidden)[0]
    flat = _batch([agent], args.steps * args.minibatch, args.obs_dim)[0]
    actor, critic, cost_critic = agent
    loss = LagrangianPPOLoss(*agent, normalize_advantage=False, multiplier=torch.tensor(0.5))
    optimizer = make_optimizer({"actor": actor, "critic": critic, "cost_critic": cost_critic}, 3e-4)

    def run() -> None:
        minibatch_epochs(
            flat, loss, optimizer, update_iters=1, minibatch_size=args.minibatch,
            guard=NonFiniteGuard(), max_grad_norm=40.0, kl_fn=lambda: approx_kl(actor, flat),
        )  # fmt: skip

    _, wall, cpu = _timed(run, args.repeats)
    return 1e3 * wall / args.steps, 1e3 * cpu / args.steps


def population(args: argparse.Namespace, size: int, compile: bool) -> tuple[float, ...]:
    agents = _agents(size, args.obs_dim, args.act_dim, args.hidden)
    batch = _batch(agents, args.steps * args.minibatch, args.obs_dim)
    if compile:
        torch._dynamo.reset()  # each size is a fresh run: no cache entries of other sizes
    engine = PopulationPPO(
        LearnerNets.from_agent(agents[0]), LossCoefficients.make(), update_iters=1,
        minibatch_size=args.minibatch, max_grad_norm=40.0, compile=compile,
    )  # fmt: skip
    params = stack_learners(agents)
    adam = engine.make_optimizer(params, 3e-4)
    lam = torch.full((size,), 0.5)

    def run() -> None:
        engine.update(params, adam, batch, lam)

    first, wall, cpu = _timed(run, args.repeats)
    return first, 1e3 * wall / args.steps, 1e3 * cpu / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=40, help="minibatch steps per timed pass")
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--obs-dim", type=int, default=60)
    parser.add_argument("--act-dim", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={args.threads}, hidden={args.hidden}, minibatch={args.minibatch}, "
        f"steps={args.steps}, obs={args.obs_dim}, act={args.act_dim}"
    )
    ref_wall, ref_cpu = reference(args)  # noqa: RUF059
    print(f"single learner minibatch_epochs: {ref_wall:.2f} ms/step wall, {ref_cpu:.2f} ms CPU")
    header = "mode      P  ms/step wall  ms/step CPU  ms/learner-step  vs P single  warm-up s"
    print(header)
    modes = [False] if args.no_compile else [False, True]
    for compile in modes:
        for size in args.sizes:
            first, wall, cpu = population(args, size, compile)
            name = "compiled" if compile else "eager"
            print(
                f"{name:8s} {size:2d}  {wall:12.2f}  {cpu:11.2f}  {wall / size:15.2f}  "
                f"{size * ref_cpu / cpu:10.2f}x  {first:9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
