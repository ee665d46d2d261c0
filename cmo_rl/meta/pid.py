"""PID meta-optimizer: a PID Lagrange multiplier and a Lagrangian step, with learnable gains.

With the (normalised) constraint violation :math:`e_k` (see :func:`cmo_rl.meta.bilevel.violation`),

.. math::

    I_{k+1} &= \\max(0, I_k + e_k) \\\\
    \\lambda_{k+1} &= \\max\\big(0,\\ \\lambda_0 + K_P e_k + K_I I_{k+1} + K_D (e_k - e_{k-1})\\big) \\\\
    \\theta_{k+1} &= \\theta_k + \\eta_R\\,\\hat g_R - \\eta_C\\,\\lambda_{k+1}\\,\\hat g_C,
    \\qquad \\hat g = g / (\\mathrm{rms}(g) + \\epsilon)

with :math:`I_0 = 0`, :math:`e_{-1} = 0`, :math:`\\lambda_0` = ``init_lambda`` and
:math:`\\mathrm{rms}(g) = \\sqrt{\\sum_i g_i^2 / n}` over all ``n`` policy coordinates
(``normalize_grads=False`` uses the raw gradients). This is the positional PID form: the
``lagrange_multiplier`` input :math:`\\lambda_k` of :meth:`step` is not used. The RMS
normalisation gives every inner step an O(1) size per coordinate whatever the scale of the
environment's returns, so :math:`\\eta_R, \\eta_C` mean "per-coordinate step" on every task.

The five meta-parameters :math:`K_P, K_I, K_D, \\eta_R, \\eta_C` are kept positive by a log
reparameterisation (``log_KP = log(init_KP)``, ...), so the outer optimiser makes relative
changes to each. ``lambda`` responds to the *differentiable* violation: when ``e_k`` is the
surrogate :math:`(\\hat J_C(\\theta_k) - d)/s`, the gains change ``theta_k`` and thereby every
later violation, which is what gives them a meta-gradient beyond the current step.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from cmo_rl.meta.functional import MetaOptimizer, _StepInputs, global_rms

__all__ = ["PID_GAINS", "PIDMetaOptimizer"]

#: The names of the five meta-parameters (:meth:`PIDMetaOptimizer.gains`).
PID_GAINS = ("KP", "KI", "KD", "etaR", "etaC")


class PIDMetaOptimizer(MetaOptimizer):
    """Learnable PID-Lagrangian update rule (see the module docstring for the math).

    Args:
        init_KP: initial proportional gain (> 0).
        init_KI: initial integral gain (> 0).
        init_KD: initial derivative gain (> 0).
        init_etaR: initial step size along the reward gradient (> 0).
        init_etaC: initial step size against the lambda-weighted cost gradient (> 0).
        init_lambda: :math:`\\lambda_0`, the multiplier of every fresh inner run and the PID's
            offset (>= 0).
        normalize_grads: divide each gradient by its global RMS before the step.
        eps: added to the RMS.

    State keys (batch size ``[]``): ``("meta_state", "integral")`` :math:`I_k` and
    ``("meta_state", "prev_violation")`` :math:`e_{k-1}`, both scalars.

    Examples:
        >>> opt = PIDMetaOptimizer(init_KP=1.0, init_KI=0.5, init_KD=0.25, init_etaR=0.1,
        ...                        init_etaC=0.2, init_lambda=0.0, normalize_grads=False)
        >>> theta = TensorDict(w=torch.tensor([1.0, -1.0]))
        >>> g_r = TensorDict(w=torch.tensor([1.0, 0.0]))
        >>> g_c = TensorDict(w=torch.tensor([0.0, 1.0]))
        >>> e = torch.tensor(2.0)  # I_1 = 2, lambda_1 = 1 * 2 + 0.5 * 2 + 0.25 * (2 - 0) = 3.5
        >>> theta1, lam1, s1 = opt.step(theta, g_r, g_c, opt.init_multiplier(theta), e,
        ...                             opt.init_state(theta))
        >>> lam1.item(), [round(w, 5) for w in theta1["w"].tolist()]  # [1 + 0.1, -1 - 0.2 * 3.5]
        (3.5, [1.1, -1.7])
    """

    def __init__(
        self,
        init_KP: float = 0.08,
        init_KI: float = 0.015,
        init_KD: float = 0.007,
        init_etaR: float = 1e-3,
        init_etaC: float = 1e-3,
        init_lambda: float = 0.0,
        *,
        normalize_grads: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(init_lambda=init_lambda)
        inits = dict(KP=init_KP, KI=init_KI, KD=init_KD, etaR=init_etaR, etaC=init_etaC)
        for name, value in inits.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"init_{name} must be a finite number > 0 (it is log-parameterised), "
                    f"got {value}"
                )
            self.register_parameter(f"log_{name}", nn.Parameter(torch.tensor(math.log(value))))
        self.normalize_grads = normalize_grads
        self.eps = float(eps)

    def gains(self) -> dict[str, Tensor]:
        """The positive meta-parameters ``{"KP", "KI", "KD", "etaR", "etaC"}`` (``exp`` of the raw
        log-parameters, differentiable)."""
        return {name: getattr(self, f"log_{name}").exp() for name in PID_GAINS}

    def meta_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {name: [getattr(self, f"log_{name}")] for name in PID_GAINS}

    def init_state(self, params: TensorDictBase) -> TensorDict:
        lam0 = self.init_multiplier(params)
        return TensorDict(
            {"integral": torch.zeros_like(lam0), "prev_violation": torch.zeros_like(lam0)},
            batch_size=[],
        )

    def _normalise(self, grads: TensorDictBase) -> TensorDictBase:
        if not self.normalize_grads:
            return grads
        scale = global_rms(grads) + self.eps
        return grads.apply(lambda g: g / scale)

    def _step(self, inputs: _StepInputs) -> tuple[TensorDict, Tensor, TensorDict]:
        params, grad_reward, grad_cost, _, violation, state = inputs  # lambda_k: not used
        k = {name: g.to(violation.dtype) for name, g in self.gains().items()}
        integral = (state["integral"] + violation).clamp_min(0.0)
        pid = (
            self.init_lambda
            + k["KP"] * violation
            + k["KI"] * integral
            + k["KD"] * (violation - state["prev_violation"])
        )
        lam = pid.clamp_min(0.0)
        g_r, g_c = self._normalise(grad_reward), self._normalise(grad_cost)
        new_params = params.apply(
            lambda p, gr, gc: p + k["etaR"] * gr - k["etaC"] * lam * gc, g_r, g_c
        )
        new_state = TensorDict({"integral": integral, "prev_violation": violation}, batch_size=[])
        return new_params, lam, new_state
