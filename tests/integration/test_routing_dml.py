"""Writes through shardwire reach the right shards: multi-row INSERTs split per shard (with
RETURNING), UPDATE/DELETE by key, an UPDATE that would move a row between shards refused
(0A000, row untouched), reference tables written on every shard and read from one, list and
range tables placed by their rules, and co-located hash tables sharing a shard per key.

Every check reads the shards directly. Each test uses keys of its own (chosen by Postgres'
own hash partitioning, see test_routing_helpers), so the tests do not depend on each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    assert_on_every_shard,
    direct,
    owner,
    pg_buckets,
    pick_keys,
    routed_proxy,
    rows_by_shard,
    via,
)

USERS = "rt_dml_users"
ORDERS = "rt_dml_orders"
COUNTRIES = "rt_dml_countries"
EVENTS = "rt_dml_events"
LOGS = "rt_dml_logs"
TABLES = {
    USERS: {"shard_key": "id"},
    ORDERS: {"shard_key": "user_id"},
    COUNTRIES: {"reference": True},
    EVENTS: {"shard_key": "region", "strategy": "list", "values": {"eu": "s0", "us": "s1"},
             "default": "s0"},
    LOGS: {"shard_key": "created_at", "strategy": "range",
           "ranges": [{"to": "2025-01-01", "shard": "s0"},
                      {"from": "2025-01-01", "shard": "s1"}]},
}
DDL = [
    f"CREATE TABLE {USERS} (id bigint PRIMARY KEY, name text NOT NULL)",
    f"CREATE TABLE {ORDERS} (order_id int NOT NULL, user_id bigint NOT NULL, amount int)",
    f"CREATE TABLE {COUNTRIES} (code text PRIMARY KEY, name text NOT NULL)",
    f"CREATE TABLE {EVENTS} (id int PRIMARY KEY, region text, what text)",
    f"CREATE TABLE {LOGS} (id int PRIMARY KEY, created_at timestamp, msg text)",
]


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory,
           shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    with routed_proxy(proxy_factory, TABLES) as running:
        with via(running) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}")
            for stmt in DDL:
                conn.execute(stmt)
        yield running


@pytest.fixture(scope="module")
def s0(shard_clusters: list[LocalPostgres]) -> Iterator[psycopg.Connection[Any]]:
    with direct(shard_clusters[0]) as conn:
        yield conn


def keys(s0: psycopg.Connection[Any], start: int, n: int = 3) -> tuple[list[int], list[int]]:
    """`n` keys owned by s0 and `n` owned by s1, all >= start."""
    return pick_keys(s0, "s0", n, start), pick_keys(s0, "s1", n, start)


def users_on(clusters: list[LocalPostgres], ids: list[int]) -> dict[str, dict[int, str]]:
    assert_on_every_shard(clusters, USERS)
    found = rows_by_shard(clusters, f"SELECT id, name FROM {USERS} WHERE id = ANY(%s)", [ids])
    return {shard: dict(rows) for shard, rows in found.items()}


def _literal(v: Any) -> str:
    return str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_multirow_insert_is_split_and_returns_every_row(
        routed: RunningProxy, s0: psycopg.Connection[Any],
        shard_clusters: list[LocalPostgres], protocol: str) -> None:
    on0, on1 = keys(s0, 1000 if protocol == "extended" else 2000, n=4)
    ids = [k for pair in zip(on0, on1, strict=True) for k in pair]  # interleaved shards
    rows = [(k, f"user {k} it's") for k in ids]
    with via(routed) as conn, conn.cursor() as cur:
        if protocol == "extended":
            values = ", ".join(["(%s, %s)"] * len(rows))
            cur.execute(f"INSERT INTO {USERS} (id, name) VALUES {values} RETURNING id, name",
                        [v for row in rows for v in row])
        else:
            values = ", ".join(f"({k}, {_literal(n)})" for k, n in rows)
            cur.execute(f"INSERT INTO {USERS} (id, name) VALUES {values} RETURNING id, name")
        assert cur.rowcount == len(rows)
        returned = cur.fetchall()
    assert sorted(returned) == sorted(rows)
    found = users_on(shard_clusters, ids)
    assert found == {"s0": {k: n for k, n in rows if k in on0},
                     "s1": {k: n for k, n in rows if k in on1}}


async def test_multirow_insert_asyncpg_binary_params(
        routed: RunningProxy, s0: psycopg.Connection[Any],
        shard_clusters: list[LocalPostgres]) -> None:
    on0, on1 = keys(s0, 3000)
    ids = [on1[0], on0[0], on1[1], on0[1], on0[2], on1[2]]
    conn = await asyncpg.connect(routed.url())
    try:
        values = ", ".join(f"(${2 * i + 1}, ${2 * i + 2})" for i in range(len(ids)))
        args = [v for k in ids for v in (k, f"async {k}")]
        returned = await conn.fetch(
            f"INSERT INTO {USERS} (id, name) VALUES {values} RETURNING id, name", *args)
        # RETURNING without the key column: still one row back per inserted row
        more = [k + 1_000_000 for k in ids]
        tags = await conn.fetch(
            f"INSERT INTO {USERS} (id, name) VALUES ($1, 'm'), ($2, 'm'), ($3, 'm'), "
            "($4, 'm'), ($5, 'm'), ($6, 'm') RETURNING name", *more)
    finally:
        await conn.close()
    assert sorted(tuple(r) for r in returned) == sorted((k, f"async {k}") for k in ids)
    assert [tuple(r) for r in tags] == [("m",)] * 6
    found = users_on(shard_clusters, ids)
    assert found == {"s0": {k: f"async {k}" for k in on0}, "s1": {k: f"async {k}" for k in on1}}
    owners = {k: owner(b) for k, b in pg_buckets(s0, more, "bigint").items()}
    found_more = users_on(shard_clusters, more)
    assert {s: set(rows) for s, rows in found_more.items()} \
        == {s: {k for k in more if owners[k] == s} for s in ("s0", "s1")}


def test_update_and_delete_by_key(routed: RunningProxy, s0: psycopg.Connection[Any],
                                  shard_clusters: list[LocalPostgres]) -> None:
    on0, on1 = keys(s0, 4000, n=2)
    with via(routed) as conn:
        for k in on0 + on1:
            conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (%s, 'before')", (k,))
        cur = conn.execute(f"UPDATE {USERS} SET name = 'after' WHERE id = %s", (on1[0],))
        assert cur.rowcount == 1
        cur = conn.execute(f"UPDATE {USERS} SET name = 'lit' WHERE id = {on0[0]}")  # simple
        assert cur.rowcount == 1
        cur = conn.execute(f"DELETE FROM {USERS} WHERE id = %s", (on0[1],))
        assert cur.rowcount == 1
        cur = conn.execute(f"DELETE FROM {USERS} WHERE id = {on1[1]} RETURNING name")
        assert cur.fetchall() == [("before",)]
        got = conn.execute(f"SELECT name FROM {USERS} WHERE id = %s", (on1[0],)).fetchall()
        assert got == [("after",)]
    assert users_on(shard_clusters, on0 + on1) == {"s0": {on0[0]: "lit"},
                                                   "s1": {on1[0]: "after"}}


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_update_moving_a_row_to_another_shard_is_refused(
        routed: RunningProxy, s0: psycopg.Connection[Any],
        shard_clusters: list[LocalPostgres], protocol: str) -> None:
    on0, on1 = keys(s0, 5000 if protocol == "extended" else 6000, n=1)
    src, dst = on0[0], on1[0]
    with via(routed) as conn:
        conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (%s, 'stay')", (src,))
        with pytest.raises(psycopg.Error) as info:
            if protocol == "extended":
                conn.execute(f"UPDATE {USERS} SET id = %s WHERE id = %s", (dst, src))
            else:
                conn.execute(f"UPDATE {USERS} SET id = {dst}, name = 'moved' WHERE id = {src}")
        assert info.value.sqlstate == "0A000", info.value
        # the session goes on
        assert conn.execute(f"SELECT name FROM {USERS} WHERE id = %s", (src,)).fetchall() \
            == [("stay",)]
    assert users_on(shard_clusters, [src, dst]) == {"s0": {src: "stay"}, "s1": {}}


def test_update_changing_the_key_within_its_shard_is_allowed(
        routed: RunningProxy, s0: psycopg.Connection[Any],
        shard_clusters: list[LocalPostgres]) -> None:
    a, b = pick_keys(s0, "s1", 2, 7000)
    with via(routed) as conn:
        conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (%s, 'k')", (a,))
        cur = conn.execute(f"UPDATE {USERS} SET id = %s WHERE id = %s", (b, a))
        assert cur.rowcount == 1
    assert users_on(shard_clusters, [a, b]) == {"s0": {}, "s1": {b: "k"}}


def test_reference_table_written_everywhere_read_once(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    mine = f"SELECT code, name FROM {COUNTRIES} WHERE starts_with(code, 'r') ORDER BY code"
    with via(routed) as conn:
        conn.execute(f"INSERT INTO {COUNTRIES} (code, name) VALUES (%s, %s), (%s, %s)",
                     ("rde", "Germany", "rfr", "France"))
        conn.execute(f"INSERT INTO {COUNTRIES} (code, name) VALUES ('rjp', 'Japan')")
        want = [("rde", "Germany"), ("rfr", "France"), ("rjp", "Japan")]
        assert_on_every_shard(shard_clusters, COUNTRIES)
        assert rows_by_shard(shard_clusters, mine) == {"s0": want, "s1": want}
        # reads come from one shard: every row once, and ORDER BY / count need no merge
        assert conn.execute(mine).fetchall() == want
        assert conn.execute(f"SELECT count(*) FROM {COUNTRIES} WHERE starts_with(code, 'r')")\
            .fetchone() == (3,)
        conn.execute(f"UPDATE {COUNTRIES} SET name = 'Nippon' WHERE code = %s", ("rjp",))
        conn.execute(f"DELETE FROM {COUNTRIES} WHERE code = 'rfr'")
        want = [("rde", "Germany"), ("rjp", "Nippon")]
        assert conn.execute(mine).fetchall() == want
    assert rows_by_shard(shard_clusters, mine) == {"s0": want, "s1": want}


def test_reference_write_row_counts_are_those_of_one_table(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """A reference table is one logical table: a write reports the rows it changed in it
    (what Postgres would say), not that count times the number of shards. ORMs compare
    these counts with what they expect (optimistic locking)."""
    with via(routed) as conn:
        cur = conn.execute(f"INSERT INTO {COUNTRIES} (code, name) VALUES (%s, %s), (%s, %s)",
                           ("cit", "Italy", "ces", "Spain"))
        assert cur.rowcount == 2
        cur = conn.execute(f"UPDATE {COUNTRIES} SET name = upper(name) "
                           "WHERE code IN ('cit', 'ces')")
        assert cur.rowcount == 2
        cur = conn.execute(f"DELETE FROM {COUNTRIES} WHERE code = %s", ("cit",))
        assert cur.rowcount == 1
    want = [("ces", "SPAIN")]
    assert_on_every_shard(shard_clusters, COUNTRIES)
    query = f"SELECT code, name FROM {COUNTRIES} WHERE starts_with(code, 'c')"
    assert rows_by_shard(shard_clusters, query) == {"s0": want, "s1": want}


def test_list_table_rows_follow_their_values(routed: RunningProxy,
                                             shard_clusters: list[LocalPostgres]) -> None:
    rows = [(1, "eu"), (2, "us"), (3, "apac"), (4, None), (5, "us"), (6, "eu")]
    with via(routed) as conn:
        conn.execute(f"INSERT INTO {EVENTS} (id, region) VALUES (1, 'eu')")  # simple
        conn.execute(f"INSERT INTO {EVENTS} (id, region) VALUES (%s, %s)", (2, "us"))
        conn.execute(f"INSERT INTO {EVENTS} (id, region) VALUES (%s, %s), (%s, %s)",
                     (3, "apac", 4, None))
        conn.execute(f"INSERT INTO {EVENTS} (id, region) VALUES (5, 'us'), (6, 'eu')")
        got = conn.execute(f"SELECT id FROM {EVENTS} WHERE region = %s", ("us",)).fetchall()
        assert sorted(got) == [(2,), (5,)]
    assert_on_every_shard(shard_clusters, EVENTS)
    found = {s: sorted(r) for s, r in
             rows_by_shard(shard_clusters, f"SELECT id, region FROM {EVENTS}").items()}
    # listed values to their shard; unlisted values and NULL to the table's default (s0)
    assert found == {"s0": [r for r in rows if r[1] != "us"],
                     "s1": [r for r in rows if r[1] == "us"]}


def test_range_table_rows_follow_their_ranges(routed: RunningProxy,
                                              shard_clusters: list[LocalPostgres]) -> None:
    rows = [(1, dt.datetime(2024, 12, 31, 23, 59, 59)), (2, dt.datetime(2025, 1, 1)),
            (3, dt.datetime(1970, 1, 1)), (4, dt.datetime(2030, 5, 5, 12, 0)),
            (5, dt.datetime(2024, 6, 1)), (6, dt.datetime(2025, 1, 1, 0, 0, 1))]
    with via(routed) as conn:
        for i, ts in rows[:3]:  # typed (timestamp) parameters
            conn.execute(f"INSERT INTO {LOGS} (id, created_at) VALUES (%s, %s)", (i, ts))
        values = ", ".join(f"({i}, '{ts.isoformat(sep=' ')}')" for i, ts in rows[3:])
        conn.execute(f"INSERT INTO {LOGS} (id, created_at) VALUES {values}")  # literals, split
        got = conn.execute(f"SELECT id FROM {LOGS} WHERE created_at = %s",
                           (dt.datetime(2025, 1, 1),)).fetchall()
        assert got == [(2,)]
    assert_on_every_shard(shard_clusters, LOGS)
    found = {s: sorted(r) for s, r in
             rows_by_shard(shard_clusters, f"SELECT id, created_at FROM {LOGS}").items()}
    cut = dt.datetime(2025, 1, 1)  # [-inf, 2025-01-01) -> s0, [2025-01-01, +inf) -> s1
    assert found == {"s0": sorted(r for r in rows if r[1] < cut),
                     "s1": sorted(r for r in rows if r[1] >= cut)}


def test_colocated_tables_keep_a_key_on_one_shard(routed: RunningProxy,
                                                  s0: psycopg.Connection[Any],
                                                  shard_clusters: list[LocalPostgres]) -> None:
    on0, on1 = keys(s0, 8000, n=3)
    with via(routed) as conn:
        for n, k in enumerate(on0 + on1):
            conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (%s, %s)", (k, f"c{k}"))
            conn.execute(f"INSERT INTO {ORDERS} (order_id, user_id, amount) "
                         f"VALUES (%s, %s, %s), (%s, %s, %s)", (2 * n, k, 10, 2 * n + 1, k, 20))
        for k in on0 + on1:  # a join on the shard keys runs on the key's shard
            got = conn.execute(
                f"SELECT u.name, sum(o.amount) FROM {USERS} u JOIN {ORDERS} o "
                f"ON o.user_id = u.id WHERE u.id = %s GROUP BY u.name", (k,)).fetchall()
            assert got == [(f"c{k}", 30)]
    assert_on_every_shard(shard_clusters, ORDERS)
    found = rows_by_shard(shard_clusters, f"SELECT user_id, count(*) FROM {ORDERS} "
                                          "WHERE user_id = ANY(%s) GROUP BY 1", [on0 + on1])
    assert {s: dict(r) for s, r in found.items()} \
        == {"s0": dict.fromkeys(on0, 2), "s1": dict.fromkeys(on1, 2)}


def test_write_errors_come_back_and_the_session_goes_on(
        routed: RunningProxy, s0: psycopg.Connection[Any]) -> None:
    """A constraint violation on s1 reaches the client with its SQLSTATE."""
    (k,) = pick_keys(s0, "s1", 1, 9000)
    with via(routed) as conn:
        conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (%s, 'one')", (k,))
        with pytest.raises(errors.UniqueViolation):
            conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (%s, 'two')", (k,))
        assert conn.execute(f"SELECT name FROM {USERS} WHERE id = %s", (k,)).fetchall() \
            == [("one",)]
