"""SIGTERM inside ``graceful_shutdown``: a lost handler exception is raised again at the next
step boundary (``raise_if_signalled``)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import weakref

import pytest

from cmo_rl.lifecycle.signals import Terminated, graceful_shutdown, raise_if_signalled


class _Box:
    pass


def test_a_sigterm_lost_in_a_weakref_callback_stops_the_loop_at_the_next_step(monkeypatch):
    dropped = []  # what Python reports as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))
    steps = []
    with pytest.raises(Terminated) as err:
        with graceful_shutdown():
            for step in range(5):
                raise_if_signalled()  # the loop's step boundary
                steps.append(step)
                if step == 1:
                    box = _Box()
                    # the handler runs inside the callback: its exception is "ignored"
                    ref = weakref.ref(box, lambda r: os.kill(os.getpid(), signal.SIGTERM))
                    del box
                    gc.collect()
                    assert ref() is None
    assert steps == [0, 1]  # stopped before step 2, not after the loop
    assert err.value.signum == signal.SIGTERM
    assert dropped == [Terminated]  # the handler's own exception was dropped by Python
    raise_if_signalled()  # outside the block again: nothing pending


def test_without_a_signal_the_check_does_nothing():
    with graceful_shutdown():
        for _ in range(3):
            raise_if_signalled()
