"""TaskPool: the tasks of a meta-iteration in worker processes, the same result for any number
of workers."""

from __future__ import annotations

import functools

import pytest
import torch

from cmo_rl.meta import MetaTrainer, RolloutTaskSampler, TaskPool, make_meta_optimizer
from cmo_rl.meta.pool import task_action_seed
from cmo_rl.testing import MockCMDPEnv


def _meta_trainer(seed: int = 4):
    sampler = RolloutTaskSampler(
        [functools.partial(MockCMDPEnv, episode_length=5)],
        episode_length=5,
        vector_envs_per_task=2,
        hidden_layers=(8,),
        critic_steps=2,
    )
    torch.manual_seed(0)
    opt = make_meta_optimizer("lstm", hidden_size=4, lstm_layers=1)
    return MetaTrainer(
        opt, sampler, inner_rollouts=2, unroll_steps=2, meta_batch_size=3, cost_limit=1.0,
        mu=1.0, meta_lr=0.01, seed=seed,
    )  # fmt: skip


def test_task_pool_in_process_sums_the_tasks_meta_gradients():
    trainer = _meta_trainer()
    pool = TaskPool(trainer, num_workers=0)
    rng = torch.random.get_rng_state()
    summaries = pool(trainer, [11, 12])
    assert torch.equal(torch.random.get_rng_state(), rng)  # tasks use their own seeds
    both = [p.grad.clone() for p in trainer.meta_optimizer.parameters()]
    for p in trainer.meta_optimizer.parameters():
        p.grad = None
    first = pool(trainer, [11])
    one = [p.grad.clone() for p in trainer.meta_optimizer.parameters()]
    for p in trainer.meta_optimizer.parameters():
        p.grad = None
    pool(trainer, [12])
    for g_both, g_one, g_two in zip(
        both, one, (p.grad for p in trainer.meta_optimizer.parameters())
    ):
        assert torch.equal(g_both, g_one + g_two)  # accumulated in seed order, like backward()

    def untimed(outcome):
        return {k: v for k, v in outcome.metrics.items() if not k.startswith("time/")}

    assert untimed(summaries[0]) == untimed(first[0])  # a task's result ignores its batch mates
    assert any(float(g.abs().sum()) > 0 for g in both)
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        TaskPool(trainer, num_workers=-1)


@pytest.mark.slow  # two spawned workers start in ~15 s here
def test_task_pool_workers_reproduce_the_in_process_meta_iteration():
    results = []
    for workers in (0, 2):
        trainer = _meta_trainer()
        with TaskPool(trainer, num_workers=workers) as pool:
            trainer.task_runner = pool
            metrics = [trainer.meta_iteration() for _ in range(2)]
        params = [p.detach().clone() for p in trainer.meta_optimizer.parameters()]
        results.append(
            ([{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics], params)
        )
    (m0, p0), (m2, p2) = results
    assert m0 == m2
    assert all(torch.equal(a, b) for a, b in zip(p0, p2))
    assert m0[0]["meta/grad_norm"] > 0 and m0[0] != m0[1]


def test_task_pool_runs_the_env_index_it_is_given():
    trainer = _meta_trainer()
    trainer.task_sampler.env_ids.append(functools.partial(MockCMDPEnv, episode_length=2))
    pool = TaskPool(trainer, num_workers=0)
    outcomes = pool(trainer, [11, 11], env_indices=[0, 1])
    assert [o.env_steps for o in outcomes] == [(2 + 1) * 5 * 2] * 2
    assert outcomes[0].metrics["meta/objective"] != outcomes[1].metrics["meta/objective"]
    assert task_action_seed(11) - task_action_seed(10) == 1
