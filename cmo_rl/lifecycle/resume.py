"""Where a resumed run continues from, and with which config — one policy for every program.

``resume=`` takes a run directory, ``latest`` (the newest run of the program under
``run_root``, on any task) or one checkpoint file of a run (``<run>/checkpoints/step_<n>.pt``).
A run directory or ``latest`` continues from the run's *newest* checkpoint file; if that file is
unreadable (truncated by a crash, corrupt, another format) the run is refused with a
:class:`~cmo_rl.config.ConfigError` (exit code 2) that names the bad file, the newest valid
checkpoint and the exact ``resume=`` that continues from it. Nothing in the run directory is
read-modified-written before the user chooses that checkpoint: resuming from an older
checkpoint drops the later ``metrics.csv`` rows, and that is the user's explicit choice.

The config of a resumed run is the stored one; only the program's resumable keys may take new
values (:func:`resolve_resume_config`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from cmo_rl.config import ConfigError
from cmo_rl.lifecycle.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
)
from cmo_rl.lifecycle.logging import find_runs

__all__ = [
    "LATEST",
    "hydra_override_keys",
    "load_resume_state",
    "locate_resume",
    "resolve_resume_config",
]

#: ``resume=latest``: the newest run of the program under ``run_root`` (any task).
LATEST = "latest"
_OTHER_RUN = "(a run of another recipe or program?)"


def locate_resume(
    resume: str | os.PathLike, *, run_root: str | os.PathLike, program: str
) -> tuple[Path, Path | None]:
    """The run directory and checkpoint file that ``resume=`` names (``None``: no checkpoint).

    Raises :class:`~cmo_rl.config.ConfigError` if ``resume`` is neither a run directory,
    ``latest`` nor a checkpoint file of a run.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.lifecycle.checkpoint import checkpoint_path, save_checkpoint
        >>> from cmo_rl.lifecycle.logging import make_run_dir
        >>> with tempfile.TemporaryDirectory() as root:
        ...     run = make_run_dir(root, "ppo_lag", "MockCMDP-v0")
        ...     ckpt = save_checkpoint(checkpoint_path(run, 200), {"step": 200})
        ...     by_dir = locate_resume(run, run_root=root, program="ppo_lag")
        ...     by_latest = locate_resume("latest", run_root=root, program="ppo_lag")
        ...     by_file = locate_resume(ckpt, run_root=root, program="ppo_lag")
        ...     by_dir == by_latest == by_file == (run, ckpt)
        True
    """
    if str(resume) == LATEST:
        runs = find_runs(run_root, program)
        if not runs:
            raise ConfigError(
                [f"resume=latest: there is no run of {program!r} under {Path(run_root)}"]
            )
        run_dir = runs[-1]
    else:
        path = Path(resume)
        if path.is_file() and path.parent.name == "checkpoints":
            return path.parent.parent, path
        if not path.is_dir():
            raise ConfigError(
                [
                    f"resume: {str(resume)!r} is not an existing run directory (nor 'latest', "
                    "nor a checkpoint file <run>/checkpoints/step_<n>.pt)"
                ]
            )
        run_dir = path
    found = list_checkpoints(run_dir)
    return run_dir, (found[-1] if found else None)


def load_resume_state(
    resume: str | os.PathLike,
    *,
    run_root: str | os.PathLike,
    program: str,
    required: Collection[str] = ("config", "step"),
) -> tuple[Path, dict[str, Any]]:
    """The run directory and the checkpoint state ``resume=`` continues from; writes nothing.

    Refuses (:class:`~cmo_rl.config.ConfigError`) a run without checkpoint, an unreadable
    checkpoint (naming the newest valid one and the ``resume=`` that uses it) and a checkpoint
    that lacks the program's ``required`` entries.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.lifecycle.logging import make_run_dir
        >>> root = tempfile.mkdtemp()
        >>> try:  # a run that was stopped before its first checkpoint
        ...     load_resume_state(make_run_dir(root, "demo", "T"), run_root=root, program="demo")
        ... except ConfigError as err:
        ...     print(err.problems[0].split(" under ")[0])
        resume: no checkpoint
    """
    run_dir, ckpt = locate_resume(resume, run_root=run_root, program=program)
    if ckpt is None:
        raise ConfigError([f"resume: no checkpoint under {run_dir / 'checkpoints'}"])
    try:
        state = load_checkpoint(ckpt, map_location="cpu")
    except CheckpointError as err:
        raise ConfigError([_unreadable(err, run_dir, ckpt)]) from None
    missing = [k for k in required if k not in state]
    if missing:
        raise ConfigError(
            [f"resume: {ckpt} is not a checkpoint of {program} {_OTHER_RUN} (it lacks {missing})"]
        )
    return run_dir, state


def _unreadable(err: CheckpointError, run_dir: Path, ckpt: Path) -> str:
    """The message for an unreadable checkpoint: what is wrong, and what the user can do."""
    older = [p for p in list_checkpoints(run_dir) if p != ckpt]
    valid = None
    for candidate in reversed(older):
        try:
            load_checkpoint(candidate, map_location="cpu")
        except CheckpointError:
            continue
        valid = candidate
        break
    text = f"resume: {err}; nothing in {run_dir} was changed. "
    if valid is None:
        return text + "There is no older valid checkpoint to continue from."
    return (
        text + f"The newest valid checkpoint is {valid}: resume={valid} continues from it "
        "(metrics.csv rows after its step are then dropped)"
    )


def hydra_override_keys(*, dotted: bool = False) -> set[str] | None:
    """Top-level keys set on the command line of the running Hydra app (``None`` outside Hydra);
    ``dotted=True``: the full dotted paths (``es.generations``).

    ``python recipes/ppo_lagrangian.py resume=runs/... total_steps=2000000`` gives
    ``{"resume", "total_steps"}``.

    Examples:
        >>> hydra_override_keys() is None  # not inside a Hydra app
        True
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key if dotted else key.split(".", 1)[0])
    return keys


def resolve_resume_config(
    requested: Mapping[str, Any],
    stored: Mapping[str, Any],
    explicit: Iterable[str] | None = None,
    *,
    resumable: Collection[str],
    allow_new_keys: bool = False,
) -> dict[str, Any]:
    """The config of a resumed run: ``stored``, with the allowed changes of ``requested``.

    Args:
        requested: the config this invocation was given.
        stored: the config saved in the run's checkpoint.
        explicit: the keys the user set explicitly (Hydra command-line overrides); ``None``
            treats every key of ``requested`` as explicit.
        resumable: the keys that may take a new value (the program's).
        allow_new_keys: what a key of ``requested`` that ``stored`` lacks and the user did not
            set means: ``False``, a :class:`~cmo_rl.config.ConfigError` (a checkpoint of
            another recipe); ``True``, a key added to the program after the run was written,
            which takes its requested (default) value.

    Explicit keys in ``resumable`` take the requested value; of a sub-config named only by
    dotted paths (``explicit={"es.generations"}``) only those leaves change. Other explicit
    keys must equal the stored value, else a :class:`~cmo_rl.config.ConfigError` lists them. Values are deep
    copies, so the result shares nothing with ``requested`` or ``stored``.

    Examples:
        >>> stored = {"seed": 0, "total_steps": 100, "lr": 0.1, "resume": None}
        >>> resolve_resume_config({"seed": 0, "total_steps": 200, "lr": 0.5, "resume": "r"}, stored,
        ...                       explicit={"total_steps", "resume"}, resumable={"total_steps", "resume"})
        {'seed': 0, 'total_steps': 200, 'lr': 0.1, 'resume': 'r'}
        >>> resolve_resume_config({**stored, "lr": 0.5, "new_key": 1}, stored, explicit={"lr"},
        ...                       resumable={"lr"}, allow_new_keys=True)
        {'seed': 0, 'total_steps': 100, 'lr': 0.5, 'resume': None, 'new_key': 1}
        >>> resolve_resume_config({"es": {"generations": 9, "pairs": 4}},
        ...     {"es": {"generations": 3, "pairs": 2}}, explicit={"es.generations"}, resumable={"es"})
        {'es': {'generations': 9, 'pairs': 2}}
        >>> try:
        ...     resolve_resume_config({"seed": 1, "total_steps": 100, "lr": 0.1}, stored,
        ...                           resumable={"total_steps"})
        ... except ConfigError as err:
        ...     print(err)
        invalid config (1 problem):
          - seed: got 1 but the resumed run has 0; only ['total_steps'] may change on resume
    """
    paths = set(requested) if explicit is None else set(explicit)
    keys = {path.split(".", 1)[0] for path in paths} & set(requested)
    merged = copy.deepcopy(dict(stored))
    problems = []
    for key in sorted(keys):
        leaves = [path.split(".", 1)[1] for path in paths if path.startswith(f"{key}.")]
        if key in resumable and key not in paths and leaves and key in stored:
            merged[key] = copy.deepcopy(stored[key])  # a sub-config: only the leaves set change
            for leaf in leaves:
                _set_path(merged[key], leaf, _get_path(requested[key], leaf))
        elif key in resumable:
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


def _get_path(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return copy.deepcopy(tree)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value
