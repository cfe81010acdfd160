"""Graceful shutdown on SIGTERM / SIGINT, and refusing to start on an invalid topology.

On a signal the proxy stops accepting, ends idle sessions at once with FATAL 57P01, lets
sessions inside a transaction finish it (up to pool.shutdown_timeout), then ends everyone
left with 57P01 and exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from proxy.localpg import LocalPostgres
from proxy.wire import messages as m
from tests.integration.conftest import ROOT, base_topology, start_proxy
from tests.integration.test_faults_helpers import (
    RawClient,
    backend_rows,
    dedicated_shard,
    wait_backends,
    wait_until,
)

SHUTDOWN_TIMEOUT = 3.0
ADMIN_SHUTDOWN = "terminating connection due to administrator command"


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    cluster = dedicated_shard(pg_factory, "fshut")
    cluster.psql("CREATE TABLE t (tag text)", dbname="app")
    return cluster


def fatal_after(raw: RawClient) -> tuple[dict[str, str], float]:
    """Wait for the proxy's FATAL and the close; return the error and when it came."""
    raw.sock.settimeout(SHUTDOWN_TIMEOUT + 10)
    fields = raw.expect_fatal()
    return fields, time.monotonic()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown(sig: int, shard: LocalPostgres, tmp_path: Path) -> None:
    topo = base_topology([shard], pool={"size": 5, "connect_timeout": 3,
                                        "checkout_timeout": 5,
                                        "shutdown_timeout": SHUTDOWN_TIMEOUT})
    proxy = start_proxy(tmp_path, topo)
    name = signal.Signals(sig).name
    try:
        # Idle between transactions: raw (to time its FATAL) and psycopg (its error class).
        idle_raw = RawClient(proxy.host, proxy.port)
        idle_raw.startup()
        idle_pg = psycopg.connect(proxy.dsn(), autocommit=True)
        idle_pg.execute("SELECT 1")
        # Inside a transaction it will commit during the grace period.
        committer = psycopg.connect(proxy.dsn())
        committer.execute("INSERT INTO t VALUES (%s)", (f"{name}-commit-1",))
        # Inside a transaction it never finishes.
        straggler = RawClient(proxy.host, proxy.port)
        straggler.startup()
        straggler.query("BEGIN")
        straggler.query(f"INSERT INTO t VALUES ('{name}-straggler')")
        # A statement running outside a transaction block: it may finish.
        runner = psycopg.connect(proxy.dsn(), autocommit=True)
        ran: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: ran.update(row=runner.execute("SELECT pg_sleep(1), 'done'")
                                      .fetchone()))
        thread.start()
        wait_until(lambda: any("pg_sleep" in str(q) for _, _, q in backend_rows(shard)), 5,
                   "the running statement to start")

        signalled = time.monotonic()
        proxy.process.send_signal(sig)

        # The idle client is ended promptly.
        fields, when = fatal_after(idle_raw)
        assert (fields["S"], fields["C"]) == ("FATAL", "57P01"), fields
        assert fields["M"] == ADMIN_SHUTDOWN
        assert when - signalled < 1.0, when - signalled
        with pytest.raises(psycopg.errors.AdminShutdown, match=ADMIN_SHUTDOWN):
            idle_pg.execute("SELECT 1")

        # No new clients while shutting down.
        with pytest.raises(OSError):
            socket.create_connection((proxy.host, proxy.port), timeout=2).close()

        # The transaction goes on and commits within the grace period ...
        time.sleep(0.3)
        committer.execute("INSERT INTO t VALUES (%s)", (f"{name}-commit-2",))
        committer.commit()
        # ... and then, between transactions, it is ended too (a statement may still slip
        # in before the proxy's next look: keep asking until the 57P01 comes).
        def still_served() -> bool:
            committer.execute("SELECT 1")
            return False

        with pytest.raises(psycopg.OperationalError) as info:
            wait_until(still_served, 3, "the committer to be ended")
        # 57P01, unless the statement crossed the FATAL on the wire: then the proxy's close
        # of a socket with unread input resets it and the client may never read the FATAL
        # (as with Postgres itself).
        assert info.value.sqlstate in ("57P01", None), info.value
        assert committer.closed

        thread.join(5)
        assert ran.get("row") == ("", "done"), ran

        # The straggler is ended at the deadline, and its transaction rolled back.
        fields, when = fatal_after(straggler)
        assert (fields["S"], fields["C"]) == ("FATAL", "57P01"), fields
        assert SHUTDOWN_TIMEOUT - 0.2 <= when - signalled < SHUTDOWN_TIMEOUT + 2, \
            when - signalled
        assert proxy.process.wait(10) == 0, proxy.log()
        assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT + 3
    finally:
        proxy.stop(signal.SIGKILL)
        for conn in (idle_pg, committer, runner):
            conn.close()
        idle_raw.close()
        straggler.close()

    with psycopg.connect(shard.dsn("app"), autocommit=True) as direct:
        tags = {r[0] for r in direct.execute("SELECT tag FROM t WHERE tag LIKE %s",
                                             (f"{name}-%",))}
    assert tags == {f"{name}-commit-1", f"{name}-commit-2"}  # durable; straggler rolled back
    wait_backends(shard, lambda n: n == 0, "every server connection closed")
    log = proxy.log()
    assert "shardwire stopped" in log and "[BUG]" not in log, log


def test_shutdown_with_nobody_connected_is_quick(shard: LocalPostgres, tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, base_topology([shard], pool={"shutdown_timeout": 20}))
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SELECT 1")
    start = time.monotonic()
    assert proxy.stop() == 0
    assert time.monotonic() - start < 2
    wait_backends(shard, lambda n: n == 0, "the pool's connections closed")


def test_shutdown_with_a_client_that_never_started_up(shard: LocalPostgres,
                                                      tmp_path: Path) -> None:
    """A connection that has not sent its startup packet does not hold the exit back."""
    proxy = start_proxy(tmp_path, base_topology([shard], pool={"shutdown_timeout": 20}))
    with RawClient(proxy.host, proxy.port) as silent, \
            RawClient(proxy.host, proxy.port) as half:
        half.send(m.startup_message({"user": "app", "database": "app"}))
        assert half.read_message() is not None  # the SASL request: now mid-authentication
        time.sleep(0.1)
        start = time.monotonic()
        assert proxy.stop() == 0, proxy.log()
        assert time.monotonic() - start < 2
        # Both are told, as Postgres tells clients arriving during a shutdown.
        for raw in (silent, half):
            fields = raw.expect_fatal()
            assert (fields["S"], fields["C"]) == ("FATAL", "57P03"), fields
            assert fields["M"] == "the database system is shutting down"


# ------------------------------------------------------------------ invalid configuration


def valid_topology() -> dict[str, Any]:
    # Never served (every test breaks it first): fixed ports that differ from each other,
    # so only the key under test can be what makes it invalid.
    return {
        "listen": {"host": "127.0.0.1", "port": 16432},
        "database": "app",
        "metrics": {"host": "127.0.0.1", "port": 19930},
        "auth": {"method": "scram-sha-256", "users": [{"name": "app", "password": "pw"}]},
        "shards": [{"name": "s0", "primary": "postgresql://u:p@127.0.0.1:5432/app"}],
    }


def broken(path: str, value: Any) -> dict[str, Any]:
    topo = valid_topology()
    node: Any = topo
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value
    return topo


BAD_CONFIGS = {
    "pool.size": broken("pool.size", 0),
    "pool.checkout_timeout": broken("pool.checkout_timeout", "soon"),
    "auth.method": broken("auth.method", "password"),
    "auth.users[0].password": {**valid_topology(),
                               "auth": {"method": "md5", "users": [{"name": "app"}]}},
    "shards[0].primary": broken("shards.0.primary", "not a dsn"),
    "default_shard": broken("default_shard", "s9"),
    "listen.port": broken("listen.port", 70000),
}


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("key_path", sorted(BAD_CONFIGS))
def test_invalid_config_is_refused(command: str, key_path: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(BAD_CONFIGS[key_path], sort_keys=False))
    result = run_cli(command, "--config", str(path))
    assert result.returncode != 0, result
    assert key_path in result.stderr, result.stderr
    assert "invalid topology" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_valid_config_checks(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(valid_topology(), sort_keys=False))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    for command in ("check", "serve"):
        result = run_cli(command, "--config", str(tmp_path / "nope.yaml"))
        assert result.returncode != 0
        assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["check", "serve"])
def test_unreadable_tls_files(command: str, tmp_path: Path) -> None:
    topo = valid_topology()
    topo["tls"] = {"cert": str(tmp_path / "missing.crt"), "key": str(tmp_path / "missing.key")}
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2
    assert "tls.cert" in result.stderr and "missing.crt" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr

    # Files that exist but are no certificate / key.
    (tmp_path / "missing.crt").write_text("not a certificate\n")
    (tmp_path / "missing.key").write_text("not a key\n")
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2
    assert "tls: cannot load certificate" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        topo = valid_topology()
        topo["listen"]["port"] = taken.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(yaml.safe_dump(topo, sort_keys=False))
        result = run_cli("serve", "--config", str(path))
    assert result.returncode != 0
    assert str(topo["listen"]["port"]) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_session_mode_idle_client_is_ended_promptly(shard: LocalPostgres,
                                                    tmp_path: Path) -> None:
    """In session mode every client holds a server even when idle; idle still means it
    can be ended at once, only a transaction (or a running statement) earns the wait."""
    topo = base_topology([shard], pool={"mode": "session", "size": 5,
                                        "shutdown_timeout": SHUTDOWN_TIMEOUT})
    proxy = start_proxy(tmp_path, topo)
    try:
        with RawClient(proxy.host, proxy.port) as idle, \
                RawClient(proxy.host, proxy.port) as busy:
            idle.startup()
            idle.query("SET application_name = 'idle-session'")
            busy.startup()
            busy.query("BEGIN")
            signalled = time.monotonic()
            proxy.process.send_signal(signal.SIGTERM)
            fields, when = fatal_after(idle)
            assert (fields["S"], fields["C"]) == ("FATAL", "57P01"), fields
            assert when - signalled < 1.0, when - signalled
            busy.query("INSERT INTO t VALUES ('session-mode')")
            assert busy.query("COMMIT")[-1] == (m.READY_FOR_QUERY, b"I")
            fields, when = fatal_after(busy)
            assert fields["C"] == "57P01"
            assert when - signalled < SHUTDOWN_TIMEOUT - 0.5, when - signalled
        assert proxy.process.wait(10) == 0, proxy.log()
    finally:
        proxy.stop(signal.SIGKILL)
    with psycopg.connect(shard.dsn("app"), autocommit=True) as direct:
        assert direct.execute("SELECT count(*) FROM t WHERE tag = 'session-mode'"
                              ).fetchone() == (1,)
    wait_backends(shard, lambda n: n == 0, "every server connection closed")
