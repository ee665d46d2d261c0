"""``python recipes/meta_train.py`` is the ``cmo`` program; a real velocity task end to end;
the quick preset of the README's main command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

from cmo_rl.cli import train
from cmo_rl.meta_schema import CONF_DIR, check_meta_config

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "env_ids=[MockCMDP-v0]",
    "eval_env_ids=[]",
    "episode_length=8",
    "vector_envs_per_task=2",
    "hidden_layers=[8]",
    "hidden_size=4",
    "total_meta_iters=2",
    "meta_batch_size=2",
    "inner_rollouts=2",
    "unroll_steps=2",
    "critic_steps=1",
    "meta_lr=0.05",
    "cost_limit=1.0",
    "log_interval=1",
    "meta_test.seeds=[1]",
    "eval_episodes=2",
    "progress=false",
]


def _compose(overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("default", overrides=overrides)


def _run_recipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "meta_train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _the_run(root: Path) -> Path:
    runs = [p for p in root.glob("meta_*/*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _metrics(run: Path) -> pd.DataFrame:
    df = pd.read_csv(run / "metrics.csv", float_precision="round_trip")
    return df[[c for c in df.columns if not c.startswith("time/")]]


def test_the_recipe_script_is_the_cmo_program(tmp_path):
    out = _run_recipe([*TINY, "run_root=script"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    script_run = _the_run(tmp_path / "script")
    in_process = train(_compose([*TINY, f"run_root={tmp_path / 'direct'}"]))
    pd.testing.assert_frame_equal(_metrics(script_run), _metrics(in_process), check_exact=True)
    tables = [
        (r / "meta_test.txt").read_text().split("\n\n", 1)[1] for r in (script_run, in_process)
    ]
    assert tables[0] == tables[1] and "change" in tables[0]  # the header holds wall times
    bad = _run_recipe(["meta_batch_size=0"], cwd=tmp_path)
    assert bad.returncode == 2 and "meta_batch_size: got 0" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_meta_training_on_a_real_velocity_task(tmp_path):
    args = [
        "env_ids=[SafetyHalfCheetahVelocity-v1,SafetySwimmerVelocity-v1]",
        "eval_env_ids=[SafetyHopperVelocity-v1]",
        "episode_length=10",
        "vector_envs_per_task=2",
        "hidden_layers=[8]",
        "meta_optimizer_type=pid",
        "total_meta_iters=2",
        "meta_batch_size=2",
        "inner_rollouts=2",
        "unroll_steps=2",
        "critic_steps=1",
        "cost_limit=0.25",
        "log_interval=1",
        "meta_test.seeds=[1]",
        "eval_episodes=2",
        "progress=false",
        "run_root=runs",
    ]
    out = _run_recipe(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = _the_run(tmp_path / "runs")
    assert (
        run.parent.name == "SafetyHalfCheetahVelocity-v1" and run.parent.parent.name == "meta_pid"
    )
    df = pd.read_csv(run / "metrics.csv")
    assert df["step"].tolist() == [1, 2]
    # 2 tasks x (2 rounds + final batch) x 2 envs x 10 steps per meta-iteration
    assert df["meta/env_steps"].tolist() == [120, 240]
    # balanced_tasks: every meta-batch of 2 holds both training tasks
    for env_id in ("SafetyHalfCheetahVelocity-v1", "SafetySwimmerVelocity-v1"):
        assert df[f"meta/cost/{env_id}"].ge(0).all() and df[f"meta/return/{env_id}"].notna().all()
    assert df["meta/grad_norm"].notna().all() and df["meta/KP"].gt(0).all()
    rows = pd.read_csv(run / "meta_test.csv")
    assert set(zip(rows["env_id"], rows["split"])) == {
        ("SafetyHalfCheetahVelocity-v1", "train"),
        ("SafetySwimmerVelocity-v1", "train"),
        ("SafetyHopperVelocity-v1", "held-out"),
    }
    assert rows["eval_cost"].ge(0).all() and rows["cost"].ge(0).all()
    assert "eval/episode_return/SafetyHopperVelocity-v1" in df.columns
    assert "cost limit d = 0.25 per 10-step episode (= 25 per 1000 steps)" in out.stdout


def test_quick_preset_is_valid_and_overridable():
    for kind in ("lstm", "pid"):
        cfg = _compose(["preset=quick", f"meta_optimizer_type={kind}"])
        check_meta_config(cfg)
        # the cost limit is the benchmark's 25 per 1000 steps, scaled to the short episodes
        assert cfg.cost_limit == 25.0 * cfg.episode_length / 1000
        assert cfg.meta_test.enabled and not cfg.meta_test.compare_baselines
        assert set(cfg.eval_env_ids).isdisjoint(cfg.env_ids)
    default = _compose([])
    quick = _compose(["preset=quick"])
    assert quick.total_meta_iters < default.total_meta_iters
    assert _compose(["preset=quick", "meta_lr=0.5", "total_meta_iters=3"]).meta_lr == 0.5
