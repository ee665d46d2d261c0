"""The ``cmo`` program: meta-train a constraint-aware optimizer, log, checkpoint, meta-test.

    cmo                                            # cmo_rl/conf/default.yaml
    cmo preset=quick                               # a real meta-training in a few minutes
    cmo meta_optimizer_type=pid meta_lr=5e-4 device=cpu
    cmo meta_algorithm=es env_ids=[SafetyPointGoal1-v0,SafetyCarGoal1-v0]  # a learned lambda rule
    cmo resume=runs/meta_lstm/SafetyPointGoal1-v0/20250101-120000 total_meta_iters=1000
    python recipes/meta_train.py preset=quick      # the same program

:func:`main` reads top to bottom, in the numbered steps of one run:

1. the effective config: checked (:func:`cmo_rl.meta_schema.check_meta_config`, every problem
   in one message, exit code 2); with ``resume``, the run's stored config plus the allowed
   changes (:data:`~cmo_rl.meta_schema.RESUMABLE_KEYS`) — the shared run lifecycle
   (:class:`cmo_rl.lifecycle.Run`: run directory, resume and checkpoint policy, logger,
   signals);
2. :meth:`cmo_rl.meta.MetaTrainer.from_config` builds the meta-optimizer, the task sampler and
   the outer Adam; a resumed run loads its checkpoint (the trainer's state: meta-optimizer,
   outer Adam, task-seed generator, task and env-step counts, iteration; the initial
   optimizer, the partial logging window, RNG states);
3. ``total_meta_iters`` meta-iterations; every ``log_interval`` of them one row of
   ``metrics.csv`` / TensorBoard (:class:`cmo_rl.meta.MetricWindow` means over the window,
   ``step`` = meta-iteration, names of ``docs/metrics.md``); a checkpoint every
   ``checkpoint_interval``, at the end and on Ctrl-C / SIGTERM (the state after the last
   *completed* meta-iteration);
4. the meta-test (``meta_test.enabled``, :func:`cmo_rl.meta.run_meta_test`): the initial and the
   learned optimizer, frozen, train fresh policies on every training task and on the held-out
   ``eval_env_ids`` with the same seeds; the before/after table is printed and saved as
   ``meta_test.txt`` / ``meta_test.csv``; optionally PPO-Lag and PID-Lag on the same budget
   (:mod:`cmo_rl.meta_baselines`);
5. plots: ``plots/meta_training.png`` (meta-objective, return and cost per task, PID gains)
   and ``plots/meta_test_return.png``, ``plots/meta_test_cost.png`` (per task: mean over seeds
   after each inner round of the meta-test runs, initial vs learned).

With ``meta_algorithm=es`` steps 2-5 are :func:`cmo_rl.meta_es.train_es`'s: a learned
lambda rule meta-trained by evolution strategies over whole PPO-Lagrangian runs, its
``rule.pt`` in the run directory; with ``meta_algorithm=online``,
:func:`cmo_rl.meta_online.train_online`'s: the rule learning online (MetaL-style) through a
chain of whole runs over ``env_ids``.

Exit codes (:mod:`cmo_rl.lifecycle.entry`): 0 done, 2 bad config (or an unreadable checkpoint
to resume), 3 non-finite meta-gradient with ``nan_policy=raise``, 130 / 143 Ctrl-C / SIGTERM
(after the checkpoint).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cmo_rl.config import ConfigError, TrackedConfig, check_override_keys, rename_overrides
from cmo_rl.lifecycle import (
    CONFIG_EXIT_CODE,
    LATEST,
    Run,
    accept_renamed_keys,
    find_runs,
    hydra_override_keys,
    run_cli,
)
from cmo_rl.lifecycle.checkpoint import restore_rng_state
from cmo_rl.lifecycle.resume import locate_resume
from cmo_rl.lifecycle.signals import raise_if_signalled
from cmo_rl.meta_es import ES_CHECKPOINT_ENTRIES, train_es
from cmo_rl.meta_online import ONLINE_CHECKPOINT_ENTRIES, train_online
from cmo_rl.meta_schema import CONF_DIR, RESUMABLE_KEYS, SCHEMA, check_meta_config
from cmo_rl.seeding import seed_everything

__all__ = ["CHECKPOINT_ENTRIES", "RULE_PROGRAMS", "main", "train"]

#: What a ``cmo`` checkpoint holds besides the lifecycle's ``step``, ``time_total``, ``rng``
#: and ``config``: the trainer's state, the initial optimizer and the logging window.
CHECKPOINT_ENTRIES = (
    "meta_optimizer",
    "outer_optimizer",
    "iteration",
    "initial_meta_optimizer",
    "window",
)

#: The meta-algorithms that meta-train a learned lambda rule over whole PPO-Lagrangian runs:
#: ``meta_algorithm -> (program, its checkpoint entries)``; run directories ``meta_<algorithm>``.
RULE_PROGRAMS = {
    "es": (train_es, ES_CHECKPOINT_ENTRIES),
    "online": (train_online, ONLINE_CHECKPOINT_ENTRIES),
}


def train(
    cfg: DictConfig | Mapping[str, Any], *, tracked: list[TrackedConfig] | None = None
) -> Path:
    """Run ``cmo`` with ``cfg`` (a Hydra ``DictConfig`` or a dict); returns the run directory.

    Args:
        cfg: the composed config (checked here first).
        tracked: if given, the :class:`~cmo_rl.config.TrackedConfig` the program read is
            appended (the test that every key is used).

    Raises:
        ConfigError: a bad config or an unusable checkpoint, before anything is written.
    """
    from cmo_rl.meta import MetaTrainer, MetricWindow, iteration_metrics, log_line, run_meta_test
    from cmo_rl.meta_baselines import baseline_runner

    # 1. the effective config (on resume: the stored one plus the allowed changes)
    requested = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    requested = {**requested, "resume": _latest_of_any_type(requested)}
    algorithm = _resumed_algorithm(requested)
    rule_program = algorithm in RULE_PROGRAMS
    entries = RULE_PROGRAMS[algorithm][1] if rule_program else CHECKPOINT_ENTRIES
    run = Run(
        requested,
        program=f"meta_{algorithm if rule_program else requested['meta_optimizer_type']}",
        task=lambda c: c["env_ids"][0],
        resumable=RESUMABLE_KEYS,
        check=check_meta_config,
        allow_new_keys=True,  # keys newer than a stored run take their defaults
        required_state=("config", "step", "time_total", "rng", *entries),
    )
    c = TrackedConfig(run.cfg, read=Run.KEYS)
    if tracked is not None:
        tracked.append(c)
    if c.torch_threads:
        torch.set_num_threads(int(c.torch_threads))
    seed_everything(int(c.seed))
    if c.meta_algorithm in RULE_PROGRAMS:  # a learned lambda rule over whole PPO-Lag runs
        return RULE_PROGRAMS[c.meta_algorithm][0](run, c)

    # 2. the trainer (meta-optimizer, task sampler, outer Adam), restored on resume
    trainer = MetaTrainer.from_config(c)
    initial = copy.deepcopy(trainer.meta_optimizer)
    window = MetricWindow()
    if run.state is not None:
        try:
            trainer.load_state_dict(run.state)
            initial.load_state_dict(run.state["initial_meta_optimizer"])
            window.load_state_dict(run.state["window"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ConfigError([f"resume: the checkpoint does not fit this config: {err}"]) from None
        restore_rng_state(run.state["rng"])

    def snapshot() -> None:
        entries = {"initial_meta_optimizer": initial.state_dict(), "window": window.state_dict()}
        run.snapshot(trainer.iteration, {**trainer.state_dict(), **entries})

    # 3. meta-training: log every log_interval, checkpoint every checkpoint_interval
    total, cost_limit = int(c.total_meta_iters), float(c.cost_limit)
    log_interval, ckpt_interval = int(c.log_interval), int(c.checkpoint_interval)

    def on_iteration(it: int, metrics: dict[str, float]) -> None:
        raise_if_signalled()  # a lost SIGTERM stops before iteration `it` is recorded
        row = iteration_metrics(metrics, trainer.last_tasks, cost_limit=cost_limit)
        row["meta/lr"] = float(trainer.outer_optimizer.param_groups[0]["lr"])
        window.add(row)
        if it % log_interval == 0 or it == total:
            out = window.flush()
            out["meta/env_steps"] = trainer.env_steps
            out["time/total"] = run.time_total
            run.logger.log_scalars(out, step=it)
            run.echo(log_line(it, total, out, cost_limit))
        run.logger.update(1)
        snapshot()
        if it % ckpt_interval == 0 or it == total:
            run.save()

    run.on_close.append(lambda: _plot(run.run_dir, cost_limit, c))
    try:
        with run.open(
            progress_total=total, progress_desc=_progress_label(run), progress_unit="iter"
        ):
            snapshot()
            if trainer.iteration >= total:
                run.echo(
                    f"meta-training already complete ({trainer.iteration} of {total} iterations)"
                )
            trainer.train(callback=on_iteration)
            run.save()

            # 4. meta-test: initial vs learned optimizer, frozen, on fresh policies
            if c.meta_test.enabled:
                baselines = None
                if c.meta_test.compare_baselines:
                    baselines = baseline_runner(c, run.run_dir / "baselines")
                scalars = run_meta_test(
                    c, trainer, initial, run.run_dir, echo=run.echo, baselines=baselines
                )
                if scalars:
                    run.logger.log_scalars(scalars, step=trainer.iteration)
    finally:
        trainer.task_sampler.close()
    return run.run_dir


def _latest_of_any_type(requested: Mapping[str, Any]) -> Any:
    """``resume=latest``: the newest ``cmo`` run under ``run_root`` of any meta-training
    algorithm and meta-optimizer type (only those given on the command line, when
    ``meta_algorithm`` or ``meta_optimizer_type`` is) and on any task; any other ``resume``
    value unchanged."""
    if requested.get("resume") != LATEST:
        return requested.get("resume")
    from cmo_rl.meta import META_OPTIMIZERS

    explicit = hydra_override_keys() or set()
    programs = [f"meta_{kind}" for kind in (*META_OPTIMIZERS, *RULE_PROGRAMS)]
    if "meta_optimizer_type" in explicit:
        programs = [f"meta_{requested['meta_optimizer_type']}"]
    if "meta_algorithm" in explicit:
        algorithm = requested.get("meta_algorithm")
        wanted = f"meta_{algorithm}" if algorithm in RULE_PROGRAMS else None
        rule_programs = {f"meta_{a}" for a in RULE_PROGRAMS}
        programs = [
            p for p in programs if p == wanted or (wanted is None and p not in rule_programs)
        ]
    runs = [run for program in programs for run in find_runs(requested["run_root"], program)]
    if not runs:
        raise ConfigError([f"resume=latest: there is no cmo run under {requested['run_root']}"])
    return str(max(runs, key=lambda path: path.name))  # timestamp names sort by time


def _resumed_algorithm(requested: Mapping[str, Any]) -> str:
    """The meta-algorithm of the run to start or continue: the requested ``meta_algorithm``,
    or, with ``resume=``, the one of the resumed run (its run directory's program)."""
    if not requested.get("resume"):
        return str(requested.get("meta_algorithm"))
    run_dir, _ = locate_resume(
        requested["resume"], run_root=requested["run_root"], program="meta_es"
    )
    algorithm = run_dir.parent.parent.name.removeprefix("meta_")  # the run's program
    return algorithm if algorithm in RULE_PROGRAMS else "bilevel"


def _progress_label(run: Run) -> str:
    """``"meta_lstm SafetyPointGoal1-v0"`` or ``"meta_lstm SafetyPointGoal1-v0 +2 tasks"``."""
    more = len(run.cfg["env_ids"]) - 1
    label = f"{run.program} {run.task}"
    return label + (f" +{more} task{'s' if more > 1 else ''}" if more else "")


def _plot(run_dir: Path, cost_limit: float, c: TrackedConfig) -> None:
    """5. plots of the meta-training curves (the meta-test plots its own)."""
    from cmo_rl.plotting import plot_meta_training

    plot_meta_training(
        run_dir / "metrics.csv",
        run_dir / "plots" / "meta_training.png",
        cost_limit=cost_limit,
        title=f"meta_{c.meta_optimizer_type} on {', '.join(c.env_ids)}",
    )


@run_cli
def _main(cfg: Any) -> None:
    train(cfg)


def main() -> None:
    """Console script ``cmo`` (and ``python recipes/meta_train.py``): Hydra overrides as args."""
    import hydra

    try:
        check_override_keys(rename_overrides(sys.argv[1:])[0], SCHEMA)
    except ConfigError as err:
        sys.stderr.write(f"{err}\n")
        raise SystemExit(CONFIG_EXIT_CODE) from None
    hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="default", version_base=None)
    accept_renamed_keys(hydra_main(_main))()


if __name__ == "__main__":
    main()
