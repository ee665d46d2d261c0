"""Shared on-policy update: advantages, minibatch passes, KL early stop, NaN guard, learning rates."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from cmo_rl.envs.factory import make_env
from cmo_rl.lifecycle import NonFiniteError, NonFiniteGuard
from cmo_rl.modules import actor_critic_from_env
from cmo_rl.objectives import make_value_estimators
from cmo_rl.training.onpolicy import (
    approx_kl,
    compute_advantages,
    linear_lr,
    make_optimizer,
    minibatch_epochs,
    set_lr,
    train_metrics,
)


def _linear_problem(n: int = 8):
    """``w`` fitted to ``y = 2`` from ``x = 1``: loss ``(w - 2)^2``, gradient ``2 (w - 2)``."""
    layer = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(layer.weight)
    data = TensorDict(x=torch.ones(n, 1), y=torch.full((n, 1), 2.0), batch_size=[n])

    def loss_fn(td):
        err = layer(td["x"]) - td["y"]
        return TensorDict(loss_mse=err.pow(2).mean(), residual=err.detach().mean())

    return layer, data, loss_fn


def test_minibatch_epochs_steps_by_hand():
    layer, data, loss_fn = _linear_problem(n=8)
    out = minibatch_epochs(
        data,
        loss_fn,
        torch.optim.SGD(layer.parameters(), lr=0.25),
        update_iters=3,
        minibatch_size=3,  # 3 + 3 + 2 per pass: 9 steps
        guard=NonFiniteGuard(),
    )
    w, residuals = 0.0, []
    for _ in range(9):  # w <- w - 0.25 * 2 (w - 2) = (w + 2) / 2
        residuals.append(w - 2.0)
        w = (w + 2.0) / 2.0
    assert layer.weight.item() == pytest.approx(w)
    assert out["update_passes"] == 3 and out["skipped_updates"] == 0
    assert out["loss_mse"] == pytest.approx(sum(r * r for r in residuals) / 9)
    assert out["residual"] == pytest.approx(sum(residuals) / 9)
    assert out["grad_norm"] == pytest.approx(sum(2 * abs(r) for r in residuals) / 9)


def test_minibatch_epochs_kl_early_stop_after_the_first_pass_over_target():
    layer, data, loss_fn = _linear_problem()
    kls = iter([0.001, 0.005, 0.05, 0.5])
    out = minibatch_epochs(
        data,
        loss_fn,
        torch.optim.SGD(layer.parameters(), lr=0.1),
        update_iters=10,
        minibatch_size=8,
        guard=NonFiniteGuard(),
        target_kl=0.02,
        kl_fn=lambda: next(kls),
    )
    assert out["update_passes"] == 3 and out["kl"] == 0.05
    no_stop = minibatch_epochs(
        data,
        loss_fn,
        torch.optim.SGD(layer.parameters(), lr=0.1),
        update_iters=2,
        minibatch_size=8,
        guard=NonFiniteGuard(),
        kl_fn=lambda: 0.7,  # without target_kl: only evaluated once, for logging
    )
    assert no_stop["update_passes"] == 2 and no_stop["kl"] == 0.7


def test_minibatch_epochs_clips_each_group_and_reports_the_actor_norm():
    actor, critic = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    for m in (actor, critic):
        nn.init.zeros_(m.weight)
    data = TensorDict(x=torch.ones(4, 1), batch_size=[4])

    def loss_fn(td):  # gradients -30 (actor) and -4 (critic)
        return TensorDict(
            loss_a=-(30.0 * actor(td["x"])).mean(), loss_c=-(4.0 * critic(td["x"])).mean()
        )

    opt = make_optimizer({"critic": critic, "actor": actor}, lr=1.0)
    opt = torch.optim.SGD(opt.param_groups, lr=1.0)
    out = minibatch_epochs(
        data,
        loss_fn,
        opt,
        update_iters=1,
        minibatch_size=4,
        guard=NonFiniteGuard(),
        max_grad_norm=5.0,
    )
    assert out["grad_norm"] == pytest.approx(30.0)  # the actor's, before clipping
    assert actor.weight.item() == pytest.approx(5.0)  # clipped to norm 5
    assert critic.weight.item() == pytest.approx(4.0)  # under the limit: unchanged


def test_nonfinite_minibatches_are_skipped_or_raise():
    layer, data, _ = _linear_problem(n=4)

    def loss_fn(td):  # NaN whenever the minibatch holds sample 0
        bad = (td["x"] * 0 + td["index"]).eq(0).any()
        loss = (layer(td["x"]) - td["y"]).pow(2).mean()
        return TensorDict(loss_mse=torch.where(bad, torch.tensor(float("nan")), loss))

    data.set("index", torch.arange(4.0).unsqueeze(-1))
    guard = NonFiniteGuard("skip")
    before = layer.weight.detach().clone()
    out = minibatch_epochs(
        data,
        loss_fn,
        torch.optim.SGD(layer.parameters(), lr=0.1),
        update_iters=3,
        minibatch_size=1,
        guard=guard,
    )
    assert out["skipped_updates"] == 3 and guard.skipped == 3  # one per pass
    assert not torch.equal(layer.weight, before)  # the 9 finite steps were applied
    assert torch.isfinite(layer.weight).all()
    with pytest.raises(NonFiniteError, match="non-finite loss_mse=nan"):
        minibatch_epochs(
            data,
            loss_fn,
            torch.optim.SGD(layer.parameters(), lr=0.1),
            update_iters=1,
            minibatch_size=4,
            guard=NonFiniteGuard("raise"),
        )


def test_nonfinite_gradient_is_skipped():
    layer = nn.Linear(1, 1, bias=False)
    data = TensorDict(x=torch.ones(2, 1), batch_size=[2])

    def loss_fn(td):  # finite value, infinite gradient: d/dw sqrt(|w|) at w = 0
        return TensorDict(loss_root=(layer(td["x"]) * 0).abs().sqrt().mean())

    nn.init.zeros_(layer.weight)
    guard = NonFiniteGuard()
    out = minibatch_epochs(
        data,
        loss_fn,
        torch.optim.SGD(layer.parameters(), lr=0.1),
        update_iters=1,
        minibatch_size=2,
        guard=guard,
    )
    assert out["skipped_updates"] == 1 and layer.weight.item() == 0.0
    assert "grad_norm" not in out  # no step was applied


def test_minibatch_epochs_input_errors():
    layer, data, loss_fn = _linear_problem()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="flat"):
        minibatch_epochs(
            data.reshape(2, 4),
            loss_fn,
            opt,
            update_iters=1,
            minibatch_size=2,
            guard=NonFiniteGuard(),
        )
    with pytest.raises(ValueError, match="no loss_"):
        minibatch_epochs(
            data,
            lambda td: TensorDict(x=torch.zeros(())),
            opt,
            update_iters=1,
            minibatch_size=2,
            guard=NonFiniteGuard(),
        )


def test_compute_advantages_normalises_reward_and_centres_cost():
    env = make_env("MockCMDP-v0", num_envs=4, seed=0, max_episode_steps=6)
    torch.manual_seed(0)
    actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
    gae, cost_gae = make_value_estimators(critic, cost_critic, gamma=0.9, lmbda=0.8)
    with torch.no_grad():
        rollout = env.rollout(6, actor)
    raw = rollout.clone()
    gae(raw)
    cost_gae(raw)
    out = compute_advantages(rollout.clone(), gae, cost_gae)
    a, c = raw["advantage"], raw["cost_advantage"]
    assert torch.allclose(
        out["advantage"], (a - a.mean()) / (a.std(correction=0) + 1e-8), atol=1e-6
    )
    assert torch.allclose(out["cost_advantage"], c - c.mean(), atol=1e-6)
    assert torch.equal(out["value_target"], raw["value_target"])  # targets untouched
    assert torch.equal(out["cost_value_target"], raw["cost_value_target"])
    plain = compute_advantages(rollout.clone(), gae, cost_gae, normalize=False)
    assert torch.equal(plain["cost_advantage"], c)


def _batch_with_log_ratios(log_ratios):
    """A collected batch whose stored log-probs give ``log r = log pi - log pi_old`` as asked."""
    env = make_env("MockCMDP-v0", num_envs=1, seed=0)
    actor, _, _ = actor_critic_from_env(env, hidden_layers=(4,))
    with torch.no_grad():
        batch = env.rollout(len(log_ratios), actor)
    log_ratios = torch.tensor(log_ratios).reshape(batch.shape)
    batch["action_log_prob"] = batch["action_log_prob"] - log_ratios
    return actor, batch


def test_approx_kl_is_the_nonnegative_k3_estimator_by_hand():
    # log r = -0.25 everywhere: (e^-0.25 - 1) + 0.25 = 0.0288008 (the old E[-log r]: 0.25)
    actor, batch = _batch_with_log_ratios([-0.25] * 4)
    assert approx_kl(actor, batch) == pytest.approx(0.0288007831, abs=1e-6)
    # log r = +0.25: the old estimator gave -0.25 < 0; k3 gives e^0.25 - 1.25 = 0.0340254
    actor, batch = _batch_with_log_ratios([0.25] * 4)
    assert approx_kl(actor, batch) == pytest.approx(0.0340254167, abs=1e-6)
    # a mixed batch whose old estimate -mean(log r) = -(0.5 - 0.1 + 0.3 + 0.2) / 4 is negative
    log_r = [0.5, -0.1, 0.3, 0.2]
    actor, batch = _batch_with_log_ratios(log_r)
    with torch.no_grad():
        log_prob = actor.get_dist(batch.clone(False)).log_prob(batch["action"])
    assert float((batch["action_log_prob"] - log_prob).mean()) == pytest.approx(-0.225, abs=1e-6)
    # (e^0.5 - 1.5 + e^-0.1 - 0.9 + e^0.3 - 1.3 + e^0.2 - 1.2) / 4
    # = (0.1487213 + 0.0048374 + 0.0498588 + 0.0214028) / 4 = 0.0562051
    assert approx_kl(actor, batch) == pytest.approx(0.0562051, abs=1e-6)
    assert sum(math.expm1(x) - x for x in log_r) / 4 == pytest.approx(0.0562051, abs=1e-7)


def test_approx_kl_is_zero_for_the_same_policy_and_never_negative():
    env = make_env("MockCMDP-v0", num_envs=3, seed=0)
    actor, _, _ = actor_critic_from_env(env, hidden_layers=(4,))
    with torch.no_grad():
        batch = env.rollout(4, actor)
    assert approx_kl(actor, batch) == pytest.approx(0.0, abs=1e-7)
    loc = batch["loc"].clone()
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-7, 1e-4, 1e-2, 1.0, 5.0):  # tiny to large policy changes, either sign
        shifted = batch.clone()
        noise = scale * torch.randn(shifted.shape, generator=gen)
        shifted["action_log_prob"] = batch["action_log_prob"] + noise
        assert approx_kl(actor, shifted) >= 0.0
    assert torch.equal(batch["loc"], loc)  # the batch is not rewritten


def test_kl_early_stop_uses_the_nonnegative_estimate():
    # pi > pi_old on every stored action: the old estimator gave -0.25 and never stopped;
    # k3 gives 0.034 > target_kl = 0.02 and stops after the first pass
    actor, batch = _batch_with_log_ratios([0.25] * 4)
    layer, data, loss_fn = _linear_problem()
    out = minibatch_epochs(
        data,
        loss_fn,
        torch.optim.SGD(layer.parameters(), lr=0.1),
        update_iters=5,
        minibatch_size=8,
        guard=NonFiniteGuard(),
        target_kl=0.02,
        kl_fn=lambda: approx_kl(actor, batch),
    )
    assert out["update_passes"] == 1
    assert out["kl"] == pytest.approx(0.0340254167, abs=1e-6)
    assert train_metrics(out)["train/kl"] == out["kl"]


def test_critic_loss_lives_in_objectives_only():
    from cmo_rl import training
    from cmo_rl.objectives import CriticLoss
    from cmo_rl.objectives.critic import CriticLoss as ModuleCriticLoss

    assert CriticLoss is ModuleCriticLoss
    assert training.approx_kl is approx_kl
    assert "CriticLoss" not in training.__all__  # one home per name


def test_learning_rates():
    assert [linear_lr(3e-4, e, 3) for e in range(3)] == pytest.approx([3e-4, 2e-4, 1e-4])
    with pytest.raises(ValueError):
        linear_lr(1.0, 3, 3)
    opt = make_optimizer({"actor": nn.Linear(1, 1), "critic": nn.Linear(1, 1)}, lr=1.0)
    set_lr(opt, 0.5, group="actor")
    assert [g["lr"] for g in opt.param_groups] == [0.5, 1.0]
    set_lr(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    with pytest.raises(ValueError, match="no parameter group named 'policy'"):
        set_lr(opt, 0.1, group="policy")
    with pytest.raises(ValueError, match="lr must be > 0"):
        make_optimizer({"actor": nn.Linear(1, 1)}, lr=0.0)


def test_train_metrics_keeps_documented_names_only():
    update = {
        "loss_objective": 1.0,
        "loss_cost_critic": 2.0,
        "entropy": 0.5,
        "kl": 0.01,
        "clip_fraction": 0.1,
        "grad_norm": 3.0,
        "ratio_mean": 1.0,
        "skipped_updates": 0,
    }
    assert train_metrics(update) == {
        "train/loss_objective": 1.0,
        "train/loss_cost_critic": 2.0,
        "train/entropy": 0.5,
        "train/kl": 0.01,
        "train/clip_fraction": 0.1,
        "train/grad_norm": 3.0,
    }
