"""Shared builders of the population tests: agents, per-learner batches, single-learner runs."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.lifecycle.guard import NonFiniteGuard
from cmo_rl.objectives import LagrangianPPOLoss
from cmo_rl.population import LearnerNets, stack_learners
from cmo_rl.testing import MockCMDPEnv
from cmo_rl.training.onpolicy import approx_kl, make_optimizer, minibatch_epochs, set_lr
from cmo_rl.training.setup import make_agent

CFG = {"hidden_layers": [16, 16], "activation": "tanh", "init_log_std": -0.5}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (the recipes' default; reductions reproducible)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_agents(size: int, cfg: dict | None = None) -> list:
    env = MockCMDPEnv(num_envs=2, episode_length=8, seed=0)
    return [make_agent(cfg or CFG, env, torch.device("cpu")) for _ in range(size)]


def make_batches(agents: list, n: int, seed: int = 0) -> TensorDict:
    """One ``[N]`` batch per learner, actions from its own policy: stacked ``[P, N]``."""
    gen = torch.Generator().manual_seed(seed)
    nets = LearnerNets.from_agent(agents[0])
    params = stack_learners(agents)
    batches = []
    for p in range(len(agents)):
        obs = torch.randn(n, 2, generator=gen)
        with torch.no_grad():
            dist = nets.dist(nets.flat_params(params[p])["actor"], obs)
            action = dist.sample()
            log_prob = dist.log_prob(action)
        batches.append(
            TensorDict(
                observation=obs,
                action=action,
                action_log_prob=log_prob,
                advantage=torch.randn(n, 1, generator=gen),
                cost_advantage=torch.randn(n, 1, generator=gen) * 2,
                value_target=torch.randn(n, 1, generator=gen),
                cost_value_target=torch.randn(n, 1, generator=gen) + 1,
                batch_size=[n],
            )
        )
    return torch.stack(batches)


def run_single(agent, flat, *, lam, lr, seed, target_kl, all_steps=None, **kw):
    """The recipe's step 3 for one learner (``train_lagrangian_ppo``), on a copy of ``agent``:
    returns ``(agent after, optimizer, minibatch_epochs result)``."""
    agent = copy.deepcopy(agent)
    actor, critic, cost_critic = agent
    loss = LagrangianPPOLoss(
        actor,
        critic,
        cost_critic,
        clip_epsilon=kw["clip_epsilon"],
        entropy_coeff=kw["entropy_coeff"],
        normalize_advantage=False,
        multiplier=torch.tensor(float(lam)),
    )
    optimizer = make_optimizer({"actor": actor, "critic": critic, "cost_critic": cost_critic}, 3e-4)
    set_lr(optimizer, lr, group="actor")
    result = minibatch_epochs(
        flat,
        loss,
        optimizer,
        update_iters=kw["update_iters"],
        minibatch_size=kw["minibatch_size"],
        guard=NonFiniteGuard(),
        max_grad_norm=kw["max_grad_norm"],
        target_kl=target_kl,
        kl_fn=lambda: approx_kl(actor, flat),
        generator=torch.Generator().manual_seed(seed),
    )
    return agent, optimizer, result
