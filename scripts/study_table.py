"""One comparison table from the exported CSVs of several studies (``scripts/export_study.py``).

    python scripts/study_table.py docs/results/pointgoal1-500k docs/results/pointgoal1-500k-rules

Each folder holds ``<task>/<method>/seed<k>.csv`` (a run's ``metrics.csv``). The table has a
row per task and method (the first folder that has a method wins), computed by the comparison
suite's own :func:`cmo_rl.compare.aggregate.comparison_table` (mean ± 95% CI over seeds), so
cells run at different times with the same settings land in one table. The cost limit, ``mu``
and tail fraction are ``recipes/config/compare.yaml``'s unless given; runs of one task that
end at different env steps (another budget) are refused. ``--out`` writes ``<out>.md`` /
``<out>.csv`` besides printing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmo_rl.compare.aggregate import comparison_table, format_markdown  # noqa: E402


def exported_runs(folder: Path) -> list[SimpleNamespace]:
    """Every ``<task>/<method>/seed<k>.csv`` of ``folder`` as a finished run for
    :func:`comparison_table` (``wall_s`` unknown)."""
    runs = []
    for csv in sorted(folder.glob("*/*/seed*.csv")):
        task, method = csv.parent.parent.name, csv.parent.name
        seed = int(csv.stem.removeprefix("seed"))
        frame = pd.read_csv(csv, float_precision="round_trip")
        spec = SimpleNamespace(task=task, method=method, seed=seed)
        runs.append(SimpleNamespace(spec=spec, ok=True, metrics=frame, wall_s=float("nan")))
    return runs


def combined_table(
    folders: list[Path], *, cost_limit: float, mu: float, tail_fraction: float
) -> pd.DataFrame:
    """The table of every folder's runs (a ``ValueError`` when a task's runs end at
    different env steps)."""
    runs, seen = [], set()
    for folder in folders:
        mine = exported_runs(folder)
        if not mine:
            raise ValueError(f"{folder} holds no <task>/<method>/seed<k>.csv")
        runs += [r for r in mine if (r.spec.task, r.spec.method) not in seen]
        seen |= {(r.spec.task, r.spec.method) for r in mine}
    last_steps: dict[str, set] = {}
    for r in runs:
        last_steps.setdefault(r.spec.task, set()).add(int(r.metrics["step"].max()))
    for task, steps in last_steps.items():
        if len(steps) > 1:
            raise ValueError(f"{task}: the runs end at different env steps {sorted(steps)}")
    return comparison_table(runs, cost_limit, mu, tail_fraction=tail_fraction)


def main(argv: list[str] | None = None) -> int:
    defaults = yaml.safe_load((REPO / "recipes" / "config" / "compare.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="exported study folders")
    parser.add_argument("--cost-limit", type=float, default=float(defaults["cost_limit"]))
    parser.add_argument("--mu", type=float, default=float(defaults["mu"]))
    parser.add_argument("--tail-fraction", type=float, default=float(defaults["tail_fraction"]))
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.csv")
    args = parser.parse_args(argv)
    try:
        table = combined_table(
            args.folders, cost_limit=args.cost_limit, mu=args.mu, tail_fraction=args.tail_fraction
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    header = (
        f"cost limit {args.cost_limit:g}, penalized return with mu = {args.mu:g}, final = last "
        f"{args.tail_fraction:g} of the updates; from {', '.join(map(str, args.folders))}"
    )
    text = f"{header}\n\n{format_markdown(table)}"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text + "\n")
        table.to_csv(args.out.with_suffix(".csv"), index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
