"""Copy a comparison study's results into the repository: tables and every run's metrics.

    python scripts/export_study.py runs/studies/halfcheetah-1M docs/results/halfcheetah-1M

writes ``<dest>/summary.csv``, ``summary.md``, ``study.json`` (when the study has them) and
``<dest>/<task>/<method>/seed<k>.csv`` (each finished run's ``metrics.csv``), so the tables and
figures in ``docs/results.md`` can be recomputed without the run directories (checkpoints stay
out of git). Runs are found from their ``status.json`` (one per run, or one per population);
unfinished ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def finished_runs(study: Path) -> dict[tuple[str, str, int], Path]:
    """``{(task, method, seed): run directory}`` of the study's finished runs."""
    found = {}
    for status_file in sorted(study.glob("*/*/*/status.json")):
        status = json.loads(status_file.read_text())
        if status.get("status") != "done":
            continue
        where = status_file.parent
        task, method = where.parent.parent.name, where.parent.name
        run_dirs = status["run_dir"]
        if not isinstance(run_dirs, dict):  # a single run: .../seed<k>/
            run_dirs = {where.name.removeprefix("seed"): run_dirs}
        for seed, run_dir in run_dirs.items():
            # resolve beside the status file, so a moved study still exports
            local = where / Path(run_dir).relative_to(Path(run_dir).parents[2])
            found[(task, method, int(seed))] = local
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="<run_root>/<study>")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if not args.study.is_dir():
        print(f"no study directory {args.study}", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.csv", "summary.md", "study.json"):
        if (args.study / name).is_file():
            shutil.copyfile(args.study / name, args.dest / name)
    runs = finished_runs(args.study)
    for (task, method, seed), run_dir in runs.items():
        target = args.dest / task / method / f"seed{seed}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "metrics.csv", target)
    print(f"{len(runs)} finished runs exported to {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
