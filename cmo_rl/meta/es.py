"""Evolution strategies over whole training runs: the estimator, rank fitness, the run's score.

The meta-objective of a learned rule :math:`\\phi` is the score of the *whole* training run
it drives, :math:`F(\\phi) = \\mathbb{E}_{\\text{task}, \\text{seed}}[\\,f(\\text{run})\\,]`, not
the loss of one step; no gradient flows through the run. Antithetic ES (Salimans et al. 2017;
OPEN, Goldie et al. 2024) estimates the gradient of the Gaussian-smoothed objective from
:math:`n` pairs :math:`\\phi \\pm \\sigma\\epsilon_k`, :math:`\\epsilon_k \\sim N(0, I)`:

.. math::

    \\hat g = \\frac{1}{2 n \\sigma} \\sum_{k=1}^{n} \\big(\\tilde F(\\phi + \\sigma\\epsilon_k)
        - \\tilde F(\\phi - \\sigma\\epsilon_k)\\big)\\,\\epsilon_k

where :math:`\\tilde F` is the *centred rank* of each member's fitness among the members that
share its task and seed (then averaged over those groups): scale-free across tasks whose
returns differ by orders of magnitude, and robust to one diverging run. Both members of a pair
run the same seeds (common random numbers), so the pair's difference measures the perturbation,
not the seed. :math:`\\phi` then takes an Adam *ascent* step along :math:`\\hat g`.

What the estimate keeps and drops: it sees every effect of :math:`\\phi` on the whole run
(long-horizon, non-differentiable: early stopping, clipping, episode ends), at the price of
variance that grows with the number of meta-parameters, which is why the lambda rule (tens of
parameters) suits it. The score of one run is :func:`run_fitness`.

:class:`EvolutionStrategy` is an optimizer as an ``init_state`` + ``ask`` / ``tell`` pair over
explicit state (as in ``learned_optimization``), so a checkpoint is its state and resuming is
exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from tensordict import TensorDict
from torch import Tensor

from cmo_rl.evaluation import summarize_run

__all__ = [
    "EvolutionStrategy",
    "antithetic_noise",
    "centered_ranks",
    "es_gradient",
    "pair_scores",
    "run_fitness",
]


def antithetic_noise(dim: int, pairs: int, *, seed: int) -> Tensor:
    """``[pairs, dim]`` standard normal directions :math:`\\epsilon_k`, a function of ``seed``
    only (members are :math:`\\phi + \\sigma\\epsilon_k` then :math:`\\phi - \\sigma\\epsilon_k`).

    Examples:
        >>> a, b = antithetic_noise(3, 2, seed=7), antithetic_noise(3, 2, seed=7)
        >>> a.shape, bool(torch.equal(a, b))
        (torch.Size([2, 3]), True)
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(pairs, dim, generator=generator)


def centered_ranks(x: Tensor) -> Tensor:
    """Ranks of ``x`` mapped linearly onto ``[-0.5, 0.5]`` (ties broken by position).

    Examples:
        >>> centered_ranks(torch.tensor([10.0, -3.0, 1e6]))
        tensor([ 0.0000, -0.5000,  0.5000])
    """
    n = x.numel()
    ranks = torch.empty(n, dtype=torch.float32)
    ranks[torch.argsort(x, stable=True)] = torch.arange(n, dtype=torch.float32)
    return ranks / max(n - 1, 1) - 0.5


def pair_scores(fitness: Tensor) -> Tensor:
    """Per-member scores from raw fitness ``[2n, G]`` (members in the order
    ``+eps_1..+eps_n, -eps_1..-eps_n``; ``G`` task-seed groups): centred ranks within each
    group, averaged over the groups, ``[2n]``.

    Examples:
        >>> f = torch.tensor([[1.0, 100.0], [3.0, 300.0], [2.0, 200.0], [0.0, 0.0]])
        >>> pair_scores(f)  # the same order in both groups, whatever their scale
        tensor([-0.1667,  0.5000,  0.1667, -0.5000])
    """
    if fitness.dim() != 2 or fitness.shape[0] % 2:
        raise ValueError(f"fitness must be [2n, groups], got {tuple(fitness.shape)}")
    if not bool(torch.isfinite(fitness).all()):
        raise ValueError(f"fitness must be finite, got {fitness.tolist()}")
    return torch.stack([centered_ranks(col) for col in fitness.unbind(1)], 1).mean(1)


def es_gradient(noise: Tensor, scores: Tensor, sigma: float) -> Tensor:
    """The antithetic estimate :math:`\\hat g` (module docstring) from ``noise`` ``[n, dim]``
    and member ``scores`` ``[2n]`` (``+`` members first).

    Examples:
        >>> noise = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> es_gradient(noise, torch.tensor([0.5, 0.0, -0.5, 0.0]), sigma=0.5)  # (0.5 + 0.5) e1 / (2*2*0.5)
        tensor([0.5000, 0.0000])
    """
    n = noise.shape[0]
    diff = scores[:n] - scores[n:]
    return (diff.unsqueeze(1) * noise).sum(0) / (2 * n * sigma)


class EvolutionStrategy:
    """Antithetic ES with rank fitness and an Adam ascent step, over explicit state.

    Args:
        sigma: perturbation scale :math:`\\sigma` (in the units of the meta-parameters: the
            rule's log-gains, logits, offset and MLP weights).
        lr: Adam step size.
        pairs: :math:`n`, antithetic pairs per generation (``2n`` members).
        seed: the noise of generation ``g`` is drawn from ``seed`` and ``g`` alone.
        betas: Adam's moment decay factors.
        eps: Adam's denominator constant.

    Examples:
        >>> es = EvolutionStrategy(sigma=0.1, lr=0.05, pairs=4, seed=0)
        >>> state = es.init_state(torch.zeros(2))
        >>> for _ in range(100):  # maximise -(x - 1)^2 - (y + 2)^2 with ranks only
        ...     members, noise = es.ask(state)
        ...     f = -((members - torch.tensor([1.0, -2.0])) ** 2).sum(1, keepdim=True)
        ...     state = es.tell(state, noise, f)
        >>> [round(v, 1) for v in state["center"].tolist()], int(state["generation"])
        ([1.0, -2.0], 100)
    """

    def __init__(
        self,
        *,
        sigma: float,
        lr: float,
        pairs: int,
        seed: int = 0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        problems = []
        if not (math.isfinite(sigma) and sigma > 0):
            problems.append(f"sigma must be > 0, got {sigma}")
        if not (math.isfinite(lr) and lr > 0):
            problems.append(f"lr must be > 0, got {lr}")
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
            problems.append(f"pairs must be an int >= 1, got {pairs!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.sigma, self.lr, self.pairs, self.seed = float(sigma), float(lr), pairs, int(seed)
        self.betas, self.eps = betas, float(eps)

    def init_state(self, center: Tensor) -> TensorDict:
        """The state at generation 0: ``center`` :math:`\\phi`, Adam's moments, ``generation``."""
        center = center.detach().float().reshape(-1)
        return TensorDict(
            center=center.clone(),
            exp_avg=torch.zeros_like(center),
            exp_avg_sq=torch.zeros_like(center),
            generation=torch.tensor(0),
        )

    def ask(self, state: TensorDict) -> tuple[Tensor, Tensor]:
        """This generation's members ``[2n, dim]`` (``+`` then ``-``) and noise ``[n, dim]``."""
        center = state["center"]
        noise = antithetic_noise(
            center.numel(), self.pairs, seed=self.seed * 1_000_003 + int(state["generation"])
        )
        return torch.cat([center + self.sigma * noise, center - self.sigma * noise]), noise

    def tell(self, state: TensorDict, noise: Tensor, fitness: Tensor) -> TensorDict:
        """The next state from the members' raw ``fitness`` ``[2n, G]`` (higher is better)."""
        grad = es_gradient(noise, pair_scores(fitness), self.sigma)
        b1, b2 = self.betas
        step = int(state["generation"]) + 1
        exp_avg = b1 * state["exp_avg"] + (1 - b1) * grad
        exp_avg_sq = b2 * state["exp_avg_sq"] + (1 - b2) * grad**2
        denom = (exp_avg_sq / (1 - b2**step)).sqrt() + self.eps
        center = state["center"] + self.lr * (exp_avg / (1 - b1**step)) / denom
        return TensorDict(
            center=center, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, generation=torch.tensor(step)
        )


def run_fitness(
    metrics: pd.DataFrame | Any,
    *,
    cost_limit: float,
    mu: float,
    nu: float,
    tail_fraction: float = 0.25,
) -> dict[str, float]:
    """The score of one training run from its ``metrics.csv`` (train episodes, every epoch):

    .. math::

        f = R_{final} - \\mu \\max(0, C_{final} - d) - \\nu\\,\\overline{V}, \\qquad
        \\overline{V} = \\frac{1}{K}\\sum_{k=1}^{K} \\max(0, C_k - d)

    with :math:`R_{final}, C_{final}` the means of the last ``tail_fraction`` of the epochs and
    :math:`\\overline V` the mean violation over the run's :math:`K` epochs (the cumulative
    violation, per epoch: comparable across budgets).

    Returns:
        ``fitness``, ``final_return``, ``final_cost``, ``mean_violation``.

    Examples:
        >>> df = pd.DataFrame({"step": [1, 2, 3, 4], "train/episode_return": [0.0, 10.0, 20.0, 40.0],
        ...                    "train/episode_cost": [40.0, 30.0, 20.0, 30.0]})
        >>> run_fitness(df, cost_limit=25.0, mu=2.0, nu=1.0)  # 40 - 2 * 5 - (15 + 5 + 0 + 5) / 4
        {'fitness': 23.75, 'final_return': 40.0, 'final_cost': 30.0, 'mean_violation': 6.25}
    """
    s = summarize_run(
        metrics,
        cost_limit,
        mu,
        return_key="train/episode_return",
        cost_key="train/episode_cost",
        tail_fraction=tail_fraction,
    )
    mean_violation = s["cumulative_violation"] / max(s["num_points"], 1)
    fitness = s["penalized_return"] - nu * mean_violation
    out = {
        "fitness": fitness,
        "final_return": s["final_return"],
        "final_cost": s["final_cost"],
        "mean_violation": mean_violation,
    }
    return {k: float(np.round(v, 10)) for k, v in out.items()}
