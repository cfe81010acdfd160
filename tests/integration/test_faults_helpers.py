"""Shared helpers for the fault, TLS and shutdown tests (this module holds no tests).

* `RawClient`: a socket-level Postgres client, for tests whose point is the exact bytes
  (malformed messages, startup packets, reading an ErrorResponse's fields).
* `server_backends` / `wait_backends`: count the shard's client backends in database `app`
  directly on the cluster (never through the proxy), to prove no server connection leaks.
* `dedicated_shard`: a cluster of the test module's own, so its connection counts are not
  disturbed by the other modules' proxies.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import psycopg

from proxy.localpg import LocalPostgres
from proxy.wire import messages as m
from proxy.wire.auth import ScramClient, md5_password_hash
from tests.integration.conftest import APP_PASSWORD, APP_USER


def dedicated_shard(pg_factory: Callable[..., LocalPostgres], name: str) -> LocalPostgres:
    cluster = pg_factory(name, auth="scram-sha-256", superuser_password="postgres")
    cluster.create_database("app")
    return cluster


def _activity_filter(user: str | None) -> tuple[str, tuple[str, ...]]:
    # the proxy's own connections (health checks, its two-phase commit run lock) are not
    # server connections of the pools
    where = ("datname = 'app' AND backend_type = 'client backend' "
             "AND application_name NOT LIKE 'shardwire %%'")
    if user is None:
        return where, ()
    return where + " AND usename = %s", (user,)


def server_backends(cluster: LocalPostgres, user: str | None = None) -> int:
    """Client backends connected to database `app` on `cluster` (asked on database postgres,
    so the asking connection is not counted); only those of role `user` if given."""
    where, args = _activity_filter(user)
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT count(*) FROM pg_stat_activity WHERE {where}",
                           args).fetchone()
    assert row is not None
    return int(row[0])


def backend_rows(cluster: LocalPostgres, user: str | None = None) -> list[tuple[Any, ...]]:
    """(pid, state, query) of every client backend in database `app` (of role `user`)."""
    where, args = _activity_filter(user)
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
        return conn.execute(
            f"SELECT pid, state, query FROM pg_stat_activity WHERE {where}", args).fetchall()


def create_server_role(cluster: LocalPostgres, role: str, password: str = "pw") -> str:
    """A login role for one proxy's server connections, so counts can tell proxies apart;
    returns a shard DSN for it."""
    cluster.psql(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
    return cluster.dsn("app", user=role, password=password)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> float:
    """Poll `predicate` until true; return the seconds it took, fail naming `what`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_backends(cluster: LocalPostgres, check: Callable[[int], bool], what: str,
                  timeout: float = 5.0, user: str | None = None) -> int:
    """Wait until the shard's backend count satisfies `check`; return that count."""
    seen: list[int] = []

    def ok() -> bool:
        seen.append(server_backends(cluster, user))
        return check(seen[-1])

    try:
        wait_until(ok, timeout, what, interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; backend counts seen: {seen[-10:]}; "
                             f"backends: {backend_rows(cluster, user)}") from None
    return seen[-1]


def no_busy_backends(cluster: LocalPostgres, user: str | None = None) -> bool:
    """True when every `app` backend is plain idle (none active / idle in transaction)."""
    return all(state == "idle" for _, state, _ in backend_rows(cluster, user))


class StartupRejected(AssertionError):
    """The proxy answered the startup with an ErrorResponse; `fields` holds it decoded."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"startup failed: {fields}")
        self.fields = fields


class RawClient:
    """A blocking socket client speaking the v3 protocol by hand."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.backend_key: tuple[int, int] | None = None

    @classmethod
    def over(cls, sock: socket.socket) -> RawClient:
        """A client on an already connected (e.g. TLS-wrapped) socket."""
        raw = cls.__new__(cls)
        raw.sock, raw.buf, raw.backend_key = sock, b"", None
        return raw

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_byte(self) -> bytes:
        while not self.buf:
            if not self._fill():
                raise EOFError("connection closed before a one-byte answer")
        out, self.buf = self.buf[:1], self.buf[1:]
        return out

    def read_message(self) -> tuple[int, bytes] | None:
        """The next typed message, or None if the server closed the connection."""
        while True:
            if len(self.buf) >= 5:
                mtype, length = struct.unpack_from("!BI", self.buf, 0)
                if len(self.buf) >= 1 + length:
                    body = self.buf[5:1 + length]
                    self.buf = self.buf[1 + length:]
                    return mtype, body
            if not self._fill():
                return None

    def read_until_closed(self) -> list[tuple[int, bytes]]:
        """Every message until the server closes the connection (which must happen)."""
        out = []
        while True:
            msg = self.read_message()
            if msg is None:
                return out
            out.append(msg)

    def expect_fatal(self) -> dict[str, str]:
        """Read to EOF; exactly one ErrorResponse must come: return its decoded fields."""
        messages = self.read_until_closed()
        errors = [m.decode_fields(body) for t, body in messages if t == m.ERROR_RESPONSE]
        assert len(errors) == 1, f"expected one ErrorResponse before close, got {messages!r}"
        return errors[0]

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True once the peer has closed (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def startup(self, user: str = APP_USER, password: str | None = APP_PASSWORD,
                database: str = "app", **params: str) -> None:
        """StartupMessage and authentication (SCRAM, md5 or trust) up to ReadyForQuery."""
        self.send(m.startup_message({"user": user, "database": database, **params}))
        scram: ScramClient | None = None
        while True:
            msg = self.read_message()
            assert msg is not None, "proxy closed the connection during startup"
            mtype, body = msg
            if mtype == m.ERROR_RESPONSE:
                raise StartupRejected(m.decode_fields(body))
            if mtype == m.BACKEND_KEY_DATA:
                self.backend_key = m.decode_key_data(body)
            elif mtype == m.READY_FOR_QUERY:
                return
            elif mtype == m.AUTHENTICATION:
                code = m.decode_int32(body)
                assert code == m.AUTH_OK or password is not None
                if code == m.AUTH_MD5:
                    self.send(m.password_message(
                        md5_password_hash(user, str(password), body[4:8]) + b"\x00"))
                elif code == m.AUTH_SASL:
                    scram = ScramClient(str(password))
                    self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
                elif code == m.AUTH_SASL_CONTINUE:
                    assert scram is not None
                    self.send(m.password_message(scram.handle_server_first(body[4:])))
                elif code == m.AUTH_SASL_FINAL:
                    assert scram is not None
                    scram.verify_server_final(body[4:])

    def query(self, sql: str) -> list[tuple[int, bytes]]:
        """Simple query; the messages up to and including ReadyForQuery."""
        self.send(m.query(sql))
        out = []
        while True:
            msg = self.read_message()
            assert msg is not None, f"connection closed while running {sql!r}"
            out.append(msg)
            if msg[0] == m.READY_FOR_QUERY:
                return out


def rows_of(messages: list[tuple[int, bytes]]) -> list[list[bytes | None]]:
    """Decode the DataRows of a simple query's answer (text format)."""
    rows = []
    for mtype, body in messages:
        if mtype != m.DATA_ROW:
            continue
        (count,) = struct.unpack_from("!h", body, 0)
        pos = 2
        row: list[bytes | None] = []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(body[pos:pos + size])
                pos += size
        rows.append(row)
    return rows
