"""asyncpg, unchanged, through a transaction-pooling shardwire: results equal direct.

asyncpg speaks only the extended protocol with binary results and names its statements
(`__asyncpg_stmt_N__`), so this exercises statement renaming, re-preparing on whichever
server connection a client gets, and the unnamed statement (statement_cache_size=0).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.integration.conftest import ProxyFactory, RunningProxy, pooled_proxy

T = "client_asyncpg"


def direct_url(direct_dsn: str) -> str:
    kv = dict(part.split("=", 1) for part in direct_dsn.split())
    return (f"postgresql://{kv['user']}:{kv['password']}@{kv['host']}:{kv['port']}/"
            f"{kv['dbname']}")


@pytest.fixture(scope="module")
def small(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with pooled_proxy(proxy_factory) as running:
        yield running


@pytest.fixture(scope="module")
async def tables(direct_dsn: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(direct_url(direct_dsn))
    try:
        await conn.execute(f"""
            DROP TABLE IF EXISTS {T}_items, {T}_types, {T}_copy, {T}_tx CASCADE;
            CREATE TABLE {T}_items (id int PRIMARY KEY, name text NOT NULL, qty int);
            INSERT INTO {T}_items SELECT g, 'item ' || g, g % 17
                FROM generate_series(1, 1000) g;
            CREATE TABLE {T}_types (
                id serial PRIMARY KEY, n numeric, ts timestamptz, d date, iv interval,
                u uuid, j jsonb, ia int[], ta text[], b bytea, flag bool, f8 float8,
                f4 float4, i8 bigint, t text);
            CREATE TABLE {T}_copy (id int, name text, amount numeric, at timestamptz);
            CREATE TABLE {T}_tx (id int PRIMARY KEY, who text);
        """)
        yield
    finally:
        await conn.close()


VALUES: list[tuple[Any, ...]] = [
    (Decimal("123456789012345678901234567890.123456789012345678901234567890"),
     dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC), dt.date(1, 1, 1),
     dt.timedelta(days=-3, microseconds=17), uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
     '{"k": [1, 2.5, null, "s"], "n": {"x": true}}', [1, None, -2147483648],
     ["a", "b c", None, "", "quote\"d"], b"\x00\xff" * 1000, True, 1.5e300, 0.25,
     -(2 ** 63), "ünïcødé ☃ " * 100),
    (Decimal("-0.000000000000000000000000000001"),
     dt.datetime(1970, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
     dt.date(9999, 12, 31), dt.timedelta(days=365 * 100), uuid.UUID(int=0), "[]", [], [],
     b"", False, float("inf"), float("-inf"), 2 ** 63 - 1, ""),
    (Decimal("NaN"), None, None, None, None, None, None, None, None, None, None, None, None,
     None),
]
COLS = "n, ts, d, iv, u, j, ia, ta, b, flag, f8, f4, i8, t"


def norm(row: Any) -> tuple[Any, ...]:
    """Make NaN comparable."""
    return tuple("NaN" if isinstance(v, Decimal) and v.is_nan() else v for v in row)


async def test_binary_types_round_trip_equal_direct(small: RunningProxy, direct_dsn: str,
                                                    tables: None) -> None:
    via = await asyncpg.connect(small.url())
    ref = await asyncpg.connect(direct_url(direct_dsn))
    try:
        await via.execute(f"TRUNCATE {T}_types RESTART IDENTITY")
        placeholders = ", ".join(f"${i}" for i in range(1, 15))
        insert = f"INSERT INTO {T}_types ({COLS}) VALUES ({placeholders}) RETURNING id"
        ids = [await via.fetchval(insert, *row) for row in VALUES]
        assert ids == [1, 2, 3]
        q = f"SELECT {COLS} FROM {T}_types ORDER BY id"
        got = [norm(r) for r in await via.fetch(q)]
        want = [norm(r) for r in await ref.fetch(q)]
        assert got == want
        assert got == [norm(v) for v in VALUES]
        # literal values computed by the server, decoded in binary
        expr = ("SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 'x'::char(3), 'NaN'::float8,"
                " '2024-01-01 00:00'::timestamp, '04:05:06'::time, '{1,2}'::int2[],"
                " point(1, 2), '192.168.0.1/32'::inet, int4range(1, 5), 'a'::name,"
                " 42::oid, 'abc'::bytea, '{\"a\": 1}'::json, B'101'::bit(3),"
                " '1 day 2 hours'::interval, ARRAY['2024-01-01'::date], money(12.5)")
        got_row = await via.fetchrow(expr)
        want_row = await ref.fetchrow(expr)
        assert got_row is not None and want_row is not None
        assert [str(v) for v in got_row] == [str(v) for v in want_row]
    finally:
        await via.close()
        await ref.close()


async def test_prepared_statements(small: RunningProxy, tables: None) -> None:
    conn = await asyncpg.connect(small.url())
    try:
        stmt = await conn.prepare(f"SELECT id, name FROM {T}_items WHERE qty = $1 AND id < $2 "
                                  "ORDER BY id")
        assert [a.name for a in stmt.get_attributes()] == ["id", "name"]
        assert [t.name for t in stmt.get_parameters()] == ["int4", "int4"]
        for qty in range(17):
            rows = await stmt.fetch(qty, 200)
            assert [r["id"] for r in rows] == [i for i in range(1, 200) if i % 17 == qty]
        assert await stmt.fetchval(3, 10) == 3
        assert await stmt.fetchrow(0, 2) is None
        # a cursor over a prepared statement (needs a transaction)
        async with conn.transaction():
            got = [r["id"] async for r in stmt.cursor(5, 1000, prefetch=7)]
            assert got == [i for i in range(1, 1000) if i % 17 == 5]
            cur = await stmt.cursor(1, 1000)
            assert [r["id"] for r in await cur.fetch(3)] == [1, 18, 35]
            await cur.forward(2)
            assert (await cur.fetchrow())["id"] == 1 + 17 * 5  # type: ignore[index]
        # explain through a prepared statement
        plan = await stmt.explain(1, 5)
        assert plan[0]["Plan"]["Node Type"]
    finally:
        await conn.close()


async def test_statement_cache_over_small_pool(small: RunningProxy, tables: None) -> None:
    """8 connections share 2 server connections; each uses asyncpg's statement cache."""
    conns = [await asyncpg.connect(small.url()) for _ in range(8)]
    queries = [
        (f"SELECT name FROM {T}_items WHERE id = $1", lambda i: f"item {i}"),
        (f"SELECT count(*) FROM {T}_items WHERE id <= $1", lambda i: i),
        ("SELECT $1::int * 3", lambda i: i * 3),
        (f"SELECT sum(qty) FROM {T}_items WHERE id BETWEEN $1 AND $1 + 16", lambda i: 136),
    ]

    async def worker(n: int, conn: asyncpg.Connection) -> int:
        done = 0
        for rnd in range(25):
            i = 1 + (n * 37 + rnd * 11) % 900
            q, expect = queries[(n + rnd) % len(queries)]
            assert await conn.fetchval(q, i) == expect(i)
            if rnd % 5 == 0:
                async with conn.transaction():
                    assert await conn.fetchval(queries[0][0], i) == f"item {i}"
                    assert await conn.fetchval(queries[2][0], i) == i * 3
            done += 1
        return done

    try:
        assert await asyncio.gather(*(worker(n, c) for n, c in enumerate(conns))) == [25] * 8
    finally:
        for c in conns:
            await c.close()


async def test_statement_cache_disabled(small: RunningProxy, tables: None) -> None:
    """statement_cache_size=0: asyncpg uses the unnamed statement, re-parsed per query."""
    conns = [await asyncpg.connect(small.url(), statement_cache_size=0) for _ in range(4)]

    async def worker(n: int, conn: asyncpg.Connection) -> None:
        for rnd in range(20):
            i = 1 + (n * 13 + rnd * 7) % 1000
            assert await conn.fetchval(f"SELECT name FROM {T}_items WHERE id = $1", i) \
                == f"item {i}"
            assert await conn.fetchrow("SELECT $1::text || $2::text AS s", "a", str(n)) \
                == ("a" + str(n),)
            rows = await conn.fetch(f"SELECT id FROM {T}_items WHERE id <= $1 ORDER BY id", 3)
            assert [r[0] for r in rows] == [1, 2, 3]

    try:
        await asyncio.gather(*(worker(n, c) for n, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()


async def test_executemany_and_transactions(small: RunningProxy, tables: None) -> None:
    conn = await asyncpg.connect(small.url())
    other = await asyncpg.connect(small.url())
    try:
        await conn.execute(f"DELETE FROM {T}_tx")
        await conn.executemany(f"INSERT INTO {T}_tx VALUES ($1, $2)",
                               [(i, f"w{i}") for i in range(500)])
        assert await other.fetchval(f"SELECT count(*) FROM {T}_tx") == 500
        # executemany is atomic: a failing row rolls back the whole batch
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany(f"INSERT INTO {T}_tx VALUES ($1, $2)",
                                   [(1000, "a"), (1001, "b"), (1000, "dup")])
        assert await other.fetchval(f"SELECT count(*) FROM {T}_tx WHERE id >= 1000") == 0
        # transactions, nested (savepoints), rollback
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {T}_tx VALUES (2000, 'tx')")
            assert await other.fetchval(f"SELECT count(*) FROM {T}_tx WHERE id = 2000") == 0
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {T}_tx VALUES (2001, 'nested')")
                    raise RuntimeError("undo nested")
            except RuntimeError:
                pass
            await conn.execute(f"INSERT INTO {T}_tx VALUES (2002, 'tx')")
        assert await other.fetch(f"SELECT id FROM {T}_tx WHERE id >= 2000 ORDER BY id") \
            == [(2000,), (2002,)]
        tr = conn.transaction(isolation="serializable", readonly=True)
        await tr.start()
        assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute(f"INSERT INTO {T}_tx VALUES (3000, 'ro')")
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await conn.fetchval("SELECT 1")
        await tr.rollback()
        assert await conn.fetchval("SHOW transaction_isolation") == "read committed"
        # an error outside a transaction leaves the connection usable
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1 / $1::int", 0)
        assert await conn.fetchval("SELECT 1 / $1::int", 1) == 1
    finally:
        await conn.close()
        await other.close()


async def test_copy_records_and_copy_from_query(small: RunningProxy, direct_dsn: str,
                                                tables: None) -> None:
    conn = await asyncpg.connect(small.url())
    ref = await asyncpg.connect(direct_url(direct_dsn))
    try:
        await conn.execute(f"TRUNCATE {T}_copy")
        t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
        records = [(i, f"name {i}\twith tab", Decimal(i) / 7, t0 + dt.timedelta(seconds=i))
                   for i in range(5000)]
        status = await conn.copy_records_to_table(f"{T}_copy", records=records,
                                                  columns=["id", "name", "amount", "at"])
        assert status == "COPY 5000"
        q = f"SELECT id, name, amount, at FROM {T}_copy ORDER BY id"
        got = [tuple(r) for r in await conn.fetch(q)]
        assert got == records
        assert got == [tuple(r) for r in await ref.fetch(q)]
        # copy_from_query: text and binary, through the proxy and direct, same bytes
        for fmt in ("text", "binary", "csv"):
            got, want = io.BytesIO(), io.BytesIO()
            q = f"SELECT * FROM {T}_copy WHERE id % $1 = 0 ORDER BY id"
            s1 = await conn.copy_from_query(q, 3, output=got, format=fmt)
            s2 = await ref.copy_from_query(q, 3, output=want, format=fmt)
            assert s1 == s2 == "COPY 1667"
            assert got.getvalue() == want.getvalue()
            assert len(got.getvalue()) > 50_000
        # copy_to_table from a file-like source, and copy_from_table
        buf = io.BytesIO(b"".join(f"{9000 + i}\tfile {i}\t{i}.5\t2024-01-01 00:00:00+00\n"
                                  .encode() for i in range(100)))
        assert await conn.copy_to_table(f"{T}_copy", source=buf) == "COPY 100"
        out = io.BytesIO()
        assert await conn.copy_from_table(f"{T}_copy", output=out, columns=["id"],
                                          format="csv") == "COPY 5100"
        assert out.getvalue().count(b"\n") == 5100
        # a copy that fails mid-stream (asyncpg sends CopyFail when a record does not
        # encode) leaves the connection usable
        with pytest.raises(TypeError):
            await conn.copy_records_to_table(f"{T}_copy", records=[("not an int",)],
                                             columns=["id"])
        assert await conn.fetchval(f"SELECT count(*) FROM {T}_copy") == 5100
    finally:
        await conn.close()
        await ref.close()


async def test_asyncpg_pool_through_proxy(small: RunningProxy, tables: None) -> None:
    """asyncpg's own pool on top: its reset query (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL) runs between uses and must not disturb anything."""
    pool = await asyncpg.create_pool(small.url(), min_size=2, max_size=6)
    assert pool is not None
    try:
        async def job(i: int) -> str:
            async with pool.acquire() as conn:
                await conn.execute("SET statement_timeout TO 5000")
                async with conn.transaction():
                    return await conn.fetchval(f"SELECT name FROM {T}_items WHERE id = $1",
                                               i)

        assert await asyncio.gather(*(job(i) for i in range(1, 61))) \
            == [f"item {i}" for i in range(1, 61)]
        async with pool.acquire() as conn:
            # RESET ALL ran when the connection went back: the setting is gone
            assert await conn.fetchval("SHOW statement_timeout") == "0"
    finally:
        await pool.close()
