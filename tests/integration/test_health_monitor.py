"""proxy.backend.health.HealthMonitor against a real primary + streaming replica."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from proxy.backend.health import Endpoint, HealthMonitor
from proxy.config import Dsn, Shard, parse_dsn
from proxy.localpg import LocalPostgres

SHARD = "hm"


class Pair:
    """A primary, its replica, and the shard topology over them."""

    def __init__(self, primary: LocalPostgres, replica: LocalPostgres) -> None:
        self.primary = primary
        self.replica = replica
        self.primary_dsn = parse_dsn(primary.dsn())
        self.replica_dsn = parse_dsn(replica.dsn())
        self.shard = Shard(name=SHARD, primary=self.primary_dsn, replicas=(self.replica_dsn,))


def _make_pair(pg_factory: Callable[..., LocalPostgres], prefix: str) -> Pair:
    primary = pg_factory(f"{prefix}_primary", superuser_password="hm pw")
    primary.psql("CREATE TABLE hm_t (x int)")
    replica = primary.make_replica(f"{prefix}_replica")
    return Pair(primary, replica)


@pytest.fixture(scope="module")
def pair(pg_factory: Callable[..., LocalPostgres]) -> Iterator[Pair]:
    p = _make_pair(pg_factory, "hm")
    try:
        yield p
    finally:
        p.replica.destroy()
        p.primary.destroy()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, shard: str) -> None:
        self.calls.append(shard)


@pytest.fixture
async def changes() -> Recorder:
    return Recorder()


@pytest.fixture
async def monitor(pair: Pair, changes: Recorder) -> AsyncIterator[HealthMonitor]:
    mon = HealthMonitor([pair.shard], interval=0.2, connect_timeout=2.0, on_change=changes)
    try:
        yield mon
    finally:
        await mon.close()


def _endpoint(mon: HealthMonitor, dsn: Dsn) -> Endpoint:
    (found,) = [ep for ep in mon.endpoints() if ep.dsn == dsn]
    return found


async def _rounds_until(mon: HealthMonitor, predicate: Callable[[], bool], *,
                        timeout: float = 5.0, what: str = "condition") -> None:
    """check_now every 0.1s until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while True:
        await mon.check_now()
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: "
                                 f"{mon.endpoints()}")
        await asyncio.sleep(0.1)


async def _until(predicate: Callable[[], bool], *, timeout: float = 5.0,
                 what: str = "condition") -> None:
    """Let the monitor's own loop run until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_primary_and_replica_up_and_idle_lag_zero(
        pair: Pair, monitor: HealthMonitor, changes: Recorder) -> None:
    await monitor.check_now()
    primary = _endpoint(monitor, pair.primary_dsn)
    replica = _endpoint(monitor, pair.replica_dsn)
    assert (primary.configured_role, replica.configured_role) == ("primary", "replica")
    assert primary.up and replica.up
    assert primary.in_recovery is False
    assert replica.in_recovery is True
    assert primary.address == f"127.0.0.1:{pair.primary.port}"
    assert primary.lsn is not None and replica.lsn is not None
    # Idle: the replica has replayed everything the primary had.
    await _rounds_until(monitor, lambda: replica.lag == 0.0, what="lag 0")
    assert primary.lag is None
    assert monitor.primary(SHARD) == pair.primary_dsn
    assert monitor.replicas(SHARD, max_lag=0.5) == [pair.replica_dsn]
    assert monitor.replicas(SHARD, max_lag=0.0) == [pair.replica_dsn]
    assert not monitor.is_down(SHARD, "127.0.0.1", pair.primary.port)
    assert not monitor.is_down(SHARD, "127.0.0.1", pair.replica.port)
    assert not monitor.is_down("nope", "127.0.0.1", 1)
    assert monitor.failovers[SHARD] == 0
    assert changes.calls == []


async def test_lag_grows_while_replay_is_paused(pair: Pair, monitor: HealthMonitor) -> None:
    await monitor.check_now()
    replica = _endpoint(monitor, pair.replica_dsn)
    await _rounds_until(monitor, lambda: replica.lag == 0.0, what="lag 0")

    pair.replica.psql("SELECT pg_wal_replay_pause()")
    try:
        pair.primary.psql("INSERT INTO hm_t SELECT generate_series(1, 100)")
        started = time.monotonic()
        lags: list[float] = []
        while time.monotonic() - started < 1.5:
            await monitor.check_now()
            assert replica.up and replica.lag is not None
            lags.append(replica.lag)
            listed = monitor.replicas(SHARD, max_lag=0.5)
            assert listed == ([] if replica.lag > 0.5 else [pair.replica_dsn])
            await asyncio.sleep(0.15)
        assert lags == sorted(lags), lags  # stuck replica: lag only grows
        assert lags[-1] > 0.5, lags
        assert monitor.replicas(SHARD, max_lag=0.5) == []
        assert monitor.replicas(SHARD, max_lag=60) == [pair.replica_dsn]
    finally:
        pair.replica.psql("SELECT pg_wal_replay_resume()")

    await _rounds_until(monitor, lambda: replica.lag == 0.0, what="lag back to 0")
    assert monitor.replicas(SHARD, max_lag=0.5) == [pair.replica_dsn]
    assert pair.replica.psql("SELECT count(*) FROM hm_t").strip() == "100"


async def test_killed_replica_goes_down_and_comes_back(
        pair: Pair, monitor: HealthMonitor, changes: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shardwire.health")
    await monitor.start()
    replica = _endpoint(monitor, pair.replica_dsn)
    port = pair.replica.port
    assert replica.up

    await asyncio.to_thread(pair.replica.kill)
    await _until(lambda: monitor.is_down(SHARD, "127.0.0.1", port), what="replica down")
    assert not replica.up
    assert replica.last_error and str(port) in replica.last_error
    assert replica.down_since is not None
    assert replica.in_recovery is None and replica.lag is None
    assert monitor.replicas(SHARD, max_lag=1e9) == []
    assert monitor.primary(SHARD) == pair.primary_dsn  # a replica down is no failover
    assert changes.calls == [SHARD]

    await asyncio.to_thread(pair.replica.start)
    await _until(lambda: not monitor.is_down(SHARD, "127.0.0.1", port), what="replica up")
    assert replica.down_since is None and replica.in_recovery is True
    await _until(lambda: monitor.replicas(SHARD, max_lag=1.0) == [pair.replica_dsn],
                 what="replica listed again")
    assert changes.calls == [SHARD, SHARD]
    assert monitor.failovers[SHARD] == 0

    messages = [(r.levelno, r.getMessage()) for r in caplog.records
                if r.name == "shardwire.health"]
    downs = [msg for level, msg in messages if level == logging.WARNING and "is down" in msg]
    ups = [msg for level, msg in messages if level == logging.INFO and "back up" in msg]
    assert len(downs) == 1 and f"127.0.0.1:{port}" in downs[0]
    assert len(ups) == 1


async def test_mark_down_opens_breaker_until_a_probe_succeeds(
        pair: Pair, monitor: HealthMonitor, changes: Recorder) -> None:
    await _rounds_until(monitor, lambda: monitor.replicas(SHARD, 1.0) == [pair.replica_dsn],
                        what="replica listed")
    port = pair.replica.port
    monitor.mark_down(SHARD, "127.0.0.1", port, "pool: connection refused")
    assert monitor.is_down(SHARD, "127.0.0.1", port)
    replica = _endpoint(monitor, pair.replica_dsn)
    assert replica.last_error == "pool: connection refused"
    assert monitor.replicas(SHARD, max_lag=1e9) == []
    assert changes.calls == [SHARD]
    # Again while open: no second transition.
    monitor.mark_down(SHARD, "127.0.0.1", port, "pool: still refused")
    assert changes.calls == [SHARD] and replica.last_error == "pool: still refused"
    monitor.mark_down(SHARD, "127.0.0.1", 1, "unknown endpoint: ignored")

    await monitor.check_now()  # the server is fine: the probe reconnects and succeeds
    assert not monitor.is_down(SHARD, "127.0.0.1", port)
    assert replica.up and replica.down_since is None
    assert changes.calls == [SHARD, SHARD]
    await _rounds_until(monitor, lambda: monitor.replicas(SHARD, 1.0) == [pair.replica_dsn],
                        what="replica listed again")

    # The configured primary marked down: still the primary (nobody else is writable).
    monitor.mark_down(SHARD, "127.0.0.1", pair.primary.port, "pool: timeout")
    assert monitor.is_down(SHARD, "127.0.0.1", pair.primary.port)
    assert monitor.primary(SHARD) == pair.primary_dsn
    await monitor.check_now()
    assert not monitor.is_down(SHARD, "127.0.0.1", pair.primary.port)
    assert monitor.failovers[SHARD] == 0


async def test_hung_endpoint_delays_no_other(pair: Pair, changes: Recorder) -> None:
    # A "replica" whose TCP port accepts connections (the kernel's backlog) but never
    # answers: every check of it runs into the timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent_dsn = parse_dsn(f"postgresql://postgres:x@127.0.0.1:{silent.getsockname()[1]}/db")
        shard = Shard(name=SHARD, primary=pair.primary_dsn,
                      replicas=(pair.replica_dsn, silent_dsn))
        mon = HealthMonitor([shard], interval=0.1, connect_timeout=1.0, on_change=changes)
        try:
            await mon.start()  # waits for every first check, the silent one's timeout too
            hung = _endpoint(mon, silent_dsn)
            assert not hung.up and hung.last_error is not None and "1s" in hung.last_error
            primary = _endpoint(mon, pair.primary_dsn)
            replica = _endpoint(mon, pair.replica_dsn)
            seen: set[float | None] = set()
            started = time.monotonic()
            while time.monotonic() - started < 0.8:  # inside the hung endpoint's next check
                seen.add(primary.checked_at)
                seen.add(replica.checked_at)
                await asyncio.sleep(0.02)
            assert len(seen) >= 6, seen  # both kept being checked every ~0.1s
            assert primary.up and replica.up
            assert mon.replicas(SHARD, max_lag=1.0) == [pair.replica_dsn]
            assert changes.calls == [SHARD]  # the silent endpoint went down, once
        finally:
            await mon.close()


async def test_update_keeps_unchanged_endpoints(pair: Pair, monitor: HealthMonitor) -> None:
    await monitor.check_now()
    primary = _endpoint(monitor, pair.primary_dsn)
    replica = _endpoint(monitor, pair.replica_dsn)
    # Drop the replica: the primary's Endpoint (and connection) survives.
    monitor.update([Shard(name=SHARD, primary=pair.primary_dsn)])
    assert monitor.endpoints() == [primary]
    assert monitor.replicas(SHARD, max_lag=1e9) == []
    await monitor.check_now()
    assert primary.up
    # Add it back: a new Endpoint, listed after its first rounds.
    monitor.update([pair.shard])
    assert monitor.endpoints()[0] is primary
    assert monitor.endpoints()[1] is not replica
    await _rounds_until(monitor, lambda: monitor.replicas(SHARD, 1.0) == [pair.replica_dsn],
                        what="replica listed")
    monitor.update([])
    assert monitor.endpoints() == []
    with pytest.raises(KeyError):
        monitor.primary(SHARD)


async def test_failover_to_promoted_replica(
        pg_factory: Callable[..., LocalPostgres], changes: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    fo = _make_pair(pg_factory, "hm_fo")
    mon = HealthMonitor([fo.shard], interval=0.2, connect_timeout=2.0, on_change=changes)
    try:
        await _rounds_until(mon, lambda: mon.replicas(SHARD, 1.0) == [fo.replica_dsn],
                            what="replica listed")
        assert mon.primary(SHARD) == fo.primary_dsn

        await asyncio.to_thread(fo.primary.stop)
        await mon.check_now()
        assert mon.is_down(SHARD, "127.0.0.1", fo.primary.port)
        assert mon.primary(SHARD) == fo.primary_dsn  # nobody promoted yet
        assert mon.failovers[SHARD] == 0
        assert changes.calls == [SHARD]

        caplog.set_level(logging.WARNING, logger="shardwire.health")
        await asyncio.to_thread(fo.replica.promote)
        await mon.check_now()
        assert mon.primary(SHARD) == fo.replica_dsn
        assert mon.failovers[SHARD] == 1
        assert changes.calls == [SHARD, SHARD]
        assert mon.replicas(SHARD, max_lag=1e9) == []
        assert _endpoint(mon, fo.replica_dsn).in_recovery is False
        (warning,) = [r.getMessage() for r in caplog.records if "effective primary" in r.message]
        assert SHARD in warning
        assert f"127.0.0.1:{fo.primary.port}" in warning
        assert f"127.0.0.1:{fo.replica.port}" in warning

        # The old primary comes back as a standby of the new one: the failover sticks and
        # it serves reads as a replica.
        await asyncio.to_thread(fo.primary.demote_to_standby_of, fo.replica)
        await _rounds_until(mon, lambda: mon.replicas(SHARD, 1.0) == [fo.primary_dsn],
                            what="old primary listed as a replica")
        assert mon.primary(SHARD) == fo.replica_dsn
        assert mon.failovers[SHARD] == 1
        assert _endpoint(mon, fo.primary_dsn).in_recovery is True
        assert changes.calls == [SHARD, SHARD, SHARD]  # its breaker closed
    finally:
        await mon.close()
        fo.replica.destroy()
        fo.primary.destroy()
