"""The Lagrange multipliers of ``P`` learners, updated together (one ``[P]`` tensor each).

The same rules as :class:`cmo_rl.objectives.LagrangeMultiplier` and
:class:`cmo_rl.objectives.PIDLagrangian`, on stacked state:

1. :class:`StackedLagrange`: projected ascent on :math:`J_C - d` per learner,
   :math:`\\lambda \\leftarrow [\\lambda - \\eta\\,\\mathrm{opt}(-(J_C - d))]_0^{\\lambda_{\\max}}`
   with ``sgd`` or ``adam`` (the Adam of :func:`~cmo_rl.population.adam.adam_update`);
2. :class:`StackedPID`: ``torch.func.vmap`` of the pure
   :func:`~cmo_rl.objectives.pid_lagrangian_step` (EMA'd P and D terms, clipped integral,
   clamp), with per-learner gains and cost limits;
3. both take a ``measured`` mask ``[P]``: a learner whose batch finished no episode skips its
   step and keeps its whole state, as the single-learner modules do for an empty cost;
4. ``from_modules`` / ``copy_to`` convert from and to ``P`` single-learner modules (checkpoints).

``tests/population/test_stacked_multipliers.py`` checks both against ``P`` separate modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from cmo_rl.objectives import LagrangeMultiplier, PIDLagrangian, pid_lagrangian_step
from cmo_rl.population.adam import adam_update

__all__ = ["StackedLagrange", "StackedPID"]


def _measured(measured: Tensor | None, like: Tensor) -> Tensor:
    if measured is None:
        return torch.ones_like(like, dtype=torch.bool)
    return torch.as_tensor(measured, dtype=torch.bool, device=like.device).expand_as(like)


def _cost(episode_cost: Tensor | Sequence[float], like: Tensor) -> Tensor:
    cost = torch.as_tensor(episode_cost, dtype=like.dtype, device=like.device)
    if cost.shape != like.shape:
        raise ValueError(f"episode_cost must be [{like.shape[0]}], got {tuple(cost.shape)}")
    return cost


class StackedLagrange:
    """Projected gradient ascent on ``P`` multipliers (``P`` ``LagrangeMultiplier`` s).

    Args:
        cost_limit: :math:`d`, a float or ``[P]``.
        init: initial :math:`\\lambda`, a float or ``[P]`` (clamped to ``[0, upper_bound]``).
        lr: :math:`\\eta`, a float or ``[P]``.
        size: ``P``.
        upper_bound: :math:`\\lambda_{\\max}` or ``None``.
        optimizer: ``"adam"`` or ``"sgd"``.

    Examples:
        >>> lam = StackedLagrange(10.0, init=0.5, lr=0.1, size=2, optimizer="sgd")
        >>> lam.update(torch.tensor([15.0, 0.0]))  # 0.5 + 0.1 (15 - 10); 0.5 - 1 -> 0
        tensor([1., 0.])
        >>> lam.update(torch.tensor([20.0, 20.0]), measured=torch.tensor([False, True]))
        tensor([1., 1.])
    """

    def __init__(
        self,
        cost_limit: float | Tensor,
        init: float | Tensor = 0.001,
        lr: float | Tensor = 0.035,
        *,
        size: int,
        upper_bound: float | None = None,
        optimizer: str = "adam",
        device: torch.device | str | None = None,
    ) -> None:
        self.optimizer_name = str(optimizer).lower()
        if self.optimizer_name not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.upper_bound = None if upper_bound is None else float(upper_bound)

        def vector(x: float | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(x, dtype=dtype, device=device).expand(size).clone()

        self.cost_limit = vector(cost_limit)
        self.lr = vector(lr, torch.float64)
        if not bool((self.lr > 0).all()):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.value = vector(init).clamp(0.0, self.upper_bound)
        self.step = torch.zeros(size, dtype=torch.float32, device=device)
        self.exp_avg = torch.zeros(size, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros(size, dtype=torch.float32, device=device)

    def update(self, episode_cost: Tensor, measured: Tensor | None = None) -> Tensor:
        """One step per measured learner on its mean episode cost :math:`J_C` ``[P]``;
        returns (a copy of) the new :math:`\\lambda` ``[P]``."""
        jc = _cost(episode_cost, self.value)
        mask = _measured(measured, self.value)
        if not bool(torch.isfinite(jc[mask]).all()):
            raise ValueError(f"episode_cost must be finite where measured, got {jc}")
        grad = -(jc - self.cost_limit)  # d/d lambda of -lambda (J_C - d)
        if self.optimizer_name == "sgd":
            # torch.optim.SGD's ``add_(grad, alpha=-lr)`` on each 0-dim lambda: the CPU kernel's
            # scalar path may fuse the multiply-add, so it runs per learner (P tiny ops, once
            # per epoch) to stay bit for bit equal to the single-learner module
            steps = [v.add(g, alpha=-lr) for v, g, lr in zip(self.value, grad, self.lr.tolist())]
            new = torch.stack(steps)
        else:
            params, avg, avg_sq, self.step = adam_update(
                {"m": {"v": self.value}}, {"m": {"v": grad}}, {"m": {"v": self.exp_avg}},
                {"m": {"v": self.exp_avg_sq}}, self.step, {"m": self.lr}, mask,
            )  # fmt: skip
            new, self.exp_avg, self.exp_avg_sq = params["m"]["v"], avg["m"]["v"], avg_sq["m"]["v"]
        self.value = torch.where(mask, new.clamp(0.0, self.upper_bound), self.value)
        return self.value.clone()

    @classmethod
    def from_modules(cls, modules: Sequence[LagrangeMultiplier]) -> StackedLagrange:
        """The stack of ``P`` modules' current states (same optimizer and bound for all).

        Examples:
            >>> mods = [LagrangeMultiplier(10.0, i, 0.1) for i in (0.5, 1.0)]
            >>> StackedLagrange.from_modules(mods).value
            tensor([0.5000, 1.0000])
        """
        first = modules[0]
        if any(
            (m.optimizer_name, m.upper_bound) != (first.optimizer_name, first.upper_bound)
            for m in modules
        ):
            raise ValueError("the modules must share their optimizer and upper bound")
        stack = cls(
            torch.stack([m.cost_limit for m in modules]),
            torch.stack([m.value for m in modules]),
            torch.tensor([m.lr for m in modules], dtype=torch.float64),
            size=len(modules),
            upper_bound=first.upper_bound,
            optimizer=first.optimizer_name,
            device=first.multiplier.device,
        )
        for p, module in enumerate(modules):
            state = module._optimizer.state.get(module.multiplier, {})
            if stack.optimizer_name == "adam" and state:
                stack.step[p] = float(state["step"])
                stack.exp_avg[p] = state["exp_avg"]
                stack.exp_avg_sq[p] = state["exp_avg_sq"]
        return stack

    def copy_to(self, modules: Sequence[LagrangeMultiplier]) -> None:
        """Write learner ``p``'s :math:`\\lambda` (and Adam state) into ``modules[p]``.

        Examples:
            >>> mods = [LagrangeMultiplier(10.0, 0.5, 0.1) for _ in range(2)]
            >>> stack = StackedLagrange.from_modules(mods)
            >>> _ = stack.update(torch.tensor([12.0, 8.0]))
            >>> stack.copy_to(mods)
            >>> [round(float(m.value), 3) for m in mods]
            [0.6, 0.4]
        """
        with torch.no_grad():
            for p, module in enumerate(modules):
                module.multiplier.copy_(self.value[p])
                if self.optimizer_name == "adam" and float(self.step[p]) > 0:
                    module._optimizer.state[module.multiplier] = {
                        "step": self.step[p].clone(),
                        "exp_avg": self.exp_avg[p].clone(),
                        "exp_avg_sq": self.exp_avg_sq[p].clone(),
                    }


def _pid_step(
    state: TensorDict,
    episode_cost: Tensor,
    cost_limit: Tensor,
    gains: Tensor,
    constants: dict,
) -> TensorDict:
    kp, ki, kd = gains.unbind(0)
    return pid_lagrangian_step(
        state, episode_cost, cost_limit=cost_limit, kp=kp, ki=ki, kd=kd, **constants
    )


class StackedPID:
    """PID-Lagrangian control of ``P`` multipliers (``P`` ``PIDLagrangian`` s).

    Built with :meth:`from_modules` from ``P`` modules that share the EMA factors, the
    ``d_delay`` and the norm flags (gains and cost limits may differ per learner).

    Attributes:
        state: TensorDict ``[P]`` with the keys of :func:`pid_lagrangian_step`.
        gains: ``[P, 3]`` (``kp, ki, kd``); cost_limit: ``[P]``.

    Examples:
        >>> mods = [PIDLagrangian(10.0, kp=0.1, ki=0.01, kd=0.01, d_delay=2,
        ...         pid_delta_p_ema_alpha=0.9, pid_delta_d_ema_alpha=0.5) for _ in range(2)]
        >>> pid = StackedPID.from_modules(mods)
        >>> [round(v, 6) for v in pid.update(torch.tensor([20.0, 10.0])).tolist()]
        [0.301, 0.051]
        >>> [round(v, 6) for v in pid.terms["train/pid_p"].tolist()]
        [0.1, 0.0]
    """

    def __init__(
        self, state: TensorDict, gains: Tensor, cost_limit: Tensor, constants: dict
    ) -> None:
        self.state = state
        self.gains = gains
        self.cost_limit = cost_limit
        self.constants = dict(constants)
        self.terms: dict[str, Tensor] = {}
        self._step = torch.func.vmap(
            lambda s, c, d, g: _pid_step(s, c, d, g, self.constants), in_dims=(0, 0, 0, 0)
        )

    @property
    def value(self) -> Tensor:
        """The current :math:`\\lambda` ``[P]``."""
        return self.state["multiplier"]

    @classmethod
    def from_modules(cls, modules: Sequence[PIDLagrangian]) -> StackedPID:
        """The stack of ``P`` modules' current states."""

        def constants(m: PIDLagrangian) -> dict:
            return {
                "delta_p_ema_alpha": m.delta_p_ema_alpha,
                "delta_d_ema_alpha": m.delta_d_ema_alpha,
                "sum_norm": m.sum_norm,
                "diff_norm": m.diff_norm,
                "penalty_max": m.penalty_max,
            }

        shared = constants(modules[0])
        if any(constants(m) != shared or m.d_delay != modules[0].d_delay for m in modules):
            raise ValueError("the PID modules must share EMA factors, d_delay and norm flags")
        return cls(
            torch.stack([m.state() for m in modules]),
            torch.stack([m.gains.detach() for m in modules]),
            torch.stack([m.cost_limit for m in modules]),
            shared,
        )

    def update(self, episode_cost: Tensor, measured: Tensor | None = None) -> Tensor:
        """One PID step per measured learner on :math:`J_C` ``[P]``; returns the new
        :math:`\\lambda` ``[P]`` and sets :attr:`terms` (``train/pid_p``, ``_i``, ``_d``, as
        :func:`~cmo_rl.training.lagrangian_ppo.pid_update` reports them; zero where not
        measured)."""
        value = self.state["multiplier"]
        jc = _cost(episode_cost, value)
        mask = _measured(measured, value)
        if not bool(torch.isfinite(jc[mask]).all()):
            raise ValueError(f"episode_cost must be finite where measured, got {jc}")
        safe = torch.where(mask, jc, torch.zeros_like(jc))
        before = self.state
        new = self._step(before, safe, self.cost_limit, self.gains)
        oldest = before["cost_d_history"].gather(1, before["history_index"].unsqueeze(1))[:, 0]
        kp, _, kd = self.gains.unbind(1)
        zero = torch.zeros_like(value)
        self.terms = {
            "train/pid_p": torch.where(mask, kp * new["delta_p"], zero),
            "train/pid_i": torch.where(mask, new["integral"], zero),
            "train/pid_d": torch.where(mask, kd * (new["cost_d"] - oldest).clamp_min(0.0), zero),
        }
        self.state = TensorDict(
            {
                key: torch.where(
                    mask.reshape(-1, *([1] * (new[key].dim() - 1))), new[key], before[key]
                )
                for key in new.keys()
            },
            batch_size=before.batch_size,
        )
        return self.value.clone()

    def copy_to(self, modules: Sequence[PIDLagrangian]) -> None:
        """Write learner ``p``'s controller state into ``modules[p]``.

        Examples:
            >>> mods = [PIDLagrangian(10.0) for _ in range(2)]
            >>> pid = StackedPID.from_modules(mods)
            >>> _ = pid.update(torch.tensor([30.0, 5.0]))
            >>> pid.copy_to(mods)
            >>> [int(m.history_index) for m in mods]
            [1, 1]
        """
        with torch.no_grad():
            for p, module in enumerate(modules):
                for key in self.state.keys():
                    getattr(module, key).copy_(self.state[p][key])
