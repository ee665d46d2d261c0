"""The shared run lifecycle: run directory printed, resume rules, one corrupt-checkpoint policy."""

from __future__ import annotations

import hashlib

import pytest

from cmo_rl.config import ConfigError
from cmo_rl.lifecycle import Run, locate_resume
from cmo_rl.lifecycle.checkpoint import checkpoint_path, list_checkpoints, save_checkpoint
from cmo_rl.lifecycle.logging import make_run_dir


def _cfg(root, **extra):
    return {"run_root": str(root), "env_id": "T", "resume": None, "keep_checkpoints": 5, **extra}


def _run(cfg, **kwargs):
    return Run(cfg, program="demo", task=lambda c: c["env_id"], resumable={"resume"}, **kwargs)


def _tree(path):
    return {
        p.relative_to(path): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _three_steps(root, capsys=None):
    run = _run(_cfg(root))
    with run.open():
        for step in (10, 20, 30):
            run.logger.log_scalars({"train/x": float(step)}, step=step)
            run.snapshot(step, {"w": [step]})
            run.save()
    return run.run_dir


def test_run_prints_its_directory_at_start_resume_and_exit(tmp_path, capsys):
    run_dir = _three_steps(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out == [f"run directory: {run_dir}", f"finished: {run_dir}"]

    run = _run(_cfg(tmp_path, resume=str(run_dir)))
    with pytest.raises(KeyboardInterrupt), run.open():
        raise KeyboardInterrupt
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"resumed {run_dir} at step 30",
        f"interrupted (SIGINT): {run_dir} (checkpoint at step 30; continue with resume={run_dir})",
    ]


def test_checkpoint_holds_the_snapshot_and_the_common_entries(tmp_path):
    run_dir = _three_steps(tmp_path)
    run = _run(_cfg(tmp_path, resume="latest"))
    assert run.run_dir == run_dir and run.start_step == 30
    assert run.state["w"] == [30] and run.state["config"]["env_id"] == "T"
    assert {"rng", "time_total"} <= set(run.state)
    with pytest.raises(ValueError, match="reserved"):
        run.snapshot(1, {"rng": 0})


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_newest_checkpoint_is_refused_naming_the_valid_one(tmp_path, damage):
    """Before: a recipe warned, fell back to the previous checkpoint silently and rewrote the
    later rows of metrics.csv. Now every program refuses, names the bad file, the newest valid
    one and the exact resume= that uses it, and changes nothing."""
    run_dir = _three_steps(tmp_path)
    newest = list_checkpoints(run_dir)[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[:-10] if damage == "truncate" else b"garbage" + data[7:])
    before = _tree(run_dir)
    with pytest.raises(ConfigError) as info:
        _run(_cfg(tmp_path, resume=str(run_dir)))
    (problem,) = info.value.problems
    valid = checkpoint_path(run_dir, 20)
    assert f"checkpoint {newest}" in problem
    assert f"nothing in {run_dir} was changed" in problem
    assert f"The newest valid checkpoint is {valid}: resume={valid} continues from it" in problem
    assert _tree(run_dir) == before

    # the user's choice: resume from that file (the later rows of metrics.csv are then dropped)
    run = _run(_cfg(tmp_path, resume=str(valid)))
    assert run.run_dir == run_dir and run.start_step == 20


def test_no_valid_checkpoint_at_all_says_so(tmp_path):
    run_dir = make_run_dir(tmp_path, "demo", "T")
    path = save_checkpoint(checkpoint_path(run_dir, 5), {"step": 5, "config": {}})
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ConfigError, match="There is no older valid checkpoint"):
        _run(_cfg(tmp_path, resume=str(run_dir)))


def test_resume_latest_finds_the_newest_run_on_any_task(tmp_path, monkeypatch):
    """``cmo resume=latest`` used to look only under the default env_ids' first task."""
    old = make_run_dir(tmp_path, "demo", "A")
    save_checkpoint(checkpoint_path(old, 1), {"step": 1})
    monkeypatch.setattr("cmo_rl.lifecycle.logging.time.strftime", lambda fmt: "29990101-000000")
    new = make_run_dir(tmp_path, "demo", "B")
    ckpt = save_checkpoint(checkpoint_path(new, 2), {"step": 2})
    assert locate_resume("latest", run_root=tmp_path, program="demo") == (new, ckpt)
    with pytest.raises(ConfigError, match="no run of 'other'"):
        locate_resume("latest", run_root=tmp_path, program="other")


def test_resume_refuses_a_checkpoint_of_another_program(tmp_path):
    run_dir = make_run_dir(tmp_path, "demo", "T")
    save_checkpoint(checkpoint_path(run_dir, 5), {"step": 5, "config": {}})
    with pytest.raises(ConfigError, match=r"is not a checkpoint of demo .* lacks \['epoch'\]"):
        _run(_cfg(tmp_path, resume=str(run_dir)), required_state=("config", "step", "epoch"))


def test_check_runs_on_the_effective_config(tmp_path):
    def check(cfg):
        raise ConfigError([f"env_id: {cfg['env_id']} refused"])

    with pytest.raises(ConfigError, match="env_id: T refused"):
        _run(_cfg(tmp_path), check=check)
