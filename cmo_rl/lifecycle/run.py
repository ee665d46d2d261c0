"""The life of one program run, shared by the baseline recipes, ``cmo`` and the frozen runner.

A program hands its bookkeeping to a :class:`Run` and keeps only its algorithm::

    run = Run(cfg, program="ppo_lag", task=cfg.env_id, resumable=RESUMABLE_KEYS)
    cfg = run.cfg                      # the effective config (the stored one on resume)
    state = run.state                  # the checkpoint to restore, or None
    ...                                # build everything; restore `state` into it
    with run.open(progress_total=N):   # run dir, logger, SIGTERM -> KeyboardInterrupt
        for ...:
            ...                        # one step of the algorithm
            run.logger.log_scalars(row, step=step)
            run.snapshot(step, {"policy": ...})   # the state after the last *completed* step
            if due: run.save()
    # on exit (done, Ctrl-C, SIGTERM, an error): the last snapshot saved, logger closed,
    # the `on_close` hooks run (plots), the run directory printed

What every program gets the same way:

* **run directory** ``<run_root>/<program>/<task>/<timestamp>/`` (never reused), printed when
  the run starts, resumes and ends (also with ``progress=false``);
* **stored config and resume** (:mod:`cmo_rl.lifecycle.resume`): ``resume=`` a run
  directory, ``latest`` or a checkpoint file; the stored config with only the program's
  resumable keys changed; an unreadable newest checkpoint refused with exit code 2, naming
  the newest valid one and the ``resume=`` that uses it;
* **checkpoints**: a checkpoint holds the last *snapshot* (never half-updated live objects),
  its ``step``, ``time_total``, ``config`` and RNG states, plus the program's entries;
  ``keep_checkpoints`` newest kept;
* **logger** (:class:`~cmo_rl.lifecycle.logging.RunLogger`): ``metrics.csv``, TensorBoard, progress bar;
  a resumed run drops the rows after its checkpoint's step;
* **signals**: SIGTERM raises like Ctrl-C inside the run, so the final checkpoint is written;
* **NaN guard**: :attr:`Run.guard`, a :class:`~cmo_rl.lifecycle.guard.NonFiniteGuard` with the
  config's ``nan_policy``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cmo_rl.config import ConfigError, Field, device_check, not_blank, rename_stored_keys
from cmo_rl.lifecycle.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    cpu_state_copy,
    prune_checkpoints,
    save_checkpoint,
)
from cmo_rl.lifecycle.guard import NAN_POLICIES, NonFiniteGuard
from cmo_rl.lifecycle.logging import RunLogger, make_run_dir
from cmo_rl.lifecycle.resume import hydra_override_keys, load_resume_state, resolve_resume_config
from cmo_rl.lifecycle.signals import graceful_shutdown, signal_name

__all__ = ["RESERVED_STATE_KEYS", "RUN_FIELDS", "Run"]

#: Checkpoint entries every run writes; a program's own entries must use other names.
RESERVED_STATE_KEYS = frozenset({"step", "time_total", "rng", "config"})
#: The config keys of the run lifecycle and the system, the same in every program's schema.
RUN_FIELDS: dict[str, Field] = {
    "checkpoint_interval": Field(int, ge=1),
    "keep_checkpoints": Field(int, ge=1),
    "run_root": Field(str, check=not_blank),
    "resume": Field(str, nullable=True),
    "nan_policy": Field(str, choices=NAN_POLICIES),
    "progress": Field(bool),
    "seed": Field(int, ge=0),
    "torch_threads": Field(int, ge=0),
    "device": Field(str, check=device_check),
}


class Run:
    """Config and resume, run directory, logger, checkpoints and signals of one program run.

    Args:
        cfg: the program's config (validated against its schema already).
        program: the run-directory name of the program (``"ppo_lag"``, ``"meta_lstm"``).
        task: ``cfg -> task label`` of the run-directory path (``cfg["env_id"]``).
        resumable: the keys a resumed run may change.
        check: ``check(cfg)`` validates the effective config (on resume: the stored one plus
            the changes), raising :class:`~cmo_rl.config.ConfigError`.
        allow_new_keys: a key the stored config lacks takes its requested value (keys added to
            the program after the run was written), instead of being an error.
        required_state: checkpoint entries the program needs to resume.

    Attributes:
        cfg: the effective config, a plain dict.
        state: the checkpoint to continue from (``None`` for a new run).
        run_dir: the run directory (known on resume; created when the run is opened).
        logger: the :class:`~cmo_rl.lifecycle.logging.RunLogger` while the run is open.
        guard: the run's NaN guard (``nan_policy``, when the config has one).
        on_close: callables run after the logger is closed (e.g. plots); their errors never
            hide the run's own outcome.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> cfg = {"run_root": root, "env_id": "MockCMDP-v0", "resume": None, "keep_checkpoints": 2,
        ...        "total": 3}
        >>> run = Run(cfg, program="demo", task=lambda c: c["env_id"], resumable={"resume", "total"})
        >>> with run.open():  # doctest: +ELLIPSIS
        ...     for step in (1, 2, 3):
        ...         run.logger.log_scalars({"train/x": step}, step=step)
        ...         run.snapshot(step, {"weights": [step]})
        run directory: .../demo/MockCMDP-v0/...
        finished: .../demo/MockCMDP-v0/...
        >>> cfg["resume"], cfg["total"] = "latest", 5
        >>> again = Run(cfg, program="demo", task=lambda c: c["env_id"], resumable={"resume", "total"})
        >>> again.state["step"], again.state["weights"], again.cfg["total"], again.run_dir == run.run_dir
        (3, [3], 5, True)
    """

    #: The config keys a run reads itself (every program's config has them).
    KEYS = ("run_root", "resume", "keep_checkpoints", "progress", "nan_policy")

    def __init__(
        self,
        cfg: DictConfig | Mapping[str, Any],
        *,
        program: str,
        task: Callable[[Mapping[str, Any]], str],
        resumable: Collection[str],
        check: Callable[[Mapping[str, Any]], None] | None = None,
        allow_new_keys: bool = False,
        required_state: Collection[str] = ("config", "step"),
    ) -> None:
        requested = (
            OmegaConf.to_container(cfg, resolve=True)
            if isinstance(cfg, DictConfig)
            else copy.deepcopy(dict(cfg))
        )
        self.program = program
        self.state: dict[str, Any] | None = None
        self.run_dir: Path | None = None
        if requested.get("resume"):
            self.run_dir, self.state = load_resume_state(
                requested["resume"],
                run_root=requested["run_root"],
                program=program,
                required=required_state,
            )
            requested = resolve_resume_config(
                requested,
                rename_stored_keys(self.state["config"]),  # a run written before a rename
                hydra_override_keys(dotted=True),
                resumable=resumable,
                allow_new_keys=allow_new_keys,
            )
            requested["resume"] = str(self.run_dir)
        if check is not None:
            check(requested)
        self.cfg: dict[str, Any] = requested
        self.task = str(task(requested))
        self.guard = NonFiniteGuard(str(requested.get("nan_policy", "skip")))
        self.logger: RunLogger | None = None
        self.on_close: list[Callable[[], None]] = []
        self._time_base = float(self.state["time_total"]) if self.state else 0.0
        self._t0 = 0.0
        self._snapshot: dict[str, Any] | None = None
        self._saved_step: int | None = None
        self._stack: ExitStack | None = None
        self._progress: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ state
    @property
    def resumed(self) -> bool:
        """Whether this run continues a checkpoint."""
        return self.state is not None

    @property
    def start_step(self) -> int | None:
        """The step of the checkpoint this run continues (``None`` for a new run)."""
        return int(self.state["step"]) if self.state is not None else None

    @property
    def time_total(self) -> float:
        """Wall-clock seconds of the run so far, over all resumes."""
        return self._time_base + (time.perf_counter() - self._t0 if self._t0 else 0.0)

    def snapshot(self, step: int, state: Mapping[str, Any]) -> None:
        """Record the state after a completed step: a detached CPU copy of ``state`` (the
        program's entries) plus ``step``, ``time_total``, the RNG states and the config. The
        next :meth:`save` (or the end of the run) writes it."""
        clash = RESERVED_STATE_KEYS.intersection(state)
        if clash:
            raise ValueError(f"state entries clash with the reserved names {sorted(clash)}")
        self._snapshot = {
            "step": int(step),
            "time_total": self.time_total,
            "rng": capture_rng_state(),
            "config": copy.deepcopy(self.cfg),
            **cpu_state_copy(dict(state)),
        }

    def save(self) -> None:
        """Write the last snapshot as ``checkpoints/step_<step>.pt`` (once), keep the newest
        ``keep_checkpoints`` (when the config has that key)."""
        snap = self._snapshot
        if snap is None or self.run_dir is None or self._saved_step == snap["step"]:
            return
        save_checkpoint(checkpoint_path(self.run_dir, snap["step"]), snap)
        if "keep_checkpoints" in self.cfg:  # programs that checkpoint once have no such key
            prune_checkpoints(self.run_dir, int(self.cfg["keep_checkpoints"]))
        self._saved_step = snap["step"]

    # ------------------------------------------------------------------------------ context
    def open(
        self,
        *,
        progress_total: int | None = None,
        progress_desc: str | None = None,
        progress_unit: str = "step",
    ) -> Run:
        """Set the progress bar (shown when the config's ``progress`` is true); use as
        ``with run.open(...):``."""
        self._progress = {
            "progress_total": progress_total if self.cfg.get("progress", True) else None,
            "progress_desc": progress_desc or f"{self.program} {self.task}",
            "progress_unit": progress_unit,
        }
        return self

    def echo(self, text: str) -> None:
        """Print a line to stdout (above the progress bar when there is one)."""
        bar = self.logger.progress if self.logger is not None else None
        if bar is not None:
            bar.write(text)
        else:
            print(text, flush=True)

    def record(self, row: Mapping[str, float], step: int, line: str | None = None) -> None:
        """One finished unit of work (a generation, a link): ``row`` and ``time/total`` (the
        run's wall-clock seconds, over all resumes) to ``metrics.csv`` and TensorBoard at
        ``step``, the progress bar one unit on, and ``line`` echoed.

        Examples:
            >>> import tempfile
            >>> run = Run({"run_root": tempfile.mkdtemp(), "resume": None, "progress": False},
            ...           program="demo", task=lambda c: "task", resumable={"resume"})
            >>> with run.open():  # doctest: +ELLIPSIS
            ...     run.record({"demo/x": 1.5}, step=1, line="unit 1 done")
            run directory: ...
            unit 1 done
            finished: ...
            >>> (run.run_dir / "metrics.csv").read_text().splitlines()[0]
            'step,demo/x,time/total'
        """
        self.logger.log_scalars({**row, "time/total": self.time_total}, step=step)
        self.logger.update(1)
        if line is not None:
            self.echo(line)

    def __enter__(self) -> Run:
        stack = ExitStack()
        try:
            stack.enter_context(graceful_shutdown())
            if self.run_dir is None:
                self.run_dir = make_run_dir(self.cfg["run_root"], self.program, self.task)
            self.logger = stack.enter_context(
                RunLogger(self.run_dir, resume_step=self.start_step, **self._progress)
            )
            self.logger.log_hparams(self.cfg)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self._t0 = time.perf_counter()
        if self.resumed:
            self._saved_step = self.start_step  # the checkpoint we resumed from
            self.echo(f"resumed {self.run_dir} at step {self.start_step}")
        else:
            self.echo(f"run directory: {self.run_dir}")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._stack is not None
        try:
            self.save()  # the last completed step, never a half-done update
        finally:
            self._stack.close()
            self._stack = None
            self.logger = None
            for hook in self.on_close:
                try:
                    hook()
                except Exception as err:  # a plot must never hide the run's own outcome
                    print(f"warning: {err}", flush=True)
            print(self._farewell(exc_type, exc), flush=True)

    def _farewell(self, exc_type: Any, exc: Any) -> str:
        step = self._saved_step
        if exc_type is None:
            return f"finished: {self.run_dir}"
        if step is None:
            where = "before the first checkpoint"
        else:
            where = f"checkpoint at step {step}; continue with resume={self.run_dir}"
        if issubclass(exc_type, KeyboardInterrupt):
            return f"interrupted ({signal_name(exc)}): {self.run_dir} ({where})"
        if issubclass(exc_type, ConfigError):
            return f"stopped: {self.run_dir}"
        return f"stopped by {exc_type.__name__}: {self.run_dir} ({where})"
