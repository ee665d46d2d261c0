"""NaN/inf guard for updates: skip (and count) a non-finite update, or stop with a clear message.

``nan_policy="skip"``: an update whose loss or gradient norm is not finite is not applied (the
gradients are dropped) and :attr:`NonFiniteGuard.skipped` counts it (logged as
``train/skipped_updates``). ``nan_policy="raise"``: a :class:`NonFiniteError` naming the bad
terms stops the run (:func:`cmo_rl.lifecycle.run_cli` turns it into a one-line message and
exit code 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["NAN_POLICIES", "NonFiniteError", "NonFiniteGuard"]

NAN_POLICIES = ("skip", "raise")


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/inf while ``nan_policy="raise"``.

    Examples:
        >>> try:
        ...     NonFiniteGuard("raise").check("epoch 2", {"loss_objective": float("nan")})
        ... except NonFiniteError as error:
        ...     print(str(error).split(" (")[0])
        non-finite loss_objective=nan in epoch 2
    """


class NonFiniteGuard:
    """Checks named scalars before an update is applied.

    Args:
        nan_policy: ``"skip"`` or ``"raise"``.

    Examples:
        >>> guard = NonFiniteGuard("skip")
        >>> guard.check("minibatch 3", {"loss_objective": torch.tensor(1.0)})
        True
        >>> guard.check("minibatch 4", {"loss_critic": torch.tensor(float("nan"))}), guard.skipped
        (False, 1)
        >>> NonFiniteGuard("raise").check("minibatch 5", {"grad_norm/actor": float("inf")})
        Traceback (most recent call last):
        ...
        cmo_rl.lifecycle.guard.NonFiniteError: non-finite grad_norm/actor=inf in minibatch 5 (nan_policy=raise; use nan_policy=skip to skip such updates)
    """

    def __init__(self, nan_policy: str = "skip") -> None:
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {list(NAN_POLICIES)}, got {nan_policy!r}")
        self.nan_policy = nan_policy
        self.skipped = 0

    def check(self, where: str, values: Mapping[str, torch.Tensor | float]) -> bool:
        """``True`` if every value is finite; else count a skip (or raise, per the policy)."""
        bad = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                if not bool(torch.isfinite(value.detach()).all()):
                    bad[name] = (
                        float(value.detach().float().flatten()[0]) if value.numel() == 1 else value
                    )
            elif not math.isfinite(float(value)):
                bad[name] = float(value)
        if not bad:
            return True
        if self.nan_policy == "raise":
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteError(
                f"non-finite {terms} in {where} (nan_policy=raise; use nan_policy=skip to skip "
                "such updates)"
            )
        self.skipped += 1
        return False

    def reset(self) -> int:
        """Return the number of skips so far and start counting from 0 again."""
        skipped, self.skipped = self.skipped, 0
        return skipped
