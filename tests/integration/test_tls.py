"""Client-side TLS: with `tls: {cert, key}` clients can require (and verify) encryption;
without it `prefer` falls back to plaintext and `require` fails clearly. GSS encryption
requests are declined with 'N' and the client carries on."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

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
    dedicated_shard,
    no_busy_backends,
    server_backends,
)

POOL_SIZE = 2
GSSENC_REQUEST = struct.pack("!ii", 8, m.GSSENC_REQUEST)


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made with the openssl CLI
    (the `cryptography` package is not a dependency)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make a test certificate "
                    "(apt-get install openssl)", pytrace=False)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    return dedicated_shard(pg_factory, "ftls")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory) -> tuple[Path, Path]:
    return make_self_signed(Path(tmp_path_factory.mktemp("tls-cert")))


@pytest.fixture(scope="module")
def tls_proxy(shard: LocalPostgres, cert_files: tuple[Path, Path],
              tmp_path_factory) -> Iterator[RunningProxy]:
    cert, key = cert_files
    topo = base_topology([shard], tls={"cert": str(cert), "key": str(key)},
                         pool={"size": POOL_SIZE, "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("tls")), topo, name="tls")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plain_proxy(shard: LocalPostgres, tmp_path_factory) -> Iterator[RunningProxy]:
    topo = base_topology([shard], pool={"size": POOL_SIZE, "shutdown_timeout": 2})
    running = start_proxy(Path(tmp_path_factory.mktemp("plain")), topo, name="plain")
    yield running
    running.stop()


def assert_proxy_fine(proxy: RunningProxy, shard: LocalPostgres) -> None:
    assert proxy.process.poll() is None, proxy.log()
    with psycopg.connect(proxy.dsn(sslmode="prefer")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert server_backends(shard) <= 2 * POOL_SIZE  # two proxies share this shard
    assert no_busy_backends(shard)
    assert "[BUG]" not in proxy.log()


# ------------------------------------------------------------------ TLS configured


@pytest.mark.parametrize("sslmode", ["require", "prefer"])
def test_tls_connection(sslmode: str, tls_proxy: RunningProxy, shard: LocalPostgres) -> None:
    with psycopg.connect(tls_proxy.dsn(sslmode=sslmode)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # A bigger result, over several TLS records.
        (total,) = conn.execute(
            "SELECT sum(length(repeat('x', g))) FROM generate_series(1, 2000) g").fetchone()
        assert total == 2000 * 2001 // 2
    assert_proxy_fine(tls_proxy, shard)


def test_tls_verify_full(tls_proxy: RunningProxy, cert_files: tuple[Path, Path]) -> None:
    cert, _ = cert_files
    with psycopg.connect(tls_proxy.dsn(sslmode="verify-full", sslrootcert=str(cert))) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 'verified'").fetchone() == ("verified",)


def test_tls_disabled_by_client(tls_proxy: RunningProxy) -> None:
    with psycopg.connect(tls_proxy.dsn(sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_tls_asyncpg(tls_proxy: RunningProxy, cert_files: tuple[Path, Path]) -> None:
    ctx = ssl.create_default_context(cafile=str(cert_files[0]))
    conn = await asyncpg.connect(host=tls_proxy.host, port=tls_proxy.port, user=APP_USER,
                                 password=APP_PASSWORD, database="app", ssl=ctx)
    try:
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        transport = conn._transport  # asyncpg keeps no public handle on the socket
        assert transport is not None and transport.get_extra_info("sslcontext") is not None
    finally:
        await conn.close()


def test_unencrypted_data_after_ssl_request(tls_proxy: RunningProxy,
                                            shard: LocalPostgres) -> None:
    """Bytes pipelined after SSLRequest were not encrypted (maybe injected by a
    man-in-the-middle, CVE-2021-23214): refused with 08P01, as Postgres does."""
    with RawClient(tls_proxy.host, tls_proxy.port) as raw:
        raw.send(m.ssl_request() + m.startup_message({"user": APP_USER, "database": "app"}))
        fields = raw.expect_fatal()
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
    assert "unencrypted data after SSL request" in fields["M"]
    assert_proxy_fine(tls_proxy, shard)


def test_garbage_instead_of_tls_handshake(tls_proxy: RunningProxy,
                                          shard: LocalPostgres) -> None:
    with RawClient(tls_proxy.host, tls_proxy.port) as raw:
        raw.send(m.ssl_request())
        assert raw.read_byte() == b"S"
        raw.send(b"\x16\x03\x01\x00\x05hello, this is not TLS" * 10)
        assert raw.is_closed()
    with RawClient(tls_proxy.host, tls_proxy.port) as raw:
        raw.send(m.ssl_request())
        assert raw.read_byte() == b"S"  # and then the client just leaves
    assert_proxy_fine(tls_proxy, shard)


def test_gssenc_declined_then_tls(tls_proxy: RunningProxy) -> None:
    """GSSENCRequest -> 'N'; the same connection then asks for TLS and starts up."""
    sock = socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10)
    try:
        sock.sendall(GSSENC_REQUEST)
        assert sock.recv(1) == b"N"
        sock.sendall(m.ssl_request())
        assert sock.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tls = ctx.wrap_socket(sock, server_hostname="localhost")
        raw = RawClient.over(tls)
        raw.startup()
        assert raw.query("SELECT 1")[-1] == (m.READY_FOR_QUERY, b"I")
        tls.close()
    finally:
        sock.close()


# ------------------------------------------------------------------ TLS not configured


def test_prefer_falls_back_to_plaintext(plain_proxy: RunningProxy,
                                        shard: LocalPostgres) -> None:
    with psycopg.connect(plain_proxy.dsn(sslmode="prefer")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_proxy_fine(plain_proxy, shard)


def test_require_without_tls_fails_clearly(plain_proxy: RunningProxy,
                                           shard: LocalPostgres) -> None:
    with pytest.raises(psycopg.OperationalError,
                       match="server does not support SSL, but SSL was required"):
        psycopg.connect(plain_proxy.dsn(sslmode="require"), connect_timeout=10)
    with RawClient(plain_proxy.host, plain_proxy.port) as raw:
        raw.send(m.ssl_request())
        assert raw.read_byte() == b"N"
        raw.startup()  # the same connection goes on in plaintext
        assert raw.query("SELECT 1")[-1] == (m.READY_FOR_QUERY, b"I")
    assert_proxy_fine(plain_proxy, shard)


@pytest.mark.parametrize("which", ["tls", "plain"])
def test_gssencmode_prefer(which: str, tls_proxy: RunningProxy, plain_proxy: RunningProxy,
                           shard: LocalPostgres) -> None:
    proxy = tls_proxy if which == "tls" else plain_proxy
    with psycopg.connect(proxy.dsn(gssencmode="prefer")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # libpq only sends a GSSENCRequest when it holds Kerberos credentials; send one by hand.
    with RawClient(proxy.host, proxy.port) as raw:
        raw.send(GSSENC_REQUEST)
        assert raw.read_byte() == b"N"
        raw.startup()
        assert raw.query("SELECT 2")[-1] == (m.READY_FOR_QUERY, b"I")
    assert_proxy_fine(proxy, shard)


@pytest.mark.parametrize("which", ["tls", "plain"])
def test_unencrypted_data_after_gssenc_request(which: str, tls_proxy: RunningProxy,
                                               plain_proxy: RunningProxy) -> None:
    """A StartupMessage pipelined after GSSENCRequest is refused (08P01, as Postgres);
    it used to sit in the buffer unanswered until the 30 s login timeout."""
    proxy = tls_proxy if which == "tls" else plain_proxy
    with RawClient(proxy.host, proxy.port, timeout=5) as raw:
        raw.send(GSSENC_REQUEST + m.startup_message({"user": APP_USER, "database": "app"}))
        fields = raw.expect_fatal()
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
    assert "unencrypted data after GSSAPI encryption request" in fields["M"]


def test_repeated_negotiation_requests_are_refused(tls_proxy: RunningProxy,
                                                   plain_proxy: RunningProxy) -> None:
    """One GSSENCRequest and one SSLRequest at most, as Postgres: a repeat is an unknown
    protocol version (1234.5679 / 1234.5680) instead of 'N' forever."""
    for proxy, first in ((plain_proxy, GSSENC_REQUEST), (plain_proxy, m.ssl_request())):
        with RawClient(proxy.host, proxy.port, timeout=5) as raw:
            raw.send(first)
            assert raw.read_byte() == b"N"
            raw.send(first)
            fields = raw.expect_fatal()
        assert (fields["S"], fields["C"]) == ("FATAL", "0A000"), fields
        assert "unsupported frontend protocol 1234.56" in fields["M"], fields
    # Once TLS is on, GSS encryption is no longer on offer either.
    sock = socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=5)
    sock.sendall(m.ssl_request())
    assert sock.recv(1) == b"S"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with RawClient.over(ctx.wrap_socket(sock, server_hostname="localhost")) as raw:
        raw.send(GSSENC_REQUEST)
        fields = raw.expect_fatal()
    assert (fields["S"], fields["C"]) == ("FATAL", "0A000"), fields
    assert "unsupported frontend protocol 1234.5680" in fields["M"], fields
