"""Lagrange and PID multipliers against hand-computed updates and OmniSafe's reference rule."""

import copy
import random
import warnings
from collections import deque

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.objectives import LagrangeMultiplier, PIDLagrangian, pid_lagrangian_step


def _values(mult, costs):
    return [round(float(mult.update(c)), 7) for c in costs]


# ------------------------------------------------------------------------ LagrangeMultiplier
def test_sgd_updates_by_hand():
    lam = LagrangeMultiplier(cost_limit=10.0, init_lambda=0.5, lr=0.1, optimizer="sgd")
    # 0.5 + 0.1 * 5 = 1.0; 1.0 + 0.1 * (2 - 10) = 0.2; 0.2 + 0.1 * (0 - 10) -> 0 (projected)
    assert _values(lam, [15.0, 2.0, 0.0]) == pytest.approx([1.0, 0.2, 0.0], abs=1e-6)
    assert lam.value.item() == 0.0


def test_adam_updates_by_hand():
    lam = LagrangeMultiplier(cost_limit=25.0, init_lambda=0.001, lr=0.035)  # OmniSafe defaults
    # grads of -lambda (Jc - d): -5, -5, +5. Adam (b1=0.9, b2=0.999):
    # t=1: m_hat = -5, v_hat = 25 -> step +0.035 -> 0.036
    # t=2: m = -0.95, v = 0.049975 -> m_hat = -5, v_hat = 25 -> 0.071
    # t=3: m = -0.355, m_hat = -0.355 / 0.271 = -1.3099631, v_hat = 25
    #      -> step 0.035 * 1.3099631 / 5 = 0.0091697 -> 0.0801697
    assert _values(lam, [30.0, 30.0, 20.0]) == pytest.approx([0.036, 0.071, 0.0801697], abs=1e-6)


def test_upper_bound_and_projection():
    lam = LagrangeMultiplier(
        cost_limit=0.0, init_lambda=0.5, lr=0.1, upper_bound=1.0, optimizer="SGD"
    )
    assert _values(lam, [100.0]) == [1.0]
    lam = LagrangeMultiplier(cost_limit=0.0, init_lambda=-3.0, lr=0.1, optimizer="sgd")
    assert lam.value.item() == 0.0  # a negative init is clamped, as in OmniSafe


def test_update_accepts_tensors_and_averages_episode_costs():
    lam = LagrangeMultiplier(cost_limit=10.0, init_lambda=0.5, lr=0.1, optimizer="sgd")
    out = lam.update(torch.tensor([[14.0], [16.0]]))  # mean 15
    assert out.item() == pytest.approx(1.0) and not out.requires_grad
    with pytest.raises(ValueError, match="finite"):
        lam.update(float("nan"))
    with pytest.raises(ValueError, match="pass the empty selection"):  # the mean of nothing
        lam.update(torch.tensor([]).mean())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_lagrange_skips_the_step_when_no_episode_finished(optimizer):
    lam = LagrangeMultiplier(cost_limit=25.0, init_lambda=0.001, lr=0.035, optimizer=optimizer)
    done = torch.zeros(4, 1, dtype=torch.bool)  # a batch in which no episode finished
    episode_cost = torch.full((4, 1), 99.0)  # running sums, not episode totals
    before = copy.deepcopy(lam.state_dict())
    for empty in (episode_cost[done], torch.tensor([]), []):
        out = lam.update(empty)
        assert out.item() == pytest.approx(0.001) and not out.requires_grad
    after = lam.state_dict()
    assert after.keys() == before.keys()
    assert after["multiplier"].item() == before["multiplier"].item()
    assert after["_extra_state"]["optimizer"]["state"] == {}  # Adam: no step counted
    # the next measurement is the first step: SGD 0.001 + 0.035 * 5; Adam +0.035 (t = 1)
    assert lam.update(30.0).item() == pytest.approx(0.176 if optimizer == "sgd" else 0.036)


def test_forward_writes_lagrange_multiplier():
    lam = LagrangeMultiplier(cost_limit=1.0, init_lambda=0.25)
    td = lam(TensorDict(batch_size=[4, 3]))
    assert td["lagrange_multiplier"].shape == (4, 3, 1)
    assert bool((td["lagrange_multiplier"] == 0.25).all())
    assert lam(TensorDict())["lagrange_multiplier"].shape == ()
    assert lam.cost_limit.item() == 1.0


def test_lagrange_state_dict_round_trip_resumes_adam_exactly():
    lam = LagrangeMultiplier(cost_limit=25.0)
    _values(lam, [30.0, 31.0])
    state = lam.state_dict()
    assert "_extra_state" in state
    clone = LagrangeMultiplier(cost_limit=0.0, init_lambda=0.9)  # different values, same structure
    clone.load_state_dict(state)
    assert clone.value.item() == lam.value.item() and clone.cost_limit.item() == 25.0
    # the two continue identically, and do not share optimizer state
    a = _values(lam, [20.0, 40.0])
    b = _values(clone, [20.0, 40.0])
    assert a == b
    fresh = LagrangeMultiplier(cost_limit=25.0)
    assert _values(fresh, [30.0, 31.0, 20.0, 40.0])[2:] == a


def test_lagrange_moves_with_its_optimizer_state():
    lam = LagrangeMultiplier(cost_limit=25.0)
    _values(lam, [30.0, 30.0])
    lam = lam.double()
    assert lam.value.dtype == torch.float64
    assert _values(lam, [20.0]) == pytest.approx([0.0801697], abs=1e-6)  # as in the Adam test
    for state in lam._optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_multipliers_on_cuda():
    lam = LagrangeMultiplier(cost_limit=25.0)
    _values(lam, [30.0])
    lam = lam.to("cuda")
    assert _values(lam, [30.0, 20.0]) == pytest.approx([0.071, 0.0801697], abs=1e-6)
    pid = PIDLagrangian(
        cost_limit=10.0,
        kp=0.1,
        ki=0.01,
        kd=0.01,
        d_delay=2,
        pid_delta_p_ema_alpha=0.9,
        pid_delta_d_ema_alpha=0.5,
        device="cuda",
    )
    assert _values(pid, [20.0, torch.tensor(30.0)]) == pytest.approx([0.301, 0.791], abs=1e-6)
    assert pid(TensorDict(batch_size=[2], device="cuda"))["lagrange_multiplier"].is_cuda


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "adamish"}, "unknown optimizer"),
        ({"upper_bound": -1.0}, "upper_bound"),
    ],
)
def test_lagrange_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LagrangeMultiplier(cost_limit=1.0, **kwargs)


# ----------------------------------------------------------------------------- PIDLagrangian
def omnisafe_pid_reference(
    costs, cost_limit, kp, ki, kd, d_delay, a_p, a_d, sum_norm, diff_norm, penalty_max, init
):
    """OmniSafe's PIDLagrangian.pid_update, transcribed with Python floats and a deque."""
    pid_i, delta_p, cost_d, out = init, 0.0, 0.0, []
    cost_ds = deque([0.0], maxlen=d_delay)
    for jc in costs:
        delta = jc - cost_limit
        pid_i = max(0.0, pid_i + delta * ki)
        if diff_norm:
            pid_i = max(0.0, min(1.0, pid_i))
        delta_p = a_p * delta_p + (1 - a_p) * delta
        cost_d = a_d * cost_d + (1 - a_d) * jc
        pid_d = max(0.0, cost_d - cost_ds[0])
        penalty = max(0.0, kp * delta_p + pid_i + kd * pid_d)
        if diff_norm:
            penalty = min(1.0, penalty)
        if not (diff_norm or sum_norm):
            penalty = min(penalty, penalty_max)
        cost_ds.append(cost_d)
        out.append(penalty)
    return out


def test_pid_updates_by_hand():
    pid = PIDLagrangian(
        cost_limit=10.0,
        kp=0.1,
        ki=0.01,
        kd=0.01,
        d_delay=2,
        pid_delta_p_ema_alpha=0.9,
        pid_delta_d_ema_alpha=0.5,
        init_lambda=0.001,
    )
    assert pid.value.item() == 0.0  # OmniSafe: 0 until the first update
    # Jc=20: I=0.101, P=1.0,  C=10,   D=max(0, 10 - 0)     -> 0.1*1.0  + 0.101 + 0.01*10  = 0.301
    # Jc=30: I=0.301, P=2.9,  C=20,   D=max(0, 20 - 0)     -> 0.29     + 0.301 + 0.2      = 0.791
    # Jc=5:  I=0.251, P=2.11, C=12.5, D=max(0, 12.5 - 10)  -> 0.211    + 0.251 + 0.025    = 0.487
    # Jc=10: I=0.251, P=1.899,C=11.25,D=max(0, 11.25 - 20) -> 0.1899   + 0.251            = 0.4409
    # Jc=0:  I=0.151, P=0.7091,C=5.625,D=0                 -> 0.07091  + 0.151            = 0.22191
    assert _values(pid, [20.0, 30.0, 5.0, 10.0, 0.0]) == pytest.approx(
        [0.301, 0.791, 0.487, 0.4409, 0.22191], abs=1e-6
    )
    assert pid.integral.item() == pytest.approx(0.151, abs=1e-6)
    assert pid.cost_d.item() == pytest.approx(5.625)
    # ring buffer after 5 writes of C (slots 0,1): [C5, C4] = [5.625, 11.25], oldest at slot 1
    torch.testing.assert_close(pid.cost_d_history, torch.tensor([5.625, 11.25]))
    assert pid.history_index.item() == 1


def test_pid_clamping():
    # the integral never goes below 0 and the penalty is projected onto [0, inf)
    pid = PIDLagrangian(
        cost_limit=10.0,
        kp=1.0,
        ki=0.1,
        kd=0.0,
        d_delay=1,
        pid_delta_p_ema_alpha=0.0,
        pid_delta_d_ema_alpha=0.0,
    )
    assert _values(pid, [0.0, 0.0]) == [0.0, 0.0]
    assert pid.integral.item() == 0.0
    # penalty_max applies only with sum_norm=False and diff_norm=False
    capped = PIDLagrangian(
        cost_limit=0.0,
        kp=1.0,
        ki=0.0,
        kd=0.0,
        pid_delta_p_ema_alpha=0.0,
        sum_norm=False,
        penalty_max=5.0,
        init_lambda=0.0,
    )
    assert _values(capped, [50.0]) == [5.0]
    uncapped = PIDLagrangian(
        cost_limit=0.0,
        kp=1.0,
        ki=0.0,
        kd=0.0,
        pid_delta_p_ema_alpha=0.0,
        sum_norm=True,
        penalty_max=5.0,
        init_lambda=0.0,
    )
    assert _values(uncapped, [50.0]) == [50.0]
    # diff_norm clips both the integral and the penalty to [0, 1]
    normed = PIDLagrangian(
        cost_limit=0.0, kp=1.0, ki=1.0, kd=0.0, pid_delta_p_ema_alpha=0.0, diff_norm=True
    )
    assert _values(normed, [50.0]) == [1.0]
    assert normed.integral.item() == 1.0


@pytest.mark.parametrize("d_delay", [1, 3, 10])
@pytest.mark.parametrize("sum_norm, diff_norm", [(True, False), (False, False), (False, True)])
def test_pid_matches_omnisafe_reference_on_random_sequences(d_delay, sum_norm, diff_norm):
    rng = random.Random(d_delay)
    costs = [rng.uniform(0.0, 60.0) for _ in range(40)]
    cfg = dict(cost_limit=25.0, kp=0.3, ki=0.02, kd=0.05, d_delay=d_delay)
    pid = PIDLagrangian(
        **cfg,
        pid_delta_p_ema_alpha=0.9,
        pid_delta_d_ema_alpha=0.8,
        sum_norm=sum_norm,
        diff_norm=diff_norm,
        penalty_max=2.0,
        init_lambda=0.01,
    )
    ref = omnisafe_pid_reference(
        costs, 25.0, 0.3, 0.02, 0.05, d_delay, 0.9, 0.8, sum_norm, diff_norm, 2.0, 0.01
    )
    assert _values(pid, costs) == pytest.approx(ref, abs=1e-5)


def test_pid_skips_the_step_when_no_episode_finished():
    pid = PIDLagrangian(
        cost_limit=10.0,
        kp=0.1,
        ki=0.01,
        kd=0.01,
        d_delay=2,
        pid_delta_p_ema_alpha=0.9,
        pid_delta_d_ema_alpha=0.5,
    )
    empty = torch.tensor([])
    assert pid.update(empty).item() == 0.0 and pid.history_index.item() == 0
    # the same sequence as test_pid_updates_by_hand with batches without episodes in between:
    # each empty batch leaves lambda and every piece of state as it was
    values = _values(pid, [20.0, empty, empty, 30.0, [], 5.0])
    assert values == pytest.approx([0.301, 0.301, 0.301, 0.791, 0.791, 0.487], abs=1e-6)
    assert pid.history_index.item() == 1  # three steps taken
    assert pid.integral.item() == pytest.approx(0.251, abs=1e-6)
    state = pid.state()
    same = pid.step(state, empty)  # the pure form: a copy of the state
    for key in state.keys():
        assert torch.equal(same[key], state[key])
    assert same["integral"] is not state["integral"]


def test_value_converts_to_float_without_warnings():
    lam = LagrangeMultiplier(cost_limit=10.0, init_lambda=0.5, lr=0.1, optimizer="sgd")
    pid = PIDLagrangian(
        cost_limit=10.0,
        kp=0.1,
        ki=0.01,
        kd=0.01,
        d_delay=2,
        pid_delta_p_ema_alpha=0.9,
        pid_delta_d_ema_alpha=0.5,
        learnable_gains=True,
    )
    keys = {"lam": set(lam.state_dict()), "pid": set(pid.state_dict())}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(lam.value) == 0.5
        assert float(pid.value) == 0.0
        assert [round(float(k), 6) for k in (pid.kp, pid.ki, pid.kd)] == [0.1, 0.01, 0.01]
        lam.update(15.0)
        pid.update(20.0)
        assert float(lam.value) == pytest.approx(1.0) and repr(lam)
        assert float(pid.value) == pytest.approx(0.301, abs=1e-6) and repr(pid)
    assert not lam.value.requires_grad and not pid.value.requires_grad and not pid.kp.requires_grad
    # state and the learnable parts are unchanged: the parameter, its optimizer, the gains
    assert {"lam": set(lam.state_dict()), "pid": set(pid.state_dict())} == keys
    assert keys["lam"] == {"multiplier", "cost_limit", "_extra_state"}
    assert isinstance(lam.multiplier, torch.nn.Parameter) and lam.multiplier.requires_grad
    assert [n for n, _ in lam.named_parameters()] == ["multiplier"]
    assert pid.gains.requires_grad and pid.update(20.0).requires_grad
    # value is a view: it follows later updates (clone it to keep a snapshot)
    view, snapshot = lam.value, lam.value.clone()
    lam.update(20.0)  # 1.0 + 0.1 * (20 - 10)
    assert view.item() == pytest.approx(2.0) and snapshot.item() == pytest.approx(1.0)


def test_pid_state_dict_round_trip():
    kwargs = dict(cost_limit=5.0, d_delay=3, pid_delta_p_ema_alpha=0.5)
    pid = PIDLagrangian(**kwargs)
    _values(pid, [8.0, 2.0, 9.0, 7.0])
    clone = PIDLagrangian(**kwargs)
    clone.load_state_dict(pid.state_dict())
    assert set(pid.state_dict()) >= {
        "integral",
        "delta_p",
        "cost_d",
        "multiplier",
        "cost_d_history",
        "history_index",
        "raw_gains",
        "cost_limit",
    }
    assert _values(pid, [1.0, 12.0]) == _values(clone, [1.0, 12.0])


def test_pure_step_does_not_touch_the_module_and_is_differentiable():
    pid = PIDLagrangian(
        cost_limit=10.0, d_delay=2, pid_delta_p_ema_alpha=0.9, pid_delta_d_ema_alpha=0.5
    )
    state = pid.state()
    kp = torch.tensor(0.1, requires_grad=True)
    ki = torch.tensor(0.01, requires_grad=True)
    kd = torch.tensor(0.01, requires_grad=True)
    new = pid_lagrangian_step(
        state,
        torch.tensor(20.0),
        cost_limit=10.0,
        kp=kp,
        ki=ki,
        kd=kd,
        delta_p_ema_alpha=0.9,
        delta_d_ema_alpha=0.5,
    )
    new2 = pid_lagrangian_step(
        new,
        torch.tensor(30.0),
        cost_limit=10.0,
        kp=kp,
        ki=ki,
        kd=kd,
        delta_p_ema_alpha=0.9,
        delta_d_ema_alpha=0.5,
    )
    assert new2["multiplier"].item() == pytest.approx(0.791, abs=1e-6)
    assert pid.value.item() == 0.0 and pid.integral.item() == pytest.approx(0.001)
    new2["multiplier"].backward()
    # lambda_2 = kp * P_2 + (I_0 + ki (d_1 + d_2)) + kd * D_2, P_2 = 2.9, d = 10, 20, D_2 = 20
    assert kp.grad.item() == pytest.approx(2.9, abs=1e-5)
    assert ki.grad.item() == pytest.approx(30.0, abs=1e-4)
    assert kd.grad.item() == pytest.approx(20.0, abs=1e-5)


def test_learnable_gains():
    pid = PIDLagrangian(
        cost_limit=10.0,
        kp=0.1,
        ki=0.01,
        kd=0.01,
        d_delay=2,
        pid_delta_p_ema_alpha=0.9,
        pid_delta_d_ema_alpha=0.5,
        learnable_gains=True,
    )
    torch.testing.assert_close(pid.gains, torch.tensor([0.1, 0.01, 0.01]))
    assert [n for n, _ in pid.named_parameters()] == ["raw_gains"]
    lam = pid.update(20.0)
    assert lam.item() == pytest.approx(0.301, abs=1e-6)
    lam.backward()
    # d lambda / d raw = (P, delta, D) * sigmoid(raw) = (1, 10, 10) * (1 - exp(-K))
    expected = torch.tensor([1.0, 10.0, 10.0]) * (1 - torch.exp(-torch.tensor([0.1, 0.01, 0.01])))
    torch.testing.assert_close(pid.raw_gains.grad, expected, atol=1e-5, rtol=1e-4)
    assert not pid.multiplier.requires_grad  # stored state is detached
    with pytest.raises(ValueError, match="> 0"):
        PIDLagrangian(cost_limit=1.0, kd=0.0, learnable_gains=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_delay": 0}, "d_delay"),
        ({"pid_delta_p_ema_alpha": 1.5}, "pid_delta_p_ema_alpha"),
        ({"kp": -0.1}, "gains"),
        ({"penalty_max": 0.0}, "penalty_max"),
    ],
)
def test_pid_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PIDLagrangian(cost_limit=1.0, **kwargs)


def test_pid_forward_and_cost_limit():
    pid = PIDLagrangian(cost_limit=3.0)
    pid.update(10.0)
    td = pid(TensorDict(batch_size=[5]))
    assert td["lagrange_multiplier"].shape == (5, 1)
    torch.testing.assert_close(td["lagrange_multiplier"][0, 0], pid.value)
    assert pid.cost_limit.item() == 3.0
