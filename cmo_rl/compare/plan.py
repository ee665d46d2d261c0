"""Which runs a comparison study is made of, and the command line of each.

A study is ``methods x tasks x seeds`` at one env-step budget. Every run is one subprocess (a
crash stays contained) writing into its own directory::

    <run_root>/<study>/<task>/<method>/seed<k>/
        command.json     the command and its fingerprint (written before the launch)
        log.txt          the subprocess's stdout and stderr
        status.json      written when it exits: done / crashed, exit code, wall time
        <run name>/<task>/<timestamp>/   the recipe's own run directory (metrics.csv, checkpoints/)

Methods (:data:`METHODS`):

=======================  =======================================================================
``ppo``                  unconstrained PPO: ``recipes/ppo_lagrangian.py`` with ``init_lambda=0``
                         and the *recipe's* limit at :data:`UNCONSTRAINED_LIMIT`, so the
                         projected multiplier stays exactly 0 (``A_L = A_R``); the study's own
                         limit still scores the run
``ppo_lag``              ``recipes/ppo_lagrangian.py`` (OmniSafe ``PPOLag`` defaults)
``pid_lag``              ``recipes/pid_lagrangian.py`` (OmniSafe ``CPPOPID`` defaults)
``cpo``                  ``recipes/cpo.py`` (OmniSafe ``CPO`` defaults)
``meta_lstm``            a meta-trained LSTM optimizer, frozen, trains a fresh policy
                         (``python -m cmo_rl.compare.frozen``, :mod:`cmo_rl.compare.frozen`)
``meta_pid``             the same with a meta-trained PID optimizer
``learned_rule``         PPO-Lagrangian with a learned lambda rule, frozen:
                         ``recipes/meta_lagrangian.py rule=<the study's rule>`` (a shipped
                         rule, a rule file, or a ``cmo meta_algorithm=es|online`` run directory)
``learned_rule_online``  the same rule, learning on during the run
                         (``meta_lr=0.05``, ``cmo``'s default ``online.lr``; the recipe's ``mu``)
=======================  =======================================================================

**Populations.** The seeds of a method that trains as a population (``ppo``, ``ppo_lag``,
``pid_lag``, ``learned_rule``, ``learned_rule_online``: :attr:`Method.population`) run as
*one* process, ``seeds=[...] compile=true`` (:mod:`cmo_rl.population`), in
``<run_root>/<study>/<task>/<method>/population/``; its members' run directories are the
per-seed results. ``plan_runs(..., populations=False)`` plans one process per seed instead
(and reads studies written that way).

Shared settings (:class:`Budget`): task, seed, ``total_steps``, ``num_envs``, horizon, cost
limit, network, evaluation schedule. Recipes collect ``steps_per_epoch`` env steps per update; a
frozen meta-optimizer collects one round of ``num_envs x horizon`` steps per update; the study
sets ``steps_per_epoch = num_envs x horizon`` so every method gets the same number of updates on
the same number of env steps, and the same ``step`` grid in ``metrics.csv``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cmo_rl.config import RENAMED_KEYS

__all__ = [
    "METHODS",
    "UNCONSTRAINED_LIMIT",
    "Budget",
    "Method",
    "RunSpec",
    "fingerprint",
    "meta_training_spec",
    "plan_runs",
    "run_command",
]

REPO = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO / "recipes"
#: The recipe-side cost limit of unconstrained PPO: no episode cost reaches it, so the
#: multiplier's projected ascent keeps ``lambda = 0`` exactly.
UNCONSTRAINED_LIMIT = 1.0e9


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    Attributes:
        name: the study's name of the method (directory name, table row).
        label: its name in tables and legends.
        kind: ``"recipe"`` (``recipes/<recipe>.py``) or ``"meta"`` (a frozen meta-optimizer).
        recipe: the recipe file stem (``kind="recipe"``) or the meta-optimizer type.
        run_name: the directory the program puts its run under (``<run name>/<task>/...``).
        overrides: ``key=value`` overrides that define the method (after the shared ones).
        population: its seeds can train as one population (``seeds=[...]``).

    Examples:
        >>> METHODS["ppo"].recipe, METHODS["ppo"].overrides[0], METHODS["ppo"].population
        ('ppo_lagrangian', 'init_lambda=0.0', True)
    """

    name: str
    label: str
    kind: str
    recipe: str
    run_name: str
    overrides: tuple[str, ...] = ()
    population: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "ppo",
            "PPO (unconstrained)",
            "recipe",
            "ppo_lagrangian",
            "ppo_lag",
            ("init_lambda=0.0", f"cost_limit={UNCONSTRAINED_LIMIT}"),
            population=True,
        ),
        Method("ppo_lag", "PPO-Lag", "recipe", "ppo_lagrangian", "ppo_lag", population=True),
        Method("pid_lag", "PID-Lag", "recipe", "pid_lagrangian", "pid_lag", population=True),
        Method("cpo", "CPO", "recipe", "cpo", "cpo"),
        Method("meta_lstm", "meta-LSTM", "meta", "lstm", "meta_lstm"),
        Method("meta_pid", "meta-PID", "meta", "pid", "meta_pid"),
        Method(
            "learned_rule", "learned rule", "recipe", "meta_lagrangian", "meta_lag", population=True
        ),
        Method(
            "learned_rule_online",
            "learned rule, online",
            "recipe",
            "meta_lagrangian",
            "meta_lag",
            ("meta_lr=0.05",),
            population=True,
        ),
    )
}


@dataclass(frozen=True)
class Budget:
    """Settings every run of a study shares.

    Attributes:
        total_steps: env steps of training per run.
        num_envs: sub-envs stepped together.
        episode_length: the episode horizon ``T`` (also a meta round's length).
        cost_limit: ``d`` per episode of ``T`` steps.
        hidden_layers: policy and critic widths.
        eval_interval: updates between deterministic evaluations (and after the last one).
        eval_episodes: episodes per evaluation.
        device: where each run computes (a torch device string).
        torch_threads: how many CPU threads each run's torch uses.

    Examples:
        >>> Budget(total_steps=8000, num_envs=4, episode_length=1000).steps_per_epoch
        4000
    """

    total_steps: int
    num_envs: int = 4
    episode_length: int = 1000
    cost_limit: float = 25.0
    hidden_layers: tuple[int, ...] = (64, 64)
    eval_interval: int = 5
    eval_episodes: int = 5
    device: str = "cpu"
    torch_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "episode_length", "eval_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.total_steps < self.steps_per_epoch:
            raise ValueError(
                f"total_steps ({self.total_steps}) is less than one update's worth of env steps "
                f"(num_envs x episode_length = {self.steps_per_epoch})"
            )

    @property
    def steps_per_epoch(self) -> int:
        """Env steps per update: ``num_envs x episode_length`` (one episode per env)."""
        return int(self.num_envs) * int(self.episode_length)

    @property
    def num_updates(self) -> int:
        """Updates per run: ``total_steps // steps_per_epoch``."""
        return int(self.total_steps) // self.steps_per_epoch

    @property
    def checkpoint_interval(self) -> int:
        """Updates between a recipe run's checkpoints: every evaluation, so that an interrupted
        study resumes its runs (and the final update, always)."""
        return min(int(self.eval_interval), self.num_updates)

    @property
    def final_step(self) -> int:
        """Env steps after the last update: ``num_updates x steps_per_epoch``."""
        return self.num_updates * self.steps_per_epoch


@dataclass(frozen=True)
class RunSpec:
    """One planned run: a method on a task with a seed.

    Attributes:
        task: the env id it runs on.
        method: the key of its :data:`METHODS` entry.
        seed: its seed (a population's: its first).
        directory: ``<run_root>/<study>/<task>/<method>/seed<k>/`` (a population:
            ``.../<method>/population/``).
        overrides: the program's ``key=value`` arguments (shared, method, user's).
        program: ``recipes/<recipe>.py``, or ``-m cmo_rl.compare.frozen`` for a meta method.
        final_step: the env-step count of its last update (``Budget.final_step``).
        blocked: why it cannot run (e.g. its meta-training crashed), else ``None``.
        seeds: a population's seeds (one process trains them all), else ``()``.

    Examples:
        >>> spec = RunSpec("MockCMDP-v0", "cpo", 2, Path("/tmp/s/MockCMDP-v0/cpo/seed2"),
        ...                ("seed=2",), ("recipes/cpo.py",), final_step=400)
        >>> spec.key, spec.argv[1:]
        ('MockCMDP-v0/cpo/seed2', ['recipes/cpo.py', 'seed=2'])
    """

    task: str
    method: str
    seed: int
    directory: Path
    overrides: tuple[str, ...]
    program: tuple[str, ...]
    final_step: int
    blocked: str | None = field(default=None, compare=False)
    seeds: tuple[int, ...] = ()

    @property
    def argv(self) -> list[str]:
        """The full command line (this interpreter)."""
        return [sys.executable, *self.program, *self.overrides]

    @property
    def key(self) -> str:
        """``task/method/seed<k>`` (a population: ``task/method/seeds<a>,<b>,...``)."""
        if self.seeds:
            return f"{self.task}/{self.method}/seeds{','.join(str(s) for s in self.seeds)}"
        return f"{self.task}/{self.method}/seed{self.seed}"

    def members(self) -> list[RunSpec]:
        """One spec per seed of a population (``[self]`` for a single run): what the tables
        count, each with the population's directory.

        Examples:
            >>> spec = RunSpec("T", "ppo_lag", 0, Path("/s/T/ppo_lag/population"), (), (), 8,
            ...                seeds=(0, 1))
            >>> [m.key for m in spec.members()]
            ['T/ppo_lag/seed0', 'T/ppo_lag/seed1']
        """
        if not self.seeds:
            return [self]
        return [replace(self, seed=int(s), seeds=()) for s in self.seeds]

    @property
    def fingerprint(self) -> str:
        """Identifies what the run computes (see :func:`fingerprint`)."""
        return fingerprint(self.method, self.program, self.overrides, self.directory)


def fingerprint(
    method: str, program: Sequence[str], overrides: Sequence[str], directory: Path
) -> str:
    """A short hash of what a run computes: the method, the program (relative to the
    repository) and its overrides, with the run's own directory written as ``<dir>`` so a
    study that is moved or copied keeps its fingerprints. A finished run is reused only when
    the planned run has the same fingerprint. Renamed keys (:data:`cmo_rl.config.RENAMED_KEYS`)
    are hashed under their old names, so a study written before a rename keeps its
    fingerprints; ``checkpoint_interval`` (when to save, not what is computed) is left out.

    Examples:
        >>> a = fingerprint("cpo", ["recipes/cpo.py"], ["seed=0", "run_root=/x/s0"], Path("/x/s0"))
        >>> b = fingerprint("cpo", ["recipes/cpo.py"], ["seed=0", "run_root=/y/s0"], Path("/y/s0"))
        >>> c = fingerprint("cpo", ["recipes/cpo.py"], ["seed=1", "run_root=/x/s0"], Path("/x/s0"))
        >>> a == b, a == c, len(a)
        (True, False, 16)
    """
    root = str(REPO)
    prog = [p.replace(root, "<repo>") for p in program]
    over = [
        _old_name(o.replace(str(directory), "<dir>"))
        for o in overrides
        if not o.startswith(_NOT_FINGERPRINTED)
    ]
    text = json.dumps({"method": method, "program": prog, "overrides": over}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _old_name(override: str) -> str:
    key, sep, value = override.partition("=")
    return f"{_OLD_NAMES.get(key, key)}{sep}{value}"


_OLD_NAMES = {new: old for old, new in RENAMED_KEYS.items()}
_NOT_FINGERPRINTED = ("checkpoint_interval=",)


def _shared_overrides(task: str, seed: int, budget: Budget, directory: Path) -> list[str]:
    layers = ",".join(str(int(h)) for h in budget.hidden_layers)
    return [
        f"env_id={task}",
        f"seed={int(seed)}",
        f"total_steps={int(budget.total_steps)}",
        f"num_envs={int(budget.num_envs)}",
        f"episode_length={int(budget.episode_length)}",
        f"cost_limit={float(budget.cost_limit)}",
        f"hidden_layers=[{layers}]",
        f"eval_interval={int(budget.eval_interval)}",
        f"eval_episodes={int(budget.eval_episodes)}",
        f"device={budget.device}",
        f"torch_threads={int(budget.torch_threads)}",
        f"run_root={directory}",
        "progress=false",
    ]


def run_command(
    method: Method,
    task: str,
    seed: int,
    budget: Budget,
    directory: Path,
    *,
    extra: Sequence[str] = (),
    checkpoint: str | Path | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(program, overrides)`` of one run.

    Recipes get the shared settings plus ``steps_per_epoch``, ``checkpoint_interval`` (at every
    evaluation, so an interrupted study resumes) and ``normalize_observations`` left at the
    recipe's default; a meta method
    gets the shared settings plus ``checkpoint=<the meta-trained checkpoint>``. ``extra``
    (``key=value``) comes last and wins.

    Examples:
        >>> prog, over = run_command(METHODS["ppo"], "MockCMDP-v0", 1, Budget(400, 4, 25),
        ...                          Path("/tmp/s1"))
        >>> Path(prog[-1]).name, [o for o in over if o.startswith(("cost_limit", "steps_per"))]
        ('ppo_lagrangian.py', ['cost_limit=25.0', 'steps_per_epoch=100', 'cost_limit=1000000000.0'])
    """
    overrides = _shared_overrides(task, seed, budget, directory)
    if method.kind == "recipe":
        program: tuple[str, ...] = (str(RECIPES_DIR / f"{method.recipe}.py"),)
        overrides += [
            f"steps_per_epoch={budget.steps_per_epoch}",
            f"checkpoint_interval={budget.checkpoint_interval}",
        ]
    elif method.kind == "meta":
        if checkpoint is None:
            raise ValueError(f"method {method.name!r} needs a meta-trained checkpoint")
        program = ("-m", "cmo_rl.compare.frozen")
        overrides += [f"checkpoint={checkpoint}", f"run_name={method.run_name}"]
    else:
        raise ValueError(f"unknown method kind {method.kind!r}")
    overrides += [*method.overrides, *extra]
    return program, tuple(overrides)


def plan_runs(
    *,
    study_dir: str | Path,
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    overrides: Mapping[str, Sequence[str]] | None = None,
    checkpoints: Mapping[str, str | Path | None] | None = None,
    blocked: Mapping[str, str] | None = None,
    populations: bool = True,
) -> list[RunSpec]:
    """Every ``task x method x seed`` run of a study, in that order (tasks outermost); the
    seeds of a :attr:`Method.population` method as one population run (``populations``).

    Args:
        study_dir: ``<run_root>/<study>``.
        tasks: the env ids to run on.
        methods: the methods to run, keys of :data:`METHODS`.
        seeds: the seeds to run each method on each task with.
        budget: the shared settings.
        overrides: ``{method: ["key=value", ...]}`` added to that method's runs, and
            ``{"recipes": [...]}`` added to every recipe method's runs (before the method's).
        checkpoints: ``{"lstm": path, "pid": path}``: the meta-trained checkpoint of each meta
            method's optimizer type.
        blocked: ``{method: reason}``: runs of that method are planned but marked blocked.
        populations: one process per population method and task (``seeds=[...]``,
            ``compile=true``); ``False``: one process per seed.

    Examples:
        >>> runs = plan_runs(study_dir="/tmp/study", tasks=["MockCMDP-v0"], methods=["ppo_lag", "cpo"],
        ...                  seeds=[0, 1], budget=Budget(400, 4, 25))
        >>> [r.key for r in runs]
        ['MockCMDP-v0/ppo_lag/seeds0,1', 'MockCMDP-v0/cpo/seed0', 'MockCMDP-v0/cpo/seed1']
        >>> str(runs[0].directory), runs[0].overrides[-2:]
        ('/tmp/study/MockCMDP-v0/ppo_lag/population', ('seeds=[0,1]', 'compile=true'))
        >>> singles = plan_runs(study_dir="/tmp/study", tasks=["MockCMDP-v0"], methods=["ppo_lag"],
        ...                     seeds=[0, 1], budget=Budget(400, 4, 25), populations=False)
        >>> str(singles[1].directory)
        '/tmp/study/MockCMDP-v0/ppo_lag/seed1'
    """
    overrides = dict(overrides or {})
    checkpoints = dict(checkpoints or {})
    blocked = dict(blocked or {})
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    specs = []
    for task in tasks:
        for name in methods:
            method = METHODS[name]
            extra = list(overrides.get(name, ()))
            if method.kind == "recipe":
                extra = [*overrides.get("recipes", ()), *extra]
            checkpoint = checkpoints.get(method.recipe) if method.kind == "meta" else None
            reason = blocked.get(name)
            if method.kind == "meta" and checkpoint is None and reason is None:
                reason = f"no meta-trained {method.recipe} checkpoint"
            if populations and method.population:
                directory = Path(study_dir) / task / name / "population"
                listed = ",".join(str(int(s)) for s in seeds)
                program, over = run_command(
                    method, task, int(seeds[0]), budget, directory,
                    extra=[f"seeds=[{listed}]", "compile=true", *extra],
                )  # fmt: skip
                specs.append(
                    RunSpec(
                        task,
                        name,
                        int(seeds[0]),
                        directory,
                        over,
                        program,
                        budget.final_step,
                        reason,
                        seeds=tuple(int(s) for s in seeds),
                    )  # fmt: skip
                )
                continue
            for seed in seeds:
                directory = Path(study_dir) / task / name / f"seed{int(seed)}"
                program, over = run_command(
                    method,
                    task,
                    int(seed),
                    budget,
                    directory,
                    extra=extra,
                    checkpoint=checkpoint if checkpoint is not None else "<none>",
                )
                specs.append(
                    RunSpec(
                        task, name, int(seed), directory, over, program, budget.final_step, reason
                    )
                )
    return specs


def meta_training_spec(
    kind: str,
    *,
    study_dir: str | Path,
    env_ids: Sequence[str],
    episode_length: int,
    total_meta_iters: int,
    seed: int,
    budget: Budget,
    extra: Sequence[str] = (),
) -> RunSpec:
    """The ``cmo`` meta-training of a study's ``kind`` (``"lstm"``/``"pid"``) optimizer, in
    ``<study_dir>/meta_train/<kind>/``: ``recipes/meta_train.py`` on ``env_ids`` with episodes
    of ``episode_length`` steps, the limit scaled to them (``d * episode_length / T``), the
    study's policy size, no meta-test; done when its ``step_<total_meta_iters>`` checkpoint is.

    Examples:
        >>> spec = meta_training_spec("pid", study_dir="/tmp/s", env_ids=["MockCMDP-v0"],
        ...     episode_length=20, total_meta_iters=3, seed=1, budget=Budget(400, 4, 25))
        >>> spec.key, spec.final_step, [o for o in spec.overrides if o.startswith("cost_limit")]
        ('meta_train/meta_train_pid/seed1', 3, ['cost_limit=20.0'])
    """
    if kind not in ("lstm", "pid"):
        raise ValueError(f"meta-optimizer kind must be 'lstm' or 'pid', got {kind!r}")
    directory = Path(study_dir) / "meta_train" / kind
    limit = float(budget.cost_limit) * int(episode_length) / int(budget.episode_length)
    layers = ",".join(str(int(h)) for h in budget.hidden_layers)
    overrides = (
        f"env_ids=[{','.join(env_ids)}]",
        "eval_env_ids=[]",
        f"meta_optimizer_type={kind}",
        f"episode_length={int(episode_length)}",
        f"cost_limit={limit}",
        f"total_meta_iters={int(total_meta_iters)}",
        f"hidden_layers=[{layers}]",
        f"seed={int(seed)}",
        "meta_test.enabled=false",
        f"run_root={directory}",
        "progress=false",
        f"device={budget.device}",
        f"torch_threads={int(budget.torch_threads)}",
        *extra,
    )
    program = (str(RECIPES_DIR / "meta_train.py"),)
    return RunSpec(
        "meta_train", f"meta_train_{kind}", int(seed), directory, overrides, program,
        int(total_meta_iters),
    )  # fmt: skip


def describe(spec: RunSpec) -> dict[str, Any]:
    """The ``command.json`` content of a run."""
    return {"argv": spec.argv, "fingerprint": spec.fingerprint, "key": spec.key}
