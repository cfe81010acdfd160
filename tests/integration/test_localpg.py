"""proxy.localpg against real PostgreSQL: auth methods, password hashes, kill/restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import psycopg
import pytest

from proxy.localpg import LocalPostgres, PsqlError

PASSWORD = "s3cret 'pw'@:/"

EXPECTED_HASH = {
    "trust": ("scram-sha-256", "SCRAM-SHA-256$"),
    "scram-sha-256": ("scram-sha-256", "SCRAM-SHA-256$"),
    "md5": ("md5", "md5"),
}


@pytest.mark.parametrize("auth", sorted(EXPECTED_HASH))
def test_auth_methods(pg_factory, auth: str) -> None:
    cluster: LocalPostgres = pg_factory(f"auth-{auth}", auth=auth, superuser_password=PASSWORD)
    encryption, prefix = EXPECTED_HASH[auth]

    with psycopg.connect(cluster.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW password_encryption").fetchone() == (encryption,)
        (rolpassword,) = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"
        ).fetchone()
        assert rolpassword.startswith(prefix)
        methods = {
            row[0]
            for row in conn.execute("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
        }
        assert methods == {auth}
        assert conn.execute("SHOW fsync").fetchone() == ("off",)

    wrong = cluster.dsn(password="wrong")
    if auth == "trust":
        with psycopg.connect(wrong, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    else:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=10)


def test_psql_and_create_database(pg_factory) -> None:
    cluster: LocalPostgres = pg_factory("psql")
    cluster.create_database("my db")
    out = cluster.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);", dbname="my db")
    assert out == ""
    assert cluster.psql("SELECT x FROM t ORDER BY x", dbname="my db").split() == ["1", "2"]
    with psycopg.connect(cluster.dsn("my db"), connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    with pytest.raises(PsqlError, match="no_such_table"):
        cluster.psql("SELECT * FROM no_such_table")


def test_kill_then_port_refuses_and_restart(pg_factory) -> None:
    cluster: LocalPostgres = pg_factory("killme")
    with psycopg.connect(cluster.dsn(), connect_timeout=10) as conn:
        conn.execute("SELECT 1")

    cluster.kill()

    assert not cluster.is_running()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((cluster.host, cluster.port), timeout=5).close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(), connect_timeout=5)

    # Crash recovery: the same cluster comes back up.
    cluster.start()
    with psycopg.connect(cluster.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_shard_clusters(shard_clusters) -> None:
    assert [c.name for c in shard_clusters] == ["s0", "s1"]
    assert len({c.port for c in shard_clusters}) == 2
    for cluster in shard_clusters:
        with psycopg.connect(cluster.dsn("app"), connect_timeout=10) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("app",)


def _poll(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _count(cluster: LocalPostgres) -> int:
    return int(cluster.psql("SELECT count(*) FROM repl_t").strip())


def test_replica_streams_is_read_only_and_promotes(pg_factory) -> None:
    primary: LocalPostgres = pg_factory("repl-primary", superuser_password=PASSWORD)
    primary.psql("CREATE TABLE repl_t (x int)")
    replica = primary.make_replica("repl-replica")
    try:
        assert replica.port != primary.port
        assert replica.superuser_password == primary.superuser_password
        assert replica.is_running()
        assert replica.is_in_recovery() and not primary.is_in_recovery()
        assert f"port = '{replica.port}'" in (replica.datadir / "shardwire.conf").read_text()
        assert primary.psql("SHOW hot_standby").strip() == "on"

        # Streaming: a row inserted on the primary shows up on the replica.
        primary.psql("INSERT INTO repl_t VALUES (1)")
        _poll(lambda: _count(replica) == 1, what="the row on the replica")
        state = primary.psql("SELECT application_name, state FROM pg_stat_replication")
        assert state.strip() == "repl-replica|streaming"

        # Hot standby: reads work over TCP with the primary's password; writes fail.
        with psycopg.connect(replica.dsn(), connect_timeout=10, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
                conn.execute("INSERT INTO repl_t VALUES (2)")
            assert info.value.sqlstate == "25006"

        # Failover: stop the primary, promote the replica; it takes writes.
        primary.stop()
        replica.promote()
        assert not replica.is_in_recovery()
        with psycopg.connect(replica.dsn(), connect_timeout=10, autocommit=True) as conn:
            conn.execute("INSERT INTO repl_t VALUES (2)")
        assert _count(replica) == 2

        # The old primary rejoins as a standby of the new one (clean stop: no fork).
        primary.demote_to_standby_of(replica)
        assert primary.is_in_recovery()
        _poll(lambda: _count(primary) == 2, what="the old primary to catch up")
        with pytest.raises(PsqlError, match="read-only transaction"):
            primary.psql("INSERT INTO repl_t VALUES (3)")
    finally:
        replica.destroy()
        primary.destroy()
