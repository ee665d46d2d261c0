"""Shared pytest fixtures (kept small: per-area fixtures live in their test modules)."""

from __future__ import annotations

import signal

import pytest
import torch

import cmo_rl  # noqa: F401  (installs the safety-gymnasium import shim before any test imports it)
from cmo_rl.testing import MockCMDPEnv

# A process started in the background by a non-interactive shell (`cmd &`, `nohup`, some CI
# runners) inherits SIGINT as *ignored*; Python then installs no KeyboardInterrupt handler, and
# the Ctrl-C tests (and their subprocesses, which inherit the disposition) cannot work. Restore
# the default so that they test the code, not how the suite was launched.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def mock_cmdp() -> MockCMDPEnv:
    """A seeded ``MockCMDPEnv`` (4 sub-envs, 8-step episodes): the env keys without MuJoCo."""
    return MockCMDPEnv(num_envs=4, episode_length=8, seed=0)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state (random actions, initialisations)."""
    torch.manual_seed(0)
