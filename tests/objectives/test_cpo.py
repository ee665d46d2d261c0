"""CPO: conjugate gradient, Fisher-vector products, the closed-form dual and the full update."""

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

import cmo_rl.objectives.cpo as cpo_module
from cmo_rl.modules import actor_critic_from_env, make_actor
from cmo_rl.objectives import (
    CPOUpdate,
    conjugate_gradient,
    cpo_step_direction,
    fisher_vector_product,
    make_fisher_vector_product,
    make_value_estimators,
)
from cmo_rl.testing import MockCMDPEnv


def _spd(n, generator, cond=5.0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    eig = torch.linspace(1.0, cond, n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


# ------------------------------------------------------------------------- conjugate gradient
def test_conjugate_gradient_matches_linear_solve():
    gen = torch.Generator().manual_seed(0)
    A = _spd(6, gen, cond=20.0)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=6)  # exact in n steps
    torch.testing.assert_close(x, torch.linalg.solve(A, b), atol=1e-9, rtol=1e-9)
    # fewer iterations: an approximation whose residual shrinks with the budget
    r2 = (A @ conjugate_gradient(lambda v: A @ v, b, iters=2) - b).norm()
    r4 = (A @ conjugate_gradient(lambda v: A @ v, b, iters=4) - b).norm()
    assert r4 < r2 < b.norm()


def test_conjugate_gradient_edge_cases():
    A = torch.eye(3, dtype=torch.float64)
    assert conjugate_gradient(lambda v: A @ v, torch.zeros(3, dtype=torch.float64)).abs().max() == 0
    with pytest.raises(ValueError, match="flat vector"):
        conjugate_gradient(lambda v: v, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="iters"):
        conjugate_gradient(lambda v: v, torch.zeros(2), iters=0)


# ------------------------------------------------------------------ Fisher-vector product
@pytest.mark.parametrize("distribution", ["normal", "tanh_normal"])
def test_fisher_vector_product_matches_explicit_kl_hessian(distribution):
    torch.manual_seed(0)
    specs = (Unbounded(shape=(2,)), Bounded(-1.0, 1.0, shape=(2,)))
    actor = make_actor(specs, hidden_layers=(3,), distribution=distribution, init_log_std=-0.2)
    actor = actor.double()
    td = TensorDict(observation=torch.randn(5, 2, dtype=torch.float64), batch_size=[5])
    names = [n for n, p in actor.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])
    shapes = [p.shape for p in actor.parameters()]
    with torch.no_grad():
        ref = actor(td.clone())
    loc0, scale0 = ref["loc"], ref["scale"]

    def kl_of(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(actor, params, (td.clone(),))
        loc, scale = out["loc"], out["scale"]
        # KL(N(loc0, scale0) || N(loc, scale)) summed over action dims, averaged over states
        kl = torch.log(scale / scale0) + (scale0**2 + (loc0 - loc) ** 2) / (2 * scale**2) - 0.5
        return kl.sum(-1).mean()

    H = torch.autograd.functional.hessian(kl_of, theta0)
    v = torch.randn(theta0.numel(), dtype=torch.float64)
    expected = H @ v + 0.1 * v
    torch.testing.assert_close(fisher_vector_product(actor, td, v, damping=0.1), expected)
    fvp = make_fisher_vector_product(actor, td, damping=0.0)
    for _ in range(2):  # the cached graph can be reused
        w = torch.randn(theta0.numel(), dtype=torch.float64)
        torch.testing.assert_close(fvp(w), H @ w)
    with pytest.raises(ValueError, match="flat parameters"):
        fvp(torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------ the closed-form step
def _kkt_residuals(step, g, b, c, H, delta):
    x, lam, nu = step.direction, step.lambda_star, step.nu_star
    kl = 0.5 * x @ H @ x
    cost = c + b @ x
    stationarity = (g - lam * H @ x - nu * b).norm() / g.norm()
    return kl, cost, stationarity


def test_feasible_intersecting_case_by_hand():
    # max x1 + x2  s.t.  |x|^2 / 2 <= 0.5,  -0.1 + x1 <= 0   ->  x* = (0.1, sqrt(0.99))
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    step = cpo_step_direction(g, b, -0.1, g, b, target_kl=0.5)
    assert step.optim_case == 2
    torch.testing.assert_close(
        step.direction, torch.tensor([0.1, math.sqrt(0.99)], dtype=torch.float64)
    )
    # KKT: g = lambda x + nu b with lambda = 1/sqrt(0.99), nu = 1 - 0.1 lambda
    assert step.lambda_star == pytest.approx(1 / math.sqrt(0.99))
    assert step.nu_star == pytest.approx(1 - 0.1 / math.sqrt(0.99))
    # OmniSafe's nu = (lambda c - r)_+ / s would be 0 here, i.e. the TRPO step (0.707, 0.707),
    # which violates x1 <= 0.1
    assert (step.lambda_star * -0.1 - step.r) < 0


def test_infeasible_recoverable_case_by_hand():
    # max x2  s.t. |x|^2/2 <= 0.5,  0.5 + x1 <= 0  ->  x* = (-0.5, sqrt(0.75))
    g = torch.tensor([0.0, 1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    step = cpo_step_direction(g, b, 0.5, g, b, target_kl=0.5)
    assert step.optim_case == 1
    torch.testing.assert_close(
        step.direction, torch.tensor([-0.5, math.sqrt(0.75)], dtype=torch.float64)
    )


def test_trpo_cases_3_and_4():
    gen = torch.Generator().manual_seed(1)
    H = _spd(3, gen)
    g = torch.randn(3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    Hg, Hb = torch.linalg.solve(H, g), torch.linalg.solve(H, b)
    delta = 0.01
    s = float(b @ Hb)
    c = -2.0 * math.sqrt(2 * delta * s)  # constraint far away: B = 2 delta - c^2 / s < 0
    step = cpo_step_direction(g, b, c, Hg, Hb, target_kl=delta)
    assert step.optim_case == 3 and step.nu_star == 0.0
    q = float(g @ Hg)
    torch.testing.assert_close(step.direction, math.sqrt(2 * delta / q) * Hg)
    assert float(0.5 * step.direction @ H @ step.direction) == pytest.approx(delta)
    # no cost gradient and feasible: case 4, same TRPO step
    zero = torch.zeros(3, dtype=torch.float64)
    step4 = cpo_step_direction(g, zero, -1.0, Hg, zero, target_kl=delta)
    assert step4.optim_case == 4
    torch.testing.assert_close(step4.direction, step.direction)


def test_infeasible_recovery_case_0():
    gen = torch.Generator().manual_seed(2)
    H = _spd(3, gen)
    g = torch.randn(3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    Hg, Hb = torch.linalg.solve(H, g), torch.linalg.solve(H, b)
    delta = 0.01
    s = float(b @ Hb)
    c = 3.0 * math.sqrt(2 * delta * s)  # cannot be fixed inside the trust region
    step = cpo_step_direction(g, b, c, Hg, Hb, target_kl=delta)
    assert step.optim_case == 0
    torch.testing.assert_close(step.direction, -math.sqrt(2 * delta / s) * Hb)
    # the largest cost decrease the trust region allows, KL exactly delta
    assert float(0.5 * step.direction @ H @ step.direction) == pytest.approx(delta)


def test_random_problems_satisfy_kkt_conditions():
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(300):
        n = int(torch.randint(2, 6, (1,), generator=gen))
        H = _spd(n, gen)
        g = torch.randn(n, generator=gen, dtype=torch.float64)
        b = torch.randn(n, generator=gen, dtype=torch.float64)
        Hg, Hb = torch.linalg.solve(H, g), torch.linalg.solve(H, b)
        delta = float(torch.rand(1, generator=gen)) * 0.05 + 0.001
        c = float(torch.randn(1, generator=gen)) * math.sqrt(2 * delta * float(b @ Hb))
        step = cpo_step_direction(g, b, c, Hg, Hb, target_kl=delta)
        seen.add(step.optim_case)
        if step.optim_case not in (1, 2):
            continue
        kl, cost, stationarity = _kkt_residuals(step, g, b, c, H, delta)
        scale = math.sqrt(2 * delta * float(b @ Hb))
        # (tolerances allow for the 1e-8 division guards of the dual solution)
        assert kl == pytest.approx(delta, rel=1e-5)  # trust region active (lambda > 0)
        assert cost <= 1e-5 * scale  # primal feasible
        assert step.nu_star >= 0 and step.lambda_star > 0
        assert float(stationarity) < 1e-5  # g = lambda H x + nu b
        assert abs(step.nu_star * float(cost)) < 1e-5 * max(1.0, step.nu_star) * scale
    assert {1, 2} <= seen and 3 in seen


def test_brute_force_search_of_the_feasible_set():
    gen = torch.Generator().manual_seed(4)
    rho = torch.linspace(0, 1, 201, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)
    unit = torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    disk = (rho[:, None, None] * unit[None]).reshape(-1, 2)
    checked = 0
    for _ in range(12):
        H = _spd(2, gen, cond=4.0)
        g = torch.randn(2, generator=gen, dtype=torch.float64)
        b = torch.randn(2, generator=gen, dtype=torch.float64)
        Hg, Hb = torch.linalg.solve(H, g), torch.linalg.solve(H, b)
        delta = 0.02
        c = float(torch.randn(1, generator=gen)) * 0.5 * math.sqrt(2 * delta * float(b @ Hb))
        step = cpo_step_direction(g, b, c, Hg, Hb, target_kl=delta)
        if step.optim_case not in (1, 2):
            continue
        # points of the trust region: x = sqrt(2 delta) L^-T u, |u| <= 1, with H = L L^T
        L = torch.linalg.cholesky(H)
        xs = math.sqrt(2 * delta) * torch.linalg.solve_triangular(L.T, disk.T, upper=True).T
        feasible = xs[(c + xs @ b) <= 0]
        best = float((feasible @ g).max())
        value = float(g @ step.direction)
        assert value >= best - 1e-3 * g.norm().item() * math.sqrt(2 * delta)
        assert value <= best + 2e-2 * g.norm().item() * math.sqrt(2 * delta)  # grid resolution
        checked += 1
    assert checked >= 4


def test_step_direction_validates():
    v = torch.ones(2)
    with pytest.raises(ValueError, match="target_kl"):
        cpo_step_direction(v, v, 0.0, v, v, target_kl=0.0)
    with pytest.raises(ValueError, match="flat vector"):
        cpo_step_direction(v, torch.ones(3), 0.0, v, v, target_kl=0.01)


# --------------------------------------------------------------------------- CPOUpdate
def _batch(seed=0, num_envs=8, steps=20):
    torch.manual_seed(seed)
    env = MockCMDPEnv(num_envs=num_envs, episode_length=steps, seed=seed)
    actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(16,), init_log_std=0.0)
    gae, cost_gae = make_value_estimators(critic, cost_critic, gamma=0.99, lmbda=0.95)
    with torch.no_grad():
        batch = cost_gae(gae(env.rollout(steps, actor))).reshape(-1)
    episode_cost = batch["next", "cost"].sum() / num_envs
    return actor, batch, float(episode_cost)


def _surrogates(actor, batch):
    """Independent computation of E[rho A_R], E[rho A_C] with OmniSafe's normalisation."""
    with torch.no_grad():
        lp = actor.get_dist(batch.clone())
        ratio = (lp.log_prob(batch["action"]) - batch["action_log_prob"]).exp()
        a_r = batch["advantage"].squeeze(-1)
        a_c = batch["cost_advantage"].squeeze(-1)
        a_r = (a_r - a_r.mean()) / (a_r.std(correction=0) + 1e-8)
        a_c = a_c - a_c.mean()
        return float((ratio * a_r).mean()), float((ratio * a_c).mean())


def _flat(actor):
    return torch.cat([p.detach().reshape(-1) for p in actor.parameters()]).clone()


def test_cpo_update_feasible_improves_reward_within_trust_region():
    actor, batch, jc = _batch()
    r0, c0 = _surrogates(actor, batch)
    cpo = CPOUpdate(actor, cost_limit=jc + 100.0, target_kl=0.01)
    info = cpo.step(batch, episode_cost=jc)
    assert info["optim_case"].item() in (3, 4)
    assert info["acceptance_step"].item() >= 1
    assert 0 < info["kl"].item() <= 1.5 * 0.01
    r1, _ = _surrogates(actor, batch)
    assert r1 > r0
    assert info["surrogate_reward_improvement"].item() == pytest.approx(r1 - r0, abs=1e-5)
    assert set(info.keys()) >= {"optim_case", "lambda_star", "nu_star", "violation", "step_norm"}


def test_cpo_update_infeasible_reduces_the_cost_surrogate():
    actor, batch, jc = _batch(seed=1)
    _, c0 = _surrogates(actor, batch)
    cpo = CPOUpdate(actor, cost_limit=0.0, target_kl=0.01)
    info = cpo.step(batch, episode_cost=jc, episode_length=20)
    assert info["violation"].item() == pytest.approx(jc / 20, rel=1e-5)
    assert info["optim_case"].item() in (0, 1)
    assert info["acceptance_step"].item() >= 1
    _, c1 = _surrogates(actor, batch)
    assert c1 < c0
    assert info["surrogate_cost_change"].item() == pytest.approx(c1 - c0, abs=1e-5)


def test_cpo_rejected_line_search_leaves_the_actor_unchanged(monkeypatch):
    actor, batch, jc = _batch(seed=2)
    before = _flat(actor)
    original = cpo_module.cpo_step_direction

    def huge(*args, **kwargs):
        step = original(*args, **kwargs)
        return step._replace(direction=1e3 * step.direction)

    monkeypatch.setattr(cpo_module, "cpo_step_direction", huge)
    info = CPOUpdate(actor, cost_limit=jc, line_search_steps=3).step(batch, episode_cost=jc)
    assert info["acceptance_step"].item() == 0 and info["step_norm"].item() == 0
    torch.testing.assert_close(_flat(actor), before)


def test_cpo_update_validates_inputs():
    actor, batch, jc = _batch(steps=4, num_envs=2)
    cpo = CPOUpdate(actor, cost_limit=1.0)
    with pytest.raises(KeyError, match="cost_advantage"):
        cpo.step(batch.exclude("cost_advantage"), episode_cost=jc)
    with pytest.raises(ValueError, match="episode_cost"):
        cpo.step(batch, episode_cost=float("nan"))
    with pytest.raises(ValueError, match="line_search_decay"):
        CPOUpdate(actor, cost_limit=1.0, line_search_decay=1.0)
    cpo.set_keys(cost_advantage="adv_c")
    renamed = batch.clone().rename_key_("cost_advantage", "adv_c")
    assert cpo.step(renamed, episode_cost=jc)["acceptance_step"].item() >= 0
    with pytest.raises(ValueError, match="not a CPOUpdate key"):
        cpo.set_keys(costs="x")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpo_update_on_cuda():
    actor, batch, jc = _batch()
    actor, batch = actor.to("cuda"), batch.to("cuda")
    info = CPOUpdate(actor, cost_limit=jc + 100.0).step(batch, episode_cost=jc)
    assert info["acceptance_step"].item() >= 1
    assert all(p.is_cuda for p in actor.parameters())
