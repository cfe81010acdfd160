"""proxy.localpg against real PostgreSQL: auth methods, password hashes, kill/restart."""

from __future__ import annotations

import socket

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
