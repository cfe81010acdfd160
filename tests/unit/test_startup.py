"""Unit tests for proxy.frontend.startup: negotiation and authentication over an in-memory
client stream (the sans-IO seam: scripted reads in, recorded writes out)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from collections import deque
from collections.abc import Callable
from typing import cast

import pytest

from proxy.errors import InvalidAuthorization, InvalidPassword, ProtocolViolation
from proxy.frontend.startup import (
    CancelTarget,
    ClientStream,
    Startup,
    authenticate,
    negotiate,
)
from proxy.wire import messages as m
from proxy.wire.auth import ScramClient, make_scram_verifier, md5_password_hash
from proxy.wire.framing import Framer

TIMEOUT = 5.0

Chunk = bytes | Callable[["FakeStream"], bytes]


class FakeStream:
    """Stands in for ClientStream: `read` pops the next scripted chunk (a callable chunk is
    computed from what the server has written so far), then reports EOF; `write` records."""

    def __init__(self, *chunks: Chunk) -> None:
        self.script: deque[Chunk] = deque(chunks)
        self.writes: list[bytes] = []
        self.reads = 0

    async def read(self) -> bytes:
        await asyncio.sleep(0)
        self.reads += 1
        if not self.script:
            return b""
        chunk = self.script.popleft()
        return chunk(self) if callable(chunk) else chunk

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def messages(self) -> list[tuple[int, bytes]]:
        """Typed messages the server wrote (only valid once negotiation is over)."""
        framer = Framer()
        region, frames = framer.feed(self.written)
        assert framer.buffered == 0
        return [(t, region[s:e]) for t, s, e in frames]

    def auth_requests(self) -> list[tuple[int, bytes]]:
        """(auth code, payload) of every Authentication message written."""
        out = []
        for mtype, body in self.messages():
            assert mtype == m.AUTHENTICATION
            out.append((m.decode_int32(body), body[4:]))
        return out


def client(stream: FakeStream) -> ClientStream:
    """The fake has ClientStream's read()/write() interface; that is all negotiate and
    authenticate use when no TLS context is given."""
    return cast(ClientStream, stream)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, m.GSSENC_REQUEST)


def startup_packet(code: int, payload: bytes = b"") -> bytes:
    body = struct.pack("!i", code) + payload
    return struct.pack("!i", len(body) + 4) + body


# ---------------------------------------------------------------------------- negotiate


async def test_plain_startup() -> None:
    stream = FakeStream(m.startup_message({"user": "alice", "database": "app"}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert result == Startup("alice", "app", {"user": "alice", "database": "app"}, b"")
    assert stream.writes == []


async def test_database_defaults_to_user() -> None:
    stream = FakeStream(m.startup_message({"user": "bob", "application_name": "psql"}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup)
    assert (result.user, result.database) == ("bob", "bob")
    assert result.params == {"user": "bob", "application_name": "psql"}


async def test_empty_database_defaults_to_user() -> None:
    stream = FakeStream(m.startup_message({"user": "bob", "database": ""}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup) and result.database == "bob"


async def test_startup_split_into_single_bytes() -> None:
    raw = m.startup_message({"user": "alice", "database": "app", "options": "-c a=b"})
    stream = FakeStream(*bytewise(raw))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup)
    assert result.params["options"] == "-c a=b"
    assert stream.reads == len(raw)


async def test_pipelined_bytes_after_startup_are_returned_as_rest() -> None:
    pipelined = m.query("SELECT 1") + m.TERMINATE_MSG
    stream = FakeStream(m.startup_message({"user": "alice"}) + pipelined)
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup) and result.rest == pipelined


async def test_ssl_request_answered_n_without_tls() -> None:
    stream = FakeStream(m.ssl_request(), m.startup_message({"user": "alice"}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup) and result.user == "alice"
    assert stream.writes == [b"N"]


async def test_ssl_request_bytewise_answered_n() -> None:
    stream = FakeStream(*bytewise(m.ssl_request()), m.startup_message({"user": "alice"}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup)
    assert stream.writes == [b"N"]


async def test_data_pipelined_after_ssl_request_is_rejected() -> None:
    stream = FakeStream(m.ssl_request() + m.startup_message({"user": "alice"}))
    with pytest.raises(ProtocolViolation) as info:
        await negotiate(client(stream), None, TIMEOUT)
    assert info.value.sqlstate == "08P01"
    assert stream.writes == []


async def test_second_ssl_request_is_rejected() -> None:
    # Postgres treats a repeated SSLRequest as an unknown protocol version 1234.5679.
    stream = FakeStream(m.ssl_request(), m.ssl_request())
    with pytest.raises(ProtocolViolation) as info:
        await negotiate(client(stream), None, TIMEOUT)
    assert info.value.sqlstate == "0A000"
    assert "1234.5679" in info.value.message
    assert stream.writes == [b"N"]


async def test_gssenc_request_answered_n() -> None:
    stream = FakeStream(gssenc_request(), m.startup_message({"user": "alice"}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup)
    assert stream.writes == [b"N"]


async def test_gssenc_then_ssl_then_startup() -> None:
    stream = FakeStream(gssenc_request(), m.ssl_request(), m.startup_message({"user": "a"}))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup)
    assert stream.writes == [b"N", b"N"]


async def test_data_pipelined_after_gssenc_request_is_rejected() -> None:
    stream = FakeStream(gssenc_request() + m.startup_message({"user": "alice"}))
    with pytest.raises(ProtocolViolation):
        await negotiate(client(stream), None, TIMEOUT)


async def test_second_gssenc_request_is_rejected() -> None:
    stream = FakeStream(gssenc_request(), gssenc_request())
    with pytest.raises(ProtocolViolation):
        await negotiate(client(stream), None, TIMEOUT)


@pytest.mark.parametrize("pid,key", [(1234, 5678), (0x7FFFFFFF, -1)])
async def test_cancel_request(pid: int, key: int) -> None:
    stream = FakeStream(m.cancel_request(pid, key))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert result == CancelTarget(pid, key)
    assert stream.writes == []


async def test_cancel_request_bytewise_after_ssl() -> None:
    stream = FakeStream(m.ssl_request(), *bytewise(m.cancel_request(7, 8)))
    assert await negotiate(client(stream), None, TIMEOUT) == CancelTarget(7, 8)
    assert stream.writes == [b"N"]


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x01", b"\x00" * 9])
async def test_short_or_long_cancel_request_is_a_protocol_violation(payload: bytes) -> None:
    stream = FakeStream(startup_packet(m.CANCEL_REQUEST, payload))
    with pytest.raises(ProtocolViolation) as info:
        await negotiate(client(stream), None, TIMEOUT)
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "code,version", [(0x00020000, "2.0"), (0x00010000, "1.0"), (0x00040000, "4.0")]
)
async def test_unsupported_protocol_rejected(code: int, version: str) -> None:
    stream = FakeStream(startup_packet(code, b"user\x00u\x00\x00"))
    with pytest.raises(ProtocolViolation) as info:
        await negotiate(client(stream), None, TIMEOUT)
    # Postgres: ERRCODE_FEATURE_NOT_SUPPORTED ("unsupported frontend protocol %u.%u").
    assert info.value.sqlstate == "0A000"
    assert info.value.severity == "FATAL"
    assert version in info.value.message


async def test_newer_minor_protocol_is_negotiated_down() -> None:
    stream = FakeStream(startup_packet(0x00030002, b"user\x00alice\x00\x00"))
    result = await negotiate(client(stream), None, TIMEOUT)
    assert isinstance(result, Startup) and result.user == "alice"
    [(mtype, body)] = stream.messages()
    assert mtype == m.NEGOTIATE_PROTOCOL
    assert struct.unpack("!ii", body) == (m.PROTOCOL_V3, 0)


@pytest.mark.parametrize(
    "params", [{"database": "app"}, {"user": ""}, {"application_name": "x"}, {}]
)
async def test_missing_user(params: dict[str, str]) -> None:
    stream = FakeStream(m.startup_message(params))
    with pytest.raises(InvalidAuthorization) as info:
        await negotiate(client(stream), None, TIMEOUT)
    assert info.value.sqlstate == "28000"


@pytest.mark.parametrize(
    "payload",
    [
        b"user\x00alice",  # value without its NUL
        b"user\x00alice\x00",  # no final terminator
        b"user\x00\x00",  # key without a value
        b"user\x00alice\x00\x00junk",  # bytes after the terminator
    ],
)
async def test_malformed_startup_parameters_are_a_protocol_violation(payload: bytes) -> None:
    stream = FakeStream(startup_packet(m.PROTOCOL_V3, payload))
    with pytest.raises(ProtocolViolation) as info:
        await negotiate(client(stream), None, TIMEOUT)
    assert info.value.sqlstate == "08P01"


async def test_invalid_startup_length_is_a_protocol_violation() -> None:
    stream = FakeStream(b"\x00\x00\x00\x03")
    with pytest.raises(ProtocolViolation):
        await negotiate(client(stream), None, TIMEOUT)


async def test_client_leaves_before_sending_anything() -> None:
    assert await negotiate(client(FakeStream()), None, TIMEOUT) is None


async def test_client_leaves_mid_packet() -> None:
    raw = m.startup_message({"user": "alice"})
    assert await negotiate(client(FakeStream(raw[:9])), None, TIMEOUT) is None


async def test_client_leaves_after_ssl_refused() -> None:
    stream = FakeStream(m.ssl_request())
    assert await negotiate(client(stream), None, TIMEOUT) is None
    assert stream.writes == [b"N"]


async def test_negotiate_times_out() -> None:
    class Silent(FakeStream):
        async def read(self) -> bytes:
            await asyncio.sleep(3600)
            return b""

    with pytest.raises(TimeoutError):
        await negotiate(client(Silent()), None, 0.01)


# ------------------------------------------------------------------------- authenticate


def md5_response(user: str, password: str) -> Callable[[FakeStream], bytes]:
    """A client answering the server's AuthenticationMD5Password challenge."""

    def respond(stream: FakeStream) -> bytes:
        [(code, salt)] = stream.auth_requests()
        assert code == m.AUTH_MD5 and len(salt) == 4
        return m.password_message(md5_password_hash(user, password, salt) + b"\x00")

    return respond


class ScramDriver:
    """Plays the client side of SCRAM-SHA-256 with proxy.wire.auth.ScramClient."""

    def __init__(self, password: str) -> None:
        self.client = ScramClient(password)

    def initial(self, stream: FakeStream) -> bytes:
        [(code, payload)] = stream.auth_requests()
        assert code == m.AUTH_SASL
        assert payload == b"SCRAM-SHA-256\x00\x00"
        return m.sasl_initial_response("SCRAM-SHA-256", self.client.client_first())

    def final(self, stream: FakeStream) -> bytes:
        code, server_first = stream.auth_requests()[-1]
        assert code == m.AUTH_SASL_CONTINUE
        return m.password_message(self.client.handle_server_first(server_first))

    def verify(self, stream: FakeStream) -> None:
        code, server_final = stream.auth_requests()[-1]
        assert code == m.AUTH_SASL_FINAL
        self.client.verify_server_final(server_final)


async def test_trust_reads_and_writes_nothing() -> None:
    stream = FakeStream()
    await authenticate(client(stream), "trust", "alice", None, TIMEOUT)
    assert (stream.writes, stream.reads) == ([], 0)


async def test_md5_right_password() -> None:
    stream = FakeStream(md5_response("alice", "s3cret"))
    await authenticate(client(stream), "md5", "alice", "s3cret", TIMEOUT)
    [(code, _)] = stream.auth_requests()
    assert code == m.AUTH_MD5


async def test_md5_stored_hash_secret() -> None:
    stored = "md5" + hashlib.md5(b"s3cretalice").hexdigest()
    stream = FakeStream(md5_response("alice", "s3cret"))
    await authenticate(client(stream), "md5", "alice", stored, TIMEOUT)


async def test_md5_response_split_into_single_bytes() -> None:
    def bytewise_response(stream: FakeStream) -> bytes:
        data = md5_response("alice", "pw")(stream)
        stream.script.extendleft(reversed(bytewise(data[1:])))
        return data[:1]

    stream = FakeStream(bytewise_response)
    await authenticate(client(stream), "md5", "alice", "pw", TIMEOUT)


async def test_md5_response_without_trailing_nul() -> None:
    def respond(stream: FakeStream) -> bytes:
        [(_, salt)] = stream.auth_requests()
        return m.password_message(md5_password_hash("alice", "pw", salt))

    await authenticate(client(FakeStream(respond)), "md5", "alice", "pw", TIMEOUT)


async def test_md5_wrong_password() -> None:
    stream = FakeStream(md5_response("alice", "wrong"))
    with pytest.raises(InvalidPassword) as info:
        await authenticate(client(stream), "md5", "alice", "s3cret", TIMEOUT)
    assert info.value.sqlstate == "28P01"
    assert 'user "alice"' in info.value.message


async def test_md5_wrong_user_in_hash() -> None:
    stream = FakeStream(md5_response("mallory", "s3cret"))
    with pytest.raises(InvalidPassword):
        await authenticate(client(stream), "md5", "alice", "s3cret", TIMEOUT)


async def test_md5_salts_differ_between_attempts() -> None:
    salts = []
    for _ in range(3):
        stream = FakeStream(md5_response("alice", "pw"))
        await authenticate(client(stream), "md5", "alice", "pw", TIMEOUT)
        salts.append(stream.auth_requests()[0][1])
    assert len(set(salts)) == 3


async def test_md5_unknown_user() -> None:
    stream = FakeStream(md5_response("ghost", "anything"))
    with pytest.raises(InvalidPassword) as info:
        await authenticate(client(stream), "md5", "ghost", None, TIMEOUT)
    assert info.value.sqlstate == "28P01"


async def test_md5_method_with_scram_verifier_uses_scram() -> None:
    verifier = make_scram_verifier("pw", iterations=64).to_string()
    driver = ScramDriver("pw")
    stream = FakeStream(driver.initial, driver.final)
    await authenticate(client(stream), "md5", "alice", verifier, TIMEOUT)
    driver.verify(stream)


async def test_scram_full_exchange_plain_secret() -> None:
    driver = ScramDriver("correct horse")
    stream = FakeStream(driver.initial, driver.final)
    await authenticate(client(stream), "scram-sha-256", "alice", "correct horse", TIMEOUT)
    driver.verify(stream)
    assert [code for code, _ in stream.auth_requests()] == [
        m.AUTH_SASL,
        m.AUTH_SASL_CONTINUE,
        m.AUTH_SASL_FINAL,
    ]
    assert m.AUTHENTICATION_OK not in stream.written  # the caller sends it


async def test_scram_full_exchange_verifier_secret() -> None:
    verifier = make_scram_verifier("pw", salt=b"0123456789abcdef", iterations=128)
    driver = ScramDriver("pw")
    stream = FakeStream(driver.initial, driver.final)
    await authenticate(client(stream), "scram-sha-256", "alice", verifier.to_string(), TIMEOUT)
    driver.verify(stream)
    server_first = stream.auth_requests()[1][1].decode()
    assert f",s={base64.b64encode(b'0123456789abcdef').decode()},i=128" in server_first


async def test_scram_messages_split_into_single_bytes() -> None:
    driver = ScramDriver("pw")

    def split_first(stream: FakeStream) -> bytes:
        data = driver.initial(stream)
        stream.script.extendleft(reversed(bytewise(data[1:])))
        return data[:1]

    stream = FakeStream(split_first, driver.final)
    await authenticate(client(stream), "scram-sha-256", "alice", "pw", TIMEOUT)
    driver.verify(stream)


async def test_scram_wrong_password() -> None:
    driver = ScramDriver("wrong")
    stream = FakeStream(driver.initial, driver.final)
    with pytest.raises(InvalidPassword) as info:
        await authenticate(client(stream), "scram-sha-256", "alice", "right", TIMEOUT)
    assert info.value.sqlstate == "28P01"
    # No AuthenticationSASLFinal for a failed proof.
    assert [code for code, _ in stream.auth_requests()] == [m.AUTH_SASL, m.AUTH_SASL_CONTINUE]


async def test_scram_unknown_user() -> None:
    driver = ScramDriver("anything")
    stream = FakeStream(driver.initial, driver.final)
    with pytest.raises(InvalidPassword) as info:
        await authenticate(client(stream), "scram-sha-256", "ghost", None, TIMEOUT)
    assert info.value.sqlstate == "28P01"
    # The exchange looks like a real one up to the proof check.
    assert [code for code, _ in stream.auth_requests()] == [m.AUTH_SASL, m.AUTH_SASL_CONTINUE]


async def test_scram_unknown_user_salt_is_stable() -> None:
    salts = []
    for _ in range(2):
        driver = ScramDriver("anything")
        stream = FakeStream(driver.initial)
        with pytest.raises(ConnectionResetError):
            await authenticate(client(stream), "scram-sha-256", "ghost", None, TIMEOUT)
        server_first = stream.auth_requests()[-1][1].decode()
        salts.append(dict(p.split("=", 1) for p in server_first.split(","))["s"])
    assert salts[0] == salts[1]


async def test_scram_with_md5_hash_secret_fails_as_wrong_password() -> None:
    stored = "md5" + hashlib.md5(b"pwalice").hexdigest()
    driver = ScramDriver("pw")
    stream = FakeStream(driver.initial, driver.final)
    with pytest.raises(InvalidPassword):
        await authenticate(client(stream), "scram-sha-256", "alice", stored, TIMEOUT)


async def test_scram_invalid_mechanism() -> None:
    scram = ScramClient("pw")
    stream = FakeStream(m.sasl_initial_response("SCRAM-SHA-256-PLUS", scram.client_first()))
    with pytest.raises(ProtocolViolation) as info:
        await authenticate(client(stream), "scram-sha-256", "alice", "pw", TIMEOUT)
    assert info.value.sqlstate == "08P01"


async def test_scram_garbage_client_first_fails_as_wrong_password() -> None:
    stream = FakeStream(m.sasl_initial_response("SCRAM-SHA-256", b"not scram"))
    with pytest.raises(InvalidPassword):
        await authenticate(client(stream), "scram-sha-256", "alice", "pw", TIMEOUT)


async def test_scram_truncated_initial_response_is_a_protocol_violation() -> None:
    stream = FakeStream(m.password_message(b"SCRAM-SHA-256\x00"))
    with pytest.raises(ProtocolViolation):
        await authenticate(client(stream), "scram-sha-256", "alice", "pw", TIMEOUT)


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
async def test_wrong_message_type_during_auth(method: str) -> None:
    stream = FakeStream(m.query("SELECT 1"))
    with pytest.raises(ProtocolViolation) as info:
        await authenticate(client(stream), method, "alice", "pw", TIMEOUT)
    assert info.value.sqlstate == "08P01"


async def test_wrong_message_type_in_second_scram_step() -> None:
    driver = ScramDriver("pw")
    stream = FakeStream(driver.initial, m.TERMINATE_MSG)
    with pytest.raises(ProtocolViolation) as info:
        await authenticate(client(stream), "scram-sha-256", "alice", "pw", TIMEOUT)
    assert info.value.sqlstate == "08P01"


async def test_oversized_password_message_is_a_protocol_violation() -> None:
    stream = FakeStream(m.password_message(b"x" * 20000))
    with pytest.raises(ProtocolViolation):
        await authenticate(client(stream), "md5", "alice", "pw", TIMEOUT)


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
async def test_client_disconnects_during_auth(method: str) -> None:
    with pytest.raises(ConnectionResetError):
        await authenticate(client(FakeStream()), method, "alice", "pw", TIMEOUT)


async def test_client_disconnects_mid_password_message() -> None:
    stream = FakeStream(m.password_message(b"md5" + b"0" * 32 + b"\x00")[:10])
    with pytest.raises(ConnectionResetError):
        await authenticate(client(stream), "md5", "alice", "pw", TIMEOUT)


async def test_authenticate_times_out() -> None:
    class Silent(FakeStream):
        async def read(self) -> bytes:
            await asyncio.sleep(3600)
            return b""

    with pytest.raises(TimeoutError):
        await authenticate(client(Silent()), "md5", "alice", "pw", 0.01)
