"""Batched versions of Safety-Gymnasium's per-object geometry, bit for bit.

Each function evaluates, over arrays ``[num_envs, n_objects, ...]``, the *same IEEE operations
in the same order* as the stock scalar code it names. Where stock calls a routine whose rounding
is not a single IEEE operation, the batched call provably goes through the same routine:

* ``np.matmul(vec3, mat3x3)`` is an OpenBLAS ``dgemv`` call (FMA kernels: *not* equal to
  ``v0*m0 + v1*m1 + v2*m2``). A stacked ``matmul`` of ``[..., 1, 3] @ [..., 3, 3]`` makes one
  identical ``dgemv`` call per stacked pair (numpy's ``vector @ matrix`` special case), so the
  results are the same bits.
* ``np.abs(complex)`` (the lidar distance) is numpy's complex ``absolute`` loop; it is *not*
  ``np.hypot`` (they differ in ~1/3 of the last bits). The batched distance applies the same
  loop to a complex view.
* ``np.angle`` is ``arctan2(imag, real)``; ``np.sin``, ``np.cos``, ``np.exp``, ``%`` and
  ``np.sqrt`` are elementwise loops whose result per element does not depend on the array
  around it (checked against scalar calls on 2e5 random inputs in
  ``tests/envs/test_fast_step.py``).
* ``np.sum(np.square(d))`` of a 2- or 3-vector is ``(d0*d0 + d1*d1) + d2*d2`` (numpy's reduce
  starts from the first element, then adds left to right below 8 elements).
* ``x ** 2`` on a numpy scalar calls libm ``pow``, which is *not* ``x * x`` in ~1e-3 of cases
  and not numpy's vectorised ``np.power`` either: code needing it (the Circle reward) stays
  scalar, in :mod:`cmo_rl.envs.fast_step.stepper`.
"""

from __future__ import annotations

import numpy as np

#: Internal to :class:`~cmo_rl.envs.fast_step.NavigationStepper`: no public names.
__all__: list[str] = []

_TWO_PI = np.pi * 2


def dist_xy(pos: np.ndarray, agent_pos: np.ndarray) -> np.ndarray:
    """``BaseAgent.dist_xy``: ``sqrt(sum(square(pos[:2] - agent_pos[:2])))``, any leading shape."""
    dx = pos[..., 0] - agent_pos[..., 0]
    dy = pos[..., 1] - agent_pos[..., 1]
    return np.sqrt(dx * dx + dy * dy)


def dist_xyz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.sqrt(np.sum(np.square(a - b)))`` of 3-vectors (Push's box distances)."""
    d = a - b
    sq = d * d
    return np.sqrt((sq[..., 0] + sq[..., 1]) + sq[..., 2])


def ego_xy(pos: np.ndarray, agent_pos: np.ndarray, agent_mat: np.ndarray) -> np.ndarray:
    """``BaseTask._ego_xy`` for ``pos [N, K, >=2]`` (z ignored) -> ``[N, K, 2]``.

    Stock: ``matmul(concatenate([pos[:2], [0]]) - agent_pos, agent_mat)[:2]``.
    """
    n, k = pos.shape[:2]
    world = np.empty((n, k, 1, 3))
    world[:, :, 0, 0] = pos[..., 0] - agent_pos[:, None, 0]
    world[:, :, 0, 1] = pos[..., 1] - agent_pos[:, None, 1]
    world[:, :, 0, 2] = 0.0 - agent_pos[:, None, 2]
    return np.matmul(world, agent_mat[:, None])[:, :, 0, :2]


def pseudo_lidar(
    ego: np.ndarray,
    out_flat: np.ndarray,
    block_index: np.ndarray,
    num_bins: int,
    max_dist: float | None,
    exp_gain: float,
    alias: bool,
) -> None:
    """``BaseTask._obs_lidar_pseudo`` of every (env, object) at once, max-scattered into ``out``.

    ``ego [N, K, 2]`` are the objects' egocentric XY vectors; ``block_index [N, K]`` is the flat
    index in ``out_flat`` of bin 0 of the lidar block each object reports to (``out_flat``
    starts at 0 there). Per object, stock writes ``obs[b] = max(obs[b], v)`` into bins ``bin``,
    ``bin + 1`` and ``bin - 1``; a max of non-negative numbers does not depend on the order, so
    one ``np.maximum.at`` over all objects gives the same bins.
    """
    z = np.ascontiguousarray(ego)  # [N, K, 2] -> complex [N, K]: stock's complex(*ego_xy)
    dist = np.abs(z.view(np.complex128)[..., 0])
    angle = np.remainder(
        np.arctan2(np.ascontiguousarray(ego[..., 1]), np.ascontiguousarray(ego[..., 0])),
        _TWO_PI,
    )
    bin_size = _TWO_PI / num_bins
    bins = (angle / bin_size).astype(np.int64)  # int(): truncation, angle >= 0
    if max_dist is None:
        sensor = np.exp(-exp_gain * dist)
    else:
        sensor = np.maximum(0, max_dist - dist) / max_dist
    if not alias:
        np.maximum.at(out_flat, (block_index + bins).ravel(), sensor.ravel())
        return
    frac = (angle - bin_size * bins) / bin_size
    index = np.stack([bins, (bins + 1) % num_bins, (bins - 1) % num_bins]) + block_index
    value = np.stack([sensor, frac * sensor, (1 - frac) * sensor])
    np.maximum.at(out_flat, index.ravel(), value.ravel())


def compass(
    pos: np.ndarray, agent_pos: np.ndarray, agent_mat: np.ndarray, shape: int
) -> np.ndarray:
    """``BaseTask._obs_compass`` of one 3-D position per env: ``pos [N, 3]`` -> ``[N, shape]``."""
    vec = np.empty((pos.shape[0], 1, 3))
    vec[:, 0, :] = pos - agent_pos
    vec = np.matmul(vec, agent_mat)[:, 0, :shape]
    sq = vec * vec
    norm = sq[:, 0] + sq[:, 1]
    if shape == 3:
        norm = norm + sq[:, 2]
    return vec / (np.sqrt(norm) + 0.001)[:, None]


def sequential_sum(terms: list[np.ndarray], n: int) -> np.ndarray:
    """``0 + t0 + t1 + ...`` left to right (Python's ``sum`` / repeated ``+=``), elementwise."""
    total = np.zeros(n)
    for term in terms:
        total = total + term
    return total


def repeated_add(count: np.ndarray, value: float) -> np.ndarray:
    """``x = 0; x += value`` repeated ``count`` times (stock's per-contact cost), elementwise."""
    total = np.zeros(count.shape)
    for j in range(int(count.max(initial=0))):
        total = np.where(j < count, total + value, total)
    return total
