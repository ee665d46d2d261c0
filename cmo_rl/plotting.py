"""Learning-curve PNGs from ``metrics.csv`` files (Matplotlib, Agg canvas, no pyplot state).

Figures are built on :class:`matplotlib.figure.Figure` with a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, so plotting works headless, never
touches the global pyplot backend and leaks no open figures. Inputs are the wide frames written
by :class:`cmo_rl.lifecycle.logging.RunLogger` (a path or a :class:`pandas.DataFrame`); empty cells (NaN)
are dropped per metric. Every function returns the written path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cmo_rl.evaluation import student_t_975

__all__ = [
    "mean_ci_curve",
    "plot_curves_with_ci",
    "plot_learning_curves",
    "plot_meta_training",
    "plot_return_cost_scatter",
]

Frame = pd.DataFrame | str | os.PathLike
_DEFAULT_METRICS = (("eval/episode_return", "Return"), ("eval/episode_cost", "Cost"))
_LIMIT_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def _frame(data: Frame) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"no metrics CSV at {path}")
    return pd.read_csv(path, float_precision="round_trip")


def _series(df: pd.DataFrame, x: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    for key in (x, metric):
        if key not in df.columns:
            raise ValueError(f"metrics frame lacks column {key!r}; it has {list(df.columns)}")
    data = df[[x, metric]].dropna().sort_values(x)
    return data[x].to_numpy(np.float64), data[metric].to_numpy(np.float64)


def _is_cost(metric: str) -> bool:
    """``eval/episode_cost``, ``meta/cost/<task>``: a segment ``cost`` or ``*_cost``."""
    return any(part == "cost" or part.endswith("_cost") for part in metric.split("/"))


def _new_figure(ncols: int, nrows: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    return fig, axes


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise ValueError(f"out_png must end in .png, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    return out


def _draw_limit(ax: Any, cost_limit: float | None) -> None:
    if cost_limit is not None:
        ax.axhline(float(cost_limit), label=f"cost limit d = {cost_limit:g}", **_LIMIT_STYLE)


def _finish_axes(
    ax: Any, *, x_label: str, y_label: str, title: str | None, limit: float | None
) -> None:
    """Limit line (when ``limit`` is given), labels, title, grid and legend of one panel."""
    _draw_limit(ax, limit)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_learning_curves(
    csv_or_frame: Frame | Mapping[str, Frame],
    out_png: str | os.PathLike,
    *,
    x: str = "step",
    metrics: Sequence[tuple[str, str]] = _DEFAULT_METRICS,
    cost_limit: float | None = None,
    title: str | None = None,
    x_label: str = "env steps",
) -> Path:
    """One panel per ``(metric, axis label)``; the cost limit is a dashed line on cost panels.

    Args:
        csv_or_frame: a run's ``metrics.csv`` (path or frame), or ``{label: csv_or_frame}`` to
            overlay several runs.
        out_png: the PNG to write.
        x: the x column; ``x_label`` is its axis label (units).
        metrics: ``(column, y-axis label)`` pairs; a panel whose column names a cost (``.../
            episode_cost``, ``meta/cost/...``) gets the ``cost_limit`` line.
        cost_limit: the limit ``d``, or ``None``.
        title: figure title.

    Examples:
        >>> import tempfile
        >>> df = pd.DataFrame({"step": [0, 1000, 2000], "eval/episode_return": [0.0, 5.0, 9.0],
        ...                    "eval/episode_cost": [40.0, 30.0, 24.0]})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = plot_learning_curves(df, f"{d}/curves.png", cost_limit=25.0)
        ...     p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    runs = dict(csv_or_frame) if isinstance(csv_or_frame, Mapping) else {None: csv_or_frame}
    if not metrics:
        raise ValueError("metrics is empty: give at least one (column, label) pair")
    frames = {label: _frame(data) for label, data in runs.items()}
    fig, axes = _new_figure(len(metrics))
    for ax, (metric, y_label) in zip(axes, metrics):
        for label, df in frames.items():
            xs, ys = _series(df, x, metric)
            ax.plot(xs, ys, marker="." if xs.size < 30 else None, label=label or metric)
        limit = cost_limit if _is_cost(metric) else None
        _finish_axes(ax, x_label=x_label, y_label=y_label, title=metric, limit=limit)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def mean_ci_curve(
    frames: Sequence[Frame],
    metric: str,
    *,
    x: str = "step",
    num_points: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Mean curve over seeds and its 95% CI half-width on a common step grid.

    Each seed's curve is linearly interpolated (:func:`numpy.interp`) on ``num_points`` evenly
    spaced steps spanning the range *all* seeds cover, ``[max_i min s_i, min_i max s_i]`` (no
    extrapolation). Then, per grid point, :math:`\bar y \pm t_{0.975,n-1}\, s/\sqrt n` over the
    ``n`` seeds (half-width NaN for one seed).

    Returns:
        ``(grid, mean, half_width)``, each of shape ``[num_points]``.

    Examples:
        >>> a = pd.DataFrame({"step": [0, 10], "r": [0.0, 10.0]})
        >>> b = pd.DataFrame({"step": [0, 10], "r": [2.0, 12.0]})
        >>> grid, mean, half = mean_ci_curve([a, b], "r", num_points=3)
        >>> grid.tolist(), mean.tolist(), np.round(half, 4).tolist()  # s = sqrt(2), t_{.975,1} = 12.706
        ([0.0, 5.0, 10.0], [1.0, 6.0, 11.0], [12.7062, 12.7062, 12.7062])
    """
    if len(frames) == 0:
        raise ValueError("mean_ci_curve needs at least one run")
    if int(num_points) < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    curves = []
    for i, data in enumerate(frames):
        xs, ys = _series(_frame(data), x, metric)
        if xs.size == 0:
            raise ValueError(f"run {i} has no values of {metric!r}")
        curves.append((xs, ys))
    lo = max(xs[0] for xs, _ in curves)
    hi = min(xs[-1] for xs, _ in curves)
    if lo > hi:
        raise ValueError(f"the runs' {x} ranges do not overlap ({metric!r}: from {lo} to {hi})")
    grid = np.linspace(lo, hi, int(num_points))
    ys = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
    mean = ys.mean(axis=0)
    n = ys.shape[0]
    if n == 1:
        half = np.full_like(mean, np.nan)
    else:
        half = student_t_975(n - 1) * ys.std(axis=0, ddof=1) / np.sqrt(n)
    return grid, mean, half


def plot_curves_with_ci(
    runs: Mapping[str, Sequence[Frame]],
    out_png: str | os.PathLike,
    *,
    x: str = "step",
    metrics: Sequence[tuple[str, str]] = _DEFAULT_METRICS,
    cost_limit: float | None = None,
    title: str | None = None,
    num_points: int = 200,
    x_label: str = "env steps",
) -> Path:
    """Mean over seeds with a 95% CI band (see :func:`mean_ci_curve`), one line per label.

    Args:
        runs: ``{label: [metrics frame or CSV path of each seed]}``.
        num_points: size of the common step grid of each curve (:func:`mean_ci_curve`).

    The other arguments are as in :func:`plot_learning_curves`.

    Examples:
        >>> import tempfile
        >>> seeds = [pd.DataFrame({"step": [0, 50, 100], "eval/episode_return": [0.0, r, 2 * r],
        ...                        "eval/episode_cost": [30.0, 20.0, c]}) for r, c in [(4, 9), (6, 11)]]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = plot_curves_with_ci({"ppo_lag": seeds}, f"{d}/ci.png", cost_limit=25.0)
        ...     p.stat().st_size > 0
        True
    """
    if not runs:
        raise ValueError("runs is empty: give {label: [frames of each seed]}")
    if not metrics:
        raise ValueError("metrics is empty: give at least one (column, label) pair")
    fig, axes = _new_figure(len(metrics))
    for ax, (metric, y_label) in zip(axes, metrics):
        for label, frames in runs.items():
            grid, mean, half = mean_ci_curve(frames, metric, x=x, num_points=num_points)
            (line,) = ax.plot(grid, mean, label=f"{label} (n={len(frames)})")
            if np.isfinite(half).any():
                ax.fill_between(grid, mean - half, mean + half, alpha=0.2, color=line.get_color())
        limit = cost_limit if _is_cost(metric) else None
        _finish_axes(
            ax, x_label=x_label, y_label=f"{y_label} (mean, 95% CI)", title=metric, limit=limit
        )
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def plot_return_cost_scatter(
    table: pd.DataFrame,
    cost_limit: float,
    out_png: str | os.PathLike,
    *,
    return_key: str = "final_return",
    cost_key: str = "final_cost",
    label_key: str = "label",
    title: str | None = None,
) -> Path:
    """Return against cost, one point per row (method), infeasible side shaded.

    ``table`` is e.g. :func:`cmo_rl.evaluation.summary_table`'s output: columns ``label_key``,
    ``return_key``, ``cost_key``, and optional ``<key>_ci95`` half-widths drawn as error bars.
    The limit is a dashed vertical line; costs above it are shaded red (infeasible).

    Examples:
        >>> import tempfile
        >>> table = pd.DataFrame({"label": ["ppo_lag", "cmo"], "final_return": [10.0, 14.0],
        ...                       "final_cost": [30.0, 22.0], "final_return_ci95": [1.0, 2.0]})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_return_cost_scatter(table, 25.0, f"{d}/scatter.png").name
        'scatter.png'
    """
    for key in (label_key, return_key, cost_key):
        if key not in table.columns:
            raise ValueError(f"table lacks column {key!r}; it has {list(table.columns)}")
    if table.empty:
        raise ValueError("table is empty")
    fig, (ax,) = _new_figure(1)
    for _, row in table.iterrows():
        xerr = row.get(f"{cost_key}_ci95")
        yerr = row.get(f"{return_key}_ci95")
        ax.errorbar(
            row[cost_key],
            row[return_key],
            xerr=None if xerr is None or pd.isna(xerr) else xerr,
            yerr=None if yerr is None or pd.isna(yerr) else yerr,
            fmt="o",
            capsize=4,
            label=str(row[label_key]),
        )
    ax.axvline(float(cost_limit), label=f"cost limit d = {cost_limit:g}", **_LIMIT_STYLE)
    right = max(ax.get_xlim()[1], float(cost_limit) * 1.05 + 1e-9)
    ax.axvspan(float(cost_limit), right, color="tab:red", alpha=0.08, label="infeasible")
    ax.set_xlim(right=right)
    ax.set_xlabel(f"episode cost ({cost_key})")
    ax.set_ylabel(f"episode return ({return_key})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def _columns(df: pd.DataFrame, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [c for c in df.columns if regex.fullmatch(c) and df[c].notna().any()]


def plot_meta_training(
    csv: Frame,
    out_png: str | os.PathLike,
    *,
    x: str = "step",
    cost_limit: float | None = None,
    title: str | None = None,
    x_label: str = "meta-iteration",
) -> Path:
    """Meta-training curves of ``cmo``: one panel per group present in the CSV.

    Panels (skipped when absent): ``meta/objective``; ``meta/return`` with the per-task
    ``meta/return/<task>``; ``meta/cost`` with the per-task ``meta/cost/<task>`` (and the
    ``cost_limit`` line); the PID gains ``meta/KP``, ``meta/KI``, ``meta/KD`` (and per-task
    ``meta/KP/<task>`` ...). Names as in ``docs/metrics.md``.

    Examples:
        >>> import tempfile
        >>> df = pd.DataFrame({"step": [0, 1, 2], "meta/objective": [3.0, 2.0, 1.5],
        ...                    "meta/cost/PointGoal1": [40.0, 30.0, 26.0], "meta/KP": [0.1, 0.2, 0.25]})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_meta_training(df, f"{d}/meta.png", cost_limit=25.0).name
        'meta.png'
    """
    df = _frame(csv)
    if x not in df.columns:
        raise ValueError(f"metrics frame lacks column {x!r}; it has {list(df.columns)}")
    panels = [
        ("meta-objective", _columns(df, r"meta/objective"), False),
        ("episode return", _columns(df, r"meta/return(/.+)?"), False),
        ("episode cost", _columns(df, r"meta/cost(/.+)?"), True),
        ("PID gain", _columns(df, r"meta/K[PID](/.+)?"), False),
    ]
    panels = [p for p in panels if p[1]]
    if not panels:
        raise ValueError(
            "no meta-training metrics (meta/objective, meta/return, meta/cost, meta/KP...) in "
            f"the frame; it has {list(df.columns)}"
        )
    ncols = min(2, len(panels))
    fig, axes = _new_figure(ncols, nrows=-(-len(panels) // ncols))  # 2 x 2 for four panels
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (y_label, columns, is_cost) in zip(axes, panels):
        for column in columns:
            xs, ys = _series(df, x, column)
            mean_line = column.count("/") == 1  # meta/return: the mean over tasks
            ax.plot(xs, ys, label=column, linewidth=2.0 if mean_line else 1.0)
        limit = cost_limit if is_cost else None
        _finish_axes(ax, x_label=x_label, y_label=y_label, title=None, limit=limit)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)
