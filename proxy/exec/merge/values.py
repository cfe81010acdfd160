"""Column values for cross-shard merging: decode, compare, combine, re-encode like PostgreSQL.

Shards answer with DataRow messages whose column values are in text or binary format (the
client picks per column in Bind). To merge them the proxy must decode the values, order and
group them exactly as PostgreSQL would, compute aggregates, and send computed values back in
the client's format, byte-identical to what PostgreSQL itself would send.

Entry point: :func:`codec_for` returns a :class:`Codec` for a type OID with

* ``decode(raw, binary)`` - the column bytes (never NULL: the caller handles NULLs) to a value,
* ``encode(value, binary)`` - the bytes PostgreSQL's output (text) or send (binary) function
  would produce,
* ``sort_key(value)`` - a Python-comparable key with PostgreSQL's btree ordering,
* ``group_key(value)`` - a hashable key with PostgreSQL's equality (GROUP BY / DISTINCT).

Value representations (exact, covering PostgreSQL's whole range, infinities included):

=====================  ===============================================================
int2/int4/int8/oid     ``int``
numeric                ``decimal.Decimal`` (its exponent is the display scale; NaN and
                       +-Infinity are the Decimal specials)
float4/float8          ``float`` (float4 values are exactly representable floats)
bool                   ``bool``
text/varchar/bpchar/   ``str`` (bpchar keeps its padding; it is insignificant only when
name                   comparing)
"char"                 ``int`` (the byte, 0-255)
bytea                  ``bytes``
uuid                   ``uuid.UUID``
date                   ``int`` days since 2000-01-01 (PostgreSQL's own representation;
                       ``DATE_NEG_INFINITY`` / ``DATE_POS_INFINITY`` for +-infinity)
time                   ``int`` microseconds since midnight
timestamp/timestamptz  ``int`` microseconds since 2000-01-01 00:00 (UTC for timestamptz);
                       ``TS_NEG_INFINITY`` / ``TS_POS_INFINITY`` for +-infinity
interval               :class:`Interval` (months, days, microseconds)
json/jsonb             ``str`` (the JSON text; equality only)
unknown types          :class:`Raw` (the bytes and their format; equality only)
=====================  ===============================================================

Assumptions about the session (both the shards' and the client's):

* ``client_encoding`` is UTF8.
* ``DateStyle`` is ISO (``ISO, MDY`` or ``ISO, DMY``), ``IntervalStyle`` is ``postgres``,
  ``bytea_output`` is ``hex`` (``escape`` is accepted when decoding).
* timestamptz text is decoded with the offset it carries; encoding it needs the client's
  ``TimeZone`` (``tz`` argument of :func:`codec_for`, an IANA zone name, default ``UTC``).
* floats: shards must use ``extra_float_digits >= 1`` (the default) so text values
  round-trip; encoding follows the ``extra_float_digits`` argument (the client's setting).

Text ordering follows the column's collation (:class:`TextOrder`): ``C``/``POSIX``/
``C.UTF-8``/``ucs_basic`` compare code points (= UTF-8 byte order); any other name is a libc
locale compared with ``strxfrm`` and ties broken by code points, like PostgreSQL's
deterministic libc collations. ``LC_COLLATE`` is process-wide, so one process supports a
single libc collation (plus the code-point ones).

Aggregates: :func:`sum_result_type`, :func:`avg_result_type`, :data:`COUNT_RESULT_TYPE`,
:func:`sum_add` (combine partial sums), :func:`avg_finish` (sum / count with PostgreSQL's
result type and scale), :func:`numeric_div` (PostgreSQL's ``numeric / numeric``).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import functools
import locale
import math
import re
import struct
import threading
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from proxy.errors import FeatureNotSupported, ShardwireError

__all__ = [
    "BOOL",
    "BPCHAR",
    "BYTEA",
    "CHAR",
    "COUNT_RESULT_TYPE",
    "DATE",
    "DATE_NEG_INFINITY",
    "DATE_POS_INFINITY",
    "FLOAT4",
    "FLOAT8",
    "INT2",
    "INT4",
    "INT8",
    "INTERVAL",
    "JSON",
    "JSONB",
    "NAME",
    "NUMERIC",
    "OID",
    "TEXT",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "TS_NEG_INFINITY",
    "TS_POS_INFINITY",
    "UUID",
    "VARCHAR",
    "Codec",
    "CollationNotAvailable",
    "DivisionByZero",
    "Interval",
    "InvalidValue",
    "Raw",
    "TextOrder",
    "UnsupportedType",
    "ValueOutOfRange",
    "avg_finish",
    "avg_result_type",
    "codec_for",
    "format_float4",
    "format_float8",
    "format_numeric",
    "numeric_div",
    "numeric_from_binary",
    "numeric_to_binary",
    "sum_add",
    "sum_result_type",
    "text_order",
]

# ----------------------------------------------------------------------------- type OIDs

BOOL = 16
BYTEA = 17
CHAR = 18
NAME = 19
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
BPCHAR = 1042
VARCHAR = 1043
DATE = 1082
TIME = 1083
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
INTERVAL = 1186
NUMERIC = 1700
UUID = 2950
JSONB = 3802

COUNT_RESULT_TYPE = INT8

DATE_NEG_INFINITY = -(2**31)
DATE_POS_INFINITY = 2**31 - 1
TS_NEG_INFINITY = -(2**63)
TS_POS_INFINITY = 2**63 - 1

_USECS_PER_SEC = 1_000_000
_USECS_PER_DAY = 86_400 * _USECS_PER_SEC
_INT8_MIN = -(2**63)
_INT8_MAX = 2**63 - 1

# ----------------------------------------------------------------------------- errors


class UnsupportedType(FeatureNotSupported):
    """The merge cannot order (or aggregate) values of this type (0A000)."""


class CollationNotAvailable(FeatureNotSupported):
    """A libc collation the proxy cannot reproduce on this machine (0A000)."""


class InvalidValue(ShardwireError):
    """A column value could not be decoded (22P02: it is not what the shard should send)."""

    sqlstate = "22P02"


class ValueOutOfRange(ShardwireError):
    """An aggregate overflowed its result type (22003), e.g. ``bigint out of range``."""

    sqlstate = "22003"


class DivisionByZero(ShardwireError):
    sqlstate = "22012"


# ----------------------------------------------------------------------------- value types


class Interval(NamedTuple):
    """A PostgreSQL interval: months, days and microseconds are kept apart, as Postgres does.

    Compare intervals with the codec's ``sort_key`` (Postgres treats 1 mon = 30 days), never
    with tuple comparison."""

    months: int
    days: int
    micros: int


class Raw(NamedTuple):
    """A value of a type this module does not know: its bytes as sent, and their format."""

    data: bytes
    binary: bool


# ----------------------------------------------------------------------------- text order

_CODE_POINT_COLLATIONS = frozenset(
    {"c", "posix", "c.utf-8", "c.utf8", "ucs_basic", "pg_c_utf8", "default_c"}
)
_locale_lock = threading.Lock()
_active_libc_collation: str | None = None


class TextOrder:
    """How text-like values sort under one collation.

    ``key(s)`` is a sort key (and, as the collations are deterministic, an equality key).
    Code-point collations sort by code point; other names are libc locales: ``LC_COLLATE``
    is set to the name (once per process) and keys are ``(strxfrm(s), s)`` - ties under
    ``strcoll`` are broken by comparing bytes, as PostgreSQL does for deterministic
    collations. Raises :class:`CollationNotAvailable` if the locale does not exist here or
    another libc collation is already in use.
    """

    __slots__ = ("code_point", "key", "name")

    def __init__(self, name: str = "C") -> None:
        self.name = name
        self.code_point = name.lower() in _CODE_POINT_COLLATIONS
        self.key: Callable[[str], Any]
        if self.code_point:
            self.key = _identity
        else:
            _activate_libc_collation(name)
            strxfrm = locale.strxfrm

            def libc_key(s: str) -> tuple[str, str]:
                return (strxfrm(s), s)

            self.key = libc_key

    def __repr__(self) -> str:
        return f"TextOrder({self.name!r})"


def _identity(s: str) -> str:
    return s


def _activate_libc_collation(name: str) -> None:
    global _active_libc_collation
    with _locale_lock:
        if _active_libc_collation == name:
            return
        if _active_libc_collation is not None:
            raise CollationNotAvailable(
                f'collation "{name}" cannot be merged: this proxy process already sorts with '
                f'libc collation "{_active_libc_collation}" (LC_COLLATE is process-wide)'
            )
        try:
            locale.setlocale(locale.LC_COLLATE, name)
        except locale.Error:
            raise CollationNotAvailable(
                f'collation "{name}" is not available on the proxy host, so rows from several '
                "shards cannot be merged in its order",
                hint=f"Install the {name} locale on the proxy host (e.g. locale-gen), "
                'or sort with COLLATE "C".',
            ) from None
        _active_libc_collation = name


@functools.lru_cache(maxsize=64)
def _text_order(name: str) -> TextOrder:
    return TextOrder(name)


# ----------------------------------------------------------------------------- codec base


class Codec:
    """Decode / encode / compare values of one type. Subclasses implement the four methods."""

    oid: int = 0
    type_name: str = "unknown"
    orderable: bool = True
    is_text: bool = False  # text-like: sort_key follows the codec's collation

    def decode(self, raw: bytes, binary: bool) -> Any:
        raise NotImplementedError

    def encode(self, value: Any, binary: bool) -> bytes:
        raise NotImplementedError

    def sort_key(self, value: Any) -> Any:
        """A key whose Python ordering is PostgreSQL's default btree ordering of the type."""
        return value

    def group_key(self, value: Any) -> Any:
        """A hashable key equal for values PostgreSQL's ``=`` treats as equal."""
        return self.sort_key(value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type_name} ({self.oid})>"


def _bad(type_name: str, raw: bytes) -> InvalidValue:
    return InvalidValue(f"invalid {type_name} value from shard: {raw[:64]!r}")


# ----------------------------------------------------------------------------- integers


class _IntCodec(Codec):
    def __init__(self, oid: int, type_name: str, fmt: str) -> None:
        self.oid = oid
        self.type_name = type_name
        self._struct = struct.Struct(fmt)

    def decode(self, raw: bytes, binary: bool) -> int:
        try:
            if binary:
                return int(self._struct.unpack(raw)[0])
            return int(raw)
        except (struct.error, ValueError):
            raise _bad(self.type_name, raw) from None

    def encode(self, value: int, binary: bool) -> bytes:
        if binary:
            try:
                return self._struct.pack(value)
            except struct.error:
                raise ValueOutOfRange(f"{self.type_name} out of range") from None
        return str(value).encode()


# ----------------------------------------------------------------------------- bool


class _BoolCodec(Codec):
    oid = BOOL
    type_name = "boolean"

    def decode(self, raw: bytes, binary: bool) -> bool:
        if binary:
            if len(raw) != 1:
                raise _bad(self.type_name, raw)
            return raw != b"\x00"
        if raw == b"t":
            return True
        if raw == b"f":
            return False
        low = raw.strip().lower()
        if low in (b"true", b"yes", b"on", b"1"):
            return True
        if low in (b"false", b"no", b"off", b"0"):
            return False
        raise _bad(self.type_name, raw)

    def encode(self, value: bool, binary: bool) -> bytes:
        if binary:
            return b"\x01" if value else b"\x00"
        return b"t" if value else b"f"


# ----------------------------------------------------------------------------- numeric

_NUMERIC_POS = 0x0000
_NUMERIC_NEG = 0x4000
_NUMERIC_NAN = 0xC000
_NUMERIC_PINF = 0xD000
_NUMERIC_NINF = 0xF000
_NUMERIC_HEAD = struct.Struct("!hhHH")
_NUMERIC_MIN_SIG_DIGITS = 16
_NUMERIC_MAX_DISPLAY_SCALE = 1000
_DEC_DIGITS = 4

_EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)
_NAN = Decimal("NaN")
_PINF = Decimal("Infinity")
_NINF = Decimal("-Infinity")
_ZERO = Decimal(0)


def _dscale(d: Decimal) -> int:
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    return -exp if exp < 0 else 0


def format_numeric(d: Decimal) -> str:
    """PostgreSQL's ``numeric_out``: plain notation, exactly the display scale's digits."""
    if not d.is_finite():
        if d.is_nan():
            return "NaN"
        return "-Infinity" if d.is_signed() else "Infinity"
    s = format(d, "f")
    if s[0] == "-" and not d:
        s = s[1:]  # numeric has no negative zero
    return s


def numeric_to_binary(d: Decimal) -> bytes:
    """PostgreSQL's ``numeric_send``: base-10000 digits, leading/trailing zero digits cut."""
    if not d.is_finite():
        if d.is_nan():
            return _NUMERIC_HEAD.pack(0, 0, _NUMERIC_NAN, 0)
        # numeric_send reads the display scale of an infinity through the short-header
        # mask (header & 0x1F80) >> 7, which is 32 for 0xD000 and 0xF000: PostgreSQL sends
        # dscale 32.
        flag = _NUMERIC_NINF if d.is_signed() else _NUMERIC_PINF
        return _NUMERIC_HEAD.pack(0, 0, flag, (flag & 0x1F80) >> 7)
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    dscale = -exp if exp < 0 else 0
    coef = "".join(map(str, digits)).lstrip("0")
    if not coef:
        return _NUMERIC_HEAD.pack(0, 0, _NUMERIC_POS, dscale)
    # Align the exponent down to a multiple of 4 (append zeros), then group from the right.
    shift = exp % _DEC_DIGITS
    coef += "0" * shift
    exp -= shift
    pad = -len(coef) % _DEC_DIGITS
    coef = "0" * pad + coef
    groups = [int(coef[i : i + _DEC_DIGITS]) for i in range(0, len(coef), _DEC_DIGITS)]
    weight = len(groups) - 1 + exp // _DEC_DIGITS
    while groups[-1] == 0:
        groups.pop()
    head = _NUMERIC_HEAD.pack(len(groups), weight, _NUMERIC_NEG if sign else _NUMERIC_POS, dscale)
    return head + struct.pack(f"!{len(groups)}h", *groups)


def numeric_from_binary(raw: bytes) -> Decimal:
    """PostgreSQL's ``numeric_recv`` (digits beyond the display scale are truncated)."""
    try:
        ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(raw)
        digits = struct.unpack_from(f"!{ndigits}h", raw, 8) if ndigits else ()
    except struct.error:
        raise _bad("numeric", raw) from None
    if len(raw) != 8 + 2 * ndigits:
        raise _bad("numeric", raw)
    if sign == _NUMERIC_NAN:
        return _NAN
    if sign == _NUMERIC_PINF:
        return _PINF
    if sign == _NUMERIC_NINF:
        return _NINF
    if sign not in (_NUMERIC_POS, _NUMERIC_NEG):
        raise _bad("numeric", raw)
    coef = "".join(f"{g:04d}" for g in digits) or "0"
    exp = (weight - ndigits + 1) * _DEC_DIGITS
    value = Decimal(f"{'-' if sign == _NUMERIC_NEG else ''}{coef}E{exp}")
    return value.quantize(Decimal(1).scaleb(-dscale), rounding=decimal.ROUND_DOWN, context=_EXACT)


def _numeric_sort_key(d: Decimal) -> tuple[int, Decimal]:
    # -Infinity < finite values < Infinity < NaN; NaN = NaN.
    if d.is_finite():
        return (1, d)
    if d.is_nan():
        return (3, _ZERO)
    return (0, _ZERO) if d.is_signed() else (2, _ZERO)


class _NumericCodec(Codec):
    oid = NUMERIC
    type_name = "numeric"

    def decode(self, raw: bytes, binary: bool) -> Decimal:
        if binary:
            return numeric_from_binary(raw)
        try:
            return Decimal(raw.decode("ascii"))
        except (decimal.InvalidOperation, UnicodeDecodeError):
            raise _bad(self.type_name, raw) from None

    def encode(self, value: Decimal, binary: bool) -> bytes:
        if binary:
            return numeric_to_binary(value)
        return format_numeric(value).encode()

    sort_key = staticmethod(_numeric_sort_key)  # type: ignore[assignment]


def _normalized_weight_and_first_digit(d: Decimal) -> tuple[int, int]:
    """The base-10000 weight and leading base-10000 digit of a finite numeric (0, 0 for 0)."""
    if not d:
        return 0, 0
    adjusted = d.adjusted()  # exponent of the leading decimal digit
    weight = adjusted // _DEC_DIGITS
    _sign, digits, _exp = d.as_tuple()
    # Leading group's decimal digits: those with exponent >= 4 * weight.
    n_lead = adjusted - _DEC_DIGITS * weight + 1
    lead = digits[:n_lead]
    first = 0
    for digit in lead:
        first = first * 10 + digit
    first *= 10 ** (n_lead - len(lead))  # coefficient shorter than the group
    return weight, first


def _select_div_scale(a: Decimal, b: Decimal) -> int:
    """numeric.c's select_div_scale: at least 16 significant digits, never fewer than either
    input's display scale, at most 1000."""
    weight1, first1 = _normalized_weight_and_first_digit(a)
    weight2, first2 = _normalized_weight_and_first_digit(b)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    rscale = _NUMERIC_MIN_SIG_DIGITS - qweight * _DEC_DIGITS
    rscale = max(rscale, _dscale(a), _dscale(b), 0)
    return min(rscale, _NUMERIC_MAX_DISPLAY_SCALE)


def numeric_div(a: Decimal, b: Decimal) -> Decimal:
    """PostgreSQL's ``numeric / numeric``: result scale from select_div_scale, the exact
    quotient rounded half away from zero at that scale. Specials as in PostgreSQL 14+."""
    if not a.is_finite() or not b.is_finite():
        if a.is_nan() or b.is_nan():
            return _NAN
        if a.is_infinite():
            if b.is_infinite():
                return _NAN
            if not b:
                raise DivisionByZero("division by zero")
            return _PINF if a.is_signed() == b.is_signed() else _NINF
        return _ZERO  # finite / infinity
    if not b:
        raise DivisionByZero("division by zero")
    rscale = _select_div_scale(a, b)
    sign_a, digits_a, exp_a = a.as_tuple()
    sign_b, digits_b, exp_b = b.as_tuple()
    assert isinstance(exp_a, int) and isinstance(exp_b, int)
    num = int("".join(map(str, digits_a)))
    den = int("".join(map(str, digits_b)))
    shift = exp_a - exp_b + rscale
    if shift >= 0:
        num *= 10**shift
    else:
        den *= 10**-shift
    quotient, remainder = divmod(num, den)
    if 2 * remainder >= den:
        quotient += 1
    negative = bool(sign_a != sign_b) and quotient != 0
    return Decimal(f"{'-' if negative else ''}{quotient}E{-rscale}")


def _numeric_add(a: Decimal, b: Decimal) -> Decimal:
    if a.is_finite() and b.is_finite():
        return _EXACT.add(a, b)
    if a.is_nan() or b.is_nan():
        return _NAN
    if a.is_infinite() and b.is_infinite() and a.is_signed() != b.is_signed():
        return _NAN
    return a if a.is_infinite() else b


# ----------------------------------------------------------------------------- floats

_F4 = struct.Struct("!f")
_F8 = struct.Struct("!d")
_F4_NATIVE = struct.Struct("f")
_U4_NATIVE = struct.Struct("I")


def _to_f32(x: float) -> float:
    try:
        return float(_F4_NATIVE.unpack(_F4_NATIVE.pack(x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def _f32_step(x: float, up: bool) -> float:
    bits = _U4_NATIVE.unpack(_F4_NATIVE.pack(x))[0]
    if x == 0.0:
        bits = 1 if up else 0x80000001
    elif (x > 0) == up:
        bits += 1
    else:
        bits -= 1
    return float(_F4_NATIVE.unpack(_U4_NATIVE.pack(bits))[0])


def _format_shortest(digits: str, exp10: int, fixed_max: int) -> str:
    """Place the decimal point like PostgreSQL's Ryu output (a ``%g`` look-alike):
    ``digits`` (no leading/trailing zeros) times 10**(exp10 - len(digits) + 1)."""
    if -4 <= exp10 < fixed_max:
        n = len(digits)
        if exp10 < 0:
            return "0." + "0" * (-exp10 - 1) + digits
        if exp10 + 1 >= n:
            return digits + "0" * (exp10 + 1 - n)
        return digits[: exp10 + 1] + "." + digits[exp10 + 1 :]
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


def _shortest_digits(d: Decimal) -> tuple[str, int]:
    _sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    s = "".join(map(str, digits)).rstrip("0")
    if not s:
        return "0", 0
    return s, exp + len(digits) - 1


def format_float8(x: float, extra_float_digits: int = 1) -> str:
    """PostgreSQL 12+'s ``float8out``: shortest round-trip digits when extra_float_digits > 0,
    else ``%.{15+extra_float_digits}g``."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "-Infinity" if x < 0 else "Infinity"
    if extra_float_digits <= 0:
        return f"{x:.{max(15 + extra_float_digits, 1)}g}"
    if x == 0.0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    digits, exp10 = _shortest_digits(Decimal(repr(abs(x))))
    return ("-" if x < 0 else "") + _format_shortest(digits, exp10, 15)


def _f32_shortest(x: float) -> tuple[str, int]:
    """Shortest decimal digits that read back (round-half-even) as the float4 ``x`` > 0,
    the closest one when several qualify (Ryu's f2s choice)."""
    exact = Decimal(x)
    below = _f32_step(x, False)
    lower = Decimal((x + below) / 2)  # exact: two float4 neighbours add exactly in a double
    upper = _f32_step(x, True)
    if math.isinf(upper):  # FLT_MAX: the next step would be 2**128
        upper_mid = Decimal(x) + (Decimal(x) - Decimal(below)) / 2
    else:
        upper_mid = Decimal((x + upper) / 2)
    bits = _U4_NATIVE.unpack(_F4_NATIVE.pack(x))[0]
    inclusive = bits % 2 == 0

    def reads_back(c: Decimal) -> bool:
        if c <= 0:
            return False
        lo_ok = c > lower or (inclusive and c == lower)
        return lo_ok and (c < upper_mid or (inclusive and c == upper_mid))

    for precision in range(1, 10):
        nearest = Decimal(f"{x:.{precision - 1}e}")
        ulp = Decimal(1).scaleb(nearest.adjusted() - precision + 1)
        best: Decimal | None = None
        for cand in (nearest, nearest - ulp, nearest + ulp):
            if len(cand.normalize().as_tuple().digits) > precision or not reads_back(cand):
                continue
            if best is None or abs(cand - exact) < abs(best - exact):
                best = cand
        if best is not None:
            return _shortest_digits(best)
    return _shortest_digits(Decimal(f"{x:.8e}"))


def format_float4(x: float, extra_float_digits: int = 1) -> str:
    """PostgreSQL 12+'s ``float4out`` (``%.{6+extra_float_digits}g`` when <= 0)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "-Infinity" if x < 0 else "Infinity"
    if extra_float_digits <= 0:
        return f"{x:.{max(6 + extra_float_digits, 1)}g}"
    if x == 0.0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    digits, exp10 = _f32_shortest(abs(x))
    return ("-" if x < 0 else "") + _format_shortest(digits, exp10, 6)


def _float_sort_key(x: float) -> tuple[int, float]:
    # NaN sorts above every other value and equals itself; -0.0 == 0.0.
    if x != x:
        return (1, 0.0)
    return (0, x + 0.0)


class _FloatCodec(Codec):
    def __init__(self, oid: int, extra_float_digits: int) -> None:
        self.oid = oid
        self.type_name = "real" if oid == FLOAT4 else "double precision"
        self._struct = _F4 if oid == FLOAT4 else _F8
        self._efd = extra_float_digits
        self._format = format_float4 if oid == FLOAT4 else format_float8

    def decode(self, raw: bytes, binary: bool) -> float:
        try:
            if binary:
                return float(self._struct.unpack(raw)[0])
            value = float(raw)
        except (struct.error, ValueError):
            raise _bad(self.type_name, raw) from None
        return _to_f32(value) if self.oid == FLOAT4 else value

    def encode(self, value: float, binary: bool) -> bytes:
        if binary:
            return self._struct.pack(value)
        return self._format(value, self._efd).encode()

    sort_key = staticmethod(_float_sort_key)  # type: ignore[assignment]


# ----------------------------------------------------------------------------- text-like


class _TextCodec(Codec):
    is_text = True

    def __init__(self, oid: int, type_name: str, order: TextOrder) -> None:
        self.oid = oid
        self.type_name = type_name
        self.order = order
        self.sort_key = order.key  # type: ignore[method-assign]

    def decode(self, raw: bytes, binary: bool) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(self.type_name, raw) from None

    def encode(self, value: str, binary: bool) -> bytes:
        return value.encode("utf-8")


class _BpcharCodec(_TextCodec):
    """character(n): trailing spaces are insignificant when comparing (not when encoding)."""

    def __init__(self, order: TextOrder) -> None:
        super().__init__(BPCHAR, "character", order)
        key = order.key

        def bpchar_key(value: str) -> Any:
            return key(value.rstrip(" "))

        self.sort_key = bpchar_key  # type: ignore[method-assign]


class _CharCodec(Codec):
    """The one-byte "char" type (OID 18); values are ints 0-255, compared unsigned."""

    oid = CHAR
    type_name = '"char"'

    def decode(self, raw: bytes, binary: bool) -> int:
        if binary:
            if len(raw) > 1:
                raise _bad(self.type_name, raw)
            return raw[0] if raw else 0
        if len(raw) == 4 and raw[0] == 0x5C and all(0x30 <= c <= 0x37 for c in raw[1:]):
            return int(raw[1:], 8) & 0xFF
        return raw[0] if raw else 0

    def encode(self, value: int, binary: bool) -> bytes:
        if binary:
            return bytes((value,))
        if value == 0:
            return b""
        if value >= 0x80:  # PostgreSQL 15+ writes non-ASCII bytes as \ooo
            return b"\\%03o" % value
        return bytes((value,))


class _ByteaCodec(Codec):
    oid = BYTEA
    type_name = "bytea"

    def decode(self, raw: bytes, binary: bool) -> bytes:
        if binary:
            return bytes(raw)
        if raw[:2] == b"\\x":
            try:
                return bytes.fromhex(raw[2:].decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raise _bad(self.type_name, raw) from None
        return _bytea_unescape(raw)

    def encode(self, value: bytes, binary: bool) -> bytes:
        if binary:
            return bytes(value)
        return b"\\x" + value.hex().encode("ascii")


def _bytea_unescape(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
        elif raw[i + 1 : i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        else:
            octal = raw[i + 1 : i + 4]
            if len(octal) != 3 or not all(0x30 <= d <= 0x37 for d in octal):
                raise _bad("bytea", raw)
            out.append(int(octal, 8) & 0xFF)
            i += 4
    return bytes(out)


class _UuidCodec(Codec):
    oid = UUID
    type_name = "uuid"

    def decode(self, raw: bytes, binary: bool) -> uuid.UUID:
        try:
            if binary:
                return uuid.UUID(bytes=bytes(raw))
            return uuid.UUID(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise _bad(self.type_name, raw) from None

    def encode(self, value: uuid.UUID, binary: bool) -> bytes:
        if binary:
            return value.bytes
        return str(value).encode("ascii")

    def sort_key(self, value: uuid.UUID) -> bytes:
        return value.bytes  # uuid_cmp is memcmp


class _JsonCodec(Codec):
    """json / jsonb: passed through; equality on the text (jsonb text is canonical, except
    that numbers equal as numeric but written with different scales, 1.0 vs 1.00, stay
    distinct). Not orderable."""

    orderable = False

    def __init__(self, oid: int) -> None:
        self.oid = oid
        self.type_name = "jsonb" if oid == JSONB else "json"

    def decode(self, raw: bytes, binary: bool) -> str:
        if binary and self.oid == JSONB:
            if raw[:1] != b"\x01":
                raise _bad(self.type_name, raw)
            raw = raw[1:]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(self.type_name, raw) from None

    def encode(self, value: str, binary: bool) -> bytes:
        data = value.encode("utf-8")
        if binary and self.oid == JSONB:
            return b"\x01" + data
        return data

    def sort_key(self, value: str) -> Any:
        raise UnsupportedType(
            f"cannot sort values of type {self.type_name} across shards",
            hint="Sort by an expression of a supported type, or sort on a single shard.",
        )

    def group_key(self, value: str) -> str:
        return value


class _PassthroughCodec(Codec):
    """An unknown type: bytes in, the same bytes out; equality on bytes; no ordering."""

    orderable = False

    def __init__(self, oid: int) -> None:
        self.oid = oid
        self.type_name = f"type {oid}"

    def decode(self, raw: bytes, binary: bool) -> Raw:
        return Raw(bytes(raw), binary)

    def encode(self, value: Raw, binary: bool) -> bytes:
        if value.binary != binary:
            raise UnsupportedType(
                f"cannot convert values of type OID {self.oid} between text and binary format"
            )
        return value.data

    def sort_key(self, value: Raw) -> Any:
        raise UnsupportedType(
            f"cannot sort or compare values of type OID {self.oid} across shards",
            hint="Cast the sort expression to a built-in type such as text or numeric.",
        )

    def group_key(self, value: Raw) -> Raw:
        return value


# ----------------------------------------------------------------------------- date / time

_I4 = struct.Struct("!i")
_I8 = struct.Struct("!q")
_INTERVAL = struct.Struct("!qii")
_UNIX_TO_PG_DAYS = 10957  # 1970-01-01 -> 2000-01-01


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 2000-01-01 of a proleptic Gregorian date (astronomical year numbering)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468 - _UNIX_TO_PG_DAYS


def _civil_from_days(days: int) -> tuple[int, int, int]:
    z = days + _UNIX_TO_PG_DAYS + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _format_date(days: int) -> tuple[str, bool]:
    """``YYYY-MM-DD`` and whether the year is BC."""
    year, month, day = _civil_from_days(days)
    bc = year <= 0
    if bc:
        year = 1 - year
    return f"{year:04d}-{month:02d}-{day:02d}", bc


def _format_time(micros: int) -> str:
    secs, frac = divmod(micros, _USECS_PER_SEC)
    mins, sec = divmod(secs, 60)
    hour, minute = divmod(mins, 60)
    out = f"{hour:02d}:{minute:02d}:{sec:02d}"
    if frac:
        out += "." + f"{frac:06d}".rstrip("0")
    return out


_DATE_RE = re.compile(rb"(\d{4,})-(\d\d)-(\d\d)")
_TIME_RE = re.compile(rb"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_TZ_RE = re.compile(rb"([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?")


def _parse_date(raw: bytes, pos: int, type_name: str) -> tuple[int, int]:
    m = _DATE_RE.match(raw, pos)
    if m is None:
        raise _bad(type_name, raw)
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    return year * 10000 + month * 100 + day, m.end()


def _ymd_to_days(ymd: int, bc: bool) -> int:
    year, rest = divmod(ymd, 10000)
    month, day = divmod(rest, 100)
    if bc:
        year = 1 - year
    return _days_from_civil(year, month, day)


def _parse_time(raw: bytes, pos: int, type_name: str) -> tuple[int, int]:
    m = _TIME_RE.match(raw, pos)
    if m is None:
        raise _bad(type_name, raw)
    frac = m[4] or b""
    micros = int(frac.ljust(6, b"0")) if frac else 0
    return ((int(m[1]) * 60 + int(m[2])) * 60 + int(m[3])) * _USECS_PER_SEC + micros, m.end()


def _binary_int(fmt: struct.Struct, raw: bytes, type_name: str) -> int:
    """A binary date/time value: one big-endian integer of `fmt`'s size."""
    try:
        return int(fmt.unpack(raw)[0])
    except struct.error:
        raise _bad(type_name, raw) from None


class _DateCodec(Codec):
    oid = DATE
    type_name = "date"

    def decode(self, raw: bytes, binary: bool) -> int:
        if binary:
            return _binary_int(_I4, raw, self.type_name)
        if raw == b"infinity":
            return DATE_POS_INFINITY
        if raw == b"-infinity":
            return DATE_NEG_INFINITY
        ymd, end = _parse_date(raw, 0, self.type_name)
        rest = raw[end:]
        if rest not in (b"", b" BC"):
            raise _bad(self.type_name, raw)
        return _ymd_to_days(ymd, rest == b" BC")

    def encode(self, value: int, binary: bool) -> bytes:
        if binary:
            return _I4.pack(value)
        if value == DATE_POS_INFINITY:
            return b"infinity"
        if value == DATE_NEG_INFINITY:
            return b"-infinity"
        text, bc = _format_date(value)
        return (text + " BC" if bc else text).encode("ascii")


class _TimeCodec(Codec):
    oid = TIME
    type_name = "time without time zone"

    def decode(self, raw: bytes, binary: bool) -> int:
        if binary:
            return _binary_int(_I8, raw, self.type_name)
        micros, end = _parse_time(raw, 0, self.type_name)
        if end != len(raw):
            raise _bad(self.type_name, raw)
        return micros

    def encode(self, value: int, binary: bool) -> bytes:
        if binary:
            return _I8.pack(value)
        return _format_time(value).encode("ascii")


_UTC = _dt.UTC
_PG_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_UTC)
_MIN_LOOKUP = int((_dt.datetime(1, 1, 2, tzinfo=_UTC) - _PG_EPOCH).total_seconds())
_MAX_LOOKUP = int((_dt.datetime(9999, 12, 30, tzinfo=_UTC) - _PG_EPOCH).total_seconds())


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> _dt.tzinfo:
    if name.upper() in ("UTC", "GMT", "Z", "ZULU", "UCT"):
        return _UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise FeatureNotSupported(
            f'time zone "{name}" is not known to the proxy host; cannot format timestamptz'
        ) from None


def _utc_offset_seconds(zone: _dt.tzinfo, utc_seconds: int) -> int:
    """The zone's UTC offset at an instant (seconds since 2000-01-01 UTC); instants outside
    Python's year range 1-9999 use the offset at the nearest representable instant."""
    if zone is _UTC:
        return 0
    clamped = min(max(utc_seconds, _MIN_LOOKUP), _MAX_LOOKUP)
    moment = _PG_EPOCH + _dt.timedelta(seconds=clamped)
    offset = moment.astimezone(zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def _format_offset(offset: int) -> str:
    """EncodeTimezone: ``+HH``, ``+HH:MM`` or ``+HH:MM:SS`` (minutes/seconds only if needed)."""
    sign = "-" if offset < 0 else "+"
    mins, sec = divmod(abs(offset), 60)
    hour, minute = divmod(mins, 60)
    if sec:
        return f"{sign}{hour:02d}:{minute:02d}:{sec:02d}"
    if minute:
        return f"{sign}{hour:02d}:{minute:02d}"
    return f"{sign}{hour:02d}"


class _TimestampCodec(Codec):
    def __init__(self, oid: int, tz: str) -> None:
        self.oid = oid
        self.with_tz = oid == TIMESTAMPTZ
        self.type_name = (
            "timestamp with time zone" if self.with_tz else "timestamp without time zone"
        )
        self.tz = tz
        self._zone = _zone(tz) if self.with_tz else _UTC

    def decode(self, raw: bytes, binary: bool) -> int:
        if binary:
            return _binary_int(_I8, raw, self.type_name)
        if raw == b"infinity":
            return TS_POS_INFINITY
        if raw == b"-infinity":
            return TS_NEG_INFINITY
        ymd, pos = _parse_date(raw, 0, self.type_name)
        if raw[pos : pos + 1] != b" ":
            raise _bad(self.type_name, raw)
        micros, pos = _parse_time(raw, pos + 1, self.type_name)
        offset = 0
        if self.with_tz:
            m = _TZ_RE.match(raw, pos)
            if m is None:
                raise _bad(self.type_name, raw)
            offset = (int(m[2]) * 60 + int(m[3] or 0)) * 60 + int(m[4] or 0)
            if m[1] == b"-":
                offset = -offset
            pos = m.end()
        rest = raw[pos:]
        if rest not in (b"", b" BC"):
            raise _bad(self.type_name, raw)
        days = _ymd_to_days(ymd, rest == b" BC")
        return days * _USECS_PER_DAY + micros - offset * _USECS_PER_SEC

    def encode(self, value: int, binary: bool) -> bytes:
        if binary:
            return _I8.pack(value)
        if value == TS_POS_INFINITY:
            return b"infinity"
        if value == TS_NEG_INFINITY:
            return b"-infinity"
        offset = 0
        if self.with_tz:
            offset = _utc_offset_seconds(self._zone, value // _USECS_PER_SEC)
        local = value + offset * _USECS_PER_SEC
        days, micros = divmod(local, _USECS_PER_DAY)
        date_text, bc = _format_date(days)
        out = f"{date_text} {_format_time(micros)}"
        if self.with_tz:
            out += _format_offset(offset)
        if bc:
            out += " BC"
        return out.encode("ascii")


# ----------------------------------------------------------------------------- interval

_INTERVAL_UNITS = {
    b"year": 12,
    b"years": 12,
    b"mon": 1,
    b"mons": 1,
    b"day": 0,
    b"days": 0,
}


def _ctrunc_divmod(a: int, b: int) -> tuple[int, int]:
    """C's truncating division and remainder (the remainder takes the dividend's sign)."""
    q = abs(a) // b
    if a < 0:
        q = -q
    return q, a - q * b


def _format_interval(value: Interval) -> str:
    """EncodeInterval with IntervalStyle = postgres."""
    months, days, micros = value
    if months == 2**31 - 1 and days == 2**31 - 1 and micros == _INT8_MAX:
        return "infinity"
    if months == -(2**31) and days == -(2**31) and micros == _INT8_MIN:
        return "-infinity"
    year, mon = _ctrunc_divmod(months, 12)
    parts: list[str] = []
    is_before = False
    is_zero = True
    for amount, unit in ((year, "year"), (mon, "mon"), (days, "day")):
        if amount == 0:
            continue
        plus = "+" if is_before and amount > 0 else ""
        parts.append(f"{plus}{amount} {unit}{'' if amount == 1 else 's'}")
        is_before = amount < 0
        is_zero = False
    if is_zero or micros != 0:
        secs, fsec = _ctrunc_divmod(micros, _USECS_PER_SEC)
        mins, sec = _ctrunc_divmod(secs, 60)
        hour, minute = _ctrunc_divmod(mins, 60)
        minus = micros < 0
        text = f"{'-' if minus else ('+' if is_before else '')}{abs(hour):02d}:{abs(minute):02d}:"
        text += f"{abs(sec):02d}"
        if fsec:
            text += "." + f"{abs(fsec):06d}".rstrip("0")
        parts.append(text)
    return " ".join(parts)


def _parse_interval(raw: bytes) -> Interval:
    if raw == b"infinity":
        return Interval(2**31 - 1, 2**31 - 1, _INT8_MAX)
    if raw == b"-infinity":
        return Interval(-(2**31), -(2**31), _INT8_MIN)
    months = days = micros = 0
    tokens = raw.split()
    i = 0
    try:
        while i < len(tokens):
            token = tokens[i]
            if b":" in token:
                negative = token[:1] == b"-"
                body = token.lstrip(b"+-")
                hms, _, frac = body.partition(b".")
                hour, minute, sec = (int(p) for p in hms.split(b":"))
                t = ((hour * 60 + minute) * 60 + sec) * _USECS_PER_SEC
                t += int(frac.ljust(6, b"0")) if frac else 0
                micros += -t if negative else t
                i += 1
                continue
            amount = int(token)
            unit = tokens[i + 1]
            factor = _INTERVAL_UNITS[unit]
            if factor:
                months += amount * factor
            else:
                days += amount
            i += 2
    except (ValueError, KeyError, IndexError):
        raise _bad("interval", raw) from None
    return Interval(months, days, micros)


def _interval_sort_key(value: Interval) -> int:
    # interval_cmp_value: months count as 30 days, days as 24 hours.
    months, days, micros = value
    return micros + (days + months * 30) * _USECS_PER_DAY


class _IntervalCodec(Codec):
    oid = INTERVAL
    type_name = "interval"

    def decode(self, raw: bytes, binary: bool) -> Interval:
        if binary:
            try:
                micros, days, months = _INTERVAL.unpack(raw)
            except struct.error:
                raise _bad(self.type_name, raw) from None
            return Interval(months, days, micros)
        return _parse_interval(raw)

    def encode(self, value: Interval, binary: bool) -> bytes:
        if binary:
            return _INTERVAL.pack(value.micros, value.days, value.months)
        return _format_interval(value).encode("ascii")

    sort_key = staticmethod(_interval_sort_key)  # type: ignore[assignment]


# ----------------------------------------------------------------------------- registry

_TEXT_TYPES = {TEXT: "text", VARCHAR: "character varying", NAME: "name"}
_STATIC: dict[int, Codec] = {
    INT2: _IntCodec(INT2, "smallint", "!h"),
    INT4: _IntCodec(INT4, "integer", "!i"),
    INT8: _IntCodec(INT8, "bigint", "!q"),
    OID: _IntCodec(OID, "oid", "!I"),
    BOOL: _BoolCodec(),
    NUMERIC: _NumericCodec(),
    CHAR: _CharCodec(),
    BYTEA: _ByteaCodec(),
    UUID: _UuidCodec(),
    JSON: _JsonCodec(JSON),
    JSONB: _JsonCodec(JSONB),
    DATE: _DateCodec(),
    TIME: _TimeCodec(),
    TIMESTAMP: _TimestampCodec(TIMESTAMP, "UTC"),
    INTERVAL: _IntervalCodec(),
}


@functools.lru_cache(maxsize=512)
def codec_for(
    oid: int, *, collation: str = "C", tz: str = "UTC", extra_float_digits: int = 1
) -> Codec:
    """The codec for type ``oid``.

    ``collation`` orders text/varchar/bpchar/name (pass the column's collation; ``name``
    columns default to "C"). ``tz`` is the client's TimeZone, used to write timestamptz as
    text. ``extra_float_digits`` is the client's setting, used to write floats as text.
    Unknown OIDs get a passthrough codec (equality on bytes; sorting raises
    :class:`UnsupportedType`).
    """
    static = _STATIC.get(oid)
    if static is not None:
        return static
    if oid in _TEXT_TYPES:
        return _TextCodec(oid, _TEXT_TYPES[oid], _text_order(collation))
    if oid == BPCHAR:
        return _BpcharCodec(_text_order(collation))
    if oid in (FLOAT4, FLOAT8):
        return _FloatCodec(oid, extra_float_digits)
    if oid == TIMESTAMPTZ:
        return _TimestampCodec(TIMESTAMPTZ, tz)
    return _PassthroughCodec(oid)


# ----------------------------------------------------------------------------- aggregates

_SUM_RESULT = {
    INT2: INT8,
    INT4: INT8,
    INT8: NUMERIC,
    NUMERIC: NUMERIC,
    FLOAT4: FLOAT4,
    FLOAT8: FLOAT8,
}
_AVG_RESULT = {
    INT2: NUMERIC,
    INT4: NUMERIC,
    INT8: NUMERIC,
    NUMERIC: NUMERIC,
    FLOAT4: FLOAT8,
    FLOAT8: FLOAT8,
}


def _no_aggregate(name: str, oid: int) -> UnsupportedType:
    return UnsupportedType(f"cannot merge {name}() of values of type OID {oid} across shards")


def sum_result_type(oid: int) -> int:
    """The type of ``sum(x)`` for ``x`` of type ``oid`` (int2/int4 -> int8, int8 -> numeric,
    numeric -> numeric, float4 -> float4, float8 -> float8)."""
    try:
        return _SUM_RESULT[oid]
    except KeyError:
        raise _no_aggregate("sum", oid) from None


def avg_result_type(oid: int) -> int:
    """The type of ``avg(x)``: numeric for int2/int4/int8/numeric, float8 for floats."""
    try:
        return _AVG_RESULT[oid]
    except KeyError:
        raise _no_aggregate("avg", oid) from None


def sum_add(result_oid: int, a: Any, b: Any) -> Any:
    """Add two partial sums of type ``result_oid`` (a :func:`sum_result_type`) like the
    aggregate's transition function: int8 overflow raises :class:`ValueOutOfRange`
    ("bigint out of range"), float4 rounds each step to single precision and raises on
    overflow of finite values, numeric follows NaN/Infinity rules."""
    if result_oid == INT8:
        total = a + b
        if not _INT8_MIN <= total <= _INT8_MAX:
            raise ValueOutOfRange("bigint out of range")
        return total
    if result_oid == NUMERIC:
        return _numeric_add(a, b)
    if result_oid in (FLOAT4, FLOAT8):
        total = a + b
        if result_oid == FLOAT4:
            total = _to_f32(total)
        if math.isinf(total) and not (math.isinf(a) or math.isinf(b)):
            raise ValueOutOfRange("value out of range: overflow")
        return total
    raise _no_aggregate("sum", result_oid)


def avg_finish(arg_oid: int, total: Any, count: int) -> Any:
    """``avg(x)`` from the merged sum and row count (None when count is 0).

    For integer/numeric arguments ``total`` is the exact sum (int or Decimal, with the
    largest input display scale) and the result is ``numeric_div(total, count)``, as
    PostgreSQL's int8_avg / numeric_avg / numeric_poly_avg compute it. For float4/float8
    ``total`` must be the float8 sum (ask shards for ``sum(x::float8)``: avg(float4)
    accumulates in double precision) and the result is ``total / count``.
    """
    return average(total, count, avg_result_type(arg_oid))


# ----------------------------------------------------------------------------- conveniences

NUMERIC_OID = NUMERIC
INT_OIDS = frozenset({INT2, INT4, INT8})


def text_order(collation: str | None = None) -> Callable[[str], Any]:
    """The sort key function of a collation (None: "C")."""
    return _text_order(collation or "C").key


def average(total: Any, count: int, result_oid: int) -> Any:
    """avg() from a merged sum and count, given the avg's result type (numeric or float8)."""
    if count == 0:
        return None
    if result_oid == FLOAT8:
        return float(total) / count
    if not isinstance(total, Decimal):
        total = Decimal(total)
    return numeric_div(total, Decimal(count))


def generic_sort_key(value: Any) -> Any:
    """A sort key for a computed value whose type is known only by its Python class."""
    if isinstance(value, Decimal):
        return _numeric_sort_key(value)
    if isinstance(value, float):
        return _float_sort_key(value)
    if isinstance(value, Interval):
        return _interval_sort_key(value)
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value
