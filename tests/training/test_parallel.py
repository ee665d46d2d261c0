"""Multi-process collection: config block, worker batches, weight push, seeding, shared norm."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.config import ConfigError, validate_config
from cmo_rl.envs.factory import make_env, observation_norm_of
from cmo_rl.meta.functional import log_prob_of
from cmo_rl.modules import make_actor
from cmo_rl.seeding import epoch_seed
from cmo_rl.training.collection import make_collector
from cmo_rl.training.parallel import (
    BACKENDS,
    CollectorConfig,
    WorkerCollector,
    worker_action_seed,
    worker_spec,
)
from cmo_rl.training.schema import COLLECTOR_BACKENDS, COMMON

HORIZON = 5


def _cfg(**collector) -> dict:
    block = {"backend": "multi_sync", "num_workers": 2, "envs_per_worker": None}
    block.update(collector)
    block.setdefault("ray_address", None)
    return {
        "env_id": "MockCMDP-v0",
        "num_envs": 4,
        "episode_length": HORIZON,
        "normalize_observations": False,
        "collector": block,
    }


# ------------------------------------------------------------------------------------ config
def test_collector_block_resolves_envs_per_worker():
    assert CollectorConfig.from_config(_cfg()).envs_per_worker == 2
    assert CollectorConfig.from_config(_cfg(envs_per_worker=2)).envs_per_worker == 2
    no_block = CollectorConfig.from_config({"num_envs": 4})
    assert (no_block.backend, no_block.num_workers) == ("sync", 1)
    assert worker_spec(_cfg(backend="sync", num_workers=1)) is None
    spec = worker_spec(_cfg(backend="ray", ray_address="auto"))
    assert (spec.collector.ray_address, spec.env_id, spec.max_episode_steps) == (
        "auto",
        "MockCMDP-v0",
        HORIZON,
    )
    assert BACKENDS == COLLECTOR_BACKENDS


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (_cfg(backend="sync"), "num_workers: got 2 with backend=sync"),
        (_cfg(num_workers=3), "must divide num_envs (4)"),
        (_cfg(envs_per_worker=1), "envs_per_worker: got 1, but num_workers (2)"),
        ({**_cfg(backend="ray"), "normalize_observations": True}, "normalize_observations"),
    ],
)
def test_inconsistent_collector_blocks_are_config_errors(cfg, message):
    with pytest.raises(ConfigError) as info:
        CollectorConfig.from_config(cfg)
    assert len(info.value.problems) == 1
    assert message in info.value.problems[0]


def test_schema_checks_the_optional_block():
    schema = {"collector": COMMON["collector"]}
    validate_config({}, schema)  # absent: one process
    validate_config({"collector": _cfg()["collector"]}, schema)
    with pytest.raises(ConfigError, match=r"collector\.backend: got 'mpi'"):
        validate_config({"collector": _cfg(backend="mpi")["collector"]}, schema)
    with pytest.raises(ConfigError, match=r"collector\.num_workers: got 0"):
        validate_config({"collector": _cfg(num_workers=0)["collector"]}, schema)
    with pytest.raises(ConfigError, match=r"collector\.num_workrs: unknown key"):
        validate_config({"collector": {**_cfg()["collector"], "num_workrs": 1}}, schema)


def test_worker_collector_rejects_bad_layouts():
    env = make_env("MockCMDP-v0", num_envs=4, max_episode_steps=HORIZON)
    actor = make_actor(env, hidden_layers=(4,))
    spec = worker_spec(_cfg())
    with pytest.raises(ValueError, match="positive multiple of num_envs"):
        WorkerCollector(env, actor, spec, steps_per_epoch=10, num_epochs=1, seed=0)
    with pytest.raises(ValueError, match="no epoch left"):
        WorkerCollector(env, actor, spec, steps_per_epoch=20, num_epochs=1, seed=0, first_epoch=1)
    six = make_env("MockCMDP-v0", num_envs=6, max_episode_steps=HORIZON)
    with pytest.raises(ValueError, match="must equal the env's num_envs"):
        WorkerCollector(six, actor, spec, steps_per_epoch=30, num_epochs=1, seed=0)
    assert worker_action_seed(epoch_seed(0, 1), 1) - worker_action_seed(epoch_seed(0, 0), 1) == (
        epoch_seed(0, 1) - epoch_seed(0, 0)
    )


# ------------------------------------------------------------------------------------ workers
def _collect(actor, env, *, num_epochs=2, first_epoch=0, perturb=False, seed=3):
    collector = make_collector(
        env,
        actor,
        steps_per_epoch=4 * 2 * HORIZON,
        num_epochs=num_epochs,
        seed=seed,
        first_epoch=first_epoch,
        workers=worker_spec(_cfg()),
    )
    assert isinstance(collector, WorkerCollector)
    batches = []
    try:
        for batch in collector:
            batches.append(batch.clone())
            if perturb and len(batches) == 1:  # epoch 1 must be collected with new weights
                with torch.no_grad():
                    for p in actor.parameters():
                        p.add_(0.05)
    finally:
        collector.shutdown()
    return batches


@pytest.fixture(scope="module")
def two_runs():
    """A 2-epoch run with a weight change after epoch 0, and its 'resume' at epoch 1 (with the
    weights of epoch 1)."""
    torch.manual_seed(0)
    env = make_env("MockCMDP-v0", num_envs=4, max_episode_steps=HORIZON)
    actor = make_actor(env, hidden_layers=(8,))
    first = _collect(actor, env, perturb=True)
    resumed = _collect(actor, env, first_epoch=1)
    return actor, first, resumed


@pytest.mark.slow  # worker processes start in ~10-20 s each on a loaded 2-core machine
def test_worker_batches_have_the_single_process_layout(two_runs):
    _, (b0, b1), _ = two_runs
    for batch in (b0, b1):
        assert batch.batch_size == torch.Size([4, 2 * HORIZON])
        # every sub-env is reset at the batch start and finishes 2 whole episodes
        assert batch["next", "step_count"][:, HORIZON - 1].flatten().tolist() == [HORIZON] * 4
        assert batch["next", "done"].sum().item() == 8
    assert not torch.equal(b0["observation"], b1["observation"])  # epochs are seeded apart


@pytest.mark.slow  # worker processes start in ~10-20 s each on a loaded 2-core machine
def test_workers_act_with_the_weights_pushed_before_each_batch(two_runs):
    actor, (_, b1), _ = two_runs
    expected = log_prob_of(actor, TensorDict.from_module(actor), b1).detach()
    torch.testing.assert_close(b1["action_log_prob"], expected, rtol=0, atol=1e-5)
    before = TensorDict.from_module(actor).apply(lambda p: p - 0.05)
    stale = log_prob_of(actor, before, b1).detach()
    assert (stale - b1["action_log_prob"]).abs().max() > 1e-3


@pytest.mark.slow  # worker processes start in ~10-20 s each on a loaded 2-core machine
def test_a_resumed_epoch_reproduces_the_uninterrupted_one_bitwise(two_runs):
    _, (_, b1), (r1,) = two_runs
    for key in ("observation", "action", ("next", "reward"), ("next", "cost")):
        assert torch.equal(b1[key], r1[key]), key


@pytest.mark.slow  # worker processes start in ~10-20 s each on a loaded 2-core machine
def test_workers_share_the_training_envs_observation_statistics():
    steps = 2 * HORIZON

    def rows_added(workers) -> tuple[int, torch.Tensor]:
        env = make_env(
            "MockCMDP-v0", 4, seed=0, max_episode_steps=HORIZON, normalize_observations=True
        )
        norm = observation_norm_of(env)
        env.reset()  # initialises the statistics in both paths
        before = int(norm._count["observation"])
        actor = make_actor(env, hidden_layers=(4,))
        collector = make_collector(
            env, actor, steps_per_epoch=4 * steps, num_epochs=1, seed=0, workers=workers
        )
        try:
            (batch,) = list(collector)
        finally:
            collector.shutdown()
        return int(norm._count["observation"]) - before, batch

    single, _ = rows_added(None)
    multi, batch = rows_added(worker_spec({**_cfg(), "normalize_observations": True}))
    assert single > 0
    assert multi == single  # every worker step and reset updated the training env's statistics
    # the batch was normalised with statistics pooled over both workers: roughly standard
    assert abs(float(batch["observation"][..., 0].mean())) < 0.5
    assert 0.5 < float(batch["observation"][..., 0].std()) < 1.5


@pytest.mark.slow
def test_safety_gymnasium_workers_reset_like_the_single_process_envs():
    """Sub-env j of the whole batch is seeded epoch_seed + j in both paths."""
    import cmo_rl  # noqa: F401

    cfg = {
        **_cfg(num_workers=2),
        "env_id": "SafetyPointGoal1-v0",
        "num_envs": 2,
        "episode_length": 3,
    }
    first = []
    for workers in (None, worker_spec(cfg)):
        env = make_env("SafetyPointGoal1-v0", 2, max_episode_steps=3)
        actor = make_actor(env, hidden_layers=(4,))
        collector = make_collector(
            env, actor, steps_per_epoch=6, num_epochs=2, seed=5, first_epoch=0, workers=workers
        )
        try:
            first.append([batch["observation"][:, 0].clone() for batch in collector])
        finally:
            collector.shutdown()
    for single, multi in zip(*first):
        assert torch.equal(single, multi)
    assert not torch.equal(first[0][0], first[0][1])


# ------------------------------------------------------------------------------------ recipes
@pytest.mark.slow  # a recipe run with 2 worker processes: ~40 s here
@pytest.mark.parametrize("name", ["ppo_lagrangian"])
def test_recipe_collects_with_worker_processes(name, tmp_path):
    import importlib.util
    from pathlib import Path

    import pandas as pd
    from hydra import compose, initialize_config_dir

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", repo / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    overrides = [
        "env_id=MockCMDP-v0", "num_envs=4", "episode_length=25", "steps_per_epoch=200",
        "total_steps=400", "minibatch_size=50", "update_iters=2", "eval_interval=2",
        "eval_episodes=2", "cost_limit=3.0", "progress=false", f"run_root={tmp_path}",
        "collector.backend=multi_sync", "collector.num_workers=2",
    ]  # fmt: skip
    with initialize_config_dir(str(repo / "recipes" / "config"), version_base=None):
        cfg = compose(name, overrides=overrides)
    validate_config(cfg, module.SCHEMA)
    run_dir = module.train(cfg)
    df = pd.read_csv(Path(run_dir) / "metrics.csv")
    assert df["step"].tolist() == [200, 400]
    assert df["train/num_episodes"].tolist() == [8, 8]
    assert df["eval/episode_return"].notna().iloc[-1]
