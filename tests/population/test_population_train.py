"""A population run (``seeds=[...]``) against the single-seed runs it stands for: the same
metrics, checkpoints a single run can read, exact resume, clear refusals."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cmo_rl.config import ConfigError
from cmo_rl.lifecycle.checkpoint import list_checkpoints, load_checkpoint
from cmo_rl.meta_online import make_rule_learner
from cmo_rl.objectives.learned_dual import learned_update
from cmo_rl.population import POPULATION_FILE, PopulationPPO, train_population
from cmo_rl.training.lagrangian_ppo import (
    make_lagrange_multiplier,
    make_learned_multiplier,
    make_pid_multiplier,
    pid_update,
    train_lagrangian_ppo,
)
from cmo_rl.training.run import TrainingRun

REPO = Path(__file__).resolve().parents[2]
SEEDS = [0, 3, 4]
RULES = {
    "ppo_lagrangian": {"make_multiplier": make_lagrange_multiplier},
    "pid_lagrangian": {"make_multiplier": make_pid_multiplier, "update_multiplier": pid_update},
}
#: The meta-Lagrangian recipe with its rule learning online in every learner.
ONLINE = {
    "make_multiplier": make_learned_multiplier,
    "update_multiplier": learned_update,
    "make_rule_learner": make_rule_learner,
}
ONLINE_KEYS = {"meta_lr": 0.05, "rule_hidden": 4, "mu": 5.0}


def _cfg(tmp_path: Path, recipe: str = "ppo_lagrangian", env_id: str = "MockCMDP-v0", **over):
    cfg = OmegaConf.load(REPO / "recipes" / "config" / f"{recipe}.yaml")
    cfg = OmegaConf.merge(
        cfg,
        {
            "env_id": env_id,
            "num_envs": 2,
            "episode_length": 25 if env_id == "MockCMDP-v0" else 100,
            "steps_per_epoch": 400,
            "total_steps": 1200,
            "hidden_layers": [16],
            "update_iters": 3,
            "minibatch_size": 64,
            "eval_interval": 2,
            "eval_episodes": 2,
            "cost_limit": 3.0,
            "normalize_observations": True,
            "progress": False,
            "run_root": str(tmp_path),
            **over,
        },
    )
    for hydra_only in ("defaults", "hydra"):
        cfg.pop(hydra_only, None)
    return cfg


def _metrics(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame[[c for c in frame.columns if not c.startswith("time/")]]


def _single_runs(tmp_path: Path, recipe: str, env_id: str = "MockCMDP-v0") -> list[pd.DataFrame]:
    return [
        _metrics(
            train_lagrangian_ppo(
                _cfg(tmp_path / "single", recipe, env_id, seed=seed),
                recipe="single",
                **RULES[recipe],
            )
        )
        for seed in SEEDS
    ]


@pytest.mark.parametrize("recipe", sorted(RULES))
def test_each_learner_equals_its_single_seed_run_bit_for_bit(tmp_path, recipe):
    """``vectorize=False``: the same kernels as a single run, so every metric is equal."""
    singles = _single_runs(tmp_path, recipe)
    dirs = train_population(
        _cfg(tmp_path / "pop", recipe, seeds=SEEDS), recipe="pop", vectorize=False, **RULES[recipe]
    )
    assert len(dirs) == len(SEEDS) == len(set(dirs))
    for single, run_dir in zip(singles, dirs):
        pd.testing.assert_frame_equal(_metrics(run_dir), single, check_exact=True)
    assert single["train/num_episodes"].gt(0).all()  # the runs did finish episodes


def test_online_rule_learners_equal_their_single_seed_runs_bit_for_bit(tmp_path):
    """Each learner's rule takes its own meta-steps on its own batch and actor (the
    single run's order: raw GAE, meta-step, rule step, normalised advantages)."""
    singles = [
        _metrics(
            train_lagrangian_ppo(
                _cfg(tmp_path / "single", "meta_lagrangian", seed=seed, **ONLINE_KEYS),
                recipe="single",
                **ONLINE,
            )
        )
        for seed in SEEDS
    ]
    dirs = train_population(
        _cfg(tmp_path / "pop", "meta_lagrangian", seeds=SEEDS, **ONLINE_KEYS),
        recipe="pop",
        vectorize=False,
        **ONLINE,
    )
    for single, run_dir in zip(singles, dirs):
        pd.testing.assert_frame_equal(_metrics(run_dir), single, check_exact=True)
    assert single["train/rule_meta_grad"].notna().tolist() == [False, True, True]
    assert singles[0]["train/lambda"].tolist() != singles[1]["train/lambda"].tolist()


def test_vectorized_learners_equal_single_runs_to_float32_rounding(tmp_path):
    """The vmapped networks sum matrix products in another order (batched products against
    BLAS matrix-vector products): the same numbers to a few float32 ulps over a short run.
    Measured worst relative difference over 3 epochs: 5e-6 (the critic loss)."""
    singles = _single_runs(tmp_path, "ppo_lagrangian")
    dirs = train_population(
        _cfg(tmp_path / "pop", seeds=SEEDS), recipe="pop", **RULES["ppo_lagrangian"]
    )
    for single, run_dir in zip(singles, dirs):
        pd.testing.assert_frame_equal(_metrics(run_dir), single, rtol=1e-4, atol=1e-6)


def _primal_rule_file(tmp_path: Path) -> Path:
    from cmo_rl.objectives.learned_primal import (
        LearnedPrimalRule,
        primal_rule_vector,
        save_primal_rule,
        set_primal_rule_vector,
    )

    rule = LearnedPrimalRule(hidden=4, output_scale=1.0)
    noise = torch.randn(
        primal_rule_vector(rule).numel(), generator=torch.Generator().manual_seed(1)
    )
    return save_primal_rule(set_primal_rule_vector(rule, 0.3 * noise), tmp_path / "rule.pt", {})


#: The meta-Lagrangian recipe with a frozen lambda rule and a learned primal rule.
PRIMAL = {"make_multiplier": make_learned_multiplier, "update_multiplier": learned_update}


def test_primal_rule_learners_equal_their_single_seed_runs_and_resume_exactly(tmp_path):
    """``primal_rule=<file>`` with ``seeds``: each learner's actor takes the rule's steps as
    its single-seed run's ``LearnedAdam`` does. To float32 rounding: the rules' two layers
    run as batched products (``baddbmm``) over the learners, which sum in another order than
    one ``addmm`` (measured worst relative difference over 3 epochs: ~1e-6). A population
    stopped after one epoch resumes to the uninterrupted one exactly (the slow momentum is in
    each member's ``LearnedAdam`` checkpoint)."""
    TWO = SEEDS[:2]
    keys = {"primal_rule": str(_primal_rule_file(tmp_path)), "rule_hidden": 4, "eval_interval": 1}
    singles = [
        _metrics(
            train_lagrangian_ppo(
                _cfg(tmp_path / "single", "meta_lagrangian", seed=seed, **keys),
                recipe="single",
                **PRIMAL,
            )
        )
        for seed in TWO
    ]
    pop = _cfg(tmp_path / "pop", "meta_lagrangian", seeds=TWO, **keys)
    dirs = train_population(pop, recipe="pop", vectorize=False, **PRIMAL)
    adam = _metrics(
        train_lagrangian_ppo(
            _cfg(tmp_path / "adam", "meta_lagrangian", seed=TWO[0], rule_hidden=4, eval_interval=1),
            recipe="adam",
            **PRIMAL,
        )
    )
    assert not np.allclose(adam["train/kl"], singles[0]["train/kl"])  # the rule is not Adam
    for single, run_dir in zip(singles, dirs):
        pd.testing.assert_frame_equal(_metrics(run_dir), single, rtol=1e-4, atol=1e-6)
    part = train_population(
        OmegaConf.merge(pop, {"total_steps": 400, "run_root": str(tmp_path / "parts")}),
        recipe="pop",
        vectorize=False,
        **PRIMAL,
    )
    again = train_population(
        OmegaConf.merge(pop, {"run_root": str(tmp_path / "parts"), "resume": str(part[1])}),
        recipe="pop",
        vectorize=False,
        **PRIMAL,
    )
    for whole, resumed in zip(dirs, again):
        pd.testing.assert_frame_equal(_metrics(resumed), _metrics(whole), check_exact=True)


def test_members_write_single_run_checkpoints_and_the_population_index(tmp_path):
    dirs = train_population(
        _cfg(tmp_path, seeds=[1, 2], total_steps=800), recipe="pop", **RULES["ppo_lagrangian"]
    )
    for seed, run_dir in zip([1, 2], dirs):
        index = json.loads((run_dir / POPULATION_FILE).read_text())
        assert index == {"seeds": [1, 2], "run_dirs": [str(d) for d in dirs]}
        state = load_checkpoint(list_checkpoints(run_dir)[-1])
        assert state["config"]["seed"] == seed and state["epoch"] == 2
        assert {"policy", "value", "cost_value", "multiplier", "optimizer", "rng"} <= set(state)
        assert (run_dir / "plots" / "curves.png").is_file()
    first, second = (load_checkpoint(list_checkpoints(d)[-1]) for d in dirs)
    assert first["policy"].keys() == second["policy"].keys()
    assert not all(torch.equal(first["policy"][k], second["policy"][k]) for k in first["policy"])


@pytest.mark.parametrize("resume_member", [0, 1])
def test_resuming_any_member_continues_the_whole_population_exactly(tmp_path, resume_member):
    whole = train_population(
        _cfg(tmp_path / "whole", seeds=[0, 1], lr_decay=False, eval_interval=1),
        recipe="pop",
        **RULES["ppo_lagrangian"],
    )
    first = train_population(
        _cfg(tmp_path / "parts", seeds=[0, 1], lr_decay=False, eval_interval=1, total_steps=400),
        recipe="pop",
        **RULES["ppo_lagrangian"],
    )
    again = train_population(
        _cfg(
            tmp_path / "parts",
            seeds=[0, 1],
            lr_decay=False,
            eval_interval=1,
            resume=str(first[resume_member]),
        ),
        recipe="pop",
        **RULES["ppo_lagrangian"],
    )
    assert again == first
    for a, b in zip(whole, again):
        pd.testing.assert_frame_equal(_metrics(b), _metrics(a), check_exact=True)


def test_bad_population_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="a population .* runs on cpu"):
        train_population(
            _cfg(tmp_path, seeds=[0, 1], device="cuda"), recipe="pop", **RULES["ppo_lagrangian"]
        )
    with pytest.raises(ConfigError, match="each seed at most once"):
        train_population(_cfg(tmp_path, seeds=[0, 0]), recipe="pop", **RULES["ppo_lagrangian"])
    dirs = train_population(
        _cfg(tmp_path, seeds=[0, 1], total_steps=400), recipe="pop", **RULES["ppo_lagrangian"]
    )
    with pytest.raises(ConfigError, match=r"belongs to the population seeds=\[0, 1\]"):
        train_population(
            _cfg(tmp_path, seeds=[0, 2], resume=str(dirs[0])),
            recipe="pop",
            **RULES["ppo_lagrangian"],
        )


@pytest.mark.slow
def test_safety_gymnasium_learners_equal_their_single_runs(tmp_path):
    """P = 3 on SafetyPointGoal1-v0 (lidar observations, resets, goal resampling): each
    learner equals its single-seed run bit for bit."""
    singles = _single_runs(tmp_path, "ppo_lagrangian", "SafetyPointGoal1-v0")
    dirs = train_population(
        _cfg(tmp_path / "pop", env_id="SafetyPointGoal1-v0", seeds=SEEDS),
        recipe="pop",
        vectorize=False,
        **RULES["ppo_lagrangian"],
    )
    for single, run_dir in zip(singles, dirs):
        pd.testing.assert_frame_equal(_metrics(run_dir), single, check_exact=True)


@pytest.mark.parametrize("online", [False, True], ids=["ppo_lag", "online_rule"])
def test_ctrl_c_mid_update_then_resume_equals_the_uninterrupted_population(
    tmp_path, monkeypatch, online
):
    """With online rule learners the rule, its Adam and the pending record of every learner
    are in its checkpoint too."""
    recipe, keys, hooks = (
        ("meta_lagrangian", ONLINE_KEYS, ONLINE)
        if online
        else ("ppo_lagrangian", {}, RULES["ppo_lagrangian"])
    )
    full = train_population(
        _cfg(tmp_path / "full", recipe, seeds=[0, 1], **keys), recipe="pop", **hooks
    )
    real, calls = PopulationPPO.update, {"n": 0}

    def interrupted(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # inside epoch 2, after the weights changed
            raise KeyboardInterrupt
        return out

    with monkeypatch.context() as patch:
        patch.setattr(PopulationPPO, "update", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_population(
                _cfg(tmp_path / "cut", recipe, seeds=[0, 1], **keys), recipe="pop", **hooks
            )
    cut = sorted(p for p in (tmp_path / "cut" / "pop" / "MockCMDP-v0").iterdir())
    for run_dir in cut:  # the exit checkpoints are the last completed epoch, for every member
        assert load_checkpoint(list_checkpoints(run_dir)[-1])["step"] == 400
    resumed = train_population(
        _cfg(tmp_path / "cut", recipe, seeds=[0, 1], resume=str(cut[1]), **keys),
        recipe="pop",
        **hooks,
    )
    assert sorted(resumed) == cut
    for a, b in zip(full, resumed):
        pd.testing.assert_frame_equal(_metrics(b), _metrics(a), check_exact=True)


def test_a_signal_while_members_end_their_epoch_waits_for_all_of_them(tmp_path, monkeypatch):
    real = TrainingRun.end_epoch

    def signalled(self, batch, metrics):
        if self.epoch == 1 and self.cfg.seed == 0:  # member 0 ends epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, batch, metrics)

    monkeypatch.setattr(TrainingRun, "end_epoch", signalled)
    with pytest.raises(KeyboardInterrupt):
        train_population(_cfg(tmp_path, seeds=[0, 1]), recipe="pop", **RULES["ppo_lagrangian"])
    for run_dir in (tmp_path / "pop" / "MockCMDP-v0").iterdir():
        assert load_checkpoint(list_checkpoints(run_dir)[-1])["step"] == 800
