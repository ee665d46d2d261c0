"""PNG output of the plotting helpers, and the numbers behind the CI bands."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cmo_rl import plotting
from cmo_rl.plotting import (
    mean_ci_curve,
    plot_curves_with_ci,
    plot_learning_curves,
    plot_meta_training,
    plot_return_cost_scatter,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"  # complete file
    return struct.unpack(">II", data[16:24])


def run_frame(seed: int, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    steps = np.arange(n) * 1000
    df = pd.DataFrame(
        {
            "step": steps,
            "train/episode_return": np.linspace(0, 20, n) + rng.normal(0, 1, n),
            "eval/episode_return": np.linspace(0, 20, n) + rng.normal(0, 1, n),
            "eval/episode_cost": 40 * np.exp(-steps / 4000) + 20 + rng.normal(0, 1, n),
        }
    )
    df.loc[1::2, ["eval/episode_return", "eval/episode_cost"]] = np.nan  # wide CSV gaps
    return df


@pytest.fixture
def captured(monkeypatch):
    """Record each saved figure so the tests can check its axes."""
    figures: list[Figure] = []
    original = plotting._save

    def save(fig, out_png):
        figures.append(fig)
        return original(fig, out_png)

    monkeypatch.setattr(plotting, "_save", save)
    return figures


def test_learning_curves_png_axes_and_limit(tmp_path, captured):
    csv = tmp_path / "metrics.csv"
    run_frame(0).to_csv(csv, index=False)
    out = plot_learning_curves(csv, tmp_path / "plots" / "curves.png", cost_limit=25.0, title="t")
    assert out == tmp_path / "plots" / "curves.png"
    width, height = png_size(out)
    assert width > height > 100
    ret_ax, cost_ax = captured[0].axes
    assert ret_ax.get_xlabel() == cost_ax.get_xlabel() == "env steps"
    assert (ret_ax.get_ylabel(), cost_ax.get_ylabel()) == ("Return", "Cost")
    # the cost panel has the dashed limit at 25 and a legend entry for it; the return panel not
    limit_lines = [ln for ln in cost_ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(limit_lines) == 1 and set(limit_lines[0].get_ydata()) == {25.0}
    assert "cost limit d = 25" in [t.get_text() for t in cost_ax.get_legend().get_texts()]
    assert not [ln for ln in ret_ax.get_lines() if ln.get_linestyle() == "--"]
    # NaN gaps of the wide CSV were dropped: 6 eval points
    assert len(ret_ax.get_lines()[0].get_xdata()) == 6


def test_learning_curves_overlay_and_errors(tmp_path, captured):
    out = plot_learning_curves(
        {"seed 0": run_frame(0), "seed 1": run_frame(1)},
        tmp_path / "overlay.png",
        metrics=[("train/episode_return", "Return")],
    )
    png_size(out)
    (ax,) = captured[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1"]
    with pytest.raises(ValueError, match="lacks column 'eval/kl'"):
        plot_learning_curves(run_frame(0), tmp_path / "x.png", metrics=[("eval/kl", "KL")])
    with pytest.raises(ValueError, match="must end in .png"):
        plot_learning_curves(run_frame(0), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="no metrics CSV"):
        plot_learning_curves(tmp_path / "missing.csv", tmp_path / "x.png")


def test_mean_ci_curve_by_hand():
    a = pd.DataFrame({"step": [0, 10, 20], "r": [0.0, 10.0, 20.0]})
    b = pd.DataFrame({"step": [5, 25], "r": [5.0, 25.0]})  # on the line y = x too
    c = pd.DataFrame({"step": [0, 20], "r": [3.0, 23.0]})  # y = x + 3
    grid, mean, half = mean_ci_curve([a, b, c], "r", num_points=4)
    # overlap [5, 20]; at each x the three values are x, x, x + 3: mean x + 1, s = sqrt(3)
    np.testing.assert_allclose(grid, [5.0, 10.0, 15.0, 20.0])
    np.testing.assert_allclose(mean, grid + 1.0)
    np.testing.assert_allclose(half, 4.302652730 * np.sqrt(3.0) / np.sqrt(3.0))
    _, _, single = mean_ci_curve([a], "r", num_points=2)
    assert np.isnan(single).all()
    with pytest.raises(ValueError, match="do not overlap"):
        mean_ci_curve([a, pd.DataFrame({"step": [30, 40], "r": [1.0, 2.0]})], "r")


def test_curves_with_ci_png(tmp_path, captured):
    runs = {"ppo_lag": [run_frame(s) for s in range(3)], "cmo": [run_frame(s + 10) for s in (0, 1)]}
    out = plot_curves_with_ci(runs, tmp_path / "ci.png", cost_limit=25.0)
    png_size(out)
    ret_ax, cost_ax = captured[0].axes
    assert len(ret_ax.collections) == 2  # one CI band per label
    labels = [t.get_text() for t in cost_ax.get_legend().get_texts()]
    assert labels == ["ppo_lag (n=3)", "cmo (n=2)", "cost limit d = 25"]
    assert ret_ax.get_xlabel() == "env steps"


def test_return_cost_scatter_png(tmp_path, captured):
    table = pd.DataFrame(
        {
            "label": ["ppo_lag", "pid_lag", "cmo"],
            "final_return": [10.0, 12.0, 15.0],
            "final_cost": [31.0, 24.0, 22.0],
            "final_return_ci95": [1.0, np.nan, 2.0],
            "final_cost_ci95": [2.0, 1.0, 1.5],
        }
    )
    out = plot_return_cost_scatter(table, 25.0, tmp_path / "scatter.png")
    png_size(out)
    (ax,) = captured[0].axes
    assert ax.get_xlabel().startswith("episode cost") and ax.get_ylabel().startswith(
        "episode return"
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["cmo", "cost limit d = 25", "infeasible", "pid_lag", "ppo_lag"]
    with pytest.raises(ValueError, match="lacks column 'final_cost'"):
        plot_return_cost_scatter(table.drop(columns="final_cost"), 25.0, tmp_path / "s.png")


def test_meta_training_png(tmp_path, captured):
    n = 20
    it = np.arange(n)
    df = pd.DataFrame(
        {
            "step": it,
            "meta/objective": 5.0 / (1 + it),
            "meta/return": it * 1.0,
            "meta/return/SafetyPointGoal1-v0": it * 1.2,
            "meta/return/SafetyCarGoal1-v0": it * 0.8,
            "meta/cost": 40.0 - it,
            "meta/cost/SafetyPointGoal1-v0": 42.0 - it,
            "meta/KP": 0.08 + 0.001 * it,
            "meta/KI": 0.015 + 0.0 * it,
            "meta/KD": 0.007 - 0.0001 * it,
            "meta/grad_norm/KP": np.ones(n),
        }
    )
    out = plot_meta_training(df, tmp_path / "meta.png", cost_limit=25.0)
    png_size(out)
    axes = captured[0].axes
    assert [ax.get_ylabel() for ax in axes] == [
        "meta-objective",
        "episode return",
        "episode cost",
        "PID gain",
    ]
    assert all(ax.get_xlabel() == "meta-iteration" for ax in axes)
    assert len(axes[1].get_lines()) == 3  # mean + 2 tasks
    assert [t.get_text() for t in axes[3].get_legend().get_texts()] == [
        "meta/KP",
        "meta/KI",
        "meta/KD",
    ]
    # an LSTM run has no gains: three panels
    plot_meta_training(df.drop(columns=["meta/KP", "meta/KI", "meta/KD"]), tmp_path / "m2.png")
    assert sum(ax.get_visible() for ax in captured[1].axes) == 3
    with pytest.raises(ValueError, match="no meta-training metrics"):
        plot_meta_training(pd.DataFrame({"step": [0], "train/kl": [0.1]}), tmp_path / "m3.png")
