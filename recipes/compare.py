"""Compare safe-RL methods at one env-step budget: runs, a mean ± 95% CI table, figures.

    python recipes/compare.py                                  # config/compare.yaml's study
    python recipes/compare.py jobs=2 total_steps=60000
    python recipes/compare.py methods=[ppo_lag,cpo] tasks=[SafetyPointGoal1-v0] seeds=[0,1,2]
    python recipes/compare.py meta.checkpoints.lstm=runs/meta_lstm/SafetyPointGoal1-v0/<ts>
    python recipes/compare.py methods=[pid_lag,learned_rule] rule=runs/meta_online/<task>/<ts>
    python recipes/compare.py aggregate_only=true               # tables/figures only

1. **Meta-optimizers** (only when ``meta_lstm`` / ``meta_pid`` are asked for): the given ``cmo``
   checkpoint, or one ``cmo`` meta-training per optimizer type in ``<study>/meta_train/<type>/``
   (reused once finished). A crashed meta-training blocks that method's runs (reported).
   The ``learned_rule`` method trains with the given learned lambda rule (``rule``: a shipped
   name, a rule file or a ``cmo meta_algorithm=es|online`` run directory), frozen.
2. **Runs**: every ``task x method x seed`` with the same budget: the seeds of PPO, PPO-Lag
   and PID-Lag as one population process per task (``seeds=[...] compile=true``, in
   ``<run_root>/<study>/<task>/<method>/population/``; ``populations=false``: one process per
   seed), every other run as its own subprocess (the recipe, or ``python -m
   cmo_rl.compare.frozen`` for a frozen meta-optimizer) in
   ``<run_root>/<study>/<task>/<method>/seed<k>/``. Finished runs are reused, interrupted ones
   (Ctrl-C, a killed session) resume from their newest checkpoint when the same command is
   run again, crashed ones are reported with their log (``cmo_rl.compare.runner``);
   ``jobs=2`` runs two at a time.
3. **Aggregation** (``cmo_rl.compare.aggregate``): ``<study>/summary.md`` and ``summary.csv``
   (per task and method, mean ± 95% CI over seeds of the final eval return/cost, penalized
   return, training-curve satisfaction rate, cumulative violation, overshoot, oscillation, AUC),
   and per task the learning curves and the return-vs-cost scatter (PNG); ``<study>/study.json``
   records the config, the wall time and every run's status of the last call that ran runs.

Config: ``recipes/config/compare.yaml``. Exit code 0 even when runs crashed (they are in the
table and the console); 2 for a bad config.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cmo_rl.compare.aggregate import comparison_table, format_markdown, plot_study, write_table
from cmo_rl.compare.frozen import load_meta_optimizer
from cmo_rl.compare.plan import METHODS, REPO, Budget, meta_training_spec, plan_runs
from cmo_rl.compare.runner import collect, execute
from cmo_rl.config import ConfigError, Field, Rule, device_check, env_id_check
from cmo_rl.envs.factory import MOCK_ENV_ID
from cmo_rl.lifecycle import accept_renamed_keys, run_cli
from cmo_rl.lifecycle.checkpoint import latest_checkpoint

CONFIG_DIR = Path(__file__).resolve().parent / "config"
META_KINDS = ("lstm", "pid")
#: The methods that train with the study's learned lambda rule (``rule``).
RULE_METHODS = ("learned_rule", "learned_rule_online")


def _known_methods(values: list) -> bool:
    unknown = [v for v in values if v not in METHODS]
    if unknown or not values:
        raise ValueError(f"unknown or no methods {unknown}; known: {sorted(METHODS)}")
    return True


def _task_ids(values: list) -> bool:
    check = env_id_check(MOCK_ENV_ID, state_vector=True)
    if not values or len(set(values)) != len(values):
        raise ValueError("needs at least one task, no duplicates")
    return all(check(v) for v in values)


def _seeds(values: list) -> bool:
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError("needs at least one seed, distinct, each >= 0")
    return True


_OVERRIDES = Field(list, items=str)
SCHEMA = {
    "study": Field(str),
    "run_root": Field(str),
    "tasks": Field(list, items=str, check=_task_ids),
    "methods": Field(list, items=str, check=_known_methods),
    "seeds": Field(list, items=int, check=_seeds),
    "total_steps": Field(int, ge=1),
    "num_envs": Field(int, ge=1),
    "episode_length": Field(int, ge=1),
    "cost_limit": Field(float, ge=0),
    "hidden_layers": Field(list, items=int),
    "eval_interval": Field(int, ge=1),
    "eval_episodes": Field(int, ge=1),
    "overrides": {"recipes": _OVERRIDES, **{name: _OVERRIDES for name in METHODS}},
    "rule": Field(str, nullable=True),
    "meta": {
        "checkpoints": {kind: Field(str, nullable=True) for kind in META_KINDS},
        "env_ids": Field(list, items=str, check=_task_ids),
        "episode_length": Field(int, ge=1),
        "total_meta_iters": Field(int, ge=1),
        "seed": Field(int, ge=0),
        "overrides": {"common": _OVERRIDES, **{kind: _OVERRIDES for kind in META_KINDS}},
    },
    "mu": Field(float, ge=0),
    "tail_fraction": Field(float, gt=0, le=1),
    "figures_dir": Field(str, nullable=True),
    "figures_prefix": Field(str),
    "populations": Field(bool),
    "jobs": Field(int, ge=1),
    "timeout_s": Field(float, gt=0, nullable=True),
    "aggregate_only": Field(bool),
    "device": Field(str, check=device_check),
    "torch_threads": Field(int, ge=0),
}


def _learned_rule_has_a_rule(cfg) -> list[str]:
    """The ``learned_rule*`` methods need ``rule``, one that :func:`cmo_rl.pretrained.resolve` finds."""
    from cmo_rl import pretrained

    if not set(cfg["methods"]) & set(RULE_METHODS):
        return []
    if not cfg["rule"]:
        return ["rule: the learned_rule methods need a rule (a shipped name, a rule file or a "
                f"cmo run directory); shipped: {pretrained.available()}"]  # fmt: skip
    try:
        pretrained.resolve(cfg["rule"])
    except ValueError as err:
        return [f"rule: {err}"]
    return []


RULES = (Rule(("methods", "rule"), _learned_rule_has_a_rule),)


def rule_argument(rule: str) -> str:
    """The ``rule=`` of the ``learned_rule`` runs: a shipped name as it is (the same in every
    checkout, so a study's fingerprints do not depend on where the repository lives), a path
    made absolute (the runs start in their own directories)."""
    from cmo_rl import pretrained

    return rule if rule in pretrained.available() else str(Path(rule).resolve())


def echo(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def make_budget(cfg: DictConfig) -> Budget:
    try:
        return Budget(
            total_steps=cfg.total_steps,
            num_envs=cfg.num_envs,
            episode_length=cfg.episode_length,
            cost_limit=cfg.cost_limit,
            hidden_layers=tuple(cfg.hidden_layers),
            eval_interval=cfg.eval_interval,
            eval_episodes=cfg.eval_episodes,
            device=cfg.device,
            torch_threads=cfg.torch_threads,
        )
    except ValueError as err:
        raise ConfigError([f"budget: {err}"]) from None


def meta_checkpoints(cfg: DictConfig, study_dir: Path, budget: Budget, env: dict):
    """``({kind: checkpoint}, {method: why blocked})`` for the meta methods asked for."""
    kinds = [METHODS[m].recipe for m in cfg.methods if METHODS[m].kind == "meta"]
    checkpoints, blocked, to_train = {}, {}, []
    for kind in kinds:
        given = cfg.meta.checkpoints[kind]
        if given is None:
            to_train.append(
                meta_training_spec(
                    kind,
                    study_dir=study_dir,
                    env_ids=list(cfg.meta.env_ids),
                    episode_length=cfg.meta.episode_length,
                    total_meta_iters=cfg.meta.total_meta_iters,
                    seed=cfg.meta.seed,
                    budget=budget,
                    extra=[*cfg.meta.overrides.common, *cfg.meta.overrides[kind]],
                )
            )
        elif Path(given).is_dir() and latest_checkpoint(given) is None:
            raise ConfigError([f"meta.checkpoints.{kind}: no valid checkpoint under {given}"])
        elif not Path(given).exists():
            raise ConfigError([f"meta.checkpoints.{kind}: {given} does not exist"])
        else:
            checkpoints[kind] = str(Path(given).resolve())
    if to_train:
        run = collect if cfg.aggregate_only else execute
        kw = {} if cfg.aggregate_only else {"jobs": cfg.jobs, "env": env, "echo": echo}
        for result in run(to_train, **kw):
            kind = result.spec.method.removeprefix("meta_train_")
            if result.ok:
                checkpoints[kind] = str(latest_checkpoint(result.run_dir))
            else:
                blocked[f"meta_{kind}"] = (
                    f"meta-training of the {kind} optimizer {result.status}: "
                    f"{result.reason} (log: {result.log})"
                )
    return checkpoints, blocked


@accept_renamed_keys
@hydra.main(config_path=str(CONFIG_DIR), config_name="compare", version_base=None)
@run_cli(schema=SCHEMA, rules=RULES)
def main(cfg: DictConfig) -> None:
    start = time.time()
    study_dir = Path(cfg.run_root) / cfg.study
    budget = make_budget(cfg)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    echo(
        f"study {study_dir}: {len(cfg.methods)} methods x {len(cfg.tasks)} tasks x "
        f"{len(cfg.seeds)} seeds, {budget.total_steps} env steps each ({budget.num_updates} "
        f"updates of {budget.steps_per_epoch} steps), cost limit {budget.cost_limit:g} per "
        f"{budget.episode_length}-step episode"
    )
    checkpoints, blocked = meta_checkpoints(cfg, study_dir, budget, env)
    overrides = {k: list(v) for k, v in cfg.overrides.items()}
    for method in set(cfg.methods) & set(RULE_METHODS):
        overrides[method] = [f"rule={rule_argument(cfg.rule)}", *overrides[method]]
    specs = plan_runs(
        study_dir=study_dir,
        tasks=list(cfg.tasks),
        methods=list(cfg.methods),
        seeds=list(cfg.seeds),
        budget=budget,
        overrides=overrides,
        checkpoints=checkpoints,
        blocked=blocked,
        populations=cfg.populations,
    )
    if cfg.aggregate_only:
        results = collect(specs)
    else:
        results = execute(specs, jobs=cfg.jobs, timeout_s=cfg.timeout_s, env=env, echo=echo)

    table = comparison_table(results, budget.cost_limit, cfg.mu, tail_fraction=cfg.tail_fraction)
    meta_tasks = set()  # the tasks the meta-optimizers were trained on (from their checkpoints)
    for ckpt in checkpoints.values():
        meta_tasks |= set(load_meta_optimizer(ckpt)[1].get("env_ids", ()))
    if set(cfg.methods) & set(RULE_METHODS):  # the rule's own meta-training tasks
        from cmo_rl import pretrained

        meta_tasks |= set(pretrained.describe(cfg.rule)["provenance"].get("tasks", ()))
    notes = {
        t: "held out from meta-training" for t in cfg.tasks if meta_tasks and t not in meta_tasks
    }
    header = (
        f"Study `{study_dir}`: {budget.total_steps} env steps per run ({budget.num_updates} "
        f"updates of {budget.num_envs} x {budget.episode_length} steps), cost limit "
        f"{budget.cost_limit:g}, seeds {list(cfg.seeds)}; mean ± 95% CI over seeds; penalized "
        f"return with mu = {cfg.mu:g}."
    )
    paths = write_table(table, study_dir, notes=notes, header=header)
    figures = Path(cfg.figures_dir) if cfg.figures_dir else study_dir / "figures"
    note = f"{budget.total_steps} env steps per run"
    paths += plot_study(
        results, table, budget.cost_limit, figures, prefix=cfg.figures_prefix, budget_note=note
    )
    info = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "argv": sys.argv,
        "wall_s_this_call": time.time() - start,
        "run_wall_s_sum": sum(r.wall_s for r in results),
        "checkpoints": checkpoints,
        "status": {r.spec.key: r.status for r in results},
    }
    if not cfg.aggregate_only:  # keep the record (wall time) of the call that ran the study
        (study_dir / "study.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

    print("\n" + format_markdown(table, notes=notes) + "\n", flush=True)
    bad = [r for r in results if not r.ok]
    for r in bad:
        echo(f"{r.status.upper()} {r.spec.key}: {r.reason} (log: {r.log})")
    done = sum(r.ok for r in results)
    echo(
        f"{done}/{len(results)} runs with results, {len(bad)} crashed/blocked/missing; "
        f"{time.time() - start:.0f} s; wrote {', '.join(str(p) for p in paths)}"
    )


if __name__ == "__main__":
    main()
