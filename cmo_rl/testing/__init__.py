"""Test helpers users can build on: a mock constrained MDP with known reward and cost."""

from cmo_rl.testing.mock_cmdp import MockCMDPEnv

__all__ = ["MockCMDPEnv"]
