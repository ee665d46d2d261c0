"""A program's entry point: validate the config, run, and turn failures into clean exits.

================================  ==========  ===========================================
what ended the run                exit code   on stderr
================================  ==========  ===========================================
done                              0
a bad config / unusable resume    2           ``invalid config (N problems): ...``
non-finite value, nan_policy=raise 3          ``stopped: non-finite ...``
Ctrl-C                            130         ``interrupted (SIGINT); exiting``
SIGTERM (cluster scheduler)       143         ``interrupted (SIGTERM); exiting``
================================  ==========  ===========================================

The run's own ``finally`` blocks (final checkpoint, logger flush, the run directory printed)
have run before the exit.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cmo_rl.config import ConfigError, Rule, Schema, rename_overrides, validate_config
from cmo_rl.lifecycle.signals import exit_code_for, signal_name

__all__ = ["CONFIG_EXIT_CODE", "NONFINITE_EXIT_CODE", "accept_renamed_keys", "run_cli"]

#: Exit code of a bad config or an unusable checkpoint to resume.
CONFIG_EXIT_CODE = 2
#: Exit code of a run stopped by a non-finite loss or meta-gradient (``nan_policy=raise``).
NONFINITE_EXIT_CODE = 3


def run_cli(
    main_fn: Callable[..., Any] | None = None,
    *,
    schema: Schema | None = None,
    rules: Sequence[Rule] = (),
) -> Callable[..., Any]:
    """Wrap a program's ``main(cfg)``: validate (``schema`` and cross-key ``rules``, every
    problem in one message), run, and turn failures into clean exits.

    * ``ConfigError`` (from ``schema`` validation before ``main`` starts, or raised later):
      the message alone goes to stderr (no traceback), exit code 2.
    * ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM under :func:`cmo_rl.lifecycle.signals.graceful_shutdown`),
      after the recipe's own ``finally`` blocks ran: ``interrupted (SIGINT); exiting`` (or
      ``SIGTERM``) on stderr, exit code 130 / 143.
    * ``FloatingPointError`` (a non-finite loss or meta-gradient with ``nan_policy=raise``):
      ``stopped: <what>`` on stderr, exit code 3.

    Use as ``@run_cli`` or ``@run_cli(schema=SCHEMA)``, placed *below* ``@hydra.main`` (Hydra
    would otherwise print its own traceback). ``functools.wraps`` keeps Hydra's lookup of the
    recipe file working.

    Examples:
        >>> from cmo_rl.config import Field
        >>> @run_cli(schema={"lr": Field(float, gt=0)})
        ... def main(cfg):
        ...     return cfg["lr"] * 2
        >>> main({"lr": 0.5})
        1.0
    """
    if main_fn is None:
        return functools.partial(run_cli, schema=schema, rules=rules)

    @functools.wraps(main_fn)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if schema is not None:
                # with resume= the effective config is the stored one (plus allowed changes):
                # the lifecycle checks the cross-key rules on it, not on this request
                resuming = isinstance(cfg, Mapping) and bool(cfg.get("resume"))
                validate_config(cfg, schema, () if resuming else rules)
            return main_fn(cfg, *args, **kwargs)
        except ConfigError as err:
            _fail(str(err), CONFIG_EXIT_CODE)
        except FloatingPointError as err:
            _fail(f"stopped: {err}", NONFINITE_EXIT_CODE)
        except KeyboardInterrupt as err:
            _fail(f"interrupted ({signal_name(err)}); exiting", exit_code_for(err))

    return wrapper


def accept_renamed_keys(hydra_main: Callable[..., Any]) -> Callable[..., Any]:
    """Place *above* ``@hydra.main``: before Hydra reads the command line, spell the renamed keys
    (:data:`cmo_rl.config.RENAMED_KEYS`, e.g. ``lambda_init`` -> ``init_lambda``) the new way,
    with one note per key on stderr, so the old names keep working.

    Examples:
        >>> import sys
        >>> seen = []
        >>> main = accept_renamed_keys(lambda: seen.append(sys.argv[1:]))
        >>> saved, sys.argv = sys.argv, ["recipe", "lambda_init=0.3", "seed=1"]
        >>> stderr, sys.stderr = sys.stderr, sys.stdout  # show the note here
        >>> main()
        note: lambda_init is now called init_lambda (the old name still works)
        >>> sys.argv, sys.stderr = saved, stderr
        >>> seen
        [['init_lambda=0.3', 'seed=1']]
    """

    @functools.wraps(hydra_main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sys.argv[1:], notes = rename_overrides(sys.argv[1:])
        for note in notes:
            sys.stderr.write(f"note: {note}\n")
        return hydra_main(*args, **kwargs)

    return wrapper


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    raise SystemExit(code) from None
