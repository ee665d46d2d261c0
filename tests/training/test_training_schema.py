"""Recipe config schemas: per-key rules and the checks that involve several keys."""

from __future__ import annotations

import pytest

from cmo_rl.config import ConfigError, Field, validate_config
from cmo_rl.training.schema import COMMON, CPO, LAGRANGE, PID, PPO, check_consistency, recipe_schema


def _good() -> dict:
    return {
        "env_id": "MockCMDP-v0", "num_envs": 4, "episode_length": None,
        "normalize_observations": True, "cost_limit": 25.0, "total_steps": 1000,
        "steps_per_epoch": 100, "hidden_layers": [64, 64], "activation": "tanh",
        "init_log_std": -0.5, "lr": 3e-4, "update_iters": 10, "minibatch_size": 64,
        "target_kl": 0.01, "max_grad_norm": 40.0, "gamma": 0.99, "gae_lambda": 0.95,
        "cost_gamma": 0.99, "cost_gae_lambda": 0.95, "eval_interval": 1, "eval_episodes": 2,
        "checkpoint_interval": 1, "keep_checkpoints": 1, "run_root": "runs", "resume": None,
        "nan_policy": "skip", "progress": False, "seed": 0, "torch_threads": 1, "device": "cpu",
    }  # fmt: skip


def test_common_schema_accepts_a_good_config_and_lists_every_problem():
    validate_config(_good(), COMMON)
    bad = dict(
        _good(),
        lr=-1e-3,
        cost_limit=-1.0,
        env_id="SafetyPointGoal9-v0",
        hidden_layers=[64, 0],
        device="gpu",
        nan_policy="ignore",
    )
    with pytest.raises(ConfigError) as info:
        validate_config(bad, COMMON)
    keys = sorted(p.split(":")[0] for p in info.value.problems)
    assert keys == ["cost_limit", "device", "env_id", "hidden_layers", "lr", "nan_policy"]
    assert any("did you mean" in p for p in info.value.problems)  # env id suggestion


def test_recipe_schema_merges_parts_and_refuses_conflicts():
    assert set(recipe_schema(PPO, LAGRANGE)) == set(COMMON) | set(PPO) | set(LAGRANGE)
    assert {"pid_kp", "lambda_max"} <= set(recipe_schema(PPO, PID))
    assert "clip_epsilon" not in recipe_schema(CPO)
    with pytest.raises(ValueError, match="conflicting schema rules for 'lr'"):
        recipe_schema({"lr": Field(float, ge=0)})


def test_check_consistency_cross_key_rules():
    check_consistency(_good(), episode_horizon=25)
    with pytest.raises(ConfigError) as info:
        check_consistency(dict(_good(), steps_per_epoch=102, minibatch_size=200, total_steps=50))
    assert [p.split(":")[0] for p in info.value.problems] == [
        "steps_per_epoch",
        "total_steps",
        "minibatch_size",
    ]
    with pytest.raises(ConfigError, match="fewer than the episode horizon"):
        check_consistency(_good(), episode_horizon=26)  # 100 / 4 = 25 steps per env
