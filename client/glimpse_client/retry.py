"""When to try a request again: 429 and 503 answers, and connections that never opened."""

import email.utils
import random
import time
from dataclasses import dataclass

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Retry:
    """A bounded retry policy.

    A `Retry-After` answer is waited out exactly, unless it asks for longer than `max_wait_s`
    (then the error is raised at once, with its `retry_after`); without one, the delay doubles
    from `backoff_s` up to `max_backoff_s`, with jitter. `attempts` counts the retries after the
    first try; `Retry(attempts=0)` never retries.
    """

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_wait_s: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retry` (from 1), or None to give up."""
        if retry > self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_wait_s else None
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return backoff * random.uniform(0.5, 1.0)


NO_RETRY = Retry(attempts=0)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` in seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
