"""Online meta-gradient of the lambda rule as programs: the recipe's hooks and ``cmo``'s chain.

The maths is :mod:`cmo_rl.meta.online` (:class:`~cmo_rl.meta.online.OnlineRuleLearner`); this
module joins it to the PPO-Lagrangian learner of :mod:`cmo_rl.training` (the program layer,
like :mod:`cmo_rl.meta_es`):

- :func:`make_rule_learner` is ``recipes/meta_lagrangian.py``'s ``make_rule_learner``: with
  ``meta_lr > 0`` the run's rule takes one meta-gradient step per epoch (objective
  :math:`J_R - \\mu (J_C - d)^+`, ``mu``);
- :func:`export_rule` writes the rule a finished run ended with as ``rule.pt`` (the format of
  :mod:`cmo_rl.pretrained`), so ``rule=<run dir>`` starts another run from it;
- :func:`train_online` is ``cmo meta_algorithm=online``: one rule carried through a chain of
  whole PPO-Lagrangian runs, in numbered steps per link of the chain:

  1. link :math:`k` (``online.passes`` passes over ``env_ids``: task
     ``env_ids[k mod len(env_ids)]``; ``S = online.seeds`` seeds ``seed + k S + s``) starts
     fresh policies and critics from the rule the chain has so far (link 0: PID-Lag with the
     recipe's ``pid_*`` keys, ``online.rule_hidden`` MLP units at zero);
  2. the link is ``recipes/meta_lagrangian.py`` with ``online.inner`` changed and
     ``meta_lr=online.lr``, ``mu=mu`` (with ``S > 1`` its seeds as one population, each
     learner's copy of the rule learning on its own run): the rule learns online during the
     whole run; the run directories go under ``<run dir>/links/<k>-<task>/`` (each with its
     own ``metrics.csv``, checkpoints and ``rule.pt``);
  3. the rule the link ended with (with ``S > 1`` the mean of its learners' rules, in the
     space of the meta-parameters: log-gains, logits, offset, MLP weights; a Reptile-style
     average of independent adaptations, less noisy than any one) becomes the chain's rule; a
     row of ``metrics.csv`` / TensorBoard (``online/*``: the link's final return, cost, mean
     violation and mean meta-gradient, means over its seeds; ``rule/*``), a checkpoint and
     ``rule.pt`` (the current rule with its provenance, what ``rule=<run dir>`` loads).

  After the last link, the meta-test (``meta_test.enabled``) is ES's
  (:func:`cmo_rl.meta_es.meta_test_rules`): the learned rule, frozen, and the initial one
  (PID-Lag) train on every training and held-out task with ``meta_test.seeds``. Ctrl-C or
  SIGTERM inside a link checkpoints the link (and the chain); a resumed chain resumes the link
  from its own checkpoint, so the resumed chain equals the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cmo_rl.config import ConfigError, TrackedConfig
from cmo_rl.lifecycle import Run
from cmo_rl.lifecycle.signals import raise_if_signalled
from cmo_rl.meta.online import OnlineRuleLearner
from cmo_rl.objectives.learned_dual import LearnedLagrangian, rule_vector, set_rule_vector

__all__ = [
    "ONLINE_CHECKPOINT_ENTRIES",
    "chain_links",
    "export_rule",
    "make_rule_learner",
    "train_online",
]

#: What a ``cmo meta_algorithm=online`` checkpoint holds besides the lifecycle's entries: the
#: chain's rule (a :func:`~cmo_rl.objectives.learned_dual.rule_vector`), the initial one and
#: the number of finished links (the checkpoint's ``step``).
ONLINE_CHECKPOINT_ENTRIES = ("online_rule", "initial_rule")


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


def chain_links(c: Mapping[str, Any]) -> list[tuple[str, list[int]]]:
    """The ``(task, seeds)`` of every link of the chain: ``online.passes`` passes over
    ``env_ids``, link ``k`` with the ``S = online.seeds`` seeds ``seed + k S + s``.

    Examples:
        >>> chain_links({"env_ids": ["A", "B"], "seed": 10, "online": {"passes": 2, "seeds": 1}})
        [('A', [10]), ('B', [11]), ('A', [12]), ('B', [13])]
        >>> chain_links({"env_ids": ["A"], "seed": 0, "online": {"passes": 2, "seeds": 3}})
        [('A', [0, 1, 2]), ('A', [3, 4, 5])]
    """
    tasks, per_link = list(c["env_ids"]), int(c["online"]["seeds"])
    count = int(c["online"]["passes"]) * len(tasks)
    first = int(c["seed"])
    return [
        (tasks[k % len(tasks)], [first + k * per_link + s for s in range(per_link)])
        for k in range(count)
    ]


def _unfinished_link(root: Path) -> str | None:
    """The run directory of an interrupted link under ``root`` that has a checkpoint to
    resume from (its newest one; a population member resumes the whole population), else
    ``None`` (the link starts afresh)."""
    from cmo_rl.lifecycle import find_runs
    from cmo_rl.lifecycle.checkpoint import latest_checkpoint
    from cmo_rl.meta_es import MEMBER_RECIPE

    runs = find_runs(root, MEMBER_RECIPE) if root.is_dir() else []
    resumable = [run for run in runs if latest_checkpoint(run) is not None]
    return str(resumable[-1]) if resumable else None


def link_config(c: Mapping[str, Any]) -> DictConfig:
    """Every link's recipe config before its task, seed and start rule: the meta-test's
    inner config (:func:`cmo_rl.meta_es.inner_config` of ``online.inner``) with the rule
    learning online (``meta_lr=online.lr``, ``mu``); checked as one run.

    Examples:
        >>> c = {"online": {"inner": {"total_steps": 1000, "steps_per_epoch": 100},
        ...      "rule_hidden": 0, "lr": 0.05}, "cost_limit": 10.0, "episode_length": 25,
        ...      "torch_threads": 1, "mu": 5.0}
        >>> cfg = link_config(c)
        >>> cfg.meta_lr, cfg.mu, cfg.total_steps, cfg.seeds
        (0.05, 5.0, 1000, None)
    """
    from cmo_rl.config import validate_config
    from cmo_rl.meta_es import inner_config
    from cmo_rl.training.schema import LEARNED, PPO, RULES, recipe_schema

    cfg = OmegaConf.merge(
        inner_config(c, "online"),
        {"meta_lr": float(c["online"]["lr"]), "mu": float(c["mu"]), "seeds": None},
    )
    try:
        validate_config(cfg, recipe_schema(PPO, LEARNED), RULES)
    except ConfigError as err:
        raise ConfigError([f"online.inner: {p}" for p in err.problems]) from None
    return cfg


def train_online(run: Run, c: TrackedConfig) -> Path:
    """Carry one learned lambda rule, learning online, through a chain of PPO-Lagrangian runs
    inside ``run`` (config ``c``, checked); returns the run directory. See the module
    docstring for the steps; ``cmo meta_algorithm=online`` (:func:`cmo_rl.cli.train`) builds
    ``run`` and ``c``.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.cli import train
        >>> from cmo_rl.meta_schema import DEFAULT_CONFIG
        >>> cfg = OmegaConf.load(DEFAULT_CONFIG)
        >>> _ = cfg.pop("defaults"), cfg.pop("hydra")
        >>> cfg = OmegaConf.merge(cfg, {"meta_algorithm": "online", "env_ids": ["MockCMDP-v0"],
        ...     "eval_env_ids": [], "episode_length": 25, "meta_test": {"enabled": False},
        ...     "online": {"passes": 2, "rule_hidden": 0, "inner": {"total_steps": 200,
        ...         "steps_per_epoch": 100, "num_envs": 2, "update_iters": 1}},
        ...     "progress": False, "run_root": tempfile.mkdtemp()})
        >>> run_dir = train(cfg)  # doctest: +ELLIPSIS
        run directory: .../meta_online/MockCMDP-v0/...
        link 1/2 (MockCMDP-v0, seed 123): return ...
        link 2/2 (MockCMDP-v0, seed 124): return ...
        finished: ...
        >>> sorted(p.name for p in run_dir.iterdir())
        ['checkpoints', 'config.yaml', 'links', 'metrics.csv', 'rule.pt', 'tensorboard']
    """
    from cmo_rl import pretrained
    from cmo_rl.meta.es import run_fitness
    from cmo_rl.meta_es import (
        MEMBER_RECIPE,
        inner_config,
        inner_provenance,
        meta_test_rules,
        rule_metrics,
    )
    from cmo_rl.objectives.learned_dual import learned_update
    from cmo_rl.population.train import train_seeds
    from cmo_rl.training.lagrangian_ppo import make_learned_multiplier

    # the configs first: a bad one is refused before anything is written
    inner, link_base = inner_config(c, "online"), link_config(c)
    links, mu = chain_links(c), float(c.mu)
    rule = make_learned_multiplier(inner, torch.device("cpu"))  # PID-Lag, a zero MLP
    initial = rule_vector(rule)
    done = 0
    if run.state is not None:
        try:
            set_rule_vector(rule, run.state["online_rule"])
            initial = run.state["initial_rule"].float()
            done = int(run.state["step"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ConfigError([f"resume: the checkpoint does not fit this config: {err}"]) from None
    steps_per_link = (int(inner.total_steps) // int(inner.steps_per_epoch)) * int(
        inner.steps_per_epoch
    )
    provenance = {
        "command": "cmo " + " ".join(sys.argv[1:]),
        "tasks": list(c.env_ids),
        "cost_limit": float(c.cost_limit),
        "meta_algorithm": "online",
        "inner": inner_provenance(link_base),
        "online": {k: c.online[k] for k in ("lr", "passes", "seeds")},
        "mu": mu,
        "commit": pretrained.current_commit(),
    }

    def snapshot(links_done: int) -> None:
        run.snapshot(links_done, {"online_rule": rule_vector(rule), "initial_rule": initial})

    def train_link(k: int, task: str, seeds: list[int]) -> list[Path]:
        """1.-2. link ``k``: whole online runs from the chain's rule (resumed if cut)."""
        root = run.run_dir / "links" / f"{k:04d}-{task}"
        start = root / "start_rule.pt"
        root.mkdir(parents=True, exist_ok=True)
        if not start.exists():  # written once: a resumed link keeps the rule it started from
            pretrained.save(rule, start, {**provenance, "link": k, "env_steps": k * steps_per_link})
        cfg = OmegaConf.merge(
            link_base,
            {"env_id": task, "seed": seeds[0], "seeds": seeds if len(seeds) > 1 else None,
             "run_root": str(root), "rule": str(start), "resume": _unfinished_link(root)},
        )  # fmt: skip
        with open(root / "link.log", "a") as out, contextlib.redirect_stdout(out):
            run_dirs = train_seeds(
                cfg,
                recipe=MEMBER_RECIPE,
                make_multiplier=make_learned_multiplier,
                update_multiplier=learned_update,
                make_rule_learner=make_rule_learner,
            )
        return run_dirs if isinstance(run_dirs, list) else [run_dirs]

    label = f"meta_online {links[0][0]}" if links else "meta_online"
    with run.open(progress_total=len(links), progress_desc=label, progress_unit="run"):
        snapshot(done)
        if done >= len(links):
            run.echo(f"meta-training already complete ({done} of {len(links)} runs)")
        for k in range(done, len(links)):
            raise_if_signalled()  # a SIGTERM a finalizer swallowed stops between links
            task, seeds = links[k]
            start_time = time.perf_counter()
            link_dirs = train_link(k, task, seeds)
            # 3. the rule the link ended with (its seeds' mean) is the chain's; one row, a
            # checkpoint, rule.pt
            link_prov = {**provenance, "link": k, "env_steps": steps_per_link}
            ended = [rule_vector(pretrained.load(export_rule(d, link_prov))) for d in link_dirs]
            set_rule_vector(rule, torch.stack(ended).mean(0))
            frames = [pd.read_csv(d / "metrics.csv") for d in link_dirs]
            scores = pd.DataFrame(
                [run_fitness(f, cost_limit=float(c.cost_limit), mu=mu, nu=0.0) for f in frames]
            ).mean()
            row = {
                "online/fitness": float(scores["fitness"]),
                "online/final_return": float(scores["final_return"]),
                "online/final_cost": float(scores["final_cost"]),
                "online/mean_violation": float(scores["mean_violation"]),
                "online/rule_meta_grad": float(
                    pd.concat([f["train/rule_meta_grad"] for f in frames]).mean()
                ),
                **rule_metrics(rule),
                "meta/env_steps": (k + 1) * len(seeds) * steps_per_link,
                "time/link": time.perf_counter() - start_time,
            }
            run.record(
                row,
                step=k + 1,
                line=f"link {k + 1}/{len(links)} ({task}, seed{'s' * (len(seeds) > 1)} "
                f"{', '.join(map(str, seeds))}): return "
                f"{row['online/final_return']:.4g}, cost {row['online/final_cost']:.4g}, "
                f"mean violation {row['online/mean_violation']:.4g}, {row['time/link']:.0f} s",
            )
            snapshot(k + 1)
            run.save()
            env_steps = (k + 1) * len(seeds) * steps_per_link
            pretrained.save(
                rule,
                run.run_dir / "rule.pt",
                {**provenance, "links": k + 1, "env_steps": env_steps},
            )
        if c.meta_test.enabled:
            meta_test_rules(
                rule, initial, inner, tasks=list(c.env_ids), held_out=list(c.eval_env_ids),
                seeds=list(c.meta_test.seeds), run_dir=run.run_dir, mu=mu, nu=0.0, echo=run.echo,
            )  # fmt: skip
    return run.run_dir
