"""Differentiable inner updates over parameters held in a TensorDict.

A policy's parameters ``theta`` live in a :class:`~tensordict.TensorDict` (``params_of(module)``)
and every inner update builds a *new* TensorDict out of place, so a later backward pass can
differentiate through a chain ``theta_0 -> theta_1 -> ... -> theta_K`` (never in-place mutation
inside an unroll). Losses are evaluated with the parameters swapped into the module
(``params.to_module(module, preserve_module_state=False)``), which keeps non-leaf tensors in the
graph.

This module also defines :class:`MetaOptimizer`, the interface shared by the PID and LSTM
meta-optimizers: a pure map

.. math::

    (\\theta_k, g_R, g_C, \\lambda_k, e_k, s_k) \\mapsto (\\theta_{k+1}, \\lambda_{k+1}, s_{k+1})

with the recurrent state ``s`` carried explicitly in a TensorDict (``"meta_state"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn

__all__ = [
    "MetaOptimizer",
    "detach_params",
    "flatten_params",
    "global_rms",
    "grad_of",
    "log_prob_of",
    "num_coordinates",
    "params_of",
    "require_grad",
    "surrogate_estimates",
    "swapped_params",
    "unflatten_params",
    "values_and_grads",
]


@contextlib.contextmanager
def swapped_params(params: TensorDictBase, module: nn.Module) -> Iterator[nn.Module]:
    """``params.to_module(module, preserve_module_state=False)`` as a context that lets exceptions through.

    tensordict 0.14.3's own context returns a TensorDict from ``__exit__``; when an exception
    (a ``KeyboardInterrupt`` from Ctrl-C or SIGTERM, say) passes through the block, Python tests
    that value for truthiness and raises ``RuntimeError: Converting a tensordict to boolean value
    is not permitted`` instead, hiding the original exception. This wrapper restores the module's
    own parameters on exit either way and re-raises the original exception unchanged.

    Examples:
        >>> layer = torch.nn.Linear(2, 1)
        >>> zeros = params_of(layer).zero_()
        >>> with swapped_params(zeros, layer):
        ...     float(layer(torch.ones(2)).sum())
        0.0
        >>> try:
        ...     with swapped_params(zeros, layer):
        ...         raise KeyboardInterrupt
        ... except KeyboardInterrupt:
        ...     print("original exception kept")
        original exception kept
    """
    context = params.to_module(module, preserve_module_state=False)
    context.__enter__()
    try:
        yield module
    finally:
        context.__exit__(None, None, None)


def params_of(module: nn.Module) -> TensorDict:
    """A fresh, unlocked copy of ``module``'s parameters (and buffers) as plain tensors.

    The copy is detached from ``module`` (updating it never touches the module).

    Examples:
        >>> params = params_of(torch.nn.Linear(3, 2))
        >>> sorted(params.keys()), params["weight"].shape
        (['bias', 'weight'], torch.Size([2, 3]))
    """
    return TensorDict.from_module(module).detach().clone().unlock_()


def detach_params(params: TensorDictBase) -> TensorDictBase:
    """Cut ``params`` from the graph: same values, no history, no ``requires_grad``.

    Examples:
        >>> p = TensorDict(w=torch.ones(2, requires_grad=True) * 2)
        >>> detach_params(p)["w"].requires_grad
        False
    """
    return params.detach()


def require_grad(params: TensorDictBase) -> TensorDictBase:
    """Make every leaf differentiable: leaves that already require grad (e.g. the output of a
    differentiable update) are kept as they are; the others become fresh detached leaves with
    ``requires_grad=True``.

    Examples:
        >>> p = require_grad(TensorDict(w=torch.ones(2)))
        >>> p["w"].requires_grad, p["w"].is_leaf
        (True, True)
    """
    return params.apply(lambda t: t if t.requires_grad else t.detach().requires_grad_(True))


def _leaf_keys(params: TensorDictBase) -> list:
    return list(params.keys(include_nested=True, leaves_only=True, sort=True))


def num_coordinates(params: TensorDictBase) -> int:
    """Total number of scalar entries in ``params``.

    Examples:
        >>> num_coordinates(params_of(torch.nn.Linear(3, 2)))
        8
    """
    return sum(params.get(k).numel() for k in _leaf_keys(params))


def flatten_params(params: TensorDictBase) -> Tensor:
    """Concatenate the leaves of ``params`` (sorted key order) into one vector ``[n]``.

    Differentiable; :func:`unflatten_params` inverts it.

    Examples:
        >>> p = TensorDict(b=torch.tensor([1.0, 2.0]), a=torch.tensor([[3.0]]))
        >>> flatten_params(p)
        tensor([3., 1., 2.])
    """
    keys = _leaf_keys(params)
    if not keys:
        raise ValueError("params has no tensor leaves to flatten")
    return torch.cat([params.get(k).reshape(-1) for k in keys])


def unflatten_params(vector: Tensor, like: TensorDictBase) -> TensorDict:
    """Split ``vector`` ``[n]`` into a TensorDict shaped like ``like`` (inverse of
    :func:`flatten_params`; differentiable).

    Examples:
        >>> like = TensorDict(b=torch.zeros(2), a=torch.zeros(1, 1))
        >>> unflatten_params(torch.tensor([3.0, 1.0, 2.0]), like)["a"]
        tensor([[3.]])
    """
    keys = _leaf_keys(like)
    n = sum(like.get(k).numel() for k in keys)
    if vector.dim() != 1 or vector.numel() != n:
        raise ValueError(f"vector must have shape [{n}] to fill params, got {tuple(vector.shape)}")
    out = TensorDict({}, batch_size=like.batch_size, device=like.device)
    offset = 0
    for k in keys:
        shape = like.get(k).shape
        size = like.get(k).numel()
        out.set(k, vector[offset : offset + size].reshape(shape))
        offset += size
    return out


def global_rms(tensors: TensorDictBase, eps: float = 0.0) -> Tensor:
    """Root-mean-square over every coordinate of every leaf: ``sqrt(sum g^2 / n + eps)``.

    Examples:
        >>> global_rms(TensorDict(a=torch.tensor([3.0]), b=torch.tensor([4.0, 0.0])))
        tensor(2.8868)
    """
    keys = _leaf_keys(tensors)
    total = sum(tensors.get(k).pow(2).sum() for k in keys)
    n = sum(tensors.get(k).numel() for k in keys)
    return (total / n + eps).sqrt()


def values_and_grads(
    fn: Callable[[TensorDictBase], Sequence[Tensor]],
    params: TensorDictBase,
    *,
    create_graph: bool = False,
) -> tuple[tuple[Tensor, ...], tuple[TensorDict, ...]]:
    """Evaluate ``fn(params)`` (a sequence of scalars) and the gradient of each w.r.t. ``params``.

    Leaves of ``params`` that do not require grad are replaced by differentiable leaves first
    (:func:`require_grad`); grad mode is enabled inside, so this works in a ``no_grad`` caller. With ``create_graph=True`` the gradients are themselves
    differentiable (second-order terms kept), so an update built from them can be
    backpropagated through. Unused leaves get zero gradients.

    Returns:
        ``(values, grads)``: the scalars, and one TensorDict of gradients per scalar, each
        shaped like ``params``.

    Examples:
        >>> p = TensorDict(w=torch.tensor([1.0, 2.0]))
        >>> (f, g), (df, dg) = values_and_grads(lambda q: ((q["w"] ** 2).sum(), q["w"].sum()), p)
        >>> f, df["w"], dg["w"]
        (tensor(5., grad_fn=<SumBackward0>), tensor([2., 4.]), tensor([1., 1.]))
    """
    with torch.enable_grad():  # gradients are the point, even inside a no_grad caller
        params = require_grad(params)
        keys = _leaf_keys(params)
        leaves = [params.get(k) for k in keys]
        values = tuple(fn(params))
        parts_per_value = []
        for i, value in enumerate(values):
            if value.dim() != 0:
                raise ValueError(
                    f"fn must return scalars; output {i} has shape {tuple(value.shape)}"
                )
            if not value.requires_grad:
                parts_per_value.append([None] * len(leaves))
                continue
            parts_per_value.append(
                torch.autograd.grad(
                    value,
                    leaves,
                    create_graph=create_graph,
                    retain_graph=True,
                    allow_unused=True,
                )
            )
    grads = []
    for parts in parts_per_value:
        out = TensorDict({}, batch_size=params.batch_size, device=params.device)
        for k, leaf, g in zip(keys, leaves, parts):
            out.set(k, torch.zeros_like(leaf) if g is None else g)
        grads.append(out)
    return values, tuple(grads)


def grad_of(
    fn: Callable[[TensorDictBase], Tensor],
    params: TensorDictBase,
    *,
    create_graph: bool = False,
) -> TensorDict:
    """Gradient of the scalar ``fn(params)`` w.r.t. ``params``, as a TensorDict like ``params``.

    Examples:
        >>> grad_of(lambda q: (q["w"] ** 3).sum(), TensorDict(w=torch.tensor([1.0, 2.0])))["w"]
        tensor([ 3., 12.])
    """
    _, (grad,) = values_and_grads(lambda q: (fn(q),), params, create_graph=create_graph)
    return grad


def _example_rollout(stack: int | None = None) -> tuple[nn.Module, TensorDictBase]:
    """For the examples: the actor and ``[2, 3]`` rollout of :func:`log_prob_of`'s example (a
    fresh ``make_actor`` of ``MockCMDPEnv(num_envs=2, episode_length=3, seed=0)``), collected
    without gradient; with ``stack``, that many rollouts stacked (``[stack, 2, 3]``)."""
    from cmo_rl.modules import make_actor
    from cmo_rl.testing import MockCMDPEnv

    env = MockCMDPEnv(num_envs=2, episode_length=3, seed=0)
    actor = make_actor(env, hidden_layers=(4,))
    with torch.no_grad():
        if stack is None:
            return actor, env.rollout(3, actor)
        return actor, torch.stack([env.rollout(3, actor) for _ in range(stack)])


def log_prob_of(actor: nn.Module, params: TensorDictBase, batch: TensorDictBase) -> Tensor:
    """``log pi_params(action | observation)`` of the stored ``batch["action"]``, differentiable
    w.r.t. ``params``; shape ``batch.shape``.

    ``actor`` is a TorchRL ``ProbabilisticActor`` (anything with ``get_dist(td)``); it is run
    with ``params`` swapped in, on a shallow copy of ``batch`` (the batch is not modified).

    Examples:
        >>> from cmo_rl.modules import make_actor
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=2, episode_length=3, seed=0)
        >>> actor = make_actor(env, hidden_layers=(4,))
        >>> with torch.no_grad():
        ...     batch = env.rollout(3, actor)
        >>> log_prob = log_prob_of(actor, params_of(actor), batch)
        >>> log_prob.shape, bool(torch.allclose(log_prob, batch["action_log_prob"]))
        (torch.Size([2, 3]), True)
    """
    with swapped_params(params, actor):
        dist = actor.get_dist(batch.copy())
    log_prob = dist.log_prob(batch["action"])
    if log_prob.shape != batch.shape:  # per-dimension log-probs: sum over the action dims
        log_prob = log_prob.reshape(*batch.shape, -1).sum(-1)
    return log_prob


def surrogate_estimates(
    actor: nn.Module,
    params: TensorDictBase,
    batch: TensorDictBase,
    *,
    episode_return: Tensor | float,
    episode_cost: Tensor | float,
    episode_length: int,
    advantage_key: str = "advantage",
    cost_advantage_key: str = "cost_advantage",
    log_prob_key: str = "action_log_prob",
) -> tuple[Tensor, Tensor]:
    """Differentiable estimates of the episode return and cost at ``params``.

    .. math::

        \\hat J_R(\\theta) = J_R^{meas} + T\\,\\mathrm{mean}_t\\big[(\\rho_t(\\theta) - 1) A_t\\big],
        \\qquad \\rho_t(\\theta) = \\frac{\\pi_\\theta(a_t|s_t)}{\\pi_{old}(a_t|s_t)}

    and :math:`\\hat J_C` alike with the cost advantage. At the sampling parameters
    (:math:`\\rho = 1`) the value is the measured episode return/cost and the gradient is the
    policy gradient :math:`T\\,\\mathrm{mean}_t[\\nabla\\log\\pi_\\theta(a_t|s_t) A_t]`; the batch
    and the advantages are data (no gradient).

    Args:
        actor: the policy module (``get_dist``), run with ``params`` swapped in.
        params: policy parameters to differentiate w.r.t.
        batch: collected data, any batch shape, with ``action``, ``log_prob_key`` (the sampling
            policy's log-prob), ``advantage_key``, ``cost_advantage_key`` (``[*B, 1]`` or ``[*B]``)
            and the actor's input keys.
        episode_return: measured mean episode return of the batch.
        episode_cost: measured mean episode cost of the batch.
        episode_length: ``T``, steps per episode (scales the per-step mean to an episode total).

    Returns:
        ``(J_R, J_C)``, scalars with ``params``'s graph.

    Examples:
        >>> actor, batch = _example_rollout()  # the actor and rollout of log_prob_of's example
        >>> batch["advantage"], batch["cost_advantage"] = torch.randn(2, 3, 1), torch.randn(2, 3, 1)
        >>> (j_r, j_c), (g_r, g_c) = values_and_grads(lambda p: surrogate_estimates(
        ...     actor, p, batch, episode_return=1.5, episode_cost=0.5, episode_length=3),
        ...     params_of(actor))
        >>> round(float(j_r), 4), round(float(j_c), 4), bool(global_rms(g_r) > 0)  # rho = 1 here
        (1.5, 0.5, True)
    """
    for key in ("action", log_prob_key, advantage_key, cost_advantage_key):
        if key not in batch.keys(include_nested=True):
            raise ValueError(f"surrogate_estimates: batch has no {key!r} entry")
    if episode_length < 1:
        raise ValueError(f"episode_length must be >= 1, got {episode_length}")
    ratio = (log_prob_of(actor, params, batch) - batch[log_prob_key].detach()).exp()
    advantage = batch[advantage_key].detach().reshape(batch.shape)
    cost_advantage = batch[cost_advantage_key].detach().reshape(batch.shape)
    j_r = episode_return + episode_length * ((ratio - 1.0) * advantage).mean()
    j_c = episode_cost + episode_length * ((ratio - 1.0) * cost_advantage).mean()
    return j_r, j_c


class _StepInputs(NamedTuple):
    """The arguments of :meth:`MetaOptimizer.step`, as one value (what ``_step`` receives)."""

    params: TensorDictBase
    grad_reward: TensorDictBase
    grad_cost: TensorDictBase
    lagrange_multiplier: Tensor
    violation: Tensor
    state: TensorDictBase


class MetaOptimizer(TensorDictModuleBase):
    """Interface of a meta-optimizer: a learned update rule for ``theta`` and ``lambda``.

    Subclasses implement :meth:`init_state` and the update of :meth:`step` (its ``_step``, which
    receives the checked arguments as one named tuple, or ``step`` itself); :meth:`forward` is
    the TensorDict form. Keys read: ``"params"`` (TensorDict), ``"grad_reward"``,
    ``"grad_cost"`` (TensorDicts like ``params``), ``"lagrange_multiplier"`` (``[]``),
    ``"violation"`` (``[]``), ``"meta_state"`` (TensorDict). Keys written (new tensors, never in
    place): ``"params"``, ``"lagrange_multiplier"``, ``"meta_state"``. Every recurrent quantity
    lives in ``"meta_state"``; the module itself holds only meta-parameters.

    The TensorDict form of one step of :class:`~cmo_rl.meta.PIDMetaOptimizer` (no violation,
    so :math:`\\lambda = \\lambda_0`; the RMS-normalised reward gradient moves each coordinate
    by :math:`\\eta_R = 10^{-3}`):

    Examples:
        >>> from cmo_rl.meta import PIDMetaOptimizer
        >>> opt = PIDMetaOptimizer(init_lambda=0.5)
        >>> theta = TensorDict(w=torch.zeros(2))
        >>> td = TensorDict(params=theta, grad_reward=TensorDict(w=torch.tensor([2.0, -2.0])),
        ...                 grad_cost=TensorDict(w=torch.zeros(2)), violation=torch.tensor(0.0),
        ...                 lagrange_multiplier=opt.init_multiplier(theta),
        ...                 meta_state=opt.init_state(theta))
        >>> with torch.no_grad():
        ...     out = opt(td)
        >>> [round(w, 6) for w in out["params", "w"].tolist()], float(out["lagrange_multiplier"])
        ([0.001, -0.001], 0.5)
    """

    in_keys = [
        "params",
        "grad_reward",
        "grad_cost",
        "lagrange_multiplier",
        "violation",
        "meta_state",
    ]
    out_keys = ["params", "lagrange_multiplier", "meta_state"]

    def __init__(self, init_lambda: float = 0.0) -> None:
        super().__init__()
        if init_lambda < 0:
            raise ValueError(f"init_lambda must be >= 0, got {init_lambda}")
        self.init_lambda = float(init_lambda)

    def init_multiplier(self, params: TensorDictBase) -> Tensor:
        """``lambda_0 = init_lambda`` as a scalar tensor on ``params``'s device and dtype."""
        ref = params.get(_leaf_keys(params)[0])
        return torch.tensor(self.init_lambda, dtype=ref.dtype, device=ref.device)

    def init_state(self, params: TensorDictBase) -> TensorDict:
        """The recurrent state before the first step (a TensorDict, batch size ``[]``)."""
        raise NotImplementedError

    def step(
        self,
        params: TensorDictBase,
        grad_reward: TensorDictBase,
        grad_cost: TensorDictBase,
        lagrange_multiplier: Tensor,
        violation: Tensor,
        state: TensorDictBase,
    ) -> tuple[TensorDict, Tensor, TensorDict]:
        """``(theta_k, g_R, g_C, lambda_k, e_k, s_k) -> (theta_{k+1}, lambda_{k+1}, s_{k+1})``.

        A pure function of its arguments and the meta-parameters: the outputs are new tensors
        (the inputs are not modified) and keep the graph to the inputs and to the
        meta-parameters. Works under ``torch.func.vmap`` (one task per vmapped slice).

        Args:
            params: the policy parameters :math:`\\theta_k` (a TensorDict).
            grad_reward: :math:`g_R = \\nabla_\\theta \\hat J_R`, a TensorDict like ``params``.
            grad_cost: :math:`g_C = \\nabla_\\theta \\hat J_C`, a TensorDict like ``params``.
            lagrange_multiplier: :math:`\\lambda_k`, a scalar tensor.
            violation: the constraint violation :math:`e_k`, a scalar tensor.
            state: the recurrent state :math:`s_k` (:meth:`init_state` or the last step's).

        Returns:
            ``(params, lagrange_multiplier, state)`` after the step.
        """
        if violation.dim() != 0:
            raise ValueError(
                f"violation must be a scalar tensor, got shape {tuple(violation.shape)}"
            )
        return self._step(
            _StepInputs(params, grad_reward, grad_cost, lagrange_multiplier, violation, state)
        )

    def _step(self, inputs: _StepInputs) -> tuple[TensorDict, Tensor, TensorDict]:
        """The update of :meth:`step` (``violation`` already checked to be a scalar)."""
        raise NotImplementedError

    def meta_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of meta-parameters (for per-group gradient norms in logs)."""
        return {name: [p] for name, p in self.named_parameters()}

    def meta_grad_norms(self) -> dict[str, float]:
        """L2 norm of the current ``.grad`` of each group (0 where there is none)."""
        norms = {}
        for name, group in self.meta_parameter_groups().items():
            sq = sum(float(p.grad.detach().pow(2).sum()) for p in group if p.grad is not None)
            norms[name] = sq**0.5
        return norms

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        params, lam, state = self.step(
            tensordict["params"],
            tensordict["grad_reward"],
            tensordict["grad_cost"],
            tensordict["lagrange_multiplier"],
            tensordict["violation"],
            tensordict["meta_state"],
        )
        tensordict.set("params", params)
        tensordict.set("lagrange_multiplier", lam)
        tensordict.set("meta_state", state)
        return tensordict
