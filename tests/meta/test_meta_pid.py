"""PIDMetaOptimizer: the exact update law, hand-computed."""

import math

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.meta.pid import PIDMetaOptimizer

GAINS = dict(init_KP=0.5, init_KI=0.25, init_KD=0.125, init_etaR=0.1, init_etaC=0.2)


def _theta():
    return TensorDict(
        a=torch.tensor([1.0, -1.0], dtype=torch.float64),
        b=torch.tensor([[2.0]], dtype=torch.float64),
    )


def _grads():
    g_r = TensorDict(
        a=torch.tensor([3.0, 0.0], dtype=torch.float64),
        b=torch.tensor([[4.0]], dtype=torch.float64),
    )
    g_c = TensorDict(
        a=torch.tensor([0.0, 1.0], dtype=torch.float64),
        b=torch.tensor([[-1.0]], dtype=torch.float64),
    )
    return g_r, g_c


def test_three_steps_by_hand_with_normalised_gradients():
    opt = PIDMetaOptimizer(**GAINS, init_lambda=0.1).double()
    theta, (g_r, g_c) = _theta(), _grads()
    lam, state = opt.init_multiplier(theta), opt.init_state(theta)
    assert lam.item() == 0.1 and lam.dtype == torch.float64
    rms_r, rms_c = math.sqrt((9 + 0 + 16) / 3), math.sqrt((0 + 1 + 1) / 3)
    a, b = [1.0, -1.0], 2.0
    expected_lams = []
    prev_e, integral = 0.0, 0.0
    for e in (0.4, -1.0, 0.2):
        theta, lam, state = opt.step(
            theta, g_r, g_c, lam, torch.tensor(e, dtype=torch.float64), state
        )
        # hand: I = max(0, I + e); lambda = max(0, 0.1 + KP e + KI I + KD (e - e_prev))
        integral = max(0.0, integral + e)
        lam_hand = max(0.0, 0.1 + 0.5 * e + 0.25 * integral + 0.125 * (e - prev_e))
        prev_e = e
        expected_lams.append(lam_hand)
        a = [
            a[0] + 0.1 * 3 / rms_r - 0.2 * lam_hand * 0 / rms_c,
            a[1] + 0.1 * 0 / rms_r - 0.2 * lam_hand * 1 / rms_c,
        ]
        b = b + 0.1 * 4 / rms_r - 0.2 * lam_hand * (-1) / rms_c
        assert lam.item() == pytest.approx(lam_hand, abs=1e-7)
        assert state["integral"].item() == pytest.approx(integral, abs=1e-7)
        assert state["prev_violation"].item() == pytest.approx(e)
        assert theta["a"].tolist() == pytest.approx(a, abs=1e-7)
        assert theta["b"].item() == pytest.approx(b, abs=1e-7)
    # the hand values: 0.45, clipped to 0 (I back to 0, big negative D), 0.4
    assert expected_lams == pytest.approx([0.45, 0.0, 0.4])


def test_unnormalised_step_and_ignores_lambda_input():
    opt = PIDMetaOptimizer(**GAINS, init_lambda=0.0, normalize_grads=False).double()
    theta, (g_r, g_c) = _theta(), _grads()
    e = torch.tensor(1.0, dtype=torch.float64)
    new, lam, _ = opt.step(
        theta, g_r, g_c, torch.tensor(7.0, dtype=torch.float64), e, opt.init_state(theta)
    )
    lam_hand = 0.5 + 0.25 + 0.125  # positional PID: lambda_k itself is not an input
    assert lam.item() == pytest.approx(lam_hand)
    assert new["a"].tolist() == pytest.approx([1 + 0.1 * 3, -1 - 0.2 * lam_hand])
    assert new["b"].item() == pytest.approx(2 + 0.4 + 0.2 * lam_hand)


def test_lambda_gradient_wrt_log_gains():
    opt = PIDMetaOptimizer(**GAINS, init_lambda=0.1).double()
    theta, (g_r, g_c) = _theta(), _grads()
    e = torch.tensor(0.4, dtype=torch.float64)
    _, lam, _ = opt.step(theta, g_r, g_c, opt.init_multiplier(theta), e, opt.init_state(theta))
    d_kp, d_ki, d_kd = torch.autograd.grad(lam, [opt.log_KP, opt.log_KI, opt.log_KD])
    # d lambda / d log K = K * (its term's factor)
    assert d_kp.item() == pytest.approx(0.5 * 0.4)
    assert d_ki.item() == pytest.approx(0.25 * 0.4)
    assert d_kd.item() == pytest.approx(0.125 * 0.4)


def test_forward_tensordict_interface_is_out_of_place():
    opt = PIDMetaOptimizer(**GAINS, init_lambda=0.1).double()
    theta, (g_r, g_c) = _theta(), _grads()
    before = theta["a"].clone()
    td = TensorDict(
        params=theta,
        grad_reward=g_r,
        grad_cost=g_c,
        lagrange_multiplier=opt.init_multiplier(theta),
        violation=torch.tensor(0.4, dtype=torch.float64),
        meta_state=opt.init_state(theta),
    )
    a_in = td["params", "a"]
    out = opt(td)
    new, lam, state = opt.step(
        theta, g_r, g_c, opt.init_multiplier(theta), td["violation"], opt.init_state(theta)
    )
    assert torch.equal(out["params", "a"], new["a"])
    assert out["lagrange_multiplier"].item() == pytest.approx(0.45)
    assert out["meta_state", "integral"].item() == pytest.approx(0.4)
    assert torch.equal(a_in, before)  # the input tensor was not modified in place
    assert set(opt.meta_parameter_groups()) == {"KP", "KI", "KD", "etaR", "etaC"}
    assert list(opt.buffers()) == []  # no hidden state on the module


def test_gains_are_positive_and_initialised():
    opt = PIDMetaOptimizer(**GAINS)
    gains = opt.gains()
    for name, value in GAINS.items():
        assert gains[name[len("init_") :]].item() == pytest.approx(value, rel=1e-6)
    with torch.no_grad():
        opt.log_KI.fill_(-50.0)
    assert opt.gains()["KI"].item() > 0


@pytest.mark.parametrize(
    "bad", [dict(init_KP=0.0), dict(init_etaC=-1.0), dict(init_KD=float("nan"))]
)
def test_rejects_non_positive_init(bad):
    with pytest.raises(ValueError, match="init_"):
        PIDMetaOptimizer(**{**GAINS, **bad})


def test_rejects_negative_init_lambda_and_vector_violation():
    with pytest.raises(ValueError, match="init_lambda"):
        PIDMetaOptimizer(**GAINS, init_lambda=-0.1)
    opt = PIDMetaOptimizer(**GAINS).double()
    theta, (g_r, g_c) = _theta(), _grads()
    with pytest.raises(ValueError, match="scalar"):
        opt.step(theta, g_r, g_c, opt.init_multiplier(theta), torch.zeros(2), opt.init_state(theta))
