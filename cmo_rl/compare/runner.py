"""Run planned runs as subprocesses: reuse finished ones, contain and report crashes.

A run is **done** (:func:`run_state` returns ``"done"``) when its ``status.json`` says so with
the planned run's fingerprint, and its run directory holds ``metrics.csv`` and a final
checkpoint (``checkpoints/step_<final step>.pt``); a population is done when every member's
run directory is. A done run is reused, never recomputed. An **interrupted** run (its
``command.json`` has the planned fingerprint, a checkpoint on disk, and either no
``status.json`` — the study was stopped or its session ended — or one that says a signal
stopped it: killed, ``SIGINT`` / ``SIGTERM`` handled, exit codes ``< 0``, 130, 137, 143) is
resumed where its newest checkpoint left it (``resume=<run dir>``). Anything else is run again
from scratch: a run that crashed on its own (an error exit, a timeout) or is differently
configured has its directory cleared first (the program writes a fresh run directory).

A population run (:attr:`~cmo_rl.compare.plan.RunSpec.seeds`) is one process; its results
come back as one :class:`RunResult` per member, with that member's run directory.

A run **crashes** when the program exits non-zero, is killed, exceeds ``timeout_s`` or exits 0
without leaving the files above; ``status.json`` then holds the exit code, the reason and the
path of ``log.txt`` (stdout + stderr), and the console gets one line with that path.

:func:`execute` runs them sequentially, or ``jobs`` at a time with a
:class:`concurrent.futures.ThreadPoolExecutor` whose threads each wait on one subprocess
(Hydra's joblib launcher is not installed here; the runs are processes either way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmo_rl.compare.plan import RunSpec, describe

__all__ = [
    "RunResult",
    "collect",
    "execute",
    "find_run_dir",
    "member_run_dirs",
    "read_status",
    "resumable",
    "run_state",
]

STATUS_FILE = "status.json"
COMMAND_FILE = "command.json"
LOG_FILE = "log.txt"
_TAIL_CHARS = 1500


@dataclass
class RunResult:
    """What became of one planned run.

    Attributes:
        spec: the planned run.
        status: ``"done"``, ``"reused"`` (done earlier), ``"crashed"``, ``"blocked"`` or
            ``"missing"`` (:func:`collect` only: not run yet).
        run_dir: the program's run directory (with ``metrics.csv``), when there is one.
        returncode: the exit code (``None`` when it was not run now or timed out).
        reason: why it crashed or is blocked.
        log: the path of its ``log.txt``.
        wall_s: seconds the subprocess ran.

    Examples:
        >>> from cmo_rl.compare.plan import Budget, plan_runs
        >>> spec = plan_runs(study_dir="/tmp/s", tasks=["MockCMDP-v0"], methods=["cpo"], seeds=[0],
        ...                  budget=Budget(400, 4, 25))[0]
        >>> RunResult(spec, "crashed", reason="exit code 1").ok
        False
    """

    spec: RunSpec
    status: str
    run_dir: Path | None = None
    returncode: int | None = None
    reason: str | None = None
    log: Path | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the run has results (``done`` or ``reused``)."""
        return self.status in ("done", "reused")


def find_run_dir(directory: str | os.PathLike) -> Path | None:
    """The program's run directory under a planned run's directory: the newest folder holding
    a ``metrics.csv`` (``<run name>/<task>/<timestamp>/``), or ``None``.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = Path(d, "cpo", "MockCMDP-v0", "20250101-000000")
        ...     run.mkdir(parents=True)
        ...     _ = (run / "metrics.csv").write_text("step\\n")
        ...     find_run_dir(d) == run
        True
    """
    found = sorted(Path(directory).glob("*/*/*/metrics.csv"), key=lambda p: p.parent.name)
    return found[-1].parent if found else None


def member_run_dirs(directory: str | os.PathLike) -> dict[int, Path]:
    """``{seed: run directory}`` of the population under a planned run's directory: the
    members listed in the newest ``population.json`` (found beside each other, so a moved
    study still resolves), or ``{}``.

    Examples:
        >>> import json, tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     runs = [Path(d, "ppo_lag", "T", name) for name in ("20250101-000000", "20250101-000000-1")]
        ...     for run in runs:
        ...         run.mkdir(parents=True)
        ...         index = {"seeds": [3, 4], "run_dirs": ["/elsewhere/" + r.name for r in runs]}
        ...         _ = (run / "population.json").write_text(json.dumps(index))
        ...     {seed: path.name for seed, path in member_run_dirs(d).items()}
        {3: '20250101-000000', 4: '20250101-000000-1'}
    """
    found = sorted(Path(directory).glob("*/*/*/population.json"), key=lambda p: p.parent.name)
    if not found:
        return {}
    index = json.loads(found[-1].read_text())
    parent = found[-1].parent.parent
    return {int(s): parent / Path(d).name for s, d in zip(index["seeds"], index["run_dirs"])}


def read_status(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``status.json`` of a planned run's directory, or ``None`` (missing or unreadable).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "status.json").write_text('{"status": "done"}')
        ...     read_status(d)["status"], read_status(d + "/nothing")
        ('done', None)
    """
    path = Path(directory) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _final_checkpoint(run_dir: Path, final_step: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{int(final_step):012d}.pt").is_file()


def run_state(spec: RunSpec) -> str:
    """``"done"`` (reusable), ``"crashed"`` (its last attempt crashed) or ``"missing"`` (never
    run, interrupted, or run with another configuration).

    Examples:
        >>> from cmo_rl.compare.plan import Budget, plan_runs
        >>> spec = plan_runs(study_dir="/nonexistent", tasks=["MockCMDP-v0"], methods=["cpo"],
        ...                  seeds=[0], budget=Budget(400, 4, 25))[0]
        >>> run_state(spec)
        'missing'
    """
    status = read_status(spec.directory)
    if status is None or status.get("fingerprint") != spec.fingerprint:
        return "missing"
    if status.get("status") == "crashed":
        return "crashed"
    if status.get("status") != "done":
        return "missing"
    if spec.seeds:
        members = member_run_dirs(spec.directory)
        finished = [
            s in members and _final_checkpoint(members[s], spec.final_step) for s in spec.seeds
        ]
        return "done" if all(finished) else "missing"
    run_dir = find_run_dir(spec.directory)
    if run_dir is None or not _final_checkpoint(run_dir, spec.final_step):
        return "missing"
    return "done"


#: Exit codes of a program stopped by a signal: killed (``-N`` from ``subprocess``), or Ctrl-C /
#: SIGKILL / SIGTERM as a shell reports them (``128 + N``; cmo_rl's programs exit 130 / 143).
_SIGNAL_EXITS = frozenset({130, 137, 143})


def stopped_by_a_signal(status: dict[str, Any]) -> bool:
    """Whether a ``status.json`` records a run that a signal stopped (not one that failed).

    Examples:
        >>> stopped_by_a_signal({"status": "crashed", "returncode": -9})
        True
        >>> stopped_by_a_signal({"status": "crashed", "returncode": 143})
        True
        >>> stopped_by_a_signal({"status": "crashed", "returncode": 1})
        False
        >>> stopped_by_a_signal({"status": "crashed", "returncode": None})  # a timeout
        False
    """
    code = status.get("returncode")
    return (
        status.get("status") == "crashed"
        and code is not None
        and (code < 0 or code in _SIGNAL_EXITS)
    )


def resumable(spec: RunSpec) -> Path | None:
    """The run directory to continue an interrupted ``spec`` from (see the module docs), or
    ``None``: it was launched with the planned fingerprint, never finished (no
    ``status.json``, or one of a run a signal stopped) and left a checkpoint.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.compare.plan import Budget, describe, plan_runs
        >>> with tempfile.TemporaryDirectory() as d:
        ...     spec = plan_runs(study_dir=d, tasks=["MockCMDP-v0"], methods=["cpo"], seeds=[0],
        ...                      budget=Budget(400, 4, 25))[0]
        ...     run = spec.directory / "cpo" / "MockCMDP-v0" / "20250101-000000"
        ...     (run / "checkpoints").mkdir(parents=True)
        ...     _ = (run / "metrics.csv").write_text("step")
        ...     _ = (spec.directory / "command.json").write_text(json.dumps(describe(spec)))
        ...     before = resumable(spec)
        ...     _ = (run / "checkpoints" / "step_000000000100.pt").write_bytes(b"x")
        ...     before, resumable(spec) == run
        (None, True)
    """
    status = read_status(spec.directory)
    if status is not None and not stopped_by_a_signal(status):
        return None
    try:
        launched = json.loads((spec.directory / COMMAND_FILE).read_text())
    except (OSError, ValueError):
        return None
    if launched.get("fingerprint") != spec.fingerprint:
        return None
    if spec.seeds:
        runs = list(member_run_dirs(spec.directory).values())
    else:
        runs = [run for run in [find_run_dir(spec.directory)] if run is not None]
    with_checkpoints = [run for run in runs if any((run / "checkpoints").glob("step_*.pt"))]
    return with_checkpoints[0] if with_checkpoints else None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_CHARS))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _run_one(
    spec: RunSpec, timeout_s: float | None, env: dict[str, str] | None, echo: Callable[[str], None]
) -> list[RunResult]:
    resume = resumable(spec)
    argv: list[str] | None = spec.argv
    if resume is not None:
        finished = all(
            d is not None and _final_checkpoint(d, spec.final_step)
            for d in _run_dirs(spec).values()
        )
        # killed after its last checkpoint, before its status was written: nothing to run
        argv = None if finished else [*argv, f"resume={resume}"]
        echo(f"resume   {spec.key} from {resume}" + (" (already finished)" if finished else ""))
    else:
        if spec.directory.exists():
            shutil.rmtree(spec.directory)
        spec.directory.mkdir(parents=True)
        _write_json(spec.directory / COMMAND_FILE, describe(spec))
    log = spec.directory / LOG_FILE
    start = time.perf_counter()
    returncode: int | None = None
    reason: str | None = None
    with open(log, "ab") as out:
        try:
            proc = subprocess.run(
                argv or [sys.executable, "-c", ""],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(Path.cwd()),
                env=env,
                timeout=timeout_s,
                check=False,
            )
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            reason = f"timed out after {timeout_s:g} s (killed)"
    wall = time.perf_counter() - start
    run_dirs = _run_dirs(spec)
    if reason is None and returncode != 0:
        reason = f"exit code {returncode}"
    if reason is None and None in run_dirs.values():
        reason = "exited 0 but wrote no metrics.csv"
    if reason is None:
        unfinished = [d for d in run_dirs.values() if not _final_checkpoint(d, spec.final_step)]
        if unfinished:
            reason = f"exited 0 but left no final checkpoint in {unfinished[0] / 'checkpoints'}"
    status = "crashed" if reason else "done"
    _write_json(
        spec.directory / STATUS_FILE,
        {
            "status": status,
            "fingerprint": spec.fingerprint,
            "returncode": returncode,
            "reason": reason,
            "log": str(log),
            "run_dir": {str(s): str(d) if d else None for s, d in run_dirs.items()}
            if spec.seeds
            else (str(run_dirs[spec.seed]) if run_dirs[spec.seed] else None),
            "wall_s": wall,
            "log_tail": _tail(log) if reason else "",
        },
    )
    return _results(spec, status, returncode, reason, log, wall)


def _run_dirs(spec: RunSpec) -> dict[int, Path | None]:
    """``{seed: run directory or None}`` of a planned run (one entry for a single run)."""
    if spec.seeds:
        members = member_run_dirs(spec.directory)
        return {s: members.get(s) for s in spec.seeds}
    return {spec.seed: find_run_dir(spec.directory)}


def _results(
    spec: RunSpec,
    status: str,
    returncode: int | None = None,
    reason: str | None = None,
    log: Path | None = None,
    wall_s: float = 0.0,
) -> list[RunResult]:
    """One :class:`RunResult` per member of ``spec`` (one for a single run)."""
    run_dirs = _run_dirs(spec) if status != "blocked" else {}
    return [
        RunResult(member, status, run_dirs.get(member.seed), returncode, reason, log, wall_s)
        for member in spec.members()
    ]


def _previous(spec: RunSpec) -> list[RunResult]:
    status = read_status(spec.directory) or {}
    return _results(
        spec,
        "reused",
        status.get("returncode"),
        None,
        spec.directory / LOG_FILE,
        float(status.get("wall_s", 0.0)),
    )


def collect(specs: Sequence[RunSpec]) -> list[RunResult]:
    """The results on disk, running nothing: ``reused`` (done), ``crashed`` (with the reason and
    log of its last attempt), ``blocked``, or ``missing`` (never run or interrupted).

    Examples:
        >>> import tempfile
        >>> from cmo_rl.compare.plan import Budget, plan_runs
        >>> with tempfile.TemporaryDirectory() as d:
        ...     specs = plan_runs(study_dir=d, tasks=["MockCMDP-v0"], methods=["cpo"], seeds=[0, 1],
        ...                       budget=Budget(400, 4, 25))
        ...     [r.status for r in collect(specs)]
        ['missing', 'missing']
    """
    out = []
    for spec in specs:
        state = "blocked" if spec.blocked else run_state(spec)
        if state == "done":
            out += _previous(spec)
        elif state == "blocked":
            out += _results(spec, "blocked", reason=spec.blocked)
        elif state == "crashed":
            status = read_status(spec.directory) or {}
            out += _results(
                spec,
                "crashed",
                status.get("returncode"),
                status.get("reason"),
                Path(status.get("log") or spec.directory / LOG_FILE),
                float(status.get("wall_s", 0.0)),
            )
        else:
            out += _results(spec, "missing", reason="not run (or interrupted)")
    return out


def execute(
    specs: Sequence[RunSpec],
    *,
    jobs: int = 1,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> list[RunResult]:
    """Run every spec that is not done yet; returns one :class:`RunResult` per spec (per
    member of a population), in order.

    Args:
        specs: the planned runs.
        jobs: subprocesses at a time (1: sequential).
        timeout_s: wall-clock limit per run (``None``: none); a run over it is killed and
            reported as crashed.
        env: the subprocesses' environment (``None``: this process's).
        echo: where the one-line progress and crash reports go.

    Examples:
        >>> import tempfile
        >>> from cmo_rl.compare.plan import Budget, plan_runs
        >>> with tempfile.TemporaryDirectory() as d:
        ...     spec = plan_runs(study_dir=d, tasks=["MockCMDP-v0"], methods=["meta_pid"], seeds=[0],
        ...                      budget=Budget(400, 4, 25))[0]  # no checkpoint: blocked
        ...     [(r.status, r.reason) for r in execute([spec], echo=lambda s: None)]
        [('blocked', 'no meta-trained pid checkpoint')]
    """
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    results: list[list[RunResult] | None] = [None] * len(specs)
    todo = []
    for i, spec in enumerate(specs):
        if spec.blocked:
            results[i] = _results(spec, "blocked", reason=spec.blocked)
            echo(f"blocked  {spec.key}: {spec.blocked}")
        elif run_state(spec) == "done":
            results[i] = _previous(spec)
        else:
            todo.append(i)
    reused = sum(r is not None and r[0].status == "reused" for r in results)
    echo(f"{len(specs)} runs: {reused} reused, {len(todo)} to run, {jobs} at a time")
    counter = {"finished": 0}

    def work(i: int) -> list[RunResult]:
        spec = specs[i]
        echo(f"start    {spec.key}")
        result = _run_one(spec, timeout_s, env, echo)
        counter["finished"] += 1
        n = f"[{counter['finished']}/{len(todo)}]"
        if result[0].ok:
            echo(f"done     {spec.key} in {result[0].wall_s:.0f} s {n}")
        else:
            echo(f"CRASHED  {spec.key}: {result[0].reason}; log: {result[0].log} {n}")
        return result

    if int(jobs) == 1:
        for i in todo:
            results[i] = work(i)
    else:
        with ThreadPoolExecutor(max_workers=int(jobs)) as pool:
            for i, result in zip(todo, pool.map(work, todo)):
                results[i] = result
    return [member for result in results if result is not None for member in result]
