"""The training loop of the PPO-Lagrangian recipes, written once for any multiplier rule.

``recipes/ppo_lagrangian.py`` (:class:`~cmo_rl.objectives.LagrangeMultiplier`, run directory
``ppo_lag``) and ``recipes/pid_lagrangian.py`` (:class:`~cmo_rl.objectives.PIDLagrangian`,
``pid_lag``) are the same PPO loop and differ only in how :math:`\\lambda` follows the measured
violation. So the loop lives here, in :func:`train_lagrangian_ppo`, read top to bottom like a
recipe, and each recipe script passes its multiplier: ``make_multiplier(cfg, device)`` builds it
(:func:`make_lagrange_multiplier`, :func:`make_pid_multiplier`,
:func:`make_learned_multiplier` for ``recipes/meta_lagrangian.py``'s learned rule), ``update_multiplier(multiplier,
J_C)`` steps it once per epoch and returns its extra metrics (:func:`step_multiplier`, none, by
default; :func:`pid_update`: the PID's ``train/pid_p``, ``_i``, ``_d``).

Each epoch, on a fresh batch of ``steps_per_epoch`` env steps:

1. GAE on reward and on cost gives :math:`A_R, A_C` and the critics' targets;
2. the multiplier is updated from the *measured* mean cost :math:`J_C` of the episodes that
   finished in the batch (``train/violation`` is :math:`J_C - d`, ``train/lambda`` the new
   :math:`\\lambda`); with an online rule learner (``make_rule_learner``, e.g.
   :class:`cmo_rl.meta.online.OnlineRuleLearner`) the rule first takes its meta-gradient step,
   which reads this batch's raw advantages;
3. the advantages are normalised over the batch, then ``update_iters`` passes of minibatch PPO
   on the penalised advantage :math:`A_L = (A_R - \\lambda A_C) / (1 + \\lambda)` plus both
   critic losses, stopping early when :math:`KL(\\pi_{old} \\| \\pi_\\theta) >` ``target_kl``;
   with ``primal_rule`` (a :class:`~cmo_rl.objectives.learned_primal.LearnedPrimalRule` file)
   the actor's steps are the learned rule's instead of Adam's, told the run's progress and
   :math:`\\lambda` before the passes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torch import nn

from cmo_rl.objectives import LagrangeMultiplier, LagrangianPPOLoss, PIDLagrangian
from cmo_rl.objectives.learned_dual import LearnedLagrangian
from cmo_rl.objectives.learned_primal import LearnedAdam, LearnedPrimalRule, load_primal_rule
from cmo_rl.seeding import seed_everything
from cmo_rl.training.collection import finished_episodes
from cmo_rl.training.onpolicy import (
    approx_kl,
    compute_advantages,
    linear_lr,
    make_optimizer,
    minibatch_epochs,
    normalize_batch_advantages,
    set_lr,
    train_metrics,
)
from cmo_rl.training.run import TrainingRun
from cmo_rl.training.setup import (
    make_agent,
    make_envs,
    make_estimators,
    make_run_collector,
    set_torch_threads,
)

__all__ = [
    "make_lagrange_multiplier",
    "make_learned_multiplier",
    "make_pid_multiplier",
    "make_primal_rule",
    "multiplier_step",
    "pid_update",
    "step_multiplier",
    "train_lagrangian_ppo",
]

#: ``make_multiplier(cfg, device)``: the recipe's multiplier module (``update``, ``value``).
MultiplierFactory = Callable[[DictConfig, torch.device], nn.Module]
#: ``update_multiplier(multiplier, episode_cost)``: one update on :math:`J_C`, extra metrics.
MultiplierUpdate = Callable[[nn.Module, float], dict[str, float]]


class RuleLearner(Protocol):
    """What ``make_rule_learner`` returns: a module (checkpointed as ``rule_learner``) with an
    ``optimizer`` (checkpointed as ``rule_optimizer``) whose ``update(batch, J_C,
    update_multiplier)`` replaces the epoch's multiplier update (e.g.
    :class:`cmo_rl.meta.online.OnlineRuleLearner`)."""

    optimizer: torch.optim.Optimizer

    def update(
        self, batch: TensorDictBase, episode_cost: float, update_multiplier: MultiplierUpdate
    ) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...


#: ``make_rule_learner(cfg, multiplier, actor)``: the online learner of the multiplier's rule,
#: or ``None`` (the rule stays as built).
RuleLearnerFactory = Callable[[DictConfig, nn.Module, nn.Module], "RuleLearner | None"]
#: ``cfg -> LearnedPrimalRule | None``: the learned primal rule of a learner (``None``: Adam).
PrimalRuleFactory = Callable[[DictConfig], "LearnedPrimalRule | None"]


def step_multiplier(multiplier: nn.Module, episode_cost: float) -> dict[str, float]:
    """The default ``update_multiplier``: ``multiplier.update(episode_cost)``, no extra metrics.

    Examples:
        >>> from cmo_rl.objectives import LagrangeMultiplier
        >>> lam = LagrangeMultiplier(cost_limit=10.0, init_lambda=1.0, lr=0.1, optimizer="sgd")
        >>> step_multiplier(lam, 15.0), round(lam.value.item(), 3)  # 1 + 0.1 * (15 - 10)
        ({}, 1.5)
    """
    multiplier.update(episode_cost)
    return {}


def multiplier_step(
    batch: TensorDictBase,
    multiplier: nn.Module,
    update_multiplier: MultiplierUpdate,
    cost_limit: float,
    learner: RuleLearner | None = None,
) -> dict[str, Any]:
    """Step 2 of an epoch, for one learner: the ``train/`` metrics of the episodes that
    finished in ``batch`` and, if any did, one multiplier step on their mean cost :math:`J_C`
    (``update_multiplier``; with an online ``learner``, its meta-step and then the rule's step),
    ``train/violation`` (:math:`J_C - d`) and the step's own metrics; ``train/lambda`` always.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0, max_episode_steps=5)
        >>> actor, _, _ = actor_critic_from_env(env, hidden_layers=(8,))
        >>> batch = env.rollout(5, actor)
        >>> lam = LagrangeMultiplier(cost_limit=1.0, init_lambda=1.0, lr=0.1, optimizer="sgd")
        >>> row = multiplier_step(batch, lam, step_multiplier, cost_limit=1.0)
        >>> row["train/num_episodes"], row["train/violation"] == row["train/episode_cost"] - 1.0
        (2, True)
        >>> round(float(row["train/lambda"]), 5) == round(1.0 + 0.1 * row["train/violation"], 5)
        True
    """
    episodes = finished_episodes(batch)
    metrics = episodes.metrics("train")
    if episodes.count:
        episode_cost = metrics["train/episode_cost"]
        if learner is not None:  # the rule's meta-step, then its step
            extra = learner.update(batch, episode_cost, update_multiplier)
        else:
            extra = update_multiplier(multiplier, episode_cost)
        metrics["train/violation"] = episode_cost - float(cost_limit)
        metrics.update(extra)
    metrics["train/lambda"] = multiplier.value
    return metrics


def make_lagrange_multiplier(cfg: DictConfig, device: torch.device) -> LagrangeMultiplier:
    """PPO-Lag's multiplier: :math:`\\lambda` and its own optimizer (``lambda_optimizer``, step
    ``lambda_lr``) on :math:`J_C - d`, starting at ``init_lambda``.

    Examples:
        >>> cfg = DictConfig({"cost_limit": 10.0, "init_lambda": 1.0, "lambda_lr": 0.1,
        ...                   "lambda_optimizer": "sgd"})
        >>> lam = make_lagrange_multiplier(cfg, torch.device("cpu"))
        >>> step_multiplier(lam, 15.0), round(lam.value.item(), 3)  # 1 + 0.1 * (15 - 10)
        ({}, 1.5)
    """
    return LagrangeMultiplier(
        cfg.cost_limit,
        init_lambda=cfg.init_lambda,
        lr=cfg.lambda_lr,
        optimizer=cfg.lambda_optimizer,
        device=device,
    )


def make_pid_multiplier(cfg: DictConfig, device: torch.device) -> PIDLagrangian:
    """PID-Lag's multiplier: the PID controller of :math:`\\lambda` from the ``pid_*`` and
    ``lambda_*`` keys (``sum_norm=False``: the loss already divides by ``1 + lambda``, which
    makes ``lambda_max`` a bound on :math:`\\lambda` itself).

    Examples:
        >>> cfg = DictConfig({"cost_limit": 10.0, "pid_kp": 0.1, "pid_ki": 0.01, "pid_kd": 0.01,
        ...     "pid_d_delay": 2, "pid_delta_p_ema_alpha": 0.9, "pid_delta_d_ema_alpha": 0.5,
        ...     "lambda_max": 100.0, "init_lambda": 0.001})
        >>> pid = make_pid_multiplier(cfg, torch.device("cpu"))
        >>> {k: round(v, 3) for k, v in pid_update(pid, 20.0).items()}, round(pid.value.item(), 3)
        ({'train/pid_p': 0.1, 'train/pid_i': 0.101, 'train/pid_d': 0.1}, 0.301)
    """
    return PIDLagrangian(
        cfg.cost_limit,
        kp=cfg.pid_kp,
        ki=cfg.pid_ki,
        kd=cfg.pid_kd,
        d_delay=cfg.pid_d_delay,
        pid_delta_p_ema_alpha=cfg.pid_delta_p_ema_alpha,
        pid_delta_d_ema_alpha=cfg.pid_delta_d_ema_alpha,
        sum_norm=False,
        penalty_max=cfg.lambda_max,
        init_lambda=cfg.init_lambda,
        device=device,
    )


def make_learned_multiplier(cfg: DictConfig, device: torch.device) -> LearnedLagrangian:
    """The meta-Lagrangian recipe's multiplier: the learned dual rule ``cfg.rule`` (a shipped
    name of :mod:`cmo_rl.pretrained`, a rule file or an ES run directory) for this run's
    ``cost_limit`` and number of epochs; ``rule=null``: a fresh rule, which is PID-Lag with the
    ``pid_*`` keys (its MLP of ``rule_hidden`` units starts at zero).

    Examples:
        >>> cfg = DictConfig({"rule": None, "rule_hidden": 4, "cost_limit": 10.0,
        ...     "pid_kp": 0.1, "pid_ki": 0.01, "pid_kd": 0.01, "pid_d_delay": 2,
        ...     "pid_delta_p_ema_alpha": 0.9, "pid_delta_d_ema_alpha": 0.5, "lambda_max": 100.0,
        ...     "init_lambda": 0.001, "total_steps": 400, "steps_per_epoch": 100})
        >>> rule = make_learned_multiplier(cfg, torch.device("cpu"))
        >>> rule.horizon, round(float(rule.update(20.0)), 6)  # 4 epochs; = make_pid_multiplier
        (4, 0.301)
    """
    from cmo_rl import pretrained  # the package data of shipped rules

    horizon = max(int(cfg.total_steps) // int(cfg.steps_per_epoch), 1)
    if cfg.rule:
        return pretrained.load(cfg.rule, cost_limit=cfg.cost_limit, horizon=horizon, device=device)
    return LearnedLagrangian(
        cfg.cost_limit,
        kp=cfg.pid_kp,
        ki=cfg.pid_ki,
        kd=cfg.pid_kd,
        d_delay=cfg.pid_d_delay,
        delta_p_ema_alpha=cfg.pid_delta_p_ema_alpha,
        delta_d_ema_alpha=cfg.pid_delta_d_ema_alpha,
        init_lambda=cfg.init_lambda,
        lambda_max=cfg.lambda_max,
        hidden=cfg.rule_hidden,
        horizon=horizon,
        device=device,
    )


def make_primal_rule(cfg: DictConfig) -> LearnedPrimalRule | None:
    """The learned primal rule of ``cfg.primal_rule`` (a rule file), which replaces the actor's
    Adam; ``None`` (Adam) when the config has no such key or it is null.

    Examples:
        >>> make_primal_rule(DictConfig({"primal_rule": None})) is None
        True
    """
    path = cfg.get("primal_rule")
    return load_primal_rule(path) if path else None


def pid_update(pid: PIDLagrangian, episode_cost: float) -> dict[str, float]:
    """PID-Lag's ``update_multiplier``: one PID update on :math:`J_C`; returns its terms
    ``train/pid_p``, ``train/pid_i``, ``train/pid_d``: :math:`K_P P`, :math:`I`,
    :math:`K_D (C - C_{t-D})_+` (their sum is :math:`\\lambda` before its projection).

    Examples:
        >>> pid = PIDLagrangian(cost_limit=10.0, kp=1.0, ki=0.0, kd=0.0, pid_delta_p_ema_alpha=0.0,
        ...                     sum_norm=False, init_lambda=0.0)
        >>> pid_update(pid, 12.0)["train/pid_p"], pid.value.item()  # K_P (J_C - d)
        (2.0, 2.0)
    """
    before = pid.state()
    pid.update(episode_cost)
    oldest = before["cost_d_history"][before["history_index"]]
    return {
        "train/pid_p": float(pid.kp * pid.delta_p),
        "train/pid_i": float(pid.integral),
        "train/pid_d": float(pid.kd * (pid.cost_d - oldest).clamp_min(0.0)),
    }


def train_lagrangian_ppo(
    cfg: DictConfig,
    *,
    recipe: str,
    make_multiplier: MultiplierFactory,
    update_multiplier: MultiplierUpdate = step_multiplier,
    make_rule_learner: RuleLearnerFactory | None = None,
) -> Path:
    """Train PPO on the Lagrangian advantage with ``cfg`` (validated); returns the run directory.

    Args:
        cfg: a config of :func:`~cmo_rl.training.schema.recipe_schema` ``(PPO, ...)`` plus
            whatever ``make_multiplier`` reads.
        recipe: the run-directory name (``"ppo_lag"``, ``"pid_lag"``).
        make_multiplier: builds the multiplier from the effective config (the stored one on
            resume) on the policy's device; it is checkpointed as ``multiplier``.
        update_multiplier: one multiplier step on the epoch's mean episode cost :math:`J_C`
            (only in epochs where episodes finished); its dict is logged with the epoch.
        make_rule_learner: builds the online learner of the multiplier's rule (see
            :class:`RuleLearner`) from the config, the multiplier and the actor; ``None`` (or a
            factory that returns ``None``): the rule stays as built.

    Metric names and run layout: ``docs/metrics.md``.

    Examples:
        >>> import tempfile
        >>> import pandas as pd
        >>> from omegaconf import OmegaConf
        >>> from cmo_rl.objectives import LagrangeMultiplier
        >>> yaml = Path(__file__).resolve().parents[2] / "recipes" / "config" / "ppo_lagrangian.yaml"
        >>> cfg = OmegaConf.merge(OmegaConf.load(yaml), {
        ...     "env_id": "MockCMDP-v0", "episode_length": 25, "steps_per_epoch": 200,
        ...     "total_steps": 400, "hidden_layers": [8], "update_iters": 1, "eval_interval": 2,
        ...     "eval_episodes": 1, "cost_limit": 3.0, "progress": False,
        ...     "run_root": tempfile.mkdtemp()})
        >>> for hydra_only in ("defaults", "hydra"):
        ...     _ = cfg.pop(hydra_only)
        >>> def make(cfg, device):
        ...     return LagrangeMultiplier(cfg.cost_limit, init_lambda=0.5, lr=0.1, device=device)
        >>> def hold(multiplier, episode_cost):  # a fixed lambda: no update, one extra metric
        ...     return {"train/held": 1.0}
        >>> run_dir = train_lagrangian_ppo(cfg, recipe="fixed_lag", make_multiplier=make,
        ...                                update_multiplier=hold)  # doctest: +ELLIPSIS
        run directory: .../fixed_lag/MockCMDP-v0/...
        finished: .../fixed_lag/MockCMDP-v0/...
        >>> metrics = pd.read_csv(run_dir / "metrics.csv")
        >>> run_dir.parts[-3], metrics["train/lambda"].tolist(), metrics["train/held"].tolist()
        ('fixed_lag', [0.5, 0.5], [1.0, 1.0])
    """
    run = TrainingRun(cfg, recipe=recipe)
    cfg = run.cfg  # on resume: the stored config (plus allowed changes)
    device = torch.device(cfg.device)
    set_torch_threads(cfg.torch_threads)
    seed_everything(cfg.seed)

    env, eval_env = make_envs(cfg)
    run.check_env(env)
    actor, critic, cost_critic = make_agent(cfg, env, device)
    gae, cost_gae = make_estimators(cfg, critic, cost_critic, device)
    multiplier = make_multiplier(cfg, device)
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
        {"actor": actor, "critic": critic, "cost_critic": cost_critic},
        cfg.lr,
        primal_rule=make_primal_rule(cfg),
    )
    learner = make_rule_learner(cfg, multiplier, actor) if make_rule_learner else None
    collector = make_run_collector(run, env, actor, device)
    modules = {"value": critic, "cost_value": cost_critic, "multiplier": multiplier}
    optimizers = {"optimizer": optimizer}
    if learner is not None:
        modules["rule_learner"], optimizers["rule_optimizer"] = learner, learner.optimizer
    run.attach(env, eval_env, policy=actor, modules=modules, optimizers=optimizers)

    with run:
        for batch in run.batches(collector):
            # 1. advantages and value targets for reward and cost (raw: normalised in step 3)
            compute_advantages(batch, gae, cost_gae, normalize=False)

            # 2. multiplier update on the measured mean episode cost J_C
            metrics = multiplier_step(batch, multiplier, update_multiplier, cfg.cost_limit, learner)

            # 3. PPO passes on A_L = (A_R - lambda A_C) / (1 + lambda) with KL early stop
            normalize_batch_advantages(batch)
            lr = linear_lr(cfg.lr, run.epoch, run.num_epochs) if cfg.lr_decay else cfg.lr
            set_lr(optimizer, lr, group="actor")
            if isinstance(optimizer, LearnedAdam):  # the primal rule's context features
                optimizer.set_context(
                    progress=run.epoch / run.num_epochs, multiplier=float(multiplier.value)
                )
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
