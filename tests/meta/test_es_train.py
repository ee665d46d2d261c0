"""``cmo meta_algorithm=es``: the run's files, exact resume, the rule it ships, bad config."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cmo_rl import pretrained
from cmo_rl.cli import train
from cmo_rl.config import ConfigError
from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint
from cmo_rl.meta_schema import _rule_learners_run_on_cpu
from cmo_rl.objectives.learned_dual import rule_vector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_cli import compose  # noqa: E402  (cmo's Hydra composition, as the CLI does it)

#: 2 pairs x 1 seed = 4 members on one task; 4 epochs of 100 steps each.
TINY_ES = [
    "meta_algorithm=es",
    "env_ids=[MockCMDP-v0]",
    "eval_env_ids=[]",
    "episode_length=25",
    "cost_limit=3.0",
    "es.generations=3",
    "es.pairs=2",
    "es.seeds=1",
    "es.rule_hidden=4",
    "es.sigma=0.3",
    "es.inner.total_steps=400",
    "es.inner.steps_per_epoch=100",
    "es.inner.num_envs=2",
    "es.inner.update_iters=1",
    "+es.inner.hidden_layers=[8]",
    "+es.inner.minibatch_size=50",
    "meta_test.seeds=[7]",
    "progress=false",
    "seed=2",
]


def _metrics(run: Path) -> pd.DataFrame:
    df = pd.read_csv(run / "metrics.csv")
    return df.drop(columns=[c for c in df.columns if c.startswith("time/")])


def test_es_run_writes_fitness_rule_and_meta_test_and_resumes_exactly(tmp_path):
    full = train(compose([*TINY_ES, f"run_root={tmp_path / 'full'}"]))
    assert full.parent.parent.name == "meta_es"
    df = _metrics(full)
    assert df["step"].tolist() == [1, 2, 3]
    assert df["meta/env_steps"].tolist() == [1600, 3200, 4800]  # 4 members x 400 steps
    fitness = pd.read_csv(full / "generations" / "0000" / "fitness.csv")
    assert sorted(fitness["rule"]) == [0, 1, 2, 3] and fitness["seed"].nunique() == 1
    for row in fitness.itertuples():
        assert (Path(row.run_dir) / "metrics.csv").is_file()
    # the shipped rule is the ES center of the last checkpoint, with its provenance
    center = load_checkpoint(latest_checkpoint(full))["es_state"]["center"]
    rule = pretrained.load(full)
    assert torch.allclose(rule_vector(rule), center)
    info = pretrained.describe(full)["provenance"]
    assert info["tasks"] == ["MockCMDP-v0"] and info["generations"] == 3
    assert info["env_steps"] == 4800
    assert info["inner"]["total_steps"] == 400 and "env_id" not in info["inner"]  # set per run
    meta_test = pd.read_csv(full / "meta_test.csv")
    assert sorted(meta_test["rule"].unique()) == ["initial (PID-Lag)", "learned"]
    assert (full / "meta_test.txt").read_text().count("MockCMDP-v0") == 1

    part = train(compose([*TINY_ES, "es.generations=2", "meta_test.enabled=false",
                          f"run_root={tmp_path / 'part'}"]))  # fmt: skip
    resumed = train(compose([*TINY_ES, f"resume={part}", "meta_test.enabled=false",
                             f"run_root={tmp_path / 'part'}"]))  # fmt: skip
    assert resumed == part
    pd.testing.assert_frame_equal(_metrics(resumed), df)
    assert torch.equal(rule_vector(pretrained.load(part)), rule_vector(rule))


def test_bad_es_config_is_one_message(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(compose([*TINY_ES, "es.pairs=0", "es.sigma=-1", f"run_root={tmp_path}"]))
    assert [p.split(":")[0] for p in err.value.problems] == ["es.pairs", "es.sigma"]
    assert (
        "meta_algorithm=es"
        in _rule_learners_run_on_cpu({"meta_algorithm": "es", "device": "cuda:0"})[0]
    )
    assert _rule_learners_run_on_cpu({"meta_algorithm": "bilevel", "device": "cuda:0"}) == []
    with pytest.raises(ConfigError, match=r"es.inner: \['bogus'\] are not keys"):
        train(compose([*TINY_ES, "+es.inner.bogus=1", f"run_root={tmp_path}"]))
    with pytest.raises(ConfigError, match="es.inner: update_iters"):
        train(compose([*TINY_ES, "es.inner.update_iters=0", f"run_root={tmp_path}"]))
    assert not list(Path(tmp_path).rglob("metrics.csv"))  # nothing was started


def test_es_meta_trains_a_primal_rule_beside_a_given_lambda_rule(tmp_path):
    """``es.target=primal``: the members differ in their actors' optimizer (the primal rule,
    starting as Adam), keep the lambda rule ``es.inner.rule``, and the run writes
    ``primal_rule.pt`` (the ES center) that the recipe's ``primal_rule=`` loads; switching the
    target of a run on resume is refused; ``es.inner.rule`` is refused for the dual target."""
    from cmo_rl.meta_es import rule_metrics
    from cmo_rl.objectives.learned_primal import load_primal_rule, primal_rule_vector

    primal = [*TINY_ES, "es.target=primal", "es.primal_hidden=4", "es.generations=2",
              "+es.inner.rule=online-goal1", f"run_root={tmp_path / 'primal'}"]  # fmt: skip
    run = train(compose(primal))
    df = _metrics(run)
    assert "rule/kp" not in df and df["step"].tolist() == [1, 2]
    assert df["rule/primal_scale"].ne(1.0).all()  # the rule left Adam in the first step
    fitness = pd.read_csv(run / "generations" / "0000" / "fitness.csv")
    assert fitness["final_return"].nunique() == 4  # four optimizers, four different runs
    member = load_checkpoint(latest_checkpoint(Path(fitness["run_dir"][0])))
    assert member["config"]["rule"] == "online-goal1"  # the lambda rule the members keep
    assert "exp_avg_slow" in next(iter(member["optimizer"]["state"].values()))
    center = load_checkpoint(latest_checkpoint(run))["es_state"]["center"]
    rule = load_primal_rule(run)  # the run directory loads as its primal_rule.pt
    assert torch.equal(primal_rule_vector(rule), center) and rule.hidden == 4
    assert rule_metrics(rule)["rule/primal_scale"] == pytest.approx(
        df["rule/primal_scale"].iloc[-1]
    )
    assert not (run / "rule.pt").exists()
    assert sorted(pd.read_csv(run / "meta_test.csv")["rule"].unique()) == [
        "initial (Adam)",
        "learned",
    ]

    with pytest.raises(ConfigError, match="resume: the checkpoint does not fit"):
        train(
            compose(
                [*TINY_ES, "es.generations=3", f"resume={run}", f"run_root={tmp_path / 'primal'}"]
            )
        )
    with pytest.raises(ConfigError, match=r"es.inner: \['rule'\] are set by cmo"):
        train(compose([*TINY_ES, "+es.inner.rule=online-goal1", f"run_root={tmp_path / 'dual'}"]))
