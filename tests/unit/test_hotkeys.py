"""proxy.stats.hotkeys: the sampled Space-Saving sketch and the exact bucket/shard counts."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter

import pytest

from proxy.stats.hotkeys import KEY_TEXT_MAX, HotKey, HotKeys, key_text


def _check_structure(hk: HotKeys) -> None:
    """The count groups partition the entries, and the tracked minimum is the minimum."""
    counts = hk._counts
    groups = hk._by_count
    assert set(counts) == set(hk._errors)
    assert sum(len(g) for g in groups.values()) == len(counts)
    for c, group in groups.items():
        assert group, "no empty groups are kept"
        for entry in group:
            assert counts[entry] == c
    if counts:
        assert hk._min == min(counts.values())
    assert len(counts) <= hk.capacity


def _zipf_stream(rng: random.Random, n: int, keys: int, s: float = 1.2) -> list[int]:
    weights = [1.0 / (r**s) for r in range(1, keys + 1)]
    return rng.choices(range(keys), weights=weights, k=n)


# -- key text -------------------------------------------------------------------------------


def test_key_text() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert key_text(42) == "42"
    assert key_text(-7) == "-7"
    assert key_text("alice") == "alice"
    assert key_text(u) == str(u)
    assert key_text(b"\x00\xffab") == "00ff6162"
    assert key_text(bytearray(b"\x01")) == "01"
    assert key_text(memoryview(b"\x02\x03")) == "0203"
    assert key_text("x" * 500) == "x" * KEY_TEXT_MAX
    assert key_text(b"\xab" * 100) == "ab" * (KEY_TEXT_MAX // 2)
    assert len(key_text(10**200)) == KEY_TEXT_MAX
    assert key_text(None) == "None"


def test_key_text_never_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    assert key_text(Broken()) == "<Broken>"
    assert key_text(10**10_000) == "<int>"  # past the int -> str digit limit


def test_long_keys_share_an_entry_by_their_prefix() -> None:
    hk = HotKeys(capacity=8, sample_every=1)
    hk.record("s0", None, "k" * 64 + "a")
    hk.record("s0", None, "k" * 64 + "b")
    assert len(hk) == 1
    assert hk.top() == [HotKey(key="k" * 64, shard="s0", count=2, error=0, share=1.0)]


# -- the sketch -----------------------------------------------------------------------------


def test_hot_key_at_30_percent_is_top_with_its_share() -> None:
    rng = random.Random(7)
    n = 200_000
    hk = HotKeys(buckets=64)  # default capacity 128, sample_every 8
    true: Counter[str] = Counter()
    for _ in range(n):
        if rng.random() < 0.30:
            key = 424242
        else:
            key = _zipf_tail(rng)
        true[str(key)] += 1
        hk.record("s0", key % 64, key)
    hot_share = true["424242"] / n
    assert 0.29 < hot_share < 0.31
    (top,) = hk.top(1)
    assert top.key == "424242" and top.shard == "s0"
    assert top.share == pytest.approx(hot_share, abs=0.05)
    assert top.count == pytest.approx(true["424242"], rel=0.05)
    assert top.count % hk.sample_every == 0  # scaled back up by the sampling rate
    _check_structure(hk)


def _zipf_tail(rng: random.Random) -> int:
    # A heavy-tailed law over ~10^6 keys: Pareto ranks, so many keys, none above a few %.
    return int(rng.paretovariate(1.0) * 1000) % 1_000_000


@pytest.mark.parametrize("sample_every", [1, 8])
def test_true_top5_found_among_more_keys_than_capacity(sample_every: int) -> None:
    rng = random.Random(11)
    heavy = {"h1": 0.10, "h2": 0.08, "h3": 0.06, "h4": 0.05, "h5": 0.04}
    n = 300_000
    hk = HotKeys(capacity=128, sample_every=sample_every)
    true: Counter[str] = Counter()
    names = list(heavy)
    cum = []
    acc = 0.0
    for name in names:
        acc += heavy[name]
        cum.append(acc)
    for _ in range(n):
        r = rng.random()
        for name, c in zip(names, cum, strict=True):
            if r < c:
                key: object = name
                break
        else:
            key = rng.randrange(50_000)  # 67% of the stream over 50,000 keys
        true[key_text(key)] += 1
        hk.record("s0", None, key)
    assert len(true) > 100 * hk.capacity
    top5 = hk.top(5)
    assert [h.key for h in top5] == names  # the true order, too: the gaps are wide
    for h in top5:
        assert h.count == pytest.approx(true[h.key], rel=0.05)
    counts = [h.count for h in hk.top(hk.capacity)]
    assert counts == sorted(counts, reverse=True)


def test_space_saving_guarantees_unsampled() -> None:
    rng = random.Random(3)
    capacity = 64
    n = 100_000
    hk = HotKeys(capacity=capacity, sample_every=1)
    true: Counter[tuple[str, str]] = Counter()
    for key in _zipf_stream(rng, n, keys=5_000, s=1.0):
        shard = "s0" if key % 3 else "s1"
        true[(shard, str(key))] += 1
        hk.record(shard, None, key)
        if rng.random() < 0.001:
            _check_structure(hk)
    _check_structure(hk)
    reported = hk.top(capacity)
    assert len(reported) == capacity
    assert sum(h.count for h in reported) == n  # every update adds exactly 1 to the sketch
    for h in reported:
        t = true[(h.shard, h.key)]
        assert h.count >= t
        assert h.count - h.error <= t
        assert 0 <= h.error <= h.count
    # Every key seen more than N / capacity times is in the sketch.
    present = {(h.shard, h.key) for h in reported}
    for entry, t in true.items():
        if t > n / capacity:
            assert entry in present


def test_memory_bounded_after_a_million_distinct_keys() -> None:
    hk = HotKeys(capacity=128, sample_every=1)
    for key in range(1_000_000):
        hk.record("s0", None, key)
    assert len(hk) <= 128
    assert len(hk._errors) <= 128
    assert len(hk._by_count) <= 128
    _check_structure(hk)
    assert len(hk.top(10_000)) == 128
    assert hk.shard_totals() == {"s0": 1_000_000}


def test_sampling_scales_counts_up() -> None:
    hk = HotKeys(sample_every=8)
    for _ in range(800):
        hk.record("s0", None, 5)
    assert hk.top() == [HotKey(key="5", shard="s0", count=800, error=0, share=1.0)]
    assert hk.shard_totals() == {"s0": 800}


def test_first_call_is_sampled() -> None:
    hk = HotKeys(sample_every=1000)
    hk.record("s0", None, "k")
    assert [h.key for h in hk.top()] == ["k"]


def test_shares_per_shard() -> None:
    hk = HotKeys(sample_every=1)
    # Shard a: key 1 is half its traffic. Shard b (4x the traffic): key 1 is a tenth.
    for i in range(1000):
        hk.record("a", None, 1 if i % 2 == 0 else 1000 + i % 10)
    for i in range(4000):
        hk.record("b", None, 1 if i % 10 == 0 else 2000 + i % 20)
    by = {(h.shard, h.key): h for h in hk.top(100)}
    assert by[("a", "1")].count == 500 and by[("a", "1")].share == pytest.approx(0.5)
    assert by[("b", "1")].count == 400 and by[("b", "1")].share == pytest.approx(0.1)
    assert hk.shard_totals() == {"a": 1000, "b": 4000}
    for h in hk.top(100):
        assert 0.0 <= h.share <= 1.0
    assert sum(h.share for h in hk.top(100) if h.shard == "a") == pytest.approx(1.0)


def test_top_order_and_limits() -> None:
    hk = HotKeys(sample_every=1)
    for key, times in (("x", 3), ("y", 5), ("z", 1)):
        for _ in range(times):
            hk.record("s0", None, key)
    assert [h.key for h in hk.top()] == ["y", "x", "z"]
    assert [h.key for h in hk.top(2)] == ["y", "x"]
    assert hk.top(0) == []
    assert HotKeys().top() == []


# -- exact counts, resize, reset ------------------------------------------------------------


def test_bucket_counts_and_shard_totals_exact() -> None:
    rng = random.Random(5)
    hk = HotKeys(capacity=16, sample_every=8, buckets=32)
    expected_b: Counter[int] = Counter()
    expected_s: Counter[str] = Counter()
    for _ in range(50_000):
        key = rng.randrange(10**6)
        bucket = key % 32
        shard = f"s{bucket % 4}"
        hk.record(shard, bucket, key)
        expected_b[bucket] += 1
        expected_s[shard] += 1
    hk.record("s9", None, "unhashed")  # counted for the shard, not for any bucket
    expected_s["s9"] += 1
    counts = hk.bucket_counts()
    assert len(counts) == 32
    assert counts == [expected_b[b] for b in range(32)]
    assert hk.shard_totals() == dict(expected_s)


def test_bucket_out_of_range_is_ignored() -> None:
    hk = HotKeys(buckets=4)
    hk.record("s0", 7, 1)  # e.g. routed with the old topology just before a resize
    assert hk.bucket_counts() == [0, 0, 0, 0]
    assert hk.shard_totals() == {"s0": 1}
    HotKeys().record("s0", 0, 1)  # buckets=0: nothing to count, no error


def test_resize_starts_afresh() -> None:
    hk = HotKeys(sample_every=1, buckets=8)
    for i in range(100):
        hk.record("s0", i % 8, i % 3)
    assert hk.top() and sum(hk.bucket_counts()) == 100
    hk.resize(16)
    assert hk.buckets == 16
    assert hk.bucket_counts() == [0] * 16
    assert hk.top() == [] and len(hk) == 0
    assert hk.shard_totals() == {}
    hk.record("s1", 15, "k")
    assert hk.bucket_counts()[15] == 1
    assert [h.key for h in hk.top()] == ["k"]
    _check_structure(hk)
    with pytest.raises(ValueError):
        hk.resize(-1)


def test_reset_keeps_bucket_count() -> None:
    hk = HotKeys(sample_every=1, buckets=4)
    for i in range(10):
        hk.record("s0", i % 4, i)
    hk.reset()
    assert hk.bucket_counts() == [0, 0, 0, 0]
    assert hk.top() == [] and hk.shard_totals() == {}


@pytest.mark.parametrize(
    "kwargs", [{"capacity": 0}, {"sample_every": 0}, {"buckets": -1}]
)
def test_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        HotKeys(**kwargs)


def test_reads_while_recording_from_another_thread() -> None:
    hk = HotKeys(capacity=32, sample_every=1, buckets=16)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                for h in hk.top(10):
                    assert h.count >= 0 and 0.0 <= h.share <= 1.0
                hk.bucket_counts()
                hk.shard_totals()
                reads += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        rng = random.Random(1)
        for i in range(300_000):
            key = rng.randrange(5_000)
            hk.record(f"s{key % 3}", key % 16, key)
            if i % 100_000 == 99_999:
                hk.resize(16)
    finally:
        stop.set()
        thread.join(10)
    assert not errors
    assert reads > 0
    _check_structure(hk)
