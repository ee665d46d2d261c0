"""Pretrained learned dual rules shipped with the package, and the rule file format.

A rule file (``<name>.pt``) holds a :class:`~cmo_rl.objectives.learned_dual.LearnedLagrangian`'s
shape (``config``), its meta-parameters (``parameters``; never controller state: a loaded rule
starts a fresh run) and its ``provenance``: the command, tasks, budget and commit that made it.
Meta-training (``cmo meta_algorithm=es`` or ``online``) writes one into its run directory
(``rule.pt``); copying it here (``cmo_rl/pretrained/<name>.pt``) ships it. Shipped:

``online-goal1``  a meta-PID rule (no MLP) carried by ``cmo meta_algorithm=online`` through six
                  200k-step PPO-Lagrangian runs alternating SafetyPointGoal1-v0 and
                  SafetyCarGoal1-v0 (1.2M env steps, cost limit 25, ``online.lr=0.05``,
                  ``mu=50``); ``describe("online-goal1")`` has the command and commit, and
                  ``docs/results.md`` what it does at 500k steps against PPO-Lag and PID-Lag.

    >>> from cmo_rl import pretrained
    >>> names = pretrained.available()           # the shipped rules
    >>> # rule = pretrained.load(names[0], cost_limit=25.0, horizon=50)

``recipes/meta_lagrangian.py rule=<name or path>`` trains PPO-Lagrangian with such a rule.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from cmo_rl.objectives.learned_dual import LearnedLagrangian
from cmo_rl.objectives.rule_file import read_rule_file, write_rule_file

__all__ = [
    "FORMAT",
    "PRETRAINED_DIR",
    "available",
    "current_commit",
    "describe",
    "load",
    "resolve",
    "save",
]

#: The folder of the shipped rule files (package data).
PRETRAINED_DIR = Path(__file__).resolve().parent
#: The ``format`` entry of a rule file.
FORMAT = "cmo_rl.learned_dual/1"


def available() -> list[str]:
    """The names of the shipped rules (files ``cmo_rl/pretrained/<name>.pt``), sorted.

    Examples:
        >>> all(isinstance(name, str) for name in available())
        True
    """
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The file of a rule: a shipped name, a rule file, or an ES run directory (its
    ``rule.pt``); an unknown one is a ``ValueError`` that lists the shipped names.

    Examples:
        >>> try:
        ...     resolve("no-such-rule")
        ... except ValueError as err:
        ...     print(str(err).split(" (")[0])
        'no-such-rule' is neither a shipped rule
    """
    text = str(name_or_path)
    if text in available():
        return PRETRAINED_DIR / f"{text}.pt"
    path = Path(text).expanduser()
    if path.is_dir() and (path / "rule.pt").is_file():  # an ES run directory
        return path / "rule.pt"
    if path.is_file():
        return path
    raise ValueError(
        f"{text!r} is neither a shipped rule ({', '.join(available()) or 'none shipped'}) "
        "nor a rule file (a .pt written by `cmo meta_algorithm=es`, or its run directory)"
    )


def current_commit() -> str:
    """The git commit of this checkout (for a rule's provenance); ``"unknown"`` outside git.

    Examples:
        >>> len(current_commit()) in (40, len("unknown"))
        True
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=PRETRAINED_DIR,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _read(path: Path) -> dict[str, Any]:
    return read_rule_file(path, format=FORMAT, what="learned rule")


def save(rule: LearnedLagrangian, path: str | os.PathLike, provenance: dict[str, Any]) -> Path:
    """Write ``rule``'s shape, meta-parameters and ``provenance`` to ``path`` (atomically).

    Examples:
        >>> import tempfile
        >>> rule = LearnedLagrangian(25.0, hidden=4)
        >>> path = save(rule, Path(tempfile.mkdtemp()) / "r.pt", {"command": "demo"})
        >>> describe(path)["provenance"], load(path, cost_limit=10.0).config()["cost_limit"]
        ({'command': 'demo'}, 10.0)
    """
    return write_rule_file(path, rule, provenance, format=FORMAT, config=rule.config())


def describe(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A rule file's ``config`` (the constructor arguments: its shape and the values it was
    *initialised* with), its ``learned`` PID part (``kp``, ``ki``, ``kd``, ``alpha_p``,
    ``alpha_d``, ``offset``: the values it applies) and its ``provenance``.

    Examples:
        >>> import math, tempfile
        >>> trained = LearnedLagrangian(25.0, kp=0.1, hidden=0)
        >>> with torch.no_grad():
        ...     _ = trained.log_gains[0].fill_(math.log(0.5))
        >>> path = save(trained, Path(tempfile.mkdtemp()) / "r.pt", {"tasks": ["SafetyPointGoal1-v0"]})
        >>> info = describe(path)
        >>> info["config"]["kp"], round(info["learned"]["kp"], 6), info["provenance"]["tasks"]
        (0.1, 0.5, ['SafetyPointGoal1-v0'])
    """
    data = _read(resolve(name_or_path))
    params = data["parameters"]
    gains, alphas = params["log_gains"].exp(), torch.sigmoid(params["logit_alphas"])
    learned = {
        "kp": float(gains[0]),
        "ki": float(gains[1]),
        "kd": float(gains[2]),
        "alpha_p": float(alphas[0]),
        "alpha_d": float(alphas[1]),
        "offset": float(params["offset"]),
    }
    return {"config": data["config"], "learned": learned, "provenance": data["provenance"]}


def load(
    name_or_path: str | os.PathLike,
    *,
    cost_limit: float | None = None,
    horizon: int | None = None,
    device: torch.device | str | None = None,
) -> LearnedLagrangian:
    """The rule ``name_or_path`` (a shipped name, a rule file or an ES run directory) with a
    fresh controller state, for a run with ``cost_limit`` and ``horizon`` updates (``None``:
    the values it was trained with).

    Examples:
        >>> import tempfile
        >>> trained = LearnedLagrangian(25.0, offset=0.3, hidden=2)
        >>> _ = trained.update(40.0)  # controller state: not part of the file
        >>> path = save(trained, Path(tempfile.mkdtemp()) / "r.pt", {})
        >>> rule = load(path, cost_limit=10.0, horizon=7)
        >>> round(float(rule.offset), 3), float(rule.cost_limit), rule.horizon, int(rule.updates)
        (0.3, 10.0, 7, 0)
    """
    path = resolve(name_or_path)
    data = _read(path)
    config = dict(data["config"])
    if cost_limit is not None:
        config["cost_limit"] = float(cost_limit)
    if horizon is not None:
        config["horizon"] = int(horizon)
    rule = LearnedLagrangian(**config, device=device)
    missing = {k for k, _ in rule.named_parameters()} ^ set(data["parameters"])
    if missing:
        raise ValueError(f"{path} does not match its config (parameters {sorted(missing)})")
    with torch.no_grad():
        for key, param in rule.named_parameters():
            param.copy_(data["parameters"][key])
    return rule
