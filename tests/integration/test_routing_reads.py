"""Reads over several shards through shardwire.

A SELECT that needs no merging (no ORDER BY, aggregate, LIMIT, DISTINCT, GROUP BY) returns
the union of every shard's rows; one that needs a merge is merged by the proxy and equals
what one Postgres holding every row answers (tests/differential has the full matrix); what
cannot be merged exactly is refused with 0A000. Reads that resolve to one shard (a key, a
reference table, an unlisted table) may use all of SQL.

The tables and rows are put straight on the shards (each row on the shard owning its key,
decided by Postgres, see test_routing_helpers), so these tests depend on read routing only
(DDL and write routing have modules of their own).
"""

from __future__ import annotations

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
    owner,
    pg_buckets,
    routed_proxy,
    run_psql,
    via,
)

ITEMS = "rt_read_items"
REF = "rt_read_ref"
UNLISTED = "rt_read_unlisted"
TABLES = {ITEMS: {"shard_key": "id"}, REF: {"reference": True}}
KEYS = [*range(-150, 250), 2**63 - 1, -(2**63), 2**40]

Row = tuple[int, int, str]


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with routed_proxy(proxy_factory, TABLES) as running:
        yield running


@pytest.fixture(scope="module")
def data(routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> dict[str, list[Row]]:
    """shard -> the rows of ITEMS stored on it."""
    clusters = by_name(shard_clusters)
    drop_everywhere(shard_clusters, ITEMS, REF, UNLISTED)
    for name, cluster in clusters.items():
        with direct(cluster) as conn:
            conn.execute(f"CREATE TABLE {ITEMS} (id bigint PRIMARY KEY, grp int, v text)")
            conn.execute(f"CREATE TABLE {REF} (code text PRIMARY KEY, rank int)")
            if name == "s0":
                conn.execute(f"CREATE TABLE {UNLISTED} (id int, v text)")
    with direct(clusters["s0"]) as conn:
        owners = {k: owner(b) for k, b in pg_buckets(conn, KEYS, "bigint").items()}
    placed: dict[str, list[Row]] = {name: [] for name in clusters}
    for k in KEYS:
        placed[owners[k]].append((k, k % 7, f"v{k}"))
    for name, cluster in clusters.items():
        with direct(cluster) as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {ITEMS} VALUES (%s, %s, %s)", placed[name])
            cur.executemany(f"INSERT INTO {REF} VALUES (%s, %s)",
                            [(f"r{i}", 100 - i) for i in range(10)])
            if name == "s0":
                cur.executemany(f"INSERT INTO {UNLISTED} VALUES (%s, %s)",
                                [(i, f"u{i}") for i in range(5)])
    assert all(placed.values())
    return placed


def every_row(data: dict[str, list[Row]]) -> list[Row]:
    return sorted(r for rows in data.values() for r in rows)


@pytest.mark.parametrize("mode", ["text", "binary", "simple"])
def test_scan_without_merge_returns_the_union(routed: RunningProxy,
                                              data: dict[str, list[Row]], mode: str) -> None:
    with via(routed) as conn:
        cur = conn.cursor(binary=mode == "binary")
        if mode == "simple":
            got = cur.execute(f"SELECT id, grp, v FROM {ITEMS}").fetchall()
            some = cur.execute(f"SELECT id, grp, v FROM {ITEMS} WHERE grp = 3").fetchall()
        else:
            got = cur.execute(f"SELECT id, grp, v FROM {ITEMS} WHERE v <> %s",
                              ("nope",)).fetchall()
            some = cur.execute(f"SELECT id, grp, v FROM {ITEMS} WHERE grp = %s",
                               (3,)).fetchall()
        assert cur.rowcount == len(some)  # the command tags are summed
    assert sorted(got) == every_row(data)
    assert sorted(some) == [r for r in every_row(data) if r[1] == 3]


async def test_scan_without_merge_asyncpg(routed: RunningProxy,
                                          data: dict[str, list[Row]]) -> None:
    conn = await asyncpg.connect(routed.url())
    try:
        got = await conn.fetch(f"SELECT id, grp, v FROM {ITEMS}")
        some = await conn.fetch(f"SELECT id, grp, v FROM {ITEMS} WHERE grp = $1", 3)
    finally:
        await conn.close()
    assert sorted(tuple(r) for r in got) == every_row(data)
    assert sorted(tuple(r) for r in some) == [r for r in every_row(data) if r[1] == 3]


async def test_cursors_over_several_shards(routed: RunningProxy,
                                           data: dict[str, list[Row]]) -> None:
    """A portal read in batches (a named portal, Execute with a row limit, PortalSuspended)
    in a transaction over both shards: plain rows and a merged ORDER BY, with asyncpg;
    the session goes on afterwards."""
    conn = await asyncpg.connect(routed.url())
    try:
        async with conn.transaction():
            batched = [tuple(r) async for r in conn.cursor(
                f"SELECT id, grp, v FROM {ITEMS}", prefetch=50)]
            ordered = [tuple(r) async for r in conn.cursor(
                f"SELECT id, grp, v FROM {ITEMS} ORDER BY id DESC", prefetch=7)]
            cur = await conn.cursor(f"SELECT id FROM {ITEMS} ORDER BY id")
            first = await cur.fetch(5)
            more = await cur.fetch(3)
        rows = await conn.fetch(f"SELECT id, grp, v FROM {ITEMS}")
    finally:
        await conn.close()
    assert sorted(batched) == every_row(data)
    assert ordered == sorted(every_row(data), reverse=True)
    ids = sorted(r[0] for r in every_row(data))
    assert [r[0] for r in first] == ids[:5] and [r[0] for r in more] == ids[5:8]
    assert sorted(tuple(r) for r in rows) == every_row(data)


def test_key_list_over_both_shards(routed: RunningProxy, data: dict[str, list[Row]]) -> None:
    picks = [data["s0"][0][0], data["s1"][0][0], data["s0"][-1][0], data["s1"][-1][0]]
    want = sorted(r for r in every_row(data) if r[0] in picks)
    with via(routed) as conn:
        a = conn.execute(f"SELECT id, grp, v FROM {ITEMS} WHERE id = ANY(%s)",
                         (picks,)).fetchall()
        b = conn.execute(f"SELECT id, grp, v FROM {ITEMS} WHERE id IN "
                         f"({', '.join(map(str, picks))})").fetchall()
        c = conn.execute(f"SELECT id, grp, v FROM {ITEMS} WHERE id = %s OR id = %s "
                         "OR id = %s OR id = %s", picks).fetchall()
    assert sorted(a) == sorted(b) == sorted(c) == want


# Results that need combining across shards: merged by the proxy, equal to one Postgres
# holding every row (the differential suite in tests/differential covers the full matrix).
MERGED = {
    "order by": (f"SELECT id FROM {ITEMS} ORDER BY id", True),
    "limit": (f"SELECT id FROM {ITEMS} ORDER BY id DESC LIMIT 5", True),
    "offset": (f"SELECT id, v FROM {ITEMS} ORDER BY v, id OFFSET 5", True),
    "distinct": (f"SELECT DISTINCT grp FROM {ITEMS}", False),
    "group by": (f"SELECT grp, count(*) FROM {ITEMS} GROUP BY grp", False),
    "sum": (f"SELECT sum(grp) FROM {ITEMS}", False),
    "max": (f"SELECT max(id) FROM {ITEMS}", False),
    "count distinct": (f"SELECT count(DISTINCT grp) FROM {ITEMS}", False),
    "count having": (f"SELECT count(*) FROM {ITEMS} HAVING count(*) > 1", False),
}
# What cannot be answered exactly is refused with 0A000, never answered wrongly.
REFUSED = {
    "window": f"SELECT id, row_number() OVER () FROM {ITEMS}",
    "union": f"SELECT grp FROM {ITEMS} UNION SELECT grp FROM {ITEMS}",
}
ALL_ROWS = "rt_read_items_all"


@pytest.fixture(scope="module")
def one_postgres(data: dict[str, list[Row]], shard_clusters: list[LocalPostgres]
                 ) -> Iterator[psycopg.Connection[Any]]:
    """Every row of ITEMS in one table of one Postgres (shard s0, another name)."""
    with direct(by_name(shard_clusters)["s0"]) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {ALL_ROWS}")
        conn.execute(f"CREATE TABLE {ALL_ROWS} (id bigint PRIMARY KEY, grp int, v text)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {ALL_ROWS} VALUES (%s, %s, %s)", every_row(data))
        try:
            yield conn
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {ALL_ROWS}")


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("what", list(MERGED))
def test_results_needing_a_merge_equal_one_postgres(
        routed: RunningProxy, one_postgres: psycopg.Connection[Any], what: str,
        protocol: str) -> None:
    sql, ordered = MERGED[what]
    want = one_postgres.execute(sql.replace(ITEMS, ALL_ROWS)).fetchall()
    with via(routed) as conn:
        got = conn.execute(sql, prepare=protocol == "extended").fetchall()
    if not ordered:
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert got == want


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("what", list(REFUSED))
def test_results_that_cannot_be_merged_are_refused(routed: RunningProxy,
                                                   data: dict[str, list[Row]], what: str,
                                                   protocol: str) -> None:
    with via(routed) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(REFUSED[what], prepare=protocol == "extended")
        err = info.value
        assert err.sqlstate == "0A000", err
        assert "several shards" in (err.diag.message_primary or "") or "cross-shard" in (
            err.diag.message_primary or ""), err.diag.message_primary
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


async def test_merged_results_asyncpg(routed: RunningProxy,
                                      one_postgres: psycopg.Connection[Any]) -> None:
    conn = await asyncpg.connect(routed.url())
    try:
        for sql, ordered in MERGED.values():
            want = one_postgres.execute(sql.replace(ITEMS, ALL_ROWS)).fetchall()
            got = [tuple(r) for r in await conn.fetch(sql)]
            if not ordered:
                got, want = sorted(got, key=repr), sorted(want, key=repr)
            assert got == want, sql
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetch(REFUSED["window"])
        assert info.value.sqlstate == "0A000"
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["simple", "text", "binary"])
def test_count_star_is_summed_over_shards(routed: RunningProxy, data: dict[str, list[Row]],
                                          mode: str) -> None:
    total = len(every_row(data))
    in_grp = len([r for r in every_row(data) if r[1] == 3])
    both = len([r for r in every_row(data) if r[1] == 3 and r[2] != "v3"])
    with via(routed) as conn:
        cur = conn.cursor(binary=mode == "binary")
        if mode == "simple":
            got = [cur.execute(f"select count(*) from {ITEMS}").fetchall(),
                   cur.execute(f"SELECT COUNT(*) FROM {ITEMS} WHERE grp = 3").fetchall(),
                   cur.execute(f"select count(*) from {ITEMS} where grp = 3 and v <> 'v3'")
                   .fetchall()]
        else:
            got = [cur.execute(f"select count(*) from {ITEMS}", prepare=True).fetchall(),
                   cur.execute(f"SELECT COUNT(*) FROM {ITEMS} WHERE grp = %s", (3,)).fetchall(),
                   cur.execute(f"select count(*) from {ITEMS} where grp = %s and v <> %s",
                               (3, "v3")).fetchall()]
    assert got == [[(total,)], [(in_grp,)], [(both,)]]
    assert {len(rows) for rows in data.values()} != {0}  # (both shards hold rows)


async def test_count_star_summed_asyncpg(routed: RunningProxy,
                                         data: dict[str, list[Row]]) -> None:
    conn = await asyncpg.connect(routed.url())
    try:
        total = await conn.fetchval(f"select count(*) from {ITEMS}")  # binary int8 results
        in_grp = await conn.fetchval(f"select count(*) from {ITEMS} where grp = $1", 3)
    finally:
        await conn.close()
    assert total == len(every_row(data))
    assert in_grp == len([r for r in every_row(data) if r[1] == 3])


def test_count_star_from_psql(routed: RunningProxy, data: dict[str, list[Row]]) -> None:
    out = run_psql(routed, "-c", f"select count(*) from {ITEMS}").stdout
    assert out.strip() == str(len(every_row(data)))


def test_single_shard_reads_may_use_all_of_sql(routed: RunningProxy,
                                               data: dict[str, list[Row]]) -> None:
    k = data["s1"][0][0]
    with via(routed) as conn:
        assert conn.execute(
            f"SELECT id, count(*) FROM {ITEMS} WHERE id = %s GROUP BY id ORDER BY id LIMIT 1",
            (k,)).fetchall() == [(k, 1)]
        assert conn.execute(f"SELECT DISTINCT grp FROM {ITEMS} WHERE id = {k}").fetchall() \
            == [(k % 7,)]
        # a reference table is read from one shard: ORDER BY, LIMIT and aggregates work
        assert conn.execute(f"SELECT code FROM {REF} ORDER BY rank LIMIT 3").fetchall() \
            == [("r9",), ("r8",), ("r7",)]
        assert conn.execute(f"SELECT count(*), sum(rank) FROM {REF}").fetchone() \
            == (10, sum(100 - i for i in range(10)))
        # an unlisted table lives on the default shard
        assert conn.execute(f"SELECT id FROM {UNLISTED} ORDER BY id DESC LIMIT 2").fetchall() \
            == [(4,), (3,)]


def test_group_cap_fails_clearly(proxy_factory: ProxyFactory,
                                 data: dict[str, list[Row]]) -> None:
    """merge.max_groups bounds what one merge holds: beyond it 53200 names the setting, and
    the session goes on."""
    groups = len({r[1] for r in every_row(data)})
    assert groups > 2
    with routed_proxy(proxy_factory, TABLES, merge={"max_groups": 2}) as capped:
        with via(capped) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT grp, count(*) FROM {ITEMS} GROUP BY grp")
            assert info.value.sqlstate == "53200", info.value
            assert "merge.max_groups" in (info.value.diag.message_hint or "")
            assert conn.execute(f"SELECT count(*) FROM {ITEMS}").fetchone() == (
                len(every_row(data)),)
