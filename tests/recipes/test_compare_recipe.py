"""recipes/compare.py end to end on the mock CMDP: runs, reuse, crash report, table, figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cmo_rl.lifecycle.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _compare(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "compare.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # 8 subprocesses (torch + TorchRL imports each): ~40 s on an idle 2-core box
def test_compare_runs_reuses_and_reports_crashes_on_the_mock(tmp_path):
    from cmo_rl.meta import make_meta_optimizer

    meta_cfg = {"meta_optimizer_type": "pid", "init_etaR": 0.05, "env_ids": ["OtherTask-v0"]}
    ckpt = save_checkpoint(
        tmp_path / "pid.pt",
        {"meta_optimizer": make_meta_optimizer(**meta_cfg).state_dict(), "config": meta_cfg},
    )
    args = [
        f"run_root={tmp_path / 'runs'}",
        "study=smoke",
        "tasks=[MockCMDP-v0]",
        "methods=[ppo_lag,meta_pid,cpo]",
        "seeds=[0,1]",
        "total_steps=150",  # 3 updates of 2 envs x 25 steps
        "num_envs=2",
        "episode_length=25",
        "cost_limit=3.0",
        "eval_interval=2",
        "eval_episodes=2",
        "hidden_layers=[8]",
        'overrides.recipes=["minibatch_size=25","update_iters=1"]',
        'overrides.cpo=["cg_iters=0"]',  # an invalid recipe config: every cpo run exits 2
        'overrides.ppo_lag=["compile=false"]',  # no compile warm-up in a test
        f"meta.checkpoints.pid={ckpt}",
        "jobs=2",
    ]
    out = _compare(args, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = tmp_path / "runs" / "smoke"
    table = pd.read_csv(study / "summary.csv")
    assert table["method"].tolist() == ["ppo_lag", "meta_pid", "cpo"]
    assert table["seeds"].tolist() == [2, 2, 0] and table["crashed"].tolist() == [0, 0, 2]
    assert table["final_step"].tolist()[:2] == [150.0, 150.0]
    assert table[["eval_return", "eval_cost", "eval_return_ci95"]].iloc[:2].notna().all().all()
    # the crash: in the table and the console, with the path of a log that holds the reason
    log = study / "MockCMDP-v0" / "cpo" / "seed0" / "log.txt"
    assert f"seed0: exit code 2 (log: {log})" in table.loc[2, "crashed_runs"]
    assert "cg_iters" in log.read_text()
    assert f"CRASHED  MockCMDP-v0/cpo/seed1: exit code 2; log: {log.parent.parent}" in out.stdout
    summary = (study / "summary.md").read_text()
    assert "### MockCMDP-v0 (held out from meta-training)" in summary
    assert "| meta-PID |" in summary and "| CPO | - |" in summary and "| 0/2 |" in summary
    for name in ("curves_MockCMDP-v0.png", "scatter_MockCMDP-v0.png"):
        assert (study / "figures" / name).stat().st_size > 10_000
    run = study / "MockCMDP-v0" / "meta_pid" / "seed1"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "done" and Path(status["run_dir"]).parent.name == "MockCMDP-v0"
    record = json.loads((study / "study.json").read_text())
    assert record["status"]["MockCMDP-v0/cpo/seed0"] == "crashed" and record["wall_s_this_call"] > 0
    frame = pd.read_csv(Path(status["run_dir"]) / "metrics.csv")
    assert frame["step"].tolist() == [50, 100, 150]
    # ppo_lag's two seeds were one population process, each seed a run directory of its own
    population = study / "MockCMDP-v0" / "ppo_lag" / "population"
    members = json.loads((population / "status.json").read_text())["run_dir"]
    assert sorted(members) == ["0", "1"] and members["0"] != members["1"]
    assert "seeds=[0,1]" in json.loads((population / "command.json").read_text())["argv"]

    # a second call reuses the finished runs: nothing runs, nothing is rewritten
    mtime = (run / "status.json").stat().st_mtime_ns
    again = _compare([a.replace(",cpo]", "]") for a in args], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 runs: 3 reused, 0 to run, 2 at a time" in again.stdout  # ppo_lag: one population
    assert (run / "status.json").stat().st_mtime_ns == mtime
    assert pd.read_csv(study / "summary.csv")["eval_return"].iloc[:2].tolist() == (
        table["eval_return"].iloc[:2].tolist()
    )

    # an interrupted population (no status.json, its newest checkpoints of update 2) resumes
    # from them, the recipe accepting its original overrides beside resume=
    (population / "status.json").unlink()
    for member in members.values():
        (Path(member) / "checkpoints" / "step_000000000150.pt").unlink()
    resumed = _compare([a.replace(",cpo]", "]") for a in args], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume   MockCMDP-v0/ppo_lag/seeds0,1 from " in resumed.stdout
    assert json.loads((population / "status.json").read_text())["status"] == "done"
    assert pd.read_csv(study / "summary.csv")["eval_return"].iloc[:2].tolist() == (
        table["eval_return"].iloc[:2].tolist()
    )


def test_compare_rejects_a_bad_config_before_any_run(tmp_path):
    out = _compare([f"run_root={tmp_path}", "methods=[ppo_lagg]", "seeds=[0,0]"], tmp_path)
    assert out.returncode == 2
    assert "methods" in out.stderr and "seeds" in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())


def test_compare_multirun_gives_each_job_its_own_study(tmp_path):
    # aggregate_only: nothing runs; the planned runs are reported as missing, not dropped
    args = ["-m", f"run_root={tmp_path}", "tasks=[MockCMDP-v0]", "methods=[cpo]", "seeds=[0]",
            "num_envs=2", "episode_length=25", "total_steps=100,200", "aggregate_only=true"]  # fmt: skip
    out = _compare(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for study, updates in (("steps100", 2), ("steps200", 4)):
        assert f"study {tmp_path / study}: 1 methods x 1 tasks x 1 seeds" in out.stdout
        assert f"({updates} updates of 50 steps)" in out.stdout
        summary = (tmp_path / study / "summary.md").read_text()
        assert "| CPO | - |" in summary and "- CPO seed0: not run (or interrupted)" in summary
    assert (tmp_path / "multirun" / "multirun.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun", "steps100", "steps200"]


def test_compare_learned_rule_trains_the_given_rule_as_a_population(tmp_path):
    """~25 s: ``learned_rule`` runs ``recipes/meta_lagrangian.py rule=<rule>`` for every seed
    as one population; the rule's own tasks mark the others held out; a missing rule is one
    config error before any run."""
    from cmo_rl import pretrained
    from cmo_rl.objectives.learned_dual import LearnedLagrangian

    rule = pretrained.save(
        LearnedLagrangian(3.0, offset=4.0, hidden=0), tmp_path / "rule.pt", {"tasks": ["Other-v0"]}
    )
    args = [
        f"run_root={tmp_path / 'runs'}", "study=rule", "tasks=[MockCMDP-v0]",
        "methods=[learned_rule]", "seeds=[0,1]", "total_steps=100", "num_envs=2",
        "episode_length=25", "cost_limit=3.0", "eval_interval=2", "eval_episodes=1",
        "hidden_layers=[8]", 'overrides.recipes=["minibatch_size=25","update_iters=1"]',
        'overrides.learned_rule=["compile=false"]',
    ]  # fmt: skip
    missing = _compare(args, tmp_path)
    assert (
        missing.returncode == 2 and "rule: the learned_rule methods need a rule" in missing.stderr
    )
    assert not (tmp_path / "runs").exists()
    out = _compare([*args, f"rule={rule}"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = tmp_path / "runs" / "rule"
    table = pd.read_csv(study / "summary.csv")
    assert table["method"].tolist() == ["learned_rule"] and table["seeds"].tolist() == [2]
    assert "### MockCMDP-v0 (held out from meta-training)" in (study / "summary.md").read_text()
    status = json.loads((study / "MockCMDP-v0" / "learned_rule" / "population" / "status.json")
                        .read_text())  # fmt: skip
    for member in status["run_dir"].values():
        assert f"rule: {rule}" in (Path(member) / "config.yaml").read_text()
        lam = pd.read_csv(Path(member) / "metrics.csv")["train/lambda"]
        assert lam.iloc[0] >= 4.0  # the rule's offset: the loaded rule drives lambda
