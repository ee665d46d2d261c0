"""Aggregate a study: per-run metrics, mean ± 95% CI over seeds, markdown/CSV tables, figures.

Per run (:func:`summarize_method_run`, on its ``metrics.csv``, limit ``d``):

* ``eval_return``, ``eval_cost``: the **final** deterministic evaluation (the last ``eval/``
  row, after the last update); ``penalized_return = eval_return - mu max(0, eval_cost - d)``;
* on the **training curve** (``train/episode_return``, ``train/episode_cost``: the mean return
  and cost of the episodes of each update's batch, one point per update, on the same env-step
  grid for every method): ``train_return``, ``train_cost`` (mean of the last quarter of the
  points), ``satisfaction_rate`` (fraction of updates whose episodes met the limit on average),
  ``cumulative_violation`` (:math:`\\sum_k \\max(0, C_k - d)`), ``overshoot`` (after the first
  upward crossing of ``d``), ``cost_oscillation`` (std of the last quarter), ``auc_return``,
  ``auc_cost`` (time-averages over env steps): :func:`cmo_rl.evaluation.summarize_run`.

Per ``(task, method)`` (:func:`comparison_table`): mean and t-based 95% CI half-width over the
seeds that finished (:func:`cmo_rl.evaluation.mean_ci95`); crashed and blocked runs are counted
and listed with their reason and log, never dropped silently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmo_rl.evaluation import mean_ci95, penalized_return, summarize_run

__all__ = [
    "RUN_METRICS",
    "comparison_table",
    "format_markdown",
    "plot_study",
    "summarize_method_run",
    "write_table",
]

#: ``(column, markdown header)`` of every per-run metric, in table order.
RUN_METRICS: tuple[tuple[str, str], ...] = (
    ("eval_return", "eval return"),
    ("eval_cost", "eval cost"),
    ("penalized_return", "penalized return"),
    ("train_return", "train return"),
    ("train_cost", "train cost"),
    ("satisfaction_rate", "satisfaction"),
    ("cumulative_violation", "cum. violation"),
    ("overshoot", "overshoot"),
    ("cost_oscillation", "oscillation"),
    ("auc_return", "AUC return"),
    ("auc_cost", "AUC cost"),
)
_TRAIN_R, _TRAIN_C = "train/episode_return", "train/episode_cost"
_EVAL_R, _EVAL_C = "eval/episode_return", "eval/episode_cost"


def _frame(data: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    return pd.read_csv(Path(data), float_precision="round_trip")


def summarize_method_run(
    metrics: pd.DataFrame | str | os.PathLike,
    cost_limit: float,
    mu: float,
    *,
    tail_fraction: float = 0.25,
) -> dict[str, float]:
    """The :data:`RUN_METRICS` of one run (plus ``final_step``), from its ``metrics.csv``.

    Examples:
        >>> df = pd.DataFrame({"step": [100, 200, 300, 400],
        ...     "train/episode_return": [0.0, 10.0, 20.0, 30.0],
        ...     "train/episode_cost": [10.0, 30.0, 20.0, 26.0],
        ...     "eval/episode_return": [None, 12.0, None, 40.0],
        ...     "eval/episode_cost": [None, 50.0, None, 29.0]})
        >>> s = summarize_method_run(df, cost_limit=25.0, mu=2.0)
        >>> s["eval_return"], s["penalized_return"], s["train_cost"], s["cumulative_violation"]
        (40.0, 32.0, 26.0, 6.0)
        >>> s["satisfaction_rate"], s["overshoot"], s["auc_return"]
        (0.5, 5.0, 15.0)
    """
    df = _frame(metrics)
    evals = df.dropna(subset=[c for c in (_EVAL_R, _EVAL_C) if c in df.columns])
    if _EVAL_R not in df.columns or _EVAL_C not in df.columns or evals.empty:
        raise ValueError(f"no evaluation row ({_EVAL_R}, {_EVAL_C}) in the metrics")
    last = evals.sort_values("step").iloc[-1]
    eval_r, eval_c = float(last[_EVAL_R]), float(last[_EVAL_C])
    curve = summarize_run(
        df, cost_limit, mu, return_key=_TRAIN_R, cost_key=_TRAIN_C, tail_fraction=tail_fraction
    )
    return {
        "eval_return": eval_r,
        "eval_cost": eval_c,
        "penalized_return": float(penalized_return(eval_r, eval_c, cost_limit, mu)),
        "train_return": curve["final_return"],
        "train_cost": curve["final_cost"],
        "satisfaction_rate": curve["constraint_satisfaction_rate"],
        "cumulative_violation": curve["cumulative_violation"],
        "overshoot": curve["overshoot"],
        "cost_oscillation": curve["cost_oscillation"],
        "auc_return": curve["auc_return"],
        "auc_cost": curve["auc_cost"],
        "final_step": curve["final_step"],
    }


def comparison_table(
    results: Sequence[Any],
    cost_limit: float,
    mu: float,
    *,
    tail_fraction: float = 0.25,
) -> pd.DataFrame:
    """One row per ``(task, method)`` in the order of ``results``.

    Args:
        results: :class:`cmo_rl.compare.runner.RunResult` s (``spec.task``, ``spec.method``,
            ``spec.seed``, ``ok``, ``run_dir``, ``status``, ``reason``, ``log``).
        cost_limit: ``d``, the per-episode cost limit.
        mu: the penalty of ``penalized_return``.

    Columns: ``task``, ``method``, ``label``, ``seeds`` (finished), ``crashed`` (crashed or
    blocked), ``crashed_runs`` (``seed<k>: <reason> (log: <path>)``, ``"; "``-joined), every
    :data:`RUN_METRICS` name and its ``<name>_ci95`` (NaN with fewer than 2 finished seeds),
    ``final_step`` and ``wall_s`` (seconds per run, of the subprocess; NaN if unknown).

    Examples:
        >>> from types import SimpleNamespace as NS
        >>> def run(seed, ret, ok=True):
        ...     df = pd.DataFrame({"step": [1, 2], "train/episode_return": [0.0, ret],
        ...         "train/episode_cost": [0.0, 0.0], "eval/episode_return": [None, ret],
        ...         "eval/episode_cost": [None, 0.0]})
        ...     return NS(spec=NS(task="T", method="cpo", seed=seed), ok=ok, metrics=df,
        ...               status="done" if ok else "crashed", reason=None if ok else "exit code 1",
        ...               log=f"/r/seed{seed}/log.txt")
        >>> t = comparison_table([run(0, 1.0), run(1, 3.0), run(2, 0.0, ok=False)], 25.0, 1.0)
        >>> int(t.loc[0, "seeds"]), int(t.loc[0, "crashed"]), float(t.loc[0, "eval_return"])
        (2, 1, 2.0)
        >>> t.loc[0, "crashed_runs"]
        'seed2: exit code 1 (log: /r/seed2/log.txt)'
    """
    from cmo_rl.compare.plan import METHODS

    groups: dict[tuple[str, str], list[Any]] = {}
    for result in results:
        groups.setdefault((result.spec.task, result.spec.method), []).append(result)
    rows = []
    for (task, method), members in groups.items():
        summaries, crashed = [], []
        for r in members:
            if r.ok:
                source = getattr(r, "metrics", None)
                if source is None:
                    source = Path(r.run_dir) / "metrics.csv"
                summaries.append(
                    summarize_method_run(source, cost_limit, mu, tail_fraction=tail_fraction)
                )
            else:
                where = f" (log: {r.log})" if r.log else ""
                crashed.append(f"seed{r.spec.seed}: {r.reason or r.status}{where}")
        label = METHODS[method].label if method in METHODS else method
        row: dict[str, Any] = {
            "task": task,
            "method": method,
            "label": label,
            "seeds": len(summaries),
            "crashed": len(crashed),
            "crashed_runs": "; ".join(crashed),
        }
        walls = [float(getattr(r, "wall_s", math.nan) or math.nan) for r in members if r.ok]
        for summary, wall in zip(summaries, walls):
            summary["wall_s"] = wall
        for key, _ in (*RUN_METRICS, ("final_step", ""), ("wall_s", "")):
            values = np.array([s[key] for s in summaries], dtype=np.float64)
            if values.size == 0 or np.isnan(values).any():
                row[key], row[f"{key}_ci95"] = math.nan, math.nan
            else:
                row[key], row[f"{key}_ci95"] = mean_ci95(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "-"
    scale = max(abs(mean), abs(half) if math.isfinite(half) else 0.0)
    decimals = 0 if scale >= 100 else 1 if scale >= 10 else 2 if scale >= 1 else 3
    text = f"{mean:.{decimals}f}"
    if math.isfinite(half):
        text += f" ± {half:.{decimals}f}"
    return text


def format_markdown(
    table: pd.DataFrame,
    *,
    metrics: Sequence[tuple[str, str]] = RUN_METRICS,
    notes: Mapping[str, str] | None = None,
) -> str:
    """Markdown: per task a ``###`` heading (plus ``notes[task]`` in parentheses) and a table
    (rows: methods; cells: mean ± 95% CI half-width over seeds; ``s/run``: mean wall-clock
    seconds per run; ``seeds``: finished/planned), then the crashed runs with their logs.

    Examples:
        >>> t = pd.DataFrame({"task": ["T"], "method": ["cpo"], "label": ["CPO"], "seeds": [2],
        ...     "crashed": [1], "crashed_runs": ["seed2: exit code 1 (log: l.txt)"],
        ...     "eval_return": [12.345], "eval_return_ci95": [1.5]})
        >>> print(format_markdown(t, metrics=[("eval_return", "eval return")]))
        ### T
        <BLANKLINE>
        | method | eval return | s/run | seeds |
        |---|---|---|---|
        | CPO | 12.3 ± 1.5 | - | 2/3 |
        <BLANKLINE>
        Crashed runs (not in the means):
        <BLANKLINE>
        - CPO seed2: exit code 1 (log: l.txt)
    """
    blocks = []
    notes = dict(notes or {})
    for task in dict.fromkeys(table["task"]):
        rows = table[table["task"] == task]
        note = f" ({notes[task]})" if notes.get(task) else ""
        lines = [f"### {task}{note}", ""]
        lines.append("| method | " + " | ".join(h for _, h in metrics) + " | s/run | seeds |")
        lines.append("|---" * (len(metrics) + 3) + "|")
        crashes = []
        for _, row in rows.iterrows():
            cells = [
                _fmt(float(row.get(k, math.nan)), float(row.get(f"{k}_ci95", math.nan)))
                for k, _ in metrics
            ]
            planned = int(row["seeds"]) + int(row["crashed"])
            wall = float(row.get("wall_s", math.nan))
            cells.append(f"{wall:.0f}" if math.isfinite(wall) else "-")
            lines.append(
                f"| {row['label']} | " + " | ".join(cells) + f" | {row['seeds']}/{planned} |"
            )
            if row["crashed_runs"]:
                crashes += [f"- {row['label']} {c}" for c in str(row["crashed_runs"]).split("; ")]
        if crashes:
            lines += ["", "Crashed runs (not in the means):", "", *crashes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_table(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    name: str = "summary",
    *,
    notes: Mapping[str, str] | None = None,
    header: str = "",
) -> list[Path]:
    """``<out_dir>/<name>.md`` (``header``, then :func:`format_markdown`) and ``<name>.csv`` (every column, full
    precision); returns both paths.

    Examples:
        >>> import tempfile
        >>> t = pd.DataFrame({"task": ["T"], "method": ["cpo"], "label": ["CPO"], "seeds": [1],
        ...                   "crashed": [0], "crashed_runs": [""]})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     [p.name for p in write_table(t, d)]
        ['summary.md', 'summary.csv']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{name}.md", out / f"{name}.csv"
    md.write_text((header + "\n\n" if header else "") + format_markdown(table, notes=notes) + "\n")
    table.to_csv(csv, index=False)
    return [md, csv]


def _slug(task: str) -> str:
    return task.replace("/", "_")


def plot_study(
    results: Sequence[Any],
    table: pd.DataFrame,
    cost_limit: float,
    out_dir: str | os.PathLike,
    *,
    prefix: str = "",
    budget_note: str = "",
) -> list[Path]:
    """Per task: ``<prefix>curves_<task>.png`` (training return and cost over env steps, mean
    with 95% CI band over seeds per method, the limit dashed) and ``<prefix>scatter_<task>.png``
    (final eval return against eval cost per method, 95% CI error bars, infeasible side shaded).
    Only finished runs are drawn. Returns the written paths.

    Examples:
        >>> import tempfile
        >>> from types import SimpleNamespace as NS
        >>> df = pd.DataFrame({"step": [1, 2], "train/episode_return": [0.0, 1.0],
        ...     "train/episode_cost": [30.0, 20.0], "eval/episode_return": [None, 1.0],
        ...     "eval/episode_cost": [None, 20.0]})
        >>> runs = [NS(spec=NS(task="T", method="cpo", seed=s), ok=True, metrics=df, status="done",
        ...            reason=None, log=None) for s in (0, 1)]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     paths = plot_study(runs, comparison_table(runs, 25.0, 1.0), 25.0, d)
        ...     [p.name for p in paths]
        ['curves_T.png', 'scatter_T.png']
    """
    from cmo_rl.compare.plan import METHODS
    from cmo_rl.plotting import plot_curves_with_ci, plot_return_cost_scatter

    out = Path(out_dir)
    paths = []
    for task in dict.fromkeys(r.spec.task for r in results):
        curves: dict[str, list[Any]] = {}
        for r in results:
            if r.spec.task == task and r.ok:
                label = METHODS[r.spec.method].label if r.spec.method in METHODS else r.spec.method
                source = getattr(r, "metrics", None)
                curves.setdefault(label, []).append(
                    source if source is not None else Path(r.run_dir) / "metrics.csv"
                )
        if not curves:
            continue
        suffix = f" ({budget_note})" if budget_note else ""
        paths.append(
            plot_curves_with_ci(
                curves,
                out / f"{prefix}curves_{_slug(task)}.png",
                metrics=((_TRAIN_R, "episode return"), (_TRAIN_C, "episode cost")),
                cost_limit=cost_limit,
                title=f"{task}: training episodes, mean and 95% CI over seeds{suffix}",
            )
        )
        rows = table[(table["task"] == task) & (table["seeds"] > 0)]
        paths.append(
            plot_return_cost_scatter(
                rows,
                cost_limit,
                out / f"{prefix}scatter_{_slug(task)}.png",
                return_key="eval_return",
                cost_key="eval_cost",
                title=f"{task}\nfinal evaluation (mean, 95% CI over seeds)"
                + (f"\n{budget_note}" if budget_note else ""),
            )
        )
    return paths
