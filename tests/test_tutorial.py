"""docs/tutorial.md runs: its main loop on SafetyHalfCheetahVelocity-v1 with a tiny budget (both
multiplier rules), and its mock-CMDP example to a constraint-aware policy."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import cmo_rl  # noqa: F401  (the safety-gymnasium shim, before the tutorial imports anything)
from cmo_rl.testing import MockCMDPEnv

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)

#: The budget lines of the main loop and what the test runs instead: 4 envs, 50-step episodes
#: (two per env per batch), three 400-frame batches, 2 PPO epochs of 2 minibatches.
TINY_BUDGET = {
    "env_id, num_envs, episode_length, cost_limit": '"SafetyHalfCheetahVelocity-v1", 4, 50, 25.0',
    "frames_per_batch, total_frames, ppo_epochs, minibatch_size": "400, 1200, 2, 200",
}


def python_blocks() -> list[str]:
    return _BLOCK.findall(TUTORIAL.read_text())


def main_block() -> str:
    (block,) = [b for b in python_blocks() if "Collector(" in b]
    return block


def mock_block() -> str:
    (block,) = [b for b in python_blocks() if "MockCMDPEnv(" in b]
    return block


def patch(code: str, assignments: dict[str, str]) -> str:
    """Replace the right-hand side of top-level assignments; each must occur exactly once."""
    for target, value in assignments.items():
        pattern = re.compile(rf"^{re.escape(target)} = .*$", re.M)
        code, count = pattern.subn(lambda _, t=target, v=value: f"{t} = {v}", code)
        assert count == 1, f"the tutorial has no single line `{target} = ...` to patch"
    return code


@pytest.fixture
def one_thread():
    """The examples set/need few threads; restore the session's setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tutorial_has_the_promised_shape() -> None:
    blocks = python_blocks()
    assert len(blocks) == 2
    code = main_block()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) < 40, f"the main loop has {len(lines)} lines"
    for piece in (
        "make_safety_env",
        "LagrangianPPOLoss",
        "PIDLagrangian",
        "PIDMetaOptimizer",
        "from torchrl.collectors import Collector",
    ):
        assert piece in code
    assert f"## The whole loop ({len(lines)} lines)" in TUTORIAL.read_text()


def test_patch_refuses_a_missing_line() -> None:
    with pytest.raises(AssertionError, match="no single line"):
        patch("a = 1\n", {"b": "2"})
    assert patch("a = 1\nb = 2\n", {"a": "3"}) == "a = 3\nb = 2\n"


@pytest.mark.parametrize("lambda_rule", ["pid", "meta"])
def test_main_loop_runs_on_a_real_task(lambda_rule: str, capsys, one_thread) -> None:
    code = patch(main_block(), {**TINY_BUDGET, "lambda_rule": repr(lambda_rule)})
    ns: dict = {"__name__": "__tutorial__"}
    exec(compile(code, str(TUTORIAL), "exec"), ns)  # noqa: S102

    printed = [line for line in capsys.readouterr().out.splitlines() if "lambda" in line]
    assert len(printed) == 1200 // 400  # one line per collected batch
    batch, out, lam = ns["batch"], ns["out"], ns["lam"]
    assert tuple(batch.batch_size) == (4, 100)
    assert int(batch["next", "done"].sum()) == 4 * 2  # two 50-step episodes per env and batch
    assert "cost_advantage" in batch.keys() and "value_target" in batch.keys()
    for key in ("loss_objective", "loss_critic", "loss_cost_critic"):
        assert math.isfinite(out[key].item())

    # PPO moved the policy away from its initial parameters (theta is a copy of them)
    initial = ns["theta"].flatten_keys(".")
    moved = [
        float((p.detach() - initial[name]).abs().max())
        for name, p in ns["actor"].named_parameters()
    ]
    assert max(moved) > 1e-4

    # the loss used the lambda the chosen rule produced
    assert float(lam) >= 0.0
    assert float(out["lagrange_multiplier"]) == pytest.approx(float(lam))
    episode_cost = float(ns["episode_cost"])
    if lambda_rule == "pid":
        pid = ns["pid"]
        assert int(pid.history_index) == 3  # one update per batch
        assert float(pid.value) == float(lam)
    else:
        state, meta = ns["meta_state"], ns["meta"]
        assert float(state["prev_violation"]) == pytest.approx((episode_cost - 25.0) / 25.0)
        assert float(state["integral"]) >= 0.0
        assert float(meta.gains()["KP"]) == pytest.approx(0.08)  # frozen
        assert all(not p.requires_grad for p in meta.parameters())


def test_mock_example_learns_a_constraint_aware_policy(capsys, one_thread) -> None:
    ns: dict = {"__name__": "__tutorial__"}
    exec(compile(mock_block(), str(TUTORIAL), "exec"), ns)  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["10", "20", "30", "40", "50"]

    actor, cost_limit = ns["actor"], ns["cost_limit"]
    with torch.no_grad():
        episodes = MockCMDPEnv(num_envs=256, episode_length=20, seed=123).rollout(20, actor)
    ret = float(episodes["next", "reward"].sum(1).mean())
    cost = float(episodes["next", "cost"].sum(1).mean())
    # an untrained policy earns ~0; always a = 1 earns 20 at cost 10: the limit 3 binds
    assert ret > 6.0, ret
    assert abs(cost - cost_limit) < 1.0, cost
    assert float(ns["multiplier"].value) > 0.0
    # a policy that ignores the observed cost factor s pays 0.5 cost per unit of return
    assert cost / ret < 0.42, cost / ret
