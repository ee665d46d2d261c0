"""A learned dual rule for the Lagrange multiplier: meta-PID gains, filters and offset, plus an MLP.

:class:`LearnedLagrangian` is a drop-in replacement of
:class:`~cmo_rl.objectives.PIDLagrangian` (same ``cost_limit``, ``value``, ``update``,
``forward``), so ``train_lagrangian_ppo`` and the population engine run it unchanged. With
:math:`\\Delta = J_C - d` (:math:`J_C` the measured mean episode cost) each update computes

.. math::

    I &\\leftarrow \\max(0,\\, I + K_I \\Delta) \\\\
    P &\\leftarrow \\alpha_p P + (1-\\alpha_p)\\Delta, \\qquad
    C \\leftarrow \\alpha_d C + (1-\\alpha_d) J_C, \\qquad D = \\max(0,\\, C - C_{t-\\delta}) \\\\
    \\lambda &= \\operatorname{clip}\\big(K_P P + I + K_D D + b + f_\\phi(x),\\; 0,\\;
        \\lambda_{\\max}\\big), \\qquad
    x = \\big(\\tfrac{\\Delta}{s}, \\tfrac{P}{s}, \\tfrac{D}{s}, I, \\lambda_{prev}, t/T\\big)

with :math:`s = \\max(|d|, 1)` and :math:`t/T` the fraction of the run's updates done (0 when
the horizon :math:`T` is unknown). The meta-parameters are

1. the PID part, as ``log_gains`` (:math:`\\log K_P, \\log K_I, \\log K_D`), ``logit_alphas``
   (:math:`\\alpha_p, \\alpha_d` through a sigmoid) and the ``offset`` :math:`b`;
2. ``correction`` :math:`f_\\phi`: an MLP ``[6, hidden, 1]`` (tanh) whose last layer starts at
   zero and whose first layer is drawn from seed 0 without touching the global RNG
   (``hidden=0``: no MLP, the rule is the meta-PID).

**A fresh rule is PID-Lag.** With ``offset=0`` and a zero last layer, :math:`\\lambda` equals
:func:`~cmo_rl.objectives.pid_lagrangian_step` with ``sum_norm=diff_norm=False`` (the recipe's
PID-Lagrangian multiplier) bit for bit, so meta-training starts from the hand-designed rule and
every meta-parameter is a correction of it. The returned :math:`\\lambda` of :meth:`update` is
differentiable w.r.t. the meta-parameters (one step; the stored state is detached), which the
online meta-gradient mode uses; evolution strategies only need :func:`rule_vector` /
:func:`set_rule_vector`. A batch with no finished episode skips the step, as every multiplier
does (see :mod:`cmo_rl.objectives.multipliers`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from cmo_rl.objectives.multipliers import (
    _episode_cost_tensor,
    _Multiplier,
    pid_lagrangian_step,
)

__all__ = ["LearnedLagrangian", "learned_update", "rule_vector", "set_rule_vector"]

#: The inputs of the correction MLP, in order (see the module docstring).
FEATURES = ("violation", "proportional", "derivative", "integral", "lambda", "progress")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class LearnedLagrangian(_Multiplier):
    """The learned dual rule (see the module docstring for the update).

    Args:
        cost_limit: :math:`d`.
        kp: initial proportional gain :math:`K_P` (> 0: the gains are log-parameterised).
        ki: initial integral gain :math:`K_I` (> 0).
        kd: initial derivative gain :math:`K_D` (> 0).
        d_delay: :math:`\\delta`, how many updates back the derivative term looks.
        delta_p_ema_alpha: initial :math:`\\alpha_p` in (0, 1) (logit-parameterised).
        delta_d_ema_alpha: initial :math:`\\alpha_d` in (0, 1).
        offset: initial :math:`b`.
        init_lambda: initial integral :math:`I` (as ``PIDLagrangian``'s ``init_lambda``).
        lambda_max: :math:`\\lambda_{\\max}`.
        hidden: hidden units of the correction MLP (0: none).
        horizon: :math:`T`, the number of updates of a run (the ``progress`` feature); ``None``:
            the feature is 0.
        device: device of the parameters and state.

    Examples:
        >>> rule = LearnedLagrangian(10.0, kp=0.1, ki=0.01, kd=0.01, d_delay=2,
        ...     delta_p_ema_alpha=0.9, delta_d_ema_alpha=0.5, hidden=4)
        >>> [round(float(rule.update(jc)), 6) for jc in (20.0, 30.0, 5.0)]  # = PIDLagrangian
        [0.301, 0.791, 0.487]
        >>> rule.config()["hidden"], rule_vector(rule).shape  # 3 gains, 2 alphas, offset, MLP
        (4, torch.Size([39]))
    """

    _STATE_KEYS = (
        "integral",
        "delta_p",
        "cost_d",
        "multiplier",
        "cost_d_history",
        "history_index",
        "updates",
    )

    def __init__(
        self,
        cost_limit: float,
        *,
        kp: float = 0.1,
        ki: float = 0.01,
        kd: float = 0.01,
        d_delay: int = 10,
        delta_p_ema_alpha: float = 0.95,
        delta_d_ema_alpha: float = 0.95,
        offset: float = 0.0,
        init_lambda: float = 0.001,
        lambda_max: float = 100.0,
        hidden: int = 16,
        horizon: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        problems = []
        if not math.isfinite(float(cost_limit)):
            problems.append(f"cost_limit must be finite, got {cost_limit}")
        if not all(float(g) > 0 and math.isfinite(float(g)) for g in (kp, ki, kd)):
            problems.append(
                f"kp, ki, kd must be finite and > 0 (log-parameterised), got {(kp, ki, kd)}"
            )
        if not all(0.0 < float(a) < 1.0 for a in (delta_p_ema_alpha, delta_d_ema_alpha)):
            problems.append(
                "delta_p_ema_alpha, delta_d_ema_alpha must be in (0, 1) (logit-parameterised), "
                f"got {(delta_p_ema_alpha, delta_d_ema_alpha)}"
            )
        if isinstance(d_delay, bool) or not isinstance(d_delay, int) or d_delay < 1:
            problems.append(f"d_delay must be an int >= 1, got {d_delay!r}")
        if not float(lambda_max) > 0:
            problems.append(f"lambda_max must be > 0, got {lambda_max}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            problems.append(f"hidden must be an int >= 0, got {hidden!r}")
        if horizon is not None and (not isinstance(horizon, int) or horizon < 1):
            problems.append(f"horizon must be an int >= 1 or None, got {horizon!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.d_delay, self.hidden, self.horizon = d_delay, hidden, horizon
        self.lambda_max = float(lambda_max)
        self._init = {
            "kp": float(kp), "ki": float(ki), "kd": float(kd), "offset": float(offset),
            "delta_p_ema_alpha": float(delta_p_ema_alpha),
            "delta_d_ema_alpha": float(delta_d_ema_alpha), "init_lambda": float(init_lambda),
        }  # fmt: skip

        def tensor(x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.tensor(x, dtype=dtype, device=device)

        self.log_gains = nn.Parameter(tensor([math.log(kp), math.log(ki), math.log(kd)]))
        self.logit_alphas = nn.Parameter(
            tensor([_logit(delta_p_ema_alpha), _logit(delta_d_ema_alpha)])
        )
        self.offset = nn.Parameter(tensor(float(offset)))
        self.correction: nn.Module | None = None
        if hidden:
            # a fixed first layer, drawn without touching the global RNG: building the rule
            # leaves a run's random streams (policy init, action noise) as PID-Lag's
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.correction = nn.Sequential(
                    nn.Linear(len(FEATURES), hidden, device=device),
                    nn.Tanh(),
                    nn.Linear(hidden, 1, device=device),
                )
            nn.init.zeros_(self.correction[2].weight)
            nn.init.zeros_(self.correction[2].bias)
        self.register_buffer("cost_limit", tensor(float(cost_limit)))
        self.register_buffer("integral", tensor(float(init_lambda)))
        self.register_buffer("delta_p", tensor(0.0))
        self.register_buffer("cost_d", tensor(0.0))
        self.register_buffer("multiplier", tensor(0.0))
        self.register_buffer("cost_d_history", torch.zeros(d_delay, device=device))
        self.register_buffer("history_index", tensor(0, torch.long))
        self.register_buffer("updates", tensor(0, torch.long))
        self.last_terms: dict[str, float] = {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this rule's shape (not its learned values):
        ``LearnedLagrangian(**rule.config())`` then ``load_state_dict`` restores it."""
        return {
            "cost_limit": float(self.cost_limit),
            **self._init,
            "d_delay": self.d_delay,
            "lambda_max": self.lambda_max,
            "hidden": self.hidden,
            "horizon": self.horizon,
        }

    @property
    def gains(self) -> Tensor:
        """``[kp, ki, kd]`` (differentiable)."""
        return self.log_gains.exp()

    @property
    def alphas(self) -> Tensor:
        """``[alpha_p, alpha_d]`` (differentiable)."""
        return torch.sigmoid(self.logit_alphas)

    @property
    def value(self) -> Tensor:
        """The current :math:`\\lambda` ``[]`` (detached; follows later updates)."""
        return self.multiplier.detach()

    def state(self) -> TensorDict:
        """A detached copy of the controller state."""
        return TensorDict({k: getattr(self, k).detach().clone() for k in self._STATE_KEYS})

    def reset_state(self) -> None:
        """Back to a fresh run's controller state (the learned parameters stay)."""
        fresh = LearnedLagrangian(**self.config(), device=self.cost_limit.device)
        with torch.no_grad():
            for key in self._STATE_KEYS:
                getattr(self, key).copy_(getattr(fresh, key))

    def step(self, state: TensorDict, episode_cost: Tensor) -> tuple[TensorDict, dict[str, Tensor]]:
        """Pure update: ``(state, J_C) -> (new state, terms)``, differentiable w.r.t. the
        meta-parameters; ``terms``: ``pid_p, pid_i, pid_d, correction`` (the parts of
        :math:`\\lambda` before its clip)."""
        d = self.cost_limit
        kp, ki, kd = self.gains.unbind(0)
        alpha_p, alpha_d = self.alphas.unbind(0)
        # PID-Lag's state transition (I, P, C, the C history), with learnable filters
        pid = pid_lagrangian_step(
            state, episode_cost, cost_limit=d, kp=kp, ki=ki, kd=kd, delta_p_ema_alpha=alpha_p,
            delta_d_ema_alpha=alpha_d, sum_norm=False, penalty_max=self.lambda_max,
        )  # fmt: skip
        delta, integral, delta_p = episode_cost - d, pid["integral"], pid["delta_p"]
        oldest = state["cost_d_history"].gather(0, state["history_index"].reshape(1)).squeeze(0)
        derivative = (pid["cost_d"] - oldest).clamp_min(0.0)
        terms = {"pid_p": kp * delta_p, "pid_i": integral, "pid_d": kd * derivative}
        correction = torch.zeros_like(delta)
        if self.correction is not None:
            scale = d.abs().clamp_min(1.0)
            progress = (
                state["updates"].to(delta.dtype) / self.horizon
                if self.horizon
                else torch.zeros_like(delta)
            )
            x = torch.stack(
                [delta / scale, delta_p / scale, derivative / scale, integral,
                 state["multiplier"], progress]
            )  # fmt: skip
            correction = self.correction(x).squeeze(-1)
        terms["correction"] = correction
        penalty = terms["pid_p"] + integral + terms["pid_d"] + self.offset + correction
        new = pid.update(
            {"multiplier": penalty.clamp(0.0, self.lambda_max), "updates": state["updates"] + 1}
        )
        return new, terms

    def update(self, episode_cost: Tensor | float) -> Tensor:
        """One step on the mean episode cost; returns the new :math:`\\lambda` (with this
        step's graph to the meta-parameters). Empty ``episode_cost``: no step (see the
        module docstring). Sets :attr:`last_terms` (floats) for the metrics."""
        jc = _episode_cost_tensor(episode_cost, self.cost_limit)
        if jc is None:
            return self.multiplier.clone()
        new, terms = self.step(self.state(), jc.detach())
        with torch.no_grad():
            for key in self._STATE_KEYS:
                getattr(self, key).copy_(new[key].detach())
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return new["multiplier"]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}, horizon={self.horizon}"


def learned_update(rule: LearnedLagrangian, episode_cost: float) -> dict[str, float]:
    """The recipes' ``update_multiplier`` for a learned rule: one update; returns its terms as
    ``train/pid_p``, ``train/pid_i``, ``train/pid_d`` (as PID-Lag reports them) and
    ``train/rule_correction`` (the MLP's part of :math:`\\lambda`).

    Examples:
        >>> rule = LearnedLagrangian(10.0, kp=1.0, ki=1e-6, kd=1e-6, delta_p_ema_alpha=1e-6,
        ...                          init_lambda=0.0, hidden=0)
        >>> round(learned_update(rule, 12.0)["train/pid_p"], 4)  # K_P (J_C - d)
        2.0
    """
    rule.update(episode_cost)
    return {
        f"train/{'rule_correction' if k == 'correction' else k}": v
        for k, v in rule.last_terms.items()
    }


def rule_vector(rule: nn.Module) -> Tensor:
    """The rule's meta-parameters as one detached flat vector (the point evolution strategies
    perturb): log-gains, alpha logits, offset, then the MLP's weights.

    Examples:
        >>> rule_vector(LearnedLagrangian(10.0, kp=1.0, ki=1.0, kd=1.0, offset=0.5, hidden=0))
        tensor([0.0000, 0.0000, 0.0000, 2.9444, 2.9444, 0.5000])
    """
    return nn.utils.parameters_to_vector(rule.parameters()).detach().clone()


def set_rule_vector(rule: nn.Module, vector: Tensor) -> nn.Module:
    """Write a flat vector (of :func:`rule_vector`'s layout) into the rule's parameters.

    Examples:
        >>> rule = LearnedLagrangian(10.0, hidden=0)
        >>> v = rule_vector(rule)
        >>> _ = set_rule_vector(rule, v + 1.0)
        >>> bool(torch.equal(rule_vector(rule), v + 1.0))
        True
    """
    expected = sum(p.numel() for p in rule.parameters())
    if vector.numel() != expected:
        raise ValueError(
            f"the rule has {expected} meta-parameters, got a vector of {vector.numel()}"
        )
    with torch.no_grad():
        nn.utils.vector_to_parameters(
            vector.to(next(rule.parameters()).device).float(), rule.parameters()
        )
    return rule
