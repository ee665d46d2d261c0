"""PPO-Lagrangian with a learned dual rule for the multiplier, on Safety-Gymnasium.

    python recipes/meta_lagrangian.py rule=<name> env_id=SafetyHalfCheetahVelocity-v1 total_steps=1000000

The loop is PID-Lag's (:func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`, or the
population engine with ``seeds=[...]``); only the multiplier differs. Each epoch:

1. the learned rule (:class:`~cmo_rl.objectives.learned_dual.LearnedLagrangian`) sets
   :math:`\\lambda` from the measured violation :math:`\\Delta = J_C - d`: a PID controller
   with meta-learned gains, filters and offset, plus an MLP over the violation, its filtered
   proportional and derivative terms, the integral, the previous :math:`\\lambda` and the
   training progress;
2. GAE on reward and on cost gives :math:`A_R, A_C` and the critics' targets;
3. ``update_iters`` passes of minibatch PPO on :math:`A_L = (A_R - \\lambda A_C) / (1 + \\lambda)`.

With ``meta_lr > 0`` the rule also learns *online* (MetaL-style, :mod:`cmo_rl.meta.online`):
before step 1 of each epoch its meta-parameters take one Adam step along the meta-gradient of
this batch's :math:`J_R - \\mu (J_C - d)^+` (``mu``) through the previous epoch's
:math:`\\lambda`; the run directory then gets the rule it ended with (``rule.pt``, usable as
``rule=<run dir>``; with ``seeds=[...]`` every learner's rule learns on its own and each run
directory gets its rule).

``rule=`` names a shipped rule (:func:`cmo_rl.pretrained.available`), a rule file or the run
directory of an ES meta-training (``cmo meta_algorithm=es``); ``rule=null`` is a fresh rule,
which equals PID-Lag. Config: ``recipes/config/meta_lagrangian.yaml``; run directory layout,
metric names (``train/rule_correction`` beside PID-Lag's ``train/pid_*``) and checkpoints:
``docs/metrics.md``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cmo_rl.lifecycle import accept_renamed_keys, run_cli
from cmo_rl.meta_online import export_rule, make_rule_learner
from cmo_rl.objectives.learned_dual import learned_update
from cmo_rl.population.train import train_seeds
from cmo_rl.training.lagrangian_ppo import make_learned_multiplier
from cmo_rl.training.schema import LEARNED, PPO, RULES, recipe_schema

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SCHEMA = recipe_schema(PPO, LEARNED)


def train(cfg: DictConfig) -> Path | list[Path]:
    """Train PPO-Lagrangian with the learned rule of ``cfg`` (validated); returns the run
    directory (one per seed with ``seeds=[...]``). With ``meta_lr > 0`` the rule learns online
    and the run directory gets the rule it ended with (``rule.pt``)."""
    online = float(cfg.meta_lr) > 0
    run_dir = train_seeds(
        cfg,
        recipe="meta_lag",
        make_multiplier=make_learned_multiplier,
        update_multiplier=learned_update,
        make_rule_learner=make_rule_learner if online else None,
    )
    if online:
        for one in run_dir if isinstance(run_dir, list) else [run_dir]:
            print(f"learned rule: {export_rule(one)}")
    return run_dir


@accept_renamed_keys
@hydra.main(config_path=str(CONFIG_DIR), config_name="meta_lagrangian", version_base=None)
@run_cli(schema=SCHEMA, rules=RULES)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
