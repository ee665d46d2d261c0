"""Adam and per-network gradient-norm clipping over a stack of ``P`` learners.

What :func:`~cmo_rl.training.onpolicy.make_optimizer` (one ``torch.optim.Adam``, default
betas and eps, one parameter group per network) and the clipping of
:func:`~cmo_rl.training.onpolicy.minibatch_epochs` do for one learner, done here for all
learners at once on tensors with a leading learner dimension ``P``:

1. :func:`clip_group_norms`: per learner and group, the pre-clip norm
   :math:`\\|g\\| = \\|(\\|g_1\\|, \\dots, \\|g_k\\|)\\|_2` (as ``clip_grad_norm_`` stacks the
   per-tensor norms in ``module.parameters()`` order) and
   :math:`g \\leftarrow g \\min(1, c / (\\|g\\| + 10^{-6}))`;
2. :func:`adam_update`: ``torch.optim.Adam``'s single-tensor rule (the CPU default) with a
   *per-learner* step count and a per-learner, per-group learning rate (so each learner can
   follow its own :func:`~cmo_rl.training.onpolicy.linear_lr` schedule); the bias corrections
   are computed in float64 like the Python floats of ``torch.optim.Adam``, so results agree
   bit for bit (``tests/population/test_stacked_adam.py``);
3. a boolean ``mask`` ``[P]`` leaves the parameters *and* the Adam state of the learners it
   excludes untouched (a learner stopped by the KL check, or a skipped non-finite step).

:class:`StackedAdam` holds the state (``step`` ``[P]``, ``exp_avg``, ``exp_avg_sq``, ``lr``)
and converts learner ``p``'s state to and from a ``torch.optim.Adam`` state dict
(checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["StackedAdam", "adam_update", "clip_group_norms"]

Flat = Mapping[str, Mapping[str, Tensor]]


def _per_learner(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``[P]`` viewed to broadcast against ``like`` ``[P, ...]``."""
    return values.reshape(values.shape + (1,) * (like.dim() - 1))


def clip_group_norms(
    grads: Flat, max_grad_norm: float | None
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """``(clipped grads, {group: pre-clip norm [P]})``, as ``clip_grad_norm_`` per group.

    Examples:
        >>> grads = {"actor": {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}}
        >>> clipped, norms = clip_group_norms(grads, max_grad_norm=1.0)
        >>> norms["actor"], clipped["actor"]["w"]
        (tensor([5.0000, 0.5000]), tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]]))
    """
    limit = float("inf") if max_grad_norm is None else float(max_grad_norm)
    out, norms = {}, {}
    for group, tensors in grads.items():
        per_tensor = [torch.linalg.vector_norm(g.flatten(1), 2.0, dim=1) for g in tensors.values()]
        total = torch.linalg.vector_norm(torch.stack(per_tensor, dim=1), 2.0, dim=1)
        coef = torch.clamp(limit / (total + 1e-6), max=1.0)
        out[group] = {name: g * _per_learner(coef, g) for name, g in tensors.items()}
        norms[group] = total
    return out, norms


def adam_update(
    params: Flat,
    grads: Flat,
    exp_avg: Flat,
    exp_avg_sq: Flat,
    step: Tensor,
    lr: Mapping[str, Tensor],
    mask: Tensor | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[dict, dict, dict, Tensor]:
    """One Adam step of every learner; returns new ``(params, exp_avg, exp_avg_sq, step)``.

    Args:
        params: ``{group: {name: tensor [P, ...]}}``.
        grads: the gradients, shaped like ``params``.
        exp_avg: Adam's first moments, shaped like ``params``.
        exp_avg_sq: Adam's second moments, shaped like ``params``.
        step: float32 ``[P]`` steps taken so far (``torch.optim.Adam``'s ``state["step"]``).
        lr: ``{group: float64 [P]}`` learning rates.
        mask: bool ``[P]``; learners where it is ``False`` keep parameters and state.
        betas: Adam's moment decays (``torch.optim.Adam``'s default).
        eps: Adam's denominator term (``torch.optim.Adam``'s default).

    Examples:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> w.grad = torch.tensor([0.5, -1.0])
        >>> opt.step()
        >>> p, g = {"a": {"w": torch.tensor([[1.0, 2.0]])}}, {"a": {"w": torch.tensor([[0.5, -1.0]])}}
        >>> zeros = {"a": {"w": torch.zeros(1, 2)}}
        >>> new, *_ = adam_update(p, g, zeros, zeros, torch.zeros(1),
        ...                       {"a": torch.tensor([0.1], dtype=torch.float64)})
        >>> bool(torch.equal(new["a"]["w"][0], w.detach()))
        True
    """
    beta1, beta2 = betas
    new_step = step + 1
    if mask is not None:
        new_step = torch.where(mask, new_step, step)
    step64 = new_step.to(torch.float64)
    bias_correction1 = 1 - torch.pow(beta1, step64)
    bias_correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, step64)).to(step.dtype)
    new_params, new_avg, new_avg_sq = {}, {}, {}
    for group, tensors in params.items():
        neg_step_size = (-(lr[group] / bias_correction1)).to(step.dtype)
        new_params[group], new_avg[group], new_avg_sq[group] = {}, {}, {}
        for name, param in tensors.items():
            grad = grads[group][name]
            avg = torch.lerp(exp_avg[group][name], grad, 1 - beta1)
            avg_sq = exp_avg_sq[group][name].mul(beta2).addcmul(grad, grad, value=1 - beta2)
            denom = (avg_sq.sqrt() / _per_learner(bias_correction2_sqrt, param)).add(eps)
            new = param + (_per_learner(neg_step_size, param) * avg) / denom
            if mask is not None:
                keep = _per_learner(mask, param)
                new = torch.where(keep, new, param)
                avg = torch.where(keep, avg, exp_avg[group][name])
                avg_sq = torch.where(keep, avg_sq, exp_avg_sq[group][name])
            new_params[group][name] = new
            new_avg[group][name] = avg
            new_avg_sq[group][name] = avg_sq
    return new_params, new_avg, new_avg_sq, new_step


class StackedAdam:
    """The Adam state of ``P`` learners (one ``torch.optim.Adam`` each, as
    :func:`~cmo_rl.training.onpolicy.make_optimizer` builds it).

    Args:
        params: ``{group: {name: tensor [P, ...]}}`` (e.g. ``LearnerNets.flat_params(stack)``).
        lr: initial learning rate of every group: a float, or a ``[P]`` tensor.
        betas: Adam's moment decays.
        eps: Adam's denominator term.

    Attributes:
        step: float32 ``[P]``; ``exp_avg``, ``exp_avg_sq``: like ``params``; ``lr``:
        ``{group: float64 [P]}``.

    Examples:
        >>> params = {"actor": {"w": torch.zeros(3, 2)}, "critic": {"w": torch.zeros(3, 1)}}
        >>> adam = StackedAdam(params, lr=3e-4)
        >>> adam.set_lr([1e-4, 2e-4, 3e-4], group="actor")  # floats: kept in float64
        >>> adam.lr["actor"].tolist(), adam.lr["critic"].tolist()
        ([0.0001, 0.0002, 0.0003], [0.0003, 0.0003, 0.0003])
    """

    def __init__(
        self,
        params: Flat,
        lr: float | Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        first = next(iter(next(iter(params.values())).values()))
        self.size = int(first.shape[0])
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.step = torch.zeros(self.size, dtype=torch.float32, device=first.device)
        self.exp_avg = {
            g: {n: torch.zeros_like(t) for n, t in ts.items()} for g, ts in params.items()
        }
        self.exp_avg_sq = {
            g: {n: torch.zeros_like(t) for n, t in ts.items()} for g, ts in params.items()
        }
        self.lr: dict[str, Tensor] = {}
        for group in params:
            self.set_lr(lr, group)

    def set_lr(self, lr: float | Sequence[float] | Tensor, group: str | None = None) -> None:
        """Set group ``group``'s learning rate (``None``: every group), a float or ``P`` of
        them (as :func:`~cmo_rl.training.onpolicy.set_lr` does for one learner). Pass Python
        floats or float64: ``torch.optim.Adam`` keeps ``lr`` as a Python float."""
        lr = torch.as_tensor(lr, dtype=torch.float64, device=self.step.device)
        lr = lr.expand(self.size).clone() if lr.dim() == 0 else lr.clone()
        if lr.shape != (self.size,) or not bool((lr > 0).all()):
            raise ValueError(f"lr must be > 0, a float or [{self.size}], got {lr}")
        groups = list(self.exp_avg) if group is None else [group]
        for name in groups:
            if name not in self.exp_avg:
                raise ValueError(f"no parameter group named {name!r}; groups: {list(self.exp_avg)}")
            self.lr[name] = lr

    def update(self, params: Flat, grads: Flat, mask: Tensor | None = None) -> dict:
        """One step (:func:`adam_update`) of the learners in ``mask``; returns the new params
        and keeps the new state."""
        new, self.exp_avg, self.exp_avg_sq, self.step = adam_update(
            params, grads, self.exp_avg, self.exp_avg_sq, self.step, self.lr, mask,
            self.betas, self.eps,
        )  # fmt: skip
        return new

    # The pure-step protocol of :class:`~cmo_rl.population.update.PopulationPPO`: the state a
    # step changes, the per-learner tensors it only reads, and the step itself.
    def trained_state(self) -> dict[str, object]:
        """What a step changes: ``{"exp_avg", "exp_avg_sq", "step"}`` (leading dim ``P``)."""
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "step": self.step}

    def constants(self) -> dict[str, object]:
        """Per-learner tensors a step reads but does not change: ``{"lr"}``."""
        return {"lr": self.lr}

    def load_trained_state(self, state: Mapping[str, object]) -> None:
        """Keep ``state`` (of :meth:`trained_state`'s layout) as the current state."""
        self.exp_avg, self.exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        self.step = state["step"]

    def apply(
        self,
        params: Flat,
        grads: Flat,
        state: Mapping[str, object],
        constants: Mapping[str, object],
        mask: Tensor | None,
        multiplier: Tensor,
    ) -> tuple[dict, dict[str, object]]:
        """One step as a pure function of the state: ``(new params, new trained state)``.
        ``multiplier`` (each learner's lambda) is unused by Adam; learned rules read it.

        Examples:
            >>> adam = StackedAdam({"a": {"w": torch.zeros(1, 2)}}, lr=0.1)
            >>> new, state = adam.apply({"a": {"w": torch.zeros(1, 2)}},
            ...                         {"a": {"w": torch.tensor([[1.0, -1.0]])}},
            ...                         adam.trained_state(), adam.constants(), None, torch.zeros(1))
            >>> new["a"]["w"], state["step"]  # Adam's first step: lr * sign(g)
            (tensor([[-0.1000,  0.1000]]), tensor([1.]))
        """
        new, avg, avg_sq, step = adam_update(
            params, grads, state["exp_avg"], state["exp_avg_sq"], state["step"],
            constants["lr"], mask, self.betas, self.eps,
        )  # fmt: skip
        return new, {"exp_avg": avg, "exp_avg_sq": avg_sq, "step": step}

    def state_dict_of(self, p: int, optimizer: torch.optim.Adam) -> dict:
        """Learner ``p``'s state as ``optimizer.state_dict()`` of its own ``torch.optim.Adam``
        (``optimizer``: one of :func:`make_optimizer` over that learner's networks, used for
        its layout only); ``optimizer.load_state_dict`` of it resumes the learner exactly.

        Examples:
            >>> from torch import nn
            >>> from cmo_rl.training.onpolicy import make_optimizer
            >>> net = nn.Linear(2, 1)
            >>> adam = StackedAdam({"actor": {"weight": torch.zeros(2, 1, 2),
            ...                               "bias": torch.zeros(2, 1)}}, lr=1e-3)
            >>> grads = {"actor": {"weight": torch.ones(2, 1, 2), "bias": torch.ones(2, 1)}}
            >>> _ = adam.update({"actor": {"weight": torch.zeros(2, 1, 2),
            ...                            "bias": torch.zeros(2, 1)}}, grads)
            >>> opt = make_optimizer({"actor": net}, lr=3e-4)
            >>> opt.load_state_dict(adam.state_dict_of(1, opt))
            >>> opt.param_groups[0]["lr"], sorted(opt.state_dict()["state"][0])
            (0.001, ['exp_avg', 'exp_avg_sq', 'step'])
        """
        state = optimizer.state_dict()
        groups = [dict(g) for g in state["param_groups"]]
        per_param = {}
        for group in groups:
            name = group.get("name")
            if name not in self.exp_avg:
                raise ValueError(f"optimizer group {name!r} is not one of {list(self.exp_avg)}")
            tensors = list(self.exp_avg[name])
            if len(tensors) != len(group["params"]):
                raise ValueError(f"group {name!r}: {len(group['params'])} params vs {len(tensors)}")
            group["lr"] = float(self.lr[name][p])
            for index, tensor_name in zip(group["params"], tensors):
                if float(self.step[p]) > 0:
                    per_param[index] = {
                        "step": self.step[p].detach().clone(),
                        "exp_avg": self.exp_avg[name][tensor_name][p].detach().clone(),
                        "exp_avg_sq": self.exp_avg_sq[name][tensor_name][p].detach().clone(),
                    }
        return {"state": per_param, "param_groups": groups}

    def load_state_dict_of(self, p: int, state: dict) -> None:
        """Set learner ``p``'s state from a ``torch.optim.Adam`` state dict (the inverse of
        :meth:`state_dict_of`; groups matched by ``name``).

        Examples:
            >>> adam = StackedAdam({"actor": {"w": torch.zeros(2, 3)}}, lr=1e-3)
            >>> state = {"state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.ones(3),
            ...          "exp_avg_sq": torch.ones(3)}},
            ...          "param_groups": [{"name": "actor", "lr": 5e-4, "params": [0]}]}
            >>> adam.load_state_dict_of(1, state)
            >>> adam.step.tolist(), adam.lr["actor"].tolist()
            ([0.0, 4.0], [0.001, 0.0005])
        """
        with torch.no_grad():
            for group in state["param_groups"]:
                name = group["name"]
                self.lr[name] = self.lr[name].clone()
                self.lr[name][p] = float(group["lr"])
                for index, tensor_name in zip(group["params"], self.exp_avg[name]):
                    entry = state["state"].get(index)
                    if entry is None:
                        self.exp_avg[name][tensor_name][p] = 0.0
                        self.exp_avg_sq[name][tensor_name][p] = 0.0
                        continue
                    self.step[p] = float(entry["step"])
                    self.exp_avg[name][tensor_name][p] = entry["exp_avg"]
                    self.exp_avg_sq[name][tensor_name][p] = entry["exp_avg_sq"]
        if not math.isfinite(float(self.step[p])):
            raise ValueError("non-finite Adam step count")
