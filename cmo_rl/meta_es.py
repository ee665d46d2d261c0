"""``cmo meta_algorithm=es``: a learned rule meta-trained by ES over whole PPO-Lag runs.

``es.target`` picks the rule: ``dual`` (default), the lambda rule
(:class:`~cmo_rl.objectives.learned_dual.LearnedLagrangian`, starting as PID-Lag), or
``primal``, the actor's optimizer (:class:`~cmo_rl.objectives.learned_primal.LearnedPrimalRule`
of ``es.primal_hidden`` units, starting as Adam; the members' lambda follows ``es.inner.rule``,
PID-Lag when null). Each generation, in numbered steps (the maths: :mod:`cmo_rl.meta.es`):

1. ``2 * es.pairs`` members :math:`\\phi \\pm \\sigma\\epsilon_k` around the current rule
   :math:`\\phi`;
2. on every task of ``env_ids``: one population (:func:`cmo_rl.population.train.train_population`)
   of ``2 * pairs * es.seeds`` PPO-Lagrangian learners, member ``m`` with seed ``s`` driving its
   multiplier (or its actor's steps) with rule ``m``; every member of the generation runs the same ``es.seeds`` seeds
   (common random numbers), new ones each generation. The learners are
   ``recipes/meta_lagrangian.py``'s with ``es.inner`` changed (a cheaper schedule than the
   test's is allowed); their run directories go under ``<run dir>/generations/<g>/<task>/``;
3. each run's :func:`~cmo_rl.meta.es.run_fitness` (final penalised return ``mu``, mean
   violation ``es.nu``), ranked within its task and seed;
4. one Adam ascent step of :math:`\\phi`; a row of ``metrics.csv`` / TensorBoard (``es/*``:
   fitness and the members' final return, cost, violation; ``rule/*``: the rule's gains,
   filters and offset; a primal rule's ``rule/primal_*``), a checkpoint (every generation:
   generations are long) and ``rule.pt``, the current rule in the format of
   :mod:`cmo_rl.pretrained`, which ``recipes/meta_lagrangian.py rule=<run dir>`` trains with
   (a primal rule: ``primal_rule.pt``, for ``primal_rule=<run dir>``).

After the last generation the meta-test (``meta_test.enabled``) trains, on every training task
and every held-out ``eval_env_ids`` task, the learned rule and the initial one (PID-Lag or Adam)
on ``meta_test.seeds`` with the same inner schedule, and writes ``meta_test.csv`` /
``meta_test.txt``. An interrupted generation is run again on resume (in new run directories:
nothing written is rewritten).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from cmo_rl.config import ConfigError, TrackedConfig
from cmo_rl.lifecycle import Run
from cmo_rl.lifecycle.signals import raise_if_signalled
from cmo_rl.meta.es import EvolutionStrategy, run_fitness
from cmo_rl.objectives.learned_dual import (
    LearnedLagrangian,
    learned_update,
    rule_vector,
    set_rule_vector,
)
from cmo_rl.objectives.learned_primal import (
    PRIMAL_RULE_FILE,
    LearnedPrimalRule,
    primal_rule_vector,
    save_primal_rule,
    set_primal_rule_vector,
)

__all__ = [
    "ES_CHECKPOINT_ENTRIES",
    "evaluate_rules",
    "inner_config",
    "inner_provenance",
    "initial_rule",
    "meta_test_rules",
    "rule_as_vector",
    "rule_metrics",
    "rule_with_vector",
    "train_es",
]

#: What an ES checkpoint holds besides the lifecycle's entries.
ES_CHECKPOINT_ENTRIES = ("es_state", "initial_rule")
#: The run-directory name of the members' runs (the meta-Lagrangian recipe's).
MEMBER_RECIPE = "meta_lag"
#: Recipe keys the programs set for each inner run (``<section>.inner`` may not set them).
PER_RUN_KEYS = ("env_id", "seed", "seeds", "run_root", "resume", "meta_lr", "mu", "primal_rule")

AnyRule = LearnedLagrangian | LearnedPrimalRule


def rule_as_vector(rule: AnyRule) -> torch.Tensor:
    """A dual or primal rule's meta-parameters as one flat vector (what ES perturbs).

    Examples:
        >>> rule_as_vector(LearnedPrimalRule(hidden=4)).shape, rule_as_vector(
        ...     LearnedLagrangian(10.0, hidden=0)).shape
        (torch.Size([34]), torch.Size([6]))
    """
    if isinstance(rule, LearnedPrimalRule):
        return primal_rule_vector(rule)
    return rule_vector(rule)


def rule_with_vector(rule: AnyRule, vector: torch.Tensor) -> AnyRule:
    """A new rule of ``rule``'s kind and shape with the meta-parameters ``vector``.

    Examples:
        >>> rule = LearnedPrimalRule(hidden=4)
        >>> moved = rule_with_vector(rule, rule_as_vector(rule) + 1.0)
        >>> torch.equal(rule_as_vector(moved), rule_as_vector(rule) + 1.0), type(moved).__name__
        (True, 'LearnedPrimalRule')
    """
    if isinstance(rule, LearnedPrimalRule):
        return set_primal_rule_vector(LearnedPrimalRule(**rule.config()), vector)
    return set_rule_vector(LearnedLagrangian(**rule.config()), vector)


def inner_config(c: Mapping[str, Any], section: str = "es") -> DictConfig:
    """The inner learners' recipe config: ``recipes/config/meta_lagrangian.yaml`` with
    ``<section>.inner`` changed (``es.inner``, ``online.inner``), the section's ``rule_hidden``
    and ``cmo``'s ``cost_limit``, ``episode_length``, ``torch_threads``; on CPU, the rule
    frozen, checked as one population (how the members and the meta-test run it). The lambda
    rule starts fresh (``rule=null``: PID-Lag), except with ``es.target=primal``, where
    ``es.inner.rule`` may name the dual rule the members keep (e.g. a shipped one).

    Examples:
        >>> c = {"es": {"inner": {"total_steps": 1000, "steps_per_epoch": 100}, "rule_hidden": 4},
        ...      "cost_limit": 10.0, "episode_length": 25, "torch_threads": 1}
        >>> inner = inner_config(c)
        >>> inner.total_steps, inner.cost_limit, inner.rule_hidden, inner.pid_kp
        (1000, 10.0, 4, 0.1)
    """
    from cmo_rl.meta_baselines import recipe_defaults
    from cmo_rl.training.schema import LEARNED, PPO, RULES, recipe_schema

    base = recipe_defaults("meta_lagrangian", needed_by=f"meta_algorithm={section}")
    inner = {key: c[section]["inner"][key] for key in c[section]["inner"]}
    own = {
        "cost_limit": float(c["cost_limit"]),
        "episode_length": int(c["episode_length"]),
        "torch_threads": int(c["torch_threads"]),
        "device": "cpu",
        "progress": False,
        "rule_hidden": int(c[section]["rule_hidden"]),
    }
    if c[section].get("target", "dual") == "dual":
        own["rule"] = None  # the rule being meta-trained starts fresh
    unknown = sorted(set(inner) - set(base))
    taken = sorted(set(inner) & (set(own) | set(PER_RUN_KEYS)))
    problems = []
    if unknown:
        problems.append(
            f"{section}.inner: {unknown} are not keys of recipes/config/meta_lagrangian.yaml"
        )
    if taken:
        problems.append(f"{section}.inner: {taken} are set by cmo itself (its own keys, per run)")
    if problems:
        raise ConfigError(problems)
    cfg = OmegaConf.merge(base, inner, own)
    from cmo_rl.config import validate_config

    try:
        # as the members run it: one population (``seeds`` is set per generation)
        validate_config(OmegaConf.merge(cfg, {"seeds": [0]}), recipe_schema(PPO, LEARNED), RULES)
    except ConfigError as err:
        raise ConfigError([f"{section}.inner: {p}" for p in err.problems]) from None
    return cfg


def inner_provenance(inner: DictConfig) -> dict[str, Any]:
    """The inner runs' settings for a rule file's provenance: ``inner`` without the keys each
    run sets for itself (task, seed, run directory), whose recipe defaults would mislead.

    Examples:
        >>> c = {"es": {"inner": {"total_steps": 1000, "steps_per_epoch": 100}, "rule_hidden": 4},
        ...      "cost_limit": 10.0, "episode_length": 25, "torch_threads": 1}
        >>> record = inner_provenance(inner_config(c))
        >>> "env_id" in record, "seed" in record, record["total_steps"]
        (False, False, 1000)
    """
    record = OmegaConf.to_container(inner, resolve=True)
    for key in ("env_id", "seed", "seeds", "run_root", "resume"):
        record.pop(key, None)
    return record


def initial_rule(inner: DictConfig) -> LearnedLagrangian:
    """The rule ES starts from: PID-Lag with the recipe's ``pid_*`` keys, a zero MLP.

    Examples:
        >>> c = {"es": {"inner": {"total_steps": 1000, "steps_per_epoch": 100}, "rule_hidden": 4},
        ...      "cost_limit": 10.0, "episode_length": 25, "torch_threads": 1}
        >>> rule = initial_rule(inner_config(c))
        >>> rule.hidden, rule.horizon, round(float(rule.gains[0]), 6)
        (4, 10, 0.1)
    """
    from cmo_rl.training.lagrangian_ppo import make_learned_multiplier

    return make_learned_multiplier(inner, torch.device("cpu"))


def _one_after_another(rules: Sequence[AnyRule]) -> Callable[..., AnyRule]:
    """A ``make_multiplier(cfg, device)`` or ``make_primal_rule(cfg)`` that hands out ``rules``
    in order, one per learner."""
    queue = list(rules)

    def make(cfg: DictConfig, device: torch.device | None = None) -> AnyRule:
        if not queue:
            raise RuntimeError("more learners than rules")
        rule = queue.pop(0)
        return rule if device is None else rule.to(device)

    return make


def evaluate_rules(
    rules: Sequence[AnyRule],
    *,
    task: str,
    seeds: Sequence[int],
    inner: DictConfig,
    root: Path,
    mu: float,
    nu: float,
    log: Path | None = None,
) -> list[dict[str, Any]]:
    """Train one PPO-Lagrangian learner per ``(rule, seed)`` on ``task`` as one population
    (rule-major order: rule 0 with every seed, then rule 1, ...); returns one row per learner:
    ``rule`` (index), ``seed``, ``run_dir`` and :func:`~cmo_rl.meta.es.run_fitness`'s values.
    The members' own messages go to ``log`` (default: ``root/members.log``). Dual rules
    (:class:`~cmo_rl.objectives.learned_dual.LearnedLagrangian`) drive the learners'
    multipliers; primal rules (:class:`~cmo_rl.objectives.learned_primal.LearnedPrimalRule`)
    their actors' steps, beside the multiplier of ``inner`` (``inner.rule``, or PID-Lag).

    Examples:
        >>> import tempfile
        >>> c = {"es": {"inner": {"total_steps": 100, "steps_per_epoch": 100, "num_envs": 2,
        ...      "update_iters": 1}, "rule_hidden": 0}, "cost_limit": 1.0, "episode_length": 25,
        ...      "torch_threads": 1}
        >>> inner = inner_config(c)
        >>> rules = [initial_rule(inner), LearnedLagrangian(1.0, offset=5.0, hidden=0)]
        >>> rows = evaluate_rules(rules, task="MockCMDP-v0", seeds=[3], inner=inner,
        ...                       root=Path(tempfile.mkdtemp()), mu=1.0, nu=1.0)
        >>> [(r["rule"], r["seed"]) for r in rows], sorted(rows[0])[:4]
        ([(0, 3), (1, 3)], ['final_cost', 'final_return', 'fitness', 'mean_violation'])
    """
    from cmo_rl.population.train import train_population

    pairs = [(r, s) for r in range(len(rules)) for s in seeds]
    cfg = OmegaConf.merge(
        inner,
        {"env_id": task, "seeds": [s for _, s in pairs], "run_root": str(root), "resume": None},
    )
    if all(isinstance(rule, LearnedPrimalRule) for rule in rules):
        from cmo_rl.training.lagrangian_ppo import make_learned_multiplier

        factories = {
            "make_multiplier": make_learned_multiplier,
            "make_primal_rule": _one_after_another([rules[r] for r, _ in pairs]),
        }
    else:
        learners = [LearnedLagrangian(**rules[r].config()) for r, _ in pairs]
        for learner, (r, _) in zip(learners, pairs):
            learner.load_state_dict(rules[r].state_dict())
            learner.horizon = max(int(cfg.total_steps) // int(cfg.steps_per_epoch), 1)
            learner.reset_state()
        factories = {"make_multiplier": _one_after_another(learners)}
    root.mkdir(parents=True, exist_ok=True)
    with open(log or root / "members.log", "a") as out, contextlib.redirect_stdout(out):
        run_dirs = train_population(
            cfg,
            recipe=MEMBER_RECIPE,
            update_multiplier=learned_update,
            distinct_seeds=False,
            **factories,
        )
    rows = []
    for (r, s), run_dir in zip(pairs, run_dirs):
        score = run_fitness(
            Path(run_dir) / "metrics.csv", cost_limit=float(cfg.cost_limit), mu=mu, nu=nu
        )
        rows.append({"rule": r, "seed": s, "task": task, "run_dir": str(run_dir), **score})
    return rows


def rule_metrics(rule: AnyRule) -> dict[str, float]:
    """``rule/*`` metrics. A dual rule: its PID part (gains, filter factors and offset). A
    primal rule: what it does to Adam's step at a probe coordinate whose Adam direction,
    gradient and slow momentum agree at :math:`\\pm 1`, halfway through a run with
    :math:`\\lambda = 1`: ``rule/primal_scale`` (:math:`e^{a}`, the factor on Adam's step) and
    ``rule/primal_shift`` (:math:`b` along Adam's direction), both averaged over the two signs
    (1 and 0 for Adam).

    Examples:
        >>> round(rule_metrics(LearnedLagrangian(25.0, kp=0.2, hidden=0))["rule/kp"], 6)
        0.2
        >>> rule_metrics(LearnedPrimalRule(hidden=4))  # a fresh rule is Adam
        {'rule/primal_scale': 1.0, 'rule/primal_shift': 0.0}
    """
    if isinstance(rule, LearnedPrimalRule):
        sign = torch.tensor([[-1.0], [1.0]])
        probe = torch.cat([sign.expand(2, 3), torch.tensor([[0.5, math.log(2.0)]]).expand(2, 2)], 1)
        with torch.no_grad():
            out = rule(probe)
        return {
            "rule/primal_scale": float(out[:, 0].exp().mean()),
            "rule/primal_shift": float((out[:, 1] * sign[:, 0]).mean()),
        }
    gains, alphas = rule.gains.detach(), rule.alphas.detach()
    return {
        "rule/kp": float(gains[0]),
        "rule/ki": float(gains[1]),
        "rule/kd": float(gains[2]),
        "rule/alpha_p": float(alphas[0]),
        "rule/alpha_d": float(alphas[1]),
        "rule/offset": float(rule.offset.detach()),
    }


def train_es(run: Run, c: TrackedConfig) -> Path:
    """Meta-train the lambda rule with ES inside ``run`` (config ``c``, checked); returns the
    run directory. See the module docstring for the steps; ``cmo meta_algorithm=es``
    (:func:`cmo_rl.cli.train`) builds ``run`` and ``c``.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.cli import train
        >>> from cmo_rl.meta_schema import DEFAULT_CONFIG
        >>> cfg = OmegaConf.load(DEFAULT_CONFIG)
        >>> _ = cfg.pop("defaults"), cfg.pop("hydra")
        >>> cfg = OmegaConf.merge(cfg, {"meta_algorithm": "es", "env_ids": ["MockCMDP-v0"],
        ...     "eval_env_ids": [], "episode_length": 25, "meta_test": {"enabled": False},
        ...     "es": {"generations": 1, "pairs": 1, "rule_hidden": 2, "inner": {
        ...         "total_steps": 100, "steps_per_epoch": 100, "num_envs": 2, "update_iters": 1}},
        ...     "progress": False, "run_root": tempfile.mkdtemp()})
        >>> run_dir = train(cfg)  # doctest: +ELLIPSIS
        run directory: .../meta_es/MockCMDP-v0/...
        generation 1/1: fitness ...
        finished: ...
        >>> sorted(p.name for p in run_dir.iterdir())
        ['checkpoints', 'config.yaml', 'generations', 'metrics.csv', 'rule.pt', 'tensorboard']
    """
    from cmo_rl import pretrained

    es_cfg = c.es
    inner = inner_config(c)
    tasks = list(c.env_ids)
    seeds_per_member = int(es_cfg.seeds)
    es = EvolutionStrategy(
        sigma=float(es_cfg.sigma), lr=float(es_cfg.lr), pairs=int(es_cfg.pairs), seed=int(c.seed)
    )
    mu, nu = float(c.mu), float(es_cfg.nu)
    target = str(es_cfg.target)
    if target == "primal":
        rule: AnyRule = LearnedPrimalRule(hidden=int(es_cfg.primal_hidden))  # = Adam
    else:
        rule = initial_rule(inner)  # = PID-Lag
    initial = rule_as_vector(rule)
    state = es.init_state(initial)
    if run.state is not None:
        try:
            state = es.init_state(initial).update_(dict(run.state["es_state"]))
            initial = run.state["initial_rule"].float()
            rule = rule_with_vector(rule, state["center"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ConfigError([f"resume: the checkpoint does not fit this config: {err}"]) from None
    total = int(es_cfg.generations)
    steps_per_run = (int(inner.total_steps) // int(inner.steps_per_epoch)) * int(
        inner.steps_per_epoch
    )
    provenance = {
        "command": "cmo " + " ".join(sys.argv[1:]),
        "tasks": tasks,
        "cost_limit": float(c.cost_limit),
        "inner": inner_provenance(inner),
        "es": {k: es_cfg[k] for k in ("target", "pairs", "seeds", "sigma", "lr", "nu")},
        "mu": mu,
        "commit": pretrained.current_commit(),
    }

    def save_rule(generation: int) -> None:
        env_steps = generation * 2 * es.pairs * seeds_per_member * len(tasks) * steps_per_run
        prov = {**provenance, "generations": generation, "env_steps": env_steps}
        if isinstance(rule, LearnedPrimalRule):
            save_primal_rule(rule, run.run_dir / PRIMAL_RULE_FILE, prov)
        else:
            pretrained.save(rule, run.run_dir / "rule.pt", prov)

    def snapshot() -> None:
        run.snapshot(
            int(state["generation"]),
            {"es_state": state.to_dict(), "initial_rule": initial.clone()},
        )

    with run.open(progress_total=total, progress_desc=f"meta_es {tasks[0]}", progress_unit="gen"):
        snapshot()
        if int(state["generation"]) >= total:
            run.echo(f"meta-training already complete ({int(state['generation'])} of {total})")
        while int(state["generation"]) < total:
            raise_if_signalled()  # a SIGTERM a finalizer swallowed stops between generations
            generation, start = int(state["generation"]), time.perf_counter()
            # 1. the members around the current rule
            members, noise = es.ask(state)
            rules = [rule_with_vector(rule, m) for m in members]
            # 2. every member on every task and seed (one population per task)
            seeds = [
                (int(c.seed) * 7919 + generation * seeds_per_member + s) % 2**31
                for s in range(seeds_per_member)
            ]
            rows = []
            for task in tasks:
                root = run.run_dir / "generations" / f"{generation:04d}" / task
                rows += evaluate_rules(
                    rules, task=task, seeds=seeds, inner=inner, root=root, mu=mu, nu=nu
                )
            frame = pd.DataFrame(rows)
            frame.to_csv(
                run.run_dir / "generations" / f"{generation:04d}" / "fitness.csv", index=False
            )
            # 3. fitness [2n, tasks x seeds] -> 4. one ascent step of the rule
            fitness = torch.tensor(
                frame.pivot_table(index="rule", columns=["task", "seed"], values="fitness")
                .sort_index()
                .to_numpy(),
                dtype=torch.float32,
            )
            before, state = state["center"], es.tell(state, noise, fitness)
            rule = rule_with_vector(rule, state["center"])
            row = {
                "es/fitness_mean": float(frame["fitness"].mean()),
                "es/fitness_max": float(frame["fitness"].max()),
                "es/final_return": float(frame["final_return"].mean()),
                "es/final_cost": float(frame["final_cost"].mean()),
                "es/mean_violation": float(frame["mean_violation"].mean()),
                "es/step_norm": float((state["center"] - before).norm()),
                **rule_metrics(rule),
                "meta/env_steps": (generation + 1) * len(rows) * steps_per_run,
                "time/generation": time.perf_counter() - start,
            }
            run.record(
                row,
                step=generation + 1,
                line=f"generation {generation + 1}/{total}: fitness {row['es/fitness_mean']:.4g} "
                f"(best {row['es/fitness_max']:.4g}), return {row['es/final_return']:.4g}, "
                f"cost {row['es/final_cost']:.4g}, {row['time/generation']:.0f} s",
            )
            snapshot()
            run.save()
            save_rule(generation + 1)
        if c.meta_test.enabled:
            meta_test_rules(
                rule, initial, inner, tasks=list(c.env_ids), held_out=list(c.eval_env_ids),
                seeds=list(c.meta_test.seeds), run_dir=run.run_dir, mu=mu, nu=nu, echo=run.echo,
            )  # fmt: skip
    return run.run_dir


def meta_test_rules(
    rule: AnyRule,
    initial: torch.Tensor,
    inner: DictConfig,
    *,
    tasks: Sequence[str],
    held_out: Sequence[str],
    seeds: Sequence[int],
    run_dir: Path,
    mu: float,
    nu: float,
    echo: Callable[[str], None] = print,
) -> pd.DataFrame:
    """The meta-test of ``cmo meta_algorithm=es|online``: the learned ``rule`` and the
    ``initial`` one (a :func:`rule_as_vector`: PID-Lag, or Adam for a primal rule), trained
    with ``inner`` on every training and ``held_out`` task with ``seeds`` (one population per
    task, runs under ``run_dir/meta_test/<task>/``); writes ``run_dir/meta_test.csv`` (one row
    per run) and ``meta_test.txt`` (means per task, split and rule), echoes the table and
    returns the rows.

    Examples:
        >>> import tempfile
        >>> c = {"es": {"inner": {"total_steps": 100, "steps_per_epoch": 100, "num_envs": 2,
        ...      "update_iters": 1}, "rule_hidden": 0}, "cost_limit": 1.0, "episode_length": 25,
        ...      "torch_threads": 1}
        >>> inner = inner_config(c)
        >>> rule = initial_rule(inner)
        >>> frame = meta_test_rules(rule, rule_vector(rule), inner, tasks=["MockCMDP-v0"],
        ...     held_out=[], seeds=[0], run_dir=Path(tempfile.mkdtemp()), mu=1.0, nu=1.0,
        ...     echo=lambda text: None)
        >>> frame[["rule", "split", "task", "seed"]].values.tolist()
        [['initial (PID-Lag)', 'train', 'MockCMDP-v0', 0], ['learned', 'train', 'MockCMDP-v0', 0]]
    """
    start = rule_with_vector(rule, initial)
    labels = {0: f"initial ({'Adam' if isinstance(rule, LearnedPrimalRule) else 'PID-Lag'})"}
    labels[1] = "learned"
    rows = []
    for task in [*tasks, *held_out]:
        root = Path(run_dir) / "meta_test" / task
        for r in evaluate_rules(
            [start, rule], task=task, seeds=list(seeds), inner=inner, root=root, mu=mu, nu=nu
        ):
            split = "held-out" if task in held_out else "train"
            rows.append({"rule": labels[r.pop("rule")], "split": split, **r})
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(run_dir) / "meta_test.csv", index=False)
    table = (
        frame.groupby(["task", "split", "rule"])[
            ["fitness", "final_return", "final_cost", "mean_violation"]
        ]
        .mean()
        .round(3)
        .to_string()
    )
    (Path(run_dir) / "meta_test.txt").write_text(table + "\n")
    echo(f"meta-test ({len(seeds)} seeds per task):\n{table}")
    return frame
