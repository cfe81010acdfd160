"""Routing hints: ``/* shard: s1 */`` and ``/* shard_key: 42 */`` comments, and the session
settings ``SET shardwire.shard`` / ``SET shardwire.shard_key`` (RESET, SHOW), which shardwire
consumes (Postgres never sees them). An unknown shard is SQLSTATE 22023.

Where a statement ran is proven by where its row landed: NOTES is an unlisted table that
exists on both shards (created straight on each), so without a hint it is the default
shard's (s0) and with one the row appears on the hinted shard only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    by_name,
    direct,
    drop_everywhere,
    pick_keys,
    routed_proxy,
    rows_by_shard,
    run_everywhere,
    table_exists,
    via,
)

NOTES = "rt_hint_notes"  # unlisted, on both shards
USERS = "rt_hint_users"  # hash-sharded on id
ONLY_S1 = "rt_hint_only_s1"
TABLES = {USERS: {"shard_key": "id"}}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory,
           shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    drop_everywhere(shard_clusters, NOTES, USERS, ONLY_S1)
    run_everywhere(shard_clusters, f"CREATE TABLE {NOTES} (id int PRIMARY KEY, how text)",
                   f"CREATE TABLE {USERS} (id bigint PRIMARY KEY, name text)")
    with routed_proxy(proxy_factory, TABLES) as running:
        yield running
    drop_everywhere(shard_clusters, NOTES, USERS, ONLY_S1)


@pytest.fixture(scope="module")
def key_on(shard_clusters: list[LocalPostgres]) -> dict[str, int]:
    """A hash key owned by each shard (decided by Postgres)."""
    with direct(shard_clusters[0]) as conn:
        return {"s0": pick_keys(conn, "s0", 1, 42)[0], "s1": pick_keys(conn, "s1", 1, 42)[0]}


def landed(clusters: list[LocalPostgres], note_id: int) -> list[str]:
    """The shards holding note `note_id`."""
    found = rows_by_shard(clusters, f"SELECT 1 FROM {NOTES} WHERE id = %s", [note_id])
    return [shard for shard, rows in found.items() if rows]


def note(conn: psycopg.Connection[Any], how: str, hint: str = "",
         params: bool = True) -> int:
    """Insert a note (with a leading hint comment) through `conn`; returns its id."""
    i = next(_ids)
    if params:
        conn.execute(f"{hint}INSERT INTO {NOTES} (id, how) VALUES (%s, %s)", (i, how))
    else:
        conn.execute(f"{hint}INSERT INTO {NOTES} (id, how) VALUES ({i}, '{how}')")
    return i


def show(conn: psycopg.Connection[Any], name: str) -> Any:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return row[0]


def test_without_a_hint_an_unlisted_table_is_the_default_shards(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as conn:
        i = note(conn, "plain")
    assert landed(shard_clusters, i) == ["s0"]


@pytest.mark.parametrize("params", [True, False], ids=["extended", "simple"])
def test_shard_comment_hint(routed: RunningProxy, shard_clusters: list[LocalPostgres],
                            params: bool) -> None:
    with via(routed) as conn:
        on1 = note(conn, "comment s1", "/* shard: s1 */ ", params=params)
        on0 = note(conn, "comment s0", "/* shard: s0 */ ", params=params)
        # reads follow the hint too: the row is only visible on s1
        read = f"SELECT how FROM {NOTES} WHERE id = %s"
        assert conn.execute("/* shard: s1 */ " + read, (on1,)).fetchall() == [("comment s1",)]
        assert conn.execute("/* shard: s0 */ " + read, (on1,)).fetchall() == []
        assert conn.execute(read, (on1,)).fetchall() == []  # default shard: s0
    assert landed(shard_clusters, on1) == ["s1"]
    assert landed(shard_clusters, on0) == ["s0"]


def test_shard_comment_hint_routes_ddl(routed: RunningProxy,
                                       shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as conn:
        conn.execute(f"/* shard: s1 */ CREATE TABLE {ONLY_S1} (x int)")
    where = {}
    for name, cluster in by_name(shard_clusters).items():
        with direct(cluster) as conn:
            where[name] = table_exists(conn, ONLY_S1)
    assert where == {"s0": False, "s1": True}


def test_shard_hint_on_a_sharded_table_scopes_it_to_that_shard(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """With a shard hint, a statement over a sharded table runs on that shard alone, so an
    aggregate needs no merge: it is that shard's answer."""
    for name, cluster in by_name(shard_clusters).items():
        with direct(cluster) as conn:
            first, last = (1000, 1009) if name == "s0" else (2000, 2019)
            conn.execute(f"INSERT INTO {USERS} SELECT g, %s FROM generate_series({first}, "
                         f"{last}) g", (name,))
    with via(routed) as conn:
        for name, want in (("s0", 10), ("s1", 20)):
            got = conn.execute(f"/* shard: {name} */ SELECT count(*), min(name), max(name) "
                               f"FROM {USERS} WHERE id >= 1000").fetchone()
            assert got == (want, name, name)


def test_shard_key_comment_hint(routed: RunningProxy, shard_clusters: list[LocalPostgres],
                                key_on: dict[str, int]) -> None:
    with via(routed) as conn:
        on1 = note(conn, "key s1", f"/* shard_key: {key_on['s1']} */ ")
        on0 = note(conn, "key s0", f"/* shard_key: {key_on['s0']} */ ", params=False)
    assert landed(shard_clusters, on1) == ["s1"]
    assert landed(shard_clusters, on0) == ["s0"]


def test_session_shard_setting(routed: RunningProxy,
                               shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as conn:
        conn.execute("SET shardwire.shard = 's1'")
        assert show(conn, "shardwire.shard") == "s1"
        # it holds for the session: every statement (each its own transaction, so each on
        # whatever pooled server connection) until RESET
        first = note(conn, "session 1")
        second = note(conn, "session 2", params=False)
        with conn.transaction():
            third = note(conn, "session 3")
        assert show(conn, "shardwire.shard") == "s1"
        conn.execute("RESET shardwire.shard")
        assert show(conn, "shardwire.shard") == ""
        after = note(conn, "after reset")
        # a comment hint is stronger than the session setting
        conn.execute("SET shardwire.shard TO 's1'")
        stronger = note(conn, "comment wins", "/* shard: s0 */ ")
        conn.execute("RESET shardwire.shard")
    for i in (first, second, third):
        assert landed(shard_clusters, i) == ["s1"], i
    assert landed(shard_clusters, after) == ["s0"]
    assert landed(shard_clusters, stronger) == ["s0"]


def test_session_shard_setting_is_per_client(routed: RunningProxy,
                                             shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as hinted, via(routed) as other:
        hinted.execute("SET shardwire.shard = 's1'")
        mine = note(hinted, "hinted client")
        theirs = note(other, "other client")
        assert show(other, "shardwire.shard") != "s1"
    assert landed(shard_clusters, mine) == ["s1"]
    assert landed(shard_clusters, theirs) == ["s0"]


def test_session_shard_key_setting(routed: RunningProxy, shard_clusters: list[LocalPostgres],
                                   key_on: dict[str, int]) -> None:
    with via(routed) as conn:
        conn.execute(f"SET shardwire.shard_key = '{key_on['s1']}'")
        assert show(conn, "shardwire.shard_key") == str(key_on["s1"])
        on1 = note(conn, "session key s1")
        conn.execute(f"SET shardwire.shard_key = '{key_on['s0']}'")
        on0 = note(conn, "session key s0")
        conn.execute("RESET shardwire.shard_key")
        after = note(conn, "after key reset")
    assert landed(shard_clusters, on1) == ["s1"]
    assert landed(shard_clusters, on0) == ["s0"]
    assert landed(shard_clusters, after) == ["s0"]


def test_postgres_never_sees_the_settings(routed: RunningProxy) -> None:
    """Postgres accepts any dotted setting name, so a SET that was forwarded would show up
    in current_setting() on the server; shardwire must consume it."""
    with via(routed) as conn:
        conn.execute("SET shardwire.shard = 's1'")
        conn.execute("SET shardwire.shard_key = '7'")
        server_side = conn.execute(
            "SELECT current_setting('shardwire.shard', true), "
            "current_setting('shardwire.shard_key', true)").fetchone()
        conn.execute("RESET shardwire.shard")
        conn.execute("RESET shardwire.shard_key")
    assert server_side is not None
    assert server_side[0] in (None, ""), server_side
    assert server_side[1] in (None, ""), server_side


@pytest.mark.parametrize("statement", [
    "/* shard: s9 */ SELECT 1",
    f"/* shard: s9 */ INSERT INTO {NOTES} (id, how) VALUES (999999, 'x')",
    "SET shardwire.shard = 's9'",
])
def test_unknown_shard_in_a_hint_is_22023(routed: RunningProxy,
                                          shard_clusters: list[LocalPostgres],
                                          statement: str) -> None:
    with via(routed) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statement)
        assert info.value.sqlstate == "22023", info.value
        assert "s9" in str(info.value)
        # nothing changed for the session
        assert show(conn, "shardwire.shard") != "s9"
        i = note(conn, "after bad hint")
    assert landed(shard_clusters, i) == ["s0"]
    assert landed(shard_clusters, 999999) == []


async def test_hints_from_asyncpg(routed: RunningProxy, shard_clusters: list[LocalPostgres],
                                  key_on: dict[str, int]) -> None:
    """Extended protocol, binary parameters, named prepared statements."""
    conn = await asyncpg.connect(routed.url())
    ids = [next(_ids) for _ in range(3)]
    try:
        await conn.execute(f"/* shard: s1 */ INSERT INTO {NOTES} (id, how) VALUES ($1, $2)",
                           ids[0], "asyncpg comment")
        await conn.execute(f"/* shard_key: {key_on['s1']} */ INSERT INTO {NOTES} (id, how) "
                           "VALUES ($1, $2)", ids[1], "asyncpg key")
        await conn.execute("SET shardwire.shard = 's1'")
        await conn.execute(f"INSERT INTO {NOTES} (id, how) VALUES ($1, $2)", ids[2],
                           "asyncpg session")
        assert await conn.fetchval(f"SELECT how FROM {NOTES} WHERE id = $1", ids[2]) \
            == "asyncpg session"
        await conn.execute("RESET shardwire.shard")
        assert await conn.fetchval(f"SELECT how FROM {NOTES} WHERE id = $1", ids[2]) is None
    finally:
        await conn.close()
    for i in ids:
        assert landed(shard_clusters, i) == ["s1"], i


def test_unparsable_statement_naming_no_sharded_table_goes_to_the_default_shard(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """`unparsed: default`: `WHERE CURRENT OF` is beyond shardwire's parser; naming only an
    unlisted table, it runs on the default shard, where the cursor is (on any other shard
    it would fail: no such cursor)."""
    clusters = by_name(shard_clusters)
    i = next(_ids)
    for cluster in clusters.values():  # the same id on both shards
        with direct(cluster) as conn:
            conn.execute(f"INSERT INTO {NOTES} (id, how) VALUES (%s, 'old')", (i,))
    with via(routed) as conn:
        with conn.transaction():
            conn.execute(f"DECLARE rt_c CURSOR FOR SELECT id, how FROM {NOTES} "
                         f"WHERE id = {i} FOR UPDATE")
            assert conn.execute("FETCH NEXT FROM rt_c").fetchall() == [(i, "old")]
            cur = conn.execute(f"UPDATE {NOTES} SET how = 'via cursor' WHERE CURRENT OF rt_c")
            assert cur.rowcount == 1
            conn.execute("CLOSE rt_c")
    found = rows_by_shard(shard_clusters, f"SELECT how FROM {NOTES} WHERE id = %s", [i])
    assert found == {"s0": [("via cursor",)], "s1": [("old",)]}


def test_unparsable_statement_naming_a_sharded_table_needs_a_hint(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """ROUTING.md: never a guess. Not parsable and naming a sharded table: 0A000, unless a
    hint says where it goes."""
    with direct(by_name(shard_clusters)["s1"]) as conn:
        conn.execute(f"INSERT INTO {USERS} (id, name) VALUES (-1, 'first') "
                     "ON CONFLICT (id) DO NOTHING")
    with via(routed) as conn:
        with conn.transaction():
            conn.execute(f"/* shard: s1 */ DECLARE rt_u CURSOR FOR SELECT id FROM {USERS} "
                         "FOR UPDATE")
            conn.execute("/* shard: s1 */ FETCH NEXT FROM rt_u")
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"UPDATE {USERS} SET name = 'x' WHERE CURRENT OF rt_u")
            assert info.value.sqlstate == "0A000", info.value
        with conn.transaction():
            conn.execute(f"/* shard: s1 */ DECLARE rt_u CURSOR FOR SELECT id FROM {USERS} "
                         "ORDER BY id FOR UPDATE")
            row = conn.execute("/* shard: s1 */ FETCH NEXT FROM rt_u").fetchone()
            assert row == (-1,)
            cur = conn.execute(f"/* shard: s1 */ UPDATE {USERS} SET name = 'cursor' "
                               "WHERE CURRENT OF rt_u")
            assert cur.rowcount == 1
    with direct(by_name(shard_clusters)["s1"]) as conn:
        assert conn.execute(f"SELECT name FROM {USERS} WHERE id = %s", row).fetchall() \
            == [("cursor",)]
