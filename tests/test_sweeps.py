"""Hydra multirun sweeps of the baseline recipes: joblib locally, submitit for SLURM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "env_id=MockCMDP-v0",
    "num_envs=4",
    "episode_length=25",
    "steps_per_epoch=200",
    "total_steps=400",
    "minibatch_size=50",
    "update_iters=2",
    "eval_interval=2",
    "eval_episodes=2",
    "cost_limit=3.0",
    "progress=false",
]


def _recipe(name: str, args: list[str], cwd: Path, timeout: float = 400):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # two recipe processes plus the launcher: ~50 s on the shared 2-core machine
def test_joblib_multirun_makes_one_run_directory_per_job(tmp_path):
    runs = tmp_path / "runs"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY]
    out = _recipe("ppo_lagrangian", [*args, f"run_root={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr

    run_dirs = sorted(p for p in (runs / "ppo_lag" / "MockCMDP-v0").iterdir() if p.is_dir())
    assert len(run_dirs) == 2
    seeds = sorted(yaml.safe_load((d / "config.yaml").read_text())["seed"] for d in run_dirs)
    assert seeds == [0, 1]
    for run in run_dirs:
        df = pd.read_csv(run / "metrics.csv")
        assert df["step"].tolist() == [200, 400]
        assert df["train/num_episodes"].tolist() == [8, 8]
    returns = [pd.read_csv(d / "metrics.csv")["train/episode_return"].iloc[0] for d in run_dirs]
    assert returns[0] != returns[1]  # the seeds really differ

    # the sweep folder holds the sweep's record only; nothing lands in the working directory
    (sweep,) = (runs / "multirun").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml"]
    sweep_cfg = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert "seed=0,1" in sweep_cfg["hydra"]["overrides"]["task"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_every_recipe_has_the_same_hydra_run_and_sweep_settings():
    blocks = [
        yaml.safe_load((REPO / "recipes" / "config" / f"{n}.yaml").read_text())["hydra"]
        for n in ("ppo_lagrangian", "pid_lagrangian", "cpo")
    ]
    assert blocks[0] == blocks[1] == blocks[2]
    assert blocks[0]["output_subdir"] is None and blocks[0]["run"] == {"dir": "."}
    assert blocks[0]["sweep"]["subdir"] == "."


def test_submitit_slurm_launcher_composes_with_the_recipe(tmp_path):
    name = "ppo_lagrangian"
    args = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=cpu",
        "hydra.launcher.cpus_per_task=4",
        "run_root=/scratch/runs",
        "--cfg",
        "hydra",
    ]
    out = _recipe(name, args, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    hydra_cfg = yaml.safe_load(out.stdout)["hydra"]
    launcher = hydra_cfg["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["cpus_per_task"]) == ("cpu", 4)
    assert hydra_cfg["sweep"]["dir"].startswith("${run_root}/multirun/")
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert list(tmp_path.iterdir()) == []  # --cfg runs nothing
