"""Query cancellation through the proxy: psycopg, asyncpg (statement timeout), psql
(Ctrl-C), and raw CancelRequests with a wrong key, which must do nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from proxy.wire import messages as m
from tests.integration.conftest import (
    APP_PASSWORD,
    APP_USER,
    RunningProxy,
    base_topology,
    start_proxy,
)
from tests.integration.test_faults_helpers import (
    RawClient,
    backend_rows,
    dedicated_shard,
    no_busy_backends,
    server_backends,
    wait_until,
)

POOL_SIZE = 2


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    return dedicated_shard(pg_factory, "fcancel")


@pytest.fixture(scope="module")
def proxy(shard: LocalPostgres, tmp_path_factory) -> Iterator[RunningProxy]:
    topo = base_topology([shard], pool={"size": POOL_SIZE, "connect_timeout": 3,
                                        "checkout_timeout": 5, "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("fcancel")), topo)
    yield running
    running.stop()


def sleeping(shard: LocalPostgres) -> bool:
    return any("pg_sleep" in str(q) and s == "active" for _, s, q in backend_rows(shard))


def send_cancel(proxy: RunningProxy, pid: int, key: int) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(m.cancel_request(pid, key))
        sock.settimeout(5)
        assert sock.recv(100) == b"", "a CancelRequest gets no answer, only a close"


def assert_clean(proxy: RunningProxy, shard: LocalPostgres) -> None:
    assert proxy.process.poll() is None
    wait_until(lambda: not sleeping(shard), 5, "no pg_sleep left running on the shard")
    assert server_backends(shard) <= POOL_SIZE
    assert no_busy_backends(shard)


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        start = time.monotonic()
        try:
            outcome["result"] = fn()
        except psycopg.Error as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - start

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_psycopg_cancel(how: str, proxy: RunningProxy, shard: LocalPostgres) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        thread, outcome = run_in_thread(lambda: conn.execute("SELECT pg_sleep(30)"))
        try:
            wait_until(lambda: sleeping(shard), 5, "pg_sleep to start")
            getattr(conn, how)()
            thread.join(10)
        finally:
            if thread.is_alive():
                conn.cancel()
                thread.join(10)
        err = outcome.get("error")
        assert isinstance(err, psycopg.errors.QueryCanceled), outcome
        assert err.sqlstate == "57014"
        assert "canceling statement due to user request" in str(err)
        assert outcome["took"] < 5, outcome
        # The same connection goes on working.
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
    assert_clean(proxy, shard)


def test_psycopg_cancel_inside_transaction(proxy: RunningProxy, shard: LocalPostgres) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SELECT 1")  # a transaction is open: the server stays attached
        thread, outcome = run_in_thread(lambda: conn.execute("SELECT pg_sleep(30)"))
        wait_until(lambda: sleeping(shard), 5, "pg_sleep to start")
        conn.cancel_safe()
        thread.join(10)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled), outcome
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert_clean(proxy, shard)


async def test_asyncpg_timeout_cancels(proxy: RunningProxy, shard: LocalPostgres) -> None:
    conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=APP_USER,
                                 password=APP_PASSWORD, database="app")
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await conn.execute("SELECT pg_sleep(30)", timeout=1)
        assert time.monotonic() - start < 4
        # asyncpg cancelled the statement on timeout: the connection is usable at once.
        assert await conn.fetchval("SELECT 40 + 2") == 42
        # And the server really stopped sleeping.
        await asyncio.to_thread(wait_until, lambda: not sleeping(shard), 3,
                                "the timed-out statement to stop on the shard")
    finally:
        await conn.close()
    assert_clean(proxy, shard)


def test_psql_ctrl_c(proxy: RunningProxy, shard: LocalPostgres, pg_bindir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=APP_PASSWORD, LC_MESSAGES="C")
    psql = subprocess.Popen(
        [str(pg_bindir / "psql"), "-X", "-h", proxy.host, "-p", str(proxy.port), "-U",
         APP_USER, "-d", "app", "-c", "SELECT pg_sleep(30)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        wait_until(lambda: sleeping(shard), 5, "psql's pg_sleep to start")
        start = time.monotonic()
        psql.send_signal(signal.SIGINT)  # psql turns Ctrl-C into a CancelRequest
        _, stderr = psql.communicate(timeout=10)
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    assert time.monotonic() - start < 5
    assert "canceling statement due to user request" in stderr, stderr
    assert psql.returncode == 1, (psql.returncode, stderr)
    assert_clean(proxy, shard)


@pytest.mark.parametrize("wrong", ["key", "pid", "both"])
def test_cancel_with_wrong_key_does_nothing(wrong: str, proxy: RunningProxy,
                                            shard: LocalPostgres) -> None:
    with RawClient(proxy.host, proxy.port) as raw:
        raw.startup()
        assert raw.backend_key is not None
        pid, key = raw.backend_key
        bad_pid = pid ^ 1 if wrong in ("pid", "both") else pid
        bad_key = key ^ 1 if wrong in ("key", "both") else key
        start = time.monotonic()
        raw.send(m.query("SELECT pg_sleep(1.5)"))
        wait_until(lambda: sleeping(shard), 5, "pg_sleep to start")
        send_cancel(proxy, bad_pid, bad_key)
        answer = []
        while not answer or answer[-1][0] != m.READY_FOR_QUERY:
            msg = raw.read_message()
            assert msg is not None
            answer.append(msg)
        assert time.monotonic() - start >= 1.4
        assert [t for t, _ in answer] == [m.ROW_DESCRIPTION, m.DATA_ROW, m.COMMAND_COMPLETE,
                                          m.READY_FOR_QUERY], answer
    assert_clean(proxy, shard)


def test_raw_cancel_with_the_right_key(proxy: RunningProxy, shard: LocalPostgres) -> None:
    """The contrast to the test above: the key from BackendKeyData cancels."""
    with RawClient(proxy.host, proxy.port) as raw:
        raw.startup()
        assert raw.backend_key is not None
        raw.send(m.query("SELECT pg_sleep(30)"))
        wait_until(lambda: sleeping(shard), 5, "pg_sleep to start")
        send_cancel(proxy, *raw.backend_key)
        answer = []
        while not answer or answer[-1][0] != m.READY_FOR_QUERY:
            msg = raw.read_message()
            assert msg is not None
            answer.append(msg)
        errors = [m.decode_fields(b) for t, b in answer if t == m.ERROR_RESPONSE]
        assert [e["C"] for e in errors] == ["57014"], answer
        assert answer[-1] == (m.READY_FOR_QUERY, b"I")
        assert raw.query("SELECT 1")[-1] == (m.READY_FOR_QUERY, b"I")
    assert_clean(proxy, shard)


def test_cancel_of_an_idle_client_does_not_hit_others(proxy: RunningProxy,
                                                      shard: LocalPostgres) -> None:
    """In transaction mode an idle client's last server may now run someone else's
    statement: cancelling the idle client must not cancel that."""
    with RawClient(proxy.host, proxy.port) as idle, \
            psycopg.connect(proxy.dsn(), autocommit=True) as busy:
        idle.startup()
        idle.query("SELECT 1")
        assert idle.backend_key is not None
        thread, outcome = run_in_thread(lambda: busy.execute("SELECT pg_sleep(1)"))
        wait_until(lambda: sleeping(shard), 5, "pg_sleep to start")
        send_cancel(proxy, *idle.backend_key)
        thread.join(10)
        assert "error" not in outcome, outcome
        assert outcome["took"] >= 0.9
        assert idle.query("SELECT 1")[-1] == (m.READY_FOR_QUERY, b"I")
    assert_clean(proxy, shard)


def test_late_cancel_never_hits_the_next_client(shard: LocalPostgres,
                                                tmp_path_factory) -> None:
    """Regression: a CancelRequest for client A whose statement has just finished used to
    reach the server after the pool (size 1) had handed it to client B, cancelling B's
    statement. A server with a cancel in flight is now held back until the cancel landed."""
    topo = base_topology([shard], pool={"size": 1, "connect_timeout": 3,
                                        "checkout_timeout": 10, "shutdown_timeout": 2})
    proxy = start_proxy(Path(tmp_path_factory.mktemp("fcancel1")), topo, name="pool1")
    stop = threading.Event()
    wrongly_cancelled: list[Exception] = []
    served = [0]

    def other_client() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    conn.execute("SELECT pg_sleep(0.01)")
                    served[0] += 1
                except psycopg.errors.QueryCanceled as exc:
                    wrongly_cancelled.append(exc)

    thread = threading.Thread(target=other_client)
    try:
        with RawClient(proxy.host, proxy.port) as a:
            a.startup()
            assert a.backend_key is not None
            thread.start()
            for _ in range(300):
                a.send(m.query("SELECT 1"))
                send_cancel(proxy, *a.backend_key)
                while (msg := a.read_message()) is not None and msg[0] != m.READY_FOR_QUERY:
                    pass
                assert msg is not None
    finally:
        stop.set()
        thread.join(10)
        proxy.stop()
    assert served[0] > 50
    assert wrongly_cancelled == [], f"{len(wrongly_cancelled)} of B's statements cancelled"
