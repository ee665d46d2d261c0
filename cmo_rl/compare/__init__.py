"""The comparison suite behind ``recipes/compare.py``: plan, run, reuse, aggregate, plot.

* :mod:`cmo_rl.compare.plan`: the methods, the shared budget, one :class:`RunSpec` per
  ``task x method x seed`` with its command line and directory;
* :mod:`cmo_rl.compare.runner`: subprocess execution (sequential or ``jobs`` at a time), reuse
  of finished runs, crash reports;
* :mod:`cmo_rl.compare.frozen` (a subpackage, run as ``python -m cmo_rl.compare.frozen``, not
  re-exported here): the program of the meta methods (a frozen meta-trained optimizer trains a
  fresh policy, logged like a baseline recipe);
* :mod:`cmo_rl.compare.aggregate`: per-run metrics, the mean ± 95% CI table over seeds
  (markdown, CSV) and the figures.
"""

from cmo_rl.compare.aggregate import (
    RUN_METRICS,
    comparison_table,
    format_markdown,
    plot_study,
    summarize_method_run,
    write_table,
)
from cmo_rl.compare.plan import (
    METHODS,
    UNCONSTRAINED_LIMIT,
    Budget,
    Method,
    RunSpec,
    fingerprint,
    meta_training_spec,
    plan_runs,
    run_command,
)
from cmo_rl.compare.runner import (
    RunResult,
    collect,
    execute,
    find_run_dir,
    member_run_dirs,
    read_status,
    resumable,
    run_state,
)

__all__ = [
    "METHODS",
    "RUN_METRICS",
    "UNCONSTRAINED_LIMIT",
    "Budget",
    "Method",
    "RunResult",
    "RunSpec",
    "collect",
    "comparison_table",
    "execute",
    "find_run_dir",
    "fingerprint",
    "format_markdown",
    "member_run_dirs",
    "meta_training_spec",
    "plan_runs",
    "plot_study",
    "read_status",
    "resumable",
    "run_command",
    "run_state",
    "summarize_method_run",
    "write_table",
]
