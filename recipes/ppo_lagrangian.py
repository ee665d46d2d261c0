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

The loop is :func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`, shared with
``recipes/pid_lagrangian.py``; this script supplies the multiplier
(:func:`~cmo_rl.training.lagrangian_ppo.make_lagrange_multiplier`).
Config: ``recipes/config/ppo_lagrangian.yaml``; run directory layout, metric names and
checkpoints: ``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cmo_rl.lifecycle import accept_renamed_keys, run_cli
from cmo_rl.population.train import train_seeds
from cmo_rl.training.lagrangian_ppo import make_lagrange_multiplier
from cmo_rl.training.schema import LAGRANGE, PPO, RULES, recipe_schema

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(PPO, LAGRANGE)


def train(cfg: DictConfig) -> Path | list[Path]:
    """Train PPO-Lagrangian with ``cfg`` (validated); returns the run directory (one per seed
    with ``seeds=[...]``)."""
    return train_seeds(cfg, recipe="ppo_lag", make_multiplier=make_lagrange_multiplier)


@accept_renamed_keys
@hydra.main(config_path=str(CONFIG_DIR), config_name="ppo_lagrangian", version_base=None)
@run_cli(schema=SCHEMA, rules=RULES)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
