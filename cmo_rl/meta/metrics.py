"""What a meta-training run logs: one row per meta-iteration, windows of rows, the console line.

:func:`iteration_metrics` turns :meth:`~cmo_rl.meta.trainer.MetaTrainer.meta_iteration`'s dict
(already named as in ``docs/metrics.md``) and its tasks
(:attr:`~cmo_rl.meta.trainer.MetaTrainer.last_tasks`) into one row (``meta/return``,
``meta/return/<task>``, ``meta/violation``, ...);
:class:`MetricWindow` reduces the rows between two logged ones; :func:`log_line` is the console
summary of a logged row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cmo_rl.meta.pid import PID_GAINS

if TYPE_CHECKING:
    from cmo_rl.meta.trainer import TaskOutcome

__all__ = ["MetricWindow", "iteration_metrics", "log_line"]


def iteration_metrics(
    metrics: Mapping[str, float], tasks: Sequence[TaskOutcome], *, cost_limit: float
) -> dict[str, float]:
    """The row of one meta-iteration: ``meta_iteration``'s ``metrics`` (already named as in
    ``docs/metrics.md``; ``meta/iteration`` left out, it is the row's ``step``), and of its
    ``tasks``: per task name the mean final return and cost (``meta/return/<name>``,
    ``meta/cost/<name>``, of the tasks' ``meta/return`` and ``meta/cost``) and the mean
    violation ``max(0, J_C - d)`` over all tasks (``meta/violation``).

    Examples:
        >>> from cmo_rl.meta.trainer import TaskOutcome
        >>> tasks = [TaskOutcome("A", 0, {"meta/return": 1.0, "meta/cost": 2.0}),
        ...          TaskOutcome("B", 0, {"meta/return": 3.0, "meta/cost": 6.0})]
        >>> row = iteration_metrics({"meta/objective": 1.0, "meta/return": 2.0, "meta/cost": 4.0,
        ...                          "meta/skipped_updates": 0.0, "meta/iteration": 3.0},
        ...                         tasks, cost_limit=3.0)
        >>> row["meta/return"], row["meta/return/B"], row["meta/violation"], "meta/iteration" in row
        (2.0, 3.0, 1.5, False)
    """
    row = {k: float(v) for k, v in metrics.items() if k != "meta/iteration"}
    per_task: dict[str, list[Mapping[str, float]]] = {}
    for task in tasks:
        per_task.setdefault(task.name, []).append(task.metrics)
    for name, mine in per_task.items():
        row[f"meta/return/{name}"] = sum(m["meta/return"] for m in mine) / len(mine)
        row[f"meta/cost/{name}"] = sum(m["meta/cost"] for m in mine) / len(mine)
    if tasks:
        violations = [max(0.0, t.metrics["meta/cost"] - cost_limit) for t in tasks]
        row["meta/violation"] = sum(violations) / len(tasks)
    return row


class MetricWindow:
    """Accumulates per-iteration metrics between two logged rows.

    Means over the iterations in the window for most names (per-task names: over the tasks'
    occurrences), the latest value for state-like names (PID gains, ``meta/lr``), the sum for
    ``meta/skipped_updates``. Its state goes into the checkpoint (weights-only safe).

    Examples:
        >>> w = MetricWindow()
        >>> w.add({"meta/objective": 1.0, "meta/KP": 0.1, "meta/skipped_updates": 1.0})
        >>> w.add({"meta/objective": 3.0, "meta/KP": 0.2, "meta/skipped_updates": 0.0})
        >>> w.flush()
        {'meta/objective': 2.0, 'meta/KP': 0.2, 'meta/skipped_updates': 1.0}
    """

    _LATEST = (*(f"meta/{g}" for g in PID_GAINS), "meta/lr")
    _SUM = ("meta/skipped_updates",)

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, row: Mapping[str, float]) -> None:
        """Add one iteration's row."""
        for key, value in row.items():
            if key in self._LATEST:
                self.sums[key], self.counts[key] = float(value), 1
            else:
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
                self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        """The row to log; empties the window."""
        row = {k: v if k in self._SUM else v / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return row

    def state_dict(self) -> dict[str, Any]:
        """The partial window (plain floats and ints)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sums = {str(k): float(v) for k, v in state["sums"].items()}
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}


def log_line(it: int, total: int, row: Mapping[str, float], cost_limit: float) -> str:
    """The console summary of the logged ``row`` of meta-iteration ``it`` of ``total``.

    Examples:
        >>> log_line(3, 10, {"meta/objective": 1.5, "meta/cost": 2.0, "meta/KP": 0.08}, 1.0)
        '[3/10]  objective 1.5  cost 2 (limit 1)  KP 0.08'
    """

    def fmt(key: str, label: str) -> str:
        value = row.get(key)
        return f"{label} {value:.4g}" if value is not None and math.isfinite(value) else ""

    parts = [
        f"[{it}/{total}]",
        fmt("meta/objective", "objective"),
        fmt("meta/return", "return"),
        fmt("meta/cost", "cost") + f" (limit {cost_limit:g})",
        fmt("meta/lambda", "lambda"),
    ]
    parts += [fmt(f"meta/{g}", g) for g in PID_GAINS]
    parts.append(fmt("time/iteration", "s/it"))
    if row.get("meta/skipped_updates"):
        parts.append(f"skipped {int(row['meta/skipped_updates'])}")
    return "  ".join(p for p in parts if p)
