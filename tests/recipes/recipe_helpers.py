"""Helpers for the recipe tests: load a recipe module, compose its config, run it in a subprocess.

Imported by the test modules of this folder as ``import recipe_helpers`` (pytest puts the folder
on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
RECIPES = ("ppo_lagrangian", "pid_lagrangian", "cpo", "ppo", "meta_lagrangian")
RUN_NAMES = {
    "ppo_lagrangian": "ppo_lag",
    "pid_lagrangian": "pid_lag",
    "cpo": "cpo",
    "ppo": "ppo",
    "meta_lagrangian": "meta_lag",
}

#: A tiny mock-CMDP run: 4 envs x 25-step episodes, 200 steps per epoch.
TINY = [
    "env_id=MockCMDP-v0",
    "num_envs=4",
    "episode_length=25",
    "steps_per_epoch=200",
    "total_steps=600",
    "minibatch_size=50",
    "update_iters=2",
    "eval_interval=2",
    "eval_episodes=2",
    "cost_limit=3.0",
    "progress=false",
]

_MODULES: dict[str, ModuleType] = {}


def load_recipe(name: str) -> ModuleType:
    """Import ``recipes/<name>.py`` as a module (recipes are scripts, not a package)."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(
            f"recipe_{name}", REPO / "recipes" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def compose(name: str, overrides: list[str]):
    """The recipe's Hydra config with ``overrides``, as ``python recipes/<name>.py`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(REPO / "recipes" / "config"), version_base=None):
        return hydra_compose(name, overrides=overrides)


def train(name: str, overrides: list[str]) -> Path:
    """Validate and run a recipe in-process; returns its run directory."""
    from cmo_rl.config import validate_config

    module = load_recipe(name)
    cfg = compose(name, overrides)
    validate_config(cfg, module.SCHEMA)
    return module.train(cfg)


def run_cli(
    name: str, args: list[str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python recipes/<name>.py args...`` in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def the_run(root: Path, name: str) -> Path:
    """The single run directory of recipe ``name`` under ``root``."""
    runs = [p for p in (root / RUN_NAMES[name]).glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def metrics(run_dir: Path, drop_time: bool = True) -> pd.DataFrame:
    """``metrics.csv`` read bit-exactly, without the wall-clock ``time/*`` columns."""
    df = pd.read_csv(run_dir / "metrics.csv", float_precision="round_trip")
    if drop_time:
        df = df[[c for c in df.columns if not c.startswith("time/")]]
    return df
