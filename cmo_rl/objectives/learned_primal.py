"""A learned primal rule for the policy parameters: Adam with a meta-learned per-coordinate correction.

The dual rule (:mod:`cmo_rl.objectives.learned_dual`) sets :math:`\\lambda`; this one moves
:math:`\\theta` in PPO's minibatch steps, in place of Adam (OPEN-style, Goldie et al. 2024: a
small network shared by every coordinate, fed optimizer-state features). For each coordinate,
with gradient :math:`g` (of the minibatch's Lagrangian PPO loss, after clipping), Adam's
moments :math:`m, v` and a slow momentum :math:`\\bar m` (all bias-corrected),

.. math::

    \\hat d = \\frac{m}{\\sqrt v + \\epsilon}, \\qquad
    x = \\Big(\\hat d,\\; \\frac{g}{\\sqrt v + \\epsilon},\\;
        \\frac{\\bar m}{\\sqrt v + \\epsilon},\\; \\tau,\\; \\log(1 + \\lambda)\\Big), \\qquad
    (a, b) = s\\, f_\\phi(x), \\qquad
    \\Delta\\theta = -\\eta\\,\\big(\\hat d\\, e^{a} + b\\big)

with :math:`\\tau` the fraction of the run done, :math:`\\lambda` the current multiplier (the
rule sees how hard the constraint pulls) and :math:`s` = ``output_scale``. :math:`f_\\phi` is an
MLP ``[5, hidden, 2]`` (tanh) whose last layer starts at zero, so **a fresh rule is Adam**
(:math:`a = b = 0`; the same arithmetic up to float32 rounding: the division is grouped
differently from ``torch.optim.Adam``'s). :math:`e^{a}` rescales Adam's step per coordinate,
:math:`b` adds a direction of the rule's own (in units of the learning rate).

Only the ``learned_groups`` (default: the ``actor`` group of
:func:`cmo_rl.training.onpolicy.make_optimizer`) take the rule's step; the critics' groups take
Adam's. The rule itself is frozen during a run (its meta-parameters are what meta-training
changes: :func:`primal_rule_vector` / :func:`set_primal_rule_vector` for evolution strategies).

The population engine takes one rule per learner
(:class:`~cmo_rl.population.learned_adam.StackedLearnedAdam`), on which
``cmo meta_algorithm=es es.target=primal`` meta-trains the rule by ES over whole runs
(:mod:`cmo_rl.meta_es`). **Not there yet**: features of the separate reward and cost gradients
(PPO's clipped surrogate of :math:`A_L` does not split into them without a second backward
pass per minibatch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cmo_rl.objectives.rule_file import read_rule_file, write_rule_file

__all__ = [
    "PRIMAL_RULE_FILE",
    "LearnedAdam",
    "LearnedPrimalRule",
    "load_primal_rule",
    "primal_rule_vector",
    "save_primal_rule",
    "set_primal_rule_vector",
]

#: The ``format`` entry of a primal rule file.
PRIMAL_FORMAT = "cmo_rl.learned_primal/1"
#: The file an ES run (``es.target=primal``) keeps its current rule in; a run directory that
#: holds one loads as that file.
PRIMAL_RULE_FILE = "primal_rule.pt"


class LearnedPrimalRule(nn.Module):
    """:math:`f_\\phi`: per-coordinate features ``[N, 5]`` -> ``(a, b)`` ``[N, 2]``.

    Args:
        hidden: hidden units of the MLP.
        output_scale: :math:`s`, the scale of both outputs.

    Examples:
        >>> rule = LearnedPrimalRule(hidden=4)
        >>> rule(torch.ones(3, len(LearnedPrimalRule.FEATURES))).abs().sum().item()  # fresh: Adam
        0.0
    """

    #: The features of each coordinate, in order.
    FEATURES = ("adam_direction", "grad", "slow_momentum", "progress", "log1p_lambda")

    def __init__(self, hidden: int = 16, output_scale: float = 0.1) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden, self.output_scale = int(hidden), float(output_scale)
        # a fixed first layer, drawn from seed 0 without touching the global RNG: building
        # the rule must not change the run's other random draws (a fresh rule trains as Adam)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            first = nn.Linear(len(self.FEATURES), self.hidden)
            last = nn.Linear(self.hidden, 2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(first, nn.Tanh(), last)
        for p in self.parameters():
            p.requires_grad_(False)  # frozen inside a run; meta-training sets it

    def forward(self, features: Tensor) -> Tensor:
        return self.output_scale * self.net(features)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (its shape): ``LearnedPrimalRule(**rule.config())``."""
        return {"hidden": self.hidden, "output_scale": self.output_scale}


def primal_rule_vector(rule: LearnedPrimalRule) -> Tensor:
    """The rule's meta-parameters as one flat vector (what ES perturbs).

    Examples:
        >>> primal_rule_vector(LearnedPrimalRule(hidden=4)).shape  # 5*4+4 + 4*2+2
        torch.Size([34])
    """
    return nn.utils.parameters_to_vector(rule.parameters()).detach().clone()


def set_primal_rule_vector(rule: LearnedPrimalRule, vector: Tensor) -> LearnedPrimalRule:
    """Write a flat vector of :func:`primal_rule_vector`'s layout into ``rule``; returns it.

    Examples:
        >>> rule = LearnedPrimalRule(hidden=4)
        >>> v = primal_rule_vector(rule) + 1.0
        >>> torch.equal(primal_rule_vector(set_primal_rule_vector(rule, v)), v)
        True
    """
    with torch.no_grad():
        nn.utils.vector_to_parameters(vector.to(torch.float32), rule.parameters())
    return rule


def save_primal_rule(
    rule: LearnedPrimalRule, path: str | os.PathLike, provenance: dict[str, Any]
) -> Path:
    """Write ``rule`` (shape, meta-parameters, ``provenance``) to ``path``, atomically.

    Examples:
        >>> import tempfile
        >>> path = save_primal_rule(LearnedPrimalRule(hidden=2), Path(tempfile.mkdtemp()) / "p.pt",
        ...                         {"command": "demo"})
        >>> torch.load(path, weights_only=True)["provenance"]
        {'command': 'demo'}
    """
    return write_rule_file(path, rule, provenance, format=PRIMAL_FORMAT, config=rule.config())


def load_primal_rule(path: str | os.PathLike) -> LearnedPrimalRule:
    """The rule of a file written by :func:`save_primal_rule` (or of the
    :data:`PRIMAL_RULE_FILE` in a run directory: ``cmo meta_algorithm=es es.target=primal``'s);
    a ``ValueError`` naming the file for anything else.

    Examples:
        >>> import tempfile
        >>> rule = set_primal_rule_vector(LearnedPrimalRule(hidden=3), torch.arange(26.0))
        >>> path = save_primal_rule(rule, Path(tempfile.mkdtemp()) / "p.pt", {"command": "demo"})
        >>> torch.equal(primal_rule_vector(load_primal_rule(path)), torch.arange(26.0))
        True
    """
    path = Path(path)
    if path.is_dir() and (path / PRIMAL_RULE_FILE).is_file():
        path = path / PRIMAL_RULE_FILE
    data = read_rule_file(path, format=PRIMAL_FORMAT, what="learned primal rule")
    rule = LearnedPrimalRule(**data["config"])
    try:
        rule.load_state_dict(data["parameters"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not match its config: {err}") from None
    return rule


class LearnedAdam(torch.optim.Optimizer):
    """Adam whose ``learned_groups`` take the step of a :class:`LearnedPrimalRule`; a drop-in
    for the ``torch.optim.Adam`` of :func:`cmo_rl.training.onpolicy.make_optimizer` (named
    groups, ``lr`` per group, ``state_dict`` / ``load_state_dict``).

    Args:
        params: parameter groups (dicts with ``params``, ``name`` and optionally ``lr``).
        rule: the primal rule (frozen; not part of the optimizer's state).
        lr: default learning rate :math:`\\eta`.
        betas: Adam's :math:`\\beta_1, \\beta_2`.
        slow_beta: the slow momentum's :math:`\\beta`.
        eps: Adam's :math:`\\epsilon`.
        learned_groups: the group names the rule moves (the others take Adam's step).

    The loop tells it the run's context before each epoch's steps:
    :meth:`set_context` ``(progress, multiplier)`` (both 0 until set).

    Examples:
        >>> net = nn.Linear(3, 1)
        >>> opt = LearnedAdam([{"params": net.parameters(), "name": "actor"}],
        ...                   LearnedPrimalRule(hidden=4), lr=1e-3)
        >>> opt.set_context(progress=0.5, multiplier=2.0)
        >>> net(torch.ones(1, 3)).sum().backward()
        >>> before = net.bias.detach().clone()
        >>> opt.step()
        >>> round(float(before - net.bias.detach()), 6)  # a fresh rule: Adam's first step, lr * sign(g)
        0.001
    """

    def __init__(
        self,
        params: Iterable[Any],
        rule: LearnedPrimalRule,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        slow_beta: float = 0.99,
        eps: float = 1e-8,
        learned_groups: Sequence[str] = ("actor",),
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = {"lr": float(lr), "betas": tuple(betas), "slow_beta": slow_beta, "eps": eps}
        super().__init__(params, defaults)
        self.rule = rule
        self.learned_groups = tuple(learned_groups)
        self.progress, self.multiplier = 0.0, 0.0

    def set_context(self, *, progress: float, multiplier: float) -> None:
        """The fraction of the run done and the current :math:`\\lambda` (rule features)."""
        self.progress, self.multiplier = float(progress), float(multiplier)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102 - torch.optim's contract
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            learned = group.get("name") in self.learned_groups
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if learned:
                        state["exp_avg_slow"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].lerp_(g, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
                direction = state["exp_avg"] / (1 - beta1**t) / denom
                if learned:
                    slow_beta = group["slow_beta"]
                    state["exp_avg_slow"].lerp_(g, 1 - slow_beta)
                    slow = state["exp_avg_slow"] / (1 - slow_beta**t) / denom
                    direction = self._rule_step(direction, g / denom, slow)
                p.add_(direction, alpha=-group["lr"])
        return loss

    def _rule_step(self, direction: Tensor, grad: Tensor, slow: Tensor) -> Tensor:
        """:math:`\\hat d e^{a} + b` for every coordinate of one parameter."""
        flat = [direction.reshape(-1), grad.reshape(-1), slow.reshape(-1)]
        n = flat[0].numel()
        context = flat[0].new_tensor([self.progress, math.log1p(max(self.multiplier, 0.0))])
        features = torch.cat([torch.stack(flat, dim=1), context.expand(n, 2)], dim=1)
        out = self.rule.to(features.device)(features)
        return (flat[0] * out[:, 0].exp() + out[:, 1]).reshape(direction.shape)
