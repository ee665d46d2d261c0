"""Each recipe runs end to end from the command line: run directory, metrics, checkpoint, plot."""

from __future__ import annotations

import pytest
import yaml
from recipe_helpers import RECIPES, TINY, metrics, run_cli, the_run, train

from cmo_rl.lifecycle import NonFiniteError
from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint

_ALGORITHM_COLUMNS = {
    "ppo_lagrangian": ["train/loss_objective", "train/clip_fraction", "train/kl", "train/entropy"],
    "pid_lagrangian": ["train/loss_objective", "train/pid_p", "train/pid_i", "train/pid_d"],
    "cpo": ["train/cpo_case", "train/cpo_line_search_steps", "train/kl"],
    "ppo": ["train/loss_objective", "train/clip_fraction", "train/kl", "train/entropy"],
    "meta_lagrangian": ["train/pid_p", "train/pid_i", "train/pid_d", "train/rule_correction"],
}
_CHECKPOINT_KEYS = {
    "ppo_lagrangian": {"policy", "value", "cost_value", "multiplier", "optimizer"},
    "pid_lagrangian": {"policy", "value", "cost_value", "multiplier", "optimizer"},
    "cpo": {"policy", "value", "cost_value", "optimizer"},
    "ppo": {"policy", "value", "cost_value", "multiplier", "optimizer"},
    "meta_lagrangian": {"policy", "value", "cost_value", "multiplier", "optimizer"},
}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_cli_on_the_mock_cmdp(name, tmp_path):
    out = run_cli(name, [*TINY, f"run_root={tmp_path / 'runs'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    run = the_run(tmp_path / "runs", name)
    assert run.parent.name == "MockCMDP-v0"

    df = metrics(run, drop_time=False)
    assert df["step"].tolist() == [200, 400, 600]
    # 4 envs x 50 steps per epoch, 25-step episodes: 8 finished episodes of length 25
    assert df["train/num_episodes"].tolist() == [8, 8, 8]
    assert df["train/episode_length"].tolist() == [25.0] * 3
    assert (df["train/violation"] == df["train/episode_cost"] - 3.0).all()
    for column in [
        "train/episode_return", "train/lambda", "train/loss_critic", "train/loss_cost_critic",
        "train/lr", "train/skipped_updates", "time/collect", "time/update", "time/sps",
        "time/total", *_ALGORITHM_COLUMNS[name],
    ]:  # fmt: skip
        assert df[column].notna().all(), column
    # evaluation every 2 epochs and at the last one, with eval_episodes=2
    assert df["eval/num_episodes"].fillna(0).tolist() == [0, 2, 2]
    assert df.loc[1:, "eval/episode_cost"].notna().all()
    assert df["time/total"].is_monotonic_increasing

    assert (run / "plots" / "curves.png").stat().st_size > 1000
    assert yaml.safe_load((run / "config.yaml").read_text())["env_id"] == "MockCMDP-v0"
    assert list((run / "tensorboard").iterdir())
    state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == 600 and state["epoch"] == 3
    assert _CHECKPOINT_KEYS[name] <= set(state)
    assert state["obs_norm"] is not None and state["config"]["total_steps"] == 600
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()


def test_recipe_cli_on_a_safety_gymnasium_task(tmp_path):
    args = [
        "env_id=SafetyPointGoal1-v0",
        "num_envs=2",
        "episode_length=20",
        "steps_per_epoch=40",
        "total_steps=80",
        "minibatch_size=20",
        "update_iters=2",
        "eval_interval=1",
        "eval_episodes=1",
        "progress=false",
        f"run_root={tmp_path / 'runs'}",
    ]
    out = run_cli("ppo_lagrangian", args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    df = metrics(the_run(tmp_path / "runs", "ppo_lagrangian"))
    assert df["step"].tolist() == [40, 80]
    assert df["train/num_episodes"].tolist() == [2, 2]
    assert df["eval/episode_length"].tolist() == [20.0, 20.0]
    assert df["train/episode_cost"].ge(0).all() and df["train/lambda"].ge(0).all()


def test_nan_policy_skip_counts_and_raise_stops(tmp_path):
    blow_up = [*TINY, "lr=1e30"]  # the first Adam step makes the weights non-finite
    run = train("ppo_lagrangian", [*blow_up, f"run_root={tmp_path / 'skip'}"])
    skipped = metrics(run)["train/skipped_updates"].tolist()
    assert skipped[0] >= 1 and skipped[1:] == [8, 8]  # every later minibatch (2 x 4) skipped
    with pytest.raises(NonFiniteError, match="non-finite loss_objective=nan"):
        train("ppo_lagrangian", [*blow_up, "nan_policy=raise", f"run_root={tmp_path / 'raise'}"])
    stopped = the_run(tmp_path / "raise", "ppo_lagrangian")
    assert load_checkpoint(latest_checkpoint(stopped))["step"] == 0  # the last good state


@pytest.mark.parametrize("name", ["ppo_lagrangian", "pid_lagrangian", "cpo"])
def test_tanh_normal_policy(name, tmp_path):
    """``distribution=tanh_normal`` trains without skipped updates, and such an actor's actions
    stay inside the action bounds (a wide Normal's samples do not)."""
    import torch

    from cmo_rl.envs import make_env
    from cmo_rl.training.setup import make_agent

    run = train(name, [*TINY, "distribution=tanh_normal", f"run_root={tmp_path}"])
    df = metrics(run)
    assert df["train/episode_return"].notna().all() and (df["train/skipped_updates"] == 0).all()
    assert df["train/kl"].notna().all()
    env = make_env("MockCMDP-v0", num_envs=64, seed=0)
    cfg = {"hidden_layers": [64, 64], "activation": "tanh", "init_log_std": 1.0}
    for distribution, bounded in (("tanh_normal", True), ("normal", False)):
        actor = make_agent({**cfg, "distribution": distribution}, env, torch.device("cpu"))[0]
        action = actor(env.reset())["action"]
        high = env.action_spec.space.high
        assert bool((action.abs() <= high).all()) == bounded, distribution


def test_ppo_is_ppo_lagrangian_with_lambda_held_at_zero(tmp_path):
    """recipes/ppo.py makes the same updates as compare's ``ppo`` method (PPO-Lag with
    init_lambda=0 and an unreachable limit): identical returns, costs and losses."""
    ppo = metrics(train("ppo", [*TINY, f"run_root={tmp_path / 'a'}"]))
    lag = metrics(
        train("ppo_lagrangian", [*TINY, "init_lambda=0.0", "cost_limit=1e9",
                                 f"run_root={tmp_path / 'b'}"])
    )  # fmt: skip
    assert (ppo["train/lambda"] == 0).all() and (lag["train/lambda"] == 0).all()
    same = ["train/episode_return", "train/episode_cost", "train/loss_objective", "train/kl",
            "eval/episode_return"]  # fmt: skip
    assert ppo[same].equals(lag[same])
    assert (ppo["train/violation"] == ppo["train/episode_cost"] - 3.0).all()  # the real limit
