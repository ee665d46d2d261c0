"""The shared PPO-Lagrangian loop: the multiplier hooks are called as documented."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint
from cmo_rl.objectives import LagrangeMultiplier
from cmo_rl.training.lagrangian_ppo import step_multiplier, train_lagrangian_ppo

YAML = Path(__file__).resolve().parents[2] / "recipes" / "config" / "ppo_lagrangian.yaml"


def _config(run_root: Path, **overrides):
    cfg = OmegaConf.load(YAML)
    for hydra_only in ("defaults", "hydra"):
        cfg.pop(hydra_only)
    tiny = {
        "env_id": "MockCMDP-v0",
        "num_envs": 4,
        "episode_length": 25,
        "steps_per_epoch": 200,
        "total_steps": 600,
        "hidden_layers": [8],
        "minibatch_size": 50,
        "update_iters": 1,
        "eval_interval": 3,
        "eval_episodes": 1,
        "cost_limit": 3.0,
        "progress": False,
        "run_root": str(run_root),
    }
    return OmegaConf.merge(cfg, tiny, overrides)


def test_hooks_build_and_update_the_multiplier_once_per_epoch(tmp_path):
    built, calls = [], []

    def make(cfg, device):
        built.append((cfg.cost_limit, device))
        return LagrangeMultiplier(cfg.cost_limit, init_lambda=0.5, lr=0.1, optimizer="sgd")

    def update(multiplier, episode_cost):
        before = multiplier.value.item()
        step_multiplier(multiplier, episode_cost)
        calls.append((episode_cost, before, multiplier.value.item()))
        return {"train/custom": float(len(calls))}

    run_dir = train_lagrangian_ppo(
        _config(tmp_path), recipe="my_lag", make_multiplier=make, update_multiplier=update
    )
    assert run_dir.relative_to(tmp_path).parts[:2] == ("my_lag", "MockCMDP-v0")
    assert built == [(3.0, torch.device("cpu"))]
    df = pd.read_csv(run_dir / "metrics.csv")
    assert df["step"].tolist() == [200, 400, 600]
    # called once per epoch (every epoch finishes 8 episodes) with that epoch's J_C
    assert [c[0] for c in calls] == pytest.approx(df["train/episode_cost"].tolist())
    assert df["train/custom"].tolist() == [1.0, 2.0, 3.0]
    assert df["train/violation"].tolist() == pytest.approx(df["train/episode_cost"] - 3.0)
    # the logged lambda is the one after the update: SGD, lambda + 0.1 (J_C - d), from 0.5
    lam = 0.5
    for (cost, before, after), logged in zip(calls, df["train/lambda"], strict=True):
        assert before == pytest.approx(lam)
        lam = max(0.0, lam + 0.1 * (cost - 3.0))
        assert after == pytest.approx(lam) and logged == pytest.approx(lam)
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert set(state) >= {"policy", "value", "cost_value", "multiplier", "optimizer"}
    restored = LagrangeMultiplier(3.0, init_lambda=0.0, lr=0.1, optimizer="sgd")
    restored.load_state_dict(state["multiplier"])
    assert restored.value.item() == pytest.approx(lam)
