"""Evaluation metrics against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cmo_rl.evaluation import (
    area_under_curve,
    constraint_satisfaction_rate,
    cost_oscillation,
    cumulative_violation,
    mean_ci95,
    mean_return_cost,
    overshoot_after_first_crossing,
    penalized_return,
    student_t_975,
    summarize_run,
    summary_table,
)

D = 25.0  # cost limit used throughout
COSTS = [40.0, 20.0, 24.0, 31.0, 27.0, 35.0, 22.0, 25.0]
# over the limit: 40 (+15), 31 (+6), 27 (+2), 35 (+10); 25 is within (<=)


def test_mean_return_cost_accepts_lists_arrays_tensors_series():
    r, c = [10.0, 20.0, 60.0], [1.0, 2.0, 6.0]
    for convert in (list, np.asarray, torch.tensor, pd.Series):
        assert mean_return_cost(convert(r), convert(c)) == (30.0, 3.0)
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        mean_return_cost(r, c[:2])
    with pytest.raises(ValueError, match="returns is empty"):
        mean_return_cost([], [])
    with pytest.raises(ValueError, match="costs contains NaN at index 1"):
        mean_return_cost(r, [1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match=r"must be 1-D, got shape \(2, 2\)"):
        mean_return_cost(np.ones((2, 2)), np.ones((2, 2)))


def test_constraint_satisfaction_rate():
    # within: 20, 24, 22, 25 -> 4 of 8
    assert constraint_satisfaction_rate(COSTS, D) == 4 / 8
    assert constraint_satisfaction_rate([0.0], 0.0) == 1.0
    with pytest.raises(ValueError, match="cost limit must be a finite number >= 0, got -1.0"):
        constraint_satisfaction_rate(COSTS, -1.0)


def test_cumulative_violation():
    assert cumulative_violation(COSTS, D) == 15.0 + 6.0 + 2.0 + 10.0
    assert cumulative_violation([1.0, 2.0], D) == 0.0


def test_overshoot_after_first_crossing():
    # starts above (40): not an overshoot. First upward crossing: 24 -> 31 at index 3.
    # max over indices >= 3: 35 -> overshoot 35 - 25 = 10 (the initial 40 is ignored)
    assert overshoot_after_first_crossing(COSTS, D) == 10.0
    # touching the limit is not crossing it: 20 -> 25 -> 30 crosses at 25 -> 30
    assert overshoot_after_first_crossing([20.0, 25.0, 30.0, 10.0], D) == 5.0
    assert overshoot_after_first_crossing([40.0, 30.0, 20.0, 10.0], D) == 0.0
    assert overshoot_after_first_crossing([10.0, 20.0, 25.0], D) == 0.0
    assert overshoot_after_first_crossing([30.0], D) == 0.0


def test_cost_oscillation_uses_the_last_quarter():
    # n = 8, tail = ceil(0.25 * 8) = 2 values: [22, 25] -> population std 1.5
    assert cost_oscillation(COSTS) == 1.5
    # n = 10, tail = ceil(2.5) = 3: [10, 20, 30] -> std sqrt(200/3)
    assert cost_oscillation(list(range(7)) + [10.0, 20.0, 30.0]) == pytest.approx(
        math.sqrt(200 / 3), abs=1e-12
    )
    assert cost_oscillation(COSTS, tail_fraction=1.0) == pytest.approx(np.std(COSTS), abs=1e-12)
    with pytest.raises(ValueError, match=r"tail_fraction must be in \(0, 1\], got 0"):
        cost_oscillation(COSTS, tail_fraction=0)


def test_penalized_return():
    assert penalized_return(100.0, 30.0, D, mu=2.0) == 90.0
    assert penalized_return(100.0, 20.0, D, mu=2.0) == 100.0  # no bonus for slack
    out = penalized_return(torch.tensor([100.0, 50.0]), np.array([27.0, 35.0]), D, mu=0.5)
    np.testing.assert_allclose(out, [99.0, 45.0])
    with pytest.raises(ValueError, match="mu must be a finite number >= 0, got -1.0"):
        penalized_return(1.0, 1.0, D, mu=-1.0)


def test_area_under_curve_is_normalised_by_the_span():
    # trapezoids: (100-0)*(0+10)/2 = 500, (300-100)*(10+10)/2 = 2000 -> 2500 / 300
    assert area_under_curve([0, 100, 300], [0.0, 10.0, 10.0]) == 2500 / 300
    assert area_under_curve([1000, 5000], [3.0, 3.0]) == 3.0  # a constant curve gives itself
    with pytest.raises(ValueError, match="strictly increasing"):
        area_under_curve([0, 2, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least two points"):
        area_under_curve([0], [1.0])


def _t_cdf(t: float, df: int, n: int = 200_000) -> float:
    """Independent numeric Student-t CDF (Simpson on the density from 0 to t)."""
    x = np.linspace(0.0, t, n + 1)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x**2 / df))
    h = t / n
    simpson = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    return 0.5 + simpson


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 17, 29, 30, 31, 45, 100, 1000])
def test_student_t_975_is_the_quantile(df):
    assert _t_cdf(student_t_975(df), df) == pytest.approx(0.975, abs=2e-6)


def test_mean_ci95():
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302652730 -> 4.302652730 / sqrt(3)
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652730 / math.sqrt(3), abs=1e-9)
    # [10, 14]: mean 12, s = sqrt(8), t_{0.975, 1} = 12.706204736 -> 12.706... * 2
    mean, half = mean_ci95(torch.tensor([10.0, 14.0]))
    assert mean == 12.0 and half == pytest.approx(12.706204736 * 2.0, abs=1e-8)
    mean, half = mean_ci95([5.0])
    assert mean == 5.0 and math.isnan(half)
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1"):
        student_t_975(0)


def _run_frame() -> pd.DataFrame:
    # a wide metrics.csv: eval rows every other step, train rows in between
    return pd.DataFrame(
        {
            "step": [0, 50, 100, 150, 200, 250, 300, 350, 400],
            "train/episode_return": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "eval/episode_return": [0.0, np.nan, 10.0, np.nan, 20.0, np.nan, 30.0, np.nan, 40.0],
            "eval/episode_cost": [10.0, np.nan, 30.0, np.nan, 24.0, np.nan, 26.0, np.nan, 20.0],
        }
    )


def test_summarize_run_by_hand(tmp_path):
    s = summarize_run(_run_frame(), limit=D, mu=2.0, tail_fraction=0.5)
    # eval points: steps 0,100,200,300,400; returns 0,10,20,30,40; costs 10,30,24,26,20
    # tail = ceil(0.5 * 5) = 3 points: returns 20,30,40 -> 30; costs 24,26,20 -> 70/3
    assert s["num_points"] == 5 and s["final_step"] == 400
    assert (s["mean_return"], s["mean_cost"]) == (20.0, 22.0)
    assert s["final_return"] == 30.0 and s["final_cost"] == pytest.approx(70 / 3, abs=1e-12)
    assert s["penalized_return"] == 30.0  # final cost 23.3 <= 25: no penalty
    assert s["constraint_satisfaction_rate"] == 3 / 5  # 10, 24, 20
    assert s["cumulative_violation"] == 5.0 + 1.0  # 30, 26
    assert s["overshoot"] == 5.0  # crossing 10 -> 30, max after = 30
    assert s["cost_oscillation"] == pytest.approx(np.std([24.0, 26.0, 20.0]), abs=1e-12)
    # evenly spaced steps: AUC = (v0/2 + v1 + v2 + v3 + v4/2) / 4
    assert s["auc_return"] == (0 / 2 + 10 + 20 + 30 + 40 / 2) / 4
    assert s["auc_cost"] == (10 / 2 + 30 + 24 + 26 + 20 / 2) / 4
    path = tmp_path / "metrics.csv"
    _run_frame().to_csv(path, index=False)
    assert summarize_run(path, limit=D, mu=2.0, tail_fraction=0.5) == s
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['eval/episode_cost'\]"):
        summarize_run(_run_frame().drop(columns="eval/episode_cost"), D, 1.0)


def test_summarize_run_penalty_and_train_keys():
    df = _run_frame()
    s = summarize_run(
        df,
        limit=1.0,
        mu=0.5,
        return_key="train/episode_return",
        cost_key="train/episode_return",
        tail_fraction=1.0,
    )
    # all 9 train points: mean 4; penalised 4 - 0.5 * (4 - 1) = 2.5
    assert s["final_return"] == 4.0 and s["penalized_return"] == 2.5


def test_summary_table_over_seeds():
    a = _run_frame()
    b = a.assign(**{"eval/episode_return": a["eval/episode_return"] * 2})
    t = summary_table({"cmo": [a, b], "one_seed": [a]}, limit=D, mu=2.0, tail_fraction=0.5)
    assert t["label"].tolist() == ["cmo", "one_seed"] and t["num_seeds"].tolist() == [2, 1]
    row = t.iloc[0]
    # final returns 30 and 60: mean 45, s = sqrt(450), t_{0.975,1} = 12.7062 -> half 12.7062 * 15
    assert row["final_return"] == 45.0
    assert row["final_return_ci95"] == pytest.approx(12.706204736 * 15.0, abs=1e-8)
    assert row["final_cost_ci95"] == 0.0  # identical costs
    assert math.isnan(t.iloc[1]["final_return_ci95"])
    with pytest.raises(ValueError, match="label 'x' has no runs"):
        summary_table({"x": []}, limit=D, mu=1.0)
