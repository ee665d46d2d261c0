"""The CUDA path: recipes, worker collection and ``cmo`` with ``device=cuda`` (envs on CPU;
policy, losses, multipliers and meta-optimizer on the GPU). Skipped where no GPU is present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensordict import TensorDict

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]
RECIPE_TINY = [
    "env_id=MockCMDP-v0",
    "num_envs=4",
    "episode_length=25",
    "steps_per_epoch=200",
    "total_steps=400",
    "minibatch_size=50",
    "update_iters=2",
    "eval_interval=1",
    "eval_episodes=2",
    "cost_limit=3.0",
    "progress=false",
    "device=cuda",
]
CMO_TINY = [
    "env_ids=[MockCMDP-v0]",
    "eval_env_ids=[]",
    "episode_length=10",
    "vector_envs_per_task=4",
    "hidden_layers=[8]",
    "hidden_size=4",
    "total_meta_iters=2",
    "meta_batch_size=2",
    "inner_rollouts=2",
    "unroll_steps=2",
    "critic_steps=2",
    "log_interval=1",
    "checkpoint_interval=2",
    "eval_episodes=4",
    "meta_test.seeds=[5]",
    "progress=false",
    "device=cuda",
]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _only_run(root: Path) -> Path:
    runs = [p for p in root.glob("*/*/*") if p.is_dir() and (p / "metrics.csv").exists()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("name", ["ppo_lagrangian", "pid_lagrangian", "cpo"])
def test_recipe_trains_on_cuda(name, tmp_path):
    out = _run(
        [sys.executable, str(REPO / "recipes" / f"{name}.py"), *RECIPE_TINY, "run_root=runs"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_csv(_only_run(tmp_path / "runs") / "metrics.csv")
    assert df["step"].tolist() == [200, 400]
    assert df["train/num_episodes"].tolist() == [8, 8]
    for column in ("train/episode_return", "train/loss_critic", "eval/episode_cost"):
        assert df[column].notna().all() and df[column].map(float).abs().lt(1e6).all(), column


def test_cmo_meta_trains_on_cuda(tmp_path):
    cmo = Path(sys.executable).with_name("cmo")
    for kind in ("pid", "lstm"):
        out = _run([str(cmo), *CMO_TINY, f"meta_optimizer_type={kind}", "run_root=runs"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        df = pd.read_csv(next((tmp_path / "runs" / f"meta_{kind}").glob("*/*")) / "metrics.csv")
        assert len(df) == 2 and df["meta/grad_norm"].map(float).gt(0).all()


def test_meta_iteration_on_cuda_keeps_everything_on_the_gpu():
    from cmo_rl.meta import MetaTrainer

    trainer = MetaTrainer.from_config(
        {
            **_cmo_defaults(),
            "env_ids": [_mock_factory],
            "inner_rollouts": 2,
            "episode_length": 5,
            "meta_batch_size": 2,
            "hidden_layers": [8],
            "meta_lr": 0.01,
            "unroll_steps": 2,
            "gamma": 0.99,
            "cost_limit": 1.0,
            "mu": 1.0,
            "vector_envs_per_task": 2,
            "seed": 0,
            "meta_optimizer_type": "lstm",
            "hidden_size": 4,
            "device": "cuda",
        }
    )
    metrics = trainer.meta_iteration()
    assert all(p.device.type == "cuda" for p in trainer.meta_optimizer.parameters())
    assert metrics["meta/grad_norm"] > 0 and metrics["meta/skipped_updates"] == 0.0


def _cmo_defaults() -> dict:
    """``cmo``'s default config (``MetaTrainer.from_config`` needs every one of its keys)."""
    from omegaconf import OmegaConf

    from cmo_rl.meta_schema import DEFAULT_CONFIG

    defaults = OmegaConf.load(DEFAULT_CONFIG)
    for key in ("defaults", "hydra"):
        defaults.pop(key)
    return OmegaConf.to_container(defaults, resolve=True)


def _mock_factory(num_envs: int, seed: int, device):
    from cmo_rl.testing import MockCMDPEnv

    return MockCMDPEnv(num_envs=num_envs, episode_length=5, seed=seed, device=device)


def test_worker_collection_with_a_cuda_policy():
    """Workers act with CPU copies of the GPU policy; the batch arrives on the GPU."""
    from cmo_rl.envs.factory import make_env
    from cmo_rl.meta.functional import log_prob_of
    from cmo_rl.modules import make_actor
    from cmo_rl.training.collection import make_collector
    from cmo_rl.training.parallel import worker_spec

    env = make_env("MockCMDP-v0", num_envs=4, max_episode_steps=5, normalize_observations=True)
    actor = make_actor(env, hidden_layers=(8,), device="cuda")
    cfg = {
        "env_id": "MockCMDP-v0",
        "num_envs": 4,
        "episode_length": 5,
        "normalize_observations": True,
        "collector": {"backend": "multi_sync", "num_workers": 2, "envs_per_worker": None,
                      "ray_address": None},
    }  # fmt: skip
    collector = make_collector(
        env, actor, steps_per_epoch=40, num_epochs=1, seed=0, device="cuda",
        workers=worker_spec(cfg),
    )  # fmt: skip
    try:
        (batch,) = list(collector)
    finally:
        collector.shutdown()
    assert batch.device.type == "cuda" and batch.batch_size == torch.Size([4, 10])
    expected = log_prob_of(actor, TensorDict.from_module(actor), batch).detach()
    torch.testing.assert_close(batch["action_log_prob"], expected, rtol=0, atol=1e-4)
