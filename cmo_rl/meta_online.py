"""Online meta-gradient of the lambda rule as a program: the meta-Lagrangian recipe's hooks.

The maths is :mod:`cmo_rl.meta.online` (:class:`~cmo_rl.meta.online.OnlineRuleLearner`); this
module joins it to the PPO-Lagrangian learner of :mod:`cmo_rl.training` (the program layer,
like :mod:`cmo_rl.meta_es`):

- :func:`make_rule_learner` is ``recipes/meta_lagrangian.py``'s ``make_rule_learner``: with
  ``meta_lr > 0`` the run's rule takes one meta-gradient step per epoch (objective
  :math:`J_R - \\mu (J_C - d)^+`, ``mu``);
- :func:`export_rule` writes the rule a finished run ended with as ``rule.pt`` (the format of
  :mod:`cmo_rl.pretrained`), so ``rule=<run dir>`` starts another run from it (on the same or
  another task: carrying a rule through tasks is a chain of such runs).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cmo_rl.meta.online import OnlineRuleLearner
from cmo_rl.objectives.learned_dual import LearnedLagrangian

__all__ = ["export_rule", "make_rule_learner"]


def make_rule_learner(
    cfg: DictConfig, rule: nn.Module, actor: nn.Module
) -> OnlineRuleLearner | None:
    """The recipe's online learner of ``rule`` (``meta_lr``, ``mu``); ``None`` when
    ``meta_lr`` is 0 (the rule stays frozen).

    Examples:
        >>> from cmo_rl.meta.functional import _example_rollout
        >>> actor, _ = _example_rollout()
        >>> rule = LearnedLagrangian(1.0, hidden=0)
        >>> make_rule_learner(DictConfig({"meta_lr": 0.0, "mu": 1.0}), rule, actor) is None
        True
        >>> make_rule_learner(DictConfig({"meta_lr": 0.01, "mu": 1.0}), rule, actor).mu
        1.0
    """
    if not float(cfg.meta_lr) > 0:
        return None
    if not isinstance(rule, LearnedLagrangian):
        raise TypeError(f"an online rule learner needs a LearnedLagrangian, got {type(rule)}")
    return OnlineRuleLearner(rule, actor, meta_lr=float(cfg.meta_lr), mu=float(cfg.mu))


def export_rule(run_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write the rule of a meta-Lagrangian run's newest checkpoint to ``run_dir/rule.pt``
    (provenance: the run's command, task, cost limit, env steps, commit, plus ``provenance``).

    Examples:
        >>> import tempfile
        >>> from cmo_rl import pretrained
        >>> from cmo_rl.training.lagrangian_ppo import make_learned_multiplier
        >>> from cmo_rl.objectives.learned_dual import learned_update
        >>> from cmo_rl.training.lagrangian_ppo import train_lagrangian_ppo
        >>> yaml = Path(__file__).resolve().parents[1] / "recipes" / "config" / "meta_lagrangian.yaml"
        >>> cfg = OmegaConf.merge(OmegaConf.load(yaml), {"env_id": "MockCMDP-v0",
        ...     "episode_length": 25, "steps_per_epoch": 100, "total_steps": 300, "num_envs": 2,
        ...     "hidden_layers": [8], "update_iters": 1, "eval_episodes": 1, "cost_limit": 1.0,
        ...     "rule_hidden": 0, "meta_lr": 0.1, "progress": False, "run_root": tempfile.mkdtemp()})
        >>> for hydra_only in ("defaults", "hydra"):
        ...     _ = cfg.pop(hydra_only)
        >>> run_dir = train_lagrangian_ppo(cfg, recipe="meta_lag",
        ...     make_multiplier=make_learned_multiplier, update_multiplier=learned_update,
        ...     make_rule_learner=make_rule_learner)  # doctest: +ELLIPSIS
        run directory: ...
        finished: ...
        >>> info = pretrained.describe(export_rule(run_dir))
        >>> info["provenance"]["tasks"], info["provenance"]["env_steps"]
        (['MockCMDP-v0'], 300)
    """
    from cmo_rl import pretrained
    from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint
    from cmo_rl.training.lagrangian_ppo import make_learned_multiplier

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"{run_dir} has no readable checkpoint to export a rule from")
    state = load_checkpoint(ckpt)
    rule = make_learned_multiplier(cfg, torch.device("cpu"))
    rule.load_state_dict(state["multiplier"])
    spe = int(cfg.steps_per_epoch)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "tasks": [str(cfg.env_id)],
        "cost_limit": float(cfg.cost_limit),
        "env_steps": int(state["epoch"]) * spe,
        "meta_algorithm": "online",
        "meta_lr": float(cfg.meta_lr),
        "mu": float(cfg.mu),
        "commit": pretrained.current_commit(),
        **(provenance or {}),
    }
    return pretrained.save(rule, run_dir / "rule.pt", record)
