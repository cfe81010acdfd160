"""Bit-exact reimplementation of PostgreSQL's hash-partition routing.

Given a value and the ``MODULUS`` of a ``PARTITION BY HASH (key)`` table, this
module computes the ``REMAINDER`` of the partition PostgreSQL itself puts the row
in, without talking to the database.  It is pure Python and allocation-light so
it can run for every routed statement.

How PostgreSQL (15) routes a row
--------------------------------
1. Each key column is hashed with its type's *extended* (64-bit, seeded) hash
   support function, using the fixed seed ``HASH_PARTITION_SEED``
   (``0x7A5B22367996DCFD``):

   * ``int2`` / ``int4``: ``hash_uint32_extended((int32) value, seed)``
   * ``int8``: the low 32 bits are XOR'd with the high 32 bits (or with their
     complement when the value is negative) and the resulting uint32 goes
     through ``hash_uint32_extended``.
   * ``text`` / ``varchar``: ``hash_any_extended`` over the value's bytes in the
     server encoding.  That is only true for *deterministic* collations (the
     default, ``C``, ``POSIX``, any libc collation); a nondeterministic ICU
     collation hashes a sort key instead and is **not** supported here.
   * ``uuid``: ``hash_any_extended`` over its 16 bytes, in canonical order.

   ``hash_any_extended`` / ``hash_uint32_extended`` are Bob Jenkins' lookup3
   (``src/common/hashfn.c``): the seed is mixed into the initial state, then
   the data is consumed 12 bytes at a time as three little-endian uint32 words.
   On little-endian hosts the word-wise (aligned) and byte-wise (unaligned)
   code paths in C give identical results, and this module implements that
   shared result.  A big-endian server would compute different hashes.

2. The column hashes are folded together (``compute_partition_hash_value``)
   starting from ``rowHash = 0`` with
   ``hash_combine64(a, b) = a ^ (b + 0x49a0f4dd15e5a8e3 + (a << 54) + (a >> 7))``
   in uint64 arithmetic.  For a single-column key that is just
   ``colHash + 0x49a0f4dd15e5a8e3 (mod 2**64)``.

3. The partition is the one with ``REMAINDER = rowHash % MODULUS`` (unsigned).

Integer widths: int2, int4 and int8 hash identically
----------------------------------------------------
``hashint8extended`` was designed so that cross-type hash joins work: for a
value that fits in 32 bits, the high half is all zeros (or all ones for a
negative value, and then its complement, zero, is used), so the XOR leaves the
low word unchanged and the result equals ``hashint4extended`` of the same value.
``hashint2extended`` sign-extends to int32 first.  So ``hash_int(v, "int2") ==
hash_int(v, "int4") == hash_int(v, "int8")`` for every ``v`` that fits all three,
and a proxy that only knows "it's an integer" can safely use the int8 path.
This is checked against a real PostgreSQL by the golden vectors in
``tests/cases/hash_vectors.csv`` and by ``tests/integration/test_hashing_pg.py``.
The ``kind`` argument therefore only controls range validation.

Strings are encoded as UTF-8, which assumes ``server_encoding = UTF8``; pass
``bytes`` to hash the server-encoded form of a value directly.
"""

from __future__ import annotations

import re
import struct
import uuid

__all__ = [
    "HASH_PARTITION_SEED",
    "bucket_for_untyped",
    "bucket_of",
    "hash_any_extended",
    "hash_combine64",
    "hash_int",
    "hash_text",
    "hash_uint32_extended",
    "hash_uuid",
    "hash_value",
    "normalize_type_name",
]

HASH_PARTITION_SEED: int = 0x7A5B22367996DCFD

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_COMBINE_CONST = 0x49A0F4DD15E5A8E3
_GOLDEN = 0x9E3779B9 + 3923095  # lookup3's initial constant plus PG's tweak

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int2": (-(1 << 15), (1 << 15) - 1),
    "int4": (-(1 << 31), (1 << 31) - 1),
    "int8": (-(1 << 63), (1 << 63) - 1),
}


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= _rot(c, 4)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rot(a, 6)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rot(b, 8)
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= _rot(c, 16)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rot(a, 19)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rot(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c ^= b
    c = (c - _rot(b, 14)) & _M32
    a ^= c
    a = (a - _rot(c, 11)) & _M32
    b ^= a
    b = (b - _rot(a, 25)) & _M32
    c ^= b
    c = (c - _rot(b, 16)) & _M32
    a ^= c
    a = (a - _rot(c, 4)) & _M32
    b ^= a
    b = (b - _rot(a, 14)) & _M32
    c ^= b
    c = (c - _rot(b, 24)) & _M32
    return a, b, c


def _initial_state(length: int, seed: int) -> tuple[int, int, int]:
    """lookup3 state after setup and (non-zero) seed perturbation."""
    a = b = c = (_GOLDEN + length) & _M32
    if seed:
        a = (a + (seed >> 32)) & _M32
        b = (b + (seed & _M32)) & _M32
        a, b, c = _mix(a, b, c)
    return a, b, c


# The state before the data is added depends only on (length, seed); for the
# partition seed and common lengths it is computed once.
_PARTITION_STATE_4 = _initial_state(4, HASH_PARTITION_SEED)
_PARTITION_STATES: list[tuple[int, int, int]] = [
    _initial_state(n, HASH_PARTITION_SEED) for n in range(256)
]
_WORDS3 = struct.Struct("<3I")


def hash_uint32_extended(k: int, seed: int = 0) -> int:
    """``hash_uint32_extended(k, seed)``: the 64-bit lookup3 hash of one uint32."""
    if seed == HASH_PARTITION_SEED:
        a, b, c = _PARTITION_STATE_4
    else:
        a, b, c = _initial_state(4, seed & _M64)
    a, b, c = _final((a + (k & _M32)) & _M32, b, c)
    return (b << 32) | c


def hash_any_extended(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """``hash_any_extended(data, len, seed)``: 64-bit lookup3 hash of a byte string."""
    length = len(data)
    if seed == HASH_PARTITION_SEED and length < 256:
        a, b, c = _PARTITION_STATES[length]
    else:
        a, b, c = _initial_state(length, seed & _M64)

    offset = 0
    unpack = _WORDS3.unpack_from
    while length - offset >= 12:
        wa, wb, wc = unpack(data, offset)
        a, b, c = _mix((a + wa) & _M32, (b + wb) & _M32, (c + wc) & _M32)
        offset += 12

    rest = length - offset
    if rest:
        tail = bytes(data[offset:])
        # Byte-wise little-endian tail: bytes 0-3 into a, 4-7 into b, and
        # 8-10 into c shifted up one byte (c's low byte is left alone).
        a = (a + int.from_bytes(tail[0:4], "little")) & _M32
        if rest > 4:
            b = (b + int.from_bytes(tail[4:8], "little")) & _M32
            if rest > 8:
                c = (c + (int.from_bytes(tail[8:11], "little") << 8)) & _M32

    a, b, c = _final(a, b, c)
    return (b << 32) | c


def hash_combine64(a: int, b: int) -> int:
    """PostgreSQL's ``hash_combine64`` in uint64 arithmetic."""
    return a ^ ((b + _COMBINE_CONST + ((a << 54) & _M64) + (a >> 7)) & _M64)


def _check_int(value: object, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{kind} hash needs an int, got {type(value).__name__}")
    try:
        lo, hi = _INT_RANGES[kind]
    except KeyError:
        raise ValueError(f"unknown integer kind {kind!r}; expected int2, int4 or int8") from None
    if not lo <= value <= hi:
        raise OverflowError(f"{value} is out of range for {kind}")
    return value


def hash_int8(value: int) -> int:
    """:func:`hash_int` of a value already known to be in the int8 range (the router's hot
    path: no checks)."""
    lohalf = value & _M32
    if value >= 0:
        lohalf ^= value >> 32
    else:
        lohalf ^= ~(value >> 32) & _M32
    a, b, c = _PARTITION_STATE_4
    m = _M32
    a = (a + lohalf) & m
    c ^= b
    c = (c - (((b << 14) | (b >> 18)) & m)) & m
    a ^= c
    a = (a - (((c << 11) | (c >> 21)) & m)) & m
    b ^= a
    b = (b - (((a << 25) | (a >> 7)) & m)) & m
    c ^= b
    c = (c - (((b << 16) | (b >> 16)) & m)) & m
    a ^= c
    a = (a - (((c << 4) | (c >> 28)) & m)) & m
    b ^= a
    b = (b - (((a << 14) | (a >> 18)) & m)) & m
    c ^= b
    c = (c - (((b << 24) | (b >> 8)) & m)) & m
    return (b << 32) | c


def hash_int(value: int, kind: str = "int8") -> int:
    """Extended hash (partition seed) of an ``int2``/``int4``/``int8`` value.

    All three kinds give the same result for the same number (see the module
    docstring); ``kind`` only selects the accepted range.
    """
    value = _check_int(value, kind)
    lohalf = value & _M32
    if value >= 0:
        lohalf ^= value >> 32
    else:
        # Complement of the (sign-extended) high word, as a uint32.
        lohalf ^= ~(value >> 32) & _M32
    a, b, c = _PARTITION_STATE_4
    a, b, c = _final((a + lohalf) & _M32, b, c)
    return (b << 32) | c


def hash_text(value: str | bytes) -> int:
    """Extended hash (partition seed) of a ``text``/``varchar`` value.

    ``str`` is encoded as UTF-8; ``bytes`` are hashed as given.  Valid only for
    deterministic collations.
    """
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(f"text hash needs str or bytes, got {type(value).__name__}")
    return hash_any_extended(data, HASH_PARTITION_SEED)


def hash_uuid(value: uuid.UUID | str | bytes) -> int:
    """Extended hash (partition seed) of a ``uuid`` value."""
    if isinstance(value, uuid.UUID):
        data = value.bytes
    elif isinstance(value, str):
        data = uuid.UUID(value).bytes
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) != 16:
            raise ValueError(f"uuid bytes must be 16 long, got {len(data)}")
    else:
        raise TypeError(f"uuid hash needs UUID, str or bytes, got {type(value).__name__}")
    return hash_any_extended(data, HASH_PARTITION_SEED)


_TYPE_ALIASES: dict[str, str] = {
    "smallint": "int2",
    "int2": "int2",
    "smallserial": "int2",
    "serial2": "int2",
    "integer": "int4",
    "int": "int4",
    "int4": "int4",
    "serial": "int4",
    "serial4": "int4",
    "bigint": "int8",
    "int8": "int8",
    "bigserial": "int8",
    "serial8": "int8",
    "text": "text",
    "varchar": "text",
    "character varying": "text",
    "uuid": "uuid",
}

_TYPMOD_RE = re.compile(r"\s*\(.*\)\s*$")
_SPACES_RE = re.compile(r"\s+")
_INT_LITERAL_RE = re.compile(r"\s*[+-]?[0-9]+\s*")


def normalize_type_name(type_name: str) -> str:
    """Map a SQL type name to ``int2``/``int4``/``int8``/``text``/``uuid``.

    Case, surrounding whitespace, a ``pg_catalog.`` prefix and a typmod such as
    ``varchar(20)`` are ignored.  Raises ``ValueError`` for unsupported types
    (notably ``char(n)``/``bpchar``, whose hash ignores trailing spaces).
    """
    name = _SPACES_RE.sub(" ", _TYPMOD_RE.sub("", type_name.strip().lower()))
    name = name.removeprefix("pg_catalog.")
    try:
        return _TYPE_ALIASES[name]
    except KeyError:
        raise ValueError(f"unsupported hash partition key type {type_name!r}") from None


def hash_value(value: object, type_name: str) -> int:
    """Extended hash (partition seed) of ``value`` as SQL type ``type_name``.

    Integer types also accept a decimal string (as PostgreSQL's input function
    would), uuid accepts ``uuid.UUID``, ``str`` or 16 raw bytes.
    """
    kind = _TYPE_ALIASES.get(type_name) or normalize_type_name(type_name)
    if kind == "text":
        return hash_text(value)  # type: ignore[arg-type]
    if kind == "uuid":
        return hash_uuid(value)  # type: ignore[arg-type]
    if isinstance(value, str):
        if not _INT_LITERAL_RE.fullmatch(value):
            raise ValueError(f"invalid input syntax for {kind}: {value!r}")
        value = int(value)
    return hash_int(value, kind)  # type: ignore[arg-type]


def _remainder(col_hash: int, buckets: int) -> int:
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"modulus must be a positive integer, got {buckets!r}")
    # hash_combine64(0, col_hash) == col_hash + constant (mod 2**64).
    return ((col_hash + _COMBINE_CONST) & _M64) % buckets


def bucket_of(value: object, type_name: str, buckets: int) -> int:
    """``REMAINDER`` of the partition holding ``value`` for ``MODULUS buckets``."""
    return _remainder(hash_value(value, type_name), buckets)


def bucket_for_untyped(value: object, buckets: int) -> int:
    """Like :func:`bucket_of`, guessing the type from the Python value.

    ``int`` takes the int8 path (identical for int2/int4 columns), ``uuid.UUID``
    the uuid path and ``str``/``bytes`` the text path.
    """
    if isinstance(value, bool):
        raise TypeError("bool is not a supported hash partition key")
    if isinstance(value, int):
        return _remainder(hash_int(value, "int8"), buckets)
    if isinstance(value, uuid.UUID):
        return _remainder(hash_uuid(value), buckets)
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return _remainder(hash_text(value), buckets)
    raise TypeError(f"cannot infer a hash partition key type for {type(value).__name__}")
