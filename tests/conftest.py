"""Shared pytest fixtures (kept small: per-area fixtures live in their test modules)."""

from __future__ import annotations

import pytest
import torch

import cmo_rl  # noqa: F401  (installs the safety-gymnasium import shim before any test imports it)
from cmo_rl.testing import MockCMDPEnv


@pytest.fixture
def mock_cmdp() -> MockCMDPEnv:
    """A seeded ``MockCMDPEnv`` (4 sub-envs, 8-step episodes): the env keys without MuJoCo."""
    return MockCMDPEnv(num_envs=4, episode_length=8, seed=0)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state (random actions, initialisations)."""
    torch.manual_seed(0)
