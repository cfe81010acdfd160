"""Encoders and decoders for the Postgres v3 messages shardwire builds or must read.

Everything else is forwarded as bytes. Pure functions over bytes; no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

PROTOCOL_V3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_II = struct.Struct("!ii")

# Message type bytes (backend -> frontend).
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NOTIFICATION_RESPONSE = ord("A")
COMMAND_COMPLETE = ord("C")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
NO_DATA = ord("n")
PARAMETER_DESCRIPTION = ord("t")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
EMPTY_QUERY = ord("I")
PORTAL_SUSPENDED = ord("s")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
FUNCTION_CALL_RESPONSE = ord("V")
NEGOTIATE_PROTOCOL = ord("v")

# Frontend -> backend.
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
CLOSE = ord("C")
SYNC = ord("S")
FLUSH = ord("H")
TERMINATE = ord("X")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
FUNCTION_CALL = ord("F")
PASSWORD = ord("p")  # also SASLInitialResponse / SASLResponse

# Authentication request codes.
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def message(mtype: int, body: bytes = b"") -> bytes:
    return bytes((mtype,)) + _U32.pack(len(body) + 4) + body


def cstr(text: str) -> bytes:
    # surrogateescape: the inverse of read_cstr, so non-UTF-8 client bytes (a latin1 user
    # name in an error message) round-trip instead of raising UnicodeEncodeError.
    return text.encode("utf-8", "surrogateescape") + b"\x00"


def read_cstr(body: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated string at `pos`; return it and the position after the NUL."""
    end = body.index(b"\x00", pos)
    return body[pos:end].decode("utf-8", "surrogateescape"), end + 1


# ---------------------------------------------------------------- backend messages we build


def authentication(code: int, payload: bytes = b"") -> bytes:
    return message(AUTHENTICATION, _I32.pack(code) + payload)


AUTHENTICATION_OK = authentication(AUTH_OK)


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    return authentication(AUTH_SASL, b"".join(cstr(m) for m in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return message(PARAMETER_STATUS, cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return message(BACKEND_KEY_DATA, _II.pack(pid, key))


READY_IDLE = message(READY_FOR_QUERY, b"I")
READY_IN_TRANSACTION = message(READY_FOR_QUERY, b"T")
READY_FAILED = message(READY_FOR_QUERY, b"E")
PARSE_COMPLETE_MSG = message(PARSE_COMPLETE)
BIND_COMPLETE_MSG = message(BIND_COMPLETE)
CLOSE_COMPLETE_MSG = message(CLOSE_COMPLETE)
NO_DATA_MSG = message(NO_DATA)
EMPTY_QUERY_MSG = message(EMPTY_QUERY)


def negotiate_protocol_version(newest: int, unrecognized: Iterable[str]) -> bytes:
    """NegotiateProtocolVersion. `newest` is a whole protocol version (196608 for 3.0): the
    docs say "newest minor", but Postgres sends major << 16 | minor and libpq expects it."""
    names = list(unrecognized)
    return message(NEGOTIATE_PROTOCOL, _I32.pack(newest) + _I32.pack(len(names))
                   + b"".join(cstr(n) for n in names))


def ready_for_query(status: bytes) -> bytes:
    return message(READY_FOR_QUERY, status)


def command_complete(tag: str) -> bytes:
    return message(COMMAND_COMPLETE, cstr(tag))


def error_response(
    severity: str,
    sqlstate: str,
    text: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate),
              b"M" + cstr(text)]
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    return message(NOTICE_RESPONSE if notice else ERROR_RESPONSE, b"".join(fields) + b"\x00")


def row_description(columns: Iterable[tuple[str, int]]) -> bytes:
    """A text-format RowDescription with (name, type oid) per column (admin/local answers)."""
    parts = []
    count = 0
    for name, oid in columns:
        count += 1
        parts.append(cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0))
    return message(ROW_DESCRIPTION, _I16.pack(count) + b"".join(parts))


def data_row(values: Iterable[bytes | None]) -> bytes:
    parts = []
    count = 0
    for value in values:
        count += 1
        if value is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(value)) + value)
    return message(DATA_ROW, _I16.pack(count) + b"".join(parts))


# --------------------------------------------------------------- frontend messages we build


def startup_message(params: Mapping[str, str]) -> bytes:
    pairs = b"".join(cstr(k) + cstr(v) for k, v in params.items())
    body = _I32.pack(PROTOCOL_V3) + pairs + b"\x00"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, key: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST) + _II.pack(pid, key)


def ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST)


def query(sql: str) -> bytes:
    return message(QUERY, cstr(sql))


def password_message(payload: bytes) -> bytes:
    return message(PASSWORD, payload)


def sasl_initial_response(mechanism: str, payload: bytes) -> bytes:
    return message(PASSWORD, cstr(mechanism) + _I32.pack(len(payload)) + payload)


def parse_message(name: str, sql: str, param_types: bytes = b"\x00\x00") -> bytes:
    return message(PARSE, cstr(name) + cstr(sql) + param_types)


def close_statement(name: str) -> bytes:
    return message(CLOSE, b"S" + cstr(name))


SYNC_MSG = message(SYNC)
TERMINATE_MSG = message(TERMINATE)


# ---------------------------------------------------------------------------- decoders


def decode_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    """Decode a startup-phase packet body (after its length): (code, parameters).

    Raises ValueError when a v3 packet's parameter list is malformed (a string without
    its NUL, or no final terminator), which Postgres reports as "invalid startup packet
    layout"."""
    (code,) = _I32.unpack_from(packet, 0)
    params: dict[str, str] = {}
    if code >> 16 != 3:  # any 3.x has the same layout (3.2 is negotiated down to 3.0)
        return code, params
    pos = 4
    while pos < len(packet) and packet[pos] != 0:
        key, pos = read_cstr(packet, pos)  # ValueError if the NUL is missing
        value, pos = read_cstr(packet, pos)
        params[key] = value
    # Fault tests: "user\0\0" used to decode as user="" (the terminator eaten as a value).
    if pos != len(packet) - 1:
        raise ValueError("expected terminator as last byte")
    return code, params


def decode_cancel(packet: bytes) -> tuple[int, int]:
    return _II.unpack_from(packet, 4)


def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = read_cstr(body, pos + 1)
        fields[code] = value
    return fields


def decode_data_row(body: bytes) -> list[str | None]:
    """A DataRow's values as text (NULL as None): for the proxy's own small queries."""
    count = int.from_bytes(body[:2], "big")
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        length = int.from_bytes(body[pos:pos + 4], "big", signed=True)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos:pos + length].decode())
            pos += length
    return values


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = read_cstr(body, 0)
    value, _ = read_cstr(body, pos)
    return name, value


def decode_int32(body: bytes, pos: int = 0) -> int:
    return _I32.unpack_from(body, pos)[0]


def _bind_parts(body: bytes, start: int
                ) -> tuple[str, str, tuple[int, ...], list[bytes], int]:
    """A Bind body's portal, statement, format codes, parameters (each still with its
    int32 length, -1 for NULL) and the position of its result format codes."""
    portal, pos = read_cstr(body, start)
    stmt, pos = read_cstr(body, pos)
    (nformats,) = _I16.unpack_from(body, pos)
    pos += 2
    formats = struct.unpack_from(f"!{nformats}h", body, pos) if nformats else ()
    pos += 2 * nformats
    (nparams,) = _I16.unpack_from(body, pos)
    pos += 2
    raw: list[bytes] = []
    for _ in range(nparams):
        (length,) = _I32.unpack_from(body, pos)
        size = 4 + max(length, 0)
        raw.append(body[pos:pos + size])
        pos += size
    return portal, stmt, formats, raw, pos


def bind_param(body: bytes, pos: int, index: int) -> str | bytes | None:
    """One parameter of a Bind body whose names end at `pos` (text format as str, binary
    as bytes, None for NULL or when there is no such parameter): the router's hot path,
    without decoding the others."""
    (nformats,) = _I16.unpack_from(body, pos)
    fpos = pos + 2
    pos = fpos + 2 * nformats
    (nparams,) = _I16.unpack_from(body, pos)
    if index >= nparams:
        return None
    pos += 2
    for _ in range(index):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4 + max(length, 0)
    (length,) = _I32.unpack_from(body, pos)
    if length < 0:
        return None
    raw = body[pos + 4:pos + 4 + length]
    fmt = 0 if nformats == 0 else _I16.unpack_from(
        body, fpos if nformats == 1 else fpos + 2 * index)[0]
    return raw if fmt == 1 else raw.decode("utf-8", "surrogateescape")


def _format_of(formats: tuple[int, ...], index: int) -> int:
    return formats[0] if len(formats) == 1 else formats[index] if formats else 0


def decode_bind(region: bytes, start: int, end: int
                ) -> tuple[str, str, list[str | bytes | None], int]:
    """A Bind body: (portal, statement, parameter values, position of the result formats).

    Values come as the client sent them: ``str`` for text format (UTF-8), ``bytes`` for
    binary format, ``None`` for NULL. Raises ValueError/struct.error on a malformed body."""
    portal, stmt, formats, raw, pos = _bind_parts(region, start)
    if pos > end:
        raise ValueError("Bind message too short")
    values: list[str | bytes | None] = []
    for i, item in enumerate(raw):
        if item[:4] == b"\xff\xff\xff\xff":
            values.append(None)
        elif _format_of(formats, i) == 1:
            values.append(item[4:])
        else:
            values.append(item[4:].decode("utf-8", "surrogateescape"))
    return portal, stmt, values, pos


def rebind(region: bytes, start: int, end: int, keep: Sequence[int], statement: str) -> bytes:
    """A Bind body for `statement` carrying only the parameters at `keep` (in that order),
    each with its own format code; the portal and result formats stay the client's."""
    portal, _, formats, raw, pos = _bind_parts(region, start)
    fmt = [_format_of(formats, i) for i in keep]
    return (cstr(portal) + cstr(statement) + _I16.pack(len(keep))
            + struct.pack(f"!{len(keep)}h", *fmt) + _I16.pack(len(keep))
            + b"".join(raw[i] for i in keep) + region[pos:end])


def bind_result_binary(body: bytes) -> bool:
    """Whether a Bind body asks for the (first) result column in binary format."""
    pos = _bind_parts(body, 0)[4]
    (nresults,) = _I16.unpack_from(body, pos)
    return nresults > 0 and _I16.unpack_from(body, pos + 2)[0] == 1


def execute_max_rows(region: bytes, start: int, end: int) -> int:
    """The row limit of an Execute message (0: all rows)."""
    _, pos = read_cstr(region, start)
    return decode_int32(region, pos) if pos + 4 <= end else 0


def decode_key_data(body: bytes) -> tuple[int, int]:
    return _II.unpack_from(body, 0)


def malformed_frontend(mtype: int, region: bytes, start: int, end: int) -> str | None:
    """Postgres' complaint about a frontend message body the proxy must read, else None.

    Only the strings the session decodes are checked (cheap `find`s); Postgres answers these
    with ERROR 08P01 and keeps the session."""
    if mtype == QUERY:
        nul = region.find(b"\x00", start, end)
        if nul < 0:
            return "invalid string in message"
        return None if nul == end - 1 else "invalid message format"
    if mtype == PARSE or mtype == BIND:  # two strings first
        nul = region.find(b"\x00", start, end)
        if nul < 0 or region.find(b"\x00", nul + 1, end) < 0:
            return "invalid string in message"
    elif mtype == DESCRIBE or mtype == CLOSE:  # a byte, then a string
        if start >= end:
            return "no data left in message"
        if region.find(b"\x00", start + 1, end) < 0:
            return "invalid string in message"
    elif mtype == EXECUTE and region.find(b"\x00", start, end) < 0:
        return "invalid string in message"
    return None
