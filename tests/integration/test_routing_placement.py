"""Rows written through shardwire by several clients land on the shard owning their key.

~280 bigint keys (negative, 0, the int4/int8 limits, random magnitudes) and ~100 text keys
(empty, unicode, quotes, backslashes, 300 characters) are inserted through one routed proxy
by eight writers: psycopg with text parameters (one statement at a time and executemany),
psycopg with binary parameters, psycopg with literals (simple Query, one row and one
multi-row INSERT), psql, and asyncpg (binary parameters; execute and executemany). Then the
shards are read directly: every row must sit on the shard that owns the bucket PostgreSQL's
own ``PARTITION BY HASH`` gives its key (see test_routing_helpers), on no other shard, and
unchanged. Finally every row is read back through the proxy by key, with each client.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    assert_hash_placement,
    direct,
    owner,
    pg_buckets,
    routed_proxy,
    rows_by_shard,
    run_psql,
    via,
)

T_INT = "rt_place_ints"
T_TEXT = "rt_place_texts"
TABLES = {T_INT: {"shard_key": "id"}, T_TEXT: {"shard_key": "code"}}
# table -> (key column, key type)
KEYS = {T_INT: ("id", "bigint"), T_TEXT: ("code", "text")}

WRITERS = ("psycopg-execute", "psycopg-executemany", "psycopg-binary", "psycopg-literals",
           "simple-multirow", "psql", "asyncpg-execute", "asyncpg-executemany")


def _int_keys() -> list[int]:
    rng = random.Random("routing-placement-int")
    keys = {0, 1, -1, 2, -2, 42, -42, 2**63 - 1, -(2**63), 2**63 - 2, -(2**63) + 1,
            2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**32, -(2**32), 2**53 + 1,
            -(2**40) - 7, 10**18, -(10**18), 32767, -32768, 65536}
    while len(keys) < 8 * 35:
        width = rng.randint(1, 63)
        keys.add(rng.randint(-(1 << width), (1 << width) - 1))
    ordered = sorted(keys)
    rng.shuffle(ordered)
    return ordered


_POOL = "abcxyzABC ,'\"\\%_-éüßñΩЖ日本語한국😀🎉"


def _text_keys() -> list[str]:
    # Never a decimal integer or a UUID: an untyped parameter that looks like one hashes as
    # one (ROUTING.md), and psycopg sends str parameters untyped.
    rng = random.Random("routing-placement-text")
    keys = {"", " ", "é", "日本語", "🎉", "ключ", "O'Reilly", 'quote"d', "back\\slash",
            "tab\there", "line\nbreak", "NULL", "a" * 300, "Ünïcødé ☃", "x-1", "-", "ß",
            "null", "Ω", "%_"}
    while len(keys) < 8 * 12:
        keys.add("k" + "".join(rng.choice(_POOL) for _ in range(rng.randint(0, 24))))
    ordered = sorted(keys)
    rng.shuffle(ordered)
    return ordered


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)  # -9223372036854775808 included: Postgres folds it to an int8
    return "'" + str(value).replace("'", "''") + "'"


def _insert(table: str, marker: str) -> str:
    key = KEYS[table][0]
    return f"INSERT INTO {table} ({key}, src) VALUES ({marker}, {marker})"


def _write_psycopg(proxy: RunningProxy, table: str, writer: str, keys: list[Any]) -> None:
    with via(proxy) as conn:
        if writer == "psycopg-execute":
            with conn.cursor() as cur:
                for k in keys:
                    cur.execute(_insert(table, "%s"), (k, writer))
        elif writer == "psycopg-executemany":
            with conn.cursor() as cur:
                cur.executemany(_insert(table, "%s"), [(k, writer) for k in keys])
        elif writer == "psycopg-binary":
            with conn.cursor() as cur:
                for k in keys:
                    cur.execute(_insert(table, "%b"), (k, writer))
        elif writer == "psycopg-literals":
            # no parameters: psycopg sends a simple Query
            key = KEYS[table][0]
            for k in keys:
                conn.execute(f"INSERT INTO {table} ({key}, src) "
                             f"VALUES ({_literal(k)}, {_literal(writer)})")
        elif writer == "simple-multirow":
            key = KEYS[table][0]
            values = ", ".join(f"({_literal(k)}, {_literal(writer)})" for k in keys)
            res = conn.pgconn.exec_(
                f"INSERT INTO {table} ({key}, src) VALUES {values}".encode())
            assert res.status == psycopg.pq.ExecStatus.COMMAND_OK, res.error_message
            assert res.command_status == f"INSERT 0 {len(keys)}".encode()
        else:
            raise AssertionError(writer)


def _write_psql(proxy: RunningProxy, table: str, keys: list[Any]) -> None:
    key = KEYS[table][0]
    script = "".join(f"INSERT INTO {table} ({key}, src) VALUES ({_literal(k)}, 'psql');\n"
                     for k in keys)
    run_psql(proxy, "-f", "-", stdin=script)


async def _write_asyncpg(proxy: RunningProxy, table: str, writer: str, keys: list[Any]) -> None:
    conn = await asyncpg.connect(proxy.url())
    try:
        query = f"INSERT INTO {table} ({KEYS[table][0]}, src) VALUES ($1, $2)"
        if writer == "asyncpg-execute":
            for k in keys:
                await conn.execute(query, k, writer)
        else:
            await conn.executemany(query, [(k, writer) for k in keys])
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with routed_proxy(proxy_factory, TABLES) as running:
        yield running


class Loaded(NamedTuple):
    written: dict[str, dict[Any, str]]  # table -> {key: writer} of every row sent
    failed: dict[tuple[str, str], str]  # (table, writer) -> the error it got

    def ok(self, table: str) -> dict[Any, str]:
        """The rows of `table` whose writer succeeded."""
        return {k: w for k, w in self.written[table].items() if (table, w) not in self.failed}

    def maybe(self, table: str) -> set[Any]:
        """Keys whose writer failed: they may or may not have been stored."""
        return set(self.written[table]) - set(self.ok(table))


@pytest.fixture(scope="module")
async def loaded(routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> Loaded:
    """Every writer writes its share of each table through the proxy; a writer that fails
    is recorded (test_every_writer_succeeds reports it) and does not stop the others."""
    with via(routed) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {T_INT}, {T_TEXT}")
        conn.execute(f"CREATE TABLE {T_INT} (id bigint PRIMARY KEY, src text NOT NULL)")
        conn.execute(f"CREATE TABLE {T_TEXT} (code text PRIMARY KEY, src text NOT NULL)")
    written: dict[str, dict[Any, str]] = {}
    failed: dict[tuple[str, str], str] = {}
    for table, keys in ((T_INT, _int_keys()), (T_TEXT, _text_keys())):
        share = len(keys) // len(WRITERS)
        chunks = {w: keys[i * share:(i + 1) * share] for i, w in enumerate(WRITERS)}
        # The test data must make every writer address both shards (decided by Postgres).
        with direct(shard_clusters[0]) as conn:
            buckets = pg_buckets(conn, keys, KEYS[table][1])
        for writer, chunk in chunks.items():
            assert {owner(buckets[k]) for k in chunk} == {"s0", "s1"}, writer
        for writer, chunk in chunks.items():
            try:
                if writer == "psql":
                    _write_psql(routed, table, chunk)
                elif writer.startswith("asyncpg"):
                    await _write_asyncpg(routed, table, writer, chunk)
                else:
                    _write_psycopg(routed, table, writer, chunk)
            except (AssertionError, psycopg.Error, asyncpg.PostgresError) as exc:
                failed[(table, writer)] = f"{type(exc).__name__}: {exc}"
        written[table] = {k: w for w, chunk in chunks.items() for k in chunk}
    return Loaded(written, failed)


def test_every_writer_succeeds(loaded: Loaded) -> None:
    assert not loaded.failed, "writers that failed:\n" + "\n".join(
        f"  {table} / {writer}: {error}" for (table, writer), error in loaded.failed.items())


@pytest.mark.parametrize("table", [T_INT, T_TEXT])
def test_every_row_is_on_the_shard_owning_its_bucket(
        loaded: Loaded, shard_clusters: list[LocalPostgres], table: str) -> None:
    """(Rows of a writer that failed are not required, but those stored must be placed
    right too.)"""
    key, sql_type = KEYS[table]
    written = loaded.ok(table)
    found = assert_hash_placement(shard_clusters, table, key, sql_type, written,
                                  label=loaded.written[table], maybe=loaded.maybe(table))
    assert all(found.values()), f"a shard holds no row of {table}: {found}"
    # ... and the rows arrived intact (the writer column too)
    stored = rows_by_shard(shard_clusters, f"SELECT {key}, src FROM {table}")
    got = {r for rows in stored.values() for r in rows}
    assert sorted((r for r in got if r[0] in written), key=repr) \
        == sorted(written.items(), key=repr)
    assert {r for r in got if r[0] not in written} <= set(loaded.written[table].items())


@pytest.mark.parametrize("table", [T_INT, T_TEXT])
def test_each_writer_reached_both_shards(loaded: Loaded, shard_clusters: list[LocalPostgres],
                                         table: str) -> None:
    """Per writer, the rows stored on each shard are exactly the ones its buckets say."""
    key, sql_type = KEYS[table]
    written = loaded.written[table]
    with direct(shard_clusters[0]) as conn:
        buckets = pg_buckets(conn, written, sql_type)
    stored = rows_by_shard(shard_clusters, f"SELECT {key}, src FROM {table}")
    for shard, rows in stored.items():
        got: dict[str, set[Any]] = {w: set() for w in WRITERS}
        for k, src in rows:
            got[src].add(k)
        want = {w: {k for k, src in written.items()
                    if src == w and owner(buckets[k]) == shard} for w in WRITERS}
        wrong = {w: (len(got[w]), len(want[w])) for w in WRITERS
                 if got[w] != want[w] and (table, w) not in loaded.failed}
        assert wrong == {}, f"{shard}: writer -> (rows found, rows expected): {wrong}"


@pytest.mark.parametrize("mode", ["text", "binary", "literal"])
def test_point_reads_psycopg_find_every_row(loaded: Loaded, routed: RunningProxy,
                                            mode: str) -> None:
    wrong = []
    with via(routed) as conn:
        cur = conn.cursor(binary=mode == "binary")
        for table in loaded.written:
            written = loaded.ok(table)
            key = KEYS[table][0]
            for k, src in written.items():
                if mode == "literal":  # simple Query
                    rows = cur.execute(
                        f"SELECT {key}, src FROM {table} WHERE {key} = {_literal(k)}").fetchall()
                else:
                    marker = "%b" if mode == "binary" else "%s"
                    rows = cur.execute(f"SELECT {key}, src FROM {table} WHERE {key} = {marker}",
                                       (k,)).fetchall()
                if rows != [(k, src)]:
                    wrong.append((table, k, rows))
    assert wrong == [], f"{len(wrong)} point reads wrong, e.g. {wrong[:5]}"


async def test_point_reads_asyncpg_find_every_row(loaded: Loaded,
                                                  routed: RunningProxy) -> None:
    wrong = []
    conn = await asyncpg.connect(routed.url())
    try:
        for table in loaded.written:
            written = loaded.ok(table)
            key = KEYS[table][0]
            stmt = await conn.prepare(f"SELECT {key}, src FROM {table} WHERE {key} = $1")
            for k, src in written.items():
                rows = [tuple(r) for r in await stmt.fetch(k)]
                if rows != [(k, src)]:
                    wrong.append((table, k, rows))
            # unprepared (asyncpg's statement cache) and IN-list forms too
            sample = list(written)[:20]
            rows = await conn.fetch(f"SELECT {key}, src FROM {table} WHERE {key} = ANY($1)",
                                    sample)
            assert sorted((tuple(r) for r in rows), key=repr) \
                == sorted(((k, written[k]) for k in sample), key=repr)
    finally:
        await conn.close()
    assert wrong == [], f"{len(wrong)} point reads wrong, e.g. {wrong[:5]}"

