#!/usr/bin/env python3
"""Cross-shard SELECT merge benchmark (issue 4): 4 shards vs one Postgres, same 1M rows.

    .venv/bin/python bench/merge_bench.py [--rows 1000000] [--runs 5] [--write-results]

1. starts five throwaway Postgres servers with the same settings (fsync off): four shards
   and one plain server;
2. creates `items (id bigint primary key, grp int, v numeric(12,2), t text, ts timestamptz)`
   on each and loads the same rows: all of them into the plain server, and into each shard
   only the rows whose hash bucket (Postgres' own `PARTITION BY HASH` hash, 64 buckets) the
   shard owns, generated on the shard itself with `generate_series`; checks the placement
   (the bucket formula against `satisfies_hash_partition`, counts per shard, point reads
   through the proxy) and runs VACUUM ANALYZE everywhere;
3. starts shardwire (transaction pooling, `items` hash-sharded by `id`, 64 buckets, 16 per
   shard) in front of the four shards;
4. runs each query (count, GROUP BY 1,000 groups, ORDER BY LIMIT 10, ... OFFSET 10000, a
   100k-row unsorted scan) with psycopg against the plain server and through the proxy,
   fetching every row: one warm-up each, then --runs timed runs, interleaved; checks that the
   proxy's answer equals the plain server's (as a multiset where the query has no ORDER BY)
   and reports every difference or refusal;
5. measures the proxy's memory: its RSS (/proc/PID/status VmRSS, sampled every 10 ms) during
   a query minus its RSS just before, on a freshly started proxy (first execution of that
   text) and the largest over the timed runs, and the same for the scan and ORDER BY LIMIT at
   two input sizes, to show whether memory grows with the rows;
6. prints a markdown report; --write-results records it as a dated section of
   bench/RESULTS.md, only if every answer was equal.

Everything it starts is stopped and its temporary directory removed at the end, also on
errors and Ctrl-C. See bench/README.md ("The merge benchmark").
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from swbench import machine, procs, report, topology
from swbench.procs import REPO, BenchError, Managed
from swbench.runner import command_line, publish, run_main, say

from proxy.localpg import LocalPostgres, find_bindir, free_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
SHARDS = 4
BUCKETS = 64  # a power of two: the SQL bucket formula below takes the low bits
# Postgres' hash-partition seed and hash_combine64's constant (proxy/topology/hashing.py):
# bucket = (hashint8extended(id, SEED) + COMBINE) mod 2^64 mod BUCKETS
HASH_SEED = 0x7A5B22367996DCFD
COMBINE = 0x49A0F4DD15E5A8E3
QUERY_TIMEOUT = 600  # seconds; a query that takes longer is reported as failed

SCHEMA = """CREATE TABLE items (
    id bigint PRIMARY KEY,
    grp int NOT NULL,
    v numeric(12,2) NOT NULL,
    t text NOT NULL,
    ts timestamptz NOT NULL
);"""


def row_select(rows: int) -> str:
    """The rows of `items`, a pure function of id: every server generates the same data.
    grp = id % 1000 (1,000 groups); v repeats every 100,003 ids (ties for ORDER BY v)."""
    return (f"SELECT g, g % 1000, ((g * 7919) % 100003) / 100.0, md5(g::text), "
            f"timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' "
            f"FROM generate_series(1::bigint, {rows}) AS g")


def bucket_sql(col: str) -> str:
    """Postgres' hash-partition remainder of bigint `col` for BUCKETS partitions, in SQL."""
    mask = BUCKETS - 1
    return f"(((hashint8extended({col}, {HASH_SEED}) & {mask}) + {COMBINE & mask}) & {mask})"


def owned_buckets(shard: int) -> range:
    """shardwire's default assignment: contiguous equal ranges (written out in the config)."""
    return range(shard * BUCKETS // SHARDS, (shard + 1) * BUCKETS // SHARDS)


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    ordered: bool  # compare row order too (ORDER BY), else compare as multisets
    rows_in: str  # what the shards read, for the report


def queries(rows: int) -> list[Query]:
    return [
        Query("count(*)", "SELECT count(*) FROM items", False, f"{rows:,}"),
        Query("GROUP BY grp (1,000 groups)",
              "SELECT grp, count(*), sum(v), avg(v) FROM items GROUP BY grp", False,
              f"{rows:,}"),
        Query("ORDER BY v DESC, id LIMIT 10",
              "SELECT id, v FROM items ORDER BY v DESC, id LIMIT 10", True, f"{rows:,}"),
        Query("ORDER BY v DESC, id LIMIT 10 OFFSET 10000",
              "SELECT id, v FROM items ORDER BY v DESC, id LIMIT 10 OFFSET 10000", True,
              f"{rows:,}"),
        Query("unsorted scan, grp < 100",
              "SELECT id, grp, v, t, ts FROM items WHERE grp < 100", False,
              f"{rows:,} (returns {rows // 10:,})"),
    ]


def size_queries(rows: int) -> list[tuple[str, Query, Query]]:
    """(label, smaller, larger): the same query shape over more rows, for the memory table."""
    def q(name: str, sql: str, ordered: bool, n: str) -> Query:
        return Query(name, sql, ordered, n)

    return [
        ("unsorted scan (rows returned)",
         q("scan grp < 100", "SELECT id, grp, v, t, ts FROM items WHERE grp < 100", False,
           f"{rows // 10:,}"),
         q("scan grp < 400", "SELECT id, grp, v, t, ts FROM items WHERE grp < 400", False,
           f"{rows * 4 // 10:,}")),
        ("ORDER BY v DESC, id LIMIT 10 (rows sorted)",
         q("top 10 of grp < 100",
           "SELECT id, v FROM items WHERE grp < 100 ORDER BY v DESC, id LIMIT 10", True,
           f"{rows // 10:,}"),
         q("top 10 of all", "SELECT id, v FROM items ORDER BY v DESC, id LIMIT 10", True,
           f"{rows:,}")),
        ("ORDER BY v DESC, id LIMIT 10 OFFSET 10000 (rows sorted)",
         q("offset of grp < 100",
           "SELECT id, v FROM items WHERE grp < 100 ORDER BY v DESC, id LIMIT 10 OFFSET 10000",
           True, f"{rows // 10:,}"),
         q("offset of all",
           "SELECT id, v FROM items ORDER BY v DESC, id LIMIT 10 OFFSET 10000", True,
           f"{rows:,}")),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/merge_bench.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000,
                   help="rows in items (a multiple of 10,000 keeps the row counts exact)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per query (median shown)")
    p.add_argument("--pool-size", type=int, default=4, help="shardwire pool.size per shard")
    p.add_argument("--sample-ms", type=float, default=10.0,
                   help="interval of the proxy RSS sampler")
    p.add_argument("--write-results", action="store_true",
                   help=f"write a dated section to {RESULTS.relative_to(REPO)} "
                        "(only when every answer was equal)")
    p.add_argument("--results-file", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--rev", default=None,
                   help="benchmark the proxy/ of this git revision (git archive) instead of "
                        "the work tree")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.rows < 20_000 or args.runs < 1:
        p.error("--rows must be >= 20000 (OFFSET 10000 needs rows) and --runs >= 1")
    return args



# --------------------------------------------------------------------------- memory


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `peak` is the max."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.before = rss_kib(pid) or 0
        self.peak = self.before
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kib = rss_kib(self.pid)
            if kib is not None:
                self.peak = max(self.peak, kib)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        kib = rss_kib(self.pid)
        if kib is not None:
            self.peak = max(self.peak, kib)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.before) / 1024


# --------------------------------------------------------------------------- queries


class QueryTimeout(Exception):
    pass


@dataclass
class Answer:
    columns: list[tuple[str, int]]
    rows: list[tuple[Any, ...]]
    ms: float


def run_query(conn: psycopg.Connection[Any], sql: str) -> Answer:
    """Run `sql` (simple query protocol: no parameters, never prepared), fetch every row."""
    def expired(signum: int, frame: FrameType | None) -> None:
        raise QueryTimeout(f"no answer within {QUERY_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(QUERY_TIMEOUT)
    try:
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute(sql.encode())
            rows = cur.fetchall()
            desc = [(d.name, d.type_code) for d in (cur.description or [])]
        ms = (time.perf_counter() - started) * 1000
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return Answer(desc, rows, ms)


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, v) for v in row)


def differences(plain: Answer, proxy: Answer, ordered: bool) -> str:
    """'' when the proxy's answer equals the plain server's, else what differs."""
    if plain.columns != proxy.columns:
        return f"columns differ: plain {plain.columns}, shardwire {proxy.columns}"
    a, b = plain.rows, proxy.rows
    if not ordered:
        a, b = sorted(a, key=_sort_key), sorted(b, key=_sort_key)
    if a == b:
        return ""
    parts = [f"{len(plain.rows):,} rows from plain, {len(proxy.rows):,} from shardwire"]
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            what = "row" if ordered else "sorted row"
            parts.append(f"first difference at {what} {i}: plain {x!r}, shardwire {y!r}")
            break
    else:
        parts.append("one is a prefix of the other")
    if not ordered:
        sa, sb = set(a), set(b)
        only_plain, only_proxy = len(sa - sb), len(sb - sa)
        if only_plain or only_proxy:
            parts.append(f"{only_plain:,} distinct rows only in plain, {only_proxy:,} only in "
                         "shardwire")
    return "; ".join(parts)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        text += f" (SQLSTATE {sqlstate})"
    return " ".join(text.split())


@dataclass
class Row:
    """One query of the main table."""

    query: Query
    plain_ms: list[float] = field(default_factory=list)
    proxy_ms: list[float] = field(default_factory=list)
    rows: int | None = None
    warm_delta_mb: list[float] = field(default_factory=list)
    fresh_delta_mb: float | None = None
    fresh_rss_before_mb: float | None = None
    error: str = ""  # the proxy refused or failed
    mismatch: str = ""  # the proxy answered differently

    @property
    def ok(self) -> bool:
        return not self.error and not self.mismatch


@dataclass
class SizeRow:
    label: str
    small: Query
    large: Query
    small_delta: float | None = None
    large_delta: float | None = None
    small_ms: float | None = None
    large_ms: float | None = None
    error: str = ""


# --------------------------------------------------------------------------- the run


@dataclass
class MergeBench:
    args: argparse.Namespace
    workdir: Path
    stack: contextlib.ExitStack
    plain: LocalPostgres | None = None
    shards: list[LocalPostgres] = field(default_factory=list)
    proxy: Managed | None = None
    proxy_port: int = 0
    src: Path = Path()
    src_hash: str = ""
    load_note: str = ""
    per_shard: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _proxies: int = 0

    def snapshot(self) -> None:
        self.src = self.workdir / "src"
        self.src_hash = procs.announce_snapshot(self.src, self.args.rev)

    def _postgres(self, name: str) -> LocalPostgres:
        pg = procs.bench_postgres(self.workdir, name, self.stack, max_prepared=0)
        pg.psql(SCHEMA, dbname=topology.DATABASE)
        return pg

    def start_postgres(self) -> None:
        say(f"starting 5 Postgres servers ({find_bindir()}): plain + {SHARDS} shards")
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(self._postgres, name)
                       for name in ["plain", *(f"s{i}" for i in range(SHARDS))]]
            servers = [f.result() for f in futures]
        self.plain, self.shards = servers[0], servers[1:]

    def check_bucket_formula(self) -> None:
        """bucket_sql() is Postgres' own partition routing: checked with
        satisfies_hash_partition on a 64-way hash-partitioned table, for every id."""
        assert self.plain is not None
        n = self.args.rows
        out = self.plain.psql(
            "CREATE TABLE bucket_check (id bigint) PARTITION BY HASH (id);\n"
            f"SELECT count(*) FROM generate_series(1, {n}) AS g WHERE NOT "
            f"satisfies_hash_partition('bucket_check'::regclass, {BUCKETS}, "
            f"{bucket_sql('g')}::int, g::bigint);\n"
            "DROP TABLE bucket_check;", dbname=topology.DATABASE).strip()
        if out != "0":
            raise BenchError(f"the SQL bucket formula disagrees with satisfies_hash_partition "
                             f"for {out} of {n:,} ids")

    def load(self) -> None:
        assert self.plain is not None
        n = self.args.rows
        say(f"loading {n:,} rows: all into plain, each shard its own buckets "
            f"({BUCKETS} buckets, generated on the shard)")
        self.check_bucket_formula()
        started = time.monotonic()

        def load_plain() -> None:
            assert self.plain is not None
            self.plain.psql(f"INSERT INTO items {row_select(n)};\nVACUUM ANALYZE items;",
                            dbname=topology.DATABASE)

        def load_shard(i: int) -> None:
            mine = owned_buckets(i)
            self.shards[i].psql(
                f"INSERT INTO items {row_select(n)} WHERE {bucket_sql('g::bigint')} "
                f"BETWEEN {mine.start} AND {mine.stop - 1};\nVACUUM ANALYZE items;",
                dbname=topology.DATABASE)

        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(load_plain)] + [pool.submit(load_shard, i)
                                                    for i in range(SHARDS)]
            for f in futures:
                f.result()
        took = time.monotonic() - started
        self.per_shard = [int(s.psql("SELECT count(*) FROM items;",
                                     dbname=topology.DATABASE).strip()) for s in self.shards]
        plain_count = int(self.plain.psql("SELECT count(*) FROM items;",
                                          dbname=topology.DATABASE).strip())
        if plain_count != n or sum(self.per_shard) != n:
            raise BenchError(f"load: plain has {plain_count:,} rows, the shards "
                             f"{self.per_shard} (sum {sum(self.per_shard):,}); expected {n:,}")
        self.load_note = (
            f"Loaded in {took:.0f} s (plain and the 4 shards in parallel, INSERT ... SELECT "
            "generate_series, then VACUUM ANALYZE). Rows per shard: "
            + ", ".join(f"s{i} {c:,}" for i, c in enumerate(self.per_shard))
            + f" (sum {sum(self.per_shard):,}); plain {plain_count:,}.")
        say("  " + self.load_note)

    def config(self, port: int) -> dict[str, Any]:
        data = topology.topology(shard_ports=[s.port for s in self.shards], listen_port=port,
                                 pool_size=self.args.pool_size, sharded=False)
        data["default_shard"] = "s0"
        data["sharding"] = {"buckets": BUCKETS, "assignment": {
            f"s{i}": f"{owned_buckets(i).start}-{owned_buckets(i).stop - 1}"
            for i in range(SHARDS)}}
        data["tables"] = {"items": {"shard_key": "id", "key_type": "bigint"}}
        return data

    def start_proxy(self) -> tuple[Managed, int]:
        """A shardwire from the snapshot in front of the 4 shards (a new process each call)."""
        self._proxies += 1
        name = f"shardwire-{self._proxies}"
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc = procs.serve_shardwire(workdir, self.config(port), port, src=self.src)
        self.stack.callback(proc.stop)
        return proc, port

    def check_routing(self) -> None:
        """Point reads through the proxy (literal and parameter): each must find its row,
        so the proxy's idea of where a row lives is where the load put it."""
        rng = random.Random(4)
        ids = [1, self.args.rows, *rng.sample(range(2, self.args.rows), 198)]
        missing = []
        with procs.connect(self.proxy_port) as conn:
            for k, i in enumerate(ids):
                if k % 2:
                    got = conn.execute("SELECT id FROM items WHERE id = %s", (i,)).fetchall()
                else:
                    got = conn.execute(f"SELECT id FROM items WHERE id = {i}".encode()).fetchall()
                if got != [(i,)]:
                    missing.append((i, got))
        if missing:
            raise BenchError(f"point reads through shardwire did not find {len(missing)} of "
                             f"{len(ids)} ids: {missing[:5]}")
        say(f"  routing check: {len(ids)} point reads through shardwire found their rows")

    # ------------------------------------------------------------------ measuring
    def sampler(self, pid: int) -> RssSampler:
        return RssSampler(pid, self.args.sample_ms / 1000)

    def timed(self, rows: list[Row]) -> None:
        assert self.plain is not None and self.proxy is not None
        with contextlib.ExitStack() as conns:
            plain = conns.enter_context(procs.connect(self.plain.port))
            proxy = conns.enter_context(procs.connect(self.proxy_port))
            for row in rows:
                q = row.query
                say(f"{q.name}: {q.sql}")
                try:
                    ref = run_query(plain, q.sql)  # warm-up of the plain server
                except psycopg.Error as exc:
                    raise BenchError(f"the plain server failed {q.sql!r}: {exc}") from exc
                row.rows = len(ref.rows)
                for run in range(self.args.runs + 1):  # run 0 is the warm-up
                    if run:
                        row.plain_ms.append(run_query(plain, q.sql).ms)
                    try:
                        with self.sampler(self.proxy.pid) as mem:
                            got = run_query(proxy, q.sql)
                    except (psycopg.Error, QueryTimeout) as exc:
                        row.error = _error_text(exc)
                        say(f"  shardwire FAILED: {row.error}")
                        # a fresh connection for the next query, whatever state this is in
                        proxy.close()
                        proxy = conns.enter_context(procs.connect(self.proxy_port))
                        break
                    row.warm_delta_mb.append(mem.delta_mb)
                    diff = differences(ref, got, q.ordered)
                    if diff:
                        row.mismatch = diff
                        say(f"  shardwire answered DIFFERENTLY: {diff}")
                        break
                    if run:
                        row.proxy_ms.append(got.ms)
                if row.ok:
                    say(f"  plain {statistics.median(row.plain_ms):,.1f} ms, shardwire "
                        f"{statistics.median(row.proxy_ms):,.1f} ms, {row.rows:,} rows, "
                        f"proxy RSS +{max(row.warm_delta_mb):.1f} MB (max over runs)")

    def fresh_probe(self, sql: str) -> tuple[float, float, float]:
        """(RSS before MB, RSS delta MB, ms) of `sql`'s first run through a fresh proxy
        whose pools to every shard and whose merge code were warmed by 0-row queries."""
        proc, port = self.start_proxy()
        try:
            with procs.connect(port) as conn:
                for prime in ("SELECT id, v FROM items WHERE id < 0",
                              "SELECT count(*) FROM items WHERE id < 0",
                              "SELECT grp, sum(v) FROM items WHERE id < 0 GROUP BY grp",
                              "SELECT id, v FROM items WHERE id < 0 ORDER BY v DESC, id "
                              "LIMIT 1 OFFSET 1"):
                    run_query(conn, prime)
                time.sleep(0.3)
                with self.sampler(proc.pid) as mem:
                    ans = run_query(conn, sql)
            return mem.before / 1024, mem.delta_mb, ans.ms
        finally:
            proc.stop()

    def fresh(self, rows: list[Row]) -> None:
        for row in rows:
            if not row.ok:
                continue
            try:
                before, delta, _ = self.fresh_probe(row.query.sql)
            except (psycopg.Error, QueryTimeout) as exc:
                row.error = "fresh proxy: " + _error_text(exc)
                continue
            row.fresh_rss_before_mb, row.fresh_delta_mb = before, delta
            say(f"  fresh proxy, {row.query.name}: RSS {before:.1f} MB before, +{delta:.1f} MB")

    def sizes(self, items: list[SizeRow]) -> None:
        assert self.plain is not None
        with procs.connect(self.plain.port) as plain:
            for item in items:
                for which, q in (("small", item.small), ("large", item.large)):
                    try:
                        ref = run_query(plain, q.sql)
                        _, delta, ms = self.fresh_probe(q.sql)
                        with procs.connect(self.proxy_port) as proxy:
                            diff = differences(ref, run_query(proxy, q.sql), q.ordered)
                    except (psycopg.Error, QueryTimeout) as exc:
                        item.error = f"{q.name}: {_error_text(exc)}"
                        say(f"  {item.error}")
                        break
                    if diff:
                        item.error = f"{q.name}: answered differently: {diff}"
                        say(f"  {item.error}")
                        break
                    setattr(item, f"{which}_delta", delta)
                    setattr(item, f"{which}_ms", ms)
                    say(f"  fresh proxy, {q.name} ({q.rows_in} rows): +{delta:.1f} MB, "
                        f"{ms:,.0f} ms")


# --------------------------------------------------------------------------- report


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def main_table(rows: list[Row]) -> str:
    header = ["query", "rows returned", "plain ms", "shardwire ms", "ratio",
              "proxy RSS Δ MB, fresh proxy", "proxy RSS Δ MB, warm (max of runs)", "result"]
    out = []
    for r in rows:
        pm, sm = _med(r.plain_ms), _med(r.proxy_ms)
        ratio = f"{sm / pm:.2f}x" if pm and sm is not None and r.ok else "—"
        if r.error:
            result = "FAILED: " + r.error
        elif r.mismatch:
            result = "WRONG: " + r.mismatch
        else:
            result = "equal"
        out.append([f"`{r.query.sql}`", _f(r.rows, 0) if r.rows is not None else "—",
                    _f(pm), _f(sm) if r.ok else "—", ratio, _f(r.fresh_delta_mb),
                    _f(max(r.warm_delta_mb)) if r.warm_delta_mb and r.ok else "—",
                    result.replace("|", "\\|")])
    return report.table(header, out, ["l", "r", "r", "r", "r", "r", "r", "l"])


def size_table(items: list[SizeRow]) -> str:
    header = ["query", "smaller input", "RSS Δ MB", "ms", "larger input", "RSS Δ MB", "ms",
              "notes"]
    out = []
    for it in items:
        out.append([it.label, f"{it.small.rows_in} (`{it.small.sql}`)", _f(it.small_delta),
                    _f(it.small_ms, 0), f"{it.large.rows_in} (`{it.large.sql}`)",
                    _f(it.large_delta), _f(it.large_ms, 0), it.error.replace("|", "\\|")])
    return report.table(header, out, ["l", "l", "r", "r", "l", "r", "r", "l"])


def describe_run(bench: MergeBench) -> str:
    args = bench.args
    return (
        f"`items (id bigint primary key, grp int, v numeric(12,2), t text, ts timestamptz)`, "
        f"{args.rows:,} rows (grp = id % 1000, v repeats every 100,003 ids, t = md5(id)), on "
        f"{SHARDS} shards (hash on id, {BUCKETS} buckets, 16 per shard) behind one shardwire "
        f"(transaction pooling, pool size {args.pool_size} per shard), against the same rows "
        "in one plain Postgres. Five Postgres 'servers' with the same settings (fsync off, "
        "shared_buffers 256MB, everything else default, so parallel query is on) on the same "
        "machine as the proxy and the client. Client: psycopg "
        f"{psycopg.__version__}, simple query protocol, autocommit, fetching every row "
        "(`fetchall`); one warm-up run, then the median of "
        f"{args.runs} runs, plain and shardwire interleaved; wall time of execute + fetch. "
        "ratio = shardwire / plain. Every shardwire answer is compared with the plain "
        "server's (rows and column names/types; as multisets when there is no ORDER BY). "
        "Proxy RSS Δ: the proxy's VmRSS sampled every "
        f"{args.sample_ms:g} ms during the query minus its VmRSS just before. 'Fresh proxy': "
        "a shardwire started for that one query (after 0-row queries that open its pools to "
        "all shards and load the merge code), so memory freed by earlier queries cannot hide "
        "growth; 'warm': the long-running proxy of the timed runs (Python reuses memory it "
        "already has, so this understates a buffering proxy).")


def render(bench: MergeBench, rows: list[Row], sizes: list[SizeRow], facts: dict[str, str],
           command: str) -> str:
    parts = [
        f"## {facts['date'][:10]}: cross-shard SELECT merge, {bench.args.rows:,} rows, "
        f"{SHARDS} shards vs one Postgres",
        "",
        f"Command: `{command}`",
        "",
        describe_run(bench),
        "",
        bench.load_note,
        "",
        main_table(rows),
        "",
        "Proxy memory against input size (each number: a fresh proxy, the query's first run):",
        "",
        size_table(sizes),
    ]
    if bench.notes:
        parts += ["", *(f"- {n}" for n in bench.notes)]
    if bench.failures:
        parts += ["", "**Failures**:", "", *(f"- {f}" for f in bench.failures)]
    parts += ["", "### Machine", "", report.machine_table(facts)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("bench/merge_bench.py", argv)

    def body(workdir: Path, stack: contextlib.ExitStack) -> int:
        return run(MergeBench(args, workdir, stack), command)

    return run_main("swmerge-", args.keep, body)


def _step(what: str, fn: Callable[[], None]) -> None:
    started = time.monotonic()
    fn()
    say(f"  {what} took {time.monotonic() - started:.0f}s")


def run(bench: MergeBench, command: str) -> int:
    args = bench.args
    bench.snapshot()
    load_before = machine.load_average()
    bench.start_postgres()
    _step("loading", bench.load)
    bench.proxy, bench.proxy_port = bench.start_proxy()
    say(f"shardwire listening on 127.0.0.1:{bench.proxy_port} (pid {bench.proxy.pid})")
    bench.check_routing()
    assert bench.plain is not None
    facts = machine.describe(bindir=bench.plain.bindir, pgbench=bench.plain.bindir / "pgbench",
                             pgbouncer=None, src=bench.src, src_hash=bench.src_hash,
                             rev=args.rev)
    for key in ("pgbench", "pgbouncer", "load average before (1/5/15 min)"):
        facts.pop(key, None)
    facts["psycopg"] = psycopg.__version__
    facts["load average before loading (1/5/15 min)"] = load_before
    facts["load average before measuring (1/5/15 min)"] = machine.load_average()
    machine.warn_if_busy()

    rows = [Row(q) for q in queries(args.rows)]
    _step("timed runs", lambda: bench.timed(rows))
    say("proxy memory per query on fresh proxies")
    _step("fresh-proxy memory", lambda: bench.fresh(rows))
    say("proxy memory against input size (fresh proxies)")
    sizes = [SizeRow(label, small, large) for label, small, large in size_queries(args.rows)]
    _step("memory vs size", lambda: bench.sizes(sizes))
    facts["load average after (1/5/15 min)"] = machine.load_average()

    for r in rows:
        if r.error:
            bench.failures.append(f"`{r.query.sql}`: shardwire failed: {r.error}")
        elif r.mismatch:
            bench.failures.append(f"`{r.query.sql}`: shardwire answered differently: "
                                  f"{r.mismatch}")
    for s in sizes:
        if s.error:
            bench.failures.append(f"memory vs size, {s.label}: {s.error}")
    if bench.proxy is not None and bench.proxy.alive:
        log = bench.proxy.log_tail(20)
        if log.strip():
            bench.notes.append("shardwire's log (tail): " + " / ".join(
                " ".join(line.split()) for line in log.splitlines()[-5:]).replace("|", "\\|"))

    return publish(render(bench, rows, sizes, facts, command), bench.failures,
                   write=args.write_results, results_file=args.results_file,
                   section=f"merge-{facts['date'][:10]}")


if __name__ == "__main__":
    sys.exit(main())
