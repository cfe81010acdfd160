"""Very large messages in either direction (a 128 MB parameter, a 128 MB result row) pass
through intact and never stall the proxy's event loop for the other clients.

This bounds a hang, not performance: buffering a large message used to re-copy the whole
partial message on every 64 KB read (quadratic: 4 s at 32 MB, over a minute at 128 MB).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import RunningProxy, base_topology, start_proxy
from tests.integration.test_faults_helpers import (
    dedicated_shard,
    no_busy_backends,
    server_backends,
)

POOL_SIZE = 3
SIZE = 128 * 1024 * 1024
MAX_STALL = 3.0  # seconds a bystander's SELECT 1 may take while the big message flows
MAX_TIME = 20.0  # for the big statement; about 1 s when buffering is linear, over 60 s if not


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    return dedicated_shard(pg_factory, "flarge")


@pytest.fixture(scope="module")
def proxy(shard: LocalPostgres, tmp_path_factory) -> Iterator[RunningProxy]:
    topo = base_topology([shard], pool={"size": POOL_SIZE, "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("flarge")), topo)
    yield running
    running.stop()


PINGER = """
import os, sys, time
import psycopg
dsn, stop_file = sys.argv[1], sys.argv[2]
worst, count = 0.0, 0
with psycopg.connect(dsn, autocommit=True) as conn:
    while not os.path.exists(stop_file):
        start = time.monotonic()
        conn.execute("SELECT 1")
        worst = max(worst, time.monotonic() - start)
        count += 1
        time.sleep(0.02)
print(worst, count)
"""


def with_bystander(proxy: RunningProxy, work: Callable[[], None], tmp_path: Path) -> float:
    """Run `work` while another client pings from its own process (so this process's GIL
    does not count); return the slowest ping."""
    stop_file = tmp_path / "stop"
    pinger = subprocess.Popen([sys.executable, "-c", PINGER, proxy.dsn(), str(stop_file)],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        work()
    finally:
        stop_file.touch()
        out, _ = pinger.communicate(timeout=30)
    assert pinger.returncode == 0
    worst, count = out.split()
    assert int(count) > 0
    return float(worst)


def test_large_message_from_client(proxy: RunningProxy, shard: LocalPostgres,
                                   tmp_path: Path) -> None:
    big = "ab" * (SIZE // 2)
    result: list[object] = []

    def work() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            result.append(conn.execute("SELECT length(x), md5(x) FROM (SELECT %s::text AS x) s",
                                       (big,)).fetchone())

    start = time.monotonic()
    stall = with_bystander(proxy, work, tmp_path)
    assert time.monotonic() - start < MAX_TIME
    assert result == [(SIZE, hashlib.md5(big.encode()).hexdigest())]
    assert stall < MAX_STALL, f"the proxy stalled other clients for {stall:.1f}s"
    assert server_backends(shard) <= POOL_SIZE
    assert no_busy_backends(shard)


def test_large_row_from_server(proxy: RunningProxy, shard: LocalPostgres,
                               tmp_path: Path) -> None:
    result: list[object] = []

    def work() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            (value,) = conn.execute("SELECT repeat('xy', %s)", (SIZE // 2,)).fetchone() or ("",)
            result.append((len(value), value[:4], value[-4:]))

    start = time.monotonic()
    stall = with_bystander(proxy, work, tmp_path)
    assert time.monotonic() - start < MAX_TIME
    assert result == [(SIZE, "xyxy", "xyxy")]
    assert stall < MAX_STALL, f"the proxy stalled other clients for {stall:.1f}s"
    assert server_backends(shard) <= POOL_SIZE
    assert no_busy_backends(shard)
