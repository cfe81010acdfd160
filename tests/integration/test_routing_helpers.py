"""Shared helpers for the routing tests (test_routing_*.py; this module holds no tests).

Where a row *should* be is decided by PostgreSQL itself, never by shardwire's own code: the
key is inserted, on a direct connection, into a temporary ``PARTITION BY HASH (k)`` table
with one partition per bucket (``MODULUS 64``, as in test_hashing_pg.py) and the partition
Postgres picks is the bucket. The default assignment gives shard ``i`` of ``N`` the buckets
``[floor(i*B/N), floor((i+1)*B/N))`` (:func:`owner`).

Every check connects straight to the shards (as ``postgres``, database ``app``); the proxy is
only ever the thing under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy, assert_clean_log

BUCKETS = 64
SHARDS = ("s0", "s1")
PSQL = shutil.which("psql") or "psql"


@contextmanager
def routed_proxy(factory: ProxyFactory, tables: dict[str, Any], *, size: int = 4,
                 **overrides: Any) -> Iterator[RunningProxy]:
    """A transaction-pooling proxy over s0/s1 with `tables` in its topology (64 buckets, the
    default assignment, default shard s0, unparsed SQL to the default shard); its log must
    stay clean while it is used."""
    running = factory(
        sharding={"buckets": BUCKETS}, tables=tables, unparsed="default",
        pool={"mode": "transaction", "size": size, "connect_timeout": 3,
              "checkout_timeout": 10, "shutdown_timeout": 5},
        **overrides)
    yield running
    assert_clean_log(running)


def owner(bucket: int, shards: Sequence[str] = SHARDS, buckets: int = BUCKETS) -> str:
    """The shard owning `bucket` under the default assignment."""
    n = len(shards)
    for i, name in enumerate(shards):
        if i * buckets // n <= bucket < (i + 1) * buckets // n:
            return name
    raise AssertionError(f"bucket {bucket} out of range 0-{buckets - 1}")


def shard_dsn(cluster: LocalPostgres) -> str:
    return (f"host={cluster.host} port={cluster.port} user=postgres password=postgres "
            f"dbname=app")


def by_name(clusters: Sequence[LocalPostgres]) -> dict[str, LocalPostgres]:
    """The suite's clusters by shard name (base_topology names them s0, s1, ...)."""
    return {f"s{i}": c for i, c in enumerate(clusters)}


def direct(cluster: LocalPostgres) -> psycopg.Connection[Any]:
    """An autocommit connection straight to a shard (never through the proxy)."""
    return psycopg.connect(shard_dsn(cluster), autocommit=True, connect_timeout=10)


def via(proxy: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    """A psycopg connection through the proxy (autocommit unless told otherwise)."""
    kw.setdefault("autocommit", True)
    kw.setdefault("connect_timeout", 10)
    return psycopg.connect(proxy.dsn(), **kw)


# --------------------------------------------------------------------------- buckets by PG


def _probe(conn: psycopg.Connection[Any], sql_type: str) -> str:
    """A temporary hash-partitioned table with one partition per bucket (per connection)."""
    name = f"rt_probe_{sql_type.replace(' ', '_')}"
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"pg_temp.{name}",)).fetchone()
    if exists and exists[0]:
        conn.execute(f"TRUNCATE {name}")
        return name
    stmts = [f"CREATE TEMP TABLE {name} (k {sql_type}) PARTITION BY HASH (k)"]
    stmts += [f"CREATE TEMP TABLE {name}_p{r} PARTITION OF {name} "
              f"FOR VALUES WITH (MODULUS {BUCKETS}, REMAINDER {r})" for r in range(BUCKETS)]
    with conn.transaction():
        for stmt in stmts:
            conn.execute(stmt)
    return name


_REMAINDER = r"substring(tableoid::regclass::text from '_p([0-9]+)$')::int"


def pg_buckets(conn: psycopg.Connection[Any], values: Iterable[Any],
               sql_type: str) -> dict[Any, int]:
    """The bucket Postgres' own hash partitioning gives each (non-NULL) value."""
    probe = _probe(conn, sql_type)
    with conn.cursor() as cur, cur.copy(f"COPY {probe} (k) FROM STDIN") as copy:
        for value in values:
            copy.write_row((value,))
    rows = conn.execute(f"SELECT k, {_REMAINDER} FROM {probe}").fetchall()
    return dict(rows)


def pick_keys(conn: psycopg.Connection[Any], shard: str, n: int, start: int,
              sql_type: str = "bigint") -> list[int]:
    """The first `n` integers >= `start` whose bucket `shard` owns (decided by Postgres)."""
    candidates = list(range(start, start + 40 * n + 100))
    buckets = pg_buckets(conn, candidates, sql_type)
    keys = [k for k in candidates if owner(buckets[k]) == shard][:n]
    assert len(keys) == n
    return keys


def table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def assert_on_every_shard(clusters: Sequence[LocalPostgres], table: str) -> None:
    missing = []
    for name, cluster in by_name(clusters).items():
        with direct(cluster) as conn:
            if not table_exists(conn, table):
                missing.append(name)
    assert missing == [], (f"table {table} is missing on {missing}: DDL through the proxy "
                           "did not reach every shard")


def key_buckets(conn: psycopg.Connection[Any], table: str, key: str,
                sql_type: str) -> list[tuple[Any, int]]:
    """(key, bucket) of every row of `table` on this server; NULL keys are left out."""
    probe = _probe(conn, sql_type)
    conn.execute(sql.SQL("INSERT INTO {} SELECT {}::{} FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(probe), sql.Identifier(key), sql.SQL(sql_type), sql.Identifier(table),
        sql.Identifier(key)))
    return conn.execute(f"SELECT k, {_REMAINDER} FROM {probe}").fetchall()


def bucket_counts(conn: psycopg.Connection[Any], table: str, key: str,
                  sql_type: str) -> tuple[Counter[int], int]:
    """Rows of `table` on this server per bucket of `key`, and the total row count (which
    includes rows with a NULL key). For big tables: no key leaves the server."""
    probe = _probe(conn, sql_type)
    conn.execute(sql.SQL("INSERT INTO {} SELECT {}::{} FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(probe), sql.Identifier(key), sql.SQL(sql_type), sql.Identifier(table),
        sql.Identifier(key)))
    rows = conn.execute(f"SELECT {_REMAINDER}, count(*) FROM {probe} GROUP BY 1").fetchall()
    total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(table))).fetchone()
    assert total is not None
    return Counter(dict(rows)), int(total[0])


def hash_placement(clusters: Sequence[LocalPostgres], table: str, key: str,
                   sql_type: str) -> dict[str, list[tuple[Any, int]]]:
    """Per shard: (key, bucket) of every row of `table` stored there."""
    assert_on_every_shard(clusters, table)
    found = {}
    for name, cluster in by_name(clusters).items():
        with direct(cluster) as conn:
            found[name] = key_buckets(conn, table, key, sql_type)
    return found


def assert_hash_placement(clusters: Sequence[LocalPostgres], table: str, key: str,
                          sql_type: str, expected: Iterable[Any],
                          label: dict[Any, str] | None = None,
                          maybe: Iterable[Any] = ()) -> dict[str, set[Any]]:
    """Every row of `table` is on the shard owning its key's bucket, on one shard only, and
    the keys stored are exactly `expected` (plus any of `maybe`). `label` (key -> who wrote
    it) makes a failure say which client's rows went astray. Returns the keys found per
    shard."""
    placement = hash_placement(clusters, table, key, sql_type)
    label = label or {}
    misplaced = [(label.get(k, "?"), k, shard, b, owner(b))
                 for shard, rows in placement.items() for k, b in rows if owner(b) != shard]
    per_source = Counter(m[0] for m in misplaced)
    assert not misplaced, (
        f"{len(misplaced)} rows of {table} on the wrong shard (by writer: {dict(per_source)}); "
        f"first ones (writer, key, found on, bucket, owner): {misplaced[:8]}")
    seen: Counter[Any] = Counter(k for rows in placement.values() for k, _ in rows)
    twice = sorted((k for k, n in seen.items() if n > 1), key=repr)
    assert twice == [], f"keys stored more than once (on several shards?): {twice[:10]}"
    want = set(expected)
    missing = sorted(want - set(seen), key=repr)
    extra = sorted(set(seen) - want - set(maybe), key=repr)
    assert (missing, extra) == ([], []), f"missing keys {missing[:10]}, unexpected {extra[:10]}"
    return {shard: {k for k, _ in rows} for shard, rows in placement.items()}


def rows_by_shard(clusters: Sequence[LocalPostgres], query: str,
                  params: Sequence[Any] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """The result of `query` run directly on every shard, by shard name."""
    out = {}
    for name, cluster in by_name(clusters).items():
        with direct(cluster) as conn:
            out[name] = conn.execute(query, params).fetchall()
    return out


def run_everywhere(clusters: Sequence[LocalPostgres], *statements: str) -> None:
    """Directly on every shard, in order (setup and cleanup only, never the thing tested)."""
    for cluster in clusters:
        with direct(cluster) as conn:
            for statement in statements:
                conn.execute(statement)


def drop_everywhere(clusters: Sequence[LocalPostgres], *tables: str) -> None:
    """Directly on every shard (cleanup and setup only, never the thing tested)."""
    run_everywhere(clusters, f"DROP TABLE IF EXISTS {', '.join(tables)} CASCADE")


def run_psql(proxy: RunningProxy, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """psql through the proxy (-X, ON_ERROR_STOP, unaligned tuples-only output)."""
    result = run_psql_bytes(proxy, *args, stdin=None if stdin is None else stdin.encode(),
                            check=check)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def run_psql_bytes(proxy: RunningProxy, *args: str, stdin: bytes | None = None,
                   check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Like run_psql, without newline translation (data with carriage returns)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LC_MESSAGES="C", PGCONNECT_TIMEOUT="10", PGCLIENTENCODING="UTF8")
    result = subprocess.run(
        [PSQL, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args, "-d", proxy.dsn()],
        input=stdin, capture_output=True, timeout=120, env=env)
    if check:
        assert result.returncode == 0, \
            f"psql failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}"
    return result
