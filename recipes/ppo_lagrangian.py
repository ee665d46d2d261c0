"""PPO-Lagrangian (Ray et al. 2019; OmniSafe ``PPOLag``) on Safety-Gymnasium.

    python recipes/ppo_lagrangian.py env_id=SafetyHalfCheetahVelocity-v1 total_steps=1000000

Each epoch, on a fresh batch of ``steps_per_epoch`` env steps:

1. the multiplier takes one (Adam) ascent step on the *measured* constraint violation, with
   :math:`J_C` the mean cost of the episodes that finished in the batch:
   :math:`\\lambda \\leftarrow [\\lambda + \\eta_\\lambda (J_C - d)]_+`;
2. GAE on reward and on cost gives :math:`A_R, A_C` and the critics' targets;
3. ``update_iters`` passes of minibatch PPO on the penalised advantage
   :math:`A_L = (A_R - \\lambda A_C) / (1 + \\lambda)` plus both critic losses, stopping early
   when :math:`KL(\\pi_{old} \\| \\pi_\\theta) >` ``target_kl``.

Config: ``recipes/config/ppo_lagrangian.yaml``; run directory layout, metric names and
checkpoints: ``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cmo_rl.config import run_cli
from cmo_rl.objectives import LagrangeMultiplier, LagrangianPPOLoss
from cmo_rl.training.collection import finished_episodes, make_collector
from cmo_rl.training.guard import exit_on_nonfinite
from cmo_rl.training.onpolicy import (
    approx_kl,
    compute_advantages,
    linear_lr,
    make_optimizer,
    minibatch_epochs,
    set_lr,
    train_metrics,
)
from cmo_rl.training.parallel import worker_spec
from cmo_rl.training.run import TrainingRun
from cmo_rl.training.schema import LAGRANGE, PPO, recipe_schema
from cmo_rl.training.setup import (
    make_agent,
    make_envs,
    make_estimators,
    seed_everything,
    set_torch_threads,
)

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(PPO, LAGRANGE)


def train(cfg: DictConfig) -> Path:
    """Train PPO-Lagrangian with ``cfg`` (validated); returns the run directory."""
    run = TrainingRun(cfg, recipe="ppo_lag")
    cfg = run.cfg  # on resume: the stored config (plus allowed changes)
    device = torch.device(cfg.device)
    set_torch_threads(cfg.torch_threads)
    seed_everything(cfg.seed)

    env, eval_env = make_envs(cfg)
    run.check_env(env)
    actor, critic, cost_critic = make_agent(cfg, env, device)
    gae, cost_gae = make_estimators(cfg, critic, cost_critic, device)
    multiplier = LagrangeMultiplier(
        cfg.cost_limit,
        init=cfg.lambda_init,
        lr=cfg.lambda_lr,
        optimizer=cfg.lambda_optimizer,
        device=device,
    )
    loss_module = LagrangianPPOLoss(
        actor,
        critic,
        cost_critic,
        clip_epsilon=cfg.clip_epsilon,
        entropy_coeff=cfg.entropy_coeff,
        normalize_advantage=False,  # done once per batch by compute_advantages
        multiplier=multiplier,
    )
    optimizer = make_optimizer(
        {"actor": actor, "critic": critic, "cost_critic": cost_critic}, cfg.lr
    )
    collector = make_collector(
        env,
        actor,
        steps_per_epoch=cfg.steps_per_epoch,
        num_epochs=run.num_epochs,
        seed=cfg.seed,
        first_epoch=run.epoch,
        device=device,
        workers=worker_spec(cfg),  # collector.backend=multi_sync|ray: worker processes
    )
    run.attach(
        env,
        eval_env,
        policy=actor,
        modules={"value": critic, "cost_value": cost_critic, "multiplier": multiplier},
        optimizers={"optimizer": optimizer},
    )

    with run:
        for batch in run.batches(collector):
            # 1. multiplier step on the measured mean episode cost J_C
            episodes = finished_episodes(batch)
            metrics = episodes.metrics("train")
            if episodes.count:
                episode_cost = metrics["train/episode_cost"]
                multiplier.update(episode_cost)
                metrics["train/violation"] = episode_cost - cfg.cost_limit
            metrics["train/lambda"] = multiplier.value

            # 2. advantages and value targets for reward and cost
            compute_advantages(batch, gae, cost_gae)

            # 3. PPO passes on A_L = (A_R - lambda A_C) / (1 + lambda) with KL early stop
            lr = linear_lr(cfg.lr, run.epoch, run.num_epochs) if cfg.lr_decay else cfg.lr
            set_lr(optimizer, lr, group="actor")
            flat = batch.reshape(-1).select(*loss_module.in_keys)
            update = minibatch_epochs(
                flat,
                loss_module,
                optimizer,
                update_iters=cfg.update_iters,
                minibatch_size=cfg.minibatch_size,
                guard=run.guard,
                max_grad_norm=cfg.max_grad_norm,
                target_kl=cfg.target_kl if cfg.kl_early_stop else None,
                kl_fn=lambda flat=flat: approx_kl(actor, flat),
            )
            run.end_epoch(batch, {**metrics, **train_metrics(update), "train/lr": lr})
    return run.run_dir


@hydra.main(config_path=str(CONFIG_DIR), config_name="ppo_lagrangian", version_base=None)
@run_cli(schema=SCHEMA)
def main(cfg: DictConfig) -> None:
    with exit_on_nonfinite():
        train(cfg)


if __name__ == "__main__":
    main()
