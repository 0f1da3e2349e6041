"""Finishing work off the compute path: rendering, PNG and JSON encoding, storing, acknowledging.

The worker's loop hands each computed batch's finishing to `Finisher` and goes on to read and
compute the next batch while it runs, so the model is not idle while PNGs are encoded. The pool is
bounded: at most `capacity` batches wait or run, and `submit` blocks beyond that, so memory holds
no more than that many batches' maps whatever the load. The entries of every batch not finished
yet are `pending`, so that the worker keeps their leases; `close` waits for all of them, which is
how SIGTERM still finishes and acknowledges everything in hand.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("glimpse.worker")

EntryRef = tuple[str, str]
"""A stream entry: (model id, entry id)."""

FINISHING_THREADS = 1
"""Threads that finish batches: one overlaps the model's passes, which use the other cores."""

FINISHING_CAPACITY = 2
"""Batches that may wait for or be in finishing at once: one in hand, one queued."""


class Finisher:
    """A bounded pool of threads that runs each batch's finishing work, in submission order
    when there is one thread. With `threads` 0 the work runs at once, on the caller's thread."""

    def __init__(self, threads: int = FINISHING_THREADS, capacity: int = FINISHING_CAPACITY):
        self._executor = ThreadPoolExecutor(threads, "finishing") if threads > 0 else None
        self._slots = threading.BoundedSemaphore(max(1, capacity))
        self._lock = threading.Lock()
        self._pending: dict[int, Sequence[EntryRef]] = {}
        self._next = 0

    def submit(self, entries: Sequence[EntryRef], work: Callable[[], None]) -> None:
        """Run `work` (which stores and acknowledges `entries`) beside the caller; blocks while
        the pool is full."""
        self._slots.acquire()
        with self._lock:
            key = self._next
            self._next += 1
            self._pending[key] = list(entries)
        if self._executor is None:
            self._run(key, work)
        else:
            self._executor.submit(self._run, key, work)

    def pending(self) -> list[EntryRef]:
        """The entries of the batches submitted and not yet finished."""
        with self._lock:
            return [entry for entries in self._pending.values() for entry in entries]

    def close(self) -> None:
        """Wait for every submitted batch to finish."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _run(self, key: int, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            # The work fails its own jobs where it can; what escapes is retried by redelivery.
            log.exception("finishing a batch failed; its jobs will be retried")
        finally:
            with self._lock:
                del self._pending[key]
            self._slots.release()
