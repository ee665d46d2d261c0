"""Lagrange multiplier update rules: projected gradient ascent and PID (OmniSafe's rules).

Both are ``nn.Module`` s holding all their state in tensors (parameters/buffers), expose
``cost_limit``, ``value`` (the current :math:`\\lambda`, a detached ``[]`` tensor),
``update(episode_cost) -> value`` and ``forward(td)``, which writes ``lagrange_multiplier`` into
``td``. Call ``update`` once per iteration with the episode costs :math:`J_C` of the last batch
(a mean, or the costs of the finished episodes, which are averaged), *before* the policy update
(OmniSafe's order).

**A batch in which no episode finished** (long episodes, short batches) has no measurement of
:math:`J_C`: pass its (empty) selection of episode costs as it is,

.. code-block:: python

    multiplier.update(batch["next", "episode_cost"][batch["next", "done"]])

and the dual step is *skipped*: :math:`\\lambda` and every piece of controller state (Adam's
moments and step count, the PID integral, averages and history) stay as they are, and
``update`` returns the current :math:`\\lambda`. The controller advances once per *measurement*
(as the recipes do: :func:`~cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo` updates only in
epochs where episodes finished). A NaN cost (say the ``.mean()`` of that empty selection) is an
error, never a silent skip.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

__all__ = ["LagrangeMultiplier", "PIDLagrangian", "pid_lagrangian_step"]


def _episode_cost_tensor(
    episode_cost: torch.Tensor | float, like: torch.Tensor
) -> torch.Tensor | None:
    """Mean episode cost as a ``[]`` tensor on ``like``'s device/dtype (keeps autograd);
    ``None`` when ``episode_cost`` is empty (no episode finished: the update is skipped)."""
    cost = torch.as_tensor(episode_cost)
    if cost.numel() == 0:
        return None
    cost = cost.to(device=like.device, dtype=like.dtype).mean()
    if not bool(torch.isfinite(cost.detach())):
        raise ValueError(
            f"episode_cost must be finite, got {float(cost.detach())} (to skip the update of a "
            "batch in which no episode finished, pass the empty selection of episode costs, "
            "not its mean)"
        )
    return cost


class _Multiplier(nn.Module):
    """Shared surface: ``cost_limit``, ``value``, ``forward(td)`` writing the multiplier."""

    out_key: str = "lagrange_multiplier"

    @property
    def value(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes ``lagrange_multiplier``: ``[]`` for an unbatched td, else ``[*B, 1]``."""
        value = self.value
        if tensordict.batch_dims > 0:
            value = value.expand(*tensordict.batch_size, 1)
        tensordict.set(self.out_key, value)
        return tensordict

    def extra_repr(self) -> str:
        return f"cost_limit={float(self.cost_limit):g}, value={float(self.value.detach()):.6g}"


class LagrangeMultiplier(_Multiplier):
    """Projected gradient ascent on :math:`\\lambda` (OmniSafe ``Lagrange``).

    .. math::

        \\mathcal{L}(\\lambda) = -\\lambda\\,(J_C - d), \\qquad
        \\lambda \\leftarrow \\operatorname{clip}\\big(\\lambda - \\eta\\,
            \\mathrm{opt}(\\nabla_\\lambda \\mathcal{L}),\\; 0,\\; \\lambda_{\\max}\\big)

    i.e. with ``optimizer="sgd"``: :math:`\\lambda \\leftarrow [\\lambda + \\eta (J_C - d)]_0^{\\lambda_{\\max}}`;
    with ``"adam"`` (OmniSafe's default) the step is Adam's.

    Args:
        cost_limit: the constraint threshold :math:`d` on the expected episode cost.
        init_lambda: initial :math:`\\lambda` (clamped at 0, as OmniSafe does); ``init`` is
            its old name (deprecated).
        lr: :math:`\\eta`.
        upper_bound: :math:`\\lambda_{\\max}` or ``None``.
        optimizer: a ``torch.optim`` name, case-insensitive (``"adam"``, ``"sgd"``, ...).
        device: device of the state.

    State: the parameter ``multiplier`` ``[]``, the buffer ``cost_limit`` and the optimizer
    state (saved in ``state_dict()`` as extra state, so a load resumes Adam exactly).

    Examples:
        >>> lam = LagrangeMultiplier(cost_limit=10.0, init_lambda=0.5, lr=0.1, optimizer="sgd")
        >>> lam.update(15.0)  # 0.5 + 0.1 * (15 - 10)
        tensor(1.)
        >>> lam.update(0.0)  # 1.0 + 0.1 * (0 - 10) = 0, projected onto [0, inf)
        tensor(0.)
    """

    def __init__(
        self,
        cost_limit: float,
        init_lambda: float = 0.001,
        lr: float = 0.035,
        upper_bound: float | None = None,
        optimizer: str = "adam",
        device: torch.device | str | None = None,
        *,
        init: float | None = None,
    ) -> None:
        super().__init__()
        init_lambda = _renamed_argument("init", init, "init_lambda", init_lambda)
        if not math.isfinite(float(cost_limit)):
            raise ValueError(f"cost_limit must be finite, got {cost_limit}")
        if not float(lr) > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if upper_bound is not None and not float(upper_bound) > 0.0:
            raise ValueError(f"upper_bound must be > 0 or None, got {upper_bound}")
        optim_cls = {name.lower(): getattr(torch.optim, name) for name in dir(torch.optim)}.get(
            str(optimizer).lower()
        )
        if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
            raise ValueError(
                f"unknown optimizer {optimizer!r}; use a torch.optim name such as 'adam' or 'sgd'"
            )
        self.upper_bound = None if upper_bound is None else float(upper_bound)
        self.optimizer_name = optim_cls.__name__
        self.lr = float(lr)
        init = max(float(init_lambda), 0.0)
        if self.upper_bound is not None:
            init = min(init, self.upper_bound)
        self.register_buffer(
            "cost_limit", torch.tensor(float(cost_limit), dtype=torch.float32, device=device)
        )
        self.multiplier = nn.Parameter(torch.tensor(init, dtype=torch.float32, device=device))
        self._optimizer = optim_cls([self.multiplier], lr=self.lr)

    @property
    def value(self) -> torch.Tensor:
        """The current :math:`\\lambda`, shape ``[]``: a detached view of the parameter
        ``multiplier`` (it follows later updates; ``.clone()`` it to keep a snapshot).

        Detached, so ``float(lam.value)`` converts without autograd's warning and a loss that
        reads it (:class:`~cmo_rl.objectives.LagrangianPPOLoss`) sends no gradient to the
        parameter, which only :meth:`update` changes.
        """
        return self.multiplier.detach()

    def update(self, episode_cost: torch.Tensor | float) -> torch.Tensor:
        """One ascent step on the mean episode cost :math:`J_C`; returns the new, detached value.

        Args:
            episode_cost: mean episode cost, a float or a tensor (averaged if it has several
                entries, e.g. the costs of the episodes finished in the batch). Empty (no
                episode finished): the step is skipped, the state is unchanged and the current
                value is returned (see the module docstring).

        Examples:
            >>> lam = LagrangeMultiplier(cost_limit=10.0, init_lambda=0.5, lr=0.1, optimizer="sgd")
            >>> lam.update(torch.tensor([]))  # no episode finished: no step
            tensor(0.5000)
        """
        jc = _episode_cost_tensor(episode_cost, self.multiplier)
        if jc is None:
            return self.multiplier.detach().clone()
        jc = jc.detach()
        self._optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            lambda_loss = -self.multiplier * (jc - self.cost_limit)
            (grad,) = torch.autograd.grad(lambda_loss, self.multiplier)
        self.multiplier.grad = grad
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.multiplier.clamp_(0.0, self.upper_bound)
        return self.multiplier.detach().clone()

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": copy.deepcopy(self._optimizer.state_dict())}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))

    def _apply(self, fn: Any, recurse: bool = True) -> LagrangeMultiplier:
        state = copy.deepcopy(self._optimizer.state_dict())
        super()._apply(fn, recurse)
        # the parameter may have been replaced: re-point the optimizer, then reload its state,
        # which casts it to the parameter's device and dtype
        self._optimizer.param_groups[0]["params"] = [self.multiplier]
        self._optimizer.load_state_dict(state)
        return self


def _renamed_argument(old: str, old_value: Any, new: str, value: Any) -> Any:
    """``value``, or ``old_value`` (with a ``FutureWarning``) when the caller used the old name."""
    if old_value is None:
        return value
    warnings.warn(f"{old}= is now called {new}=", FutureWarning, stacklevel=3)
    return old_value


def _softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def pid_lagrangian_step(
    state: TensorDictBase,
    episode_cost: torch.Tensor,
    *,
    cost_limit: torch.Tensor | float,
    kp: torch.Tensor | float,
    ki: torch.Tensor | float,
    kd: torch.Tensor | float,
    delta_p_ema_alpha: torch.Tensor | float,
    delta_d_ema_alpha: torch.Tensor | float,
    sum_norm: bool = True,
    diff_norm: bool = False,
    penalty_max: float = 100.0,
) -> TensorDict:
    """One PID-Lagrangian update as a pure, differentiable function (OmniSafe ``pid_update``).

    With :math:`\\Delta = J_C - d` and :math:`D` = ``d_delay`` (length of the history):

    .. math::

        I &\\leftarrow \\max(0, I + K_i \\Delta) \\quad(\\text{clipped to } [0,1]
            \\text{ if diff\\_norm})\\\\
        P &\\leftarrow \\alpha_p P + (1-\\alpha_p)\\Delta \\\\
        C &\\leftarrow \\alpha_d C + (1-\\alpha_d) J_C \\\\
        \\lambda &= \\max\\big(0,\\; K_p P + I + K_d \\max(0, C - C_{t-D})\\big)

    then :math:`\\lambda \\le 1` if ``diff_norm``, :math:`\\lambda \\le` ``penalty_max`` if neither
    norm flag is set, and :math:`C` enters the history. :math:`C_{t-D}` is the oldest entry of
    the history ring buffer (zeros before :math:`D` updates), exactly OmniSafe's
    ``deque(maxlen=D)`` seeded with ``0.0``.

    Args:
        state: ``integral``, ``delta_p``, ``cost_d``, ``multiplier`` ``[]``,
            ``cost_d_history`` ``[D]``, ``history_index`` ``[]`` (long, slot of the oldest entry).
        episode_cost: :math:`J_C`, a ``[]`` tensor.
        cost_limit: :math:`d` (a tensor stays differentiable, as do the gains).
        kp: proportional gain :math:`K_p`.
        ki: integral gain :math:`K_i`.
        kd: derivative gain :math:`K_d`.
        delta_p_ema_alpha: :math:`\\alpha_p`, EMA factor of the proportional error.
        delta_d_ema_alpha: :math:`\\alpha_d`, EMA factor of the cost fed to the D term.
        sum_norm: OmniSafe's flag; with neither flag set :math:`\\lambda` is clipped at
            ``penalty_max``.
        diff_norm: OmniSafe's flag: clips :math:`I, \\lambda` to :math:`[0,1]`.
        penalty_max: upper bound of :math:`\\lambda` when neither flag is set.

    Returns:
        The new state (same keys); ``["multiplier"]`` is the new :math:`\\lambda`.

    Examples:
        >>> state = PIDLagrangian(cost_limit=10.0, d_delay=2).state()
        >>> new = pid_lagrangian_step(state, torch.tensor(20.0), cost_limit=10.0, kp=0.1, ki=0.01,
        ...     kd=0.01, delta_p_ema_alpha=0.9, delta_d_ema_alpha=0.5)
        >>> round(float(new["multiplier"]), 6)  # 0.1*1.0 + (0.001 + 0.1) + 0.01*10
        0.301
    """
    delta = episode_cost - cost_limit
    integral = (state["integral"] + delta * ki).clamp_min(0.0)
    if diff_norm:
        integral = integral.clamp(0.0, 1.0)
    delta_p = delta_p_ema_alpha * state["delta_p"] + (1.0 - delta_p_ema_alpha) * delta
    cost_d = delta_d_ema_alpha * state["cost_d"] + (1.0 - delta_d_ema_alpha) * episode_cost
    history, index = state["cost_d_history"], state["history_index"]
    oldest = history.gather(0, index.reshape(1)).squeeze(0)
    pid_d = (cost_d - oldest).clamp_min(0.0)
    penalty = (kp * delta_p + integral + kd * pid_d).clamp_min(0.0)
    if diff_norm:
        penalty = penalty.clamp_max(1.0)
    if not (diff_norm or sum_norm):
        penalty = penalty.clamp_max(penalty_max)
    slots = torch.arange(history.shape[0], device=history.device)
    new_history = torch.where(slots == index, cost_d, history)
    return TensorDict(
        integral=integral,
        delta_p=delta_p,
        cost_d=cost_d,
        multiplier=penalty,
        cost_d_history=new_history,
        history_index=(index + 1) % history.shape[0],
    )


class PIDLagrangian(_Multiplier):
    """PID control of the Lagrange multiplier (Stooke et al. 2020; OmniSafe ``PIDLagrangian``).

    See :func:`pid_lagrangian_step` for the update rule, applied here to state buffers.

    Args:
        cost_limit: :math:`d`.
        kp: proportional gain :math:`K_p`.
        ki: integral gain :math:`K_i`.
        kd: derivative gain :math:`K_d`.
        d_delay: :math:`D`, how many updates back the derivative term looks.
        pid_delta_p_ema_alpha: :math:`\\alpha_p`, EMA factor of the proportional error.
        pid_delta_d_ema_alpha: :math:`\\alpha_d`, EMA factor of the cost fed to the D term.
        sum_norm: OmniSafe's flag; with neither flag set :math:`\\lambda` is clipped at
            ``penalty_max``.
        diff_norm: OmniSafe's flag: clips :math:`I, \\lambda` to :math:`[0,1]`.
        penalty_max: see above.
        init_lambda: initial value of the integral :math:`I` (the multiplier itself starts at
            0 until the first update, as in OmniSafe); OmniSafe's name
            ``lagrangian_multiplier_init`` is accepted (deprecated).
        learnable_gains: store the gains as ``nn.Parameter`` ``raw_gains`` with
            :math:`K = \\operatorname{softplus}(\\text{raw})` (gains must then be > 0); else they
            are a buffer. :meth:`update` returns a :math:`\\lambda` differentiable w.r.t. them.
        device: device of the state.

    State (buffers): ``cost_limit``, ``raw_gains`` ``[3]`` (or parameter), ``integral``,
    ``delta_p``, ``cost_d``, ``multiplier``, ``cost_d_history`` ``[D]``, ``history_index``.

    Examples:
        >>> pid = PIDLagrangian(cost_limit=10.0, kp=0.1, ki=0.01, kd=0.01, d_delay=2,
        ...                     pid_delta_p_ema_alpha=0.9, pid_delta_d_ema_alpha=0.5)
        >>> [round(float(pid.update(jc)), 6) for jc in (20.0, 30.0, 5.0)]
        [0.301, 0.791, 0.487]
    """

    def __init__(
        self,
        cost_limit: float,
        kp: float = 0.1,
        ki: float = 0.01,
        kd: float = 0.01,
        d_delay: int = 10,
        pid_delta_p_ema_alpha: float = 0.95,
        pid_delta_d_ema_alpha: float = 0.95,
        sum_norm: bool = True,
        diff_norm: bool = False,
        penalty_max: float = 100.0,
        init_lambda: float = 0.001,
        learnable_gains: bool = False,
        device: torch.device | str | None = None,
        *,
        lagrangian_multiplier_init: float | None = None,
    ) -> None:
        super().__init__()
        init_lambda = _renamed_argument(
            "lagrangian_multiplier_init", lagrangian_multiplier_init, "init_lambda", init_lambda
        )
        if not math.isfinite(float(cost_limit)):
            raise ValueError(f"cost_limit must be finite, got {cost_limit}")
        if isinstance(d_delay, bool) or not isinstance(d_delay, int) or d_delay < 1:
            raise ValueError(f"d_delay must be an int >= 1, got {d_delay!r}")
        for name, alpha in (
            ("pid_delta_p_ema_alpha", pid_delta_p_ema_alpha),
            ("pid_delta_d_ema_alpha", pid_delta_d_ema_alpha),
        ):
            if not 0.0 <= float(alpha) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {alpha}")
        gains = torch.tensor([kp, ki, kd], dtype=torch.float32, device=device)
        if learnable_gains and not bool((gains > 0).all()):
            raise ValueError(f"learnable_gains needs kp, ki, kd > 0, got {(kp, ki, kd)}")
        if not bool((gains >= 0).all()):
            raise ValueError(f"PID gains must be >= 0, got kp={kp}, ki={ki}, kd={kd}")
        if not float(penalty_max) > 0.0:
            raise ValueError(f"penalty_max must be > 0, got {penalty_max}")
        self.d_delay = d_delay
        self.delta_p_ema_alpha = float(pid_delta_p_ema_alpha)
        self.delta_d_ema_alpha = float(pid_delta_d_ema_alpha)
        self.sum_norm = bool(sum_norm)
        self.diff_norm = bool(diff_norm)
        self.penalty_max = float(penalty_max)
        self.learnable_gains = bool(learnable_gains)

        def scalar(x: float) -> torch.Tensor:
            return torch.tensor(float(x), dtype=torch.float32, device=device)

        self.register_buffer("cost_limit", scalar(cost_limit))
        if learnable_gains:
            self.raw_gains = nn.Parameter(_softplus_inverse(gains))
        else:
            self.register_buffer("raw_gains", gains)
        self.register_buffer("integral", scalar(init_lambda))
        self.register_buffer("delta_p", scalar(0.0))
        self.register_buffer("cost_d", scalar(0.0))
        self.register_buffer("multiplier", scalar(0.0))
        self.register_buffer(
            "cost_d_history", torch.zeros(d_delay, dtype=torch.float32, device=device)
        )
        self.register_buffer("history_index", torch.zeros((), dtype=torch.long, device=device))

    @property
    def gains(self) -> torch.Tensor:
        """``[kp, ki, kd]`` (softplus of the raw parameter when gains are learnable)."""
        if self.learnable_gains:
            return nn.functional.softplus(self.raw_gains)
        return self.raw_gains

    @property
    def kp(self) -> torch.Tensor:
        """:math:`K_P`, detached (``float(pid.kp)`` never warns; :attr:`gains` keeps the graph)."""
        return self.gains[0].detach()

    @property
    def ki(self) -> torch.Tensor:
        """:math:`K_I`, detached (see :attr:`kp`)."""
        return self.gains[1].detach()

    @property
    def kd(self) -> torch.Tensor:
        """:math:`K_D`, detached (see :attr:`kp`)."""
        return self.gains[2].detach()

    @property
    def value(self) -> torch.Tensor:
        """The current :math:`\\lambda`, shape ``[]``: the buffer ``multiplier``, detached (a
        view that follows later updates; ``.clone()`` it to keep a snapshot). The
        differentiable :math:`\\lambda` of a step is what :meth:`update` / :meth:`step` return."""
        return self.multiplier.detach()

    _STATE_KEYS = ("integral", "delta_p", "cost_d", "multiplier", "cost_d_history", "history_index")

    def state(self) -> TensorDict:
        """A detached copy of the controller state (keys of :func:`pid_lagrangian_step`)."""
        return TensorDict({k: getattr(self, k).detach().clone() for k in self._STATE_KEYS})

    def step(self, state: TensorDictBase, episode_cost: torch.Tensor | float) -> TensorDict:
        """Pure update: ``state -> new state`` with this module's constants and gains.

        An empty ``episode_cost`` (no episode finished) returns a copy of ``state``: no step.
        """
        jc = _episode_cost_tensor(episode_cost, self.cost_limit)
        if jc is None:
            return TensorDict({k: state[k].clone() for k in self._STATE_KEYS})
        kp, ki, kd = self.gains.unbind(0)
        return pid_lagrangian_step(
            state,
            jc,
            cost_limit=self.cost_limit,
            kp=kp,
            ki=ki,
            kd=kd,
            delta_p_ema_alpha=self.delta_p_ema_alpha,
            delta_d_ema_alpha=self.delta_d_ema_alpha,
            sum_norm=self.sum_norm,
            diff_norm=self.diff_norm,
            penalty_max=self.penalty_max,
        )

    def update(self, episode_cost: torch.Tensor | float) -> torch.Tensor:
        """Stateful update on the mean episode cost; returns the new :math:`\\lambda`.

        The buffers store detached values (no graph grows across iterations); the returned
        tensor keeps this step's graph, so with ``learnable_gains`` it is differentiable
        w.r.t. ``raw_gains`` (a one-step truncation; use :meth:`step` for longer unrolls).

        An empty ``episode_cost`` (no episode finished in the batch) skips the step: no state
        changes (``history_index`` does not advance) and the current :math:`\\lambda` is returned.

        Examples:
            >>> pid = PIDLagrangian(cost_limit=10.0, kp=0.1, ki=0.01, kd=0.01, d_delay=2,
            ...                     pid_delta_p_ema_alpha=0.9, pid_delta_d_ema_alpha=0.5)
            >>> round(float(pid.update(20.0)), 6), round(float(pid.update([])), 6)
            (0.301, 0.301)
            >>> int(pid.history_index)  # one step taken
            1
        """
        if _episode_cost_tensor(episode_cost, self.cost_limit) is None:
            return self.multiplier.clone()
        new = self.step(self.state(), episode_cost)
        with torch.no_grad():
            for key in self._STATE_KEYS:
                getattr(self, key).copy_(new[key].detach())
        return new["multiplier"] if new["multiplier"].requires_grad else self.multiplier.clone()
