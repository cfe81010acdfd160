"""Heavy hitters of shard-key values, and exact per-bucket / per-shard statement counts.

:meth:`HotKeys.record` runs for every statement routed by a shard-key value, so it is built
from a few plain-int operations:

* the statement's bucket count (a list slot) and its shard's total (a dict entry) are
  incremented on every call: those counts are exact;
* one call in ``sample_every`` (a countdown, not a random draw; the first call is sampled)
  also feeds a Space-Saving sketch (Metwally, Agrawal, El Abbadi, "Efficient computation of
  frequent and top-k elements in data streams", 2005) of ``capacity`` entries keyed by
  ``(shard, key text)``: a key present is incremented; a new key takes a free entry with
  count 1; when the sketch is full, it replaces an entry of minimum count ``m`` and gets
  count ``m + 1`` and error ``m``. For every key in the sketch, counted over the sampled
  stream: ``count - error <= true count <= count``, and every key whose true count is above
  ``N / capacity`` (N sampled statements) is in it.

Finding a minimum entry does not scan the sketch: counts only ever grow by one, and a
replaced entry gets ``m + 1``, so the entries are grouped by count (``count -> set of
keys``, the hash-table form of the paper's Stream-Summary) and the minimum count is tracked
as it moves (by at most one per update). Hit, insertion and replacement are O(1).

Reported counts and errors are scaled back up by ``sample_every`` (an estimate of the
occurrences in the whole stream). A key's ``share`` is its sampled count over its shard's
*sampled* total (both in the same sampled stream, so the ratio is consistent with what the
sketch saw; the exact per-shard totals are in :meth:`HotKeys.shard_totals`).

Key values are user data: the text (``str()``; ``bytes`` in hex; at most 64 characters) is
only shown in the admin console, never used as a metric label.

Reads (:meth:`top`, :meth:`bucket_counts`, :meth:`shard_totals`) only copy the containers
(``dict(...)`` / ``list(...)``, atomic under the GIL) and may run in another thread while
the event loop records; :meth:`reset` and :meth:`resize` rebind fresh containers rather than
clear them in place.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = ["KEY_TEXT_MAX", "HotKey", "HotKeys", "key_text"]

KEY_TEXT_MAX = 64  # characters of a key value kept (and shown)

_Entry = tuple[str, str]  # (shard, key text)


def key_text(key: object) -> str:
    """The key value as text for the sketch: ``str()``, ``bytes`` in hex, capped at 64 chars."""
    if isinstance(key, str):
        return key[:KEY_TEXT_MAX]  # no copy when it is short
    t = type(key)
    try:
        if t is int:
            text = str(key)
        elif isinstance(key, (bytes, bytearray)):
            text = key[: KEY_TEXT_MAX // 2].hex()
        elif isinstance(key, memoryview):
            text = key.tobytes()[: KEY_TEXT_MAX // 2].hex()
        else:
            text = str(key)
    except Exception:  # an int past sys.get_int_max_str_digits(), a broken __str__, ...
        text = f"<{t.__name__}>"
    return text[:KEY_TEXT_MAX]


@dataclass(frozen=True, slots=True)
class HotKey:
    key: str  # the key value as text
    shard: str
    count: int  # estimated occurrences (scaled back up by the sampling rate)
    error: int  # Space-Saving overestimation bound (scaled likewise)
    share: float  # count / the shard's total keyed statements (0..1), on the sampled stream


class HotKeys:
    """Exact per-bucket and per-shard counts plus a sampled Space-Saving sketch of keys."""

    __slots__ = (
        "_bucket_counts",
        "_by_count",
        "_capacity",
        "_counts",
        "_errors",
        "_min",
        "_sample_every",
        "_sampled_totals",
        "_shard_totals",
        "_tick",
    )

    def __init__(self, capacity: int = 128, sample_every: int = 8, buckets: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, got {sample_every}")
        if buckets < 0:
            raise ValueError(f"buckets must not be negative, got {buckets}")
        self._capacity = capacity
        self._sample_every = sample_every
        self._bucket_counts: list[int] = [0] * buckets
        self._shard_totals: dict[str, int] = {}
        self._sampled_totals: dict[str, int] = {}
        self._tick = 1  # calls until the next sampled one
        # The sketch: (shard, key text) -> count and -> error; count -> the entries with it.
        self._counts: dict[_Entry, int] = {}
        self._errors: dict[_Entry, int] = {}
        self._by_count: dict[int, set[_Entry]] = {}
        self._min = 0  # the minimum count in the sketch (0 while it is empty)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def sample_every(self) -> int:
        return self._sample_every

    @property
    def buckets(self) -> int:
        return len(self._bucket_counts)

    def __len__(self) -> int:
        """Entries in the sketch (at most ``capacity``)."""
        return len(self._counts)

    # -- the hot path ------------------------------------------------------------------------

    def record(self, shard: str, bucket: int | None, key: object) -> None:
        """Count one statement routed to ``shard`` (``bucket``, if hashed) by ``key``."""
        if bucket is not None:
            try:
                self._bucket_counts[bucket] += 1
            except IndexError:  # a statement routed just before a resize to fewer buckets
                pass
        totals = self._shard_totals
        totals[shard] = totals.get(shard, 0) + 1
        tick = self._tick - 1
        if tick:
            self._tick = tick
            return
        self._tick = self._sample_every
        self._sample(shard, key)

    def _sample(self, shard: str, key: object) -> None:
        sampled = self._sampled_totals
        sampled[shard] = sampled.get(shard, 0) + 1
        entry = (shard, key[:KEY_TEXT_MAX] if isinstance(key, str) else key_text(key))
        counts = self._counts
        by_count = self._by_count
        c = counts.get(entry)
        if c is not None:  # a hit: move the entry from count c to c + 1
            c1 = c + 1
            counts[entry] = c1
            group = by_count[c]
            if len(group) == 1:  # the entry was alone at c
                del by_count[c]
                if c == self._min:
                    self._min = c1
                same = by_count.get(c1)
                if same is None:
                    by_count[c1] = group  # reuse the set: it holds just this entry
                else:
                    same.add(entry)
            else:
                group.discard(entry)
                same = by_count.get(c1)
                if same is None:
                    by_count[c1] = {entry}
                else:
                    same.add(entry)
            return
        if len(counts) < self._capacity:  # room: a new entry at count 1
            counts[entry] = 1
            self._errors[entry] = 0
            ones = by_count.get(1)
            if ones is None:
                by_count[1] = {entry}
            else:
                ones.add(entry)
            self._min = 1
            return
        # Full: replace an entry of minimum count m; the new one gets m + 1, error m.
        m = self._min
        group = by_count[m]
        victim = group.pop()
        del counts[victim]
        errors = self._errors
        del errors[victim]
        m1 = m + 1
        counts[entry] = m1
        errors[entry] = m
        if not group:
            del by_count[m]
            self._min = m1  # the new entry is at m + 1, and nothing is below it
        same = by_count.get(m1)
        if same is None:
            by_count[m1] = {entry}
        else:
            same.add(entry)

    # -- reads (any thread) ------------------------------------------------------------------

    def top(self, n: int = 20) -> list[HotKey]:
        """The ``n`` entries with the highest counts, highest first."""
        if n <= 0:
            return []
        counts = dict(self._counts)
        errors = dict(self._errors)
        sampled = dict(self._sampled_totals)
        scale = self._sample_every
        best = heapq.nsmallest(n, counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out: list[HotKey] = []
        for (shard, text), count in best:
            total = sampled.get(shard, 0)
            out.append(
                HotKey(
                    key=text,
                    shard=shard,
                    count=count * scale,
                    error=errors.get((shard, text), 0) * scale,
                    share=min(1.0, count / total) if total > 0 else 0.0,
                )
            )
        return out

    def bucket_counts(self) -> list[int]:
        """Exact statement counts per bucket (index = bucket), ``buckets`` long."""
        return list(self._bucket_counts)

    def shard_totals(self) -> dict[str, int]:
        """Exact keyed statement counts per shard."""
        return dict(self._shard_totals)

    # -- control (event loop) ----------------------------------------------------------------

    def resize(self, buckets: int) -> None:
        """The topology now has ``buckets`` buckets: start counting afresh."""
        if buckets < 0:
            raise ValueError(f"buckets must not be negative, got {buckets}")
        self._reset(buckets)

    def reset(self) -> None:
        """Forget everything (the bucket count stays)."""
        self._reset(len(self._bucket_counts))

    def _reset(self, buckets: int) -> None:
        # Fresh containers, rebound: a reader in another thread copies the old or the new.
        self._bucket_counts = [0] * buckets
        self._shard_totals = {}
        self._sampled_totals = {}
        self._counts = {}
        self._errors = {}
        self._by_count = {}
        self._min = 0
        self._tick = 1
