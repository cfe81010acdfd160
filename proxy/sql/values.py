"""Owns compiled value expressions: the constants a statement compares shard keys with.

The analysis compiles each value (a literal, a ``$n`` parameter, a normalised literal slot,
casts and signs of those) into a small tuple, evaluated at route time against a
:class:`Binding` (the Bind parameters and the statement's literal values):

    ("const", KeyValue)  ("param", index0)  ("lit", slot)  ("cast", V, type)  ("neg", V)

Predicates on shard keys are tuples too (see :mod:`proxy.sql.analyze`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from proxy.sql.lexer import number_value
from proxy.sql.params import decode_param, decode_param_array, param_oid, parse_text_array
from proxy.topology.router import KeyValue, _text_of, _to_int, _to_uuid

__all__ = ["TRUE", "Binding", "P", "V", "cast_value", "eval_array", "eval_value", "type_name"]

_UNKNOWN = KeyValue("unknown", None)
_NULL = KeyValue("null", None)

# Compiled value expressions (tuples, evaluated at route time):
#   ("const", KeyValue) ("param", index0) ("lit", slot) ("cast", V, type) ("neg", V)
V = tuple[Any, ...]
# Compiled predicates:
#   ("true",) ("and", [P]) ("or", [P]) ("eq", occs, V) ("in", occs, [V]) ("any", occs, V)
#   ("cmp", occs, op, V) ("between", occs, V, V) ("isnull", occs) ("row", occs, V)
P = tuple[Any, ...]
TRUE: P = ("true",)


@dataclass(slots=True)
class Binding:
    """Everything a route may depend on besides the template."""

    params: Sequence[object | None] | None
    param_types: Sequence[int] | None
    literals: Sequence[KeyValue]
    reference_shard: str | None = None
    cache: dict[int, KeyValue] = field(default_factory=dict)

    def param(self, index: int) -> KeyValue:
        kv = self.cache.get(index)
        if kv is None:
            if self.params is None or index >= len(self.params):
                kv = _UNKNOWN
            else:
                kv = decode_param(self.params[index], param_oid(self.param_types, index))
            self.cache[index] = kv
        return kv

    def param_array(self, index: int) -> list[KeyValue] | None:
        if self.params is None or index >= len(self.params):
            return None
        return decode_param_array(self.params[index], param_oid(self.param_types, index))


def eval_value(v: V, b: Binding) -> KeyValue:
    tag = v[0]
    if tag == "const":
        return v[1]
    if tag == "lit":
        return b.literals[v[1]] if v[1] < len(b.literals) else _UNKNOWN
    if tag == "param":
        return b.param(v[1])
    if tag == "cast":
        return cast_value(eval_value(v[1], b), v[2])
    if tag == "neg":
        kv = eval_value(v[1], b)
        if kv.kind == "int":
            return KeyValue("int", -kv.value)
        if kv.kind == "numeric":
            return KeyValue("numeric", -kv.value)
        if kv.kind in ("string", "untyped"):
            n = number_value(kv.value.strip())
            if n.kind in ("int", "numeric"):
                return KeyValue(n.kind, -n.value)
        return _UNKNOWN
    return _UNKNOWN


def eval_array(v: V, b: Binding) -> list[KeyValue] | None:
    """The elements of an array value (``key = ANY(v)``)."""
    tag = v[0]
    if tag == "param":
        return b.param_array(v[1])
    if tag == "cast":
        elem_type = v[2][6:] if isinstance(v[2], str) and v[2].startswith("array:") else None
        items = eval_array(v[1], b)
        if items is None or elem_type is None:
            return items
        return [cast_value(kv, elem_type) for kv in items]
    kv = eval_value(v, b)
    if kv.kind in ("string", "untyped", "text"):
        items = parse_text_array(kv.value)
        if items is None:
            return None
        return [_NULL if s is None else KeyValue("untyped", s) for s in items]
    return None


def cast_value(kv: KeyValue, type_name: str | None) -> KeyValue:
    """``kv::type_name`` as far as routing cares (unknown when it cannot tell)."""
    if kv.kind in ("null", "unknown") or type_name is None:
        return kv if type_name is not None else _UNKNOWN
    if type_name in ("int2", "int4", "int8"):
        n = _to_int(kv)
        return _UNKNOWN if n is None else KeyValue("int", n)
    if type_name == "text":
        text = _text_of(kv)
        return _UNKNOWN if text is None else KeyValue("text", text)
    if type_name == "uuid":
        u = _to_uuid(kv)
        return _UNKNOWN if u is None else KeyValue("uuid", u)
    if type_name in ("date", "timestamp"):
        text = _text_of(kv)
        return _UNKNOWN if text is None else KeyValue(type_name, text)
    if type_name == "numeric":
        if kv.kind in ("int", "numeric"):
            return KeyValue("numeric", Decimal(kv.value))
        text = _text_of(kv)
        try:
            return KeyValue("numeric", Decimal(text.strip())) if text else _UNKNOWN
        except InvalidOperation:
            return _UNKNOWN
    return _UNKNOWN


_DTYPE_NAMES = {
    "SMALLINT": "int2", "INT": "int4", "BIGINT": "int8", "TEXT": "text", "VARCHAR": "text",
    "NAME": "text", "UUID": "uuid", "DATE": "date", "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamp", "TIMESTAMPLTZ": "timestamp", "TIMESTAMPNTZ": "timestamp",
    "DECIMAL": "numeric",
}
_USER_TYPE_NAMES = {
    "int2": "int2", "int4": "int4", "int8": "int8", "smallint": "int2", "integer": "int4",
    "int": "int4", "bigint": "int8", "text": "text", "varchar": "text", "uuid": "uuid",
    "date": "date", "timestamp": "timestamp", "timestamptz": "timestamp", "numeric": "numeric",
}


def type_name(dt: exp.Expression | None) -> str | None:
    if not isinstance(dt, exp.DataType):
        return None
    name = getattr(dt.this, "name", None) or str(dt.this)
    if name == "ARRAY":
        elems = dt.expressions
        inner = type_name(elems[0]) if elems else None
        return None if inner is None else "array:" + inner
    if name == "USERDEFINED":
        text = dt.sql("postgres").lower().replace('"', "")
        text = text.removeprefix("pg_catalog.")
        return _USER_TYPE_NAMES.get(text)
    return _DTYPE_NAMES.get(name)
