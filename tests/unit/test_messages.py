"""Unit tests for proxy.wire.messages: encoders round-trip through decoders and match the
byte layouts of the protocol spec (PostgreSQL docs, "Message Formats")."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import messages as m
from proxy.wire.framing import Framer, StartupFramer


def split(data: bytes) -> list[tuple[int, bytes]]:
    """Cut complete typed messages into (type, body); asserts nothing is left over."""
    framer = Framer()
    region, frames = framer.feed(data)
    assert framer.buffered == 0
    return [(t, region[s:e]) for t, s, e in frames]


def one(data: bytes, mtype: str) -> bytes:
    [(t, body)] = split(data)
    assert t == ord(mtype)
    return body


# ------------------------------------------------------------------------ basic framing


def test_message_header() -> None:
    assert m.message(ord("Q"), b"abc") == b"Q\x00\x00\x00\x07abc"
    assert m.message(ord("S")) == b"S\x00\x00\x00\x04"


def test_cstr() -> None:
    assert m.cstr("abc") == b"abc\x00"
    assert m.cstr("") == b"\x00"
    assert m.cstr("é") == b"\xc3\xa9\x00"


def test_read_cstr() -> None:
    body = b"one\x00two\x00\x00"
    first, pos = m.read_cstr(body, 0)
    second, pos2 = m.read_cstr(body, pos)
    third, end = m.read_cstr(body, pos2)
    assert (first, pos, second, pos2, third, end) == ("one", 4, "two", 8, "", 9)


def test_read_cstr_utf8() -> None:
    assert m.read_cstr("señor\x00".encode(), 0) == ("señor", 7)


@pytest.mark.parametrize("raw", [b"caf\xe9", b"\xff\xfe", b"\x80abc", b"ok\xc3"])
def test_read_cstr_non_utf8_does_not_raise(raw: bytes) -> None:
    text, pos = m.read_cstr(raw + b"\x00rest", 0)
    assert pos == len(raw) + 1
    # surrogateescape keeps the original bytes recoverable.
    assert text.encode("utf-8", "surrogateescape") == raw


def test_read_cstr_without_terminator_raises_value_error() -> None:
    with pytest.raises(ValueError):
        m.read_cstr(b"abc", 0)


def test_cstr_round_trips_read_cstr_of_non_utf8() -> None:
    text, _ = m.read_cstr(b"jos\xe9\x00", 0)
    assert m.cstr(text) == b"jos\xe9\x00"


def test_error_response_with_non_utf8_user_name() -> None:
    user, _ = m.read_cstr(b"jos\xe9\x00", 0)
    data = m.error_response("FATAL", "28P01", f'password authentication failed for user "{user}"')
    assert b'user "jos\xe9"' in data


# ---------------------------------------------------------------------------- startup


@pytest.mark.parametrize(
    "params",
    [
        {"user": "alice"},
        {"user": "alice", "database": "app", "application_name": "psql"},
        {"user": "a b", "options": "-c search_path=x,y", "client_encoding": "UTF8"},
        {"user": "ünï", "database": ""},
    ],
)
def test_startup_message_round_trip(params: dict[str, str]) -> None:
    raw = m.startup_message(params)
    (length,) = struct.unpack_from("!i", raw, 0)
    assert length == len(raw)
    assert raw.endswith(b"\x00\x00")  # last value's NUL + the terminator
    packet = StartupFramer().feed(raw)
    assert packet is not None
    assert m.decode_startup(packet) == (m.PROTOCOL_V3, params)


def test_startup_message_layout() -> None:
    raw = m.startup_message({"user": "u"})
    body = struct.pack("!i", 196608) + b"user\x00u\x00\x00"
    assert raw == struct.pack("!i", len(body) + 4) + body


def test_decode_startup_other_codes_have_no_params() -> None:
    assert m.decode_startup(m.ssl_request()[4:]) == (m.SSL_REQUEST, {})
    assert m.decode_startup(m.cancel_request(1, 2)[4:]) == (m.CANCEL_REQUEST, {})
    assert m.decode_startup(struct.pack("!i", 0x20000) + b"junk") == (0x20000, {})


@pytest.mark.parametrize(
    "payload",
    [
        b"user\x00alice",  # value without its NUL
        b"user",  # key without its NUL
        b"user\x00alice\x00",  # no final terminator
        b"user\x00\x00",  # the terminator must not be eaten as an empty value
        b"user\x00alice\x00\x00x",  # bytes after the terminator
    ],
)
def test_decode_startup_malformed_raises_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        m.decode_startup(struct.pack("!i", m.PROTOCOL_V3) + payload)


def test_decode_startup_no_parameters() -> None:
    assert m.decode_startup(struct.pack("!i", m.PROTOCOL_V3) + b"\x00") == (m.PROTOCOL_V3, {})


def test_ssl_request_layout() -> None:
    assert m.ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


@pytest.mark.parametrize("pid,key", [(1, 2), (4242, 0x7FFFFFFF), (0, -1), (-5, 123456789)])
def test_cancel_request_round_trip(pid: int, key: int) -> None:
    raw = m.cancel_request(pid, key)
    assert raw == struct.pack("!iiii", 16, 80877102, pid, key)
    packet = StartupFramer().feed(raw)
    assert packet is not None
    assert m.decode_int32(packet) == m.CANCEL_REQUEST
    assert m.decode_cancel(packet) == (pid, key)


# --------------------------------------------------------------------- backend messages


def test_error_response_all_fields_round_trip() -> None:
    data = m.error_response(
        "ERROR", "42P01", 'relation "t" does not exist', detail="some detail", hint="a hint"
    )
    body = one(data, "E")
    assert body.endswith(b"\x00\x00")
    assert m.decode_fields(body) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42P01",
        "M": 'relation "t" does not exist',
        "D": "some detail",
        "H": "a hint",
    }


def test_error_response_layout() -> None:
    data = m.error_response("FATAL", "08P01", "bad")
    body = b"SFATAL\x00VFATAL\x00C08P01\x00Mbad\x00\x00"
    assert data == b"E" + struct.pack("!i", len(body) + 4) + body


def test_error_response_without_optional_fields() -> None:
    fields = m.decode_fields(one(m.error_response("ERROR", "XX000", "oops"), "E"))
    assert fields == {"S": "ERROR", "V": "ERROR", "C": "XX000", "M": "oops"}


def test_notice_response() -> None:
    data = m.error_response("NOTICE", "00000", "hello", hint="h", notice=True)
    fields = m.decode_fields(one(data, "N"))
    assert fields["S"] == "NOTICE" and fields["M"] == "hello" and fields["H"] == "h"


def test_error_response_unicode_text() -> None:
    fields = m.decode_fields(one(m.error_response("ERROR", "22021", "ünïcødé ✓"), "E"))
    assert fields["M"] == "ünïcødé ✓"


def test_decode_fields_stops_at_terminator() -> None:
    assert m.decode_fields(b"Mx\x00\x00Cignored\x00") == {"M": "x"}
    assert m.decode_fields(b"") == {}


@pytest.mark.parametrize(
    "name,value", [("server_version", "16.2"), ("TimeZone", "Europe/Paris"), ("x", "")]
)
def test_parameter_status_round_trip(name: str, value: str) -> None:
    data = m.parameter_status(name, value)
    body = one(data, "S")
    assert body == name.encode() + b"\x00" + value.encode() + b"\x00"
    assert m.decode_parameter_status(body) == (name, value)


@pytest.mark.parametrize("pid,key", [(1, 2), (0x7FFFFFFF, 0), (-1, -2147483648)])
def test_backend_key_data_round_trip(pid: int, key: int) -> None:
    data = m.backend_key_data(pid, key)
    assert data == b"K\x00\x00\x00\x0c" + struct.pack("!ii", pid, key)
    assert m.decode_key_data(one(data, "K")) == (pid, key)


@pytest.mark.parametrize("tag", ["SELECT 3", "INSERT 0 1", "BEGIN", "SET", ""])
def test_command_complete(tag: str) -> None:
    data = m.command_complete(tag)
    body = one(data, "C")
    assert body == tag.encode() + b"\x00"
    assert m.read_cstr(body, 0) == (tag, len(tag) + 1)


def test_row_description_layout() -> None:
    data = m.row_description([("id", 23), ("name", 25)])
    # Int16 field count; per field: String name, Int32 table OID, Int16 column number,
    # Int32 type OID, Int16 type size, Int32 type modifier, Int16 format code.
    expected_body = (
        b"\x00\x02"
        + b"id\x00"
        + b"\x00\x00\x00\x00"  # table oid 0
        + b"\x00\x00"  # attnum 0
        + b"\x00\x00\x00\x17"  # int4
        + b"\xff\xff"  # typlen -1
        + b"\xff\xff\xff\xff"  # typmod -1
        + b"\x00\x00"  # text format
        + b"name\x00"
        + b"\x00\x00\x00\x00"
        + b"\x00\x00"
        + b"\x00\x00\x00\x19"  # text
        + b"\xff\xff"
        + b"\xff\xff\xff\xff"
        + b"\x00\x00"
    )
    assert data == b"T" + struct.pack("!I", len(expected_body) + 4) + expected_body
    assert one(data, "T") == expected_body


def test_row_description_empty() -> None:
    assert m.row_description([]) == b"T\x00\x00\x00\x06\x00\x00"


def test_data_row_layout() -> None:
    data = m.data_row([b"1", None, b"", b"hello"])
    expected_body = (
        b"\x00\x04"
        + b"\x00\x00\x00\x01"
        + b"1"
        + b"\xff\xff\xff\xff"  # NULL: length -1, no bytes
        + b"\x00\x00\x00\x00"  # empty string: length 0
        + b"\x00\x00\x00\x05"
        + b"hello"
    )
    assert data == b"D" + struct.pack("!I", len(expected_body) + 4) + expected_body


def test_data_row_accepts_a_generator() -> None:
    data = m.data_row(v for v in (b"a", b"bc"))
    assert one(data, "D") == b"\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x02bc"


def test_authentication_messages() -> None:
    assert m.AUTHENTICATION_OK == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    salt = b"\x01\x02\x03\x04"
    md5 = m.authentication(m.AUTH_MD5, salt)
    assert md5 == b"R\x00\x00\x00\x0c\x00\x00\x00\x05" + salt
    body = one(md5, "R")
    assert m.decode_int32(body) == m.AUTH_MD5 and body[4:] == salt


def test_authentication_sasl_layout() -> None:
    data = m.authentication_sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
    body = one(data, "R")
    assert body == struct.pack("!i", 10) + b"SCRAM-SHA-256\x00SCRAM-SHA-256-PLUS\x00\x00"


def test_ready_for_query() -> None:
    assert m.READY_IDLE == b"Z\x00\x00\x00\x05I"
    assert m.READY_IN_TRANSACTION == b"Z\x00\x00\x00\x05T"
    assert m.READY_FAILED == b"Z\x00\x00\x00\x05E"
    assert m.ready_for_query(b"T") == m.READY_IN_TRANSACTION


@pytest.mark.parametrize(
    "const,mtype",
    [
        (m.PARSE_COMPLETE_MSG, "1"),
        (m.BIND_COMPLETE_MSG, "2"),
        (m.CLOSE_COMPLETE_MSG, "3"),
        (m.NO_DATA_MSG, "n"),
        (m.EMPTY_QUERY_MSG, "I"),
        (m.SYNC_MSG, "S"),
        (m.TERMINATE_MSG, "X"),
    ],
)
def test_empty_body_constants(const: bytes, mtype: str) -> None:
    assert const == mtype.encode() + b"\x00\x00\x00\x04"


# --------------------------------------------------------------------- frontend messages


def test_query() -> None:
    assert one(m.query("SELECT 'é'"), "Q") == "SELECT 'é'\x00".encode()


def test_password_message() -> None:
    assert m.password_message(b"md5abc\x00") == b"p\x00\x00\x00\x0bmd5abc\x00"


def test_sasl_initial_response() -> None:
    body = one(m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"), "p")
    mech, pos = m.read_cstr(body, 0)
    assert mech == "SCRAM-SHA-256"
    assert m.decode_int32(body, pos) == 11
    assert body[pos + 4 :] == b"n,,n=,r=abc"


def test_parse_message() -> None:
    body = one(m.parse_message("s1", "SELECT $1", b"\x00\x01\x00\x00\x00\x17"), "P")
    assert body == b"s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"
    assert one(m.parse_message("", "SELECT 1"), "P") == b"\x00SELECT 1\x00\x00\x00"


def test_close_statement() -> None:
    assert m.close_statement("sw_x") == b"C\x00\x00\x00\x0aSsw_x\x00"


def test_decode_int32() -> None:
    assert m.decode_int32(b"\x00\x00\x00\x05") == 5
    assert m.decode_int32(b"xx\xff\xff\xff\xff", 2) == -1


def test_many_messages_split_back() -> None:
    stream = (
        m.AUTHENTICATION_OK
        + m.parameter_status("a", "b")
        + m.backend_key_data(1, 2)
        + m.row_description([("x", 23)])
        + m.data_row([b"1"])
        + m.command_complete("SELECT 1")
        + m.READY_IDLE
    )
    assert [chr(t) for t, _ in split(stream)] == ["R", "S", "K", "T", "D", "C", "Z"]
