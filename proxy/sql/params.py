"""Owns turning Bind parameter values into typed shard-key values.

Parameters reach the planner as the session received them:

* ``str``: a text-format value (what psycopg, libpq and pgbench send);
* ``bytes``: a binary-format value, decoded by its type OID (asyncpg binds binary);
* ``None``: SQL NULL;
* any other Python object (``int``, ``uuid.UUID``, ``list`` ...): as a driver would bind it,
  which is handy in tests and for ``SET shardwire.shard_key``.

The type OID comes from the Parse message, or, when the client left it 0, from the
server's ParameterDescription (the session should pass those; otherwise a binary value of
unknown type cannot be decoded and the statement routes as if the value were unknown).
Text values keep their OID's type; with OID 0 they are *untyped* (see
:mod:`proxy.topology.router` for how untyped values hash).
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Final

from proxy.topology.router import KeyValue, python_key_value

__all__ = [
    "ARRAY_ELEMENT_OIDS",
    "OID_INT2",
    "OID_INT4",
    "OID_INT8",
    "OID_TEXT",
    "OID_UUID",
    "OID_VARCHAR",
    "decode_binary_array",
    "decode_param",
    "decode_param_array",
    "param_oid",
    "parse_text_array",
]

OID_BOOL: Final = 16
OID_INT8: Final = 20
OID_INT2: Final = 21
OID_INT4: Final = 23
OID_TEXT: Final = 25
OID_NUMERIC: Final = 1700
OID_UNKNOWN: Final = 705
OID_BPCHAR: Final = 1042
OID_VARCHAR: Final = 1043
OID_DATE: Final = 1082
OID_TIMESTAMP: Final = 1114
OID_TIMESTAMPTZ: Final = 1184
OID_UUID: Final = 2950
OID_NAME: Final = 19

_INT_OIDS: Final = frozenset({OID_INT2, OID_INT4, OID_INT8})
_TEXT_OIDS: Final = frozenset({OID_TEXT, OID_VARCHAR, OID_NAME})
# array type -> element type
ARRAY_ELEMENT_OIDS: Final = {
    1005: OID_INT2,
    1007: OID_INT4,
    1016: OID_INT8,
    1009: OID_TEXT,
    1015: OID_VARCHAR,
    2951: OID_UUID,
    1231: OID_NUMERIC,
    1182: OID_DATE,
    1115: OID_TIMESTAMP,
    1185: OID_TIMESTAMPTZ,
}
_BINARY_INT = {OID_INT2: struct.Struct(">h"), OID_INT4: struct.Struct(">i"),
               OID_INT8: struct.Struct(">q")}
_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_UNKNOWN = KeyValue("unknown", None)
_NULL = KeyValue("null", None)


def decode_param(value: object, oid: int = 0) -> KeyValue:
    """One parameter as a :class:`KeyValue` (``unknown`` when it cannot be used)."""
    if value is None:
        return _NULL
    if isinstance(value, str):
        return _text_value(value, oid)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _binary_value(bytes(value), oid)
    kv = python_key_value(value)
    if oid in _TEXT_OIDS and kv.kind in ("int", "uuid"):
        return KeyValue("text", str(kv.value))
    return kv


def _text_value(text: str, oid: int) -> KeyValue:
    if oid == 0 or oid == OID_UNKNOWN:
        return KeyValue("untyped", text)
    if oid in _INT_OIDS:
        try:
            return KeyValue("int", int(text.strip()))
        except ValueError:
            return _UNKNOWN
    if oid in _TEXT_OIDS:
        return KeyValue("text", text)
    if oid == OID_UUID:
        try:
            return KeyValue("uuid", uuid.UUID(text.strip()))
        except ValueError:
            return _UNKNOWN
    if oid == OID_NUMERIC:
        return _numeric(text)
    if oid == OID_DATE:
        return KeyValue("date", text)
    if oid in (OID_TIMESTAMP, OID_TIMESTAMPTZ):
        return KeyValue("timestamp", text)
    if oid == OID_BOOL:
        return KeyValue("bool", text.strip().lower() in ("t", "true", "1", "yes", "on"))
    return _UNKNOWN  # another type (bpchar, float, json ...): not a supported shard key


def _numeric(text: str) -> KeyValue:
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        return _UNKNOWN
    return KeyValue("numeric", d) if d.is_finite() else _UNKNOWN


def _binary_value(data: bytes, oid: int) -> KeyValue:
    try:
        if oid in _BINARY_INT:
            (n,) = _BINARY_INT[oid].unpack(data)
            return KeyValue("int", n)
        if oid in _TEXT_OIDS:
            return KeyValue("text", data.decode("utf-8"))
        if oid == OID_UUID:
            return KeyValue("uuid", uuid.UUID(bytes=data))
        if oid == OID_DATE:
            (days,) = struct.unpack(">i", data)
            return KeyValue("date", (_PG_EPOCH_DATE + dt.timedelta(days=days)).isoformat())
        if oid in (OID_TIMESTAMP, OID_TIMESTAMPTZ):
            (micros,) = struct.unpack(">q", data)
            when = _PG_EPOCH + dt.timedelta(microseconds=micros)
            if oid == OID_TIMESTAMPTZ:
                return KeyValue("timestamp", when.isoformat(sep=" ") + "+00:00")
            return KeyValue("timestamp", when.isoformat(sep=" "))
        if oid == OID_BOOL:
            return KeyValue("bool", data != b"\x00")
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError):
        return _UNKNOWN
    return _UNKNOWN


def decode_param_array(value: object, oid: int = 0) -> list[KeyValue] | None:
    """The elements of an array parameter (``key = ANY($1)``); None if not decodable.

    Accepts a Python list/tuple, the text form ``'{1,2,3}'`` (elements typed by the array
    OID, untyped when it is 0) and the binary array format of the OIDs in
    :data:`ARRAY_ELEMENT_OIDS`.
    """
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [decode_param(v, ARRAY_ELEMENT_OIDS.get(oid, 0)) for v in value]
    if isinstance(value, str):
        items = parse_text_array(value)
        if items is None:
            return None
        elem = ARRAY_ELEMENT_OIDS.get(oid, 0)
        return [decode_param(v, elem) for v in items]
    if isinstance(value, (bytes, bytearray, memoryview)):
        decoded = decode_binary_array(bytes(value))
        if decoded is None:
            return None
        elem_oid, items = decoded
        return [decode_param(v, elem_oid) for v in items]
    return None


def decode_binary_array(data: bytes) -> tuple[int, list[bytes | None]] | None:
    """A one-dimensional binary array: ``(element OID, element values)``."""
    try:
        ndim, _flags, elem_oid = struct.unpack_from(">iiI", data, 0)
        pos = 12
        if ndim == 0:
            return elem_oid, []
        if ndim != 1:
            return None
        count, _lower = struct.unpack_from(">ii", data, pos)
        pos += 8
        items: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if length < 0:
                items.append(None)
                continue
            items.append(data[pos : pos + length])
            pos += length
        if pos != len(data):
            return None
        return elem_oid, items
    except struct.error:
        return None


def parse_text_array(text: str) -> list[str | None] | None:
    """Elements of a one-dimensional array literal ``{1,"a b",NULL}``; None if malformed
    or nested."""
    s = text.strip()
    if s.startswith("[") and "=" in s:  # explicit bounds: [1:3]={...}
        s = s[s.index("=") + 1 :].strip()
    if len(s) < 2 or s[0] != "{" or s[-1] != "}":
        return None
    body = s[1:-1]
    items: list[str | None] = []
    if not body.strip():
        return items
    i = 0
    n = len(body)
    while True:
        while i < n and body[i].isspace():
            i += 1
        if i < n and body[i] == "{":
            return None  # nested
        if i < n and body[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and body[i] != '"':
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(body[i])
                i += 1
            if i >= n:
                return None
            i += 1
            items.append("".join(chars))
            while i < n and body[i].isspace():
                i += 1
        else:
            start = i
            chars = []
            while i < n and body[i] != ",":
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                elif body[i] in '"{}':
                    return None
                chars.append(body[i])
                i += 1
            raw = "".join(chars).strip()
            if not raw and start == i:
                return None
            items.append(None if raw.upper() == "NULL" and '"' not in raw else raw)
        if i >= n:
            return items
        if body[i] != ",":
            return None
        i += 1


def param_oid(param_types: Sequence[int] | None, index: int) -> int:
    """The type OID of parameter ``index`` (0-based); 0 when not given."""
    if param_types is None or index >= len(param_types):
        return 0
    return param_types[index] or 0
