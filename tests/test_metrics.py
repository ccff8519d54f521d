"""metrics.observe_many: a batch of values lands in a histogram as observing each one would."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from monitor import metrics

BOUNDS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _pair(labelled: bool = False) -> tuple[Histogram, Histogram]:
    labels = ["source"] if labelled else []
    return tuple(Histogram("h", "help", labels, buckets=BOUNDS, registry=CollectorRegistry()) for _ in range(2))


def _samples(h: Histogram) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in h.collect() for s in m.samples}


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(st.one_of(finite, st.sampled_from(BOUNDS), st.just(math.inf)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_observe_many_gives_the_buckets_and_count_of_observing_each_value(values: list[float]) -> None:
    one_by_one, together = _pair()
    for v in values:
        one_by_one.observe(v)
    metrics.observe_many(together, values)
    expected, got = _samples(one_by_one), _samples(together)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if key[0] == "h_sum":
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9) or (math.isnan(value) and math.isnan(got[key]))
        else:
            assert got[key] == value, key


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    _, h = _pair()
    metrics.observe_many(h, [0.01, 0.01])
    samples = _samples(h)
    assert samples[("h_bucket", (("le", "0.001"),))] == 0
    assert samples[("h_bucket", (("le", "0.01"),))] == 2


def test_observe_many_of_nothing_changes_nothing() -> None:
    one_by_one, together = _pair()
    metrics.observe_many(together, [])
    assert _samples(together) == _samples(one_by_one)


def test_observe_many_moves_only_the_labelled_child() -> None:
    _, h = _pair(labelled=True)
    metrics.observe_many(h.labels("a"), [0.5, 5.0])
    metrics.observe_many(h.labels("b"), [0.05])
    samples = _samples(h)
    assert samples[("h_count", (("source", "a"),))] == 2
    assert samples[("h_count", (("source", "b"),))] == 1


def test_observe_many_on_a_labelled_parent_raises_as_observe_does() -> None:
    _, h = _pair(labelled=True)
    with pytest.raises(ValueError):
        h.observe(1.0)
    with pytest.raises(ValueError):
        metrics.observe_many(h, [1.0])


def test_observe_many_falls_back_to_observe_on_a_histogram_without_the_private_fields() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, v: float) -> None:
            self.seen.append(v)

    plain = Plain()
    metrics.observe_many(plain, [1.0, 2.0])  # type: ignore[arg-type]
    assert plain.seen == [1.0, 2.0]
