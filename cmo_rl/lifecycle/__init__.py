"""One run lifecycle for every program: run directory, stored config and resume, checkpoints,
logger, signals, NaN guard and exit codes (:class:`Run`, :func:`run_cli`)."""

from cmo_rl.lifecycle.entry import CONFIG_EXIT_CODE, NONFINITE_EXIT_CODE, run_cli
from cmo_rl.lifecycle.guard import NAN_POLICIES, NonFiniteError, NonFiniteGuard
from cmo_rl.lifecycle.resume import (
    LATEST,
    hydra_override_keys,
    load_resume_state,
    locate_resume,
    resolve_resume_config,
)
from cmo_rl.lifecycle.run import RESERVED_STATE_KEYS, RUN_FIELDS, Run

__all__ = [
    "CONFIG_EXIT_CODE",
    "LATEST",
    "NAN_POLICIES",
    "NONFINITE_EXIT_CODE",
    "RESERVED_STATE_KEYS",
    "RUN_FIELDS",
    "NonFiniteError",
    "NonFiniteGuard",
    "Run",
    "hydra_override_keys",
    "load_resume_state",
    "locate_resume",
    "resolve_resume_config",
    "run_cli",
]
