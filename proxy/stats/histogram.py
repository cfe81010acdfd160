"""Fixed-bucket histograms for the hot path, exported to Prometheus at scrape time.

:class:`Histogram` keeps one plain ``int`` per bucket (non-cumulative: ``observe`` bisects
the value into its bucket and increments one list slot) and a float sum, so an observation
costs a bisect, a list increment and a float add, with no lock and no prometheus-client
object on the update path. The count is not kept apart: it is the sum of the buckets,
which keeps a snapshot's ``+Inf`` bucket and ``_count`` consistent with the other buckets
even when it is taken while the event loop observes.

Buckets follow Prometheus: bucket ``i`` counts values ``<= bounds[i]`` (``le``), and the
last, implicit one is ``+Inf``. The ``le`` label strings are formatted as prometheus-client
formats its own (``floatToGoString``: ``"0.0005"``, ``"1.0"``, ``"+Inf"``).

Snapshots only copy (``list(...)`` of the counts, a ``dict(...)`` of the children), which is
atomic under the GIL, so they may run in the scrape thread while the event loop updates.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["LATENCY_BOUNDS", "Histogram", "HistogramVec"]

# Statement latencies in seconds: 0.5 ms to 1 s.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    """The finite upper bounds, ascending; a trailing ``+Inf`` is dropped (it is implicit)."""
    out = [float(b) for b in bounds]
    if out and out[-1] == math.inf:
        out.pop()
    if not out:
        raise ValueError("a histogram needs at least one finite bucket bound")
    for b in out:
        if math.isnan(b) or math.isinf(b):
            raise ValueError(f"histogram bucket bounds must be finite numbers, got {b!r}")
    if any(a >= b for a, b in pairwise(out)):
        raise ValueError(f"histogram bucket bounds must be strictly ascending, got {out!r}")
    return tuple(out)


class Histogram:
    """Per-bucket counts (non-cumulative ints) and the sum of the observed values."""

    __slots__ = ("_bounds", "_counts", "_les", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds: tuple[float, ...] = _check_bounds(bounds)
        self._les: tuple[str, ...] = (*(floatToGoString(b) for b in self._bounds), "+Inf")
        # _counts[i] counts values in (bounds[i-1], bounds[i]]; the last slot is +Inf.
        self._counts: list[int] = [0] * (len(self._bounds) + 1)
        self._sum: float = 0.0

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    @property
    def count(self) -> int:
        return sum(list(self._counts))

    @property
    def sum(self) -> float:
        return self._sum

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is ``>= value`` and add it to the sum."""
        # bisect_left: a value equal to a bound lands in that bound's bucket (``le``).
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Prometheus-style cumulative buckets ``[("0.0005", n), ..., ("+Inf", count)]``, sum.

        The ``+Inf`` bucket is the count. Safe to call while another thread observes.
        """
        counts = list(self._counts)
        total = self._sum
        buckets: list[tuple[str, float]] = []
        acc = 0
        for le, n in zip(self._les, counts, strict=True):
            acc += n
            buckets.append((le, acc))
        return buckets, total

    def reset(self) -> None:
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0


class HistogramVec:
    """A family of :class:`Histogram` children by label values, all with the same bounds.

    ``labels(...)`` caches each child: callers on the hot path keep the child they got
    rather than look it up per observation.
    """

    __slots__ = ("_bounds", "_children", "_label_names")

    def __init__(self, bounds: Sequence[float], label_names: Sequence[str]) -> None:
        self._bounds: tuple[float, ...] = _check_bounds(bounds)
        self._label_names: tuple[str, ...] = tuple(label_names)
        self._children: dict[tuple[str, ...], Histogram] = {}

    @property
    def label_names(self) -> tuple[str, ...]:
        return self._label_names

    def labels(self, *values: str) -> Histogram:
        """The child for these label values (created on first use, then cached)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._label_names):
                raise ValueError(
                    f"expected {len(self._label_names)} label values "
                    f"{self._label_names!r}, got {len(values)}"
                )
            values = tuple(str(v) for v in values)
            child = self._children.setdefault(values, Histogram(self._bounds))
        return child

    def children(self) -> dict[tuple[str, ...], Histogram]:
        """A copy of the children by label values."""
        return dict(self._children)

    def families(self, name: str, documentation: str) -> HistogramMetricFamily:
        """A metric family with every child's snapshot, for a collector at scrape time."""
        family = HistogramMetricFamily(name, documentation, labels=list(self._label_names))
        for values, child in sorted(dict(self._children).items()):
            buckets, total = child.snapshot()
            family.add_metric(list(values), buckets, total)
        return family
