"""Resume: interrupted + resumed runs give the same metrics.csv as an uninterrupted run; determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from recipe_helpers import RECIPES, REPO, TINY, load_recipe, metrics, the_run, train

from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint
from cmo_rl.training import lagrangian_ppo

#: Recipes whose loop is :func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`.
LAGRANGIAN_PPO = ("ppo_lagrangian", "pid_lagrangian", "ppo", "meta_lagrangian")

FIVE_EPOCHS = [*TINY, "total_steps=1000", "checkpoint_interval=2"]


def _interrupt_update(monkeypatch, name: str, at_call: int) -> None:
    """Make the recipe's ``at_call``-th minibatch update raise Ctrl-C *after* changing weights."""
    # the module whose loop calls minibatch_epochs: the PPO-Lagrangian recipes share theirs
    module = lagrangian_ppo if name in LAGRANGIAN_PPO else load_recipe(name)
    real = module.minibatch_epochs
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(module, "minibatch_epochs", interrupted)


@pytest.mark.parametrize("name", RECIPES)
def test_ctrl_c_mid_update_then_resume_equals_the_uninterrupted_run(name, tmp_path, monkeypatch):
    full = train(name, [*FIVE_EPOCHS, f"run_root={tmp_path / 'full'}"])
    with monkeypatch.context() as patch:
        _interrupt_update(patch, name, at_call=4)  # inside epoch 4 (index 3)
        with pytest.raises(KeyboardInterrupt):
            train(name, [*FIVE_EPOCHS, f"run_root={tmp_path / 'cut'}"])
    cut = the_run(tmp_path / "cut", name)
    # the exit checkpoint is the last *completed* epoch, not the half-updated weights
    assert load_checkpoint(latest_checkpoint(cut))["step"] == 600
    assert metrics(cut)["step"].tolist() == [200, 400, 600]

    resumed = train(name, [*FIVE_EPOCHS, f"run_root={tmp_path / 'cut'}", f"resume={cut}"])
    assert resumed == cut
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))
    times = pd.read_csv(resumed / "metrics.csv")["time/total"]
    assert times.is_monotonic_increasing  # cumulative over the resume
    assert (resumed / "config.resume-1.yaml").exists()


def test_resume_from_an_older_checkpoint_drops_the_later_rows(tmp_path, monkeypatch):
    name = "ppo_lagrangian"
    full = train(name, [*FIVE_EPOCHS, f"run_root={tmp_path / 'full'}"])
    with monkeypatch.context() as patch:
        _interrupt_update(patch, name, at_call=5)
        with pytest.raises(KeyboardInterrupt):
            train(name, [*FIVE_EPOCHS, f"run_root={tmp_path / 'cut'}"])
    cut = the_run(tmp_path / "cut", name)
    # as after a `kill -9`: the exit checkpoint (step 800) is lost, step 400 is the newest
    latest_checkpoint(cut).unlink()
    assert load_checkpoint(latest_checkpoint(cut))["step"] == 400
    assert metrics(cut)["step"].tolist() == [200, 400, 600, 800]
    resumed = train(name, [*FIVE_EPOCHS, f"run_root={tmp_path / 'cut'}", "resume=latest"])
    assert resumed == cut
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))


def test_resume_extends_a_finished_run(tmp_path):
    name = "pid_lagrangian"
    three = train(name, [*TINY, f"run_root={tmp_path}"])
    more = train(name, [*TINY, f"run_root={tmp_path}", "total_steps=800", f"resume={three}"])
    assert metrics(more)["step"].tolist() == [200, 400, 600, 800]
    assert load_checkpoint(latest_checkpoint(more))["config"]["total_steps"] == 800


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    name = "ppo_lagrangian"  # (the resume tests compare two runs of every recipe too)
    runs = [
        train(name, [*TINY, f"run_root={tmp_path / str(i)}", f"seed={seed}"])
        for i, seed in enumerate((3, 3, 4))
    ]
    a, b, c = (metrics(r) for r in runs)
    pd.testing.assert_frame_equal(a, b)
    assert not a["train/episode_return"].equals(c["train/episode_return"])
    pa, pb = (load_checkpoint(latest_checkpoint(r))["policy"] for r in runs[:2])
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow  # two subprocess runs (~15 s)
def test_sigterm_then_resume_from_the_command_line(tmp_path):
    """The real path: SIGTERM -> exit 143 with a checkpoint -> `resume=<dir>` -> same metrics."""
    args = [*TINY, "total_steps=2400", "checkpoint_interval=100"]
    full = train("ppo_lagrangian", [*args, f"run_root={tmp_path / 'full'}"])
    script = [sys.executable, str(REPO / "recipes" / "ppo_lagrangian.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*script, *args, f"run_root={tmp_path / 'cut'}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    csv = None
    while time.monotonic() < deadline:  # wait for the second logged epoch
        found = list((tmp_path / "cut").glob("ppo_lag/*/*/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            csv = found[0]
            break
        time.sleep(0.02)
    assert csv is not None, "the run never logged two epochs"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "interrupted (SIGTERM); exiting" in stderr
    cut = csv.parent
    saved = load_checkpoint(latest_checkpoint(cut))["step"]
    assert 200 <= saved < 2400
    out = subprocess.run(
        [*script, f"resume={cut}", f"run_root={tmp_path / 'cut'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pd.testing.assert_frame_equal(metrics(cut), metrics(full))


def test_recipe_prints_its_run_dir_and_refuses_a_corrupt_checkpoint(tmp_path):
    """Found by a new user: with progress=false a recipe printed nothing (where is the run?), and
    `resume=<dir>` with a corrupt newest checkpoint warned, fell back silently, rewrote the later
    metrics.csv rows and exited 0."""
    import hashlib

    from recipe_helpers import run_cli

    from cmo_rl.lifecycle.checkpoint import list_checkpoints

    root = tmp_path / "runs"
    args = [*TINY, "checkpoint_interval=1", f"run_root={root}"]
    first = run_cli("ppo_lagrangian", args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run = the_run(root, "ppo_lagrangian")
    assert first.stdout.splitlines()[0] == f"run directory: {run}"
    assert first.stdout.splitlines()[-1] == f"finished: {run}"

    *_, older, newest = list_checkpoints(run)
    newest.write_bytes(newest.read_bytes()[:-10])

    def tree():
        files = sorted(p for p in run.rglob("*") if p.is_file())
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = tree()
    again = run_cli("ppo_lagrangian", [*args, "total_steps=800", f"resume={run}"], cwd=tmp_path)
    assert again.returncode == 2, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert f"checkpoint {newest}: truncated" in again.stderr
    assert f"resume={older} continues from it" in again.stderr
    assert tree() == before  # nothing rewritten until the user chooses

    chosen = run_cli("ppo_lagrangian", [*args, "total_steps=800", f"resume={older}"], cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert chosen.stdout.splitlines()[0] == f"resumed {run} at step 400"
    assert metrics(run)["step"].tolist() == [200, 400, 600, 800]


def test_resume_from_the_command_line_needs_only_the_run_and_the_new_budget(tmp_path):
    """`resume=<dir> total_steps=N`: the yaml defaults of the other keys (steps_per_epoch=20000)
    must not be checked against each other — the stored config is the run's config."""
    from recipe_helpers import run_cli

    run = train("ppo_lagrangian", [*TINY, f"run_root={tmp_path}"])
    out = run_cli(
        "ppo_lagrangian", [f"resume={run}", "total_steps=800", "progress=false"], cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert metrics(run)["step"].tolist() == [200, 400, 600, 800]


def test_online_rule_resumes_exactly_and_writes_the_rule_it_ended_with(tmp_path, monkeypatch):
    """meta_lr > 0: the rule's meta-parameters, its Adam and the pending record of the last
    epoch are in the checkpoint, so Ctrl-C + resume equals the uninterrupted run."""
    from cmo_rl import pretrained
    from cmo_rl.objectives.learned_dual import rule_vector

    name, online = "meta_lagrangian", ["meta_lr=0.05", "rule_hidden=4", "mu=5.0"]
    full = train(name, [*FIVE_EPOCHS, *online, f"run_root={tmp_path / 'full'}"])
    meta_grad = metrics(full)["train/rule_meta_grad"]
    assert meta_grad.isna().tolist() == [True, False, False, False, False]  # from epoch 2 on
    with monkeypatch.context() as patch:
        _interrupt_update(patch, name, at_call=4)
        with pytest.raises(KeyboardInterrupt):
            train(name, [*FIVE_EPOCHS, *online, f"run_root={tmp_path / 'cut'}"])
    cut = the_run(tmp_path / "cut", name)
    assert not (cut / "rule.pt").exists()  # written when the run completes
    resumed = train(name, [*FIVE_EPOCHS, *online, f"run_root={tmp_path / 'cut'}", f"resume={cut}"])
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))

    learned, again = pretrained.load(full), pretrained.load(resumed)  # rule=<run dir> works
    assert torch.equal(rule_vector(learned), rule_vector(again))
    assert pretrained.describe(full)["provenance"]["env_steps"] == 1000
    # the run moved the rule away from where it started (PID-Lag's gains, zero offset)
    start = torch.tensor([0.1, 0.01, 0.01]).log()
    assert not torch.allclose(rule_vector(learned)[:3], start, atol=1e-4)
