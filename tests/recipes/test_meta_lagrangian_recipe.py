"""``recipes/meta_lagrangian.py``: a fresh rule trains as PID-Lag; ``rule=`` loads a learned one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from recipe_helpers import TINY, metrics, run_cli, the_run, train

from cmo_rl import pretrained
from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint
from cmo_rl.objectives.learned_dual import LearnedLagrangian, rule_vector, set_rule_vector


def test_a_fresh_rule_trains_as_pid_lagrangian(tmp_path):
    """rule=null is PID-Lag: the same lambda every epoch, so the same training (to float32
    rounding of exp(log K) in the gains)."""
    pid = metrics(train("pid_lagrangian", [*TINY, f"run_root={tmp_path / 'pid'}"]))
    fresh = metrics(train("meta_lagrangian", [*TINY, f"run_root={tmp_path / 'meta'}"]))
    assert (fresh["train/rule_correction"] == 0.0).all()
    for column in ("train/lambda", "train/episode_cost", "train/episode_return", "train/pid_i"):
        pd.testing.assert_series_equal(fresh[column], pid[column], rtol=1e-5, atol=1e-6)


def test_rule_path_trains_with_that_rule_and_a_bad_rule_is_refused(tmp_path):
    rule = set_rule_vector(LearnedLagrangian(25.0, hidden=4), torch.linspace(-1, 1, 39))
    path = pretrained.save(rule, tmp_path / "mine.pt", {"command": "test"})
    run = train("meta_lagrangian", [*TINY, f"rule={path}", f"run_root={tmp_path / 'runs'}"])
    state = load_checkpoint(latest_checkpoint(run))["multiplier"]
    used = LearnedLagrangian(3.0, hidden=4, horizon=3)
    used.load_state_dict(state)
    assert torch.equal(rule_vector(used), rule_vector(rule))  # the file's meta-parameters
    assert float(used.cost_limit) == 3.0 and used.horizon == 3  # this run's limit and epochs

    (tmp_path / "broken.pt").write_bytes(b"not a rule")
    out = run_cli("meta_lagrangian", [*TINY, f"rule={tmp_path / 'broken.pt'}",
                                      f"run_root={tmp_path / 'bad'}"], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "rule:" in out.stderr and "broken.pt" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bad").exists()


def test_population_of_a_learned_rule(tmp_path):
    rule = set_rule_vector(LearnedLagrangian(25.0, hidden=0), torch.tensor(
        [-1.0, -3.0, -3.0, 2.0, 2.0, 0.7]))  # fmt: skip
    path = pretrained.save(rule, tmp_path / "r.pt", {})
    runs = train("meta_lagrangian", [*TINY, f"rule={path}", "seeds=[0,1]",
                                     f"run_root={tmp_path / 'runs'}"])  # fmt: skip
    assert len(runs) == 2
    for run in runs:
        df = metrics(run)
        assert df["step"].tolist() == [200, 400, 600]
        assert df["train/lambda"].iloc[0] == pytest.approx(
            df["train/pid_p"].iloc[0] + df["train/pid_i"].iloc[0] + df["train/pid_d"].iloc[0] + 0.7,
            abs=1e-5,
        )


def test_shipped_rules_load_and_describe_what_they_apply():
    assert "online-goal1" in pretrained.available()
    for name in pretrained.available():
        info = pretrained.describe(name)
        assert {"command", "tasks", "env_steps", "commit"} <= set(info["provenance"]), name
        rule = pretrained.load(name, cost_limit=25.0, horizon=50)
        assert isinstance(rule, LearnedLagrangian)
        kp, ki, kd = rule.gains.tolist()
        assert (info["learned"]["kp"], info["learned"]["ki"], info["learned"]["kd"]) == (kp, ki, kd)
        assert info["learned"]["offset"] == float(rule.offset)


def test_the_run_helper_finds_meta_lag(tmp_path):
    train("meta_lagrangian", [*TINY, "total_steps=200", f"run_root={tmp_path}"])
    assert the_run(tmp_path, "meta_lagrangian").parent.name == "MockCMDP-v0"


def test_an_online_rule_learns_in_every_learner_of_a_population(tmp_path):
    """``meta_lr > 0`` with ``seeds=[...]``: each learner's rule learns on its own run and
    each run directory gets the rule it ended with."""
    out = run_cli("meta_lagrangian", [*TINY, "meta_lr=0.05", "seeds=[0,1]", "rule_hidden=0",
                                      f"run_root={tmp_path / 'runs'}"], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    written = [line.split(": ", 1)[1] for line in out.stdout.splitlines()
               if line.startswith("learned rule: ")]  # fmt: skip
    assert len(written) == 2 and len({Path(p).parent for p in written}) == 2
    rules = [rule_vector(pretrained.load(p)) for p in written]
    assert not torch.equal(rules[0], rules[1])  # two seeds, two rules


def test_a_primal_rule_replaces_the_actors_adam(tmp_path, monkeypatch):
    """``primal_rule=<file>``: a fresh rule trains as Adam (to float32 rounding); a rule that
    doubles Adam's step trains another policy; the optimizer state resumes exactly; a bad file
    is refused before any run; a population trains each learner as its single run."""
    import math

    from cmo_rl.objectives.learned_primal import LearnedPrimalRule, save_primal_rule
    from cmo_rl.training import lagrangian_ppo

    adam = metrics(train("meta_lagrangian", [*TINY, f"run_root={tmp_path / 'adam'}"]))
    fresh = save_primal_rule(LearnedPrimalRule(hidden=4), tmp_path / "fresh.pt", {})
    same = metrics(train("meta_lagrangian", [*TINY, f"primal_rule={fresh}",
                                             f"run_root={tmp_path / 'fresh'}"]))  # fmt: skip
    for column in ("train/episode_return", "train/loss_objective", "train/kl"):
        pd.testing.assert_series_equal(same[column], adam[column], rtol=1e-4, atol=1e-6)

    double = LearnedPrimalRule(hidden=4, output_scale=1.0)
    with torch.no_grad():
        double.net[2].bias[0] = math.log(2.0)
    doubled = save_primal_rule(double, tmp_path / "double.pt", {})
    args = [*TINY, f"primal_rule={doubled}", "total_steps=1000", "checkpoint_interval=2"]
    full = metrics(train("meta_lagrangian", [*args, f"run_root={tmp_path / 'double'}"]))
    assert not full["train/kl"].head(3).equals(adam["train/kl"])  # another optimizer

    real, calls = lagrangian_ppo.minibatch_epochs, {"n": 0}

    def interrupted(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return out

    with monkeypatch.context() as patch:
        patch.setattr(lagrangian_ppo, "minibatch_epochs", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train("meta_lagrangian", [*args, f"run_root={tmp_path / 'cut'}"])
    cut = the_run(tmp_path / "cut", "meta_lagrangian")
    resumed = train("meta_lagrangian", [*args, f"run_root={tmp_path / 'cut'}", f"resume={cut}"])
    pd.testing.assert_frame_equal(metrics(resumed), full)

    out = run_cli("meta_lagrangian", [*TINY, f"primal_rule={tmp_path / 'nope.pt'}", "seeds=[0,1]",
                                      f"run_root={tmp_path / 'bad'}"], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "primal_rule:" in out.stderr and "nope.pt" in out.stderr
    assert not (tmp_path / "bad").exists()

    # as a population (seeds=[...]), every learner's actor takes the rule's steps: learner 0
    # is the single seed-0 run to float32 rounding (tests/population has the exact checks)
    pop = train("meta_lagrangian", [*args, "seeds=[0,1]", f"run_root={tmp_path / 'pop'}"])
    pd.testing.assert_frame_equal(metrics(pop[0]), full, rtol=1e-4, atol=1e-6)
