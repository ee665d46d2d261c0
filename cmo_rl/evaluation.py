"""Evaluation metrics on logged per-episode (or per-evaluation) data.

Every function takes 1-D sequences ordered in training time (lists, NumPy arrays, torch tensors
on any device, pandas Series), converts them to float64 NumPy arrays, and returns Python floats
(or a NumPy array where an input was one, for :func:`penalized_return`). Empty inputs, NaNs and
mismatched lengths raise ``ValueError``. ``costs`` are episode costs :math:`C_i` (sums of
per-step costs), ``limit`` is the cost limit :math:`d`.

:func:`summarize_run` applies them to a run's ``metrics.csv`` (see ``docs/metrics.md``) and
:func:`summary_table` aggregates runs over seeds with 95% confidence intervals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "area_under_curve",
    "constraint_satisfaction_rate",
    "cost_oscillation",
    "cumulative_violation",
    "mean_ci95",
    "mean_return_cost",
    "overshoot_after_first_crossing",
    "penalized_return",
    "student_t_975",
    "summarize_run",
    "summary_table",
]

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30.
_T975 = (
    12.706204736,
    4.302652730,
    3.182446305,
    2.776445105,
    2.570581836,
    2.446911851,
    2.364624252,
    2.306004135,
    2.262157163,
    2.228138852,
    2.200985160,
    2.178812830,
    2.160368656,
    2.144786688,
    2.131449546,
    2.119905299,
    2.109815578,
    2.100922040,
    2.093024054,
    2.085963447,
    2.079613845,
    2.073873068,
    2.068657610,
    2.063898562,
    2.059538553,
    2.055529439,
    2.051830516,
    2.048407142,
    2.045229642,
    2.042272456,
)
_Z975 = 1.959963984540054


def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, any device
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    return arr


def _check_limit(limit: float) -> float:
    limit = float(limit)
    if not math.isfinite(limit) or limit < 0:
        raise ValueError(f"cost limit must be a finite number >= 0, got {limit}")
    return limit


def mean_return_cost(returns: Any, costs: Any) -> tuple[float, float]:
    """Mean episode return and mean episode cost.

    Examples:
        >>> mean_return_cost([10.0, 20.0, 30.0], [0.0, 5.0, 40.0])
        (20.0, 15.0)
    """
    r, c = _as_array(returns, "returns"), _as_array(costs, "costs")
    if r.shape != c.shape:
        raise ValueError(f"returns and costs differ in length: {r.size} vs {c.size}")
    return float(r.mean()), float(c.mean())


def constraint_satisfaction_rate(costs: Any, limit: float) -> float:
    r"""Fraction of episodes within the limit: :math:`\frac{1}{n}\sum_i [C_i \le d]`.

    Examples:
        >>> constraint_satisfaction_rate([0.0, 25.0, 25.1, 40.0], limit=25.0)
        0.5
    """
    c, d = _as_array(costs, "costs"), _check_limit(limit)
    return float((c <= d).mean())


def cumulative_violation(costs: Any, limit: float) -> float:
    r"""Total violation :math:`\sum_i \max(0, C_i - d)`.

    Examples:
        >>> cumulative_violation([10.0, 30.0, 25.0, 27.5], limit=25.0)
        7.5
    """
    c, d = _as_array(costs, "costs"), _check_limit(limit)
    return float(np.maximum(c - d, 0.0).sum())


def overshoot_after_first_crossing(costs: Any, limit: float) -> float:
    r"""Largest excess of cost over the limit once the cost has first risen through it.

    Following Stooke et al. (2020, "Responsive Safety in RL by PID Lagrangian Methods"), who
    describe Lagrangian methods letting the cost rise through the limit and *overshoot* it before
    the multiplier catches up. Precisely: let :math:`t^*` be the first index with
    :math:`C_{t^*-1} \le d < C_{t^*}` (an upward crossing). Then

    .. math::

        \text{overshoot} = \max_{t \ge t^*} C_t - d \quad (> 0),

    and 0.0 when the cost never crosses the limit from below. A curve that *starts* above the
    limit has no upward crossing there: that initial transient (a random policy hitting hazards)
    is not an overshoot; only a later return through the limit counts.

    Examples:
        >>> overshoot_after_first_crossing([40.0, 20.0, 24.0, 31.0, 27.0, 35.0, 22.0], limit=25.0)
        10.0
        >>> overshoot_after_first_crossing([40.0, 30.0, 20.0], limit=25.0)
        0.0
    """
    c, d = _as_array(costs, "costs"), _check_limit(limit)
    up = np.flatnonzero((c[:-1] <= d) & (c[1:] > d))
    if up.size == 0:
        return 0.0
    return float(c[up[0] + 1 :].max() - d)


def _tail(values: np.ndarray, tail_fraction: float) -> np.ndarray:
    if not 0.0 < tail_fraction <= 1.0:
        raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction}")
    k = max(1, math.ceil(tail_fraction * values.size))
    return values[-k:]


def cost_oscillation(costs: Any, tail_fraction: float = 0.25) -> float:
    r"""Population std (``ddof=0``) of the cost over the last ``tail_fraction`` of training.

    The tail is the last :math:`k = \max(1, \lceil \text{tail\_fraction} \cdot n \rceil)` values.

    Examples:
        >>> round(cost_oscillation([90.0, 50.0, 20.0, 30.0, 22.0, 28.0], tail_fraction=0.5), 4)
        3.3993
    """
    return float(_tail(_as_array(costs, "costs"), tail_fraction).std())


def penalized_return(returns: Any, costs: Any, limit: float, mu: float) -> float | np.ndarray:
    r"""Return penalised by the violation: :math:`R - \mu \max(0, C - d)`.

    Scalars give a float; arrays (element-wise) give an array.

    Examples:
        >>> penalized_return(100.0, 30.0, limit=25.0, mu=2.0)
        90.0
        >>> penalized_return([100.0, 100.0], [20.0, 30.0], limit=25.0, mu=2.0)
        array([100.,  90.])
    """
    mu, d = float(mu), _check_limit(limit)
    if not math.isfinite(mu) or mu < 0:
        raise ValueError(f"mu must be a finite number >= 0, got {mu}")
    scalar = np.ndim(returns) == 0 and np.ndim(costs) == 0
    r, c = _as_array(returns, "returns"), _as_array(costs, "costs")
    if r.shape != c.shape:
        raise ValueError(f"returns and costs differ in length: {r.size} vs {c.size}")
    out = r - mu * np.maximum(c - d, 0.0)
    return float(out[0]) if scalar else out


def area_under_curve(steps: Any, values: Any) -> float:
    r"""Trapezoid area under ``values`` over ``steps``, **normalised by the step span**.

    .. math::

        \text{AUC} = \frac{1}{s_n - s_1} \sum_{i=1}^{n-1} (s_{i+1} - s_i)\,\frac{v_i + v_{i+1}}{2}

    so the result is the time-average of the curve, in the units of ``values`` (a constant curve
    ``v`` gives ``v``), comparable across runs of different lengths. ``steps`` must be strictly
    increasing, with at least two points.

    Examples:
        >>> area_under_curve([0, 100, 300], [0.0, 10.0, 10.0])  # (500 + 2000) / 300
        8.333333333333334
    """
    s, v = _as_array(steps, "steps"), _as_array(values, "values")
    if s.shape != v.shape:
        raise ValueError(f"steps and values differ in length: {s.size} vs {v.size}")
    if s.size < 2:
        raise ValueError("area_under_curve needs at least two points")
    if (np.diff(s) <= 0).any():
        raise ValueError("steps must be strictly increasing")
    area = float((np.diff(s) * (v[1:] + v[:-1]) / 2.0).sum())
    return area / float(s[-1] - s[0])


def student_t_975(df: int) -> float:
    r"""The 0.975 quantile of Student's t with ``df`` degrees of freedom.

    A table for ``df <= 30``; above, the Cornish-Fisher expansion around
    :math:`z = \Phi^{-1}(0.975)` to :math:`O(df^{-3})` (error below 1e-5).

    Examples:
        >>> round(student_t_975(4), 4), round(student_t_975(120), 4)
        (2.7764, 1.9799)
    """
    df = int(df)
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_ci95(values: Any) -> tuple[float, float]:
    r"""Mean and half-width of the t-based 95% confidence interval (e.g. over seeds).

    .. math::

        \bar x \pm t_{0.975,\,n-1} \frac{s}{\sqrt n}, \qquad s^2 = \frac{1}{n-1}\sum_i (x_i - \bar x)^2

    With a single value the half-width is NaN (undefined).

    Examples:
        >>> mean, half = mean_ci95([1.0, 2.0, 3.0])  # s = 1, t_{0.975,2} = 4.302653
        >>> mean, round(half, 6)  # 4.302653 / sqrt(3)
        (2.0, 2.484138)
    """
    x = _as_array(values, "values")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = student_t_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()), half


def summarize_run(
    df: pd.DataFrame | str | os.PathLike,
    limit: float,
    mu: float,
    *,
    return_key: str = "eval/episode_return",
    cost_key: str = "eval/episode_cost",
    x: str = "step",
    tail_fraction: float = 0.25,
) -> dict[str, float]:
    """All metrics of one run, from its ``metrics.csv`` (a frame or a path).

    Rows where the return or the cost is missing (the wide CSV's empty cells) are dropped first.
    "final" values are means over the last ``tail_fraction`` of the points (as in
    :func:`cost_oscillation`).

    Returns:
        ``num_points``, ``final_step``, ``mean_return``, ``mean_cost``, ``final_return``,
        ``final_cost``, ``penalized_return`` (of the final values), ``constraint_satisfaction_rate``,
        ``cumulative_violation``, ``overshoot``, ``cost_oscillation``, ``auc_return``,
        ``auc_cost`` (the last two NaN with a single point).

    Examples:
        >>> df = pd.DataFrame({"step": [1, 2, 3, 4], "eval/episode_return": [0.0, 10.0, 20.0, 30.0],
        ...                    "eval/episode_cost": [10.0, 30.0, 24.0, 26.0]})
        >>> s = summarize_run(df, limit=25.0, mu=1.0, tail_fraction=0.5)
        >>> s["final_return"], s["final_cost"], s["penalized_return"], s["overshoot"]
        (25.0, 25.0, 25.0, 5.0)
    """
    if not isinstance(df, pd.DataFrame):
        df = pd.read_csv(df, float_precision="round_trip")
    missing = [k for k in (x, return_key, cost_key) if k not in df.columns]
    if missing:
        raise ValueError(f"metrics frame lacks column(s) {missing}; it has {list(df.columns)}")
    data = df[list(dict.fromkeys([x, return_key, cost_key]))].dropna()
    if data.empty:
        raise ValueError(f"no row has both {return_key!r} and {cost_key!r}")
    data = data.sort_values(x)
    steps = data[x].to_numpy(np.float64)
    returns = data[return_key].to_numpy(np.float64)
    costs = data[cost_key].to_numpy(np.float64)
    mean_r, mean_c = mean_return_cost(returns, costs)
    final_r = float(_tail(returns, tail_fraction).mean())
    final_c = float(_tail(costs, tail_fraction).mean())
    single = steps.size < 2
    return {
        "num_points": float(steps.size),
        "final_step": float(steps[-1]),
        "mean_return": mean_r,
        "mean_cost": mean_c,
        "final_return": final_r,
        "final_cost": final_c,
        "penalized_return": float(penalized_return(final_r, final_c, limit, mu)),
        "constraint_satisfaction_rate": constraint_satisfaction_rate(costs, limit),
        "cumulative_violation": cumulative_violation(costs, limit),
        "overshoot": overshoot_after_first_crossing(costs, limit),
        "cost_oscillation": cost_oscillation(costs, tail_fraction),
        "auc_return": float("nan") if single else area_under_curve(steps, returns),
        "auc_cost": float("nan") if single else area_under_curve(steps, costs),
    }


def summary_table(
    runs: Mapping[str, Sequence[pd.DataFrame | str | os.PathLike]],
    limit: float,
    mu: float,
    **summarize_kwargs: Any,
) -> pd.DataFrame:
    """One row per label: the mean over seeds of each :func:`summarize_run` metric, plus its
    95% CI half-width in ``<metric>_ci95``, and ``num_seeds``.

    The frame feeds :func:`cmo_rl.plotting.plot_return_cost_scatter` directly.

    Examples:
        >>> a = pd.DataFrame({"step": [1, 2], "eval/episode_return": [1.0, 3.0],
        ...                   "eval/episode_cost": [0.0, 0.0]})
        >>> b = a.assign(**{"eval/episode_return": [1.0, 5.0]})
        >>> t = summary_table({"ppo_lag": [a, b]}, limit=25.0, mu=1.0, tail_fraction=0.5)
        >>> t.loc[0, ["label", "num_seeds", "final_return"]].tolist()
        ['ppo_lag', 2, 4.0]
    """
    rows = []
    for label, frames in runs.items():
        if len(frames) == 0:
            raise ValueError(f"label {label!r} has no runs")
        summaries = [summarize_run(f, limit, mu, **summarize_kwargs) for f in frames]
        row: dict[str, Any] = {"label": label, "num_seeds": len(summaries)}
        for key in summaries[0]:
            values = np.array([s[key] for s in summaries])
            if np.isnan(values).any():
                row[key], row[f"{key}_ci95"] = float("nan"), float("nan")
            else:
                row[key], row[f"{key}_ci95"] = mean_ci95(values)
        rows.append(row)
    return pd.DataFrame(rows)
