"""One run lifecycle for every program: run directory, stored config and resume, checkpoints,
logger, signals, NaN guard and exit codes.

==================  ============================================================================
module              what
==================  ============================================================================
``run``             ``Run``: the life of one program run, and the config keys it reads
``resume``          what ``resume=`` continues from; the corrupt-checkpoint policy; resumed config
``entry``           ``run_cli``: config errors, NaN stops and signals to exit codes
``guard``           ``NonFiniteGuard``: skip-and-count or stop on NaN/inf updates
``checkpoint``      atomic, checksummed checkpoint files with RNG states
``logging``         run directories, ``metrics.csv`` + TensorBoard logger, progress bar
``signals``         SIGTERM as ``KeyboardInterrupt``; signal-deferred critical sections
==================  ============================================================================
"""

from cmo_rl.lifecycle import checkpoint, entry, guard, logging, resume, run, signals
from cmo_rl.lifecycle.checkpoint import *  # noqa: F403
from cmo_rl.lifecycle.entry import *  # noqa: F403
from cmo_rl.lifecycle.guard import *  # noqa: F403
from cmo_rl.lifecycle.logging import *  # noqa: F403
from cmo_rl.lifecycle.resume import *  # noqa: F403
from cmo_rl.lifecycle.run import *  # noqa: F403
from cmo_rl.lifecycle.signals import *  # noqa: F403

__all__ = sorted(
    {
        name
        for module in (checkpoint, entry, guard, logging, resume, run, signals)
        for name in module.__all__
    }
)
