"""One server connection to a shard: connect, authenticate, then relay frames to its session.

The connection is an asyncio Protocol, not a stream: while a client session is attached
(`sink`), every chunk the server sends is framed and handed to the session synchronously in
`data_received`, so relaying a result costs no task switch. While detached (startup, reset,
health checks) frames queue up for `recv()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Protocol

from proxy.errors import ProtocolViolation, ShardUnavailable
from proxy.wire import messages as m
from proxy.wire.auth import ScramClient, md5_password_hash
from proxy.wire.framing import Frame, Framer

if TYPE_CHECKING:
    from proxy.backend.pool import Pool
    from proxy.stats.histogram import Histogram

log = logging.getLogger("shardwire.backend")


_AUTH_HINT = ("configure the shard's pg_hba.conf to use scram-sha-256, md5, password or "
              "trust for the user shardwire connects as")
_AUTH_NAMES = {2: "Kerberos V5", 6: "SCM credential", 7: "GSSAPI", 9: "SSPI"}


# Frames a detached connection queues before it stops reading its socket.
INBOX_LIMIT = 4096


class Sink(Protocol):
    """What a server connection hands its traffic to while a session holds it."""

    def on_server_data(self, server: ServerConnection, region: bytes, frames: list[Frame]) -> None:
        ...

    def on_server_lost(self, server: ServerConnection, exc: Exception | None) -> None:
        ...

    def pause_client(self) -> None:
        ...

    def resume_client(self) -> None:
        ...


class ServerConnection(asyncio.Protocol):
    """Protocol object for one server connection; state the pool and sessions rely on."""

    def __init__(self, shard: str, role: str, address: str) -> None:
        self.shard = shard
        self.role = role
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.framer = Framer()
        self.sink: Sink | None = None
        self.closed = False
        self.pid = 0
        self.key = 0
        self.status = b"I"
        # GUC_REPORT parameters as the server last reported them.
        self.params: dict[str, str] = {}
        # The same as reported at startup: a fresh session's defaults.
        self.initial_params: dict[str, str] = {}
        # Non-reported settings applied with SET on behalf of clients (name -> SQL value text).
        self.settings: dict[str, str] = {}
        # Server-side prepared statement names present on this connection (LRU order).
        self.prepared: OrderedDict[str, None] = OrderedDict()
        # Identity of the Parse message body currently held as the unnamed statement.
        self.unnamed: bytes | None = None
        # Cancel requests sent for this connection and not yet confirmed by the server;
        # while any are, the pool parks the connection (`parked`) instead of reusing it.
        self.cancels_in_flight = 0
        self.parked: Pool | None = None
        # The request-latency histograms (write, read) of this server's shard, looked up
        # once by the first session that uses it (proxy/frontend/session.py: _hists).
        self.hists: tuple[Histogram, Histogram] | None = None
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        # While detached: who to pause when the server's socket fills up (a COPY fanned out
        # to several shards), since no sink is there to ask.
        self.flow: Sink | None = None
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: Exception | None = None
        self._paused = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def data_received(self, data: bytes) -> None:
        try:
            region, frames = self.framer.feed(data)
        except ProtocolViolation as exc:
            log.error("server %s sent an invalid frame: %s", self.address, exc)
            self.abort()
            return
        if not frames:
            return
        sink = self.sink
        if sink is not None:
            sink.on_server_data(self, region, frames)
            return
        inbox = self._inbox
        for mtype, start, end in frames:
            inbox.append((mtype, region[start:end]))
        if len(inbox) > INBOX_LIMIT:  # a scatter reads the shards one after another
            self.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = exc or ConnectionResetError("server closed the connection")
        self._wake()
        sink = self.sink
        if sink is not None:
            sink.on_server_lost(self, exc)

    def pause_writing(self) -> None:
        # The server reads slower than the client sends (a large COPY): pause the client.
        sink = self.sink or self.flow
        if sink is not None:
            sink.pause_client()

    def resume_writing(self) -> None:
        sink = self.sink or self.flow
        if sink is not None:
            sink.resume_client()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ----------------------------------------------------------------------- helpers
    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def terminate(self) -> None:
        """Polite close: Terminate, then close the socket."""
        if self.transport is not None and not self.closed:
            self.transport.write(m.TERMINATE_MSG)
            self.transport.close()
        self.closed = True

    def pending_frames(self) -> int:
        """Frames received while detached and not yet read with `recv`."""
        return len(self._inbox)

    async def recv(self) -> tuple[int, bytes]:
        """Next frame while detached (startup, reset, health)."""
        while not self._inbox:
            if self.closed:
                raise ConnectionResetError(str(self._lost or "server connection closed"))
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._paused and len(self._inbox) < INBOX_LIMIT // 2:
            self.resume_reading()
        return self._inbox.popleft()

    async def run_until_ready(self, sql: str) -> list[tuple[int, bytes]]:
        """Run a simple query while detached and collect its frames up to ReadyForQuery."""
        self.send(m.query(sql))
        frames: list[tuple[int, bytes]] = []
        while True:
            mtype, body = await self.recv()
            if mtype == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(body)
                self.params[name] = value
            elif mtype == m.READY_FOR_QUERY:
                self.status = body[:1]
                return frames
            frames.append((mtype, body))

    async def startup(self, user: str, database: str, password: str | None,
                      extra: dict[str, str]) -> None:
        """StartupMessage and authentication; returns once the server is ready for queries."""
        params = {"user": user, "database": database, **extra}
        self.send(m.startup_message(params))
        scram: ScramClient | None = None
        while True:
            mtype, body = await self.recv()
            if mtype == m.AUTHENTICATION:
                code = m.decode_int32(body)
                if code == m.AUTH_OK:
                    continue
                if password is None:
                    raise self._refused("the server asks for a password but none is configured",
                                        hint="add the password to the shard's DSN or to the "
                                             "user's server_password in the topology")
                if code == m.AUTH_CLEARTEXT:
                    self.send(m.password_message(password.encode() + b"\x00"))
                elif code == m.AUTH_MD5:
                    self.send(m.password_message(
                        md5_password_hash(user, password, body[4:8]) + b"\x00"))
                elif code == m.AUTH_SASL:
                    mechanisms = body[4:].split(b"\x00")
                    if b"SCRAM-SHA-256" not in mechanisms:
                        names = ", ".join(x.decode(errors="replace") for x in mechanisms if x)
                        raise self._refused(
                            f"the server offers only SASL mechanisms shardwire lacks ({names})",
                            hint=_AUTH_HINT)
                    scram = ScramClient(password)
                    self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
                elif code == m.AUTH_SASL_CONTINUE and scram is not None:
                    self.send(m.password_message(scram.handle_server_first(body[4:])))
                elif code == m.AUTH_SASL_FINAL and scram is not None:
                    scram.verify_server_final(body[4:])
                else:
                    method = _AUTH_NAMES.get(code, f"request code {code}")
                    raise self._refused(f"the server asks for {method} authentication, which "
                                        "shardwire does not support", hint=_AUTH_HINT)
            elif mtype == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(body)
                self.params[name] = value
            elif mtype == m.BACKEND_KEY_DATA:
                self.pid, self.key = m.decode_key_data(body)
            elif mtype == m.READY_FOR_QUERY:
                self.status = body[:1]
                self.initial_params = dict(self.params)
                return
            elif mtype == m.ERROR_RESPONSE:
                fields = m.decode_fields(body)
                raise self._refused(fields.get("M", "error"), code=fields.get("C"))
            # NoticeResponse and NegotiateProtocolVersion need no answer.

    def _refused(self, reason: str, *, code: str | None = None,
                 hint: str | None = None) -> ShardUnavailable:
        detail = f"server error {code}: {reason}" if code else reason
        return ShardUnavailable(
            f'shard "{self.shard}" ({self.role} {self.address}) refused the connection',
            detail=detail, hint=hint or "check the shard's DSN and credentials in the topology",
            sqlstate="08001")


async def open_server(*, shard: str, role: str, host: str, port: int, user: str, database: str,
                      password: str | None, connect_timeout: float,
                      extra: dict[str, str] | None = None) -> ServerConnection:
    """Connect and authenticate; raise ShardUnavailable naming the shard on any failure."""
    loop = asyncio.get_running_loop()
    address = f"{host}:{port}"
    conn: ServerConnection | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: ServerConnection(shard, role, address), host, port)
            await conn.startup(user, database, password, extra or {})
            return conn
    except TimeoutError:
        if conn is not None:
            conn.abort()
        raise ShardUnavailable(
            f'shard "{shard}" ({role} {address}) did not answer within {connect_timeout:g}s',
            hint="the shard is down or unreachable; check it, or raise pool.connect_timeout",
            sqlstate="08006") from None
    except OSError as exc:
        if conn is not None:
            conn.abort()
        raise ShardUnavailable(
            f'cannot connect to shard "{shard}" ({role} {address}): {exc.strerror or exc}',
            hint="the shard is down or unreachable; check that its Postgres is running",
            sqlstate="08006") from None
    except BaseException:
        if conn is not None:
            conn.abort()
        raise
