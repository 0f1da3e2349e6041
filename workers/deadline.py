"""A job's wall-clock budget, checked cooperatively between the passes of long computations.

The worker sets a deadline around each computation; every loop over passes (masks, windows,
path points, noisy samples, optimisation steps) calls `check_deadline` once per pass, so a job
past its budget stops within one pass, without killing the process that computes it.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("deadline", default=None)


class DeadlineExceeded(Exception):
    """The computation ran past its deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Run the block with a deadline `seconds` from now (an enclosing one still holds)."""
    outer = _DEADLINE.get()
    at = time.monotonic() + seconds
    token = _DEADLINE.set(at if outer is None else min(at, outer))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """Raise `DeadlineExceeded` once the current deadline has passed; nothing without one."""
    at = _DEADLINE.get()
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded("the computation ran past its time budget")
