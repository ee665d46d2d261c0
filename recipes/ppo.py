"""Unconstrained PPO (Schulman et al. 2017; OmniSafe ``PPO``) on Safety-Gymnasium: the reference
a constrained method is compared against.

    python recipes/ppo.py env_id=SafetyPointGoal1-v0 total_steps=1000000

The loop of ``recipes/ppo_lagrangian.py`` (:func:`cmo_rl.training.lagrangian_ppo.
train_lagrangian_ppo`) with the multiplier held at :math:`\\lambda = 0`, so the PPO advantage is
:math:`A_L = (A_R - 0 \\cdot A_C) / (1 + 0) = A_R`. The cost is still measured (episode costs,
``train/violation`` against ``cost_limit``) and the cost critic still fitted, so runs log the same
metrics as the constrained recipes. The same updates as ``recipes/compare.py``'s ``ppo`` method
(``ppo_lagrangian`` with ``init_lambda=0`` and an unreachable ``cost_limit``), with the real limit
in the logs. Config: ``recipes/config/ppo.yaml``; metrics: ``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cmo_rl.lifecycle import accept_renamed_keys, run_cli
from cmo_rl.objectives import LagrangeMultiplier
from cmo_rl.population.train import train_seeds
from cmo_rl.training.schema import PPO, RULES, recipe_schema

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(PPO)


def make_multiplier(cfg: DictConfig, device: torch.device) -> LagrangeMultiplier:
    """:math:`\\lambda = 0`, never updated (:func:`hold_at_zero`)."""
    return LagrangeMultiplier(cfg.cost_limit, init_lambda=0.0, device=device)


def hold_at_zero(multiplier: LagrangeMultiplier, episode_cost: float) -> dict[str, float]:
    """No dual step: the measured cost is logged, not penalised."""
    return {}


def train(cfg: DictConfig) -> Path | list[Path]:
    """Train unconstrained PPO with ``cfg`` (validated); returns the run directory (one per seed
    with ``seeds=[...]``)."""
    return train_seeds(
        cfg, recipe="ppo", make_multiplier=make_multiplier, update_multiplier=hold_at_zero
    )


@accept_renamed_keys
@hydra.main(config_path=str(CONFIG_DIR), config_name="ppo", version_base=None)
@run_cli(schema=SCHEMA, rules=RULES)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
