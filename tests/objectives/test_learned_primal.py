"""The learned primal rule: a fresh rule is Adam; its outputs rescale and shift Adam's step as
documented; it sees the features it says; state and files round-trip."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cmo_rl.objectives.learned_primal import (
    LearnedAdam,
    LearnedPrimalRule,
    load_primal_rule,
    primal_rule_vector,
    save_primal_rule,
    set_primal_rule_vector,
)


def _nets():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), nn.Linear(4, 1)


def _groups(actor, critic, lr=None):
    extra = {} if lr is None else {"lr": lr}
    return [{"params": list(actor.parameters()), "name": "actor", **extra},
            {"params": list(critic.parameters()), "name": "critic", **extra}]  # fmt: skip


def _grads(step, modules):
    g = torch.Generator().manual_seed(step)
    for module in modules:
        for p in module.parameters():
            p.grad = torch.randn(p.shape, generator=g)


def _train(opt, modules, steps=20):
    for step in range(steps):
        _grads(step, modules)
        opt.step()


def test_a_fresh_rule_is_adam_on_every_group():
    actor, critic = _nets()
    actor2, critic2 = _nets()
    adam = torch.optim.Adam(_groups(actor, critic), lr=3e-3)
    learned = LearnedAdam(_groups(actor2, critic2), LearnedPrimalRule(hidden=8), lr=3e-3)
    learned.set_context(progress=0.3, multiplier=4.0)
    _train(adam, [actor, critic])
    _train(learned, [actor2, critic2])
    for a, b in zip([*actor.parameters(), *critic.parameters()],
                    [*actor2.parameters(), *critic2.parameters()]):  # fmt: skip
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)  # float32 grouping only


def _constant_rule(a: float, b: float) -> LearnedPrimalRule:
    """A rule whose outputs are (a, b) for every coordinate (the last layer's bias only)."""
    rule = LearnedPrimalRule(hidden=4, output_scale=0.5)
    with torch.no_grad():
        rule.net[2].bias.copy_(torch.tensor([a, b]) / 0.5)
    return rule


def test_the_rule_rescales_and_shifts_adams_step_on_the_actor_only():
    lr, (a, b) = 1e-2, (math.log(2.0), 0.25)
    actor, critic = _nets()
    actor2, critic2 = _nets()
    adam = torch.optim.Adam(_groups(actor, critic), lr=lr)
    learned = LearnedAdam(_groups(actor2, critic2), _constant_rule(a, b), lr=lr)
    start = [p.detach().clone() for p in actor.parameters()]
    _train(adam, [actor, critic], steps=1)
    _train(learned, [actor2, critic2], steps=1)
    for p0, pa, pl in zip(start, actor.parameters(), actor2.parameters()):
        adam_step = pa.detach() - p0
        # -lr (d e^a + b) = e^a * Adam's step - lr * b
        torch.testing.assert_close(pl.detach() - p0, 2.0 * adam_step - lr * b, rtol=1e-5, atol=1e-7)
    for pa, pl in zip(critic.parameters(), critic2.parameters()):
        torch.testing.assert_close(pl, pa, rtol=1e-6, atol=1e-7)


def test_the_rule_sees_the_documented_features():
    seen = []
    rule = LearnedPrimalRule(hidden=4)
    real = rule.forward
    rule.forward = lambda x: (seen.append(x.clone()), real(x))[1]
    net = nn.Linear(2, 1, bias=False)
    opt = LearnedAdam([{"params": net.parameters(), "name": "actor"}], rule, lr=0.1, eps=1e-8)
    opt.set_context(progress=0.25, multiplier=3.0)
    net.weight.grad = torch.tensor([[2.0, -0.5]])
    opt.step()
    net.weight.grad = torch.tensor([[1.0, -0.5]])
    opt.step()
    first, second = seen
    # step 1: m = g, v = g^2 after bias correction: every direction is g / (|g| + eps)
    torch.testing.assert_close(first[:, :3], torch.tensor([[1.0] * 3, [-1.0] * 3]))
    torch.testing.assert_close(first[:, 3:], torch.tensor([[0.25, math.log(4.0)]] * 2))
    # step 2 by hand for coordinate 0 (g = 2 then 1)
    m = (0.9 * 0.1 * 2 + 0.1 * 1) / (1 - 0.9**2)
    v = (0.999 * 0.001 * 4 + 0.001 * 1) / (1 - 0.999**2)
    slow = (0.99 * 0.01 * 2 + 0.01 * 1) / (1 - 0.99**2)
    denom = math.sqrt(v) + 1e-8
    expected = torch.tensor([m / denom, 1.0 / denom, slow / denom])
    torch.testing.assert_close(second[0, :3], expected)


def test_state_dict_round_trip_continues_identically():
    actor, critic = _nets()
    rule = set_primal_rule_vector(LearnedPrimalRule(hidden=4), torch.linspace(-0.3, 0.3, 34))
    opt = LearnedAdam(_groups(actor, critic), rule, lr=1e-2)
    _train(opt, [actor, critic], steps=3)
    state = copy.deepcopy(opt.state_dict())  # torch shares the state tensors otherwise
    actor2, critic2 = _nets()
    actor2.load_state_dict(actor.state_dict())
    critic2.load_state_dict(critic.state_dict())
    opt2 = LearnedAdam(_groups(actor2, critic2), rule, lr=1e-2)
    opt2.load_state_dict(state)
    for step in range(3, 6):
        for o, mods in ((opt, [actor, critic]), (opt2, [actor2, critic2])):
            _grads(step, mods)
            o.step()
    for a, b in zip(actor.parameters(), actor2.parameters()):
        assert torch.equal(a, b)


def test_files_round_trip_and_bad_files_are_named(tmp_path):
    rule = set_primal_rule_vector(LearnedPrimalRule(hidden=4), torch.linspace(-1, 1, 34))
    path = save_primal_rule(rule, tmp_path / "rule.pt", {"command": "test"})
    assert torch.equal(primal_rule_vector(load_primal_rule(path)), primal_rule_vector(rule))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_primal_rule(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a learned primal rule file"):
        load_primal_rule(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="lr must be > 0"):
        LearnedAdam(nn.Linear(1, 1).parameters(), rule, lr=0.0)


def test_building_a_rule_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = LearnedPrimalRule(hidden=4)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(primal_rule_vector(a), primal_rule_vector(LearnedPrimalRule(hidden=4)))
