"""The stacked Adam + per-network clipping equals ``P`` ``torch.optim.Adam`` s bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmo_rl.population import StackedAdam, clip_group_norms
from cmo_rl.training.onpolicy import _group_norms, make_optimizer

P = 4


def _networks():
    return [
        {
            "actor": nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 3)),
            "critic": nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1)),
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


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_stacked_adam_equals_torch_adam_per_learner(max_grad_norm):
    nets = _networks()
    optimizers = [make_optimizer(n, 3e-4) for n in nets]
    params = _stack(nets)
    adam = StackedAdam(params, lr=3e-4)
    lrs = [1e-4, 2e-4, 3e-4, 7e-4]  # per-learner actor lr, as linear_lr gives
    adam.set_lr(lrs, "actor")
    for lr, optimizer in zip(lrs, optimizers):
        optimizer.param_groups[0]["lr"] = lr
    gen = torch.Generator().manual_seed(0)
    for step in range(8):
        scale = 10.0 if step % 2 else 0.1  # clip active on odd steps
        grads = {
            g: {k: torch.randn(v.shape, generator=gen) * scale for k, v in ts.items()}
            for g, ts in params.items()
        }
        mask = torch.tensor([True, step != 2, True, step < 3])  # learners 1, 3 skip steps
        ref_norms = {}
        for p, (net, optimizer) in enumerate(zip(nets, optimizers)):
            if not mask[p]:
                continue
            for group, module in net.items():
                for name, param in module.named_parameters():
                    param.grad = grads[group][name][p].clone()
            ref_norms[p] = _group_norms(optimizer, max_grad_norm)
            optimizer.step()
        clipped, norms = clip_group_norms(grads, max_grad_norm)
        params = adam.update(params, clipped, mask)
        for p, net in enumerate(nets):
            if mask[p]:
                assert all(torch.equal(norms[g][p], ref_norms[p][g]) for g in net)
            for group, module in net.items():
                for name, param in module.named_parameters():
                    assert torch.equal(param.detach(), params[group][name][p]), (step, p, name)
    assert adam.step.tolist() == [8.0, 7.0, 8.0, 3.0]
    for p, optimizer in enumerate(optimizers):
        ours, theirs = adam.state_dict_of(p, optimizer), optimizer.state_dict()
        for index, entry in theirs["state"].items():
            for key, value in entry.items():
                assert torch.equal(ours["state"][index][key], value)


def test_state_dict_round_trip_resumes_a_learner():
    nets = _networks()
    params = _stack(nets)
    adam = StackedAdam(params, lr=1e-3)
    grads = {g: {k: torch.ones_like(v) for k, v in ts.items()} for g, ts in params.items()}
    params = adam.update(params, grads)
    optimizer = make_optimizer(nets[2], 1e-3)
    optimizer.load_state_dict(adam.state_dict_of(2, optimizer))
    other = StackedAdam(params, lr=5e-4)
    other.load_state_dict_of(2, optimizer.state_dict())
    assert other.step.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert other.lr["actor"].tolist() == [5e-4, 5e-4, 1e-3, 5e-4]
    for group in params:
        for name in params[group]:
            assert torch.equal(other.exp_avg[group][name][2], adam.exp_avg[group][name][2])
            assert not other.exp_avg[group][name][0].any()


def test_set_lr_validates():
    adam = StackedAdam({"actor": {"w": torch.zeros(2, 3)}}, lr=1e-3)
    with pytest.raises(ValueError, match="no parameter group"):
        adam.set_lr(1e-3, group="critic")
    with pytest.raises(ValueError, match="lr must be > 0"):
        adam.set_lr([1e-3, 0.0])
