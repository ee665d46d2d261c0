"""benchmarks/baselines.py's summary: numbers from a run's metrics.csv, OmniSafe's per task."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baselines():
    spec = importlib.util.spec_from_file_location("baselines", REPO / "benchmarks" / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path) -> Path:
    pd.DataFrame(
        {
            "step": [100, 200, 300, 400],
            "train/episode_return": [1.0, 2.0, 4.0, 6.0],
            "train/episode_cost": [40.0, 30.0, 20.0, 10.0],
            "eval/episode_return": [None, 3.0, None, 7.5],
            "eval/episode_cost": [None, 9.0, None, 12.0],
            "eval/num_episodes": [None, 5, None, 5],
            "time/total": [60.0, 120.0, 180.0, 240.0],
        }
    ).to_csv(tmp_path / "metrics.csv", index=False)
    return tmp_path


def test_summarise_by_hand(baselines, tmp_path):
    row = baselines.summarise(_run(tmp_path), last_epochs=3)
    assert row["steps"] == 400 and row["eval_episodes"] == 5
    assert (row["eval_return"], row["eval_cost"]) == (7.5, 12.0)  # the last evaluation
    assert row["train_return"] == pytest.approx((2 + 4 + 6) / 3)
    assert row["train_cost"] == pytest.approx((30 + 20 + 10) / 3)
    assert row["wall_s"] == 240.0


@pytest.mark.parametrize(
    ("env_id", "reference"),
    [("SafetyPointGoal1-v0", "12.96 / 25.8"), ("SafetyHalfCheetahVelocity-v1", "2946 / 3.4"),
     ("SafetySwimmerVelocity-v1", "not published")],
)  # fmt: skip
def test_table_quotes_omnisafe_for_the_run_task(baselines, tmp_path, env_id, reference):
    rows = {"ppo_lagrangian": baselines.summarise(_run(tmp_path), last_epochs=3)}
    table = baselines.markdown_table(rows, argparse.Namespace(env_id=env_id, last_epochs=3))
    line = table.splitlines()[-1]
    assert line.startswith("| PPO-Lag | 7.5 | 12.0 | 4.0 | 20.0 | 4 min |")
    assert line.endswith(f"| {reference} |")
