"""PPO-Lagrangian loss and the reward/cost GAE pair, checked against hand computations."""

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from cmo_rl.modules import actor_critic_from_env, make_actor, make_cost_critic, make_value_critic
from cmo_rl.objectives import (
    LagrangeMultiplier,
    LagrangianPPOLoss,
    lagrangian_advantage,
    make_value_estimators,
    normalize_advantages,
)
from cmo_rl.testing import MockCMDPEnv

SIGMA = math.exp(-0.5)


def _linear_value(weight, out_key):
    """V(obs) = weight . obs, as a TensorDictModule writing ``out_key``."""
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
    return TensorDictModule(layer, in_keys=["observation"], out_keys=[out_key])


def test_lagrangian_advantage_numbers():
    a_r = torch.tensor([[1.0], [-1.0], [2.0]])
    a_c = torch.tensor([[0.5], [1.0], [-0.5]])
    torch.testing.assert_close(
        lagrangian_advantage(a_r, a_c, 0.5), torch.tensor([[0.5], [-1.0], [1.5]])
    )
    torch.testing.assert_close(lagrangian_advantage(a_r, a_c, 0.0), a_r)
    # per-sample multipliers broadcast; a huge lambda tends to -A_C
    lam = torch.tensor([[0.0], [1.0], [1e6]])
    out = lagrangian_advantage(a_r, a_c, lam)
    torch.testing.assert_close(out, torch.tensor([[1.0], [-1.0], [0.5]]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="shapes differ"):
        lagrangian_advantage(a_r, a_c[:2], 0.5)


def test_normalize_advantages_standardizes_reward_and_centers_cost():
    a_r = torch.tensor([[1.0], [-1.0], [2.0]])
    a_c = torch.tensor([[0.5], [1.0], [-0.5]])
    n_r, n_c = normalize_advantages(a_r, a_c)
    # mean 2/3, population std sqrt(42/27) = 1.2472191
    torch.testing.assert_close(
        n_r, torch.tensor([[0.2672612], [-1.3363062], [1.0690450]]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(n_c, torch.tensor([[0.1666667], [0.6666667], [-0.8333333]]))


def test_gae_hand_computed_reward_and_cost_with_done_in_the_middle():
    # obs[..., 0] = s; V_R(s) = s, V_C(s) = 0.5 s; gamma = 0.9, lambda = 0.8 (gamma*lambda = 0.72)
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s_next = torch.tensor([2.0, 9.0, 4.0, 5.0])  # step 1 terminates: V(9) must be ignored
    td = TensorDict(
        {
            "observation": torch.stack([s, torch.zeros(4)], -1),
            ("next", "observation"): torch.stack([s_next, torch.zeros(4)], -1),
            ("next", "reward"): torch.tensor([[1.0], [0.0], [2.0], [1.0]]),
            ("next", "cost"): torch.tensor([[0.0], [1.0], [0.5], [0.0]]),
            ("next", "done"): torch.tensor([[False], [True], [False], [True]]),
            ("next", "terminated"): torch.tensor([[False], [True], [False], [False]]),
            ("next", "truncated"): torch.tensor([[False], [False], [False], [True]]),
        },
        batch_size=[4],
    )
    gae, cost_gae = make_value_estimators(
        _linear_value([1.0, 0.0], "state_value"),
        _linear_value([0.5, 0.0], "cost_value"),
        gamma=0.9,
        lmbda=0.8,
    )
    gae(td)
    cost_gae(td)
    # reward: deltas 1.8, -2.0, 2.6, 1.5 (step 3 truncated: bootstraps on V(5))
    # A3 = 1.5; A2 = 2.6 + 0.72 * 1.5 = 3.68; A1 = -2 (done); A0 = 1.8 + 0.72 * (-2) = 0.36
    torch.testing.assert_close(td["advantage"].squeeze(-1), torch.tensor([0.36, -2.0, 3.68, 1.5]))
    torch.testing.assert_close(td["value_target"].squeeze(-1), torch.tensor([1.36, 0.0, 6.68, 5.5]))
    # cost: deltas 0.4, 0.0, 0.8, 0.25 -> A = 0.4, 0.0, 0.8 + 0.72 * 0.25 = 0.98, 0.25
    torch.testing.assert_close(
        td["cost_advantage"].squeeze(-1), torch.tensor([0.4, 0.0, 0.98, 0.25])
    )
    torch.testing.assert_close(
        td["cost_value_target"].squeeze(-1), torch.tensor([0.9, 1.0, 2.48, 2.25])
    )
    # the reward estimator was not touched by the cost one
    assert "cost_value" in td.keys() and "state_value" in td.keys()


def test_make_value_estimators_validates():
    env = MockCMDPEnv()
    with pytest.raises(ValueError, match="gamma"):
        make_value_estimators(make_value_critic(env), make_cost_critic(env), gamma=1.5)


def _tiny_setup(ratios=(1.1, 0.7, 1.3), **loss_kwargs):
    """Actor with mean 0 and scale exp(-0.5); critic V_R = 0.5, cost critic V_C = 0."""
    env = MockCMDPEnv(num_envs=3)
    actor = make_actor(env, hidden_layers=(4,))
    critic = make_value_critic(env, hidden_layers=(4,))
    cost_critic = make_cost_critic(env, hidden_layers=(4,))
    with torch.no_grad():
        for net in (actor, critic, cost_critic):
            for name, p in net.named_parameters():
                if "log_std" not in name:
                    p.zero_()
        [m for m in critic.modules() if isinstance(m, nn.Linear)][-1].bias.fill_(0.5)
    action = torch.tensor([[0.3], [-0.5], [1.0]])
    new_log_prob = (
        -0.5 * (action / SIGMA) ** 2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi)
    ).squeeze(-1)
    td = TensorDict(
        observation=torch.randn(3, 2),
        action=action,
        action_log_prob=new_log_prob - torch.tensor(ratios).log(),
        advantage=torch.tensor([[1.0], [-1.0], [2.0]]),
        cost_advantage=torch.tensor([[0.5], [1.0], [-0.5]]),
        value_target=torch.tensor([[1.0], [0.0], [2.0]]),
        cost_value_target=torch.tensor([[0.0], [1.0], [0.5]]),
        batch_size=[3],
    )
    loss = LagrangianPPOLoss(actor, critic, cost_critic, **loss_kwargs)
    return loss, td


def test_loss_matches_hand_computation():
    loss, td = _tiny_setup(
        clip_epsilon=0.2,
        entropy_coeff=0.01,
        critic_coeff=1.0,
        cost_critic_coeff=0.5,
        normalize_advantage=False,
        multiplier=0.5,
    )
    out = loss(td)
    # A_L = [0.5, -1.0, 1.5]; ratios [1.1, 0.7, 1.3] -> clipped [1.1, 0.8, 1.2]
    # min(r A, clip(r) A) = [0.55, -0.8, 1.8] -> mean 0.516667
    assert out["loss_objective"].item() == pytest.approx(-1.55 / 3, abs=1e-6)
    # critic: V = 0.5 vs targets [1, 0, 2] -> (0.25 + 0.25 + 2.25) / 3
    assert out["loss_critic"].item() == pytest.approx(2.75 / 3, abs=1e-6)
    # cost critic: V = 0 vs [0, 1, 0.5] -> 0.5 * 1.25 / 3
    assert out["loss_cost_critic"].item() == pytest.approx(0.5 * 1.25 / 3, abs=1e-6)
    # Gaussian entropy 0.5 * (1 + log 2 pi) + log sigma = 0.918939
    assert out["entropy"].item() == pytest.approx(0.9189385, abs=1e-6)
    assert out["loss_entropy"].item() == pytest.approx(-0.009189385, abs=1e-8)
    assert out["clip_fraction"].item() == pytest.approx(2 / 3)
    assert out["kl_approx"].item() == pytest.approx(
        -(math.log(1.1) + math.log(0.7) + math.log(1.3)) / 3, abs=1e-6
    )
    assert out["ratio_mean"].item() == pytest.approx(3.1 / 3, abs=1e-6)
    assert out["lagrange_multiplier"].item() == 0.5
    assert out["advantage_mean"].item() == pytest.approx(2 / 3)
    assert out["lagrangian_advantage_mean"].item() == pytest.approx(1 / 3)
    for key in out.keys():
        assert not out[key].requires_grad or key.startswith("loss_")
    # the input is not modified
    assert "state_value" not in td.keys() and "loc" not in td.keys()


def test_loss_with_normalized_advantages_equals_loss_on_normalized_inputs():
    loss, td = _tiny_setup(normalize_advantage=True, multiplier=0.5)
    ref, _ = _tiny_setup(normalize_advantage=False, multiplier=0.5)
    n_r, n_c = normalize_advantages(td["advantage"], td["cost_advantage"])
    ref_td = td.clone().set("advantage", n_r).set("cost_advantage", n_c)
    torch.testing.assert_close(loss(td)["loss_objective"], ref(ref_td)["loss_objective"])
    # the diagnostics report the raw advantages
    assert loss(td)["advantage_mean"].item() == pytest.approx(2 / 3)


def _actor_grad_norm(loss, td):
    loss.actor_network.zero_grad()
    loss(td)["loss_objective"].backward()
    return sum(
        float(p.grad.abs().sum()) for p in loss.actor_network.parameters() if p.grad is not None
    )


@pytest.mark.parametrize(
    "ratio, adv, clipped",
    [(1.3, 1.0, True), (1.1, 1.0, False), (0.7, -1.0, True), (0.7, 1.0, False), (1.3, -1.0, False)],
)
def test_clipping_zeroes_the_policy_gradient_only_on_the_pessimistic_side(ratio, adv, clipped):
    loss, td = _tiny_setup(ratios=(ratio,) * 3, normalize_advantage=False, multiplier=0.0)
    td["advantage"] = torch.full((3, 1), adv)
    td["cost_advantage"] = torch.zeros(3, 1)
    grad = _actor_grad_norm(loss, td)
    assert (grad == 0.0) == clipped
    assert loss(td)["clip_fraction"].item() == (1.0 if abs(ratio - 1) > 0.2 else 0.0)


def test_larger_multiplier_lowers_the_weight_on_reward_advantage():
    ratios = (1.1, 0.9, 1.05)  # inside the clip range
    loss, td = _tiny_setup(ratios=ratios, normalize_advantage=False)
    td["cost_advantage"] = torch.zeros(3, 1)
    values = {}
    for lam in (0.0, 1.0, 3.0):
        loss.multiplier = lam
        values[lam] = loss(td)["loss_objective"].item()
    # with A_C = 0 the objective is the PPO objective scaled by 1 / (1 + lambda)
    assert values[1.0] == pytest.approx(values[0.0] / 2, rel=1e-6)
    assert values[3.0] == pytest.approx(values[0.0] / 4, rel=1e-6)

    # d loss / d lambda = mean(rho (A_R + A_C)) / (1 + lambda)^2 (rho unclipped)
    loss, td = _tiny_setup(ratios=ratios, normalize_advantage=False)
    lam = torch.tensor(0.5, requires_grad=True)
    loss.multiplier = lam
    loss(td)["loss_objective"].backward()
    rho = torch.tensor(ratios)
    expected = (rho * (td["advantage"] + td["cost_advantage"]).squeeze(-1)).mean() / 1.5**2
    assert lam.grad.item() == pytest.approx(expected.item(), rel=1e-5)
    assert lam.grad.item() > 0  # raising lambda raises the loss (it removes reward weight here)


def test_multiplier_sources():
    loss, td = _tiny_setup(normalize_advantage=False)
    with pytest.raises(KeyError, match="lagrange_multiplier"):
        loss(td)
    assert "lagrange_multiplier" in loss.in_keys
    reference = loss(td.clone().set("lagrange_multiplier", torch.full((3, 1), 0.5)))[
        "loss_objective"
    ]
    per_sample = torch.tensor([[0.5], [0.0], [2.0]])
    out = loss(td.clone().set("lagrange_multiplier", per_sample))
    # A_L = [(1 - 0.25) / 1.5, -1, (2 + 1) / 3] = [0.5, -1, 1]; min terms [0.55, -0.8, 1.2]
    assert out["loss_objective"].item() == pytest.approx(-(0.55 - 0.8 + 1.2) / 3, abs=1e-6)
    assert out["lagrange_multiplier"].item() == pytest.approx(2.5 / 3)
    # a fixed tensor multiplier gives the same as the key
    loss.multiplier = torch.tensor(0.5)
    torch.testing.assert_close(loss(td)["loss_objective"], reference)
    loss.multiplier = None
    # from a multiplier module (not registered as a parameter of the loss)
    lam = LagrangeMultiplier(cost_limit=1.0, init_lambda=0.5)
    loss.multiplier = lam
    assert "lagrange_multiplier" not in loss.in_keys
    torch.testing.assert_close(loss(td)["loss_objective"], reference)
    assert all(p is not lam.multiplier for p in loss.parameters())
    assert not any(isinstance(m, LagrangeMultiplier) for m in loss.modules())
    # renamed key
    loss.multiplier = None
    loss.set_keys(lagrange_multiplier="lam")
    renamed = td.clone().set("lam", torch.full((3, 1), 0.5))
    torch.testing.assert_close(loss(renamed)["loss_objective"], reference)


def test_bad_inputs_raise_clear_errors():
    loss, td = _tiny_setup(normalize_advantage=False, multiplier=0.5)
    with pytest.raises(KeyError, match="make_value_estimators"):
        loss(td.exclude("cost_advantage"))
    with pytest.raises(ValueError, match=">= 0"):
        _tiny_setup(multiplier=-1.0)
    loss.multiplier = None
    with pytest.raises(ValueError, match=">= 0"):
        loss(td.clone().set("lagrange_multiplier", torch.full((3, 1), -0.1)))
    for shape in ((3, 2), (3,)):
        with pytest.raises(ValueError, match="broadcast"):
            loss(td.clone().set("lagrange_multiplier", torch.ones(shape)))
    loss.multiplier = 0.5
    bad = td.clone().set("cost_advantage", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same shape"):
        loss(bad)
    with pytest.raises(ValueError, match="clip_epsilon"):
        _tiny_setup(clip_epsilon=1.5)
    with pytest.raises(ValueError, match="multiplier must be"):
        _tiny_setup(multiplier="0.5")


def test_set_keys_renames_inputs():
    loss, td = _tiny_setup(normalize_advantage=False, multiplier=0.5)
    expected = loss(td)["loss_objective"]
    loss.set_keys(advantage="adv_r", cost_advantage="adv_c", sample_log_prob="old_lp")
    renamed = td.rename_key_("advantage", "adv_r").rename_key_("cost_advantage", "adv_c")
    renamed.rename_key_("action_log_prob", "old_lp")
    torch.testing.assert_close(loss(renamed)["loss_objective"], expected)
    assert "adv_r" in loss.in_keys and "advantage" not in loss.in_keys
    with pytest.raises(ValueError, match="not an accepted"):
        loss.set_keys(advantages="x")


def _random_batch_loss(**loss_kwargs):
    torch.manual_seed(0)
    env = MockCMDPEnv(num_envs=4, episode_length=6, seed=0)
    actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
    gae, cost_gae = make_value_estimators(critic, cost_critic)
    with torch.no_grad():
        batch = cost_gae(gae(env.rollout(6, actor))).reshape(-1)
    return LagrangianPPOLoss(actor, critic, cost_critic, **loss_kwargs), batch


def test_gradient_flows_to_functionally_swapped_parameters():
    loss, batch = _random_batch_loss(multiplier=0.5, entropy_coeff=0.01)
    params = TensorDict.from_module(loss)
    assert {"actor_network", "critic_network", "cost_critic_network"} <= set(params.keys())
    # perturb the networks so that the ratio is not 1 and every parameter matters
    nets = ("actor_network", "critic_network", "cost_critic_network")
    swapped = params.detach().clone()
    for net in nets:
        swapped[net] = swapped[net].apply(lambda p: p + 0.05 * torch.randn_like(p)).requires_grad_()

    # 1) params.to_module(loss): the swapped tensors get gradients, the module's own do not
    with swapped.to_module(loss, preserve_module_state=False):
        out = loss(batch)
    total = (
        out["loss_objective"] + out["loss_critic"] + out["loss_cost_critic"] + out["loss_entropy"]
    )
    total.backward()
    for key, leaf in swapped.select(*nets).items(True, True):
        assert leaf.grad is not None and bool(leaf.grad.abs().sum() > 0), key
    assert all(p.grad is None for p in loss.parameters())
    # and the swapped values were really used
    assert out["kl_approx"].item() != loss(batch)["kl_approx"].item()

    # torch.func.functional_call with a flat dict, same gradients
    flat = {k: v.detach().clone().requires_grad_() for k, v in swapped.flatten_keys(".").items()}
    out2 = torch.func.functional_call(loss, flat, (batch,))
    torch.testing.assert_close(out2["loss_objective"], out["loss_objective"].detach())
    (
        out2["loss_objective"]
        + out2["loss_critic"]
        + out2["loss_cost_critic"]
        + out2["loss_entropy"]
    ).backward()
    for key, leaf in swapped.select(*nets).flatten_keys(".").items():
        torch.testing.assert_close(flat[key].grad, leaf.grad)


def test_functional_call_uses_swapped_values():
    loss, td = _tiny_setup(normalize_advantage=False, multiplier=0.5)
    params = TensorDict.from_module(loss)

    flat = {k: v.detach().clone().requires_grad_() for k, v in params.flatten_keys(".").items()}
    critic_bias = [k for k in flat if k.startswith("critic_network") and k.endswith("bias")][-1]
    flat[critic_bias] = torch.tensor([1.5], requires_grad=True)  # V_R = 1.5 now
    out = torch.func.functional_call(loss, flat, (td,))
    # V = 1.5 vs targets [1, 0, 2]: (0.25 + 2.25 + 0.25) / 3
    assert out["loss_critic"].item() == pytest.approx(2.75 / 3, abs=1e-6)
    out["loss_critic"].backward()
    # d/db mean((b - t)^2) = 2 mean(b - t) = 2 * (0.5 + 1.5 - 0.5) / 3 = 1.0
    assert flat[critic_bias].grad.item() == pytest.approx(1.0, abs=1e-6)


def test_end_to_end_on_mock_env_decreases_loss():
    loss, batch = _random_batch_loss(multiplier=1.0)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        out = loss(batch)
        total = out["loss_objective"] + out["loss_critic"] + out["loss_cost_critic"]
        first = total.item() if first is None else first
        optim.zero_grad()
        total.backward()
        optim.step()
    assert total.item() < first
    assert 0.0 < out["kl_approx"].abs().item() < 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loss_on_cuda_with_a_cpu_multiplier_module():
    lam = LagrangeMultiplier(cost_limit=1.0, init_lambda=0.5)  # stays on CPU
    loss, batch = _random_batch_loss(multiplier=lam)
    loss, batch = loss.to("cuda"), batch.to("cuda")
    out = loss(batch)
    assert out["loss_objective"].is_cuda
    (out["loss_objective"] + out["loss_critic"] + out["loss_cost_critic"]).backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in loss.actor_network.parameters())
