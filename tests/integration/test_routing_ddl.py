"""DDL through shardwire: on a sharded or reference table it runs on every shard, on an
unlisted table only on the default shard, and a failure on one shard names that shard.

Each step is checked on the shards directly (catalogs and statistics views), never through
the proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    by_name,
    direct,
    drop_everywhere,
    routed_proxy,
    table_exists,
    via,
)

SHARDED = "rt_ddl_sharded"
REFERENCE = "rt_ddl_reference"
MAINT = "rt_ddl_maint"
CONFLICT = "rt_ddl_conflict"
UNLISTED = "rt_ddl_unlisted"
TABLES = {SHARDED: {"shard_key": "id"}, REFERENCE: {"reference": True},
          MAINT: {"shard_key": "id"}, CONFLICT: {"shard_key": "id"}}


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory,
           shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    drop_everywhere(shard_clusters, *TABLES, UNLISTED)
    with routed_proxy(proxy_factory, TABLES) as running:
        yield running
    drop_everywhere(shard_clusters, *TABLES, UNLISTED)


def where(clusters: list[LocalPostgres], check: str, *args: Any) -> list[str]:
    """The shards on which the (one-value, boolean) `check` query is true."""
    shards = []
    for name, cluster in by_name(clusters).items():
        with direct(cluster) as conn:
            row = conn.execute(check, args).fetchone()
            if row and row[0]:
                shards.append(name)
    return shards


def tables_on(clusters: list[LocalPostgres], table: str) -> list[str]:
    return where(clusters, "SELECT to_regclass(%s) IS NOT NULL", table)


def columns_on(clusters: list[LocalPostgres], table: str) -> dict[str, list[str]]:
    out = {}
    for name, cluster in by_name(clusters).items():
        with direct(cluster) as conn:
            out[name] = [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,))]
    return out


def test_table_ddl_runs_on_every_shard(routed: RunningProxy,
                                       shard_clusters: list[LocalPostgres]) -> None:
    everywhere = ["s0", "s1"]
    with via(routed) as conn:
        conn.execute(f"CREATE TABLE {SHARDED} (id bigint PRIMARY KEY, v text)")
        assert tables_on(shard_clusters, SHARDED) == everywhere
        conn.execute(f"ALTER TABLE {SHARDED} ADD COLUMN extra int DEFAULT 7")
        assert columns_on(shard_clusters, SHARDED) == {s: ["id", "v", "extra"]
                                                       for s in everywhere}
        conn.execute(f"CREATE INDEX {SHARDED}_v_idx ON {SHARDED} (v)")
        assert tables_on(shard_clusters, f"{SHARDED}_v_idx") == everywhere
        conn.execute(f"DROP INDEX {SHARDED}_v_idx")
        assert tables_on(shard_clusters, f"{SHARDED}_v_idx") == []
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {SHARDED}_uv ON {SHARDED} (v, id)")
        assert tables_on(shard_clusters, f"{SHARDED}_uv") == everywhere
        conn.execute(f"DROP INDEX IF EXISTS {SHARDED}_uv")
        assert tables_on(shard_clusters, f"{SHARDED}_uv") == []
        conn.execute(f"ALTER TABLE {SHARDED} DROP COLUMN extra")
        assert columns_on(shard_clusters, SHARDED) == {s: ["id", "v"] for s in everywhere}
        conn.execute(f"DROP TABLE {SHARDED}")
        assert tables_on(shard_clusters, SHARDED) == []
        # with the simple protocol and a schema-qualified name, too
        conn.pgconn.exec_(f"CREATE TABLE public.{SHARDED} (id bigint)".encode())
        assert tables_on(shard_clusters, SHARDED) == everywhere
        conn.execute(f"DROP TABLE IF EXISTS {SHARDED}")
        assert tables_on(shard_clusters, SHARDED) == []


def test_reference_table_ddl_runs_on_every_shard(routed: RunningProxy,
                                                 shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as conn:
        conn.execute(f"CREATE TABLE {REFERENCE} (code text PRIMARY KEY, name text)")
        assert tables_on(shard_clusters, REFERENCE) == ["s0", "s1"]
        conn.execute(f"CREATE INDEX {REFERENCE}_name ON {REFERENCE} (name)")
        assert tables_on(shard_clusters, f"{REFERENCE}_name") == ["s0", "s1"]
        conn.execute(f"DROP TABLE {REFERENCE}")
        assert tables_on(shard_clusters, REFERENCE) == []


def test_truncate_vacuum_analyze_run_on_every_shard(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as conn:
        conn.execute(f"CREATE TABLE {MAINT} (id bigint PRIMARY KEY, v text)")
    assert tables_on(shard_clusters, MAINT) == ["s0", "s1"]
    for cluster in shard_clusters:  # (rows put straight on each shard: only DDL is tested)
        with direct(cluster) as conn:
            conn.execute(f"INSERT INTO {MAINT} SELECT g, 'x' FROM generate_series(1, 100) g")
    stats = ("SELECT vacuum_count > 0, analyze_count > 0 FROM pg_stat_user_tables "
             "WHERE relid = to_regclass(%s)")
    with via(routed) as conn:
        conn.execute(f"VACUUM {MAINT}")
        conn.execute(f"ANALYZE {MAINT}")
        conn.execute(f"VACUUM (ANALYZE) {MAINT}")
    deadline = time.monotonic() + 10  # statistics reach the views asynchronously
    while True:
        done = {}
        for name, cluster in by_name(shard_clusters).items():
            with direct(cluster) as conn:
                done[name] = conn.execute(stats, (MAINT,)).fetchone()
        if all(v == (True, True) for v in done.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done == {"s0": (True, True), "s1": (True, True)}, \
        "(vacuumed, analyzed) per shard"
    with via(routed) as conn:
        conn.execute(f"TRUNCATE {MAINT}")
    assert where(shard_clusters, f"SELECT count(*) = 0 FROM {MAINT}") == ["s0", "s1"]
    with via(routed) as conn:
        conn.execute(f"DROP TABLE {MAINT}")


def test_unlisted_table_ddl_runs_on_the_default_shard_only(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    with via(routed) as conn:
        conn.execute(f"CREATE TABLE {UNLISTED} (id int PRIMARY KEY, v text)")
        assert tables_on(shard_clusters, UNLISTED) == ["s0"]
        conn.execute(f"CREATE INDEX {UNLISTED}_v ON {UNLISTED} (v)")
        assert tables_on(shard_clusters, f"{UNLISTED}_v") == ["s0"]
        conn.execute(f"ALTER TABLE {UNLISTED} ADD COLUMN w int")
        assert columns_on(shard_clusters, UNLISTED)["s0"] == ["id", "v", "w"]
        conn.execute(f"INSERT INTO {UNLISTED} VALUES (1, 'a', 2)")
        conn.execute(f"TRUNCATE {UNLISTED}")
        assert conn.execute(f"SELECT count(*) FROM {UNLISTED}").fetchone() == (0,)
        conn.execute(f"DROP TABLE {UNLISTED}")
        assert tables_on(shard_clusters, UNLISTED) == []


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_ddl_failing_on_one_shard_names_it(routed: RunningProxy,
                                           shard_clusters: list[LocalPostgres],
                                           protocol: str) -> None:
    s1 = by_name(shard_clusters)["s1"]
    drop_everywhere(shard_clusters, CONFLICT)
    with direct(s1) as conn:  # a table of that name already exists on s1 only
        conn.execute(f"CREATE TABLE {CONFLICT} (something text)")
    try:
        with via(routed) as conn:
            create = f"CREATE TABLE {CONFLICT} (id bigint PRIMARY KEY)"
            with pytest.raises(psycopg.errors.DuplicateTable) as info:
                if protocol == "simple":
                    conn.execute(create)
                else:
                    conn.execute(create, prepare=True)
            err = info.value
            assert err.sqlstate == "42P07"
            assert err.diag.message_detail is not None \
                and 'on shard "s1"' in err.diag.message_detail, err.diag.message_detail
            assert 'on shard "s0"' not in (err.diag.message_detail or "")
            # the session is usable afterwards
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with direct(s1) as conn:  # s1's own table is untouched
            assert [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0", (CONFLICT,))] == ["something"]
    finally:
        drop_everywhere(shard_clusters, CONFLICT)


def test_unlisted_table_ddl_never_reaches_other_shards(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """The other direction: an unlisted table's DDL runs on s0 alone, so a table of the same
    name on s1 does not make it fail."""
    s1 = by_name(shard_clusters)["s1"]
    drop_everywhere(shard_clusters, UNLISTED)
    with direct(s1) as conn:
        conn.execute(f"CREATE TABLE {UNLISTED} (something text)")
    try:
        with via(routed) as conn:
            conn.execute(f"CREATE TABLE {UNLISTED} (id int)")
        with direct(by_name(shard_clusters)["s0"]) as conn:
            assert table_exists(conn, UNLISTED)
    finally:
        drop_everywhere(shard_clusters, UNLISTED)
