"""Signal handling for recipes: turn SIGTERM into an exception so ``finally`` blocks run.

A cluster scheduler (SLURM, Kubernetes) stops a job with SIGTERM, whose default action kills the
process at once: buffered logs are lost and no final checkpoint is written. Inside
:func:`graceful_shutdown`, SIGTERM raises :class:`Terminated` (a :class:`KeyboardInterrupt`) in
the main thread instead, exactly like Ctrl-C, so one ``try/finally`` handles both::

    with graceful_shutdown(), RunLogger(run_dir) as logger:
        try:
            train(...)
        finally:
            save_checkpoint(checkpoint_path(run_dir, step), state)

Only the first SIGTERM raises; later ones are ignored while the context is active, so the cleanup
is not cut short (a scheduler's follow-up SIGKILL still ends the process). SIGINT keeps Python's
default behaviour (every Ctrl-C raises :class:`KeyboardInterrupt`).

A handler's exception is lost when the signal lands while Python runs a finalizer or a weakref
callback ("Exception ignored in ...": ``torch.compile``'s caches run such callbacks all the
time). So the training loops also call :func:`raise_if_signalled` at their step boundaries: it
raises :class:`Terminated` again when a SIGTERM was received but the program is still running.

:func:`deferred_signals` is the opposite tool: a short critical section (rewriting a CSV row)
during which SIGINT/SIGTERM are recorded and re-delivered when the section ends.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType

__all__ = [
    "Terminated",
    "deferred_signals",
    "exit_code_for",
    "graceful_shutdown",
    "raise_if_signalled",
    "signal_name",
]

#: The signal a :func:`graceful_shutdown` handler received and raised (``None``: none yet).
_received_signal: list[int] = []


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when a signal handled by :func:`graceful_shutdown` arrives.

    Attributes:
        signum: the signal number (``signal.SIGTERM`` unless configured otherwise).

    Examples:
        >>> import signal
        >>> err = Terminated(signal.SIGTERM)
        >>> isinstance(err, KeyboardInterrupt), err.signum == signal.SIGTERM
        (True, True)
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"received {signal.Signals(signum).name}")


def exit_code_for(err: BaseException) -> int:
    """Conventional shell exit code for an interruption: ``128 + signum``.

    :class:`Terminated` by SIGTERM gives 143; a plain :class:`KeyboardInterrupt` (Ctrl-C) gives 130.

    Examples:
        >>> import signal
        >>> exit_code_for(Terminated(signal.SIGTERM)), exit_code_for(KeyboardInterrupt())
        (143, 130)
    """
    if isinstance(err, Terminated):
        return 128 + err.signum
    return 128 + int(signal.SIGINT)


def signal_name(err: BaseException) -> str:
    """The signal behind an interruption: ``"SIGTERM"`` for :class:`Terminated` by SIGTERM,
    ``"SIGINT"`` for a plain :class:`KeyboardInterrupt` (Ctrl-C).

    Examples:
        >>> import signal
        >>> signal_name(Terminated(signal.SIGTERM)), signal_name(KeyboardInterrupt())
        ('SIGTERM', 'SIGINT')
    """
    signum = err.signum if isinstance(err, Terminated) else int(signal.SIGINT)
    return signal.Signals(signum).name


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def graceful_shutdown(signals: Sequence[int] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises :class:`Terminated` in the main thread.

    Previous handlers are restored on exit. Outside the main thread (where Python cannot install
    signal handlers) this is a no-op with a warning.

    Args:
        signals: signal numbers to convert (default SIGTERM; add ``signal.SIGHUP`` for jobs that
            should survive a closed terminal only until they checkpoint).

    Examples:
        >>> import os, signal
        >>> try:
        ...     with graceful_shutdown():
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...         for _ in range(10**6):  # the handler runs at the next bytecode boundary
        ...             pass
        ... except Terminated as err:
        ...     print("cleanup ran after", signal.Signals(err.signum).name)
        cleanup ran after SIGTERM
    """
    signals = tuple(int(s) for s in signals)
    if not signals:
        raise ValueError("graceful_shutdown needs at least one signal, got an empty sequence")
    if not _in_main_thread():
        warnings.warn(
            "graceful_shutdown() outside the main thread cannot install signal handlers; "
            "SIGTERM keeps its default action",
            RuntimeWarning,
            stacklevel=3,
        )
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:  # already shutting down: let the cleanup finish
            sys.stderr.write(
                f"{signal.Signals(signum).name} received again while shutting down; ignored "
                "(send SIGKILL to force)\n"
            )
            return
        received.append(signum)
        _received_signal.append(signum)
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)
        _received_signal.clear()  # handled: the block is being left


def raise_if_signalled() -> None:
    """Raise :class:`Terminated` if a :func:`graceful_shutdown` handler received a signal while
    the program goes on: its exception was lost in a finalizer or weakref callback. A training
    loop calls this at each step boundary, where stopping leaves consistent state.

    Examples:
        >>> raise_if_signalled()  # nothing received: nothing happens

    ``tests/lifecycle/test_signals.py`` loses a SIGTERM in a weakref callback and checks that
    this raises it.
    """
    if _received_signal:
        raise Terminated(_received_signal[-1])


@contextlib.contextmanager
def deferred_signals(
    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[None]:
    """Hold ``signals`` back during a short critical section, then re-deliver them.

    Used around multi-step file updates (write, then truncate) so that Ctrl-C or SIGTERM cannot
    leave a half-written file. Each signal that arrived is raised again (once) after the previous
    handlers are back, so it has its usual effect right after the block. Outside the main thread
    this is a plain no-op context.

    Examples:
        >>> import os, signal
        >>> try:
        ...     with deferred_signals():
        ...         os.kill(os.getpid(), signal.SIGINT)
        ...         done = "the critical section finished"
        ... except KeyboardInterrupt:
        ...     print(done, "before the interrupt")
        the critical section finished before the interrupt
    """
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        if signum not in pending:
            pending.append(signum)

    previous = {}
    for s in signals:
        prev = signal.getsignal(s)
        if prev is None:  # installed from C: we could not restore it, leave it alone
            continue
        previous[s] = prev
        signal.signal(s, record)
    try:
        yield
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)
        for s in pending:
            signal.raise_signal(s)
