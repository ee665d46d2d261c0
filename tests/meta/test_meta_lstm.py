"""LSTMMetaOptimizer and its features: exact preprocessing, LSTM math, size independence, pure state."""

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from cmo_rl.meta.features import (
    constraint_features,
    coordinate_features,
    preprocess_gradient,
    squash,
)
from cmo_rl.meta.functional import flatten_params, params_of
from cmo_rl.meta.lstm import CoordinatewiseLSTM, LSTMMetaOptimizer


def test_preprocess_gradient_hand_values():
    k = 10.0
    g = torch.tensor(
        [1.0, -math.exp(-3.0), math.exp(20.0), 2e-5, -1e-6, 0.0, 1e-4], dtype=torch.float64
    )
    out = preprocess_gradient(g, k)
    expected = torch.tensor(
        [
            [0.0, 1.0],
            [-0.3, -1.0],
            [1.0, 1.0],  # log|g|/k = 2 clipped to 1
            [-1.0, 2e-5 * math.exp(k)],  # 2e-5 < e^-10 = 4.54e-5: the small branch
            [-1.0, -1e-6 * math.exp(k)],
            [-1.0, 0.0],
            [math.log(1e-4) / k, 1.0],  # 1e-4 > e^-10: the log branch
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(out, expected, atol=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        preprocess_gradient(g, 0.0)


def test_preprocess_gradient_is_finite_and_differentiable_at_zero():
    g = torch.zeros(3, requires_grad=True)
    out = preprocess_gradient(g)
    (d,) = torch.autograd.grad(out[:, 1].sum(), g)
    assert torch.isfinite(out).all() and torch.allclose(d, torch.full((3,), math.exp(10.0)))


def test_coordinate_and_constraint_features():
    theta = torch.tensor([0.5, -2.0])
    g_r, g_c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    lam, e = torch.tensor(2.0), torch.tensor(-0.5)
    f = coordinate_features(theta, g_r, g_c, lam, e)
    assert f.shape == (2, 9)
    assert torch.allclose(f[:, 0:2], preprocess_gradient(g_r))
    assert torch.allclose(f[:, 2:4], preprocess_gradient(g_c))
    assert torch.allclose(f[:, 4:6], preprocess_gradient(torch.tensor([1.0, -2.0])))
    assert torch.allclose(f[:, 6], torch.asinh(theta))
    assert torch.allclose(f[:, 7], torch.asinh(lam).expand(2))
    assert torch.allclose(f[:, 8], torch.asinh(e).expand(2))
    c = constraint_features(
        torch.tensor(1.0), torch.tensor(3.0), torch.tensor(0.5), torch.tensor(2.0)
    )
    assert torch.allclose(c, squash(torch.tensor([1.0, -2.0, 0.5, 2.0])))
    with pytest.raises(ValueError, match="flat vectors"):
        coordinate_features(theta, g_r[:1], g_c, lam, e)


def test_coordinatewise_lstm_matches_torch_lstm():
    torch.manual_seed(0)
    ours = CoordinatewiseLSTM(5, 7, layers=2).double()
    ref = nn.LSTM(5, 7, num_layers=2).double()
    with torch.no_grad():
        for layer in range(2):
            ours.input_maps[layer].weight.copy_(getattr(ref, f"weight_ih_l{layer}"))
            ours.hidden_maps[layer].weight.copy_(getattr(ref, f"weight_hh_l{layer}"))
            ours.input_maps[layer].bias.copy_(
                getattr(ref, f"bias_ih_l{layer}") + getattr(ref, f"bias_hh_l{layer}")
            )
    x = torch.randn(11, 5, dtype=torch.float64)
    h0, c0 = torch.randn(2, 11, 7, dtype=torch.float64), torch.randn(2, 11, 7, dtype=torch.float64)
    out, h, c = ours(x, h0, c0)
    out_ref, (h_ref, c_ref) = ref(x.unsqueeze(0), (h0, c0))
    assert torch.allclose(out, out_ref[0], atol=1e-12)
    assert torch.allclose(h, h_ref, atol=1e-12) and torch.allclose(c, c_ref, atol=1e-12)


def _step_inputs(params, opt, e=0.5):
    g_r = params.apply(lambda p: torch.randn_like(p))
    g_c = params.apply(lambda p: torch.randn_like(p))
    return params, g_r, g_c, opt.init_multiplier(params), torch.tensor(e), opt.init_state(params)


def test_size_does_not_depend_on_the_policy():
    torch.manual_seed(0)
    opt = LSTMMetaOptimizer(hidden_size=6, lstm_layers=2)
    n_meta = sum(p.numel() for p in opt.parameters())
    small = params_of(nn.Linear(2, 1))
    big = params_of(nn.Sequential(nn.Linear(30, 64), nn.Tanh(), nn.Linear(64, 8)))
    for params in (small, big):
        new, lam, state = opt.step(*_step_inputs(params, opt))
        assert flatten_params(new).shape == flatten_params(params).shape
        assert state["h"].shape == (2, flatten_params(params).numel(), 6)
    assert sum(p.numel() for p in opt.parameters()) == n_meta
    # a fixed count: 2-layer LSTM on 9 features + theta head + lambda MLP (4 -> 6 -> 1)
    lstm = (9 * 24 + 24 + 6 * 24) + (6 * 24 + 24 + 6 * 24)
    assert n_meta == lstm + (6 + 1) + (4 * 6 + 6 + 6 + 1)


def test_recurrent_state_lives_only_in_the_tensordict():
    torch.manual_seed(1)
    opt = LSTMMetaOptimizer(hidden_size=5, lstm_layers=1)
    assert list(opt.buffers()) == []
    inputs = _step_inputs(params_of(nn.Linear(3, 2)), opt)
    state_before = inputs[-1].clone()
    out1 = opt.step(*inputs)
    out2 = opt.step(*inputs)  # same inputs -> same outputs: nothing hidden on the module
    for a, b in zip(out1[0].values(True, True), out2[0].values(True, True)):
        assert torch.equal(a, b)
    assert torch.equal(out1[1], out2[1])
    assert (inputs[-1] == state_before).all()  # input state untouched
    assert not torch.equal(out1[2]["h"], state_before["h"])  # the new state moved
    assert set(out1[2].keys()) == {"h", "c", "integral", "prev_violation"}
    # the TensorDict interface writes the same things
    td = TensorDict(
        params=inputs[0],
        grad_reward=inputs[1],
        grad_cost=inputs[2],
        lagrange_multiplier=inputs[3],
        violation=inputs[4],
        meta_state=inputs[5],
    )
    opt(td)
    assert torch.equal(td["meta_state", "c"], out1[2]["c"])
    assert torch.equal(td["params", "weight"], out1[0]["weight"])


def test_output_scales_and_lambda_projection():
    torch.manual_seed(2)
    opt = LSTMMetaOptimizer(hidden_size=4, lstm_layers=1, alpha_theta=0.01, alpha_lambda=0.1)
    opt2 = copy.deepcopy(opt)
    opt2.alpha_theta, opt2.alpha_lambda = 0.03, 0.3
    inputs = _step_inputs(params_of(nn.Linear(3, 2)), opt)
    (new1, lam1, _), (new3, lam3, _) = opt.step(*inputs), opt2.step(*inputs)
    d1 = flatten_params(new1) - flatten_params(inputs[0])
    d3 = flatten_params(new3) - flatten_params(inputs[0])
    assert torch.allclose(d3, 3 * d1, atol=1e-7) and d1.abs().max() > 0
    lam0 = inputs[3]
    assert (lam3 - lam0).item() == pytest.approx(3 * (lam1 - lam0).item(), abs=1e-7)
    with torch.no_grad():  # a head that always says "decrease" is projected onto lambda >= 0
        opt.lambda_head[-1].bias.fill_(-100.0)
    assert opt.step(*inputs)[1].item() == 0.0


def test_rejects_state_of_another_policy_and_bad_scales():
    opt = LSTMMetaOptimizer(hidden_size=4, lstm_layers=1)
    inputs = list(_step_inputs(params_of(nn.Linear(3, 2)), opt))
    inputs[-1] = opt.init_state(params_of(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="coordinates"):
        opt.step(*inputs)
    with pytest.raises(ValueError, match="alpha_theta"):
        LSTMMetaOptimizer(alpha_theta=0.0)
