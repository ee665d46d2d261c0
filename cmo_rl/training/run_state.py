"""What a recipe checkpoint holds, and how a resumed run gets back to exactly the same state.

A snapshot is taken at the end of every epoch (and once before the first): a detached CPU copy of

===================  ====================================================================
key                  content
===================  ====================================================================
``step``             env steps so far (the ``metrics.csv`` step of the last epoch)
``epoch``            epochs completed
``time_total``       wall-clock seconds of the run so far, over all resumes
``<module name>``    ``state_dict()`` of each module (``policy``, ``value``, ``cost_value``,
                     ``multiplier``: Lagrange/PID state, Adam state of :math:`\\lambda` included)
``<optim name>``     ``state_dict()`` of each optimizer (``optimizer``)
``obs_norm``         the training env's observation-normaliser state (or ``None``)
``rng``              :func:`cmo_rl.checkpoint.capture_rng_state` (python, numpy, torch, CUDA)
``config``           the resolved config of the run
===================  ====================================================================

The on-exit checkpoint (Ctrl-C, SIGTERM, an error) writes the last *snapshot*, never the live
objects, which may be half-way through an update. Since every epoch also re-seeds the envs
(:func:`cmo_rl.training.collection.epoch_seed`), restoring a snapshot and continuing gives the
same numbers as the uninterrupted run.

On ``resume``, the stored config is the run's config; only :data:`RESUMABLE_KEYS` may be given
new values (e.g. a larger ``total_steps``), anything else that differs is a
:class:`~cmo_rl.config.ConfigError` (:func:`resolve_resume_config`, which ``cmo`` shares with
its own key list).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from cmo_rl.checkpoint import capture_rng_state, cpu_state_copy, restore_rng_state
from cmo_rl.config import ConfigError

__all__ = [
    "RESUMABLE_KEYS",
    "hydra_override_keys",
    "resolve_resume_config",
    "restore_snapshot",
    "take_snapshot",
]

#: Config keys a resumed run may change: they do not alter the training trajectory (or, like
#: ``total_steps``, only extend it; note that with ``lr_decay`` the decay is over the new total).
RESUMABLE_KEYS = frozenset(
    {
        "total_steps",
        "resume",
        "run_root",
        "device",
        "torch_threads",
        "checkpoint_interval",
        "keep_checkpoints",
        "eval_interval",
        "eval_episodes",
        "nan_policy",
        "progress",
    }
)
_OTHER_RUN = "(a run of another recipe or program?)"


def take_snapshot(
    *,
    step: int,
    epoch: int,
    time_total: float,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    obs_norm: nn.Module | None,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """A checkpointable, detached CPU copy of the run's state (keys in the module docstring).

    >>> policy, optim = nn.Linear(2, 1), None
    >>> snap = take_snapshot(step=10, epoch=1, time_total=0.5, modules={"policy": policy},
    ...                      optimizers={}, obs_norm=None, config={"seed": 0})
    >>> _ = nn.init.zeros_(policy.weight)  # later changes do not leak into the snapshot
    >>> bool(snap["policy"]["weight"].abs().sum() > 0), snap["step"], sorted(snap)[:3]
    (True, 10, ['config', 'epoch', 'obs_norm'])
    """
    reserved = {"step", "epoch", "time_total", "obs_norm", "rng", "config"}
    clash = reserved.intersection(modules) | reserved.intersection(optimizers)
    clash |= set(modules).intersection(optimizers)
    if clash:
        raise ValueError(
            f"state names clash with each other or with reserved keys: {sorted(clash)}"
        )
    state: dict[str, Any] = {
        "step": int(step),
        "epoch": int(epoch),
        "time_total": float(time_total),
        "obs_norm": None if obs_norm is None else cpu_state_copy(obs_norm.state_dict()),
        "rng": capture_rng_state(),
        "config": copy.deepcopy(dict(config)),
    }
    for name, module in modules.items():
        state[name] = cpu_state_copy(module.state_dict())
    for name, optimizer in optimizers.items():
        state[name] = cpu_state_copy(optimizer.state_dict())
    return state


def restore_snapshot(
    state: Mapping[str, Any],
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    obs_norm: nn.Module | None,
    restore_rng: bool = True,
) -> None:
    """Load a :func:`take_snapshot` state into live objects (RNG states last).

    Raises ``ValueError`` naming what is missing or mismatched (e.g. a checkpoint of another
    recipe or network size).

    >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    >>> snap = take_snapshot(step=0, epoch=0, time_total=0.0, modules={"policy": a},
    ...                      optimizers={}, obs_norm=None, config={})
    >>> restore_snapshot(snap, modules={"policy": b}, optimizers={}, obs_norm=None)
    >>> torch.equal(a.weight, b.weight)
    True
    """
    missing = [k for k in (*modules, *optimizers, "rng") if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}; it has {sorted(state)}")
    for name, module in modules.items():
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"checkpoint entry {name!r} does not fit this run: {err}") from err
    for name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"checkpoint entry {name!r} does not fit this run: {err}") from err
    stored_norm = state.get("obs_norm")
    if (obs_norm is None) != (stored_norm is None):
        raise ValueError(
            "observation normalisation differs between the checkpoint and this run "
            f"(checkpoint: {'on' if stored_norm is not None else 'off'})"
        )
    if obs_norm is not None:
        obs_norm.load_state_dict(cpu_state_copy(stored_norm))
    if restore_rng:
        restore_rng_state(state["rng"])


def hydra_override_keys() -> set[str] | None:
    """Keys set on the command line of the running Hydra app (``None`` outside Hydra).

    ``python recipes/ppo_lagrangian.py resume=runs/... total_steps=2000000`` gives
    ``{"resume", "total_steps"}``.

    >>> hydra_override_keys() is None  # not inside a Hydra app
    True
    """
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key.split(".", 1)[0])
    return keys


def resolve_resume_config(
    requested: Mapping[str, Any],
    stored: Mapping[str, Any],
    explicit: Iterable[str] | None = None,
    *,
    resumable: Collection[str] = RESUMABLE_KEYS,
    allow_new_keys: bool = False,
) -> dict[str, Any]:
    """The config of a resumed run: ``stored``, with the allowed changes of ``requested``.

    The one resume rule of the baseline recipes (:class:`~cmo_rl.training.run.TrainingRun`,
    the defaults) and of ``cmo`` (:func:`cmo_rl.cli.train`: ``resumable=``
    :data:`cmo_rl.meta_schema.RESUMABLE_KEYS`, ``allow_new_keys=True``).

    Args:
        requested: the config this invocation was given.
        stored: the config saved in the run's checkpoint.
        explicit: the keys the user set explicitly (Hydra command-line overrides); ``None``
            treats every key of ``requested`` as explicit.
        resumable: the keys that may take a new value (default :data:`RESUMABLE_KEYS`).
        allow_new_keys: what a key of ``requested`` that ``stored`` lacks and the user did not
            set means: ``False``, a :class:`~cmo_rl.config.ConfigError` (a checkpoint of
            another recipe); ``True``, a key added to the program after the run was written,
            which takes its requested (default) value.

    Explicit keys in ``resumable`` take the requested value; other explicit keys must equal
    the stored value, else a :class:`~cmo_rl.config.ConfigError` lists them. Values are deep
    copies, so the result shares nothing with ``requested`` or ``stored``.

    >>> stored = {"seed": 0, "total_steps": 100, "lr": 0.1, "resume": None}
    >>> resolve_resume_config({"seed": 0, "total_steps": 200, "lr": 0.5, "resume": "r"}, stored,
    ...                       explicit={"total_steps", "resume"})
    {'seed': 0, 'total_steps': 200, 'lr': 0.1, 'resume': 'r'}
    >>> resolve_resume_config({**stored, "lr": 0.5, "new_key": 1}, stored, explicit={"lr"},
    ...                       resumable={"lr"}, allow_new_keys=True)
    {'seed': 0, 'total_steps': 100, 'lr': 0.5, 'resume': None, 'new_key': 1}
    >>> try:
    ...     resolve_resume_config({"seed": 1, "total_steps": 100, "lr": 0.1}, stored)
    ... except ConfigError as err:
    ...     print(err)
    invalid config (1 problem):
      - seed: got 1 but the resumed run has 0; only ['checkpoint_interval', 'device', 'eval_episodes', 'eval_interval', 'keep_checkpoints', 'nan_policy', 'progress', 'resume', 'run_root', 'torch_threads', 'total_steps'] may change on resume
    """
    keys = set(requested) if explicit is None else set(explicit) & set(requested)
    merged = copy.deepcopy(dict(stored))
    problems = []
    for key in sorted(keys):
        if key in resumable:
            merged[key] = copy.deepcopy(requested[key])
        elif key not in stored:
            problems.append(f"{key}: not in the resumed run's config {_OTHER_RUN}")
        elif requested[key] != stored[key]:
            problems.append(
                f"{key}: got {requested[key]!r} but the resumed run has {stored[key]!r}; only "
                f"{sorted(resumable)} may change on resume"
            )
    for key, value in requested.items():  # implicit keys the run's config lacks
        if key in stored or key in keys:
            continue
        if allow_new_keys:
            merged[key] = copy.deepcopy(value)
        else:
            problems.append(f"{key}: not in the resumed run's config {_OTHER_RUN}")
    if problems:
        raise ConfigError(problems)
    return merged
