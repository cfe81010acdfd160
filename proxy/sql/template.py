"""Owns the statement templates other than DML: a compiled statement that gives a Route.

Every template has ``statement_type``, ``is_write``, ``tables``, ``uses_params`` (whether
its route depends on Bind parameters) and ``route(binding)``. DML statements compile to
:class:`proxy.sql.dml.DmlTemplate`; the templates here wrap fixed routes, embedded queries
(EXPLAIN, COPY (query), CREATE ... AS, DECLARE), several statements of one Query, and
statements that could not be analysed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from proxy.errors import FeatureNotSupported, ShardwireError
from proxy.sql.lexer import literal_value
from proxy.sql.route import Route
from proxy.sql.values import Binding
from proxy.topology.router import Dist, KeyValue, Router

__all__ = [
    "InnerTemplate",
    "MultiTemplate",
    "StaticTemplate",
    "Template",
    "UnparsedTemplate",
    "bind_literals",
]


class Template(Protocol):
    """What the planner needs of a compiled statement."""

    statement_type: str
    is_write: bool
    uses_params: bool
    tables: tuple[str, ...]

    def route(self, b: Binding) -> Route: ...


_UNUSED = KeyValue("unknown", None)


def bind_literals(sql: str, slots: Sequence[tuple[int, int, str]],
                  used: frozenset[int] | None = None) -> tuple[KeyValue, ...]:
    """The values of the literals the normalised text replaced by placeholders (only those
    in ``used`` when given: the others cannot change the route)."""
    if used is None:
        return tuple(literal_value(sql, s) for s in slots)
    return tuple(literal_value(sql, s) if i in used else _UNUSED for i, s in enumerate(slots))


class StaticTemplate:
    """A route that depends on nothing but the statement."""

    uses_params = False

    def __init__(self, route: Route, *, dist: Dist | None = None) -> None:
        self._route = route
        self.statement_type = route.statement_type
        self.is_write = route.is_write
        self.tables = route.tables
        self.first_dist = dist

    def route(self, b: Binding) -> Route:
        return self._route


class InnerTemplate:
    """A statement wrapping a query (EXPLAIN, COPY (query), DECLARE, CREATE ... AS): routes
    where the query goes, then ``adjust`` the route."""


    def __init__(self, inner: Any, literals: tuple[KeyValue, ...], statement_type: str,
                 adjust: Callable[[Route], Route]) -> None:
        self.inner = inner
        self.literals = literals
        self.statement_type = statement_type
        self.is_write = inner.is_write
        self.tables = inner.tables
        self.first_dist = getattr(inner, "first_dist", None)
        self.uses_params = getattr(inner, "uses_params", True)
        self.adjust = adjust

    def route(self, b: Binding) -> Route:
        inner = self.inner.route(dataclasses.replace(b, literals=self.literals, cache={}))
        return self.adjust(inner)


class MultiTemplate:
    """Several statements in one simple Query: they must all go to the same shards."""


    def __init__(self, parts: list[tuple[Any, tuple[KeyValue, ...], str]]) -> None:
        self.parts = parts
        types = [p[0].statement_type for p in parts]
        self.statement_type = types[0] if len(set(types)) == 1 else "multi"
        self.is_write = any(p[0].is_write for p in parts)
        self.tables = tuple(sorted({t for p in parts for t in p[0].tables}))
        self.first_dist = next((getattr(p[0], "first_dist", None) for p in parts
                                if getattr(p[0], "first_dist", None)), None)
        self.uses_params = any(getattr(p[0], "uses_params", True) for p in parts)

    def route(self, b: Binding) -> Route:
        routes = [t.route(dataclasses.replace(b, literals=lits, cache={}))
                  for t, lits, _ in self.parts]
        for r in routes:
            if r.error is not None:
                return dataclasses.replace(r, statement_type=self.statement_type)
        routed = [r for r in routes if r.statement_type != "transaction"] or routes
        shard_sets = {r.shards for r in routed}
        if len(shard_sets) > 1 or any(r.rewrites is not None for r in routed):
            # the session runs each statement where it belongs, in one transaction
            # (proxy/frontend/fanout.py multi_statement)
            order = {s: i for i, s in enumerate(self.parts[0][0].router.shards)} if hasattr(
                self.parts[0][0], "router") else {}
            shards = sorted({s for r in routes for s in r.shards},
                            key=lambda s: order.get(s, 0))
            where = "; ".join(f"{text!r} -> {', '.join(r.shards)}"
                              for (_, _, text), r in zip(self.parts, routes, strict=True))
            return Route(
                kind="shards", shards=tuple(shards),
                reason=f"statements of one query on different shards: {where}",
                statement_type="multi", is_write=self.is_write, tables=self.tables,
                source="multi")
        first = routed[0]
        return dataclasses.replace(
            first,
            reason="; ".join(r.reason for r in routed),
            statement_type=self.statement_type,
            is_write=self.is_write,
            needs_merge=any(r.needs_merge for r in routed),
            tables=self.tables,
        )


class UnparsedTemplate:
    """A statement the planner cannot analyse (proxy/sql/ROUTING.md, last section)."""

    is_write = False
    first_dist = None
    uses_params = False

    def __init__(self, router: Router, statement_type: str, detail: str,
                 named: list[str], mode: str) -> None:
        self.statement_type = statement_type
        self.tables = tuple(named)
        detail = detail.splitlines()[0] if detail else "unsupported syntax"
        if len(detail) > 160:
            detail = detail[:157] + "..."
        if named:
            err: ShardwireError | None = FeatureNotSupported(
                f"shardwire cannot analyse this statement, which names "
                f"{', '.join(named)} ({detail}), so cannot tell which shards it needs",
                hint="add a /* shard: NAME */ (or /* shard: all */) hint comment",
            )
            reason = f"unparsed: names {', '.join(named)} -> error"
        elif mode == "error":
            err = FeatureNotSupported(
                f"shardwire cannot analyse this statement ({detail}) and unparsed is 'error'",
                hint="add a /* shard: NAME */ hint comment",
            )
            reason = "unparsed: error"
        else:
            err = None
            reason = f"unparsed ({detail}), names no sharded or reference table -> default shard"
        self._route = Route(
            kind="default", shards=() if err else (router.default_shard,), reason=reason,
            statement_type=statement_type, error=err, tables=self.tables,
            source="error" if err else "default",
        )

    def route(self, b: Binding) -> Route:
        return self._route
