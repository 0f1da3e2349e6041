"""The service-wide metrics that workers record in Redis and gateways publish on `/metrics`.

Workers add their observations to one Redis hash (`keys.METRICS`), so every gateway reports the
same totals for the whole service, whichever worker did the work and however often workers
restart. A histogram is stored as one counter per bucket plus a sum and a count; a counter as
one field. Field names are built and parsed here only.
"""

from dataclasses import dataclass

_SEPARATOR = "|"


@dataclass(frozen=True)
class HistogramSpec:
    """A histogram with one label, in Prometheus' conventions (upper bounds, `+Inf` implied)."""

    name: str
    label: str
    buckets: tuple[float, ...]
    help: str

    def fields(self, label_value: str, value: float) -> tuple[list[str], str, str]:
        """The bucket fields that `value` increments, and the sum and count fields."""
        prefix = _SEPARATOR.join((self.name, label_value))
        bounds = [bound for bound in self.buckets if value <= bound]
        buckets = [_SEPARATOR.join((prefix, _bound_text(bound))) for bound in bounds]
        return buckets, f"{prefix}{_SEPARATOR}sum", f"{prefix}{_SEPARATOR}count"

    def read(self, stored: dict[str, str]) -> dict[str, "HistogramValues"]:
        """Per label value, the cumulative bucket counts (ascending bounds, then `+Inf`), the
        sum and the count, from the hash's fields."""
        found: dict[str, HistogramValues] = {}
        for field, raw in stored.items():
            name, _, rest = field.partition(_SEPARATOR)
            if name != self.name:
                continue
            label_value, _, part = rest.rpartition(_SEPARATOR)
            values = found.setdefault(
                label_value, HistogramValues({_bound_text(b): 0 for b in self.buckets}, 0.0, 0)
            )
            if part == "sum":
                values.sum = float(raw)
            elif part == "count":
                values.count = int(raw)
            elif part in values.buckets:
                values.buckets[part] = int(raw)
        return found


@dataclass
class HistogramValues:
    buckets: dict[str, int]
    """Observations at or below each bound, keyed by the bound as Prometheus writes it."""
    sum: float
    count: int


@dataclass(frozen=True)
class CounterSpec:
    """A counter with one label."""

    name: str
    label: str
    help: str

    def field(self, label_value: str) -> str:
        return _SEPARATOR.join((self.name, label_value))

    def read(self, stored: dict[str, str]) -> dict[str, int]:
        prefix = f"{self.name}{_SEPARATOR}"
        return {
            field.removeprefix(prefix): int(raw)
            for field, raw in stored.items()
            if field.startswith(prefix)
        }


def _bound_text(bound: float) -> str:
    return repr(float(bound))


_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

MAP_SECONDS = HistogramSpec(
    "glimpse_map_compute_seconds",
    "method",
    _SECONDS,
    "Time a worker spent computing one attribution map, by method.",
)
JOB_SECONDS = HistogramSpec(
    "glimpse_job_seconds",
    "model",
    _SECONDS,
    "Time from a job's admission to its stored result, by model.",
)
BATCH_SIZE = HistogramSpec(
    "glimpse_batch_size",
    "model",
    (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
    "Jobs a worker computed together in one batch, by model.",
)
JOBS_FAILED = CounterSpec(
    "glimpse_jobs_failed_total",
    "kind",
    "Jobs that ended in an error, by the kind of problem (the slug of its problem type).",
)
HISTOGRAMS = (MAP_SECONDS, JOB_SECONDS, BATCH_SIZE)
