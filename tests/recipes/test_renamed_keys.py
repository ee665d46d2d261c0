"""Old key names keep working after the one-name-per-concept renames (cmo_rl.config.RENAMED_KEYS):
on the command line (with a note), in a stored run's config (resume=), in component keywords and
in comparison-study fingerprints."""

from __future__ import annotations

import pytest
import yaml
from recipe_helpers import TINY, metrics, run_cli, the_run, train

from cmo_rl.lifecycle import latest_checkpoint, load_checkpoint, save_checkpoint
from cmo_rl.objectives import LagrangeMultiplier, PIDLagrangian

OLD = {"init_lambda": "lambda_init", "episode_length": "max_episode_steps"}


def _old_spelling(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        out.append(f"{OLD.get(key, key)}={value}")
    return out


def test_old_names_on_the_command_line_work_with_a_note(tmp_path):
    args = _old_spelling([*TINY, "total_steps=200", "init_lambda=0.3"])
    assert "lambda_init=0.3" in args and "max_episode_steps=25" in args
    out = run_cli("ppo_lagrangian", [*args, f"run_root={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "note: lambda_init is now called init_lambda" in out.stderr
    assert "note: max_episode_steps is now called episode_length" in out.stderr
    stored = yaml.safe_load((the_run(tmp_path, "ppo_lagrangian") / "config.yaml").read_text())
    assert (stored["init_lambda"], stored["episode_length"]) == (0.3, 25)
    assert not {"lambda_init", "max_episode_steps"} & set(stored)


def test_a_run_stored_with_the_old_names_resumes(tmp_path):
    run = train("pid_lagrangian", [*TINY, f"run_root={tmp_path}", "total_steps=400"])
    ckpt = latest_checkpoint(run)
    state = load_checkpoint(ckpt)
    state["config"] = {OLD.get(k, k): v for k, v in state["config"].items()}  # pre-rename run
    assert "lambda_init" in state["config"]
    save_checkpoint(ckpt, state)
    out = run_cli(
        "pid_lagrangian", [f"resume={run}", "total_steps=600", "progress=false"], cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert metrics(run)["step"].tolist() == [200, 400, 600]
    config = load_checkpoint(latest_checkpoint(run))["config"]
    assert config["init_lambda"] == 0.001 and "lambda_init" not in config


def test_old_keywords_of_the_multipliers_warn_and_work():
    with pytest.warns(FutureWarning, match="init= is now called init_lambda="):
        lam = LagrangeMultiplier(cost_limit=1.0, init=0.3)
    assert lam.value.item() == pytest.approx(0.3)
    with pytest.warns(FutureWarning, match="lagrangian_multiplier_init="):
        pid = PIDLagrangian(cost_limit=1.0, lagrangian_multiplier_init=0.25)
    assert pid.integral.item() == 0.25
    assert PIDLagrangian(cost_limit=1.0, init_lambda=0.25).integral.item() == 0.25
