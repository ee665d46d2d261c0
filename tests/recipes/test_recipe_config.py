"""Recipe configs: yaml == schema, bad values stop before any work with one clear message."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from recipe_helpers import RECIPES, TINY, compose, load_recipe, run_cli, train

from cmo_rl.config import ConfigError, validate_config

_OMNISAFE_DEFAULTS = {
    "cost_limit": 25.0,
    "hidden_layers": [64, 64],
    "activation": "tanh",
    "lr": 3e-4,
    "steps_per_epoch": 20000,
    "minibatch_size": 64,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "normalize_observations": True,
    "env_id": "SafetyPointGoal1-v0",
}


@pytest.mark.parametrize("name", RECIPES)
def test_yaml_and_schema_have_the_same_keys_and_omnisafe_defaults(name):
    cfg = compose(name, [])
    schema = load_recipe(name).SCHEMA
    assert set(cfg.keys()) == set(schema)  # every key in both
    validate_config(cfg, schema)
    plain = OmegaConf.to_container(cfg)
    assert {k: plain[k] for k in _OMNISAFE_DEFAULTS} == _OMNISAFE_DEFAULTS
    expected = {
        "ppo_lagrangian": {"update_iters": 40, "target_kl": 0.02, "clip_epsilon": 0.2,
                           "init_lambda": 0.001, "lambda_lr": 0.035, "lr_decay": True},
        "pid_lagrangian": {"update_iters": 40, "target_kl": 0.02, "pid_kp": 0.1, "pid_ki": 0.01,
                           "pid_kd": 0.01, "pid_d_delay": 10, "pid_delta_p_ema_alpha": 0.95,
                           "pid_delta_d_ema_alpha": 0.95, "lambda_max": 100.0},
        "cpo": {"update_iters": 10, "target_kl": 0.01},
        "ppo": {"update_iters": 40, "target_kl": 0.02, "clip_epsilon": 0.2, "lr_decay": True},
        "meta_lagrangian": {"update_iters": 40, "target_kl": 0.02, "pid_kp": 0.1, "rule": None,
                            "rule_hidden": 16, "lambda_max": 100.0},
    }[name]  # fmt: skip
    assert {k: plain[k] for k in expected} == expected


def test_bad_values_exit_2_with_one_message_and_no_traceback(tmp_path):
    out = run_cli(
        "ppo_lagrangian",
        ["lr=-1e-3", "cost_limit=-5", "env_id=SafetyPointGoal9-v0", "clip_epsilon=1.5",
         f"run_root={tmp_path / 'runs'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    # gymnasium-robotics (imported by safety-gymnasium) prints a notice on import: not ours
    lines = [line for line in out.stderr.strip().splitlines() if "Gymnasium-Robotics" not in line]
    assert lines[0] == "invalid config (4 problems):"
    assert [line.split(":")[0].strip("- ") for line in lines[1:]] == [
        "env_id",
        "cost_limit",
        "lr",
        "clip_epsilon",
    ]
    assert "did you mean 'SafetyPointGoal2-v0', 'SafetyPointGoal1-v0'" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_single_key_and_cross_key_problems_in_one_message(tmp_path):
    """Cross-key problems used to appear only once the single-key ones were fixed."""
    out = run_cli(
        "ppo_lagrangian",
        ["lr=-1e-3", "num_envs=3", "steps_per_epoch=200", "minibatch_size=500",
         f"run_root={tmp_path / 'runs'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if "Gymnasium-Robotics" not in line]
    assert lines == [
        "invalid config (3 problems):",
        "  - lr: got -0.001, out of range; allowed: float > 0",
        "  - steps_per_epoch: got 200, must be a multiple of num_envs (3)",
        "  - minibatch_size: got 500, must be <= steps_per_epoch (200)",
    ]
    assert not (tmp_path / "runs").exists()


def test_unknown_key_is_refused_by_hydra(tmp_path):
    out = run_cli("cpo", ["clip_epsilon=0.2"], cwd=tmp_path)  # a PPO key: not in cpo.yaml
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "Key 'clip_epsilon' is not in struct" in out.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_envs=3"], "steps_per_epoch: got 200, must be a multiple of num_envs (3)"),
        (["episode_length=60"], "fewer than the episode horizon (60)"),
        (["minibatch_size=500"], "minibatch_size: got 500, must be <= steps_per_epoch (200)"),
        (["resume=/nonexistent/run"], "resume: '/nonexistent/run' is not an existing run"),
    ],
)
def test_cross_key_problems_are_config_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match="invalid config") as info:
        train("ppo_lagrangian", [*TINY, f"run_root={tmp_path}", *overrides])
    assert message in str(info.value)
    assert not any(tmp_path.iterdir())  # refused before creating a run directory


def test_resume_refuses_changes_and_finished_runs(tmp_path):
    run = train("cpo", [*TINY, f"run_root={tmp_path}", "total_steps=200"])
    with pytest.raises(ConfigError, match="already completed 1 of 1 epochs; raise total_steps"):
        train("cpo", [*TINY, f"run_root={tmp_path}", "total_steps=200", f"resume={run}"])
    with pytest.raises(ConfigError, match="cost_limit: got 4.0 but the resumed run has 3.0"):
        train("cpo", [*TINY, f"run_root={tmp_path}", "cost_limit=4.0", f"resume={run}"])
    with pytest.raises(ConfigError, match="no checkpoint under"):
        train("cpo", [*TINY, f"run_root={tmp_path}", f"resume={tmp_path}"])
