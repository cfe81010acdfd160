"""proxy.stats.histogram: bucket placement, cumulative snapshots, Prometheus exposition."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as PromHistogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from proxy.stats.histogram import LATENCY_BOUNDS, Histogram, HistogramVec


def test_latency_bounds_ascending() -> None:
    assert list(LATENCY_BOUNDS) == sorted(set(LATENCY_BOUNDS))
    assert LATENCY_BOUNDS[0] == 0.0005 and LATENCY_BOUNDS[-1] == 1.0


def test_observations_land_in_le_buckets() -> None:
    h = Histogram((1.0, 2.0, 5.0))
    for v in (0.0, 0.5, 1.0):  # <= 1.0, the bound itself included (le)
        h.observe(v)
    for v in (1.0000001, 2.0):  # (1, 2]
        h.observe(v)
    h.observe(5.0)  # (2, 5]
    for v in (5.0000001, 100.0, math.inf):  # +Inf
        h.observe(v)
    buckets, _ = h.snapshot()
    assert buckets == [("1.0", 3), ("2.0", 5), ("5.0", 6), ("+Inf", 9)]
    assert h.count == 9


def test_negative_and_int_values() -> None:
    h = Histogram((0.0, 10.0))
    h.observe(-3)
    h.observe(0)
    h.observe(7)
    buckets, total = h.snapshot()
    assert buckets == [("0.0", 2), ("10.0", 3), ("+Inf", 3)]
    assert total == 4


def test_snapshot_cumulative_sum_and_inf_equals_count() -> None:
    h = Histogram(LATENCY_BOUNDS)
    values = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.02, 0.3, 0.99, 1.0, 2.5, 10.0]
    for v in values:
        h.observe(v)
    buckets, total = h.snapshot()
    assert [le for le, _ in buckets] == [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
        "1.0", "+Inf",
    ]
    expected = [sum(1 for v in values if v <= b) for b in LATENCY_BOUNDS] + [len(values)]
    assert [n for _, n in buckets] == expected
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)  # cumulative: never decreasing
    assert buckets[-1] == ("+Inf", len(values)) == ("+Inf", h.count)
    assert total == pytest.approx(sum(values))
    assert h.sum == pytest.approx(sum(values))


def test_empty_snapshot() -> None:
    buckets, total = Histogram(LATENCY_BOUNDS).snapshot()
    assert all(n == 0 for _, n in buckets) and len(buckets) == len(LATENCY_BOUNDS) + 1
    assert total == 0.0


def test_le_strings_match_prometheus_client() -> None:
    bounds = (0.0005, 0.001, 1.0, 2.5, 10.0, 1e7, 123456789.0)
    ours, _ = Histogram(bounds).snapshot()
    registry = CollectorRegistry()
    PromHistogram("ref", "reference", buckets=bounds, registry=registry)
    theirs = [s.labels["le"] for m in registry.collect() for s in m.samples
              if s.name == "ref_bucket"]
    assert [le for le, _ in ours] == theirs


def test_trailing_inf_bound_is_implicit() -> None:
    h = Histogram((1.0, math.inf))
    assert h.bounds == (1.0,)
    assert [le for le, _ in h.snapshot()[0]] == ["1.0", "+Inf"]


@pytest.mark.parametrize("bounds", [(), (2.0, 1.0), (1.0, 1.0), (math.nan,), (math.inf,)])
def test_bad_bounds(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Histogram(bounds)


def test_reset() -> None:
    h = Histogram((1.0,))
    h.observe(0.5)
    h.reset()
    assert h.snapshot() == ([("1.0", 0), ("+Inf", 0)], 0.0)


def test_vec_labels_cached_and_checked() -> None:
    vec = HistogramVec(LATENCY_BOUNDS, ("shard", "kind"))
    a = vec.labels("s0", "select")
    assert vec.labels("s0", "select") is a
    assert vec.labels("s1", "select") is not a
    assert vec.label_names == ("shard", "kind")
    assert set(vec.children()) == {("s0", "select"), ("s1", "select")}
    with pytest.raises(ValueError):
        vec.labels("s0")


class _Collector(Collector):
    def __init__(self, vec: HistogramVec) -> None:
        self.vec = vec

    def collect(self) -> Iterator[object]:
        yield self.vec.families("shardwire_statement_seconds", "Statement latency")


def test_families_exposition_parses() -> None:
    vec = HistogramVec(LATENCY_BOUNDS, ("shard",))
    s0 = vec.labels("s0")
    for v in (0.0004, 0.002, 0.002, 0.7, 3.0):
        s0.observe(v)
    vec.labels("s1").observe(0.01)
    vec.labels("s2")  # a child never observed is exported too, with zeros
    registry = CollectorRegistry()
    registry.register(_Collector(vec))
    text = generate_latest(registry).decode()
    families = list(text_string_to_metric_families(text))
    assert [f.name for f in families] == ["shardwire_statement_seconds"]
    family = families[0]
    assert family.type == "histogram"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    names = {s.name for s in family.samples}
    assert names == {"shardwire_statement_seconds_bucket", "shardwire_statement_seconds_sum",
                     "shardwire_statement_seconds_count"}
    b = "shardwire_statement_seconds_bucket"
    assert samples[(b, (("le", "0.0005"), ("shard", "s0")))] == 1
    assert samples[(b, (("le", "0.0025"), ("shard", "s0")))] == 3
    assert samples[(b, (("le", "1.0"), ("shard", "s0")))] == 4
    assert samples[(b, (("le", "+Inf"), ("shard", "s0")))] == 5
    assert samples[("shardwire_statement_seconds_count", (("shard", "s0"),))] == 5
    assert samples[("shardwire_statement_seconds_sum", (("shard", "s0"),))] == pytest.approx(
        0.0004 + 0.002 + 0.002 + 0.7 + 3.0)
    assert samples[("shardwire_statement_seconds_count", (("shard", "s1"),))] == 1
    assert samples[(b, (("le", "0.005"), ("shard", "s1")))] == 0
    assert samples[(b, (("le", "0.01"), ("shard", "s1")))] == 1
    assert samples[("shardwire_statement_seconds_count", (("shard", "s2"),))] == 0
    per_child = sum(1 for s in family.samples if s.name == b and s.labels["shard"] == "s0")
    assert per_child == len(LATENCY_BOUNDS) + 1


def test_snapshot_while_observing_from_another_thread() -> None:
    vec = HistogramVec(LATENCY_BOUNDS, ("shard",))
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                family = vec.families("x", "x")
                for child in vec.children().values():
                    buckets, _ = child.snapshot()
                    counts = [n for _, n in buckets]
                    assert counts == sorted(counts)
                assert family.samples is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        for i in range(200_000):
            vec.labels(f"s{i % 50}").observe((i % 1000) / 1000)
    finally:
        stop.set()
        thread.join(10)
    assert not errors
