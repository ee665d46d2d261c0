"""The bilevel core: exact meta-gradients (vs finite differences), truncation, signs of the steps."""

import copy

import pytest
import torch

from cmo_rl.meta.bilevel import (
    bilevel_objective,
    default_violation_scale,
    meta_objective,
    unroll,
    violation,
)
from cmo_rl.meta.functional import MetaOptimizer
from cmo_rl.meta.lstm import LSTMMetaOptimizer
from cmo_rl.meta.pid import PIDMetaOptimizer
from cmo_rl.meta.problems import ContextualBanditCMDP
from cmo_rl.meta.trainer import MetaTrainer

SETTINGS = dict(inner_rollouts=4, cost_limit=3.0, mu=2.0)


def _task(seed=3):
    return ContextualBanditCMDP.sample(seed=seed, dtype=torch.float64)


def _pid(**overrides):
    gains = dict(
        init_KP=0.5, init_KI=0.2, init_KD=0.1, init_etaR=0.1, init_etaC=0.1, init_lambda=0.2
    )
    return PIDMetaOptimizer(**{**gains, **overrides}).double()


def _lstm(seed=0):
    torch.manual_seed(seed)
    return LSTMMetaOptimizer(
        hidden_size=6, lstm_layers=2, alpha_theta=0.1, alpha_lambda=0.1, init_lambda=0.2
    ).double()


def _objective(opt, task, unroll_steps=4):
    return bilevel_objective(opt, task, unroll_steps=unroll_steps, **SETTINGS).objective


def _finite_difference(opt, param, index, fn, eps=1e-6):
    flat = param.data.view(-1)
    old = flat[index].item()
    with torch.no_grad():
        flat[index] = old + eps
        plus = fn().item()
        flat[index] = old - eps
        minus = fn().item()
        flat[index] = old
    return (plus - minus) / (2 * eps)


def test_objective_helpers():
    assert violation(torch.tensor(4.0), 3.0, 2.0).item() == 0.5
    assert default_violation_scale(3.0) == 3.0 and default_violation_scale(0.0) == 1.0
    m = meta_objective(torch.tensor(5.0), torch.tensor(4.0), cost_limit=3.0, mu=2.0)
    assert m.item() == 3.0
    with pytest.raises(ValueError, match="scale"):
        violation(torch.tensor(1.0), 0.0, 0.0)


def test_pid_meta_gradient_matches_finite_differences_for_every_gain():
    opt, task = _pid(), _task()
    result = bilevel_objective(opt, task, unroll_steps=4, **SETTINGS)
    # the constraint binds throughout (lambda > 0, cost above the limit): no kinks nearby
    assert all(r["cost_estimate"] > 3.0 and r["lambda"] > 0 for r in result.unroll.rounds)
    names = ["log_KP", "log_KI", "log_KD", "log_etaR", "log_etaC"]
    params = [getattr(opt, n) for n in names]
    grads = torch.autograd.grad(result.objective, params)
    for name, p, g in zip(names, params, grads):
        fd = _finite_difference(opt, p, 0, lambda: _objective(opt, task))
        assert g.item() == pytest.approx(fd, rel=1e-6, abs=1e-10), name
        assert abs(g.item()) > 1e-3, name  # a real signal, not a numerically-zero one


def test_lstm_meta_gradient_matches_finite_differences_on_sampled_weights():
    opt, task = _lstm(), _task()
    objective = _objective(opt, task)
    named = dict(opt.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(objective, list(named.values()))))
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for name, p in named.items():
        for index in torch.randint(p.numel(), (2,), generator=gen).tolist():
            g = grads[name].view(-1)[index].item()
            fd = _finite_difference(opt, p, index, lambda: _objective(opt, task))
            assert g == pytest.approx(fd, rel=1e-6, abs=3e-9), (name, index)
            checked += abs(g) > 1e-8
    assert checked >= len(named)  # most sampled weights have a non-zero meta-gradient


class _Switch(MetaOptimizer):
    """Steps with ``frozen`` for the first ``n`` steps, then with ``live`` (for the truncation test)."""

    def __init__(self, frozen, live, n):
        super().__init__(init_lambda=live.init_lambda)
        self.frozen, self.live, self.n, self.calls = frozen, live, n, 0

    def init_state(self, params):
        return self.live.init_state(params)

    def step(self, *args):
        self.calls += 1
        return (self.frozen if self.calls <= self.n else self.live).step(*args)


def test_truncated_meta_gradient_is_the_derivative_through_the_window_only():
    task, opt = _task(), _pid()
    window = 2
    grads = torch.autograd.grad(_objective(opt, task, unroll_steps=window), list(opt.parameters()))
    full = torch.autograd.grad(_objective(opt, task, unroll_steps=4), list(opt.parameters()))
    assert any(abs(a.item() - b.item()) > 1e-6 for a, b in zip(grads, full))

    # the truncated gradient = d/dphi of M where steps before the window use a frozen phi
    frozen = copy.deepcopy(opt)

    def windowed():
        switch = _Switch(frozen, opt, n=SETTINGS["inner_rollouts"] - window)
        return bilevel_objective(switch, task, unroll_steps=4, **SETTINGS).objective

    for p, g in zip(opt.parameters(), grads):
        fd = _finite_difference(opt, p, 0, windowed)
        assert g.item() == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_memory_of_the_window_only():
    """Steps before the window are not recorded: their outputs carry no graph."""
    task, opt = _task(), _pid()
    seen = []

    class Spy(PIDMetaOptimizer):
        def step(self, params, *args):
            out = super().step(params, *args)
            seen.append(out[1].requires_grad)
            return out

    spy = Spy(init_KP=0.5, init_KI=0.2, init_KD=0.1, init_etaR=0.1, init_etaC=0.1).double()
    unroll(spy, task, inner_rollouts=5, unroll_steps=2, cost_limit=3.0)
    assert seen == [False, False, False, True, True]
    with pytest.raises(ValueError, match="unroll_steps"):
        unroll(opt, task, inner_rollouts=3, unroll_steps=0, cost_limit=3.0)


def test_lambda_rises_while_cost_exceeds_the_limit_and_falls_to_zero_when_safe():
    task = _task()
    over = unroll(
        _pid(init_etaR=1e-3, init_etaC=1e-3), task, inner_rollouts=5, unroll_steps=5, cost_limit=1.0
    )
    lams = [0.2] + [r["lambda"] for r in over.rounds]
    assert all(r["cost_estimate"] > 1.0 for r in over.rounds)
    assert all(b > a for a, b in zip(lams, lams[1:])), lams
    safe = unroll(_pid(), task, inner_rollouts=3, unroll_steps=3, cost_limit=50.0)
    assert [r["lambda"] for r in safe.rounds] == [0.0, 0.0, 0.0]


def test_policy_step_signs():
    task = _task()
    theta0 = task.init_params()
    j_r0, j_c0 = (v.item() for v in task.estimates(theta0))
    # constraint slack -> lambda = 0 -> a pure reward-ascent step: return goes up
    res = unroll(_pid(init_lambda=0.0), task, inner_rollouts=1, unroll_steps=1, cost_limit=50.0)
    j_r1, _ = task.estimates(res.params)
    assert res.rounds[0]["lambda"] == 0.0 and j_r1.item() > j_r0
    # constraint violated, tiny reward step, large lambda: cost goes down
    res = unroll(
        _pid(init_KP=10.0, init_etaR=1e-6, init_etaC=0.1),
        task,
        inner_rollouts=1,
        unroll_steps=1,
        cost_limit=1.0,
    )
    _, j_c1 = task.estimates(res.params)
    assert res.rounds[0]["lambda"] > 1.0 and j_c1.item() < j_c0


@pytest.mark.parametrize("kind", ["pid", "lstm"])
def test_one_outer_step_changes_every_meta_parameter(kind):
    opt = _pid() if kind == "pid" else _lstm()
    before = {n: p.detach().clone() for n, p in opt.named_parameters()}
    trainer = MetaTrainer(
        opt,
        lambda seed: ContextualBanditCMDP.sample(seed, dtype=torch.float64),
        inner_rollouts=4,
        unroll_steps=4,
        meta_batch_size=2,
        cost_limit=3.0,
        mu=2.0,
        meta_lr=1e-3,
    )
    metrics = trainer.meta_iteration()
    for name, p in opt.named_parameters():
        changed = (p.detach() != before[name]).float().mean().item()
        # every tensor moves; at most a handful of entries can have an exactly-zero gradient
        assert changed > 0.9, (name, changed)
    for group, norm in opt.meta_grad_norms().items():
        assert norm == 0.0  # gradients are cleared after the step
        assert 0 < metrics[f"meta/grad_norm/{group}"] < float("inf")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["pid", "lstm"])
def test_cuda_meta_gradient_matches_cpu(kind):
    cpu_opt = _pid() if kind == "pid" else _lstm()
    gpu_opt = copy.deepcopy(cpu_opt).cuda()
    cpu_task = _task()
    gpu_task = ContextualBanditCMDP.sample(seed=3, dtype=torch.float64, device="cuda")
    g_cpu = torch.autograd.grad(_objective(cpu_opt, cpu_task), list(cpu_opt.parameters()))
    g_gpu = torch.autograd.grad(_objective(gpu_opt, gpu_task), list(gpu_opt.parameters()))
    for a, b in zip(g_cpu, g_gpu):
        assert b.is_cuda and torch.allclose(a, b.cpu(), rtol=1e-8, atol=1e-12)
