"""Constrained Policy Optimization (Achiam et al. 2017; OmniSafe ``CPO``) on Safety-Gymnasium.

    python recipes/cpo.py env_id=SafetyHalfCheetahVelocity-v1 total_steps=1000000

Each epoch, on a fresh batch of ``steps_per_epoch`` env steps:

1. GAE on reward and on cost gives :math:`A_R, A_C` and the critics' targets;
2. one CPO policy step (:class:`~cmo_rl.objectives.CPOUpdate`): with the surrogate gradients
   :math:`g` (reward) and :math:`b` (cost), the Fisher matrix :math:`H` and the *measured*
   violation :math:`c = (J_C - d) / \\bar T` (:math:`J_C` the mean cost of the episodes that
   finished in the batch, :math:`\\bar T` their mean length),

   .. math::

       \\max_x g^\\top x \\quad \\text{s.t.} \\quad \\tfrac12 x^\\top H x \\le \\delta,
       \\quad c + b^\\top x \\le 0,

   solved in closed form through the dual (:math:`\\nu` is logged as ``train/lambda``), then a
   backtracking line search;
3. ``update_iters`` passes of minibatch regression of both critics on their targets.

Config: ``recipes/config/cpo.yaml``; run directory layout, metric names and checkpoints:
``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from cmo_rl.lifecycle import NonFiniteError, accept_renamed_keys, run_cli
from cmo_rl.objectives import CPOUpdate, CriticLoss
from cmo_rl.seeding import seed_everything
from cmo_rl.training.collection import finished_episodes
from cmo_rl.training.onpolicy import (
    compute_advantages,
    make_optimizer,
    minibatch_epochs,
    train_metrics,
)
from cmo_rl.training.run import TrainingRun
from cmo_rl.training.schema import CPO, RULES, recipe_schema
from cmo_rl.training.setup import (
    make_agent,
    make_envs,
    make_estimators,
    make_run_collector,
    set_torch_threads,
)

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(CPO)


def train(cfg: DictConfig) -> Path | list[Path]:
    """Train CPO with ``cfg`` (validated); returns the run directory (a list of them, one
    per seed, with ``seeds=[...]``: CPO's line search takes a data-dependent number of steps
    per learner, so its seeds run one after another, each a plain single-seed run)."""
    if cfg.get("seeds") is not None:
        return [train(OmegaConf.merge(cfg, {"seed": seed, "seeds": None})) for seed in cfg.seeds]
    run = TrainingRun(cfg, recipe="cpo")
    cfg = run.cfg  # on resume: the stored config (plus allowed changes)
    device = torch.device(cfg.device)
    set_torch_threads(cfg.torch_threads)
    seed_everything(cfg.seed)

    env, eval_env = make_envs(cfg)
    run.check_env(env)
    actor, critic, cost_critic = make_agent(cfg, env, device)
    gae, cost_gae = make_estimators(cfg, critic, cost_critic, device)
    cpo = CPOUpdate(
        actor,
        cost_limit=cfg.cost_limit,
        target_kl=cfg.target_kl,
        cg_iters=cfg.cg_iters,
        cg_damping=cfg.cg_damping,
        line_search_steps=cfg.line_search_steps,
        line_search_decay=cfg.line_search_decay,
        kl_tolerance=cfg.kl_tolerance,
        normalize_advantage=False,  # done once per batch by compute_advantages
        fvp_sample_freq=cfg.fvp_sample_freq,
    )
    critic_loss = CriticLoss(critic, cost_critic)
    optimizer = make_optimizer({"critic": critic, "cost_critic": cost_critic}, cfg.lr)
    collector = make_run_collector(run, env, actor, device)
    run.attach(
        env,
        eval_env,
        policy=actor,
        modules={"value": critic, "cost_value": cost_critic},
        optimizers={"optimizer": optimizer},
    )

    with run:
        for batch in run.batches(collector):
            episodes = finished_episodes(batch)
            metrics = episodes.metrics("train")

            # 1. advantages and value targets for reward and cost
            compute_advantages(batch, gae, cost_gae)
            flat = batch.reshape(-1)

            # 2. one CPO step on the measured violation (J_C - d) / mean episode length
            if episodes.count:
                episode_cost = metrics["train/episode_cost"]
                metrics["train/violation"] = episode_cost - cfg.cost_limit
                episode_length = metrics["train/episode_length"]
                info = cpo_step(cpo, run, flat, episode_cost, episode_length)
                if info is not None:
                    accepted = int(info["acceptance_step"])
                    metrics.update(
                        {
                            "train/lambda": info["nu_star"],
                            "train/kl": info["kl"],
                            "train/cpo_case": info["optim_case"],
                            # backtracking steps: 0 = full step; line_search_steps = rejected
                            "train/cpo_line_search_steps": accepted - 1
                            if accepted
                            else cfg.line_search_steps,
                        }
                    )

            # 3. critic regression on the targets
            update = minibatch_epochs(
                flat.select("observation", "value_target", "cost_value_target"),
                critic_loss,
                optimizer,
                update_iters=cfg.update_iters,
                minibatch_size=cfg.minibatch_size,
                guard=run.guard,
                max_grad_norm=cfg.max_grad_norm,
            )
            update.pop("grad_norm", None)  # train/grad_norm is the policy's; CPO has no SGD step
            run.end_epoch(batch, {**metrics, **train_metrics(update), "train/lr": cfg.lr})
    return run.run_dir


def cpo_step(cpo: CPOUpdate, run: TrainingRun, flat, episode_cost, episode_length):
    """``cpo.step`` under the run's NaN guard: ``None`` if a non-finite step was skipped."""
    try:
        return cpo.step(flat, episode_cost=episode_cost, episode_length=episode_length)
    except ValueError as err:
        if "non-finite" not in str(err):
            raise
        if run.guard.nan_policy == "raise":
            raise NonFiniteError(f"{err} in the CPO step (nan_policy=raise)") from None
        run.guard.skipped += 1
        return None


@accept_renamed_keys
@hydra.main(config_path=str(CONFIG_DIR), config_name="cpo", version_base=None)
@run_cli(schema=SCHEMA, rules=RULES)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
