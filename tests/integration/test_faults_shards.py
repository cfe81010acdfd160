"""A shard that is down, silent, or dies mid-work: clients get a clear error naming the shard
within the configured timeouts, and the proxy serves again once the shard is back, without
a restart. Each test uses a cluster of its own (never the suite's shared shards)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres, free_port
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
    StartupRejected,
    backend_rows,
    dedicated_shard,
    no_busy_backends,
    server_backends,
    wait_backends,
    wait_until,
)

CONNECT_TIMEOUT = 2.0
POOL_SIZE = 2
POOL = {"size": POOL_SIZE, "connect_timeout": CONNECT_TIMEOUT, "checkout_timeout": 5,
        "shutdown_timeout": 2}


class SilentServer:
    """Accepts TCP connections and never sends a byte (a hung or black-holed shard)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture()
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def proxy_to(workdir: Path, shard_dsn: str, name: str, **overrides: Any) -> RunningProxy:
    overrides.setdefault("pool", dict(POOL))
    topo = base_topology([], **overrides)
    topo["shards"] = [{"name": "s0", "primary": shard_dsn}]
    return start_proxy(workdir, topo, name=name)


@pytest.fixture()
def stop_later() -> Iterator[list[RunningProxy]]:
    started: list[RunningProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def timed_refusal(proxy: RunningProxy) -> tuple[dict[str, str], float]:
    start = time.monotonic()
    with RawClient(proxy.host, proxy.port, timeout=CONNECT_TIMEOUT + 10) as raw:
        with pytest.raises(StartupRejected) as info:
            raw.startup()
        assert raw.is_closed()
    return info.value.fields, time.monotonic() - start


# ------------------------------------------------------------ nothing listens / no answer


def test_shard_port_not_listening(workdir: Path, stop_later: list[RunningProxy]) -> None:
    port = free_port()
    proxy = proxy_to(workdir, f"postgresql://postgres:postgres@127.0.0.1:{port}/app", "refused")
    stop_later.append(proxy)
    for _ in range(2):  # the second attempt behaves the same: nothing cached, no hang
        fields, elapsed = timed_refusal(proxy)
        assert elapsed < CONNECT_TIMEOUT + 2, elapsed
        assert fields["C"] == "08006", fields
        assert f'shard "s0" (primary 127.0.0.1:{port})' in fields["M"], fields
        assert "cannot connect" in fields["M"], fields

    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match='cannot connect to shard "s0"'):
        psycopg.connect(proxy.dsn(), connect_timeout=10)
    assert time.monotonic() - start < CONNECT_TIMEOUT + 2
    assert proxy.process.poll() is None


def test_shard_that_never_answers(workdir: Path, silent: SilentServer,
                                  stop_later: list[RunningProxy]) -> None:
    dsn = f"postgresql://postgres:postgres@127.0.0.1:{silent.port}/app"
    proxy = proxy_to(workdir, dsn, "silent")
    stop_later.append(proxy)
    fields, elapsed = timed_refusal(proxy)
    assert CONNECT_TIMEOUT - 0.2 <= elapsed < CONNECT_TIMEOUT + 2, elapsed
    assert fields["C"] == "08006", fields
    assert (f'shard "s0" (primary 127.0.0.1:{silent.port}) did not answer within '
            f"{CONNECT_TIMEOUT:g}s") in fields["M"], fields
    assert "connect_timeout" in fields.get("H", ""), fields

    async def attempt() -> tuple[Exception, float]:
        start = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as info:
            await asyncpg.connect(host=proxy.host, port=proxy.port, user=APP_USER,
                                  password=APP_PASSWORD, database="app", timeout=30)
        return info.value, time.monotonic() - start

    async def many() -> list[tuple[Exception, float]]:
        # More clients than the pool has slots: none may wait for another's attempt.
        return await asyncio.gather(*(attempt() for _ in range(2 * POOL_SIZE + 1)))

    # The first refusal opened the shard's circuit breaker: nobody waits connect_timeout
    # again while it stays down.
    for err, took in asyncio.run(many()):
        assert getattr(err, "sqlstate", None) == "08006", err
        assert f'shard "s0" is down (primary 127.0.0.1:{silent.port})' in str(err), err
        assert took < CONNECT_TIMEOUT - 0.5, took
    assert proxy.process.poll() is None


# ------------------------------------------------------------ a shard dies and comes back


@pytest.fixture(scope="module")
def crashy(pg_factory) -> Iterator[LocalPostgres]:
    cluster = dedicated_shard(pg_factory, "fcrash")
    cluster.psql("CREATE TABLE t (x int)", dbname="app")
    yield cluster
    cluster.start()  # whatever happened, leave it running for the session's teardown


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_shard_killed_and_restarted(mode: str, crashy: LocalPostgres, workdir: Path,
                                    stop_later: list[RunningProxy]) -> None:
    pool = dict(POOL, mode=mode, size=3)
    proxy = proxy_to(workdir, crashy.dsn("app"), f"crash-{mode}", pool=pool)
    stop_later.append(proxy)

    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    busy = psycopg.connect(proxy.dsn(), autocommit=True)
    assert idle.execute("SELECT 1").fetchone() == (1,)
    outcome: dict[str, Any] = {}

    def run_long() -> None:
        start = time.monotonic()
        try:
            busy.execute("SELECT pg_sleep(20)")
        except psycopg.Error as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - start

    thread = threading.Thread(target=run_long)
    thread.start()
    try:
        wait_until(lambda: any("pg_sleep" in str(q) for _, _, q in backend_rows(crashy)),
                   5, "pg_sleep to run on the shard")
        crashy.kill()
        thread.join(10)
        assert not thread.is_alive(), "the running client was left hanging"
        err = outcome.get("error")
        assert isinstance(err, psycopg.OperationalError), outcome
        assert err.sqlstate == "08006", err
        assert 'lost the connection to shard "s0"' in str(err)
        assert outcome["took"] < 10

        # The idle client: in transaction mode it held no server, so its session lives and
        # its next statement gets an ERROR while the shard is down. In session mode its
        # server died under it: it is told (FATAL 08006) and closed.
        if mode == "transaction":
            with pytest.raises(psycopg.OperationalError) as info:
                idle.execute("SELECT 1")
            assert info.value.sqlstate == "08006", info.value
            assert 'cannot connect to shard "s0"' in str(info.value)
            assert not idle.closed
        else:
            with pytest.raises(psycopg.OperationalError) as info:
                idle.execute("SELECT 1")
            # The shard's own FATAL (forwarded verbatim) or the proxy's 08006, whichever
            # libpq reads first.
            assert info.value.sqlstate in ("57P01", "08006"), info.value
            assert ('lost the connection to shard "s0"' in str(info.value)
                    or "unexpected postmaster exit" in str(info.value)), info.value
            assert idle.closed
            idle.close()

        # New clients are refused quickly and clearly while the shard is down.
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match='cannot connect to shard "s0"'):
            psycopg.connect(proxy.dsn(), connect_timeout=10)
        assert time.monotonic() - start < CONNECT_TIMEOUT + 2
    finally:
        crashy.start()
        thread.join(10)

    assert proxy.process.poll() is None, proxy.log()
    if mode == "transaction":
        # Same client, no reconnect: served again once a health check (every second)
        # has seen the shard back; until then the breaker answers 08006 at once.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert idle.execute("SELECT 2").fetchone() == (2,)
                break
            except psycopg.OperationalError as exc:
                assert exc.sqlstate == "08006" and "is down" in str(exc), exc
                assert time.monotonic() < deadline, "the shard was not served again"
                time.sleep(0.1)
    idle.close()
    busy.close()
    wait_until(lambda: _serves(proxy), 10, "the shard to be served again")
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT count(*) >= 1 FROM t").fetchone() == (True,)
    wait_backends(crashy, lambda n: 1 <= n <= 3, "the pool's connections, within its size")
    assert no_busy_backends(crashy)
    assert "[BUG]" not in proxy.log()


def test_shard_killed_while_client_waits_in_transaction(
        crashy: LocalPostgres, workdir: Path, stop_later: list[RunningProxy]) -> None:
    """Inside a transaction, between statements: the client hears of the loss at once
    (FATAL 08006), before it sends anything."""
    proxy = proxy_to(workdir, crashy.dsn("app"), "crash-tx")
    stop_later.append(proxy)
    with RawClient(proxy.host, proxy.port) as raw:
        raw.startup()
        raw.query("BEGIN")
        raw.query("INSERT INTO t VALUES (99)")
        try:
            crashy.kill()
            messages = raw.read_until_closed()
        finally:
            crashy.start()
    errors = [m.decode_fields(body) for mtype, body in messages if mtype == m.ERROR_RESPONSE]
    assert errors and len(errors) == len(messages), messages
    # The server's own last words (57P01 "unexpected postmaster exit") may come through
    # first; the proxy's own FATAL 08006 names the shard and ends the session.
    assert all(e["S"] == "FATAL" for e in errors), errors
    assert [e["C"] for e in errors[:-1]] in ([], ["57P01"]), errors
    assert errors[-1]["C"] == "08006", errors
    assert 'lost the connection to shard "s0"' in errors[-1]["M"]
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM t WHERE x = 99").fetchone() == (0,)
    assert server_backends(crashy) <= POOL_SIZE


def _serves(proxy: RunningProxy) -> bool:
    try:
        with psycopg.connect(proxy.dsn(), connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False
