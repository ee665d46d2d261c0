"""Cost of one meta-iteration, split by phase, against a plain PPO-Lagrangian update.

For each meta-optimizer (``--kinds``), a :class:`cmo_rl.meta.MetaTrainer` runs ``--iters``
meta-iterations (after one untimed warm-up iteration) on ``--tasks`` tasks of ``--env``, each
with ``--inner`` rounds of ``--envs x --episode-length`` steps and a differentiable window of
``--unroll`` updates. Reported per meta-iteration (means):

* ``collect``: env steps + GAE + critic fitting of all rounds, final batch included;
* ``inner``: the inner updates (surrogate, ``create_graph`` gradients, meta-optimizer step);
* ``backward``: the meta-backward through the unroll;
* ``peak MiB``: CUDA ``max_memory_allocated`` on a GPU; on CPU the growth of the process's
  peak RSS during the timed iterations (a rough upper bound of the graph's size).

Then, on one batch of the same size:

* ``ppo-lag update``: ``LagrangianPPOLoss`` forward + backward + Adam step on the whole batch
  (one full-batch PPO-Lag gradient step), the baseline the inner update replaces;
* ``inner grad (create_graph)``: ``g_R, g_C`` with ``create_graph=True`` (what a
  differentiable inner step pays), and first-order (what a frozen meta-test step pays);
* ``torch.func.grad eager / compiled``: the first-order reward-surrogate gradient written with
  ``torch.func.grad`` over the parameter TensorDict, eager and under ``torch.compile``
  (``--compile``; the compile time is reported separately). The double-backward path is not
  compiled: ``torch.compile`` does not support double backward (the gradient of a compiled
  function's ``create_graph`` gradient comes back disconnected from the input).

Example (the run recorded in ``docs/performance.md``, "Meta-step")::

    python benchmarks/meta_step.py --env SafetyPointGoal1-v0 --episode-length 1000 --envs 4 \\
        --inner 3 --unroll 3 --tasks 1 --iters 2 --compile
"""

from __future__ import annotations

import argparse
import functools
import platform
import resource
import sys
import time

import torch

import cmo_rl  # noqa: F401  (import shim before safety_gymnasium)
from cmo_rl.meta import MetaTrainer, RolloutTaskSampler, make_meta_optimizer
from cmo_rl.meta.functional import require_grad, surrogate_estimates, values_and_grads
from cmo_rl.objectives.lagrangian import LagrangianPPOLoss
from cmo_rl.testing import MockCMDPEnv


def _peak_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def _env_spec(args: argparse.Namespace):
    if args.env == "mock":
        return functools.partial(MockCMDPEnv, episode_length=args.episode_length)
    return args.env


def bench_meta_iteration(args: argparse.Namespace, kind: str, device: torch.device) -> dict:
    opt = make_meta_optimizer(
        kind,
        init_etaR=args.eta,
        init_etaC=args.eta,
        init_lambda=0.2,
        hidden_size=args.hidden_size,
        lstm_layers=args.lstm_layers,
        device=device,
    )
    sampler = RolloutTaskSampler(
        [_env_spec(args)],
        episode_length=args.episode_length,
        vector_envs_per_task=args.envs,
        hidden_layers=tuple(args.hidden),
        device=device,
    )
    trainer = MetaTrainer(
        opt,
        sampler,
        inner_rollouts=args.inner,
        unroll_steps=args.unroll,
        meta_batch_size=args.tasks,
        cost_limit=args.cost_limit,
        mu=args.mu,
        meta_lr=1e-3,
        seed=0,
    )
    trainer.meta_iteration()  # warm-up (env build, first allocations)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_mib()
    rows = [trainer.meta_iteration() for _ in range(args.iters)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    if device.type == "cuda":
        mean["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        mean["peak_mib"] = _peak_rss_mib() - rss0
    mean["sampler"] = sampler
    return mean


def bench_single_batch(args: argparse.Namespace, sampler, device: torch.device) -> dict:
    problem = sampler(123)
    params = problem.init_params()
    rnd = problem.sample_round(params)
    batch = problem.collect(params)
    problem.reward_gae(batch)
    problem.cost_gae(batch)
    out = {}

    # baseline: one full-batch PPO-Lag gradient step on the same batch
    loss = LagrangianPPOLoss(problem.actor, problem.critic, problem.cost_critic, multiplier=0.5)
    adam = torch.optim.Adam(loss.parameters(), lr=3e-4)
    flat = batch.reshape(-1)

    def ppo_step():
        terms = loss(flat)
        total = sum(v for k, v in terms.items() if k.startswith("loss_"))
        adam.zero_grad(set_to_none=True)
        total.backward()
        adam.step()

    out["ppo_lag_update"] = _timed(ppo_step, device, args.repeats)
    out["inner_grad_create_graph"] = _timed(
        lambda: values_and_grads(rnd.estimates, params, create_graph=True), device, args.repeats
    )
    out["inner_grad_first_order"] = _timed(
        lambda: values_and_grads(rnd.estimates, params, create_graph=False), device, args.repeats
    )

    data = batch.select(
        *problem.actor.in_keys, "action", "action_log_prob", "advantage", "cost_advantage"
    )
    data = data.reshape(-1)

    def reward_surrogate(p):
        return surrogate_estimates(
            problem.actor,
            p,
            data,
            episode_return=0.0,
            episode_cost=0.0,
            episode_length=args.episode_length,
        )[0]

    grad_fn = torch.func.grad(reward_surrogate)
    leaf = require_grad(params).detach()
    try:
        out["func_grad_eager"] = _timed(lambda: grad_fn(leaf), device, args.repeats)
    except Exception as err:  # noqa: BLE001  (report, do not crash the benchmark)
        out["func_grad_eager"] = f"failed: {type(err).__name__}: {str(err)[:120]}"
    if args.compile:
        compiled = torch.compile(grad_fn)
        try:
            t0 = time.perf_counter()
            compiled(leaf)
            _sync(device)
            out["compile_seconds"] = time.perf_counter() - t0
            out["func_grad_compiled"] = _timed(lambda: compiled(leaf), device, args.repeats)
        except Exception as err:  # noqa: BLE001
            out["func_grad_compiled"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="mock", help="a Safety-Gymnasium id, or 'mock'")
    parser.add_argument("--episode-length", type=int, default=200)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--unroll", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["pid", "lstm"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 64])
    parser.add_argument("--hidden-size", type=int, default=20)
    parser.add_argument("--lstm-layers", type=int, default=2)
    parser.add_argument("--eta", type=float, default=1e-3)
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument("--mu", type=float, default=50.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# meta_step: env={args.env} T={args.episode_length} envs={args.envs} K={args.inner} "
        f"unroll={args.unroll} tasks={args.tasks} hidden={args.hidden} device={device} "
        f"threads={args.threads} torch={torch.__version__} python={platform.python_version()}"
    )
    print("| kind | collect s | inner s | backward s | total s | peak MiB |")
    print("|---|---|---|---|---|---|")
    sampler = None
    per_kind = {}
    for kind in args.kinds:
        m = bench_meta_iteration(args, kind, device)
        sampler = m.pop("sampler")
        per_kind[kind] = m
        print(
            f"| {kind} | {m['time/collect']:.3f} | {m['time/inner']:.3f} | "
            f"{m['time/backward']:.3f} | {m['time/iteration']:.3f} | {m['peak_mib']:.0f} |"
        )
    single = bench_single_batch(args, sampler, device)
    ppo = single["ppo_lag_update"]
    print(f"\nsame batch ({args.envs} x {args.episode_length} steps), seconds per call:")
    for key, value in single.items():
        print(f"  {key}: {value if isinstance(value, str) else f'{value:.4f}'}")
    rounds = args.tasks * args.inner
    for kind, m in per_kind.items():
        compute = (m["time/inner"] + m["time/backward"]) / rounds
        share = m["time/collect"] / m["time/iteration"]
        print(
            f"{kind}: meta compute per inner round (inner + share of backward) = {compute:.4f} s "
            f"= {compute / ppo:.1f}x a PPO-Lag update on the same batch; collection is "
            f"{100 * share:.1f}% of the meta-iteration"
        )


if __name__ == "__main__":
    main()
