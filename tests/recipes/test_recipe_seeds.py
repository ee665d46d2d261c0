"""``seeds=[...]`` through the recipes' command lines: one run directory per seed, each equal
to the single-seed run; Ctrl-C-free resume of the whole population; CPO's seeds in turn."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from recipe_helpers import RUN_NAMES, TINY, metrics, run_cli, train


def _runs(root, name):
    return sorted(p for p in (root / RUN_NAMES[name]).glob("*/*") if p.is_dir())


@pytest.mark.parametrize("name", ["ppo", "pid_lagrangian"])
def test_seeds_on_the_command_line_run_a_population(tmp_path, name):
    out = run_cli(name, [*TINY, "seeds=[0,2]", f"run_root={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    dirs = _runs(tmp_path, name)
    assert len(dirs) == 2
    assert out.stdout.count("run directory:") == 2 and out.stdout.count("finished:") == 2
    index = json.loads((dirs[0] / "population.json").read_text())
    assert index["seeds"] == [0, 2] and sorted(index["run_dirs"]) == [str(d) for d in dirs]
    for seed, run_dir in zip(index["seeds"], map(type(dirs[0]), index["run_dirs"])):
        single = train(name, [*TINY, f"seed={seed}", f"run_root={tmp_path / 'single'}"])
        pd.testing.assert_frame_equal(metrics(run_dir), metrics(single), rtol=1e-4, atol=1e-6)

    # resume=latest continues every member of the population
    args = ["resume=latest", "total_steps=800", "progress=false", f"run_root={tmp_path}"]
    out = run_cli(name, args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("resumed ") == 2
    for run_dir in dirs:
        assert metrics(run_dir)["step"].tolist() == [200, 400, 600, 800]


def test_bad_seeds_are_refused_in_one_message(tmp_path):
    out = run_cli(
        "ppo_lagrangian",
        [*TINY, "seeds=[1,1]", "compile=true", "num_envs=3", f"run_root={tmp_path}"],
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "seeds: got [1, 1]: each seed at most once" in out.stderr
    assert "steps_per_epoch: got 200, must be a multiple of num_envs (3)" in out.stderr
    out = run_cli("ppo", [*TINY, "compile=true", f"run_root={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 2 and "compile: true compiles the population update" in out.stderr
    assert not (tmp_path / "ppo").exists() and not (tmp_path / "ppo_lag").exists()


def test_cpo_runs_its_seeds_one_after_another(tmp_path):
    dirs = train("cpo", [*TINY, "total_steps=200", "seeds=[0,1]", f"run_root={tmp_path}"])
    assert len(dirs) == 2 and dirs == sorted(dirs)
    single = train("cpo", [*TINY, "total_steps=200", "seed=1", f"run_root={tmp_path / 's'}"])
    pd.testing.assert_frame_equal(metrics(dirs[1]), metrics(single), check_exact=True)
