"""Input features of the learned (LSTM) meta-optimizer.

Gradients span many orders of magnitude across coordinates, tasks and training, so each gradient
coordinate is mapped to two bounded features (Andrychowicz et al., 2016, appendix A), with
``k = 10``:

.. math::

    \\mathrm{pre}(g) = \\begin{cases}
        \\big(\\mathrm{clip}(\\log|g| / k, -1, 1),\\ \\mathrm{sign}(g)\\big) & |g| \\ge e^{-k} \\\\
        (-1,\\ e^{k} g) & \\text{otherwise}
    \\end{cases}

Unbounded scalars (parameter values, the multiplier, the violation) go through
:math:`\\mathrm{asinh}(x) = \\log(x + \\sqrt{x^2 + 1})` (smooth, slope 1 at 0, logarithmic for large
:math:`|x|`).

Per-coordinate features (``[n, 9]``): ``pre(g_R)``, ``pre(g_C)``, ``pre(g_R - lambda g_C)`` (the
Lagrangian direction), ``squash(theta_i)``, ``squash(lambda)``, ``squash(e)``.
Constraint features (``[4]``): ``squash`` of the violation ``e_k``, its change
``e_k - e_{k-1}``, the multiplier ``lambda_k`` and the violation integral ``I_{k+1}``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "COORDINATE_FEATURES",
    "CONSTRAINT_FEATURES",
    "constraint_features",
    "coordinate_features",
    "preprocess_gradient",
    "squash",
]

COORDINATE_FEATURES = 9
CONSTRAINT_FEATURES = 4


def preprocess_gradient(grad: Tensor, k: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016) log/sign preprocessing: ``[...] -> [..., 2]``.

    Differentiable in ``grad`` where it matters (the ``e^k g`` branch and the log magnitude);
    no NaNs at ``g = 0``.

    Examples:
        >>> preprocess_gradient(torch.tensor([1.0, -math.exp(-5.0), 0.0, 1e-6]))
        tensor([[ 0.0000,  1.0000],
                [-0.5000, -1.0000],
                [-1.0000,  0.0000],
                [-1.0000,  0.0220]])
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    threshold = math.exp(-k)
    magnitude = grad.abs()
    large = magnitude >= threshold
    log_part = (magnitude.clamp_min(threshold).log() / k).clamp(-1.0, 1.0)
    sign_part = torch.where(large, torch.sign(grad), grad * math.exp(k))
    return torch.stack([log_part, sign_part], dim=-1)


def squash(x: Tensor) -> Tensor:
    """``asinh(x)``: identity-like near 0 (slope 1, so gradients pass at ``x = 0``),
    ``sign(x) log(2|x|)`` for large ``|x|``.

    Examples:
        >>> squash(torch.tensor([-1.0, 0.0, 100.0]))
        tensor([-0.8814,  0.0000,  5.2983])
    """
    return torch.asinh(x)


def coordinate_features(
    param: Tensor,
    grad_reward: Tensor,
    grad_cost: Tensor,
    lagrange_multiplier: Tensor,
    violation: Tensor,
    k: float = 10.0,
) -> Tensor:
    """Per-coordinate features ``[n, 9]`` from flat vectors ``[n]`` and scalars.

    Examples:
        >>> f = coordinate_features(torch.zeros(3), torch.ones(3), -torch.ones(3),
        ...                         torch.tensor(1.0), torch.tensor(0.5))
        >>> f.shape, f[0, 4:6].tolist()  # pre(g_R - lambda g_C) = pre(2)
        (torch.Size([3, 9]), [0.06931471824645996, 1.0])
    """
    n = param.shape[0]
    if param.dim() != 1 or grad_reward.shape != param.shape or grad_cost.shape != param.shape:
        raise ValueError(
            "param, grad_reward and grad_cost must be flat vectors of one shape, got "
            f"{tuple(param.shape)}, {tuple(grad_reward.shape)}, {tuple(grad_cost.shape)}"
        )
    lagrangian = grad_reward - lagrange_multiplier * grad_cost
    scalars = torch.stack([squash(lagrange_multiplier), squash(violation)]).expand(n, 2)
    return torch.cat(
        [
            preprocess_gradient(grad_reward, k),
            preprocess_gradient(grad_cost, k),
            preprocess_gradient(lagrangian, k),
            squash(param).unsqueeze(-1),
            scalars,
        ],
        dim=-1,
    )


def constraint_features(
    violation: Tensor, prev_violation: Tensor, lagrange_multiplier: Tensor, integral: Tensor
) -> Tensor:
    """Features ``[4]`` of the multiplier head: ``squash`` of ``(e_k, e_k - e_{k-1}, lambda_k,
    I_{k+1})``.

    Examples:
        >>> constraint_features(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0),
        ...                     torch.tensor(1.0))
        tensor([0.8814, 0.8814, 0.0000, 0.8814])
    """
    return squash(
        torch.stack([violation, violation - prev_violation, lagrange_multiplier, integral])
    )
