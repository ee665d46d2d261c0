"""One inner update for a stack of ``B`` same-architecture tasks at once, with ``torch.func.vmap``.

The sequential unroll (:func:`cmo_rl.meta.bilevel.inner_step`) updates one task at a time. Here
the meta-batch's policies are stacked (``torch.stack`` of per-task ``params_of(actor)``, batch
size ``[B]``), with their multipliers ``[B]``, meta-optimizer states ``[B]`` and round data
``[B, ...]``, and one vmapped call computes, for every task ``b``,

.. math::

    (\\hat J_R, \\hat J_C) &= \\mathrm{estimates}(\\theta_b, \\mathrm{data}_b), \\qquad
    g_R = \\nabla_\\theta \\hat J_R,\\ g_C = \\nabla_\\theta \\hat J_C
        \\quad (\\text{one forward, two VJPs}) \\\\
    e_b &= (\\hat J_C - d) / s \\\\
    (\\theta_b', \\lambda_b', s_b') &= \\mathrm{MetaOpt}_\\phi(\\theta_b, g_R, g_C, \\lambda_b, e_b, s_b)

The gradients come from ``torch.func.vjp`` inside ``torch.func.vmap``; ordinary autograd
differentiates through them (second-order terms included, like ``create_graph=True``), so the
outputs carry the meta-graph to the meta-parameters ``phi`` exactly as ``B`` sequential
``inner_step(..., differentiable=True)`` calls do (tests/meta/test_meta_batched.py checks both the
values and the meta-gradient in float64).

Why ``inner_step`` itself is not vmapped: :func:`~cmo_rl.meta.functional.values_and_grads` marks
leaves with ``requires_grad_()`` and calls ``torch.autograd.grad`` (neither is allowed on
vmapped tensors), and ``inner_step``'s record calls ``float()`` (``.item()``, a data-dependent
read) four times. Everything else is reused as it is: :func:`~cmo_rl.meta.bilevel.violation`,
the meta-optimizer's ``step`` (both ``PIDMetaOptimizer`` and ``LSTMMetaOptimizer`` vmap
unchanged; the LSTM's ``[layers, n, hidden]`` state simply gains a leading ``B``) and
:func:`~cmo_rl.meta.functional.surrogate_estimates` (the actor runs with vmapped parameters
swapped in through ``TensorDict.to_module``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from cmo_rl.meta.bilevel import violation
from cmo_rl.meta.functional import MetaOptimizer, surrogate_estimates

__all__ = ["BatchedStep", "batched_inner_step", "data_surrogate"]

DataEstimates = Callable[[TensorDictBase, TensorDictBase], tuple[Tensor, Tensor]]

_DATA_KEYS = ("batch", "episode_return", "episode_cost")


def data_surrogate(actor: nn.Module, *, episode_length: int) -> DataEstimates:
    """``(theta, data) -> (J_R, J_C)``: :func:`~cmo_rl.meta.functional.surrogate_estimates` with
    the round's data as an argument (what :func:`batched_inner_step` maps over).

    ``data`` (one task, batch size ``[]``) holds ``"batch"`` (the collected ``[N, T]`` batch with
    ``action``, ``action_log_prob``, ``advantage``, ``cost_advantage`` and the actor's inputs),
    ``"episode_return"`` and ``"episode_cost"`` (``[]``, the measured values). Stacked over
    tasks: batch size ``[B]``, ``"batch"`` ``[B, N, T]``, the two scalars ``[B]``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from cmo_rl.meta.functional import _example_rollout, params_of
        >>> actor, batch = _example_rollout()  # a MockCMDP actor and its [2, 3] rollout
        >>> batch["advantage"], batch["cost_advantage"] = torch.ones(2, 3, 1), torch.ones(2, 3, 1)
        >>> data = TensorDict(batch=batch, episode_return=torch.tensor(1.5),
        ...                   episode_cost=torch.tensor(0.5))
        >>> j_r, j_c = data_surrogate(actor, episode_length=3)(params_of(actor), data)
        >>> round(float(j_r), 4), round(float(j_c), 4)  # rho = 1 at the sampling parameters
        (1.5, 0.5)
    """
    if episode_length < 1:
        raise ValueError(f"episode_length must be >= 1, got {episode_length}")

    def estimates(params: TensorDictBase, data: TensorDictBase) -> tuple[Tensor, Tensor]:
        missing = [k for k in _DATA_KEYS if k not in data.keys()]
        if missing:
            raise ValueError(f"data_surrogate: data has no {missing} entries (needs {_DATA_KEYS})")
        return surrogate_estimates(
            actor,
            params,
            data["batch"],
            episode_return=data["episode_return"],
            episode_cost=data["episode_cost"],
            episode_length=episode_length,
        )

    return estimates


@dataclass
class BatchedStep:
    """Outputs of :func:`batched_inner_step`, all stacked over the ``B`` tasks.

    Attributes:
        params: ``theta_{k+1}``, batch size ``[B]``.
        lagrange_multiplier: ``lambda_{k+1}``, ``[B]``.
        state: ``s_{k+1}``, batch size ``[B]``.
        return_estimate: ``J_R(theta_k)``, ``[B]``.
        cost_estimate: ``J_C(theta_k)``, ``[B]``.
        violation: ``e_k``, ``[B]``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from cmo_rl.meta import PIDMetaOptimizer
        >>> opt = PIDMetaOptimizer(normalize_grads=False, init_etaR=0.5)
        >>> theta = TensorDict(w=torch.tensor([[1.0], [2.0]]), batch_size=[2])
        >>> out = batched_inner_step(
        ...     opt, lambda p, d: ((p["w"] * d["x"]).sum(), torch.zeros(())), theta,
        ...     torch.zeros(2), torch.stack([opt.init_state(theta[0])] * 2),
        ...     TensorDict(x=torch.tensor([[1.0], [3.0]]), batch_size=[2]), cost_limit=1.0)
        >>> out.return_estimate.tolist(), out.params["w"].squeeze(-1).tolist()  # w + 0.5 x
        ([1.0, 6.0], [1.5, 3.5])
    """

    params: TensorDictBase
    lagrange_multiplier: Tensor
    state: TensorDictBase
    return_estimate: Tensor
    cost_estimate: Tensor
    violation: Tensor


def _values_and_grads(
    estimates: DataEstimates, params: TensorDictBase, data: TensorDictBase
) -> tuple[Tensor, TensorDictBase, TensorDictBase]:
    """``[J_R, J_C]`` and their gradients: one forward, two VJPs (vmap-able)."""

    def stacked(theta: TensorDictBase) -> Tensor:
        j_r, j_c = estimates(theta, data)
        return torch.stack([j_r, j_c])

    values, vjp_fn = torch.func.vjp(stacked, params)
    one, zero = torch.ones_like(values[0]), torch.zeros_like(values[0])
    (g_r,) = vjp_fn(torch.stack([one, zero]))
    (g_c,) = vjp_fn(torch.stack([zero, one]))
    return values, g_r, g_c


def batched_inner_step(
    meta_opt: MetaOptimizer,
    estimates: DataEstimates,
    params: TensorDictBase,
    lagrange_multiplier: Tensor,
    state: TensorDictBase,
    data: TensorDictBase,
    *,
    cost_limit: float,
    violation_scale: float = 1.0,
    differentiable: bool = True,
    chunk_size: int | None = None,
) -> BatchedStep:
    """One meta-optimizer update of ``B`` tasks at once (``torch.func.vmap``; math above).

    Equal to ``B`` calls of :func:`cmo_rl.meta.bilevel.inner_step` with
    ``estimates=lambda theta: estimates(theta, data[b])`` on ``params[b]``,
    ``lagrange_multiplier[b]``, ``state[b]``, including the meta-gradient when
    ``differentiable=True``. With ``differentiable=False`` the update runs under
    ``torch.no_grad`` on detached inputs (first-order gradients only, no meta-graph).

    Args:
        meta_opt: the meta-optimizer (its parameters are shared by all tasks).
        estimates: per-task ``(theta, data) -> (J_R, J_C)`` scalars, e.g.
            :func:`data_surrogate`; it must be vmap-able (no ``.item()``, no in-place ops on
            its inputs, no data-dependent Python control flow).
        params: stacked policy parameters, batch size ``[B]`` (``torch.stack`` of per-task
            ``params_of(actor)``).
        lagrange_multiplier: ``[B]``.
        state: stacked meta-optimizer states, batch size ``[B]``.
        data: stacked round data, batch size ``[B]`` (the per-task slice is passed to
            ``estimates``).
        cost_limit: ``d`` of ``e = (J_C - d) / s``.
        violation_scale: ``s`` of ``e = (J_C - d) / s``.
        differentiable: keep the meta-graph (``create_graph`` semantics).
        chunk_size: ``torch.func.vmap``'s ``chunk_size`` (tasks per vectorised chunk; ``None``:
            all at once), to bound memory.

    Examples:
        >>> from tensordict import TensorDict
        >>> from cmo_rl.meta import PIDMetaOptimizer
        >>> from cmo_rl.meta.functional import _example_rollout, params_of
        >>> actor, batches = _example_rollout(stack=3)  # a MockCMDP actor, 3 tasks' [2, 3] rollouts
        >>> opt = PIDMetaOptimizer(init_lambda=0.2)
        >>> batches["advantage"] = batches["cost_advantage"] = torch.randn(3, 2, 3, 1)
        >>> data = TensorDict(batch=batches, episode_return=torch.zeros(3),
        ...                   episode_cost=torch.tensor([1.0, 2.0, 3.0]), batch_size=[3])
        >>> theta = torch.stack([params_of(actor)] * 3)
        >>> state = torch.stack([opt.init_state(theta[0])] * 3)
        >>> out = batched_inner_step(opt, data_surrogate(actor, episode_length=3), theta,
        ...                          torch.full((3,), 0.2), state, data, cost_limit=2.0,
        ...                          violation_scale=2.0)
        >>> out.violation.tolist(), out.params.batch_size, out.lagrange_multiplier.requires_grad
        ([-0.5, 0.0, 0.5], torch.Size([3]), True)
    """
    if params.batch_dims < 1:
        raise ValueError(
            "params must be stacked over tasks (batch size [B]), got batch size "
            f"{list(params.batch_size)}; use torch.stack of the per-task params"
        )
    num_tasks = params.batch_size[0]
    sizes = {
        "lagrange_multiplier": lagrange_multiplier.shape[:1] if lagrange_multiplier.dim() else None,
        "state": state.batch_size[:1],
        "data": data.batch_size[:1],
    }
    for name, size in sizes.items():
        if size is None or size[0] != num_tasks:
            raise ValueError(
                f"{name} must have a leading task dimension of B = {num_tasks} (params), got "
                f"{'a scalar' if size is None else list(size)}"
            )
    if lagrange_multiplier.dim() != 1:
        raise ValueError(
            f"lagrange_multiplier must have shape [B], got {tuple(lagrange_multiplier.shape)}"
        )
    if violation_scale <= 0:
        raise ValueError(f"violation scale must be > 0, got {violation_scale}")

    def one_task(
        theta: TensorDictBase, lam: Tensor, s: TensorDictBase, d: TensorDictBase
    ) -> tuple[TensorDictBase, Tensor, TensorDictBase, Tensor, Tensor]:
        values, g_r, g_c = _values_and_grads(estimates, theta, d)
        e = violation(values[1], cost_limit, violation_scale)
        new_theta, new_lam, new_s = meta_opt.step(theta, g_r, g_c, lam, e, s)
        return new_theta, new_lam, new_s, values, e

    mapped = torch.func.vmap(one_task, chunk_size=chunk_size)
    if differentiable:
        out = mapped(params, lagrange_multiplier, state, data)
    else:
        with torch.no_grad():
            out = mapped(params.detach(), lagrange_multiplier.detach(), state.detach(), data)
    new_params, new_lam, new_state, values, e = out
    return BatchedStep(new_params, new_lam, new_state, values[:, 0], values[:, 1], e)
