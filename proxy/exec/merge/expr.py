"""Owns evaluating a HAVING condition on merged groups, with SQL's three-valued logic.

:func:`compile_having` turns the sqlglot expression into a Python closure over a merged
row (group keys, then aggregates). Supported: AND/OR/NOT, comparisons, IS [NOT] NULL,
BETWEEN, IN (a list of constants), + - * / % on numbers, numeric/string/boolean/NULL
literals, aggregates and GROUP BY keys. Anything else is refused (0A000) rather than
guessed. Text compares by code point: a HAVING on text values is refused unless the
database collation is C (the caller checks ``uses_text``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlglot import exp

from proxy.errors import FeatureNotSupported, ShardwireError
from proxy.exec.merge.values import numeric_div

Row = list[Any]
Eval = Callable[[Row], Any]

_CMP: dict[type[exp.Expression], Callable[[Any, Any], bool]] = {
    exp.EQ: operator.eq, exp.NEQ: operator.ne, exp.LT: operator.lt, exp.LTE: operator.le,
    exp.GT: operator.gt, exp.GTE: operator.ge,
}


def compile_having(e: exp.Expression, group_exprs: list[exp.Expression],
                   add_agg: Callable[[exp.Expression], int], n_keys: int) -> Eval:
    """A closure evaluating `e` (True, False or None for NULL) on a merged row."""

    def build(node: exp.Expression) -> Eval:
        if isinstance(node, exp.Paren):
            return build(node.this)
        if isinstance(node, exp.And) or isinstance(node, exp.Or):
            left, right = build(node.this), build(node.expression)
            if isinstance(node, exp.And):
                def and_(row: Row) -> Any:
                    a, b = left(row), right(row)
                    if a is False or b is False:
                        return False
                    return None if a is None or b is None else True
                return and_

            def or_(row: Row) -> Any:
                a, b = left(row), right(row)
                if a is True or b is True:
                    return True
                return None if a is None or b is None else False
            return or_
        if isinstance(node, exp.Not):
            inner = build(node.this)
            return lambda row: None if (v := inner(row)) is None else not v
        op = _CMP.get(type(node))
        if op is not None:
            left, right = build(node.this), build(node.expression)

            def cmp(row: Row) -> Any:
                a, b = left(row), right(row)
                if a is None or b is None:
                    return None
                return op(_num(a), _num(b))
            return cmp
        if isinstance(node, exp.Is):
            inner = build(node.this)
            target = node.expression
            if isinstance(target, exp.Null):
                return lambda row: inner(row) is None
            raise _refuse(node)
        if isinstance(node, exp.Between):
            value, lo, hi = build(node.this), build(node.args["low"]), build(node.args["high"])

            def between(row: Row) -> Any:
                v, a, b = value(row), lo(row), hi(row)
                if v is None or a is None or b is None:
                    return None
                return _num(a) <= _num(v) <= _num(b)
            return between
        if isinstance(node, exp.In) and node.expressions:
            value = build(node.this)
            items = [build(x) for x in node.expressions]

            def in_(row: Row) -> Any:
                v = value(row)
                if v is None:
                    return None
                seen_null = False
                for item in items:
                    x = item(row)
                    if x is None:
                        seen_null = True
                    elif _num(x) == _num(v):
                        return True
                return None if seen_null else False
            return in_
        if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)):
            left, right = build(node.this), build(node.expression)
            kind = type(node)

            def arith(row: Row) -> Any:
                a, b = left(row), right(row)
                if a is None or b is None:
                    return None
                return _arith(kind, _num(a), _num(b))
            return arith
        if isinstance(node, exp.Neg):
            inner = build(node.this)
            return lambda row: None if (v := inner(row)) is None else -_num(v)
        if isinstance(node, exp.Coalesce):
            parts = [build(node.this), *(build(x) for x in node.expressions)]

            def coalesce(row: Row) -> Any:
                for part in parts:
                    x = part(row)
                    if x is not None:
                        return x
                return None
            return coalesce
        if isinstance(node, exp.Round) and not isinstance(node.this, exp.Literal):
            inner = build(node.this)
            places = node.args.get("decimals")
            digits = 0 if places is None else _literal_number(places.this) if isinstance(
                places, exp.Literal) else None
            if not isinstance(digits, int):
                raise _refuse(node)
            return lambda row: None if (x := inner(row)) is None else _round(x, digits)
        if isinstance(node, exp.Abs):
            inner = build(node.this)
            return lambda row: None if (x := inner(row)) is None else abs(x)
        if isinstance(node, exp.Literal):
            if node.is_string:
                text = node.this
                return lambda row: text
            value = _literal_number(node.this)
            return lambda row: value
        if isinstance(node, exp.Null):
            return lambda row: None
        if isinstance(node, exp.Boolean):
            flag = bool(node.this)
            return lambda row: flag
        if isinstance(node, exp.AggFunc) or (
                isinstance(node, exp.Filter) and isinstance(node.this, exp.AggFunc)):
            index = n_keys + add_agg(node)
            return lambda row: row[index]
        for k, g in enumerate(group_exprs):
            if g == node:
                return lambda row, k=k: row[k]
        raise _refuse(node)

    return build(e)


def _refuse(node: exp.Expression) -> FeatureNotSupported:
    return FeatureNotSupported(
        f"{node.sql(dialect='postgres')} over aggregates of several shards is not supported "
        "yet", hint="select the aggregates themselves, or use + - * / %, round, abs, "
        "coalesce and comparisons")


def _round(x: Any, digits: int) -> Any:
    """round(numeric, n) as Postgres: half away from zero, n decimal places kept."""
    if isinstance(x, float):
        return float(round(Decimal(x), digits)) if digits else float(round(x))
    d = Decimal(x)
    if not d.is_finite():
        return d
    return d.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def _literal_number(text: str) -> int | Decimal:
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def _num(v: Any) -> Any:
    if isinstance(v, float) and not isinstance(v, bool):
        return v
    return v


def _arith(kind: type[exp.Expression], a: Any, b: Any) -> Any:
    if kind is exp.Add:
        return a + b
    if kind is exp.Sub:
        return a - b
    if kind is exp.Mul:
        return a * b
    if b == 0:
        raise ShardwireError("division by zero", sqlstate="22012")
    if kind is exp.Div:
        if isinstance(a, int) and isinstance(b, int):
            q = abs(a) // abs(b)  # integer division truncates toward zero, as in Postgres
            return q if (a >= 0) == (b >= 0) else -q
        if isinstance(a, float) or isinstance(b, float):
            return float(a) / float(b)
        return numeric_div(Decimal(a), Decimal(b))
    if isinstance(a, int) and isinstance(b, int):
        r = abs(a) % abs(b)
        return r if a >= 0 else -r
    return Decimal(a) % Decimal(b)
