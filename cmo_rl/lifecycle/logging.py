"""Run directories and the run logger: TensorBoard + a wide ``metrics.csv`` + a progress bar.

Layout of one run (``make_run_dir``)::

    runs/<recipe>/<env_id>/<YYYYmmdd-HHMMSS>[-<k>]/
        config.yaml        the resolved config (``RunLogger.log_hparams``)
        metrics.csv        wide CSV: ``step`` then one column per metric
        tensorboard/       TensorBoard event files
        checkpoints/       ``step_<step>.pt`` (see :mod:`cmo_rl.lifecycle.checkpoint`)

``metrics.csv`` is **wide**: one row per logged step, holding every metric logged at that step
(several ``log_scalars`` calls with the same step merge into one row; a metric not logged at a step
is an empty cell, read back as NaN by pandas). The header is ``step`` followed by the metric
names in order of first appearance. When a new metric name appears, the file is rewritten once
with the extended header (to a temp file, then ``os.replace``), so the header is always right.
Every call flushes the file to the OS, so SIGINT, SIGTERM or an exception lose nothing that was
logged; the multi-step row updates run with signals deferred (:func:`cmo_rl.lifecycle.signals.deferred_signals`).
Stable metric names are listed in ``docs/metrics.md``.

Resuming: ``RunLogger(run_dir, resume_step=s)`` drops every CSV row with ``step > s`` and opens
TensorBoard with ``purge_step=s + 1`` (TensorBoard then hides the older events after ``s``), so
the curves continue without duplicated steps.
"""

from __future__ import annotations

import atexit
import csv
import functools
import io
import math
import os
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmo_rl.lifecycle.signals import deferred_signals

__all__ = ["RunLogger", "make_run_dir", "find_runs"]

_BACKENDS = ("tensorboard", "csv")
_TIMESTAMP = "%Y%m%d-%H%M%S"
_RUN_NAME = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")
# (metric, progress-bar label) shown in the postfix, in this order, once logged.
_POSTFIX = (
    ("train/episode_return", "R"),
    ("train/episode_cost", "C"),
    ("eval/episode_return", "evalR"),
    ("eval/episode_cost", "evalC"),
    ("train/lambda", "lambda"),
    ("meta/objective", "metaJ"),
)


def _check_name_part(value: str, what: str) -> str:
    value = str(value)
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"{what} must be a non-empty name without path separators, got {value!r}")
    return value


def _run_sort_key(path: Path) -> tuple[str, int]:
    m = _RUN_NAME.match(path.name)
    assert m is not None
    return m.group(1), int(m.group(2) or 0)


def find_runs(root: str | os.PathLike, recipe: str, env_id: str | None = None) -> list[Path]:
    """Existing run directories of ``recipe`` on ``env_id`` (``None``: on any task), oldest
    first (by their timestamp names).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     a = make_run_dir(root, "ppo_lag", "MockCMDP-v0")
        ...     b = make_run_dir(root, "ppo_lag", "MockCMDP-v0")
        ...     c = make_run_dir(root, "ppo_lag", "SafetyPointGoal1-v0")
        ...     mine, every = find_runs(root, "ppo_lag", "MockCMDP-v0"), find_runs(root, "ppo_lag")
        ...     mine == [a, b], set(every) == {a, b, c}
        (True, True)
    """
    program = Path(root) / _check_name_part(recipe, "recipe")
    if env_id is not None:
        parents = [program / _check_name_part(env_id, "env_id")]
    else:
        parents = sorted(p for p in program.iterdir() if p.is_dir()) if program.is_dir() else []
    runs = [
        p
        for parent in parents
        if parent.is_dir()
        for p in parent.iterdir()
        if p.is_dir() and _RUN_NAME.match(p.name)
    ]
    return sorted(runs, key=_run_sort_key)


def make_run_dir(
    root: str | os.PathLike,
    recipe: str,
    env_id: str,
    *,
    resume: str | os.PathLike | None = None,
) -> Path:
    """Create (or, with ``resume``, find) the directory ``root/recipe/env_id/<timestamp>/``.

    A new run never reuses an existing directory: the directory is created with an atomic
    ``mkdir``, and when the timestamp is taken (two runs in the same second, even from two
    processes) a suffix ``-1``, ``-2``, ... is added.

    Args:
        root: the runs root, e.g. ``"runs"``.
        recipe: recipe name, e.g. ``"ppo_lag"``.
        env_id: task id, e.g. ``"SafetyPointGoal1-v0"``.
        resume: ``None`` for a new run; the path of an existing run directory to continue it; or
            ``"latest"`` for the newest run of ``recipe`` on ``env_id`` under ``root``.

    Returns:
        The run directory (existing when resuming, freshly created otherwise).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     first = make_run_dir(root, "ppo_lag", "MockCMDP-v0")
        ...     second = make_run_dir(root, "ppo_lag", "MockCMDP-v0")  # same second: suffixed
        ...     again = make_run_dir(root, "ppo_lag", "MockCMDP-v0", resume="latest")
        ...     first != second, again == second, first.parent.name
        (True, True, 'MockCMDP-v0')
    """
    parent = Path(root) / _check_name_part(recipe, "recipe") / _check_name_part(env_id, "env_id")
    if resume is not None:
        if str(resume) == "latest":
            runs = find_runs(root, recipe, env_id)
            if not runs:
                raise ValueError(
                    f"resume='latest' but there is no run of {recipe!r} on {env_id!r} under {parent}"
                )
            return runs[-1]
        path = Path(resume)
        if not path.is_dir():
            raise ValueError(f"resume={str(resume)!r} is not an existing run directory")
        return path
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime(_TIMESTAMP)
    for k in range(10_000):
        path = parent / (stamp if k == 0 else f"{stamp}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a fresh run directory under {parent}")


def _format_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise ValueError(
        f"metric {name!r} must be a scalar number, got {type(value).__name__} {value!r}"
    )


def _csv_line(fields: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue().encode()


def _parse_line(line: bytes) -> list[str]:
    return next(csv.reader([line.decode()]))


class _WideCSV:
    """Append-mostly wide CSV: ``step`` + metric columns, one row per step (see module doc)."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.columns: list[str] = ["step"]
        self._last_step: int | None = None
        self._last_row: dict[str, str] = {}
        self._last_offset = 0
        if path.exists():
            self._load_existing(resume_step)
        else:
            self._rewrite([])
        self._file = open(path, "r+b")  # noqa: SIM115 (kept open for the run)
        self._file.seek(0, os.SEEK_END)

    # -- reading an existing file (resume) -------------------------------------------------
    def _read_rows(self) -> tuple[list[str], list[dict[str, str]]]:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a partial last line from a hard kill
            data = data[: data.rfind(b"\n") + 1]
        lines = data.splitlines()
        if not lines:
            return ["step"], []
        header = _parse_line(lines[0])
        if not header or header[0] != "step":
            raise ValueError(f"{self.path} is not a metrics CSV: its first column is not 'step'")
        rows = []
        for line in lines[1:]:
            fields = _parse_line(line)
            rows.append(dict(zip(header, fields)))
        return header, rows

    def _load_existing(self, resume_step: int | None) -> None:
        header, rows = self._read_rows()
        self.columns = header
        if resume_step is not None:
            rows = [r for r in rows if int(r["step"]) <= resume_step]
        self._rewrite(rows)

    # -- writing ---------------------------------------------------------------------------
    def _row_bytes(self, row: Mapping[str, str]) -> bytes:
        return _csv_line([row.get(c, "") for c in self.columns])

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Write header + rows to a temp file and atomically replace the CSV."""
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(_csv_line(self.columns))
            for row in rows:
                offset = f.tell()
                f.write(self._row_bytes(row))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if rows:
            self._last_step = int(rows[-1]["step"])
            self._last_row = dict(rows[-1])
            self._last_offset = offset
        else:
            self._last_step, self._last_row, self._last_offset = None, {}, 0

    def _reopen(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
        self._file = open(self.path, "r+b")  # noqa: SIM115
        self._file.seek(0, os.SEEK_END)

    def write(self, step: int, values: Mapping[str, str]) -> None:
        """Add ``values`` to the row of ``step`` (run under ``deferred_signals``)."""
        new_columns = [k for k in values if k not in self.columns]
        if new_columns or (self._last_step is not None and step < self._last_step):
            self._write_slow(step, values, new_columns)
        elif step == self._last_step:  # merge into the last row, in place
            self._last_row.update(values)
            self._file.seek(self._last_offset)
            self._file.write(self._row_bytes(self._last_row))
            self._file.truncate()
            self._file.flush()
        else:
            row = {"step": str(step), **values}
            self._file.seek(0, os.SEEK_END)
            self._last_offset = self._file.tell()
            self._file.write(self._row_bytes(row))
            self._file.flush()
            self._last_step, self._last_row = step, row

    def _write_slow(self, step: int, values: Mapping[str, str], new_columns: list[str]) -> None:
        """New columns or an out-of-order step: rewrite the whole file (rare)."""
        self._file.flush()
        _, rows = self._read_rows()
        self.columns.extend(new_columns)
        for row in rows:
            if int(row["step"]) == step:
                row.update(values)
                break
        else:
            rows.append({"step": str(step), **values})
            rows.sort(key=lambda r: int(r["step"]))
        self._rewrite(rows)
        self._reopen()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = "None" if value is None else value
        else:
            out[name] = str(value)
    return out


def _to_container(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ValueError(f"log_hparams expects a DictConfig or a mapping, got {type(cfg).__name__}")


def _close_at_exit(ref: weakref.ref) -> None:
    logger = ref()
    if logger is not None:
        logger.close()


class RunLogger:
    """Log scalars to TensorBoard and ``metrics.csv``, with a tqdm progress bar.

    Args:
        run_dir: the run directory (see :func:`make_run_dir`); created if missing.
        backends: any of ``"tensorboard"`` (TorchRL's ``TensorboardLogger`` under
            ``run_dir/tensorboard``) and ``"csv"`` (``run_dir/metrics.csv``, wide format).
        progress_total: total steps for the progress bar (env steps, or meta-iterations);
            ``None`` shows no bar.
        resume_step: continue a run from this step: CSV rows with ``step > resume_step`` are
            dropped, TensorBoard purges events after it, the bar starts there.
        progress_desc: label of the progress bar (default: the run directory's name).
        progress_unit: what one progress count is (``"step"``: env steps; ``cmo``: ``"iter"``).

    Every :meth:`log_scalars` call is flushed (CSV to the OS, TensorBoard's event file), and an
    ``atexit`` hook closes a logger that was not closed. Use it as a context manager.

    Examples:
        >>> import tempfile, pandas as pd
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with RunLogger(d, backends=("csv",)) as logger:
        ...         logger.log_scalars({"train/episode_return": 1.5}, step=1000)
        ...         logger.log_scalars({"eval/episode_cost": 2.0}, step=1000)  # same row
        ...         logger.log_scalars({"train/episode_return": 3.0}, step=2000)
        ...     print(pd.read_csv(f"{d}/metrics.csv").to_string(index=False))
         step  train/episode_return  eval/episode_cost
         1000                   1.5                2.0
         2000                   3.0                NaN
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        backends: Sequence[str] = _BACKENDS,
        *,
        progress_total: int | None = None,
        resume_step: int | None = None,
        progress_desc: str | None = None,
        progress_unit: str = "step",
    ) -> None:
        if isinstance(backends, str):
            backends = (backends,)
        unknown = [b for b in backends if b not in _BACKENDS]
        if unknown:
            raise ValueError(f"unknown logger backend(s) {unknown}; allowed: {list(_BACKENDS)}")
        if resume_step is not None and int(resume_step) < 0:
            raise ValueError(f"resume_step must be >= 0, got {resume_step}")
        if progress_total is not None and int(progress_total) < 0:
            raise ValueError(f"progress_total must be >= 0, got {progress_total}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume_step = None if resume_step is None else int(resume_step)
        self.backends = tuple(backends)
        self.csv_path = self.run_dir / "metrics.csv"
        self.latest: dict[str, float] = {}
        self._closed = False
        self._csv = _WideCSV(self.csv_path, self.resume_step) if "csv" in backends else None
        self._tb = self._make_tensorboard() if "tensorboard" in backends else None
        self.progress: Any = None  # the tqdm bar, when progress_total is given
        if progress_total is not None:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=int(progress_total),
                initial=self.resume_step or 0,
                desc=progress_desc or self.run_dir.name,
                unit=progress_unit,
                unit_scale=True,
                dynamic_ncols=True,
                mininterval=1.0,
            )
        # one hook per logger (partials compare by identity, so unregister removes only this one)
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    def _make_tensorboard(self):
        from torchrl.record.loggers import TensorboardLogger

        purge_step = None if self.resume_step is None else self.resume_step + 1

        class _ResumableTensorboardLogger(TensorboardLogger):
            """TorchRL's TensorboardLogger, with ``purge_step`` for resumed runs."""

            def _create_experiment(self):
                from torch.utils.tensorboard import SummaryWriter

                path = os.path.join(self.log_dir, self.exp_name)
                return SummaryWriter(log_dir=path, purge_step=purge_step)

        return _ResumableTensorboardLogger(exp_name="tensorboard", log_dir=str(self.run_dir))

    # ------------------------------------------------------------------------------------
    def log_scalars(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics (floats, ints, 0-d/1-element tensors on any device) at ``step``.

        Args:
            metrics: metric name -> value, names as in ``docs/metrics.md`` (``"train/kl"``).
                A TensorDict is accepted too (nested keys joined with ``/``).
            step: the run's x-axis (env steps; meta-iterations for ``cmo``), an int ``>= 0``.
        """
        if self._closed:
            raise ValueError(f"RunLogger for {self.run_dir} is closed")
        step = self._check_step(step)
        from torchrl.record.loggers.common import _make_metrics_safe

        values = _make_metrics_safe(metrics)
        for name, value in list(values.items()):
            if isinstance(value, (np.ndarray, np.generic)):
                if value.size != 1:
                    raise ValueError(f"metric {name!r} must be a scalar, got {value.size} values")
                values[name] = value = value.item()
            if not isinstance(name, str) or not name or name == "step" or "\n" in name:
                raise ValueError(f"bad metric name {name!r}: use a non-empty 'group/name' string")
            if isinstance(value, list):
                raise ValueError(f"metric {name!r} must be a scalar, got {len(value)} values")
        formatted = {name: _format_value(name, v) for name, v in values.items()}
        if not values:
            return
        with deferred_signals():  # a signal lands before or after the whole call, not inside
            if self._csv is not None:
                self._csv.write(step, formatted)
            if self._tb is not None:
                for name, value in values.items():
                    self._tb.log_scalar(name, float(value), step=step)
                self._tb.flush()
        self.latest.update({k: float(v) for k, v in values.items()})
        if self.progress is not None:
            self._set_postfix()

    @staticmethod
    def _check_step(step: Any) -> int:
        try:
            as_int = int(step)
        except (TypeError, ValueError):
            raise ValueError(f"step must be an integer, got {step!r}") from None
        if isinstance(step, float) and not step.is_integer() or as_int < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        return as_int

    def _set_postfix(self) -> None:
        post = {}
        for name, label in _POSTFIX:
            value = self.latest.get(name)
            if value is not None and math.isfinite(value):
                post[label] = f"{value:.4g}"
        self.progress.set_postfix(post, refresh=False)

    def update(self, n: int = 1) -> None:
        """Advance the progress bar by ``n`` steps (no-op without a bar)."""
        if self.progress is not None:
            self.progress.update(n)

    def log_hparams(self, cfg: Any) -> None:
        """Write the resolved config to ``run_dir/config.yaml`` and to TensorBoard (hparams + text).

        When resuming a run that already has a ``config.yaml``, the original is kept and the new
        one goes to ``config.resume-<k>.yaml``.

        Examples:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, RunLogger(d, backends=("csv",)) as logger:
            ...     logger.log_hparams({"env_id": "MockCMDP-v0", "optim": {"lr": 3e-4}})
            ...     print((logger.run_dir / "config.yaml").read_text().strip())
            env_id: MockCMDP-v0
            optim:
              lr: 0.0003
        """
        from omegaconf import OmegaConf

        container = _to_container(cfg)
        text = OmegaConf.to_yaml(OmegaConf.create(container))
        path = self.run_dir / "config.yaml"
        k = 1
        while path.exists() and self.resume_step is not None:
            path = self.run_dir / f"config.resume-{k}.yaml"
            k += 1
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        if self._tb is not None:
            writer = self._tb.experiment
            writer.add_text("config", "```\n" + text + "```", global_step=self.resume_step or 0)
            from torch.utils.tensorboard.summary import hparams

            # written into this run's event file (SummaryWriter.add_hparams would open a new one)
            exp, ssi, sei = hparams(_flatten(container), {})
            for summary in (exp, ssi, sei):
                writer._get_file_writer().add_summary(summary)
            writer.flush()

    def flush(self) -> None:
        """Flush TensorBoard (the CSV is flushed on every call already)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close every backend and the progress bar (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        if self._csv is not None:
            self._csv.close()
        if self._tb is not None:
            self._tb.shutdown()
        if self.progress is not None:
            self.progress.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunLogger(run_dir={str(self.run_dir)!r}, backends={self.backends})"
