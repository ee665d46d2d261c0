"""The stacked learned primal rule equals ``P`` separate ``LearnedAdam`` s (one rule each) to
float32 rounding; its state converts to and from theirs exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmo_rl.objectives.learned_primal import (
    LearnedPrimalRule,
    primal_rule_vector,
    set_primal_rule_vector,
)
from cmo_rl.population import StackedLearnedAdam, clip_group_norms, stack_rules
from cmo_rl.training.onpolicy import make_optimizer

P = 3


def _networks():
    torch.manual_seed(0)
    return [
        {
            "actor": nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)),
            "critic": nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)),
        }
        for _ in range(P)
    ]


def _stack(nets):
    return {
        group: {
            name: torch.stack([dict(n[group].named_parameters())[name].detach() for n in nets])
            for name, _ in nets[0][group].named_parameters()
        }
        for group in nets[0]
    }


def _rules():
    """Three different rules whose outputs are far from zero (output_scale 1)."""
    rules = []
    for p in range(P):
        rule = LearnedPrimalRule(hidden=6, output_scale=1.0)
        size = primal_rule_vector(rule).numel()
        noise = torch.randn(size, generator=torch.Generator().manual_seed(p))
        rules.append(set_primal_rule_vector(rule, 0.3 * noise))
    return rules


def test_each_learner_steps_as_its_own_learned_adam():
    nets, rules = _networks(), _rules()
    singles = [make_optimizer(n, 3e-4, primal_rule=r) for n, r in zip(nets, rules)]
    params = _stack(nets)
    stacked = StackedLearnedAdam(params, 3e-4, rules)
    lrs, progress, lambdas = [1e-3, 2e-3, 5e-4], [0.0, 0.5, 0.9], [0.0, 1.5, 7.0]
    stacked.set_lr(lrs, "actor")
    stacked.set_context(progress=progress)
    fresh = StackedLearnedAdam(params, 3e-4, [LearnedPrimalRule(hidden=6)] * P)  # = Adam
    fresh.set_lr(lrs, "actor")
    adam_params = params
    for p, opt in enumerate(singles):
        opt.param_groups[0]["lr"] = lrs[p]
        opt.set_context(progress=progress[p], multiplier=lambdas[p])
    gen = torch.Generator().manual_seed(0)
    for step in range(10):
        grads = {
            g: {k: torch.randn(v.shape, generator=gen) for k, v in ts.items()}
            for g, ts in params.items()
        }
        grads, _ = clip_group_norms(grads, 1.0)
        mask = torch.tensor([True, step != 4, step < 6])  # learners 1 and 2 skip steps
        for p, (net, opt) in enumerate(zip(nets, singles)):
            if mask[p]:
                for group, module in net.items():
                    for name, param in module.named_parameters():
                        param.grad = grads[group][name][p].clone()
                opt.step()
        params, state = stacked.apply(params, grads, stacked.trained_state(),
                                      stacked.constants(), mask, torch.tensor(lambdas))  # fmt: skip
        stacked.load_trained_state(state)
        adam_params, state = fresh.apply(adam_params, grads, fresh.trained_state(),
                                         fresh.constants(), mask, torch.tensor(lambdas))  # fmt: skip
        fresh.load_trained_state(state)
        for p, net in enumerate(nets):
            for group, module in net.items():
                for name, param in module.named_parameters():
                    torch.testing.assert_close(
                        params[group][name][p], param.detach(), rtol=1e-5, atol=1e-7
                    )
    assert stacked.step.tolist() == [10.0, 9.0, 6.0]
    # the rules matter: under Adam the same gradients move the actors elsewhere (so the
    # comparison above would catch a rule step taken wrongly), the critics alike
    for p in range(P):
        assert not torch.allclose(
            adam_params["actor"]["0.weight"][p], params["actor"]["0.weight"][p]
        )
        assert torch.equal(adam_params["critic"]["0.weight"][p], params["critic"]["0.weight"][p])
    for p, opt in enumerate(singles):
        ours, theirs = stacked.state_dict_of(p, opt), opt.state_dict()
        assert ours["state"].keys() == theirs["state"].keys()
        for index, entry in theirs["state"].items():
            assert ours["state"][index].keys() == entry.keys()
            for key, value in entry.items():
                torch.testing.assert_close(ours["state"][index][key], value, rtol=1e-5, atol=1e-8)


def test_state_round_trips_through_a_learned_adam():
    nets, rules = _networks(), _rules()
    params = _stack(nets)
    stacked = StackedLearnedAdam(params, 1e-3, rules)
    grads = {g: {k: torch.ones_like(v) for k, v in ts.items()} for g, ts in params.items()}
    _, state = stacked.apply(params, grads, stacked.trained_state(), stacked.constants(), None,
                             torch.zeros(P))  # fmt: skip
    stacked.load_trained_state(state)
    single = make_optimizer(nets[1], 1e-3, primal_rule=rules[1])
    single.load_state_dict(stacked.state_dict_of(1, single))
    other = StackedLearnedAdam(params, 5e-4, rules)
    other.load_state_dict_of(1, single.state_dict())
    assert other.step.tolist() == [0.0, 1.0, 0.0]
    for name, slow in stacked.exp_avg_slow["actor"].items():
        assert torch.equal(other.exp_avg_slow["actor"][name][1], slow[1])
        assert not other.exp_avg_slow["actor"][name][0].any()
    assert list(other.exp_avg_slow) == ["actor"]  # the critics take Adam's steps


def test_rules_of_different_shapes_or_counts_are_refused():
    params = _stack(_networks())
    with pytest.raises(ValueError, match="same shape"):
        stack_rules([LearnedPrimalRule(hidden=4), LearnedPrimalRule(hidden=5)])
    with pytest.raises(ValueError, match="2 primal rules for 3 learners"):
        StackedLearnedAdam(params, 1e-3, _rules()[:2])
    with pytest.raises(ValueError, match="learned groups"):
        StackedLearnedAdam(params, 1e-3, _rules(), learned_groups=("policy",))
