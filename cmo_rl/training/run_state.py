"""What a recipe checkpoint holds, and how a resumed run gets back to exactly the same state.

A snapshot is taken at the end of every epoch (and once before the first) by the shared
lifecycle (:meth:`cmo_rl.lifecycle.Run.snapshot`, which adds ``step``, ``time_total``, the RNG
states and the ``config``); a recipe's entries are (:func:`recipe_state`):

===================  ====================================================================
key                  content
===================  ====================================================================
``epoch``            epochs completed
``<module name>``    ``state_dict()`` of each module (``policy``, ``value``, ``cost_value``,
                     ``multiplier``: Lagrange/PID state, Adam state of :math:`\\lambda` included)
``<optim name>``     ``state_dict()`` of each optimizer (``optimizer``)
``obs_norm``         the training env's observation-normaliser state (or ``None``)
===================  ====================================================================

Since every epoch also re-seeds the envs (:func:`cmo_rl.training.collection.epoch_seed`),
restoring a snapshot and continuing gives the same numbers as the uninterrupted run.

On ``resume``, only :data:`RESUMABLE_KEYS` may be given new values (e.g. a larger
``total_steps``); anything else that differs from the stored config is a
:class:`~cmo_rl.config.ConfigError` (:func:`cmo_rl.lifecycle.resolve_resume_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cmo_rl.lifecycle import RESERVED_STATE_KEYS
from cmo_rl.lifecycle.checkpoint import cpu_state_copy, restore_rng_state

__all__ = ["RESUMABLE_KEYS", "recipe_state", "restore_snapshot"]

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


def recipe_state(
    *,
    epoch: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    obs_norm: nn.Module | None,
) -> dict[str, Any]:
    """A recipe's checkpoint entries (keys in the module docstring); live references, which
    :meth:`cmo_rl.lifecycle.Run.snapshot` copies.

    Examples:
        >>> state = recipe_state(epoch=1, modules={"policy": nn.Linear(2, 1)}, optimizers={},
        ...                      obs_norm=None)
        >>> sorted(state), sorted(state["policy"])
        (['epoch', 'obs_norm', 'policy'], ['bias', 'weight'])
    """
    reserved = RESERVED_STATE_KEYS | {"epoch", "obs_norm"}
    clash = reserved.intersection(modules) | reserved.intersection(optimizers)
    clash |= set(modules).intersection(optimizers)
    if clash:
        raise ValueError(
            f"state names clash with each other or with reserved keys: {sorted(clash)}"
        )
    state: dict[str, Any] = {
        "epoch": int(epoch),
        "obs_norm": None if obs_norm is None else obs_norm.state_dict(),
    }
    for name, module in modules.items():
        state[name] = module.state_dict()
    for name, optimizer in optimizers.items():
        state[name] = optimizer.state_dict()
    return state


def restore_snapshot(
    state: Mapping[str, Any],
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    obs_norm: nn.Module | None,
    restore_rng: bool = True,
) -> None:
    """Load a checkpoint's entries into live objects (RNG states last).

    Raises ``ValueError`` naming what is missing or mismatched (e.g. a checkpoint of another
    recipe or network size).

    Examples:
        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> state = cpu_state_copy(recipe_state(epoch=0, modules={"policy": a}, optimizers={},
        ...                                     obs_norm=None))
        >>> restore_snapshot(state, modules={"policy": b}, optimizers={}, obs_norm=None,
        ...                  restore_rng=False)
        >>> torch.equal(a.weight, b.weight)
        True
    """
    needed = [*modules, *optimizers, *(["rng"] if restore_rng else [])]
    missing = [k for k in needed if k not in state]
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
