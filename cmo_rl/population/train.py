"""The PPO-Lagrangian recipes' loop for several seeds at once: ``seeds=[0,1,2,3,4]``.

:func:`train_population` is :func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo` for
``P = len(seeds)`` learners in lockstep in one process. Learner ``p`` is the single-seed run
with ``seed=seeds[p]``: its own run directory (``metrics.csv``, TensorBoard, checkpoints,
plots, in the single run's format, so the comparison suite, plotting and ``resume=`` read it
as any run), built from the same objects in the same order inside its own RNG streams
(:class:`~cmo_rl.population.rng.LearnerRNG`). Each epoch:

1. collection: every learner's env stepped side by side, one vmapped policy forward per
   step (:class:`~cmo_rl.population.collection.PopulationCollector`);
2. GAE per learner with its own critics (one call each per epoch; raw advantages);
3. each learner's multiplier updated from its own measured :math:`J_C` (the recipe's
   ``update_multiplier`` on the learner's module: a few scalar operations per epoch), or,
   with an online rule learner per learner (``make_rule_learner``), that learner's
   meta-step and then its rule's step, on its own batch and actor; then the advantages
   normalised;
4. the PPO passes of all learners as one vmapped minibatch step
   (:class:`~cmo_rl.population.update.PopulationPPO`: per-learner Adam, learning rate,
   shuffles and KL early stop);
5. the learners' modules and Adam states brought up to date, and each run's epoch ended
   (log, evaluate, snapshot, checkpoint) inside its RNG streams, with Ctrl-C and SIGTERM
   held back until every member has ended the epoch (so all snapshots are of one epoch).

A population writes ``population.json`` (its seeds and run directories) into every member's
run directory; ``resume=`` any member (or ``latest``) continues the whole population.

**Equality with single runs.** With ``vectorize=False`` (each learner's own modules in
collection, the loss gradients computed learner after learner) every learner's metrics equal
its single-seed run's bit for bit on CPU. The default vmapped path sums matrix products in
another order (batched products instead of BLAS matrix-vector products), so values agree to
float32 rounding at first and drift apart as any two differently rounded RL runs do
(``tests/population/test_population_train.py`` states the tolerances).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cmo_rl.config import ConfigError
from cmo_rl.lifecycle.resume import locate_resume
from cmo_rl.lifecycle.signals import deferred_signals, raise_if_signalled
from cmo_rl.population.collection import PopulationCollector
from cmo_rl.population.learned_adam import StackedLearnedAdam
from cmo_rl.population.learners import LearnerNets, stack_learners, unstack_learners
from cmo_rl.population.loss import LossCoefficients
from cmo_rl.population.rng import LearnerRNG
from cmo_rl.population.update import BATCH_KEYS, PopulationPPO
from cmo_rl.training.lagrangian_ppo import (
    MultiplierFactory,
    MultiplierUpdate,
    PrimalRuleFactory,
    RuleLearnerFactory,
    make_primal_rule,
    multiplier_step,
    step_multiplier,
    train_lagrangian_ppo,
)
from cmo_rl.training.onpolicy import (
    compute_advantages,
    linear_lr,
    make_optimizer,
    normalize_batch_advantages,
    train_metrics,
)
from cmo_rl.training.run import TrainingRun
from cmo_rl.training.setup import make_agent, make_envs, make_estimators, set_torch_threads

__all__ = ["POPULATION_FILE", "population_seeds", "train_population", "train_seeds"]

#: Written into every member's run directory: ``{"seeds": [...], "run_dirs": [...]}``.
POPULATION_FILE = "population.json"


def population_seeds(cfg: DictConfig | dict, *, recipe: str) -> list[int] | None:
    """The seeds of the population ``cfg`` asks for: ``seeds`` when given, else (with
    ``resume=``) the seeds of the population the resumed run belongs to; ``None``: one run.

    Examples:
        >>> population_seeds({"seeds": [0, 1], "resume": None}, recipe="ppo_lag")
        [0, 1]
        >>> population_seeds({"seeds": None, "resume": None}, recipe="ppo_lag") is None
        True
    """
    if cfg.get("seeds") is not None:
        return [int(s) for s in cfg["seeds"]]
    if cfg.get("resume"):
        run_dir, _ = locate_resume(cfg["resume"], run_root=cfg["run_root"], program=recipe)
        index = run_dir / POPULATION_FILE
        if index.is_file():
            return [int(s) for s in json.loads(index.read_text())["seeds"]]
    return None


def _member_runs(
    cfg: DictConfig, recipe: str, seeds: list[int], *, distinct_seeds: bool = True
) -> list[TrainingRun]:
    """One :class:`TrainingRun` per seed: new runs, or the members of a resumed population."""
    requested = OmegaConf.to_container(cfg, resolve=True)
    progress = bool(requested.get("progress", True))
    if requested.get("resume"):
        named, ckpt = locate_resume(requested["resume"], run_root=cfg.run_root, program=recipe)
        index = json.loads((named / POPULATION_FILE).read_text())
        if requested.get("seeds") not in (None, index["seeds"]):
            raise ConfigError(
                [
                    f"resume: {named} belongs to the population seeds={index['seeds']}, "
                    f"not seeds={requested['seeds']}"
                ]
            )
        runs = []
        for p, (seed, run_dir) in enumerate(zip(index["seeds"], index["run_dirs"])):
            resume = str(ckpt) if Path(run_dir) == named and ckpt is not None else run_dir
            member = {
                **requested,
                "seed": seed,
                "seeds": index["seeds"],
                "resume": resume,
                "progress": progress and p == 0,
            }
            runs.append(TrainingRun(member, recipe=recipe))
        epochs = {run.epoch for run in runs}
        if len(epochs) > 1:
            where = ", ".join(f"{run.run_dir}: epoch {run.epoch}" for run in runs)
            raise ConfigError(
                [f"resume: the population's newest checkpoints are of different epochs ({where})"]
            )
        return runs
    if distinct_seeds and len(set(seeds)) != len(seeds):
        raise ConfigError([f"seeds: got {seeds}, each seed at most once"])
    return [
        TrainingRun({**requested, "seed": s, "progress": progress and p == 0}, recipe=recipe)
        for p, s in enumerate(seeds)
    ]


def _check_population_config(cfg: DictConfig) -> None:
    problems = []
    if str(cfg.device) != "cpu":
        problems.append(f"device: got {cfg.device!r}; a population (seeds=[...]) runs on cpu")
    collector = cfg.get("collector")
    if collector is not None and collector.get("backend", "sync") != "sync":
        problems.append(
            f"collector.backend: got {collector.backend!r}; a population (seeds=[...]) steps "
            "its learners' envs in this process (collector.backend=sync)"
        )
    if problems:
        raise ConfigError(problems)


def train_population(
    cfg: DictConfig,
    *,
    recipe: str,
    make_multiplier: MultiplierFactory,
    update_multiplier: MultiplierUpdate = step_multiplier,
    make_rule_learner: RuleLearnerFactory | None = None,
    make_primal_rule: PrimalRuleFactory = make_primal_rule,
    vectorize: bool = True,
    distinct_seeds: bool = True,
) -> list[Path]:
    """Train one learner per seed of ``cfg.seeds`` (or of the resumed population) in lockstep;
    returns the members' run directories.

    Args:
        cfg: a recipe config (as for ``train_lagrangian_ppo``) with ``seeds``; ``compile``
            compiles the minibatch step (:class:`~cmo_rl.population.update.PopulationPPO`).
        recipe: the run-directory name (``"ppo"``, ``"ppo_lag"``, ``"pid_lag"``).
        make_multiplier: as for ``train_lagrangian_ppo``; called once per learner.
        update_multiplier: as for ``train_lagrangian_ppo``; applied to each learner's module.
        make_rule_learner: as for ``train_lagrangian_ppo``; one online learner per learner,
            of its own multiplier and actor (checkpointed in its run as ``rule_learner`` /
            ``rule_optimizer``).
        make_primal_rule: ``cfg -> LearnedPrimalRule | None``, called once per learner (default:
            the rule file of ``cfg.primal_rule``): the learners' actors take the rules' steps
            (:class:`~cmo_rl.population.learned_adam.StackedLearnedAdam`; one rule per
            learner, so ES can score perturbed rules as one population).
        vectorize: vmap collection and update over the learners (``False``: learner after
            learner, bit for bit equal to single-seed runs; for tests).
        distinct_seeds: refuse a seed listed twice (a user's ``seeds=[0,0]`` is a mistake);
            ES meta-training runs several rules on one seed (``make_multiplier`` then builds
            a different multiplier per learner).

    Examples:
        >>> import tempfile
        >>> import pandas as pd
        >>> from cmo_rl.training.lagrangian_ppo import make_lagrange_multiplier
        >>> yaml = Path(__file__).resolve().parents[2] / "recipes" / "config" / "ppo_lagrangian.yaml"
        >>> cfg = OmegaConf.merge(OmegaConf.load(yaml), {
        ...     "env_id": "MockCMDP-v0", "episode_length": 25, "steps_per_epoch": 100,
        ...     "total_steps": 200, "hidden_layers": [8], "update_iters": 1, "eval_interval": 2,
        ...     "eval_episodes": 1, "cost_limit": 3.0, "progress": False, "seeds": [0, 1],
        ...     "run_root": tempfile.mkdtemp()})
        >>> for hydra_only in ("defaults", "hydra"):
        ...     _ = cfg.pop(hydra_only)
        >>> dirs = train_population(cfg, recipe="ppo_lag",
        ...                         make_multiplier=make_lagrange_multiplier)  # doctest: +ELLIPSIS
        run directory: .../ppo_lag/MockCMDP-v0/...
        run directory: .../ppo_lag/MockCMDP-v0/...
        finished: ...
        finished: ...
        >>> [pd.read_csv(d / "metrics.csv")["step"].tolist() for d in dirs]  # 2 epochs each
        [[100, 200], [100, 200]]
    """
    seeds = population_seeds(cfg, recipe=recipe)
    if not seeds:
        raise ConfigError(["seeds: a population needs at least one seed, e.g. seeds=[0,1,2]"])
    runs = _member_runs(cfg, recipe, seeds, distinct_seeds=distinct_seeds)
    cfg = runs[0].cfg  # on resume: the stored config (plus allowed changes)
    _check_population_config(cfg)
    seeds = [int(run.cfg.seed) for run in runs]
    device = torch.device(cfg.device)
    set_torch_threads(cfg.torch_threads)

    # every learner's objects, built as its single-seed run builds them, in its RNG streams
    rng = LearnerRNG(seeds)
    envs, eval_envs, agents, estimators, multipliers, optimizers = [], [], [], [], [], []
    rule_learners, primal_rules = [], []
    for p, run in enumerate(runs):
        with rng.activate(p):
            env, eval_env = make_envs(run.cfg)
            run.check_env(env)
            agent = make_agent(run.cfg, env, device)
            actor, critic, cost_critic = agent
            envs.append(env)
            eval_envs.append(eval_env)
            agents.append(agent)
            estimators.append(make_estimators(run.cfg, critic, cost_critic, device))
            multipliers.append(make_multiplier(run.cfg, device))
            groups = {"actor": actor, "critic": critic, "cost_critic": cost_critic}
            primal_rules.append(make_primal_rule(run.cfg))
            optimizers.append(make_optimizer(groups, cfg.lr, primal_rule=primal_rules[p]))
            learner = (
                make_rule_learner(run.cfg, multipliers[p], actor) if make_rule_learner else None
            )
            rule_learners.append(learner)
    nets = LearnerNets.from_agent(agents[0])
    collector = PopulationCollector(
        envs,
        agents,
        nets,
        rng,
        seeds=seeds,
        steps_per_epoch=int(cfg.steps_per_epoch),
        vectorize=vectorize,
        compile=bool(cfg.get("compile", False)),
    )
    for p, run in enumerate(runs):
        actor, critic, cost_critic = agents[p]
        modules = {"value": critic, "cost_value": cost_critic, "multiplier": multipliers[p]}
        optimizers_p = {"optimizer": optimizers[p]}
        if rule_learners[p] is not None:
            modules["rule_learner"] = rule_learners[p]
            optimizers_p["rule_optimizer"] = rule_learners[p].optimizer
        with rng.activate(p):  # restores the checkpoint's RNG states into the learner's
            run.attach(
                envs[p], eval_envs[p], policy=actor, modules=modules, optimizers=optimizers_p
            )
    engine = PopulationPPO(
        nets,
        LossCoefficients.make(clip_epsilon=cfg.clip_epsilon, entropy_coeff=cfg.entropy_coeff),
        update_iters=int(cfg.update_iters),
        minibatch_size=int(cfg.minibatch_size),
        max_grad_norm=cfg.max_grad_norm,
        nan_policy=str(cfg.nan_policy),
        compile=bool(cfg.get("compile", False)),
        vectorize=vectorize,
    )
    params = stack_learners(agents)
    learned = [rule is not None for rule in primal_rules]
    if any(learned) and not all(learned):
        raise ValueError("make_primal_rule gave a rule to some learners only")
    adam = engine.make_optimizer(params, float(cfg.lr), primal_rules if all(learned) else None)
    for p, optimizer in enumerate(optimizers):
        adam.load_state_dict_of(p, optimizer.state_dict())
    target_kl = float(cfg.target_kl) if cfg.kl_early_stop else None

    with ExitStack() as stack:
        for p, run in enumerate(runs):
            with rng.activate(p):  # entering takes the first snapshot (RNG states included)
                stack.enter_context(run)
        _write_index(runs, seeds)
        for epoch in range(runs[0].epoch, runs[0].num_epochs):
            raise_if_signalled()  # every member ended the last epoch: a consistent stop
            start = time.perf_counter()
            batch = collector.collect(params, epoch)  # [P, num_envs, T]
            for run in runs:
                run.record_collection(time.perf_counter() - start)
            parts = batch.unbind(0)
            metrics = []
            for p, part in enumerate(parts):
                # 1. advantages and value targets for reward and cost (the learner's critics;
                # raw: the online rule learner scores its rule on them, normalised below)
                compute_advantages(part, *estimators[p], normalize=False)
                # 2. multiplier update on the learner's measured mean episode cost J_C
                metrics.append(
                    multiplier_step(
                        part, multipliers[p], update_multiplier, cfg.cost_limit, rule_learners[p]
                    )
                )
                normalize_batch_advantages(part)

            # 3. PPO passes of every learner on its A_L, one vmapped minibatch step
            lr = linear_lr(cfg.lr, epoch, runs[0].num_epochs) if cfg.lr_decay else cfg.lr
            adam.set_lr(lr, group="actor")
            if isinstance(adam, StackedLearnedAdam):  # the primal rules' context feature
                adam.set_context(progress=epoch / runs[0].num_epochs)
            flat = torch.stack([part.reshape(-1).select(*BATCH_KEYS) for part in parts])
            lambdas = torch.stack([m.value.detach().reshape(()).float() for m in multipliers])
            generators = rng.generators()
            params, updates = engine.update(
                params, adam, flat, lambdas, target_kl=target_kl, generators=generators
            )
            rng.keep_generators(generators)

            # 4. the learners' modules and optimizers up to date; each run's epoch ends (with
            # Ctrl-C / SIGTERM held back, so that every member's snapshot is of this epoch)
            unstack_learners(params, agents)
            with deferred_signals():
                for p, run in enumerate(runs):
                    optimizers[p].load_state_dict(adam.state_dict_of(p, optimizers[p]))
                    run.guard.skipped += int(updates[p]["skipped_updates"])
                    row = {**metrics[p], **train_metrics(updates[p]), "train/lr": lr}
                    with rng.activate(p):
                        run.end_epoch(parts[p], row)
    return [run.run_dir for run in runs]


def _write_index(runs: Sequence[TrainingRun], seeds: Sequence[int]) -> None:
    index: dict[str, Any] = {
        "seeds": list(seeds),
        "run_dirs": [str(run.run_dir) for run in runs],
    }
    text = json.dumps(index, indent=1)
    for run in runs:
        path = run.run_dir / POPULATION_FILE
        if not path.exists():  # written once; a resumed population finds it there
            path.write_text(text)


def train_seeds(
    cfg: DictConfig,
    *,
    recipe: str,
    make_multiplier: MultiplierFactory,
    update_multiplier: MultiplierUpdate = step_multiplier,
    make_rule_learner: RuleLearnerFactory | None = None,
) -> Path | list[Path]:
    """What a PPO-family recipe runs: :func:`train_population` when ``cfg`` asks for a
    population (:func:`population_seeds`), else the single-seed
    :func:`~cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`. Returns the run directory
    (a list of them for a population; an online rule learner, ``make_rule_learner``, per
    learner).

    Examples:
        >>> import tempfile
        >>> from cmo_rl.training.lagrangian_ppo import make_lagrange_multiplier
        >>> yaml = Path(__file__).resolve().parents[2] / "recipes" / "config" / "ppo_lagrangian.yaml"
        >>> cfg = OmegaConf.merge(OmegaConf.load(yaml), {
        ...     "env_id": "MockCMDP-v0", "episode_length": 25, "steps_per_epoch": 100,
        ...     "total_steps": 100, "hidden_layers": [8], "update_iters": 1, "eval_episodes": 1,
        ...     "progress": False, "run_root": tempfile.mkdtemp()})
        >>> for hydra_only in ("defaults", "hydra"):
        ...     _ = cfg.pop(hydra_only)
        >>> one = train_seeds(cfg, recipe="ppo_lag", make_multiplier=make_lagrange_multiplier)
        ... # doctest: +ELLIPSIS
        run directory: ...
        finished: ...
        >>> cfg.seeds = [0, 1]
        >>> two = train_seeds(cfg, recipe="ppo_lag", make_multiplier=make_lagrange_multiplier)
        ... # doctest: +ELLIPSIS
        run directory: ...
        run directory: ...
        finished: ...
        finished: ...
        >>> isinstance(one, Path), len(two)
        (True, 2)
    """
    if population_seeds(cfg, recipe=recipe) is not None:
        return train_population(
            cfg,
            recipe=recipe,
            make_multiplier=make_multiplier,
            update_multiplier=update_multiplier,
            make_rule_learner=make_rule_learner,
        )
    return train_lagrangian_ppo(
        cfg,
        recipe=recipe,
        make_multiplier=make_multiplier,
        update_multiplier=update_multiplier,
        make_rule_learner=make_rule_learner,
    )
