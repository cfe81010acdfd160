"""Read replicas behind the proxy, on a real streaming replica built with pg_basebackup:
reads reach it, writes never do, lag beyond `reads.max_replica_lag` sends reads to the
primary, read-your-writes holds, and after a failover writes follow the promoted host."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.localpg import LocalPostgres
from tests.integration.conftest import RunningProxy, assert_clean_log, base_topology, start_proxy
from tests.integration.test_faults_helpers import wait_until

T = "rp_items"


@pytest.fixture(scope="module")
def pair(pg_factory: Any) -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    primary = pg_factory("rp_primary", auth="scram-sha-256", superuser_password="postgres")
    primary.create_database("app")
    primary.psql(f"CREATE TABLE {T} (id bigint PRIMARY KEY, v int)", dbname="app")
    primary.psql(f"INSERT INTO {T} SELECT g, g FROM generate_series(1, 100) g", dbname="app")
    replica = primary.make_replica("rp_replica")
    try:
        yield primary, replica
    finally:
        replica.destroy()


@pytest.fixture(scope="module")
def proxy(pair: tuple[LocalPostgres, LocalPostgres],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    primary, replica = pair
    topo = base_topology([primary])
    topo["shards"] = [{"name": "s0", "primary": primary.dsn("app"),
                       "replicas": [replica.dsn("app")]}]
    topo["tables"] = {T: {"shard_key": "id"}}
    topo["health"] = {"check_interval": "100ms"}
    topo["reads"] = {"max_replica_lag": "500ms", "read_your_writes": "1s"}
    running = start_proxy(tmp_path_factory.mktemp("replicas"), topo, name="replicas")
    yield running
    running.stop()


def on_replica(conn: psycopg.Connection[Any], sql: str = "SELECT pg_is_in_recovery()",
               params: tuple[Any, ...] | None = None) -> bool:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return bool(row[0])


def fresh(proxy: RunningProxy) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10)


def lag_metric(proxy: RunningProxy) -> float | None:
    m = proxy.topology["metrics"]
    with urllib.request.urlopen(f"http://{m['host']}:{m['port']}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "shardwire_replication_lag_seconds":
            for sample in family.samples:
                return float(sample.value)
    return None


def test_reads_reach_the_replica_and_writes_do_not(
        proxy: RunningProxy, pair: tuple[LocalPostgres, LocalPostgres]) -> None:
    primary, _ = pair
    # a real streaming standby of the primary, built by pg_basebackup
    assert primary.psql("SELECT count(*) FROM pg_stat_replication").strip() == "1"
    with fresh(proxy) as conn:
        # The first health checks must have measured the replica's lag.
        wait_until(lambda: on_replica(conn), 15, "reads to reach the replica")
        assert all(on_replica(conn) for _ in range(10))
        # extended protocol, routed by key: still the replica, with the data
        row = conn.execute(f"SELECT pg_is_in_recovery(), v FROM {T} WHERE id = %s",
                           (7,)).fetchone()
        assert row == (True, 7)
        # writes, locking reads and hinted reads: the primary (a replica would say 25006)
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, %s)", (1001, 1))
        assert not on_replica(conn, f"SELECT pg_is_in_recovery() FROM {T} WHERE id = 1 "
                                    "FOR UPDATE")
        assert not on_replica(conn, "/* role: primary */ SELECT pg_is_in_recovery()")
        # a function that writes (an advisory lock is taken on the server that runs it)
        assert not on_replica(conn, "SELECT pg_is_in_recovery() FROM (SELECT 1) x "
                                    "WHERE pg_try_advisory_xact_lock(1)")
    with fresh(proxy) as conn:
        with conn.transaction():  # an explicit transaction stays on the primary
            assert not on_replica(conn)
        conn.execute("BEGIN READ ONLY")  # ... unless it is read-only
        assert on_replica(conn)
        assert on_replica(conn, f"SELECT pg_is_in_recovery() FROM {T} WHERE id = 3")
        conn.execute("COMMIT")
    assert_clean_log(proxy)


def test_read_your_writes(proxy: RunningProxy) -> None:
    with fresh(proxy) as conn:
        wait_until(lambda: on_replica(conn), 15, "reads to reach the replica")
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, %s)", (2001, 42))
        # right after its write, this client reads from the primary: its row is there
        row = conn.execute(f"SELECT pg_is_in_recovery(), v FROM {T} WHERE id = %s",
                           (2001,)).fetchone()
        assert row == (False, 42)
        with fresh(proxy) as other:  # another client is not held back
            assert on_replica(other)
        time.sleep(1.1)  # read_your_writes: 1s
        assert on_replica(conn)


def test_lag_beyond_the_limit_sends_reads_to_the_primary(
        proxy: RunningProxy, pair: tuple[LocalPostgres, LocalPostgres]) -> None:
    primary, replica = pair
    with fresh(proxy) as conn:
        wait_until(lambda: on_replica(conn), 15, "reads to reach the replica")
        replica.psql("SELECT pg_wal_replay_pause()")
        try:
            # WAL the replica does not replay: its lag grows past 500ms
            deadline = time.monotonic() + 15
            n = 0
            while on_replica(conn):
                n += 1
                primary.psql(f"INSERT INTO {T} VALUES ({5000 + n}, 0)", dbname="app")
                assert time.monotonic() < deadline, "reads never left the lagging replica"
                time.sleep(0.05)
            lag = lag_metric(proxy)
            assert lag is not None and lag > 0.5, lag
            assert not on_replica(conn)  # and they stay on the primary
        finally:
            replica.psql("SELECT pg_wal_replay_resume()")
        wait_until(lambda: on_replica(conn), 15, "reads to return to the caught-up replica")
        assert (lag_metric(proxy) or 0) <= 0.5


def test_scatter_reads_use_replicas_too(pair: tuple[LocalPostgres, LocalPostgres],
                                       pg_factory: Any,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """A read run on every shard takes each shard's replica where it has one."""
    primary, replica = pair
    other = pg_factory("rp_other", auth="scram-sha-256", superuser_password="postgres")
    other.create_database("app")
    topo = base_topology([primary, other])
    topo["shards"] = [{"name": "s0", "primary": primary.dsn("app"),
                       "replicas": [replica.dsn("app")]},
                      {"name": "s1", "primary": other.dsn("app")}]
    topo["tables"] = {T: {"shard_key": "id"}}  # a planner, to read the hint
    topo["health"] = {"check_interval": "100ms"}
    running = start_proxy(tmp_path_factory.mktemp("scatter"), topo, name="scatter")
    try:
        with fresh(running) as conn:
            def spread() -> list[tuple[Any, ...]]:
                return conn.execute("/* shard: all */ SELECT pg_is_in_recovery(), "
                                    "inet_server_port()").fetchall()
            wait_until(lambda: (True, replica.port) in spread(), 15,
                       "the scatter to use s0's replica")
            assert sorted(spread()) == [(False, other.port), (True, replica.port)]
            with conn.transaction():  # inside a transaction: primaries only
                assert sorted(spread()) == sorted([(False, other.port), (False, primary.port)])
        assert_clean_log(running)
    finally:
        running.stop()


def test_failover_writes_follow_the_promoted_replica(
        proxy: RunningProxy, pair: tuple[LocalPostgres, LocalPostgres]) -> None:
    """Patroni-style: the primary goes away, the replica is promoted, the old primary
    comes back as a standby; the configured topology is unchanged."""
    primary, replica = pair
    primary.stop()
    replica.promote()
    primary.demote_to_standby_of(replica)
    with fresh(proxy) as conn:
        def writes() -> bool:
            try:
                conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                             (9001,))
                return True
            except psycopg.Error:
                return False
        wait_until(writes, 15, "writes to follow the promoted host")
        assert not on_replica(conn, "/* role: primary */ SELECT pg_is_in_recovery()")
    row = replica.psql(f"SELECT count(*) FROM {T} WHERE id = 9001", dbname="app")
    assert row.strip() == "1"
    log = proxy.log()
    assert "writes now go to" in log, log[-2000:]
    m = proxy.topology["metrics"]
    with urllib.request.urlopen(f"http://{m['host']}:{m['port']}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'shardwire_failovers_total{shard="s0"} 1.0' in text
