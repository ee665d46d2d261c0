"""LearnerRNG: each learner draws exactly the numbers of its own single-seed run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cmo_rl.population import LearnerRNG
from cmo_rl.seeding import seed_everything


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()  # noqa: NPY002


def test_interleaved_learners_draw_their_single_run_streams():
    seeds = [0, 7]
    expected = []
    for seed in seeds:  # each seed alone: three rounds of draws
        seed_everything(seed)
        expected.append([_draws() for _ in range(3)])
    rng = LearnerRNG(seeds)
    seed_everything(123)  # the global streams outside the learners must not move
    before = _draws()
    seed_everything(123)
    got = [[], []]
    for _ in range(3):
        for p in (1, 0):  # interleaved, in another order
            with rng.activate(p):
                got[p].append(_draws())
    assert got == expected
    assert _draws() == before


def test_torch_only_swaps_torch_and_leaves_numpy_and_python_alone():
    rng = LearnerRNG([3])
    seed_everything(5)
    with rng.activate(0, torch_only=True):
        drawn = torch.rand(2)
        numpy_inside = float(np.random.rand())  # noqa: NPY002  (the global stream, not learner 0's)
    seed_everything(5)
    assert numpy_inside == float(np.random.rand())  # noqa: NPY002
    seed_everything(3)
    assert torch.equal(drawn, torch.rand(2))
    with rng.activate(0):  # the full swap continues learner 0's torch stream after torch_only
        follow = torch.rand(1)
    assert torch.equal(follow, torch.rand(1))


def test_activation_is_not_reentrant():
    rng = LearnerRNG([0, 1])
    with rng.activate(0), pytest.raises(RuntimeError, match="already active"):
        with rng.activate(1):
            pass
