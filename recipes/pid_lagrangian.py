"""PID-Lagrangian PPO (Stooke et al. 2020; OmniSafe ``CPPOPID``) on Safety-Gymnasium.

    python recipes/pid_lagrangian.py env_id=SafetyHalfCheetahVelocity-v1 total_steps=1000000

Each epoch, on a fresh batch of ``steps_per_epoch`` env steps:

1. a PID controller sets the multiplier from the *measured* constraint violation
   :math:`\\Delta = J_C - d`, with :math:`J_C` the mean cost of the episodes that finished in
   the batch (:class:`~cmo_rl.objectives.PIDLagrangian`):

   .. math::

       I \\leftarrow (I + K_I \\Delta)_+, \\quad P \\leftarrow \\alpha_p P + (1-\\alpha_p)\\Delta,
       \\quad C \\leftarrow \\alpha_d C + (1-\\alpha_d) J_C, \\quad
       \\lambda = [K_P P + I + K_D (C - C_{t-D})_+]_0^{\\lambda_{max}}

2. GAE on reward and on cost gives :math:`A_R, A_C` and the critics' targets;
3. ``update_iters`` passes of minibatch PPO on the penalised advantage
   :math:`A_L = (A_R - \\lambda A_C) / (1 + \\lambda)` plus both critic losses, stopping early
   when :math:`KL(\\pi_{old} \\| \\pi_\\theta) >` ``target_kl``.

The loop is :func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`, shared with
``recipes/ppo_lagrangian.py``; this script supplies the multiplier (:func:`make_multiplier`) and
its update with the PID terms as metrics (:func:`pid_update`).
Config: ``recipes/config/pid_lagrangian.yaml``; run directory layout, metric names and
checkpoints: ``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cmo_rl.config import run_cli
from cmo_rl.objectives import PIDLagrangian
from cmo_rl.training.guard import exit_on_nonfinite
from cmo_rl.training.lagrangian_ppo import train_lagrangian_ppo
from cmo_rl.training.schema import PID, PPO, recipe_schema

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(PPO, PID)


def make_multiplier(cfg: DictConfig, device: torch.device) -> PIDLagrangian:
    """The PID controller of :math:`\\lambda` from the ``pid_*`` and ``lambda_*`` keys."""
    return PIDLagrangian(
        cfg.cost_limit,
        kp=cfg.pid_kp,
        ki=cfg.pid_ki,
        kd=cfg.pid_kd,
        d_delay=cfg.pid_d_delay,
        pid_delta_p_ema_alpha=cfg.pid_delta_p_ema_alpha,
        pid_delta_d_ema_alpha=cfg.pid_delta_d_ema_alpha,
        sum_norm=False,  # the loss already divides by 1 + lambda; this enables lambda_max
        penalty_max=cfg.lambda_max,
        lagrangian_multiplier_init=cfg.lambda_init,
        device=device,
    )


def pid_update(pid: PIDLagrangian, episode_cost: float) -> dict[str, float]:
    """One PID update on :math:`J_C`; returns its terms ``train/pid_p``, ``train/pid_i``,
    ``train/pid_d``: :math:`K_P P`, :math:`I`, :math:`K_D (C - C_{t-D})_+` (their sum is
    :math:`\\lambda` before its projection)."""
    before = pid.state()
    pid.update(episode_cost)
    oldest = before["cost_d_history"][before["history_index"]]
    return {
        "train/pid_p": float(pid.kp * pid.delta_p),
        "train/pid_i": float(pid.integral),
        "train/pid_d": float(pid.kd * (pid.cost_d - oldest).clamp_min(0.0)),
    }


def train(cfg: DictConfig) -> Path:
    """Train PID-Lagrangian PPO with ``cfg`` (validated); returns the run directory."""
    return train_lagrangian_ppo(
        cfg, recipe="pid_lag", make_multiplier=make_multiplier, update_multiplier=pid_update
    )


@hydra.main(config_path=str(CONFIG_DIR), config_name="pid_lagrangian", version_base=None)
@run_cli(schema=SCHEMA)
def main(cfg: DictConfig) -> None:
    with exit_on_nonfinite():
        train(cfg)


if __name__ == "__main__":
    main()
