#!/usr/bin/env python3
"""What the per-statement statistics cost, in ns per call: `proxy.stats` on the hot path.

    .venv/bin/python bench/observe_cost.py [--calls 1000000] [--repeats 5]

Times with `time.perf_counter_ns`, over `--calls` calls per batch (inputs prepared beforehand,
not timed), the median and the fastest of `--repeats` batches:

* `Histogram.observe` with statement-like latencies (log-normal around 1 ms);
* `HotKeys.record` (64 buckets on 2 shards) with int keys drawn uniformly from a
  500,000-key space (the worst case: nearly every sampled update misses the sketch and
  replaces an entry) and drawn from a Zipf(1.1) law over the same space (most sampled
  updates hit), each with the default `sample_every=8` (7 calls in 8 only count the bucket
  and the shard) and with `sample_every=1` (the sketch update on every call);
* the loop's own overhead (a no-op function with the same arguments), as a row of its own:
  it is not subtracted from the other rows.

Each `HotKeys` batch starts from a sketch warmed up (full) on keys from the same law.
Targets: observe < 400 ns, record < 300 ns with sample_every=8.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository's proxy/

from proxy.stats.histogram import LATENCY_BOUNDS, Histogram
from proxy.stats.hotkeys import HotKeys

KEY_SPACE = 500_000
BUCKETS = 64
SHARDS = ("shard0", "shard1")
WARMUP = 200_000

Call = tuple[str, int, int]  # (shard, bucket, key): HotKeys.record's arguments


def uniform_keys(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(KEY_SPACE) for _ in range(n)]


def zipf_keys(rng: random.Random, n: int, s: float = 1.1) -> list[int]:
    cum = list(itertools.accumulate(1.0 / (r**s) for r in range(1, KEY_SPACE + 1)))
    ranks = rng.choices(range(KEY_SPACE), cum_weights=cum, k=n)
    # Scatter the ranks over the key space, so hot keys are not all small numbers.
    return [(r * 7_919 + 13) % KEY_SPACE for r in ranks]


def as_calls(keys: list[int]) -> list[Call]:
    out: list[Call] = []
    for k in keys:
        b = k % BUCKETS
        out.append((SHARDS[b * len(SHARDS) // BUCKETS], b, k))
    return out


def time_calls3(fn: Callable[[str, int, int], None], calls: list[Call]) -> int:
    gc.collect()
    start = time.perf_counter_ns()
    for shard, bucket, key in calls:
        fn(shard, bucket, key)
    return time.perf_counter_ns() - start


def time_calls1(fn: Callable[[float], None], values: list[float]) -> int:
    gc.collect()
    start = time.perf_counter_ns()
    for v in values:
        fn(v)
    return time.perf_counter_ns() - start


def _noop3(shard: str, bucket: int, key: int) -> None:
    return None


def _noop1(value: float) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n: int = max(args.calls, 1000)
    rng = random.Random(args.seed)

    latencies = [rng.lognormvariate(-7.0, 1.0) for _ in range(n)]  # median e^-7 s ≈ 0.9 ms
    laws: dict[str, Callable[[random.Random, int], list[int]]] = {
        "uniform": uniform_keys,
        "zipf(1.1)": zipf_keys,
    }
    inputs = {name: (as_calls(gen(rng, WARMUP)), as_calls(gen(rng, n))) for name, gen in
              laws.items()}

    rows: list[tuple[str, list[float]]] = []

    def run_observe() -> list[float]:
        out = []
        for _ in range(args.repeats):
            h = Histogram(LATENCY_BOUNDS)
            out.append(time_calls1(h.observe, latencies) / n)
        return out

    def run_record(law: str, every: int) -> list[float]:
        warm, calls = inputs[law]
        out = []
        for _ in range(args.repeats):
            hk = HotKeys(capacity=128, sample_every=every, buckets=BUCKETS)
            for shard, bucket, key in warm:
                hk.record(shard, bucket, key)
            out.append(time_calls3(hk.record, calls) / n)
        return out

    rows.append(("loop overhead, 1 argument (no-op call)",
                 [time_calls1(_noop1, latencies) / n for _ in range(args.repeats)]))
    rows.append(("Histogram.observe", run_observe()))
    rows.append(("loop overhead, 3 arguments (no-op call)",
                 [time_calls3(_noop3, inputs["uniform"][1]) / n for _ in range(args.repeats)]))
    for law in laws:
        for every in (8, 1):
            rows.append((f"HotKeys.record, {law} keys, sample_every={every}",
                         run_record(law, every)))

    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.machine()}; {n:,} calls per batch, {args.repeats} batches; "
          f"key space {KEY_SPACE:,}, capacity 128, {BUCKETS} buckets")
    width = max(len(name) for name, _ in rows)
    print(f"{'case':<{width}}  {'median ns':>10}  {'best ns':>8}")
    for name, samples in rows:
        print(f"{name:<{width}}  {statistics.median(samples):>10.0f}  {min(samples):>8.0f}")

    # What the sketch found, as a sanity check of the Zipf case.
    hk = HotKeys(capacity=128, sample_every=8, buckets=BUCKETS)
    for shard, bucket, key in inputs["zipf(1.1)"][1]:
        hk.record(shard, bucket, key)
    print("zipf top 3:", ", ".join(f"{h.key}@{h.shard} ~{h.count} ({h.share:.1%})"
                                   for h in hk.top(3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
