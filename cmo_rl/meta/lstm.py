"""LSTM meta-optimizer: a coordinatewise learned update rule plus a learned multiplier head.

Every policy coordinate ``i`` is one row of a batch fed to the *same* stacked LSTM (weights
shared across coordinates, Andrychowicz et al., 2016), so the meta-optimizer's size does not
depend on the policy's size and one learned optimizer serves every robot:

.. math::

    x_{k,i} &= \\phi(g_{R,i}, g_{C,i}, \\theta_{k,i}, \\lambda_{k+1}, e_k)
        \\quad (\\texttt{features.coordinate\\_features}) \\\\
    (o_{k,i}, h_{k+1,i}, c_{k+1,i}) &= \\mathrm{LSTM}(x_{k,i}; h_{k,i}, c_{k,i}) \\\\
    \\theta_{k+1,i} &= \\theta_{k,i} + \\alpha_\\theta\\, w_\\theta^\\top o_{k,i}

and the multiplier follows a small MLP on constraint features
(``features.constraint_features``), projected onto :math:`\\lambda \\ge 0`:

.. math::

    I_{k+1} = \\max(0, I_k + e_k), \\qquad
    \\lambda_{k+1} = \\max\\big(0,\\ \\lambda_k + \\alpha_\\lambda\\,
        \\mathrm{MLP}(e_k, e_k - e_{k-1}, \\lambda_k, I_{k+1})\\big)

``alpha_theta`` is the output scale of the policy-parameter steps (a coordinate moves at most
about ``alpha_theta * |w_theta|_1`` per step) and ``alpha_lambda`` the output scale of the
multiplier steps. The theta step sees :math:`\\lambda_{k+1}`, so the multiplier head also
shapes the policy update of the same round.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from cmo_rl.meta.features import (
    CONSTRAINT_FEATURES,
    COORDINATE_FEATURES,
    constraint_features,
    coordinate_features,
)
from cmo_rl.meta.functional import (
    MetaOptimizer,
    _StepInputs,
    flatten_params,
    num_coordinates,
    unflatten_params,
)

__all__ = ["CoordinatewiseLSTM", "LSTMMetaOptimizer"]


class CoordinatewiseLSTM(nn.Module):
    """A stack of LSTM cells applied to a batch of coordinates ``[n, input_size]``.

    Written out with ``nn.Linear`` gates (not ``nn.LSTM``) so that it is twice differentiable on
    every backend (cuDNN's fused RNN has no double backward). State ``h, c``: ``[layers, n,
    hidden]``. Forget-gate biases start at 1.

    Examples:
        >>> cell = CoordinatewiseLSTM(3, 5, layers=2)
        >>> out, h, c = cell(torch.zeros(7, 3), torch.zeros(2, 7, 5), torch.zeros(2, 7, 5))
        >>> out.shape, h.shape
        (torch.Size([7, 5]), torch.Size([2, 7, 5]))
    """

    def __init__(self, input_size: int, hidden_size: int, layers: int = 2) -> None:
        super().__init__()
        if layers < 1 or hidden_size < 1:
            raise ValueError(f"need layers >= 1 and hidden_size >= 1, got {layers}, {hidden_size}")
        self.hidden_size = hidden_size
        self.layers = layers
        self.input_maps = nn.ModuleList(
            nn.Linear(input_size if i == 0 else hidden_size, 4 * hidden_size) for i in range(layers)
        )
        self.hidden_maps = nn.ModuleList(
            nn.Linear(hidden_size, 4 * hidden_size, bias=False) for _ in range(layers)
        )
        with torch.no_grad():
            for lin in self.input_maps:
                lin.bias[hidden_size : 2 * hidden_size].fill_(1.0)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hs, cs = [], []
        for layer in range(self.layers):
            gates = self.input_maps[layer](x) + self.hidden_maps[layer](h[layer])
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return x, torch.stack(hs), torch.stack(cs)


class LSTMMetaOptimizer(MetaOptimizer):
    """Coordinatewise LSTM update of ``theta`` and an MLP update of ``lambda`` (math above).

    Args:
        hidden_size: LSTM hidden units per coordinate (also the multiplier MLP's width).
        lstm_layers: stacked LSTM layers.
        alpha_theta: output scale of the policy-parameter steps.
        alpha_lambda: output scale of the multiplier steps.
        init_lambda: :math:`\\lambda_0` of every fresh inner run (>= 0).
        grad_clip_k: ``k`` of the gradient preprocessing.

    State keys (batch size ``[]``): ``("meta_state", "h")``, ``("meta_state", "c")``
    ``[lstm_layers, n, hidden_size]``; ``("meta_state", "integral")`` and
    ``("meta_state", "prev_violation")`` scalars.

    Examples:
        >>> opt = LSTMMetaOptimizer(hidden_size=8, lstm_layers=2)
        >>> theta = TensorDict(w=torch.zeros(3, 2), b=torch.zeros(3))
        >>> state = opt.init_state(theta)
        >>> state["h"].shape
        torch.Size([2, 9, 8])
        >>> ones = theta.apply(torch.ones_like)
        >>> theta1, lam1, state1 = opt.step(theta, ones, ones, opt.init_multiplier(theta),
        ...                                 torch.tensor(0.5), state)
        >>> theta1["w"].shape, bool(lam1 >= 0), state1["c"].shape
        (torch.Size([3, 2]), True, torch.Size([2, 9, 8]))
    """

    def __init__(
        self,
        hidden_size: int = 20,
        lstm_layers: int = 2,
        alpha_theta: float = 0.01,
        alpha_lambda: float = 0.1,
        init_lambda: float = 0.0,
        *,
        grad_clip_k: float = 10.0,
    ) -> None:
        super().__init__(init_lambda=init_lambda)
        if alpha_theta <= 0 or alpha_lambda <= 0:
            raise ValueError(
                f"alpha_theta and alpha_lambda must be > 0, got {alpha_theta}, {alpha_lambda}"
            )
        self.hidden_size = hidden_size
        self.lstm_layers = lstm_layers
        self.alpha_theta = float(alpha_theta)
        self.alpha_lambda = float(alpha_lambda)
        self.grad_clip_k = float(grad_clip_k)
        self.lstm = CoordinatewiseLSTM(COORDINATE_FEATURES, hidden_size, lstm_layers)
        self.theta_head = nn.Linear(hidden_size, 1)
        self.lambda_head = nn.Sequential(
            nn.Linear(CONSTRAINT_FEATURES, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1)
        )

    def meta_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "lstm": list(self.lstm.parameters()),
            "theta_head": list(self.theta_head.parameters()),
            "lambda_head": list(self.lambda_head.parameters()),
        }

    def init_state(self, params: TensorDictBase) -> TensorDict:
        lam0 = self.init_multiplier(params)
        shape = (self.lstm_layers, num_coordinates(params), self.hidden_size)
        zeros = torch.zeros(shape, dtype=lam0.dtype, device=lam0.device)
        return TensorDict(
            {
                "h": zeros,
                "c": zeros.clone(),
                "integral": torch.zeros_like(lam0),
                "prev_violation": torch.zeros_like(lam0),
            },
            batch_size=[],
        )

    def _step(self, inputs: _StepInputs) -> tuple[TensorDict, Tensor, TensorDict]:
        params, grad_reward, grad_cost, lagrange_multiplier, violation, state = inputs
        if lagrange_multiplier.dim() != 0:
            raise ValueError(
                "lagrange_multiplier must be a scalar tensor, got shape "
                f"{tuple(lagrange_multiplier.shape)}"
            )
        dtype = self.theta_head.weight.dtype
        theta = flatten_params(params)
        n = theta.shape[0]
        if state["h"].shape[1] != n:
            raise ValueError(
                f"meta_state has {state['h'].shape[1]} coordinates but params have {n}; "
                "build the state with init_state(params)"
            )
        # multiplier: I_{k+1}, then lambda_{k+1} from the constraint features
        integral = (state["integral"] + violation).clamp_min(0.0)
        cfeat = constraint_features(
            violation, state["prev_violation"], lagrange_multiplier, integral
        ).to(dtype)
        lam_step = self.alpha_lambda * self.lambda_head(cfeat).squeeze(-1)
        lam = (lagrange_multiplier + lam_step.to(lagrange_multiplier.dtype)).clamp_min(0.0)
        # policy: one coordinatewise LSTM step on the per-coordinate features
        x = coordinate_features(
            theta,
            flatten_params(grad_reward),
            flatten_params(grad_cost),
            lam,
            violation,
            self.grad_clip_k,
        ).to(dtype)
        out, h, c = self.lstm(x, state["h"].to(dtype), state["c"].to(dtype))
        step = self.alpha_theta * self.theta_head(out).squeeze(-1)
        new_params = unflatten_params(theta + step.to(theta.dtype), params)
        new_state = TensorDict(
            {
                "h": h.to(state["h"].dtype),
                "c": c.to(state["c"].dtype),
                "integral": integral,
                "prev_violation": violation,
            },
            batch_size=[],
        )
        return new_params, lam, new_state
