"""The learned primal rule over a stack of ``P`` learners: :class:`LearnedAdam` for all at once.

What :class:`~cmo_rl.objectives.learned_primal.LearnedAdam` does for one learner (Adam whose
``actor`` group takes the step of a :class:`~cmo_rl.objectives.learned_primal.LearnedPrimalRule`),
done here on tensors with a leading learner dimension ``P``, and with **one rule per learner**:
evolution strategies score perturbations of a rule as the learners of one population.

For the coordinates of a learned group, with bias-corrected moments and
:math:`D = \\sqrt{\\hat v} + \\epsilon` (the single-learner maths, see
:mod:`cmo_rl.objectives.learned_primal`),

.. math::

    x = \\big(\\hat m / D,\\; g / D,\\; \\hat{\\bar m} / D,\\; \\tau_p,\\;
        \\log(1 + \\lambda_p)\\big), \\qquad
    (a, b) = s\\, f_{\\phi_p}(x), \\qquad
    \\theta \\leftarrow \\theta - \\eta_p\\,\\big(\\hat m / D\\; e^{a} + b\\big)

with learner ``p``'s rule :math:`\\phi_p`, progress :math:`\\tau_p` and multiplier
:math:`\\lambda_p`. The rules' two layers run as batched matrix products over the learners
(``baddbmm``), so a learner's step equals its ``LearnedAdam`` step to float32 rounding (a
batched product sums in another order than one ``addmm``). Other groups take
:func:`~cmo_rl.population.adam.adam_update`'s step, bit for bit ``torch.optim.Adam``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from cmo_rl.objectives.learned_primal import LearnedPrimalRule
from cmo_rl.population.adam import Flat, StackedAdam, _per_learner, adam_update

__all__ = ["StackedLearnedAdam", "learned_adam_update", "stack_rules"]


def stack_rules(rules: Sequence[LearnedPrimalRule]) -> dict[str, Tensor]:
    """The learners' rules as ``{parameter name: tensor [P, ...]}``; every rule must have the
    same shape (``hidden``, ``output_scale``).

    Examples:
        >>> stacked = stack_rules([LearnedPrimalRule(hidden=4), LearnedPrimalRule(hidden=4)])
        >>> {name: tuple(t.shape) for name, t in stacked.items()}["net.0.weight"]
        (2, 4, 5)
    """
    if not rules:
        raise ValueError("stack_rules needs at least one rule")
    shapes = {tuple(sorted(rule.config().items())) for rule in rules}
    if len(shapes) != 1:
        raise ValueError(f"every learner's primal rule must have the same shape, got {shapes}")
    states = [rule.state_dict() for rule in rules]
    return {name: torch.stack([s[name].detach() for s in states]) for name in states[0]}


def _rule_outputs(rule: Mapping[str, Tensor], features: Tensor, output_scale: float) -> Tensor:
    """:math:`s f_\\phi(x)` for features ``[P, N, 5]`` with stacked rule weights: ``[P, N, 2]``."""
    hidden = torch.baddbmm(
        rule["net.0.bias"].unsqueeze(1), features, rule["net.0.weight"].transpose(1, 2)
    ).tanh()
    out = torch.baddbmm(
        rule["net.2.bias"].unsqueeze(1), hidden, rule["net.2.weight"].transpose(1, 2)
    )
    return output_scale * out


def learned_adam_update(
    params: Flat,
    grads: Flat,
    exp_avg: Flat,
    exp_avg_sq: Flat,
    exp_avg_slow: Flat,
    step: Tensor,
    lr: Mapping[str, Tensor],
    rule: Mapping[str, Tensor],
    progress: Tensor,
    multiplier: Tensor,
    mask: Tensor | None = None,
    *,
    output_scale: float,
    betas: tuple[float, float] = (0.9, 0.999),
    slow_beta: float = 0.99,
    eps: float = 1e-8,
) -> tuple[dict, dict, dict, dict, Tensor]:
    """One step of every learner; returns new ``(params, exp_avg, exp_avg_sq, exp_avg_slow,
    step)``. The groups in ``exp_avg_slow`` take the rule's step, the others Adam's.

    Args:
        params: ``{group: {name: tensor [P, ...]}}``.
        grads: the gradients, shaped like ``params``.
        exp_avg: Adam's first moments, shaped like ``params``.
        exp_avg_sq: Adam's second moments, shaped like ``params``.
        exp_avg_slow: the slow momentum of the learned groups (only those).
        step: float32 ``[P]`` steps taken so far.
        lr: ``{group: float64 [P]}`` learning rates.
        rule: the learners' rules, :func:`stack_rules`.
        progress: float32 ``[P]``, each learner's fraction of its run done.
        multiplier: float32 ``[P]``, each learner's :math:`\\lambda`.
        mask: bool ``[P]``; learners where it is ``False`` keep parameters and state.
        output_scale: the rules' :math:`s`.
        betas: Adam's moment decays.
        slow_beta: the slow momentum's decay.
        eps: Adam's :math:`\\epsilon`.

    Examples:
        >>> from torch import nn
        >>> from cmo_rl.objectives.learned_primal import LearnedAdam
        >>> net = nn.Linear(2, 1)
        >>> opt = LearnedAdam([{"params": net.parameters(), "name": "actor"}],
        ...                   LearnedPrimalRule(hidden=3, output_scale=1.0), lr=0.1)
        >>> with torch.no_grad():
        ...     _ = opt.rule.net[2].bias.fill_(0.5)  # a = b = 0.5 for every coordinate
        >>> p = {"actor": {n: t.detach().unsqueeze(0).clone() for n, t in net.named_parameters()}}
        >>> g = {"actor": {n: torch.ones_like(t) for n, t in p["actor"].items()}}
        >>> zeros = {"actor": {n: torch.zeros_like(t) for n, t in p["actor"].items()}}
        >>> new, *_ = learned_adam_update(p, g, zeros, zeros, zeros, torch.zeros(1),
        ...     {"actor": torch.tensor([0.1], dtype=torch.float64)}, stack_rules([opt.rule]),
        ...     torch.zeros(1), torch.zeros(1), output_scale=1.0)
        >>> net(torch.ones(1, 2)).sum().backward()
        >>> opt.step()
        >>> torch.allclose(new["actor"]["bias"][0], net.bias.detach())  # 0.1 * (e^0.5 + 0.5) less
        True
    """
    beta1, beta2 = betas
    plain = [group for group in params if group not in exp_avg_slow]
    new_params, new_avg, new_avg_sq, new_step = adam_update(
        {g: params[g] for g in plain}, {g: grads[g] for g in plain},
        {g: exp_avg[g] for g in plain}, {g: exp_avg_sq[g] for g in plain},
        step, {g: lr[g] for g in plain}, mask, betas, eps,
    )  # fmt: skip
    t = new_step.to(torch.float64)
    correction1 = (1 - torch.pow(beta1, t)).to(step.dtype)
    correction2 = (1 - torch.pow(beta2, t)).to(step.dtype)
    correction_slow = (1 - torch.pow(slow_beta, t)).to(step.dtype)
    context = torch.stack([progress, torch.log1p(multiplier.clamp(min=0.0))], dim=1)
    new_slow: dict[str, dict[str, Tensor]] = {}
    for group in exp_avg_slow:
        names = list(params[group])
        avg, avg_sq, slow, features = {}, {}, {}, []
        for name in names:
            param, grad = params[group][name], grads[group][name]
            avg[name] = torch.lerp(exp_avg[group][name], grad, 1 - beta1)
            avg_sq[name] = exp_avg_sq[group][name].mul(beta2).addcmul(grad, grad, value=1 - beta2)
            slow[name] = torch.lerp(exp_avg_slow[group][name], grad, 1 - slow_beta)
            denom = (avg_sq[name] / _per_learner(correction2, param)).sqrt().add(eps)
            direction = avg[name] / _per_learner(correction1, param) / denom
            slow_direction = slow[name] / _per_learner(correction_slow, param) / denom
            features.append(
                torch.stack([direction, grad / denom, slow_direction], dim=-1).flatten(1, -2)
            )
        x = torch.cat(features, dim=1)  # [P, N, 3]
        x = torch.cat([x, context.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=2)
        out = _rule_outputs(rule, x, output_scale)
        moves = (x[..., 0] * out[..., 0].exp() + out[..., 1]).split(
            [params[group][n][0].numel() for n in names], dim=1
        )
        neg_lr = (-lr[group]).to(step.dtype)
        new_params[group], new_avg[group], new_avg_sq[group], new_slow[group] = {}, {}, {}, {}
        for name, move in zip(names, moves):
            param = params[group][name]
            new = param + _per_learner(neg_lr, param) * move.reshape(param.shape)
            a, a_sq, s = avg[name], avg_sq[name], slow[name]
            if mask is not None:
                keep = _per_learner(mask, param)
                new = torch.where(keep, new, param)
                a = torch.where(keep, a, exp_avg[group][name])
                a_sq = torch.where(keep, a_sq, exp_avg_sq[group][name])
                s = torch.where(keep, s, exp_avg_slow[group][name])
            new_params[group][name], new_avg[group][name] = new, a
            new_avg_sq[group][name], new_slow[group][name] = a_sq, s
    order = list(params)  # the groups in their given order
    return (
        {g: new_params[g] for g in order},
        {g: new_avg[g] for g in order},
        {g: new_avg_sq[g] for g in order},
        new_slow,
        new_step,
    )


class StackedLearnedAdam(StackedAdam):
    """The :class:`~cmo_rl.objectives.learned_primal.LearnedAdam` state of ``P`` learners, one
    primal rule each (as :func:`~cmo_rl.training.onpolicy.make_optimizer` with a
    ``primal_rule`` builds it for one learner).

    Args:
        params: ``{group: {name: tensor [P, ...]}}``.
        lr: initial learning rate of every group (a float or a ``[P]`` tensor).
        rules: one :class:`LearnedPrimalRule` per learner (frozen: copied in).
        learned_groups: the groups the rules move (``LearnedAdam``'s default: ``actor``).
        betas: Adam's moment decays.
        slow_beta: the slow momentum's decay.
        eps: Adam's :math:`\\epsilon`.

    Attributes:
        exp_avg_slow: the learned groups' slow momentum, shaped like their parameters.
        rule: the learners' rules, :func:`stack_rules`.
        progress: float32 ``[P]``, set by :meth:`set_context`.

    The other attributes are :class:`~cmo_rl.population.adam.StackedAdam`'s.

    Examples:
        >>> params = {"actor": {"w": torch.zeros(2, 3)}, "critic": {"w": torch.zeros(2, 1)}}
        >>> opt = StackedLearnedAdam(params, 1e-3, [LearnedPrimalRule(hidden=4)] * 2)
        >>> opt.set_context(progress=0.25)
        >>> list(opt.exp_avg_slow), opt.progress.tolist()
        (['actor'], [0.25, 0.25])
    """

    def __init__(
        self,
        params: Flat,
        lr: float | Tensor,
        rules: Sequence[LearnedPrimalRule],
        learned_groups: Sequence[str] = ("actor",),
        betas: tuple[float, float] = (0.9, 0.999),
        slow_beta: float = 0.99,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr, betas, eps)
        if len(rules) != self.size:
            raise ValueError(f"{len(rules)} primal rules for {self.size} learners")
        missing = [g for g in learned_groups if g not in params]
        if missing:
            raise ValueError(f"learned groups {missing} are not among {list(params)}")
        self.slow_beta = float(slow_beta)
        self.output_scale = float(rules[0].output_scale)
        self.rule = {k: v.to(self.step.device) for k, v in stack_rules(rules).items()}
        self.exp_avg_slow = {
            g: {n: torch.zeros_like(t) for n, t in params[g].items()} for g in learned_groups
        }
        self.progress = torch.zeros(self.size, dtype=torch.float32, device=self.step.device)

    def set_context(self, *, progress: float | Sequence[float] | Tensor) -> None:
        """Each learner's fraction of its run done (a float for all, or ``P`` of them); the
        multiplier feature is the :math:`\\lambda` of the update itself."""
        progress = torch.as_tensor(progress, dtype=torch.float32, device=self.step.device)
        self.progress = progress.expand(self.size).clone() if progress.dim() == 0 else progress

    def trained_state(self) -> dict[str, object]:  # noqa: D102 - see StackedAdam
        return {**super().trained_state(), "exp_avg_slow": self.exp_avg_slow}

    def constants(self) -> dict[str, object]:  # noqa: D102 - see StackedAdam
        return {**super().constants(), "rule": self.rule, "progress": self.progress}

    def load_trained_state(self, state: Mapping[str, object]) -> None:  # noqa: D102
        super().load_trained_state(state)
        self.exp_avg_slow = state["exp_avg_slow"]

    def apply(self, params, grads, state, constants, mask, multiplier):  # noqa: D102
        new, avg, avg_sq, slow, step = learned_adam_update(
            params, grads, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_slow"],
            state["step"], constants["lr"], constants["rule"], constants["progress"],
            multiplier, mask, output_scale=self.output_scale, betas=self.betas,
            slow_beta=self.slow_beta, eps=self.eps,
        )  # fmt: skip
        return new, {"exp_avg": avg, "exp_avg_sq": avg_sq, "exp_avg_slow": slow, "step": step}

    def state_dict_of(self, p: int, optimizer: torch.optim.Optimizer) -> dict:
        """Learner ``p``'s state as its ``LearnedAdam``'s ``state_dict()`` (``exp_avg_slow``
        of the learned groups' parameters included)."""
        state = super().state_dict_of(p, optimizer)
        for group in state["param_groups"]:
            if group["name"] not in self.exp_avg_slow:
                continue
            for index, name in zip(group["params"], self.exp_avg_slow[group["name"]]):
                if index in state["state"]:
                    slow = self.exp_avg_slow[group["name"]][name][p].detach().clone()
                    state["state"][index]["exp_avg_slow"] = slow
        return state

    def load_state_dict_of(self, p: int, state: dict) -> None:
        """Set learner ``p``'s state from its ``LearnedAdam``'s state dict."""
        super().load_state_dict_of(p, state)
        with torch.no_grad():
            for group in state["param_groups"]:
                if group["name"] not in self.exp_avg_slow:
                    continue
                slow = self.exp_avg_slow[group["name"]]
                for index, name in zip(group["params"], slow):
                    entry = state["state"].get(index)
                    slow[name][p] = 0.0 if entry is None else entry["exp_avg_slow"]
        if not math.isfinite(float(self.progress[p])):
            raise ValueError("non-finite progress")
