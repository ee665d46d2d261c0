"""NaN/inf guard: skip-and-count or raise, and the clean exit of a non-finite run."""

from __future__ import annotations

import pytest
import torch

from cmo_rl.training.guard import NonFiniteError, NonFiniteGuard, exit_on_nonfinite


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


def test_exit_on_nonfinite_prints_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        with exit_on_nonfinite():
            raise NonFiniteError("non-finite loss_objective=nan in minibatch 0 of pass 0")
    assert stop.value.code == 3
    assert (
        capsys.readouterr().err
        == "stopped: non-finite loss_objective=nan in minibatch 0 of pass 0\n"
    )
    with exit_on_nonfinite():  # other exceptions are not its business
        pass
    with pytest.raises(RuntimeError):
        with exit_on_nonfinite():
            raise RuntimeError("x")
