"""Owns the planner's entry points and caches: SQL text + parameters + topology -> Route.

Two bounded LRU caches make routing cheap:

* **plans**, keyed by the exact statement text: a :class:`PreparedPlan` holds the
  statement's template, its literal values and hint comments. The extended protocol
  parses a statement once (``prepare``) and routes it at every Bind with the parameter
  values (``PreparedPlan.route``); a simple-protocol text seen before costs a dict lookup.
* **templates** (in :class:`~proxy.sql.compile.Compiler`), keyed by the literal-normalised
  text: ``SELECT ... WHERE aid = 123`` and ``... aid = 456`` share one sqlglot parse and
  analysis; only a regex pass over the new text is paid (:func:`proxy.sql.lexer.normalize`).

Hints, strongest first: a ``/* shard: NAME */`` comment, a ``/* shard_key: VALUE */``
comment, the session's ``shardwire.shard``, the session's ``shardwire.shard_key``. A hint
routes the statement as it says without analysis (``shard: all`` means every shard, results
concatenated); transaction control and ``SET``/``SHOW`` statements ignore hints.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config import Config, qualify_table_name
from proxy.errors import InternalError, ShardwireError
from proxy.sql.compile import Compiler, StaticTemplate, UnparsedTemplate, bind_literals
from proxy.sql.lexer import DML_HEADS, Hint, normalize, scan
from proxy.sql.params import decode_param, param_oid
from proxy.sql.rewrite import InsertRows, insert_rows, split_insert
from proxy.sql.route import Route
from proxy.sql.values import Binding
from proxy.topology.router import (
    KeyObserver,
    KeyValue,
    Router,
    describe_value,
    hash_probe,
    python_key_value,
)

__all__ = ["Planner", "PreparedPlan"]

# Unsigned integer literals, for the quick path of simple queries (see Planner.quick_text).
_NUMBERS = re.compile(r"(?<![\w$.])(\d+)(?![\w.])")
_NOT_QUICK = ("'", '"', "-", "/", "$", "\\", ";;")
_QUICK_CAPACITY = 4096
_INT_OIDS = frozenset({20, 21, 23})
_INT_TEXT_OIDS = frozenset({0, 20, 21, 23})
_HEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/)*([A-Za-z_]+|\()")
_NO_HINTS = frozenset({"transaction", "set", "shardwire_set", "shardwire_show", "empty"})


class PreparedPlan:
    """One statement text, analysed: route it with :meth:`route` for each set of parameters."""

    __slots__ = ("_memo", "_rows", "hints", "literals", "planner", "quick_int", "quick_param",
                 "sql", "template")

    def __init__(self, planner: Planner, sql: str, template: Any,
                 literals: tuple[KeyValue, ...], hints: list[Hint]) -> None:
        self.planner = planner
        self.sql = sql
        self.template = template
        self.literals = literals
        self.hints = hints
        self._memo: tuple[str | None, Route] | None = None
        self._rows: InsertRows | None = None
        # The Bind parameter that alone decides the shard (see quick_value), or None.
        q = getattr(template, "quick", None)
        self.quick_param: int | None = (q[1][1] if q is not None and q[1][0] == "param"
                                        and not hints else None)
        self.quick_int: Callable[[int], str | None] | None = (
            q[0].int_shard if q is not None else None)

    @property
    def statement_type(self) -> str:
        return self.template.statement_type

    def quick_value(self, value: object | None, param_type: int) -> str | None:
        """The shard for the value of parameter `quick_param` (see quick_shard)."""
        if value is None:
            return None
        fast = self.quick_int
        if fast is not None:
            if value.__class__ is str and param_type in _INT_TEXT_OIDS and value.isdigit():  # type: ignore[union-attr]
                return fast(int(value))  # type: ignore[arg-type]
            if value.__class__ is bytes and param_type in _INT_OIDS and len(value) in (2, 4, 8):  # type: ignore[arg-type]
                return fast(int.from_bytes(value, "big", signed=True))  # type: ignore[arg-type]
        return self.template.quick_shard(decode_param(value, param_type))  # type: ignore[no-any-return]

    def quick_shard(self, params: Sequence[object | None] | None,
                    param_types: Sequence[int] | None) -> str | None:
        """The shard of a one-key-equality statement for these Bind values, with no
        Route built (the session's hot path); None when :meth:`route` must decide."""
        t = self.template
        q = getattr(t, "quick", None)
        if q is None or self.hints:
            return None
        v = q[1]
        if v[0] == "param":
            i = v[1]
            if params is None or i >= len(params):
                return None
            kv = decode_param(params[i], param_oid(param_types, i))
        else:
            i = v[1]
            if i >= len(self.literals):
                return None
            kv = self.literals[i]
        return t.quick_shard(kv)  # type: ignore[no-any-return]

    def route(
        self,
        params: Sequence[object | None] | None = None,
        param_types: Sequence[int] | None = None,
        *,
        session_shard: str | None = None,
        session_shard_key: object | None = None,
        reference_shard: str | None = None,
    ) -> Route:
        """The route for these Bind parameter values (text ``str``, binary ``bytes`` with
        ``param_types`` OIDs, ``None`` for NULL, or Python objects)."""
        t = self.template
        if (self.hints or session_shard is not None or session_shard_key is not None) and (
            t.statement_type not in _NO_HINTS
        ):
            hinted = self._hinted(params, param_types, session_shard, session_shard_key,
                                  reference_shard)
            if hinted is not None:
                return hinted
        memo = self._memo
        if memo is not None and memo[0] == reference_shard:
            return memo[1]
        b = Binding(params, param_types, self.literals, reference_shard)
        try:
            r = t.route(b)
            if r.rewrites == ():
                r = self._split(r, b)
        except Exception as e:  # a planner bug must fail the statement, not the session
            return _bug_route(t.statement_type, e)
        if not getattr(t, "uses_params", True):
            self._memo = (reference_shard, r)
        return r

    # ----------------------------------------------------------------- hints

    def _hinted(self, params: Sequence[object | None] | None,
                param_types: Sequence[int] | None, session_shard: str | None,
                session_shard_key: object | None, reference_shard: str | None
                ) -> Route | None:
        shard_hint = next((h for h in self.hints if h.shard is not None), None)
        key_hint = next((h for h in self.hints if h.key is not None), None)
        if shard_hint is not None:
            return self._to_shard(shard_hint.shard, f"hint {shard_hint.text}", "hint",
                                  params, param_types, reference_shard)
        if key_hint is not None:
            return self._to_key(key_hint.key, f"hint {key_hint.text}", "hint", params,  # type: ignore[arg-type]
                                param_types, reference_shard)
        if session_shard is not None:
            return self._to_shard(session_shard, f"session hint shardwire.shard = "
                                  f"{session_shard!r}", "session_hint", params, param_types,
                                  reference_shard)
        if session_shard_key is not None:
            kv = session_shard_key if isinstance(session_shard_key, KeyValue) else (
                KeyValue("untyped", session_shard_key) if isinstance(session_shard_key, str)
                else python_key_value(session_shard_key))
            return self._to_key(kv, f"session hint shardwire.shard_key = {describe_value(kv)}",
                                "session_hint", params, param_types, reference_shard)
        return None

    def _base(self, params: Sequence[object | None] | None, param_types: Sequence[int] | None,
              reference_shard: str | None) -> Route:
        b = Binding(params, param_types, self.literals, reference_shard)
        return self.template.route(b)

    def _to_shard(self, shard: str | None, reason: str, source: str,
                  params: Sequence[object | None] | None, param_types: Sequence[int] | None,
                  reference_shard: str | None) -> Route:
        router = self.planner.router
        base = self._base(params, param_types, reference_shard)
        if shard == "all":
            return _hint_route(base, "all", router.shards, reason + " -> all shards", source)
        if shard not in router.order:
            return dataclasses.replace(
                base, kind="default", shards=(), reason=reason, source="error",
                rewrites=None, copy_split=None,
                error=ShardwireError(f"unknown shard {shard!r} in {reason}; expected one of "
                                     f"{', '.join((*router.shards, 'all'))}", sqlstate="22023"))
        return _hint_route(base, "shard", (shard,), f"{reason} -> {shard}", source)

    def _to_key(self, kv: KeyValue, reason: str, source: str,
                params: Sequence[object | None] | None, param_types: Sequence[int] | None,
                reference_shard: str | None) -> Route:
        router = self.planner.router
        base = self._base(params, param_types, reference_shard)
        dist = getattr(self.template, "first_dist", None) or hash_probe(router)
        atoms = dist.null_atoms() if kv.kind == "null" else dist.point(kv)
        shard = None
        if atoms:
            (atom,) = atoms
            shard = dist.shard_of_atom(atom)
        if shard is None:
            return dataclasses.replace(
                base, kind="default", shards=(), reason=reason, source="error", rewrites=None,
                copy_split=None, error=ShardwireError(
                    f"{reason}: no shard takes {describe_value(kv)}", sqlstate="22023"))
        where = f"{dist.name} {dist.describe_atoms(atoms)}" if dist.table is not None else (
            dist.describe_atoms(atoms))
        return _hint_route(base, "shard", (shard,), f"{reason} -> {where} -> {shard}", source)

    # ----------------------------------------------------------------- INSERT split

    def _split(self, r: Route, b: Binding) -> Route:
        t = self.template
        router = self.planner.router
        try:
            row_shards = t.row_shards(b)
            if self._rows is None:
                self._rows = insert_rows(self.sql)
            rewrites, params, rows = split_insert(self._rows, row_shards, router.shards)
        except ShardwireError as e:
            return dataclasses.replace(r, kind="default", shards=(), error=e, rewrites=None,
                                       source="error")
        shards = tuple(s for s, _ in rewrites)
        kind = "all" if len(shards) == len(router.shards) else "shards"
        return dataclasses.replace(r, kind=kind, shards=shards, rewrites=rewrites,
                                   rewrite_params=params, rewrite_rows=rows)


def _bug_route(statement_type: str, e: Exception) -> Route:
    err = InternalError(f"planner failed: {type(e).__name__}: {e}")
    return Route(kind="default", shards=(), reason=err.message, statement_type=statement_type,
                 error=err, source="error")


def _hint_route(base: Route, kind: str, shards: Sequence[str], reason: str, source: str
                ) -> Route:
    return dataclasses.replace(
        base, kind=kind, shards=tuple(shards), reason=reason, source=source, error=None,
        needs_merge=False, rewrites=None, rewrite_params=None, rewrite_rows=None,
        copy_split=None,
    )


class Planner:
    """Routes statements for one topology snapshot (build a new Planner on reload).

    The SQL types of the tables' shard keys are the topology's ``key_type`` settings,
    overridden per table by ``key_types`` (``{"users": "bigint", "codes": "text"}``, names
    as in the topology); ``self.key_types`` is the result, by qualified table name. See
    :mod:`proxy.topology.router` for how values are typed when a table has no key type.
    """

    def __init__(self, config: Config, *, key_types: Mapping[str, str] | None = None,
                 capacity: int = 4096, template_capacity: int = 4096,
                 observe: KeyObserver | None = None) -> None:
        self.config = config
        merged = {name: t.key_type for name, t in config.tables.items() if t.key_type}
        for name, type_name in (key_types or {}).items():
            merged[qualify_table_name(name)] = type_name
        self.key_types: dict[str, str] = merged
        # `observe(shard, bucket, key)` hears every statement the quick paths route by a
        # shard-key value (hot-key detection; see proxy/stats/hotkeys.py)
        self.router = Router(config, merged, observe=observe)
        self.compiler = Compiler(self.router, config.unparsed, template_capacity)
        self.capacity = capacity
        self._plans: OrderedDict[str, PreparedPlan] = OrderedDict()
        # quick_text: the text with its integers blanked -> (template, which integer is
        # the key), or None when that shape is not for the quick path
        self._quick: dict[str, tuple[Callable[[int], str | None], int] | None] = {}
        self.hits = 0
        self.misses = 0
        self.quick_hits = 0

    def plan(
        self,
        sql: str,
        params: Sequence[object | None] | None = None,
        param_types: Sequence[int] | None = None,
        *,
        session_shard: str | None = None,
        session_shard_key: object | None = None,
        reference_shard: str | None = None,
    ) -> Route:
        """The route of one statement (or one simple Query string)."""
        return self.prepare(sql).route(
            params, param_types, session_shard=session_shard,
            session_shard_key=session_shard_key, reference_shard=reference_shard,
        )

    def prepare(self, sql: str) -> PreparedPlan:
        """The analysed statement (cached by text): call ``.route(params)`` at each Bind."""
        plans = self._plans
        p = plans.get(sql)
        if p is not None:
            self.hits += 1
            plans.move_to_end(sql)
            return p
        self.misses += 1
        p = self._build(sql)
        plans[sql] = p
        if len(plans) > self.capacity:
            plans.popitem(last=False)
        return p

    def quick_text(self, sql: str) -> str | None:
        """The shard of a simple-protocol statement that compares a hash key with an
        integer literal (``... WHERE aid = 4711``), or None: then use :meth:`plan`.

        Costs a regex split and two dict lookups: statements of one shape share an entry
        keyed by the text with its integers blanked, learnt once from the full analysis
        (which must agree on where the literals are)."""
        for c in _NOT_QUICK:
            if c in sql:
                return None
        parts = _NUMBERS.split(sql)
        key = "\x00".join(parts[0::2])
        quick = self._quick
        try:
            entry = quick[key]
        except KeyError:
            entry = self._learn_quick(sql, parts)
            if len(quick) >= _QUICK_CAPACITY:
                quick.clear()
            quick[key] = entry
        if entry is None:
            return None
        self.quick_hits += 1
        shard_of, index = entry
        return shard_of(int(parts[2 * index + 1]))

    def _learn_quick(self, sql: str, parts: list[str]
                     ) -> tuple[Callable[[int], str | None], int] | None:
        plan = self.prepare(sql)
        q = getattr(plan.template, "quick", None)
        if q is None or plan.hints or q[1][0] != "lit":
            return None
        norm = normalize(sql)
        if norm is None:
            return None
        slots = norm[1]
        numbers: list[tuple[int, int]] = []
        pos = 0
        for i, part in enumerate(parts):
            if i % 2:
                numbers.append((pos, pos + len(part)))
            pos += len(part)
        if [(s[0], s[1]) for s in slots] != numbers:
            return None  # the analysis saw other literals: not a shape for the quick path
        template = plan.template
        shard_of = q[0].int_shard or (
            lambda n: template.quick_shard(KeyValue("int", n)))  # type: ignore[no-any-return]
        return shard_of, q[1][1]

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Hit/miss counters: ``plans`` (by exact text), ``templates`` (by normalised text;
        a miss there is a sqlglot parse)."""
        c = self.compiler
        return {
            "plans": {"hits": self.hits, "misses": self.misses, "size": len(self._plans),
                      "capacity": self.capacity},
            "quick": {"hits": self.quick_hits, "shapes": len(self._quick)},
            "templates": {"hits": c.hits, "misses": c.misses, "size": len(c.templates),
                          "capacity": c.capacity, "parses": c.parses},
        }

    def _build(self, sql: str) -> PreparedPlan:
        try:
            return self._compile(sql)
        except Exception as e:  # a planner bug must fail the statement, not the session
            return PreparedPlan(self, sql, StaticTemplate(_bug_route("other", e)), (), [])

    def _compile(self, sql: str) -> PreparedPlan:
        m = _HEAD.match(sql)
        head = m.group(1).lower() if m else ""
        hints = scan(sql).hints() if ("/*" in sql or "--" in sql) and "shard" in sql.lower() \
            else []
        if head in DML_HEADS:
            norm = normalize(sql)
            if norm is not None:
                key, slots = norm
                compiler = self.compiler
                t = compiler.dml(key, head)
                if isinstance(t, UnparsedTemplate) and slots:
                    # sqlglot may have stumbled on a placeholder: try the literals as written
                    plain = normalize(sql, literals=False)
                    if plain is not None:
                        t2 = compiler.dml(plain[0], head)
                        if not isinstance(t2, UnparsedTemplate):
                            return PreparedPlan(self, sql, t2, (), hints)
                used = getattr(t, "used_literals", None)
                lits = bind_literals(sql, slots, used) if used else ()
                return PreparedPlan(self, sql, t, lits, hints)
        t, lits = self.compiler.compile_text(sql)
        return PreparedPlan(self, sql, t, lits, hints)

