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
``recipes/ppo_lagrangian.py``; this script supplies the multiplier
(:func:`~cmo_rl.training.lagrangian_ppo.make_pid_multiplier`) and its update with the PID terms
as metrics (:func:`~cmo_rl.training.lagrangian_ppo.pid_update`), library functions that the
meta-test's baseline comparison uses too.
Config: ``recipes/config/pid_lagrangian.yaml``; run directory layout, metric names and
checkpoints: ``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cmo_rl.lifecycle import accept_renamed_keys, run_cli
from cmo_rl.population.train import train_seeds
from cmo_rl.training.lagrangian_ppo import make_pid_multiplier, pid_update
from cmo_rl.training.schema import PID, PPO, RULES, recipe_schema

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(PPO, PID)


def train(cfg: DictConfig) -> Path | list[Path]:
    """Train PID-Lagrangian PPO with ``cfg`` (validated); returns the run directory (one per
    seed with ``seeds=[...]``)."""
    return train_seeds(
        cfg, recipe="pid_lag", make_multiplier=make_pid_multiplier, update_multiplier=pid_update
    )


@accept_renamed_keys
@hydra.main(config_path=str(CONFIG_DIR), config_name="pid_lagrangian", version_base=None)
@run_cli(schema=SCHEMA, rules=RULES)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
