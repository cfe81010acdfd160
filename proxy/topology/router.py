"""Owns "shard-key value -> shard": per-table distributions over the topology snapshot.

The planner (``proxy.sql``) finds shard-key conditions in SQL; this module turns the values
it finds into *atoms* and atoms into shards:

* hash tables: an atom is a bucket (``0 .. buckets-1``), computed exactly as PostgreSQL's
  ``PARTITION BY HASH`` does (:mod:`proxy.topology.hashing`), and ``assignment[bucket]``
  names its shard. Every hash table shares the bucket table, so equal key values of two
  hash tables always land in the same bucket: hash tables are *co-located*.
* list tables: an atom is the listed value (its text); unlisted values go to ``default``.
* range tables: an atom is a *segment*, one of the configured ranges or a gap between them
  (gaps belong to ``default``, or to no shard at all).

Atoms, not shards, are intersected for ``AND`` and united for ``OR``, which keeps
``id = 1 AND id = 2`` empty and ``t >= '2025-01-15' AND t < '2025-01-20'`` on one range.

The type a value hashes as
--------------------------
SQL literals carry no column type, so the rule is (first match wins):

1. the table's ``key_type`` (the ``key_types`` given to :class:`Router`, else the
   topology's ``Table.key_type``): values are converted to that type, as Postgres
   converts an untyped literal to the column's type;
2. an explicit cast in the SQL (``'42'::bigint``, ``CAST($1 AS text)``, ``'…'::uuid``);
3. a parameter's type OID (from Parse, or from the server's ParameterDescription):
   int2/int4/int8 hash as integers, text/varchar as text, uuid as uuid;
4. the literal's syntax: an integer literal ``42`` hashes as an integer (int2, int4 and
   int8 hash identically), a string literal ``'42'`` as **text**;
5. values with no type at all (text-format parameters with type OID 0, COPY fields,
   ``shard_key`` hints): a decimal integer is an integer, a canonical UUID is a uuid,
   anything else is text.

So a text column holding digits must be compared with a string literal (``code = '42'``),
and an integer column with an integer literal (``id = 42``, not ``id = '42'``); declare
``key_type`` for tables where the guess would be wrong.

``NULL`` keys: Postgres puts a NULL hash key in the partition with remainder 0, so a NULL
hash key belongs to bucket 0; list and range tables send NULL keys to ``default``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from proxy.config import Config, Table, qualify_table_name, range_bound_key
from proxy.errors import ShardwireError
from proxy.topology.hashing import (
    hash_int,
    hash_int8,
    hash_text,
    hash_uuid,
    normalize_type_name,
)

__all__ = [
    "NULL_ATOM",
    "Dist",
    "KeyValue",
    "Router",
    "describe_value",
    "untyped",
]

_M64 = 0xFFFFFFFFFFFFFFFF
_COMBINE = 0x49A0F4DD15E5A8E3
_INT8_MIN, _INT8_MAX = -(1 << 63), (1 << 63) - 1
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_UUID_RE = re.compile(
    r"\s*\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\}?\s*"
)
_CANONICAL_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class KeyValue(NamedTuple):
    """A value compared with (or assigned to) a shard key, with what is known of its type.

    ``kind`` is one of: ``int`` (int), ``numeric`` (Decimal), ``text`` (str of a known text
    type), ``string`` (str from a SQL string literal: untyped in Postgres), ``untyped``
    (str with no type at all: a type-0 parameter, a COPY field, a hint), ``uuid``
    (uuid.UUID), ``date``/``timestamp`` (str), ``bool``, ``null`` and ``unknown`` (a value
    that cannot be used for routing).
    """

    kind: str
    value: Any


UNKNOWN = KeyValue("unknown", None)
NULL = KeyValue("null", None)


def untyped(text: str | None) -> KeyValue:
    """A value with no type information (COPY field, type-0 text parameter, hint)."""
    return NULL if text is None else KeyValue("untyped", text)


def describe_value(kv: KeyValue) -> str:
    """The value as it would read in SQL, shortened for reasons and messages."""
    kind, value = kv
    if kind == "null":
        return "NULL"
    if kind in ("int", "numeric"):
        text = str(value)
    elif kind == "bool":
        text = "true" if value else "false"
    elif kind == "unknown":
        text = "?"
    else:
        text = "'" + str(value).replace("'", "''") + "'"
        if kind == "uuid":
            text += "::uuid"
    return text if len(text) <= 48 else text[:45] + "..."


class _Null:
    """The atom of a NULL key in list and range tables (sorts nowhere, prints as NULL)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL"


NULL_ATOM: Any = _Null()


def _remainder(col_hash: int, buckets: int) -> int:
    return ((col_hash + _COMBINE) & _M64) % buckets


def _to_int(kv: KeyValue) -> int | None:
    kind, value = kv
    if kind == "int":
        return value if _INT8_MIN <= value <= _INT8_MAX else None
    if kind == "numeric":
        if value == value.to_integral_value():
            return _to_int(KeyValue("int", int(value)))
        return None
    if kind in ("string", "untyped", "text") and _INT_RE.fullmatch(value):
        return _to_int(KeyValue("int", int(value)))
    return None


def _to_uuid(kv: KeyValue) -> uuid.UUID | None:
    kind, value = kv
    if kind == "uuid":
        return value
    if kind in ("string", "untyped", "text") and _UUID_RE.fullmatch(value):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            return None
    return None


def _text_of(kv: KeyValue) -> str | None:
    """The text Postgres would see for the value (list values, range bounds)."""
    kind, value = kv
    if kind in ("string", "untyped", "text", "date", "timestamp"):
        return value
    if kind in ("int", "numeric", "uuid"):
        return str(value)
    if kind == "bool":
        return "true" if value else "false"
    return None


# Told of each statement routed by a key value on a hot path: (shard, bucket or None, key).
KeyObserver = Callable[[str, "int | None", object], None]


class Dist:
    """How one sharded table maps key values to atoms and atoms to shards."""

    __slots__ = (
        "_default",
        "_key_type",
        "_lows",
        "_range_kind",
        "_segments",
        "_values",
        "assignment",
        "buckets",
        "colocation",
        "key",
        "name",
        "observe",
        "strategy",
        "table",
    )

    def __init__(self, table: Table, config: Config, key_type: str | None,
                 observe: KeyObserver | None = None) -> None:
        self.table = table
        self.observe = observe
        self.name = table.name
        self.key = table.shard_key or ""
        self.strategy = table.strategy
        self.buckets = config.sharding.buckets
        self.assignment = config.sharding.assignment
        self._key_type = normalize_type_name(key_type) if key_type else None
        self._default = table.default
        self._values: dict[str, str] = dict(table.values)
        self._range_kind = table.range_kind
        self._segments: list[tuple[Any, Any, str | None]] = []
        self._lows: list[Any] = []
        if self.strategy == "hash":
            self.colocation: tuple[Any, ...] = ("hash",)
        elif self.strategy == "list":
            self.colocation = ("list", tuple(sorted(self._values.items())), self._default)
        else:
            self._build_segments()
            self.colocation = (
                "range",
                self._range_kind,
                tuple((lo, hi, s) for lo, hi, s in self._segments),
            )

    # ----------------------------------------------------------------- ranges

    def _build_segments(self) -> None:
        """Cover (-inf, +inf) with the configured ranges and the gaps between them."""
        kind = self._range_kind or "text"
        specs = sorted(
            self.table.ranges,
            key=lambda r: (0, None) if r.lo is None else (1, range_bound_key(kind, r.lo)),
        )
        segments: list[tuple[Any, Any, str | None]] = []
        prev_hi: Any = None
        for spec in specs:
            lo = None if spec.lo is None else range_bound_key(kind, spec.lo)
            hi = None if spec.hi is None else range_bound_key(kind, spec.hi)
            if not segments:
                if lo is not None:
                    segments.append((None, lo, self._default))  # below the first range
            elif prev_hi < lo:
                segments.append((prev_hi, lo, self._default))  # a gap between ranges
            segments.append((lo, hi, spec.shard))
            prev_hi = hi
            if hi is None:
                break
        if segments[-1][1] is not None:
            segments.append((prev_hi, None, self._default))  # above the last range
        self._segments = segments
        self._lows = [s[0] for s in segments[1:]]  # segment i+1 starts at _lows[i]

    def _text_ordered(self) -> bool:
        """Whether the bounds compare as text (``range_kind`` text, e.g. ``key_type: text``).

        Placing a value in a segment (:meth:`point`, inserts, COPY) uses Python's code-point
        order; that is the proxy's own rule, the same for writes and reads, so it is safe.
        An inequality in SQL (``<``, ``>=``, ``BETWEEN``) is different: the *database*
        decides which rows satisfy it, comparing text with the column's collation (under
        en_US.UTF-8 ``'a' < 'B'``, in code-point order ``'B' < 'a'``). Intersecting it with
        segments in code-point order could skip a shard holding matching rows, so until the
        proxy compares with the collation, text inequalities do not narrow the route
        (:meth:`compare` and :meth:`between` give every segment). Integer, numeric and
        timestamp bounds order the same in Postgres and Python and keep narrowing.
        """
        return (self._range_kind or "text") == "text"

    def _all_segments(self) -> frozenset[int]:
        """Every segment: all the table's ranges and the gaps between them (not NULL)."""
        return frozenset(range(len(self._segments)))

    def _segment_of(self, key: Any) -> int:
        return bisect.bisect_right(self._lows, key)

    def _range_key(self, kv: KeyValue) -> Any:
        kind = self._range_kind or "text"
        if kv.kind == "int" and kind == "integer":
            return kv.value
        text = _text_of(kv)
        if text is None:
            return None
        if kind == "integer" and kv.kind == "numeric":
            return None
        try:
            key = range_bound_key(kind, text)
        except (ValueError, TypeError):
            return None
        if self._lows:
            try:
                _ = key < self._lows[0]
            except TypeError:  # e.g. a time zone on one side only
                return None
        return key

    # ----------------------------------------------------------------- atoms

    @property
    def int_shard(self) -> Callable[[int], str | None] | None:
        """For hash tables whose key hashes as an integer: ``n -> shard`` in one call (the
        routing hot path), else None."""
        if self.strategy != "hash" or self._key_type not in (None, "int8"):
            return None
        assignment = self.assignment
        buckets = self.buckets
        combine = _COMBINE
        observe = self.observe

        def shard(n: int) -> str | None:
            if not _INT8_MIN <= n <= _INT8_MAX:
                return None
            return assignment[((hash_int8(n) + combine) & _M64) % buckets]

        def observed(n: int) -> str | None:
            if not _INT8_MIN <= n <= _INT8_MAX:
                return None
            bucket = ((hash_int8(n) + combine) & _M64) % buckets
            name = assignment[bucket]
            observe(name, bucket, n)  # type: ignore[misc]
            return name

        return shard if observe is None else observed

    def bucket(self, kv: KeyValue) -> int | None:
        """The bucket of a hash key value; None when the value cannot be hashed."""
        h = self._hash(kv)
        return None if h is None else _remainder(h, self.buckets)

    def _hash(self, kv: KeyValue) -> int | None:
        kind = kv.kind
        target = self._key_type
        if target is None:
            if kind == "int":  # the common case, first
                n = kv.value
                return hash_int(n, "int8") if _INT8_MIN <= n <= _INT8_MAX else None
            if kind == "untyped" and _INT_RE.fullmatch(kv.value):
                n = int(kv.value)
                return hash_int(n, "int8") if _INT8_MIN <= n <= _INT8_MAX else None
            elif kind == "numeric":
                target = "int8"
            elif kind in ("string", "text"):
                target = "text"
            elif kind == "uuid":
                target = "uuid"
            elif kind == "untyped":
                value = kv.value
                if _INT_RE.fullmatch(value):
                    target = "int8"
                elif _CANONICAL_UUID_RE.fullmatch(value):
                    target = "uuid"
                else:
                    target = "text"
            else:
                return None
        if target in ("int2", "int4", "int8"):
            n = _to_int(kv)
            return None if n is None else hash_int(n, "int8")
        if target == "uuid":
            u = _to_uuid(kv)
            return None if u is None else hash_uuid(u)
        text = _text_of(kv)
        return None if text is None else hash_text(text)

    def point(self, kv: KeyValue) -> frozenset[Any] | None:
        """Atoms holding rows whose key equals ``kv``; ``None`` if unknown (all atoms).

        ``key = NULL`` is never true, so a NULL value gives no atoms.
        """
        if kv.kind == "null":
            return frozenset()
        if self.strategy == "hash":
            b = self.bucket(kv)
            return None if b is None else frozenset((b,))
        if self.strategy == "list":
            text = self._list_text(kv)
            return None if text is None else frozenset((text,))
        key = self._range_key(kv)
        return None if key is None else frozenset((self._segment_of(key),))

    def null_atoms(self) -> frozenset[Any]:
        """Atoms holding rows whose key IS NULL (see the module docstring)."""
        if self.strategy == "hash":
            return frozenset((0,))
        if self.strategy == "list":
            return frozenset((NULL_ATOM,))
        return frozenset(("null",))

    def _list_text(self, kv: KeyValue) -> str | None:
        if self._key_type in ("int2", "int4", "int8"):
            n = _to_int(kv)
            return None if n is None else str(n)
        if self._key_type == "uuid":  # the config lists uuids in canonical form
            u = _to_uuid(kv)
            return None if u is None else str(u)
        text = _text_of(kv)
        if text is None:
            return None
        if kv.kind == "numeric" and text not in self._values:
            return None  # 1.0 may be listed as "1": unknown rather than wrong
        return text

    def compare(self, op: str, kv: KeyValue) -> frozenset[Any] | None:
        """Atoms for ``key op value`` with op in ``< <= > >=``; None if unknown.

        Text-bounded range tables give every segment (see :meth:`_text_ordered`).
        """
        if self.strategy != "range":
            return None
        if kv.kind == "null":
            return frozenset()
        if self._text_ordered():
            return self._all_segments()
        key = self._range_key(kv)
        if key is None:
            return None
        i = self._segment_of(key)
        n = len(self._segments)
        if op in (">", ">="):
            return frozenset(range(i, n))
        lo = self._segments[i][0]
        if op == "<" and lo is not None and lo == key:
            return frozenset(range(0, i))
        return frozenset(range(0, i + 1))

    def between(self, low: KeyValue, high: KeyValue) -> frozenset[Any] | None:
        if self.strategy != "range":
            return None
        if low.kind == "null" or high.kind == "null":
            return frozenset()
        if self._text_ordered():  # not even "high < low, so empty": that is collation too
            return self._all_segments()
        lo, hi = self._range_key(low), self._range_key(high)
        if lo is None or hi is None:
            return None
        try:
            if hi < lo:
                return frozenset()
        except TypeError:
            return None
        return frozenset(range(self._segment_of(lo), self._segment_of(hi) + 1))

    def shard_of_atom(self, atom: Any) -> str | None:
        """The shard holding an atom's rows; None when no shard can hold them."""
        if self.strategy == "hash":
            return self.assignment[atom]
        if self.strategy == "list":
            if atom is NULL_ATOM:
                return self._default
            return self._values.get(atom, self._default)
        if atom == "null":
            return self._default
        return self._segments[atom][2]

    def describe_atoms(self, atoms: Iterable[Any]) -> str:
        """``bucket 17`` / ``buckets 3,17`` / ``value 'eu'`` / ``range [2025-01-01, +inf)``."""
        items = list(atoms)
        if self.strategy == "hash":
            if len(items) == 1:
                return f"bucket {items[0]}"
            items.sort()
            shown = ",".join(str(b) for b in items[:8]) + ("..." if len(items) > 8 else "")
            return f"bucket{'s' if len(items) != 1 else ''} {shown}"
        if self.strategy == "list":
            texts = sorted("NULL" if a is NULL_ATOM else repr(a) for a in items)
            return f"value{'s' if len(texts) != 1 else ''} {', '.join(texts[:8])}"
        parts = []
        for a in sorted(items, key=lambda a: -1 if a == "null" else a):
            if a == "null":
                parts.append("NULL")
                continue
            lo, hi, _ = self._segments[a]
            parts.append(f"[{'-inf' if lo is None else _bound(lo)}, "
                         f"{'+inf' if hi is None else _bound(hi)})")
        return f"range{'s' if len(parts) != 1 else ''} {' '.join(parts[:8])}"


def _bound(value: Any) -> str:
    if isinstance(value, dt.datetime) and value.time() == dt.time(0) and value.tzinfo is None:
        return value.date().isoformat()
    return str(value)


class Router:
    """Shard-key values to shards for one topology snapshot (immutable once built)."""

    def __init__(self, config: Config, key_types: Mapping[str, str] | None = None, *,
                 observe: KeyObserver | None = None) -> None:
        self.config = config
        self.shards: tuple[str, ...] = config.shard_names
        self.order = {name: i for i, name in enumerate(self.shards)}
        self.default_shard = config.default_shard
        self.buckets = config.sharding.buckets
        self.assignment = config.sharding.assignment
        overrides = {qualify_table_name(k): v for k, v in (key_types or {}).items()}
        self.dists: dict[str, Dist] = {}
        self.reference: frozenset[str] = frozenset(
            name for name, t in config.tables.items() if t.is_reference
        )
        for name, table in config.tables.items():
            if table.is_reference:
                continue
            key_type = overrides.get(name) or table.key_type
            self.dists[name] = Dist(table, config, key_type, observe)
        self.schemas = frozenset(name.split(".", 1)[0] for name in config.tables)
        # bare table names (last part), for the cheap "does this text name a table" check
        self.bare_names: dict[str, list[str]] = {}
        for name in config.tables:
            self.bare_names.setdefault(name.split(".", 1)[1], []).append(name)

    def table(self, name: str) -> Table | None:
        return self.config.tables.get(name)

    def dist(self, name: str) -> Dist | None:
        return self.dists.get(name)

    def sort_shards(self, shards: Collection[str]) -> tuple[str, ...]:
        """Shard names in topology order, without duplicates."""
        if len(shards) == 1:
            return tuple(shards)
        order = self.order
        return tuple(sorted(set(shards), key=lambda s: order.get(s, len(order))))

    def bucket_of(self, value: object, key_type: str | None = None) -> int:
        """The bucket of a raw key value (Python object or untyped text)."""
        kv = value if isinstance(value, KeyValue) else python_key_value(value)
        if kv.kind == "null":
            return 0
        dist = _HashProbe(self, key_type)
        b = dist.bucket(kv)
        if b is None:
            raise ShardwireError(
                f"cannot hash {describe_value(kv)} as a shard key", sqlstate="22023"
            )
        return b

    def shard_for_key(self, table: str, value: object) -> str:
        """The shard a row of ``table`` with shard-key ``value`` belongs on.

        ``value`` is a Python object, a :class:`KeyValue`, or untyped text (str, as in COPY).
        Raises :class:`ShardwireError` (22P02 for a value the key type cannot take, 23514
        when no shard takes it).
        """
        dist = self.dists.get(table)
        if dist is None:
            raise ShardwireError(f"{table} is not a sharded table", sqlstate="42P01")
        return self.key_shard_function(dist)(value)

    def key_shard_function(self, dist: Dist) -> Callable[[object], str]:
        """A fast ``value -> shard`` for rows of one table (COPY splitting, INSERT)."""

        def shard_of(value: object) -> str:
            if isinstance(value, KeyValue):
                kv = value
            elif value is None or isinstance(value, str):
                kv = untyped(value)
            else:
                kv = python_key_value(value)
            atoms = dist.null_atoms() if kv.kind == "null" else dist.point(kv)
            if atoms is None:
                raise ShardwireError(
                    f"invalid shard key value {describe_value(kv)} for {dist.name}.{dist.key}",
                    sqlstate="22P02",
                )
            (atom,) = atoms
            shard = dist.shard_of_atom(atom)
            if shard is None:
                raise ShardwireError(
                    f"no shard of {dist.name} takes {dist.key} = {describe_value(kv)} "
                    "(not listed and no default)",
                    sqlstate="23514",
                )
            return shard

        return shard_of


class _HashProbe(Dist):
    """A hash distribution not tied to a table (hints on statements naming no table)."""

    def __init__(self, router: Router, key_type: str | None) -> None:
        self.name = "(no table)"
        self.key = ""
        self.strategy = "hash"
        self.buckets = router.buckets
        self.assignment = router.assignment
        self._key_type = normalize_type_name(key_type) if key_type else None
        self._default = None
        self._values = {}
        self._range_kind = None
        self._segments = []
        self._lows = []
        self.colocation = ("hash",)
        self.table = None  # type: ignore[assignment]


def hash_probe(router: Router, key_type: str | None = None) -> Dist:
    """A hash :class:`Dist` for values with no table (``/* shard_key: */`` alone)."""
    return _HashProbe(router, key_type)


def python_key_value(value: object) -> KeyValue:
    """A Python value (as a driver would bind it) as a :class:`KeyValue`."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return KeyValue("bool", value)
    if isinstance(value, int):
        return KeyValue("int", value)
    if isinstance(value, uuid.UUID):
        return KeyValue("uuid", value)
    if isinstance(value, Decimal):
        return KeyValue("numeric", value) if value.is_finite() else UNKNOWN
    if isinstance(value, float):
        try:
            return KeyValue("numeric", Decimal(repr(value)))
        except InvalidOperation:
            return UNKNOWN
    if isinstance(value, str):
        return KeyValue("untyped", value)
    if isinstance(value, dt.datetime):
        return KeyValue("timestamp", value.isoformat(sep=" "))
    if isinstance(value, dt.date):
        return KeyValue("date", value.isoformat())
    return UNKNOWN
