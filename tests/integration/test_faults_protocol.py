"""Malformed client bytes: each gets a FATAL ErrorResponse (08P01 where Postgres sends one),
the connection closes, no server connection leaks, and the proxy and a concurrent psycopg
client keep working."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from proxy.wire import messages as m
from tests.integration.conftest import RunningProxy, base_topology, start_proxy
from tests.integration.test_faults_helpers import (
    RawClient,
    dedicated_shard,
    no_busy_backends,
    rows_of,
    server_backends,
    wait_backends,
)

POOL_SIZE = 2


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    cluster = dedicated_shard(pg_factory, "fproto")
    cluster.psql("CREATE TABLE marks (tag text)", dbname="app")
    return cluster


@pytest.fixture(scope="module")
def proxy(shard: LocalPostgres, tmp_path_factory) -> Iterator[RunningProxy]:
    topo = base_topology([shard], pool={"mode": "transaction", "size": POOL_SIZE,
                                        "connect_timeout": 3, "checkout_timeout": 5,
                                        "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("fproto")), topo)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bystander(proxy: RunningProxy) -> Iterator[psycopg.Connection]:
    """A well-behaved client connected for the whole module."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        yield conn


_log_start = [0]


@pytest.fixture(autouse=True)
def log_start(request: pytest.FixtureRequest) -> None:
    """Where the proxy's log stood when the test began: each test checks its own part."""
    if "proxy" in request.fixturenames:
        _log_start[0] = len(request.getfixturevalue("proxy").log())


def assert_healthy(proxy: RunningProxy, bystander: psycopg.Connection,
                   shard: LocalPostgres) -> None:
    assert proxy.process.poll() is None, proxy.log()
    assert bystander.execute("SELECT 40 + 2").fetchone() == (42,)
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
    # No leak: at most the pool size, and nothing left running or inside a transaction.
    wait_backends(shard, lambda n: n <= POOL_SIZE, f"at most {POOL_SIZE} server connections")
    assert no_busy_backends(shard)
    log = proxy.log()[_log_start[0]:]
    assert "[BUG]" not in log and "unexpected error" not in log, log


STARTUP_GARBAGE = {
    # An HTTP request: its first 4 bytes read as a length of ~1.2 GB.
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "08P01", "invalid startup packet length"),
    "too-short": (b"\x00\x00\x00\x04", "08P01", "invalid startup packet length"),
    # Postgres answers an unknown protocol version with 0A000 (feature not supported).
    "bad-version": (struct.pack("!ii", 16, 0x12345678) + b"\x00" * 8, "0A000",
                    "unsupported frontend protocol 4660.22136"),
    # A v3 StartupMessage whose parameter list is not terminated.
    "no-terminator": (struct.pack("!ii", 16, m.PROTOCOL_V3) + b"user\x00app",
                      "08P01", "invalid startup packet layout"),
    "odd-parameters": (struct.pack("!ii", 14, m.PROTOCOL_V3) + b"user\x00\x00",
                       "08P01", "invalid startup packet layout"),
    "short-cancel": (struct.pack("!ii", 12, m.CANCEL_REQUEST) + b"\x00" * 4, "08P01",
                     "invalid length of cancel request packet"),
}


@pytest.mark.parametrize("name", sorted(STARTUP_GARBAGE))
def test_garbage_startup_packet(name: str, proxy: RunningProxy, bystander: psycopg.Connection,
                                shard: LocalPostgres) -> None:
    payload, sqlstate, text = STARTUP_GARBAGE[name]
    with RawClient(proxy.host, proxy.port) as raw:
        raw.send(payload)
        fields = raw.expect_fatal()
    assert fields["S"] == "FATAL"
    assert fields["C"] == sqlstate, fields
    assert text in fields["M"], fields
    assert_healthy(proxy, bystander, shard)


def test_startup_packet_then_disconnect(proxy: RunningProxy, bystander: psycopg.Connection,
                                        shard: LocalPostgres) -> None:
    """Half a startup packet, then gone: nothing to answer, nothing breaks."""
    packet = m.startup_message({"user": "app", "database": "app"})
    with RawClient(proxy.host, proxy.port) as raw:
        raw.send(packet[: len(packet) // 2])
    assert_healthy(proxy, bystander, shard)


# After startup. Each entry: raw bytes, expected message text.
BAD_FRAMES = {
    "length-over-1GiB": (b"Q" + struct.pack("!I", 0x40000000 + 5) + b"SELECT 1\x00",
                         "invalid message length 1073741829"),
    "length-max": (b"Q\xff\xff\xff\xff", "invalid message length 4294967295"),
    "length-below-4": (b"Q\x00\x00\x00\x03", "invalid message length 3"),
    "length-zero": (b"P\x00\x00\x00\x00", "invalid message length 0"),
    "invalid-type": (b"z\x00\x00\x00\x04", "invalid frontend message type 122"),
    "nul-type": (b"\x00\x00\x00\x00\x04", "invalid frontend message type 0"),
    # 'p' (PasswordMessage / SASLResponse) is only valid during authentication.
    "password-after-auth": (m.password_message(b"secret\x00"),
                            "invalid frontend message type 112"),
}


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "in-transaction"])
@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_frame_after_startup(name: str, in_transaction: bool, proxy: RunningProxy,
                                 bystander: psycopg.Connection, shard: LocalPostgres) -> None:
    payload, text = BAD_FRAMES[name]
    tag = f"{name}-{in_transaction}"
    with RawClient(proxy.host, proxy.port) as raw:
        raw.startup()
        if in_transaction:
            raw.query("BEGIN")
            answer = raw.query(f"INSERT INTO marks VALUES ('{tag}')")
            assert answer[-1] == (m.READY_FOR_QUERY, b"T"), answer
            assert server_backends(shard) <= POOL_SIZE
        raw.send(payload)
        fields = raw.expect_fatal()
    assert fields["S"] == "FATAL", fields
    assert fields["C"] == "08P01", fields
    assert text in fields["M"], fields
    assert_healthy(proxy, bystander, shard)
    # The open transaction died with the client: its insert is not there.
    assert bystander.execute("SELECT count(*) FROM marks WHERE tag = %s",
                             (tag,)).fetchone() == (0,)


@pytest.mark.parametrize("cut", [1, 3, 5, 9])
def test_half_message_then_disconnect(cut: int, proxy: RunningProxy,
                                      bystander: psycopg.Connection,
                                      shard: LocalPostgres) -> None:
    """Inside a transaction, send the first `cut` bytes of a Query and vanish."""
    tag = f"half-{cut}"
    with RawClient(proxy.host, proxy.port) as raw:
        raw.startup()
        raw.query("BEGIN")
        raw.query(f"INSERT INTO marks VALUES ('{tag}')")
        raw.send(m.query("COMMIT")[:cut])
    wait_backends(shard, lambda n: n <= POOL_SIZE, "server connections back within the pool")
    assert_healthy(proxy, bystander, shard)
    assert bystander.execute("SELECT count(*) FROM marks WHERE tag = %s",
                             (tag,)).fetchone() == (0,)


def test_raw_client_after_faults_sees_clean_server(proxy: RunningProxy,
                                                   shard: LocalPostgres) -> None:
    """After all the faults above, a fresh client is handed a server outside any
    transaction (`now()` moves between statements only outside a transaction block)."""
    with RawClient(proxy.host, proxy.port) as raw:
        raw.startup()
        first = rows_of(raw.query("SELECT now()::text"))
        second = rows_of(raw.query("SELECT pg_sleep(0.01), now()::text"))
        assert first[0][0] != second[0][1]
        answer = raw.query("SELECT 1")
        assert answer[-1] == (m.READY_FOR_QUERY, b"I")
    assert server_backends(shard) <= POOL_SIZE


@pytest.mark.parametrize("version", ["3.2", "latest"])
def test_newer_protocol_minor_is_negotiated_down(version: str, proxy: RunningProxy) -> None:
    """libpq 18 with max_protocol_version=3.2 (or latest): Postgres answers with
    NegotiateProtocolVersion and serves 3.0; the proxy used to refuse the connection."""
    with psycopg.connect(proxy.dsn(max_protocol_version=version)) as conn:
        assert conn.pgconn.protocol_version == 3
        assert conn.execute("SELECT 'negotiated'").fetchone() == ("negotiated",)


def test_negotiate_protocol_version_message(proxy: RunningProxy) -> None:
    """3.2 plus a protocol option: one NegotiateProtocolVersion naming 3.0 and the option,
    then authentication goes on as usual."""
    params = {"user": "app", "database": "app", "_pq_.some_option": "on"}
    body = struct.pack("!i", (3 << 16) | 2) + b"".join(
        m.cstr(k) + m.cstr(v) for k, v in params.items()) + b"\x00"
    with RawClient(proxy.host, proxy.port) as raw:
        raw.send(struct.pack("!i", len(body) + 4) + body)
        first = raw.read_message()
        assert first is not None and first[0] == m.NEGOTIATE_PROTOCOL, first
        newest, count = struct.unpack_from("!ii", first[1], 0)
        assert (newest, count) == (m.PROTOCOL_V3, 1)
        assert m.read_cstr(first[1], 8)[0] == "_pq_.some_option"
        second = raw.read_message()
        assert second is not None and second[0] == m.AUTHENTICATION


# Well-framed messages whose bodies are malformed. Postgres answers each with an ERROR
# 08P01 (the session survives; in the extended protocol, after the next Sync).
MALFORMED_BODIES = {
    "query-no-nul": ([m.message(m.QUERY, b"SELECT 1")], "invalid string in message", True),
    "query-empty": ([m.message(m.QUERY, b"")], "invalid string in message", True),
    "query-extra": ([m.message(m.QUERY, b"SELECT 1\x00junk")], "invalid message format",
                    False),
    "parse-no-nul": ([m.message(m.PARSE, b"s1\x00SELECT 1") + m.SYNC_MSG],
                     "invalid string in message", True),
    "parse-empty": ([m.message(m.PARSE, b"") + m.SYNC_MSG], "invalid string in message", True),
    "bind-truncated": ([m.message(m.BIND, b"\x00") + m.SYNC_MSG], "invalid string in message",
                       False),
    "describe-empty": ([m.message(m.DESCRIBE, b""), m.SYNC_MSG], "no data left in message",
                       True),
    "close-empty": ([m.message(m.CLOSE, b"") + m.SYNC_MSG], "no data left in message", True),
    "close-unterminated": ([m.message(m.CLOSE, b"Sname") + m.SYNC_MSG],
                           "invalid string in message", True),
    "execute-empty": ([m.message(m.EXECUTE, b"") + m.SYNC_MSG], "invalid string in message",
                      False),
    "function-call-empty": ([m.message(m.FUNCTION_CALL, b"")],
                            "insufficient data left in message", False),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_BODIES))
def test_malformed_message_body(name: str, proxy: RunningProxy, bystander: psycopg.Connection,
                                shard: LocalPostgres) -> None:
    chunks, text, _ = MALFORMED_BODIES[name]
    with RawClient(proxy.host, proxy.port, timeout=5) as raw:
        raw.startup()
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.2)  # a separate read: the bad message ends the first one
            raw.send(chunk)
        answer = []
        while not answer or answer[-1][0] != m.READY_FOR_QUERY:
            msg = raw.read_message()
            assert msg is not None, f"connection closed after {answer!r}"
            answer.append(msg)
        errors = [m.decode_fields(b) for t, b in answer if t == m.ERROR_RESPONSE]
        assert len(errors) == 1, answer
        assert (errors[0]["S"], errors[0]["C"], errors[0]["M"]) == ("ERROR", "08P01", text)
        assert answer[-1] == (m.READY_FOR_QUERY, b"I")
        assert rows_of(raw.query("SELECT 'still here'")) == [[b"still here"]]
    assert_healthy(proxy, bystander, shard)
