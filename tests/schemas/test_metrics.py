"""The Redis layout of the service's metrics: what a worker writes, a gateway reads back."""

import sys

import pytest

from schemas.metrics import BATCH_SIZE, JOBS_FAILED, MAP_SECONDS, HistogramSpec


def test_an_observation_lands_in_every_bucket_at_or_above_it() -> None:
    spec = HistogramSpec("latency", "method", (0.1, 1.0, 10.0), "help")

    buckets, sum_field, count_field = spec.fields("gradcam", 0.5)

    assert buckets == ["latency|gradcam|1.0", "latency|gradcam|10.0"]
    assert (sum_field, count_field) == ("latency|gradcam|sum", "latency|gradcam|count")
    assert spec.fields("gradcam", 0.1)[0][0] == "latency|gradcam|0.1"
    assert spec.fields("gradcam", 11.0)[0] == []


def test_reading_back_what_was_written_gives_cumulative_buckets_per_label() -> None:
    stored: dict[str, int | float] = {}
    observations = [("gradcam", 0.003), ("gradcam", 0.7), ("saliency", 42.0), ("gradcam", 0.7)]
    for method, seconds in observations:
        buckets, sum_field, count_field = MAP_SECONDS.fields(method, seconds)
        for field in buckets:
            stored[field] = stored.get(field, 0) + 1
        stored[sum_field] = stored.get(sum_field, 0.0) + seconds
        stored[count_field] = stored.get(count_field, 0) + 1
    stored[BATCH_SIZE.fields("demo", 3)[2]] = 1  # another histogram in the same hash

    read = MAP_SECONDS.read({field: str(value) for field, value in stored.items()})

    assert set(read) == {"gradcam", "saliency"}
    gradcam = read["gradcam"]
    assert gradcam.count == 3
    # Three float64 additions (each within eps64 / 2 of a sum below 1.403) and the literal's own
    # rounding: within 2 · eps64 of 1.403 relative.
    assert gradcam.sum == pytest.approx(1.403, rel=2 * sys.float_info.epsilon, abs=0)
    assert gradcam.buckets["0.005"] == 1
    assert gradcam.buckets["0.5"] == 1
    assert gradcam.buckets["1.0"] == 3
    assert list(gradcam.buckets) == [repr(bound) for bound in MAP_SECONDS.buckets]
    saliency = read["saliency"]
    assert saliency.count == 1 and saliency.buckets["300.0"] == 1 and saliency.buckets["30.0"] == 0


def test_a_counter_reads_back_by_label() -> None:
    stored = {JOBS_FAILED.field("bad-image"): "2", JOBS_FAILED.field("too-large"): "1", "x|y": "9"}

    assert JOBS_FAILED.read(stored) == {"bad-image": 2, "too-large": 1}
