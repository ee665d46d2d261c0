"""How the programs seed their random streams, shared by the baseline and the meta-learning wing.

* :func:`seed_everything`: Python's ``random``, NumPy's global RNG and torch, at program start;
* :func:`epoch_seed`: the envs of a recipe's epoch (sub-env ``i`` gets ``epoch_seed + i``), so
  an epoch's data never depends on where the previous one stopped (exact ``resume``);
* :data:`ACTION_SEED_SHIFT`: the offset that keeps the seeds of torch's action-sampling RNG in
  worker processes (``cmo_rl.training.parallel.worker_action_seed``, ``shift + ...``) and in
  meta-task workers (``cmo_rl.meta.pool.task_action_seed``, ``2 * shift + ...``) apart from
  every env seed (those stay below ``2**31`` plus a few epochs of :func:`epoch_seed`).

>>> epoch_seed(0, 0) < ACTION_SEED_SHIFT
True
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["ACTION_SEED_SHIFT", "epoch_seed", "seed_everything"]

#: Added to the seeds of action-sampling RNGs: never equal to an env seed.
ACTION_SEED_SHIFT = 1 << 40
_SEED_STRIDE = 1_000_003  # > any num_envs: sub-env seeds of different epochs never collide


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    >>> seed_everything(3); a = torch.rand(1)
    >>> seed_everything(3); bool(torch.equal(a, torch.rand(1)))
    True
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries below us use the global RNG)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the envs at the start of ``epoch`` (0-based): ``seed + (epoch + 1) * 1_000_003``.

    Sub-env ``i`` gets ``epoch_seed + i``.

    >>> epoch_seed(0, 0), epoch_seed(7, 2)
    (1000003, 3000016)
    """
    return int(seed) + (int(epoch) + 1) * _SEED_STRIDE
