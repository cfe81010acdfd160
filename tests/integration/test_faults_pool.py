"""Pool limits: more clients than server connections share them in transaction mode; when
none frees up within checkout_timeout the client gets 53300 naming the shard and the
settings to raise. The shard never sees more connections than the pool size."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import (
    APP_PASSWORD,
    APP_USER,
    RunningProxy,
    base_topology,
    start_proxy,
)
from tests.integration.test_faults_helpers import (
    dedicated_shard,
    no_busy_backends,
    server_backends,
    wait_backends,
)

POOL_SIZE = 2
CHECKOUT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    cluster = dedicated_shard(pg_factory, "fpool")
    cluster.psql("CREATE TABLE t (client int, n int)", dbname="app")
    return cluster


@pytest.fixture(scope="module")
def proxy(shard: LocalPostgres, tmp_path_factory) -> Iterator[RunningProxy]:
    topo = base_topology([shard], pool={"size": POOL_SIZE, "connect_timeout": 3,
                                        "checkout_timeout": CHECKOUT_TIMEOUT,
                                        "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("fpool")), topo)
    yield running
    running.stop()


class Sampler:
    """Samples the shard's connection count in the background; records the maximum."""

    def __init__(self, shard: LocalPostgres) -> None:
        self.shard = shard
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(server_backends(self.shard))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_more_clients_than_connections(proxy: RunningProxy, shard: LocalPostgres) -> None:
    clients, rounds = 5, 20
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with psycopg.connect(proxy.dsn()) as conn:
                for n in range(rounds):
                    with conn.transaction():
                        conn.execute("INSERT INTO t VALUES (%s, %s)", (i, n))
                        conn.execute("SELECT pg_sleep(0.002)")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    with Sampler(shard) as sampler:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert sampler.samples and max(sampler.samples) <= POOL_SIZE, sampler.samples
    with psycopg.connect(shard.dsn("app")) as direct:
        assert direct.execute("SELECT count(*), count(DISTINCT client) FROM t").fetchone() \
            == (clients * rounds, clients)
    wait_backends(shard, lambda n: 1 <= n <= POOL_SIZE, "idle pool connections to remain")
    assert no_busy_backends(shard)


def test_checkout_timeout(proxy: RunningProxy, shard: LocalPostgres) -> None:
    waiting = psycopg.connect(proxy.dsn(), autocommit=True)  # logged in while a slot is free
    holders = [psycopg.connect(proxy.dsn()) for _ in range(POOL_SIZE)]
    try:
        for conn in holders:
            conn.execute("SELECT 1")  # opens a transaction: holds a server connection
        assert server_backends(shard) == POOL_SIZE

        start = time.monotonic()
        with pytest.raises(psycopg.errors.TooManyConnections) as info:
            waiting.execute("SELECT 1")
        took = time.monotonic() - start
        err = info.value
        assert err.sqlstate == "53300"
        assert CHECKOUT_TIMEOUT - 0.1 <= took < CHECKOUT_TIMEOUT + 2, took
        assert err.diag.message_primary == (
            f'no server connection to shard "s0" became free within {CHECKOUT_TIMEOUT:g}s '
            f"(pool size {POOL_SIZE})")
        hint = err.diag.message_hint or ""
        assert "pool.size" in hint and "pool.checkout_timeout" in hint, hint
        # the detail says why: both connections are held by the clients in transactions
        assert err.diag.message_detail is not None
        assert err.diag.message_detail.startswith(f"{POOL_SIZE} connections in use")
        assert err.diag.severity == "ERROR"  # the client's session survives
        assert not waiting.closed

        # A client logging in now: today the login itself borrows a server (to learn the
        # session defaults), so it is refused with 53300 at startup; a proxy that logs
        # clients in without a server would refuse its first statement instead. Either
        # way: 53300 naming the shard, within checkout_timeout, and no extra connection.
        async def login() -> BaseException:
            start = time.monotonic()
            with pytest.raises(asyncpg.PostgresError) as login_info:
                conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=APP_USER,
                                             password=APP_PASSWORD, database="app", timeout=10)
                try:
                    await conn.fetchval("SELECT 1")
                finally:
                    await conn.close()
            assert time.monotonic() - start < CHECKOUT_TIMEOUT + 2
            return login_info.value

        login_err = asyncio.run(login())
        assert getattr(login_err, "sqlstate", None) == "53300", login_err
        assert 'shard "s0"' in str(login_err)
        assert server_backends(shard) == POOL_SIZE  # never more than the pool
    finally:
        for conn in holders:
            conn.rollback()
            conn.close()
    # Once the holders are done the waiting client is served again, on the same session.
    assert waiting.execute("SELECT 2").fetchone() == (2,)
    waiting.close()
    wait_backends(shard, lambda n: 1 <= n <= POOL_SIZE, "the pool back to idle")
    assert no_busy_backends(shard)


def test_waiter_gets_connection_freed_in_time(proxy: RunningProxy,
                                              shard: LocalPostgres) -> None:
    """A statement queued for a connection gets one as soon as a holder commits."""
    waiting = psycopg.connect(proxy.dsn(), autocommit=True)
    holders = [psycopg.connect(proxy.dsn()) for _ in range(POOL_SIZE)]
    try:
        for conn in holders:
            conn.execute("SELECT 1")
        timer = threading.Timer(0.3, holders[0].commit)
        timer.start()
        start = time.monotonic()
        assert waiting.execute("SELECT 3").fetchone() == (3,)
        assert 0.2 < time.monotonic() - start < CHECKOUT_TIMEOUT
        timer.join()
    finally:
        for conn in holders:
            conn.close()
        waiting.close()
    assert server_backends(shard) <= POOL_SIZE
