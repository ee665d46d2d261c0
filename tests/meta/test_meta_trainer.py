"""MetaTrainer / meta_test: meta-training helps on held-out tasks; the RL path runs end to end."""

import copy
import functools
import math

import pytest
import torch

import cmo_rl  # noqa: F401
from cmo_rl.meta.bilevel import bilevel_objective, unroll
from cmo_rl.meta.frozen import meta_test, run_frozen
from cmo_rl.meta.functional import flatten_params
from cmo_rl.meta.problems import ContextualBanditCMDP, RolloutCMDP
from cmo_rl.meta.tasks import RolloutTaskSampler
from cmo_rl.meta.trainer import MetaTrainer, make_meta_optimizer
from cmo_rl.testing import MockCMDPEnv

MOCK = functools.partial(MockCMDPEnv, episode_length=10)
TASK_KW = dict(episode_length=10, vector_envs_per_task=8, hidden_layers=(16,), critic_steps=5)


def _held_out_objective(opt, seeds):
    values = [
        bilevel_objective(
            opt,
            ContextualBanditCMDP.sample(s),
            inner_rollouts=5,
            unroll_steps=5,
            cost_limit=3.0,
            mu=5.0,
        ).objective.item()
        for s in seeds
    ]
    return sum(values) / len(values)


@pytest.mark.parametrize("kind, meta_lr", [("pid", 0.05), ("lstm", 0.01)], ids=["pid", "lstm"])
def test_meta_training_beats_its_initialisation_on_held_out_tasks(kind, meta_lr):
    torch.manual_seed(0)
    opt = make_meta_optimizer(
        kind, init_etaR=0.05, init_etaC=0.05, hidden_size=8, alpha_theta=0.1, alpha_lambda=0.5
    )
    initial = copy.deepcopy(opt)
    trainer = MetaTrainer(
        opt,
        ContextualBanditCMDP.sample,  # training tasks: seeds drawn by the trainer (< 2**31)
        inner_rollouts=5,
        unroll_steps=5,
        meta_batch_size=4,
        cost_limit=3.0,
        mu=5.0,
        meta_lr=meta_lr,
        seed=0,
    )
    trainer.train(40)
    held_out = range(10**6, 10**6 + 10)
    before, after = _held_out_objective(initial, held_out), _held_out_objective(opt, held_out)
    assert after > before + 2.0, (before, after)
    if kind == "pid":  # it learned to push back harder on the cost
        assert opt.gains()["etaC"].item() > 0.05 and opt.gains()["KP"].item() > 0.08


def _mock_trainer(kind="pid", **kw):
    opt = make_meta_optimizer(kind, init_etaR=0.05, init_etaC=0.05, init_lambda=0.2, hidden_size=8)
    sampler = RolloutTaskSampler([MOCK], **TASK_KW)
    settings = dict(
        inner_rollouts=3, unroll_steps=3, meta_batch_size=2, cost_limit=1.0, mu=2.0, meta_lr=0.01
    )
    return MetaTrainer(opt, sampler, **{**settings, **kw})


@pytest.mark.parametrize("kind", ["pid", "lstm"])
def test_rl_meta_iteration_end_to_end(kind):
    torch.manual_seed(0)
    trainer = _mock_trainer(kind)
    opt = trainer.meta_optimizer
    # every meta-parameter tensor gets a non-zero, finite meta-gradient of sane scale
    problem = trainer.task_sampler(0)
    assert isinstance(problem, RolloutCMDP)
    result = bilevel_objective(
        opt, problem, inner_rollouts=3, unroll_steps=3, cost_limit=1.0, mu=2.0
    )
    result.objective.backward()
    # measured at this init: PID gains >= 3e-4 (KD smallest, etaR ~1); LSTM tensors >= 2e-5
    # (the multiplier head, which acts only through the LSTM's features)
    floor = 1e-4 if kind == "pid" else 5e-6
    for name, p in opt.named_parameters():
        norm = p.grad.norm().item()
        assert math.isfinite(norm) and floor < norm < 1e4, (name, norm)
    opt.zero_grad()
    before = [p.detach().clone() for p in opt.parameters()]
    metrics = trainer.meta_iteration()
    assert all(not torch.equal(b, p) for b, p in zip(before, opt.parameters()))
    for key in ("meta/objective", "meta/return", "meta/cost", "meta/lambda", "meta/grad_norm"):
        assert math.isfinite(metrics[key]), key
    for group in opt.meta_parameter_groups():
        assert metrics[f"meta/grad_norm/{group}"] > 0
    assert metrics["meta/skipped_updates"] == 0.0 and metrics["meta/iteration"] == 1.0
    assert metrics["time/collect"] > 0 and metrics["time/backward"] > 0
    assert metrics["time/iteration"] >= metrics["time/collect"] + metrics["time/inner"]


def test_rollout_rounds_measure_the_batch_and_improve_return():
    torch.manual_seed(0)
    sampler = RolloutTaskSampler([MOCK], **{**TASK_KW, "vector_envs_per_task": 32})
    problem = sampler(0)
    rnd = problem.sample_round(problem.init_params())
    batch = problem.collect(problem.init_params())
    assert batch.shape == (32, 10)
    # the estimate at theta_k is the measured return / cost of that round's batch
    j_r, j_c = rnd.estimates(problem.init_params())
    assert j_r.item() == pytest.approx(rnd.metrics["return"], abs=1e-4)
    assert j_c.item() == pytest.approx(rnd.metrics["cost"], abs=1e-4)
    # a constraint-free PID (lambda stays 0) raises the return: the primal step has the right sign
    opt = make_meta_optimizer("pid", init_etaR=0.05, init_lambda=0.0)
    out = run_frozen(opt, sampler(1), inner_rollouts=3, cost_limit=100.0)
    returns = [r["return"] for r in out["rounds"]]
    assert [r["lambda"] for r in out["rounds"]] == [0.0] * 4
    assert returns[-1] > returns[0] + 2.0, returns


def test_task_sampler_is_deterministic_per_seed():
    sampler = RolloutTaskSampler([MOCK, MOCK], **TASK_KW)
    a, b, c = sampler(5), sampler(5), sampler(6, env_index=1)
    assert torch.equal(flatten_params(a.init_params()), flatten_params(b.init_params()))
    assert not torch.equal(flatten_params(a.init_params()), flatten_params(c.init_params()))
    assert c.name == "MockCMDPEnv" and len(sampler._envs) <= 2
    with pytest.raises(ValueError, match="env_ids"):
        RolloutTaskSampler("SafetyPointGoal1-v0", **TASK_KW)


def test_meta_test_keeps_the_optimizer_frozen():
    opt = make_meta_optimizer("lstm", hidden_size=4, init_lambda=0.3)
    before = copy.deepcopy(opt.state_dict())
    sampler = RolloutTaskSampler([MOCK], **TASK_KW)
    results = meta_test(
        {"lstm": opt},
        sampler,
        inner_rollouts=2,
        seeds=[0, 1],
        cost_limit=1.0,
        mu=1.0,
        eval_episodes=8,
    )
    assert len(results) == 2 and [r["seed"] for r in results] == [0, 1]
    for r in results:
        assert r["env_id"] == "MockCMDPEnv" and len(r["rounds"]) == 3
        assert r["rounds"][0]["lambda"] == pytest.approx(0.3)
        assert r["rounds"][-1]["return"] == r["return"]
        assert {"eval_return", "eval_cost"} <= set(r)
    for name, p in opt.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None


def test_state_dict_roundtrip():
    torch.manual_seed(0)
    trainer = _mock_trainer()
    trainer.meta_iteration()
    state = copy.deepcopy(trainer.state_dict())
    other = _mock_trainer()
    other.load_state_dict(state)
    assert other.iteration == 1
    for (n, p), q in zip(
        trainer.meta_optimizer.named_parameters(), other.meta_optimizer.parameters()
    ):
        assert torch.equal(p, q), n
    s1, s2 = trainer.outer_optimizer.state_dict(), other.outer_optimizer.state_dict()
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])
    assert torch.equal(trainer.generator.get_state(), other.generator.get_state())
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"iteration": 3})


def test_balanced_tasks_take_the_env_ids_in_turn_and_resume_the_count():
    kw = {**TASK_KW, "vector_envs_per_task": 2}

    def trainer():
        sampler = RolloutTaskSampler(["MockCMDP-v0", MOCK], **kw)
        opt = make_meta_optimizer("pid", init_etaR=0.05)
        settings = dict(inner_rollouts=1, unroll_steps=1, meta_batch_size=3, cost_limit=1.0)
        return MetaTrainer(opt, sampler, mu=1.0, balanced_tasks=True, **settings)

    first = trainer()
    first.meta_iteration()
    assert [t.name for t in first.last_tasks] == ["MockCMDP-v0", "MockCMDPEnv", "MockCMDP-v0"]
    assert {t.env_steps for t in first.last_tasks} == {(1 + 1) * 10 * 2}
    assert first.task_count == 3 and first.env_steps == 3 * 40
    resumed = trainer()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    rng = torch.get_rng_state()
    for run in (first, resumed):
        torch.set_rng_state(rng)  # what the program's checkpoint restores beside the trainer
        run.meta_iteration()
        assert [t.name for t in run.last_tasks] == ["MockCMDPEnv", "MockCMDP-v0", "MockCMDPEnv"]
    assert resumed.env_steps == first.env_steps == 6 * 40
    costs = [[t.metrics["meta/cost"] for t in run.last_tasks] for run in (resumed, first)]
    assert costs[0] == costs[1]
    old = {k: v for k, v in first.state_dict().items() if k != "task_count"}
    resumed.load_state_dict(old)  # a checkpoint from before the count: iterations x batch
    assert resumed.task_count == 6


def test_from_config_builds_the_rl_trainer():
    cfg = dict(
        env_ids=[MOCK],
        total_meta_iters=2,
        inner_rollouts=2,
        episode_length=10,
        meta_batch_size=1,
        eval_episodes=2,
        hidden_layers=[16],
        hidden_size=4,
        alpha_theta=0.01,
        alpha_lambda=0.1,
        init_KP=0.1,
        init_KI=0.01,
        init_KD=0.01,
        init_etaR=0.02,
        init_etaC=0.03,
        init_lambda=0.2,
        meta_lr=1e-3,
        unroll_steps=2,
        gamma=0.99,
        cost_limit=1.0,
        mu=10.0,
        lstm_layers=1,
        log_interval=1,
        checkpoint_interval=1,
        vector_envs_per_task=4,
        seed=0,
        device="cpu",
        meta_optimizer_type="pid",
        meta_grad_clip=1.0,
        gae_lambda=0.95,
        nan_policy="skip",
        critic_lr=1e-3,
        critic_steps=10,
        violation_scale=None,
        balanced_tasks=False,
    )
    trainer = MetaTrainer.from_config(cfg)
    assert trainer.meta_optimizer.gains()["etaC"].item() == pytest.approx(0.03)
    assert trainer.task_sampler.settings.hidden_layers == (16,)
    history = trainer.train()
    assert len(history) == 2 and trainer.iteration == 2
    lstm = MetaTrainer.from_config({**cfg, "meta_optimizer_type": "lstm"}).meta_optimizer
    assert lstm.alpha_theta == 0.01 and lstm.lstm_layers == 1 and lstm.hidden_size == 4
    with pytest.raises(ValueError, match="missing required keys"):
        MetaTrainer.from_config({k: v for k, v in cfg.items() if k != "mu"})
    with pytest.raises(ValueError, match="meta_optimizer_type"):
        MetaTrainer.from_config({**cfg, "meta_optimizer_type": "adam"})


def test_non_finite_meta_gradient_policy():
    def broken(seed):
        task = ContextualBanditCMDP.sample(seed)
        task.reward = task.reward * float("nan")
        return task

    opt = make_meta_optimizer("pid", init_etaR=0.05, init_etaC=0.05)
    before = [p.detach().clone() for p in opt.parameters()]
    settings = dict(inner_rollouts=2, unroll_steps=2, meta_batch_size=1, cost_limit=3.0, mu=1.0)
    metrics = MetaTrainer(opt, broken, **settings).meta_iteration()
    assert metrics["meta/skipped_updates"] == 1.0
    assert all(torch.equal(b, p) for b, p in zip(before, opt.parameters()))
    with pytest.raises(FloatingPointError, match="non-finite"):
        MetaTrainer(opt, broken, nan_policy="raise", **settings).meta_iteration()


def test_trainer_rejects_bad_arguments():
    opt = make_meta_optimizer("pid")
    base = dict(inner_rollouts=2, unroll_steps=2, meta_batch_size=1, cost_limit=3.0, mu=1.0)
    with pytest.raises(ValueError, match="unroll_steps"):
        MetaTrainer(opt, ContextualBanditCMDP.sample, **{**base, "unroll_steps": 0})
    with pytest.raises(ValueError, match="nan_policy"):
        MetaTrainer(opt, ContextualBanditCMDP.sample, nan_policy="ignore", **base)
    with pytest.raises(ValueError, match="inner_rollouts"):
        sampler = RolloutTaskSampler([MOCK], **TASK_KW)
        meta_test({"pid": opt}, sampler, inner_rollouts=0, seeds=[0], cost_limit=1.0, mu=1.0)
    with pytest.raises(ValueError, match="balanced_tasks"):
        MetaTrainer(opt, ContextualBanditCMDP.sample, balanced_tasks=True, **base)
    with pytest.raises(ValueError, match="inner_rollouts"):
        unroll(
            opt, ContextualBanditCMDP.sample(0), inner_rollouts=0, unroll_steps=1, cost_limit=1.0
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["pid", "lstm"])
def test_rl_meta_iteration_on_cuda(kind):
    opt = make_meta_optimizer(kind, init_etaR=0.05, init_etaC=0.05, hidden_size=8, device="cuda")
    sampler = RolloutTaskSampler([MOCK], **TASK_KW, device="cuda")
    trainer = MetaTrainer(
        opt, sampler, inner_rollouts=2, unroll_steps=2, meta_batch_size=1, cost_limit=1.0, mu=2.0
    )
    metrics = trainer.meta_iteration()
    assert metrics["meta/skipped_updates"] == 0.0 and math.isfinite(metrics["meta/objective"])
    assert all(p.is_cuda for p in opt.parameters())


def _held_out_rl_objective(opt, kw, seeds=range(100, 108)):
    sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv, episode_length=20)], **kw)
    values = []
    for seed in seeds:
        torch.manual_seed(seed)
        out = run_frozen(opt, sampler(seed), inner_rollouts=4, cost_limit=3.0)
        values.append(out["return"] - 5.0 * max(0.0, out["cost"] - 3.0))
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("kind, meta_lr", [("pid", 0.05), ("lstm", 0.01)], ids=["pid", "lstm"])
def test_rl_meta_training_beats_its_initialisation_on_held_out_seeds(kind, meta_lr):
    """~20 s each: 40 meta-iterations on MockCMDPEnv (4 tasks x 5 rounds x 16 envs x 20 steps).
    Measured: PID -2.4 -> 3.6, LSTM 0.6 -> 3.8 (held-out meta-objective, 8 seeds)."""
    kw = dict(episode_length=20, vector_envs_per_task=16, hidden_layers=(16,), critic_steps=5)
    mock = functools.partial(MockCMDPEnv, episode_length=20)
    torch.manual_seed(0)
    opt = make_meta_optimizer(
        kind,
        init_etaR=0.02,
        init_etaC=0.02,
        init_lambda=0.2,
        hidden_size=8,
        alpha_theta=0.05,
        alpha_lambda=0.3,
    )
    initial = copy.deepcopy(opt)
    trainer = MetaTrainer(
        opt,
        RolloutTaskSampler([mock], **kw),
        inner_rollouts=4,
        unroll_steps=4,
        meta_batch_size=4,
        cost_limit=3.0,
        mu=5.0,
        meta_lr=meta_lr,
        seed=0,
    )
    trainer.train(40)
    before, after = _held_out_rl_objective(initial, kw), _held_out_rl_objective(opt, kw)
    assert after > before + 2.0, (before, after)
