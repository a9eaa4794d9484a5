"""consumers/metrics.py: bulk histogram observations give the series one observation at a time gives."""
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumers.metrics import LATENCY_BUCKETS, observe_many


def exposition(registry) -> list[str]:
    """Every line but the creation time and the sum (a sum of the same values in another order can differ in
    its last bit: compared apart)."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line and "_sum" not in line]


@pytest.mark.parametrize("values", [[], [0.0], [0.005, 0.01, 0.0100001, 10.0, 10.5, 99.0],
                                    "random"])
def test_observe_many_counts_what_observe_counts(rng, values):
    if values == "random":  # on and around every bound, and past the last
        values = np.concatenate([rng.exponential(0.2, 500), np.array(LATENCY_BUCKETS),
                                 np.nextafter(np.array(LATENCY_BUCKETS), np.inf), [1e9]])
    values = np.asarray(values, dtype=np.float64)
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x_seconds", "x", registry=one, buckets=LATENCY_BUCKETS)
    h2 = Histogram("x_seconds", "x", registry=many, buckets=LATENCY_BUCKETS)
    for v in values.tolist():
        h1.observe(v)
    observe_many(h2, values)
    assert exposition(many) == exposition(one)
    assert many.get_sample_value("x_seconds_sum") == pytest.approx(one.get_sample_value("x_seconds_sum"), rel=1e-12)
    assert many.get_sample_value("x_seconds_count") == len(values)


def test_observe_many_falls_back_to_observe_without_the_bucket_attributes():
    class Plain:  # a histogram whose internals are not prometheus-client's
        def __init__(self):
            self.seen = []

        def observe(self, v):
            self.seen.append(v)
    h = Plain()
    observe_many(h, np.array([0.1, 0.2]))
    assert h.seen == [0.1, 0.2]
