"""Client startup phase: SSL/GSS negotiation, cancel requests, StartupMessage, authentication.

Follows protocol section 55.2.1 ("Start-up") and 55.3 (SASL). Everything here happens once
per client connection, so it favours clarity over speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import ssl
from dataclasses import dataclass, field

from proxy.errors import (
    InvalidAuthorization,
    InvalidPassword,
    ProtocolViolation,
)
from proxy.wire import messages as m
from proxy.wire.auth import (
    AuthenticationFailed,
    ScramServer,
    make_scram_verifier,
    md5_verify,
    parse_scram_verifier,
)
from proxy.wire.framing import Framer, StartupFramer

READ_SIZE = 65536
_MOCK_SALT_KEY = secrets.token_bytes(32)  # per process, like Postgres' mock authentication nonce


def mock_verifier(user: str) -> str:
    """A SCRAM verifier for a user that does not exist: same salt for the same name."""
    salt = hmac.digest(_MOCK_SALT_KEY, user.encode("utf-8", "surrogateescape"),
                       hashlib.sha256)[:16]
    return make_scram_verifier(secrets.token_hex(16), salt=salt).to_string()


@dataclass
class Startup:
    """What the client asked for in its StartupMessage."""

    user: str
    database: str
    params: dict[str, str] = field(default_factory=dict)
    rest: bytes = b""  # bytes the client pipelined after the startup packet


@dataclass(frozen=True)
class CancelTarget:
    pid: int
    key: int


class ClientStream:
    """The client's byte stream; TLS may be switched on during negotiation."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        return await self.reader.read(READ_SIZE)

    def write(self, data: bytes) -> None:
        self.writer.write(data)


async def negotiate(stream: ClientStream, tls: ssl.SSLContext | None,
                    timeout: float) -> Startup | CancelTarget | None:
    """Read startup packets until a StartupMessage or CancelRequest; None if the client left."""
    framer = StartupFramer()
    # One SSLRequest and one GSSENCRequest at most, as in Postgres' ProcessStartupPacket;
    # once TLS is on, GSS encryption is not offered either. A repeat falls through to the
    # "unsupported frontend protocol" error. (Fault tests: a repeated GSSENCRequest used
    # to be answered 'N' forever.)
    ssl_done = gss_done = False
    async with asyncio.timeout(timeout):
        while True:
            packet = None
            while packet is None:
                data = await stream.read()
                if not data:
                    return None
                packet = framer.feed(data)
            code = m.decode_int32(packet)
            if code == m.SSL_REQUEST and not ssl_done:
                if framer.take_rest():
                    raise ProtocolViolation("received unencrypted data after SSL request")
                ssl_done = True
                if tls is None:
                    stream.write(b"N")
                    continue
                stream.write(b"S")
                await stream.writer.drain()
                await stream.writer.start_tls(tls)
                gss_done = True
                continue
            if code == m.GSSENC_REQUEST and not gss_done:
                # Bytes pipelined after it used to wait unanswered until the login timeout.
                if framer.take_rest():
                    raise ProtocolViolation(
                        "received unencrypted data after GSSAPI encryption request")
                gss_done = True
                stream.write(b"N")
                continue
            if code == m.CANCEL_REQUEST:
                # A short packet used to crash decode_cancel (struct.error -> XX000 [BUG]).
                if len(packet) != 12:
                    raise ProtocolViolation("invalid length of cancel request packet")
                pid, key = m.decode_cancel(packet)
                return CancelTarget(pid, key)
            major, minor = code >> 16, code & 0xFFFF
            if major != 3:
                # Postgres reports this as 0A000, not 08P01.
                raise ProtocolViolation(
                    f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
                    sqlstate="0A000")
            try:
                _, params = m.decode_startup(packet)
            except ValueError:
                # Was an uncaught ValueError (reported as XX000 [BUG]); Postgres: 08P01.
                raise ProtocolViolation(
                    "invalid startup packet layout: expected terminator as last byte") from None
            # A newer 3.x minor (libpq 18 with max_protocol_version=3.2/latest) or protocol
            # options (_pq_.*) are answered with NegotiateProtocolVersion and served as 3.0,
            # as Postgres does; they used to be refused as "unsupported frontend protocol".
            unrecognized = [k for k in params if k.startswith("_pq_.")]
            if minor > 0 or unrecognized:
                for k in unrecognized:
                    del params[k]
                stream.write(m.negotiate_protocol_version(m.PROTOCOL_V3, unrecognized))
            user = params.get("user")
            if not user:
                raise InvalidAuthorization("no PostgreSQL user name specified in startup packet")
            database = params.get("database") or user
            return Startup(user, database, params, framer.take_rest())


async def _read_password(stream: ClientStream, framer: Framer) -> bytes:
    while True:
        data = await stream.read()
        if not data:
            raise ConnectionResetError("client closed the connection during authentication")
        region, frames = framer.feed(data)
        if frames:
            mtype, start, end = frames[0]
            if mtype != m.PASSWORD:
                raise ProtocolViolation(
                    f"expected password response, got message type {chr(mtype)!r}")
            return region[start:end]


async def authenticate(stream: ClientStream, method: str, user: str, secret: str | None,
                       timeout: float) -> None:
    """Run the configured authentication exchange; raise on failure. Sends nothing on success
    (the caller sends AuthenticationOk once it knows the session can start)."""
    if method == "trust":
        return
    failed = InvalidPassword(f'password authentication failed for user "{user}"')
    if secret is None:
        # Unknown user: fail the same way as a wrong password, with a salt that is stable per
        # user name (Postgres' scram_mock_salt), so user names cannot be probed.
        secret = mock_verifier(user) if method != "md5" else secrets.token_hex(16)
    framer = Framer(max_length=10000)
    async with asyncio.timeout(timeout):
        if method == "md5" and parse_scram_verifier(secret) is None:
            salt = secrets.token_bytes(4)
            stream.write(m.authentication(m.AUTH_MD5, salt))
            response = await _read_password(stream, framer)
            if not md5_verify(user, secret, salt, response.rstrip(b"\x00")):
                raise failed
            return
        # scram-sha-256, or md5 configured with a SCRAM verifier (Postgres does the same).
        stream.write(m.authentication_sasl(["SCRAM-SHA-256"]))
        body = await _read_password(stream, framer)
        try:
            server = ScramServer(secret)  # ValueError for an md5-only stored secret
            mechanism, pos = m.read_cstr(body, 0)
            if mechanism != "SCRAM-SHA-256":
                raise ProtocolViolation(
                    f"client selected an invalid SASL authentication mechanism {mechanism!r}")
            if len(body) < pos + 4:
                # decode_int32 raised struct.error here, which escaped as XX000 [BUG].
                raise ProtocolViolation("insufficient data left in message")
            length = m.decode_int32(body, pos)
            first = body[pos + 4: pos + 4 + length] if length >= 0 else b""
            stream.write(m.authentication(m.AUTH_SASL_CONTINUE, server.handle_client_first(first)))
            final = await _read_password(stream, framer)
            stream.write(m.authentication(m.AUTH_SASL_FINAL, server.handle_client_final(final)))
        except (AuthenticationFailed, ValueError, IndexError) as exc:
            raise failed from exc
