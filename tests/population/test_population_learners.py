"""Stacking learners, the functional loss against ``LagrangianPPOLoss``, the package boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import make_agents, make_batches

from cmo_rl.objectives import LagrangianPPOLoss
from cmo_rl.population import (
    GROUPS,
    LearnerNets,
    LossCoefficients,
    lagrangian_ppo_loss,
    make_population,
    stack_learners,
    unstack_learners,
)
from cmo_rl.testing import MockCMDPEnv


def test_stack_and_unstack_round_trip():
    agents = make_agents(3)
    params = stack_learners(agents)
    assert params.batch_size == (3,) and set(params.keys()) == set(GROUPS)
    weight = params["critic", "0", "weight"]
    assert torch.equal(weight[1], agents[1].critic.module[0].weight.detach())
    assert not torch.equal(weight[0], weight[1])  # independently initialised
    shifted = params.apply(lambda t: t + 1.0)
    others = make_agents(3)
    unstack_learners(shifted, others)
    assert (stack_learners(others) == shifted).all()
    with pytest.raises(ValueError, match="for 2 agents"):
        unstack_learners(shifted, others[:2])
    with pytest.raises(ValueError, match="one architecture"):
        stack_learners([agents[0], *make_agents(1, {**_cfg(), "hidden_layers": [8]})])


def _cfg():
    return {"hidden_layers": [16, 16], "activation": "tanh", "init_log_std": -0.5}


def test_make_population_seeds_each_learner():
    env = MockCMDPEnv(num_envs=2, episode_length=8, seed=0)
    a = stack_learners(make_population(_cfg(), env, "cpu", 3, seeds=[1, 2, 1]))
    assert (a[0] == a[2]).all() and not (a[0] == a[1]).all()


def test_flat_params_follow_module_parameter_order():
    agent = make_agents(1)[0]
    nets = LearnerNets.from_agent(agent)
    flat = nets.flat_params(stack_learners([agent]))
    order = [t.data_ptr() for t in agent.actor.parameters()]
    assert len(flat["actor"]) == len(order)
    for (name, tensor), param in zip(flat["actor"].items(), agent.actor.parameters()):
        assert torch.equal(tensor[0], param.detach()), name
    back = nets.nested_params(flat, [1])
    assert (back == stack_learners([agent])).all()


@pytest.mark.parametrize("distribution", ["normal", "tanh_normal"])
def test_functional_loss_equals_the_loss_class_values_and_gradients(distribution):
    cfg = {**_cfg(), "distribution": distribution}
    agent = make_agents(1, cfg)[0]
    batch = make_batches([agent], 48)[0]
    nets = LearnerNets.from_agent(agent)
    params = nets.flat_params(stack_learners([agent])[0])
    for group in params.values():
        for tensor in group.values():
            tensor.requires_grad_(True)
    coeffs = LossCoefficients.make(
        clip_epsilon=0.2, entropy_coeff=0.01, critic_coeff=0.5, cost_critic_coeff=2.0
    )
    lam = torch.tensor(0.7)
    loss = LagrangianPPOLoss(
        *agent, clip_epsilon=0.2, entropy_coeff=0.01, critic_coeff=0.5, cost_critic_coeff=2.0,
        normalize_advantage=False, multiplier=lam,
    )  # fmt: skip
    torch.manual_seed(3)  # tanh_normal's entropy is a one-sample estimate
    expected = loss(batch)
    torch.manual_seed(3)
    mb = {k: batch[k] for k in batch.keys()}
    total, out = lagrangian_ppo_loss(nets, params, mb, lam, coeffs, all_diagnostics=True)
    assert set(out) == set(LagrangianPPOLoss._OUT_KEYS)
    for key in out:
        assert torch.equal(out[key], expected[key]), key
    sum(v for k, v in expected.items() if k.startswith("loss_")).backward()
    total.backward()
    cores = (agent.actor.module[0].module, agent.critic.module, agent.cost_critic.module)
    for group, module in zip(GROUPS, cores):
        for name, param in module.named_parameters():
            assert torch.equal(params[group][name].grad, param.grad), (group, name)


def test_population_never_imports_the_meta_wing():
    package = Path(__file__).resolve().parents[2] / "cmo_rl" / "population"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "cmo_rl.meta" or n.startswith("cmo_rl.meta.") for n in names)
        assert len(path.read_text().splitlines()) <= 600, path.name


def test_vmapped_kl_is_never_negative():
    agents = make_agents(2)
    batch = make_batches(agents, 64)
    nets = LearnerNets.from_agent(agents[0])
    from cmo_rl.population import approx_kl_of

    actor = nets.flat_params(stack_learners(agents[::-1]))["actor"]  # the other's policy
    kl = torch.func.vmap(lambda a, o, x, lp: approx_kl_of(nets, a, o, x, lp))(
        actor, batch["observation"], batch["action"], batch["action_log_prob"]
    )
    assert kl.shape == (2,) and bool((kl > 0).all())
