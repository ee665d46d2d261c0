"""NaN/inf guard: skip-and-count or raise, and the clean exit of a non-finite run (run_cli)."""

from __future__ import annotations

import pytest
import torch

from cmo_rl.lifecycle import NonFiniteError, NonFiniteGuard, run_cli


def test_guard_counts_skips_and_resets():
    guard = NonFiniteGuard("skip")
    assert guard.check("a", {"loss": torch.tensor(1.0), "norm": 2.0})
    assert not guard.check("b", {"loss": torch.tensor([1.0, float("inf")])})
    assert not guard.check("c", {"norm": float("nan")})
    assert guard.skipped == 2
    assert guard.reset() == 2 and guard.skipped == 0


def test_guard_raise_names_every_bad_term():
    guard = NonFiniteGuard("raise")
    with pytest.raises(NonFiniteError) as info:
        guard.check(
            "minibatch 7",
            {"loss_a": torch.tensor(float("nan")), "ok": 1.0, "loss_b": float("-inf")},
        )
    message = str(info.value)
    assert "loss_a=nan" in message and "loss_b=-inf" in message and "ok" not in message
    assert "minibatch 7" in message and "nan_policy=skip" in message


def test_guard_rejects_unknown_policy():
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        NonFiniteGuard("ignore")


def test_run_cli_turns_a_non_finite_stop_into_one_line_and_exit_3(capsys):
    @run_cli
    def main(cfg):
        raise NonFiniteError("non-finite loss_objective=nan in minibatch 0 of pass 0")

    with pytest.raises(SystemExit) as stop:
        main({})
    assert stop.value.code == 3
    assert (
        capsys.readouterr().err
        == "stopped: non-finite loss_objective=nan in minibatch 0 of pass 0\n"
    )

    @run_cli
    def other(cfg):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):  # other exceptions are not its business
        other({})
