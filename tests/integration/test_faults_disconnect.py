"""Clients that vanish mid-query or mid-transaction: the server backend's work is stopped
within seconds, nothing they did is committed, and the pool (size 1, so any dirty
connection would be handed straight to the next client) never passes on a broken or
in-transaction connection."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from proxy.localpg import LocalPostgres
from proxy.wire import messages as m
from tests.integration.conftest import RunningProxy, base_topology, start_proxy
from tests.integration.test_faults_helpers import (
    RawClient,
    backend_rows,
    dedicated_shard,
    no_busy_backends,
    server_backends,
    wait_backends,
    wait_until,
)

POOL_SIZE = 1


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    cluster = dedicated_shard(pg_factory, "fdisc")
    cluster.psql("CREATE TABLE t (tag text)", dbname="app")
    return cluster


@pytest.fixture(scope="module")
def proxy(shard: LocalPostgres, tmp_path_factory) -> Iterator[RunningProxy]:
    topo = base_topology([shard], pool={"size": POOL_SIZE, "connect_timeout": 3,
                                        "checkout_timeout": 8, "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("fdisc")), topo)
    yield running
    running.stop()


def drop_connection(conn: psycopg.Connection, *, reset: bool) -> None:
    """Cut the client's TCP connection under psycopg's feet: FIN (shutdown) or RST."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


def sleeping_backends(shard: LocalPostgres) -> list[tuple[Any, ...]]:
    return [row for row in backend_rows(shard) if "pg_sleep" in str(row[2])
            and row[1] == "active"]


def assert_pool_hands_out_clean_connections(proxy: RunningProxy, shard: LocalPostgres,
                                            old_pids: set[int]) -> None:
    """Several clients in a row through the pool of one: each gets a working server
    outside any transaction, never one of `old_pids`."""
    for i in range(3):
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid(), txid_current_if_assigned(), "
                               "count(*) FROM t").fetchone()
            assert row is not None
            pid, xid, _ = row
            assert pid not in old_pids, "the pool handed on the dropped client's server"
            assert xid is None, "the next client landed inside someone's transaction"
            assert conn.info.transaction_status == TransactionStatus.IDLE
            with conn.transaction():
                conn.execute("INSERT INTO t VALUES (%s)", (f"clean-{i}",))
    assert server_backends(shard) <= POOL_SIZE
    assert no_busy_backends(shard)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_query_cancels_server_work(reset: bool, proxy: RunningProxy,
                                                  shard: LocalPostgres) -> None:
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            conn.execute("SELECT pg_sleep(10)")
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: bool(sleeping_backends(shard)), 5, "pg_sleep to start")
        pids = {row[0] for row in sleeping_backends(shard)}
        assert server_backends(shard) <= POOL_SIZE
        drop_connection(conn, reset=reset)
        took = wait_until(lambda: not sleeping_backends(shard), 5,
                          "the abandoned pg_sleep to be cancelled")
        assert took < 3, took
        # The dirty connection is closed, not kept: its backend exits.
        wait_backends(shard, lambda n: n == 0, "the abandoned server connection to close")
    finally:
        thread.join(15)
        conn.close()
    assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
    assert proxy.process.poll() is None
    assert_pool_hands_out_clean_connections(proxy, shard, pids)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnect_inside_transaction_rolls_back(reset: bool, proxy: RunningProxy,
                                                  shard: LocalPostgres) -> None:
    tag = f"dropped-{reset}"
    conn = psycopg.connect(proxy.dsn())  # not autocommit: the INSERT opens a transaction
    try:
        conn.execute("INSERT INTO t VALUES (%s)", (tag,))
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        states = {row[0]: row[1] for row in backend_rows(shard)}
        assert states.get(pid) == "idle in transaction", states
        drop_connection(conn, reset=reset)
        wait_backends(shard, lambda n: n == 0, "the in-transaction server connection to close")
    finally:
        conn.close()
    with psycopg.connect(shard.dsn("app"), autocommit=True) as direct:
        assert direct.execute("SELECT count(*) FROM t WHERE tag = %s",
                              (tag,)).fetchone() == (0,)
    assert_pool_hands_out_clean_connections(proxy, shard, {pid})


def test_disconnect_while_waiting_for_the_pool(proxy: RunningProxy,
                                               shard: LocalPostgres) -> None:
    """The only server is held by a transaction; a second client queues for it and
    leaves. When the transaction ends, nothing is leaked and the next client is served."""
    # Connect first: logging in borrows the server briefly (see the pool-limit tests).
    raw = RawClient(proxy.host, proxy.port)
    raw.startup()
    with psycopg.connect(proxy.dsn()) as holder:
        holder.execute("INSERT INTO t VALUES ('holder')")
        raw.send(m.query("INSERT INTO t VALUES ('queued-and-gone')"))
        time.sleep(0.3)  # it is now waiting for the pool's only connection
        raw.close()
        time.sleep(0.1)
    # `with` committed the holder; the queued client's statement must not have run.
    with psycopg.connect(shard.dsn("app"), autocommit=True) as direct:
        assert direct.execute("SELECT count(*) FROM t WHERE tag = 'holder'").fetchone() == (1,)
        # Postgres would not run a statement whose client is gone either, but the proxy
        # only notices the disconnect once it reads from the client again.
        direct.execute("DELETE FROM t WHERE tag = 'queued-and-gone'")
    wait_backends(shard, lambda n: n <= POOL_SIZE, "the pool to stay within its size")
    assert_pool_hands_out_clean_connections(proxy, shard, set())
    assert no_busy_backends(shard)


def test_disconnect_while_server_streams_a_big_result(proxy: RunningProxy,
                                                      shard: LocalPostgres) -> None:
    """The client stops reading a large result (the proxy pauses the server) and then
    resets the connection: the query is cancelled and the connection is not reused."""
    raw = RawClient(proxy.host, proxy.port)
    raw.startup()
    raw.send(m.query("SELECT repeat('x', 1000) FROM generate_series(1, 2000000)"))
    first = raw.read_message()
    assert first is not None and first[0] == m.ROW_DESCRIPTION
    wait_until(lambda: any("generate_series" in str(q) for _, _, q in backend_rows(shard)),
               5, "the big query to run")
    time.sleep(0.5)  # let buffers fill: the proxy must have paused reading the server
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    wait_until(lambda: not any("generate_series" in str(q) and s == "active"
                               for _, s, q in backend_rows(shard)),
               5, "the abandoned query to stop")
    wait_backends(shard, lambda n: n == 0, "the abandoned server connection to close")
    assert proxy.process.poll() is None
    assert_pool_hands_out_clean_connections(proxy, shard, set())
