"""Ctrl-C that waits for the step in progress, so a saved checkpoint is always a whole step.

A SIGINT can land anywhere inside a training step: after the batch was drawn (the random
generator has moved on) but before the step count has, or half-way through the optimizer's
update. A checkpoint saved then would not resume to the same result. So the first Ctrl-C
only asks the loop to stop after the current step; a second one stops at once (and the
last whole checkpoint is kept). A web page's Cancel reaches a loop running in a worker
thread through `stop_when(event)` instead, with the same effect as one Ctrl-C.
"""

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("magicme")
_thread_requests = threading.local()


@contextmanager
def stop_when(event: threading.Event) -> Iterator[None]:
    """Loops in this thread stop between steps once `event` is set, as after one Ctrl-C."""
    _thread_requests.event = event
    try:
        yield
    finally:
        _thread_requests.event = None


def _cancelled() -> bool:
    event = getattr(_thread_requests, "event", None)
    return event is not None and event.is_set()


@contextmanager
def stop_between_steps() -> Iterator[Callable[[], bool]]:
    """Yield `stop_requested()`: True once Ctrl-C was pressed (or `stop_when`'s event set); the loop
    then stops between steps."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield _cancelled
        return
    requested: list[int] = []
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum: int, frame: object) -> None:
        requested.append(signum)
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once
        log.warning("stopping after this step (Ctrl-C again to stop now)")

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield lambda: bool(requested) or _cancelled()
    finally:
        signal.signal(signal.SIGINT, previous)
