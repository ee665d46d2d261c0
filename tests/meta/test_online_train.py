"""``cmo meta_algorithm=online``: the chain carries one rule, Ctrl-C + resume is exact, bad config."""

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
from cmo_rl.training import lagrangian_ppo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_cli import compose  # noqa: E402  (cmo's Hydra composition, as the CLI does it)

#: 3 links on MockCMDP-v0 (seeds 2, 3, 4), 4 epochs of 100 steps each.
TINY_ONLINE = [
    "meta_algorithm=online",
    "env_ids=[MockCMDP-v0]",
    "eval_env_ids=[]",
    "episode_length=25",
    "cost_limit=1.0",
    "mu=5.0",
    "online.passes=3",
    "online.lr=0.1",
    "online.rule_hidden=4",
    "online.inner.total_steps=400",
    "online.inner.steps_per_epoch=100",
    "online.inner.num_envs=2",
    "online.inner.update_iters=1",
    "+online.inner.hidden_layers=[8]",
    "+online.inner.minibatch_size=50",
    "meta_test.seeds=[7]",
    "progress=false",
    "seed=2",
]


def _metrics(run: Path) -> pd.DataFrame:
    df = pd.read_csv(run / "metrics.csv", float_precision="round_trip")
    return df.drop(columns=[c for c in df.columns if c.startswith("time/")])


def _cut_chain(monkeypatch, owner, name: str, args: list[str], root: Path, at_call: int) -> Path:
    """Run the chain with ``owner.name`` raising Ctrl-C after its ``at_call``-th call (the
    weights already changed); returns the interrupted chain's run directory."""
    real, calls = getattr(owner, name), {"n": 0}

    def interrupted(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return out

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(compose([*args, f"run_root={root}"]))
    return next((root / "meta_online" / "MockCMDP-v0").iterdir())


def _link_runs(chain: Path) -> list[Path]:
    """The run directory of every link, in chain order (one run per link)."""
    runs = []
    for link in sorted((chain / "links").iterdir()):
        found = [p for p in (link / "meta_lag" / "MockCMDP-v0").iterdir() if p.is_dir()]
        assert len(found) == 1, found
        runs.append(found[0])
    return runs


def test_the_chain_carries_one_rule_through_online_runs_and_meta_tests_it(tmp_path):
    chain = train(compose([*TINY_ONLINE, f"run_root={tmp_path}"]))
    assert chain.parent.parent.name == "meta_online"
    df = _metrics(chain)
    assert df["step"].tolist() == [1, 2, 3]
    assert df["meta/env_steps"].tolist() == [400, 800, 1200]
    assert df["online/rule_meta_grad"].notna().all()

    links = _link_runs(chain)
    assert [p.parent.parent.parent.name for p in links] == [
        "0000-MockCMDP-v0", "0001-MockCMDP-v0", "0002-MockCMDP-v0",
    ]  # fmt: skip
    initial = load_checkpoint(latest_checkpoint(chain))["initial_rule"]
    start = [rule_vector(pretrained.load(p.parent.parent.parent / "start_rule.pt")) for p in links]
    ended = [rule_vector(pretrained.load(p)) for p in links]  # each link's rule.pt
    assert torch.equal(start[0], initial)  # link 0 starts from PID-Lag ...
    assert torch.equal(start[1], ended[0]) and torch.equal(start[2], ended[1])  # ... then carries
    assert not torch.allclose(start[0], ended[0])  # the link learned online
    for k, run in enumerate(links):
        link_cfg = pd.read_csv(run / "metrics.csv")  # the link is an online recipe run
        assert link_cfg["train/rule_meta_grad"].notna().sum() == 3  # from its epoch 2 on
        assert "seed: " + str(2 + k) in (run / "config.yaml").read_text()
    # the chain's rule.pt is the last link's rule, with the chain's provenance
    assert torch.equal(rule_vector(pretrained.load(chain)), ended[2])
    info = pretrained.describe(chain)["provenance"]
    assert (info["meta_algorithm"], info["links"], info["env_steps"]) == ("online", 3, 1200)
    assert info["tasks"] == ["MockCMDP-v0"] and info["online"] == {
        "lr": 0.1,
        "passes": 3,
        "seeds": 1,
    }
    meta_test = pd.read_csv(chain / "meta_test.csv")
    assert sorted(meta_test["rule"].unique()) == ["initial (PID-Lag)", "learned"]


def test_ctrl_c_inside_a_link_then_resume_equals_the_uninterrupted_chain(tmp_path, monkeypatch):
    args = [*TINY_ONLINE, "meta_test.enabled=false"]
    full = train(compose([*args, f"run_root={tmp_path / 'full'}"]))
    # Ctrl-C in link 1 (the second), epoch 2
    cut = _cut_chain(monkeypatch, lagrangian_ppo, "minibatch_epochs", args, tmp_path / "cut", 6)
    assert load_checkpoint(latest_checkpoint(cut))["step"] == 1  # one link done
    resumed = train(compose([*args, f"run_root={tmp_path / 'cut'}", f"resume={cut}"]))
    assert resumed == cut
    pd.testing.assert_frame_equal(_metrics(resumed), _metrics(full))
    for a, b in zip(_link_runs(full), _link_runs(resumed)):  # link 1 resumed in its own run
        pd.testing.assert_frame_equal(_metrics(a), _metrics(b))
    assert torch.equal(rule_vector(pretrained.load(cut)), rule_vector(pretrained.load(full)))

    # more passes on resume extend the chain
    longer = train(compose([*args, f"run_root={tmp_path / 'cut'}", f"resume={cut}",
                            "online.passes=4"]))  # fmt: skip
    assert _metrics(longer)["step"].tolist() == [1, 2, 3, 4]
    assert len(_link_runs(longer)) == 4


def test_bad_online_config_is_one_message_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(compose([*TINY_ONLINE, "online.passes=0", "online.lr=0", f"run_root={tmp_path}"]))
    assert [p.split(":")[0] for p in err.value.problems] == ["online.passes", "online.lr"]
    problem = _rule_learners_run_on_cpu({"meta_algorithm": "online", "device": "cuda:0"})
    assert "meta_algorithm=online" in problem[0]
    with pytest.raises(ConfigError, match=r"online.inner: \['meta_lr', 'seed'\] are set by cmo"):
        train(compose([*TINY_ONLINE, "+online.inner.meta_lr=0.1", "+online.inner.seed=3",
                       f"run_root={tmp_path}"]))  # fmt: skip
    with pytest.raises(ConfigError, match="online.inner: update_iters"):
        train(compose([*TINY_ONLINE, "online.inner.update_iters=0", f"run_root={tmp_path}"]))
    assert not list(Path(tmp_path).rglob("metrics.csv"))  # nothing was started


def test_several_seeds_per_link_average_their_rules_and_resume_exactly(tmp_path, monkeypatch):
    """``online.seeds=2``: each link is one population of two online learners; the chain goes
    on from the mean of their rules; Ctrl-C inside the second link's population, then resume,
    equals the uninterrupted chain."""
    from cmo_rl.population import PopulationPPO

    args = [*TINY_ONLINE, "online.passes=2", "online.seeds=2", "meta_test.enabled=false"]
    full = train(compose([*args, f"run_root={tmp_path / 'full'}"]))
    df = _metrics(full)
    assert df["meta/env_steps"].tolist() == [800, 1600]  # 2 seeds x 400 steps per link
    links = sorted((full / "links").iterdir())
    members = [sorted(p for p in (link / "meta_lag" / "MockCMDP-v0").iterdir()) for link in links]
    assert [len(m) for m in members] == [2, 2]
    assert {"seed: 2", "seed: 3"} == {
        line for run in members[0] for line in (run / "config.yaml").read_text().splitlines()
        if line.startswith("seed: ")
    }  # fmt: skip
    ended = torch.stack([rule_vector(pretrained.load(run)) for run in members[0]])
    assert not torch.equal(ended[0], ended[1])  # two seeds, two adaptations ...
    start = rule_vector(pretrained.load(links[1] / "start_rule.pt"))
    assert torch.allclose(start, ended.mean(0))  # ... and the chain goes on from their mean

    cut = _cut_chain(monkeypatch, PopulationPPO, "update", args, tmp_path / "cut", 6)  # link 1
    resumed = train(compose([*args, f"run_root={tmp_path / 'cut'}", f"resume={cut}"]))
    pd.testing.assert_frame_equal(_metrics(resumed), df)
    assert torch.equal(rule_vector(pretrained.load(cut)), rule_vector(pretrained.load(full)))
    assert (
        len(list((cut / "links" / "0001-MockCMDP-v0" / "meta_lag" / "MockCMDP-v0").iterdir())) == 2
    )
