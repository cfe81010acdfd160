"""Owns planning a cross-shard SELECT whose result needs combining: SQL -> :class:`MergePlan`.

A merge plan is a small tree of primitives, applied by :mod:`proxy.exec.merge.engine` to the
rows the shards return for ``shard_sql``:

* **shard scan** (every shard of the route, concurrently, in batches);
* **aggregate** (``GROUP BY`` keys, partial aggregates combined: ``count`` and ``sum`` add
  up, ``avg`` is ``sum``/``count``, ``min``/``max``/``bool_and``/``bool_or`` fold, a
  ``DISTINCT`` argument is grouped by on the shards and counted in the proxy);
* **filter** (``HAVING``, evaluated after the merge);
* **sort** (a k-way merge of the shards' sorted streams, or a sort of the merged groups);
* **distinct** / **distinct on**;
* **limit/offset** (each shard gets ``LIMIT limit+offset``, the proxy skips and stops);
* **project** (helper columns the proxy added for sort keys or aggregates are dropped).

Each shard runs ``shard_sql``: the client's statement rewritten by sqlglot (parameters stay
``$n``, bound with the client's values). What the client sees is described by the client's
own statement, prepared on one shard (so names and types are Postgres' own).

Anything this cannot answer exactly raises :class:`~proxy.errors.FeatureNotSupported`
naming the construct: never a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from proxy.errors import FeatureNotSupported

__all__ = ["EXPR", "AggSpec", "MergePlan", "OutputColumn", "SortKey", "plan_merge"]

EXPR = 1 << 20  # merged-row columns from EXPR on are select-list expressions over aggregates

# "any": a constant select item next to aggregates (every shard computes the same value)
AggFunc = Literal["count", "sum", "avg", "min", "max", "bool_and", "bool_or", "any",
                  "string_agg", "array_agg"]
# A LIMIT / OFFSET: a constant, or the client's parameter $n (0-based index).
Bound = tuple[Literal["const"], int | None] | tuple[Literal["param"], int]

_AGGS: dict[type[exp.Expression], AggFunc] = {
    exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg", exp.Min: "min", exp.Max: "max",
    exp.LogicalAnd: "bool_and", exp.LogicalOr: "bool_or",
}
_UNSUPPORTED_AGGS = (exp.Stddev, exp.StddevPop,
                     exp.StddevSamp, exp.Variance, exp.VariancePop, exp.Quantile,
                     exp.PercentileCont, exp.PercentileDisc, exp.ArrayConcatAgg)
_HELPER = "_sw_"


@dataclass(frozen=True, slots=True)
class SortKey:
    """One ORDER BY key: a column of the merged row."""

    column: int
    desc: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class AggSpec:
    """One aggregate of the merged row and where its partials are in a shard row.

    ``args``: the shard columns holding its partials (``avg``: sum, count; ``count(*)``:
    the count; with ``distinct``: the column of the distinct argument, which the shards
    group by)."""

    func: AggFunc
    args: tuple[int, ...]
    distinct: bool = False
    star: bool = False
    # string_agg / array_agg: each shard returns its values as an array (args[0]) ordered by
    # the aggregate's ORDER BY, whose keys come as arrays too (args[1:]); the proxy merges
    order: tuple[tuple[bool, bool], ...] = ()  # (desc, nulls_first) per ORDER BY key
    separator: str | None = None


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """A column the client sees: a merged-row column."""

    column: int
    computed: bool  # an aggregate: re-encoded; else the shard's bytes are forwarded


@dataclass(frozen=True, slots=True)
class MergePlan:
    """See the module docstring. Column numbers of the *merged row*: without aggregation,
    the shard row itself; with it, the group keys then the aggregates."""

    shard_sql: str
    helpers: int  # trailing helper columns of a shard row (no aggregation)
    aggregate: bool
    group_keys: tuple[int, ...]  # shard columns of the GROUP BY keys
    aggs: tuple[AggSpec, ...]
    distinct_arg: int | None  # shard column of the DISTINCT aggregate argument
    having: Any  # compiled HAVING (see proxy.exec.merge.expr), or None
    outputs: tuple[OutputColumn, ...] | None  # None: every non-helper shard column
    order: tuple[SortKey, ...]
    distinct: bool
    distinct_on: tuple[int, ...] | None
    limit: Bound | None
    offset: Bound | None
    with_ties: bool = False  # FETCH FIRST n ROWS WITH TIES: rows tied with the last go too
    # expressions over aggregates in the select list, evaluated on the merged row: their
    # merged-row columns follow the aggregates (OutputColumn.column = EXPR + index)
    exprs: tuple[Any, ...] = ()

    def describe(self) -> str:
        """The plan tree, for ``shardwire route`` and logs."""
        lines = [f"shard scan: {self.shard_sql}"]
        if self.aggregate:
            keys = ", ".join(f"${k + 1}" for k in self.group_keys) or "(one group)"
            aggs = ", ".join(
                f"{a.func}({'DISTINCT ' if a.distinct else ''}"
                f"{'*' if a.star else ', '.join(f'${i + 1}' for i in a.args)})"
                for a in self.aggs)
            lines.append(f"aggregate: group by {keys}; {aggs}")
        if self.having is not None:
            lines.append("filter: HAVING")
        if self.distinct_on is not None:
            lines.append("distinct on: " + ", ".join(
                f"helper {self.helpers + c + 1}" if c < 0 else f"#{c + 1}"
                for c in self.distinct_on))
        elif self.distinct:
            lines.append("distinct")
        if self.order:
            lines.append("merge sort: " + ", ".join(
                (f"#{k.column + 1}" if k.column >= 0 else f"helper {self.helpers + k.column + 1}")
                + f" {'DESC' if k.desc else 'ASC'} "
                f"NULLS {'FIRST' if k.nulls_first else 'LAST'}" for k in self.order))
        if self.limit is not None or self.offset is not None:
            lines.append(f"limit {_bound_text(self.limit)} offset {_bound_text(self.offset)}")
        if self.helpers:
            lines.append(f"project: drop {self.helpers} helper column(s)")
        return "\n".join(lines)


def _bound_text(b: Bound | None) -> str:
    if b is None:
        return "-"
    if b[0] == "param":
        return f"${b[1] + 1}"
    return "ALL" if b[1] is None else str(b[1])


def plan_merge(sql: str) -> MergePlan:
    """Plan the merge of a cross-shard SELECT (raises FeatureNotSupported)."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="postgres") if t is not None]
    except (ParseError, TokenError) as e:
        raise FeatureNotSupported(
            f"shardwire cannot analyse this cross-shard SELECT to merge it ({e})") from None
    if len(trees) != 1:
        raise FeatureNotSupported("a cross-shard query must be a single statement")
    tree = trees[0]
    if not isinstance(tree, exp.Select):
        what = "UNION/INTERSECT/EXCEPT" if isinstance(tree, exp.SetOperation) else (
            type(tree).__name__.upper())
        raise FeatureNotSupported(
            f"cross-shard {what} that needs a merge is not supported yet",
            hint="run each part separately, or add the shard key so it reaches one shard")
    return _Planner(tree).plan()


class _Planner:
    def __init__(self, select: exp.Select) -> None:
        self.select = select

    def plan(self) -> MergePlan:
        s = self.select
        # window functions reach here only partitioned by the shard key (the router refuses
        # others): each shard computes them for its own rows
        if s.args.get("into") is not None:
            raise FeatureNotSupported("SELECT INTO across shards is not supported")
        aggregate = bool(s.args.get("group")) or s.args.get("having") is not None or any(
            _has_agg(e) for e in s.expressions)
        if aggregate and any(isinstance(n, exp.Window) for e in s.expressions
                             for n in e.walk()):
            raise FeatureNotSupported(
                "window functions over merged groups of several shards are not supported")
        if aggregate:
            return self._aggregate_plan()
        return self._sorted_plan()

    # The router (proxy/sql/dml.py) has already refused statements whose subqueries would
    # need a merge of their own: what reaches the merge engine needs one at the top only.

    # ----------------------------------------------------------------- plain rows
    def _sorted_plan(self) -> MergePlan:
        s = self.select.copy()
        items = list(s.expressions)
        has_star = any(isinstance(e, exp.Star) or (
            isinstance(e, exp.Column) and isinstance(e.this, exp.Star)) for e in items)
        distinct = s.args.get("distinct")
        # Every sort key is fetched again as a helper column at the end of the row, in
        # binary (independent of DateStyle and friends), and cut before the client sees it.
        helpers: list[exp.Expression] = []
        keys: list[exp.Expression] = []
        order: list[tuple[bool, bool]] = []
        order_node = s.args.get("order")
        for o in order_node.expressions if order_node else []:
            e = self._resolve(o.this, items, has_star)
            keys.append(e)
            helpers.append(exp.alias_(e.copy(), f"{_HELPER}o{len(helpers)}"))
            order.append((bool(o.args.get("desc")), _nulls_first(o)))
        n = len(helpers)
        sort_keys = tuple(SortKey(j - n, desc, nf) for j, (desc, nf) in enumerate(order))
        distinct_on: tuple[int, ...] | None = None
        if isinstance(distinct, exp.Distinct) and distinct.args.get("on") is not None:
            on = distinct.args["on"]
            exprs = on.expressions if isinstance(on, exp.Tuple) else [on]
            cols = []
            for e in exprs:
                e = self._resolve(e, items, has_star)
                j = next((j for j, k in enumerate(keys[:len(exprs)]) if k == e), None)
                if j is None:
                    raise FeatureNotSupported(
                        "SELECT DISTINCT ON expressions must match initial ORDER BY "
                        "expressions")
                cols.append(sort_keys[j].column)
            distinct_on = tuple(cols)
        if distinct is not None and distinct_on is None and has_star and order:
            raise FeatureNotSupported("SELECT DISTINCT * with ORDER BY across shards is not "
                                      "supported", hint="list the columns")
        limit, offset = _bounds(s)
        fetch = s.args.get("limit")
        with_ties = isinstance(fetch, exp.Fetch) and bool(
            fetch.args.get("limit_options") and fetch.args["limit_options"].args.get("with_ties"))
        if with_ties and not order:
            raise FeatureNotSupported("WITH TIES cannot be specified without ORDER BY clause")
        if helpers:
            s.set("expressions", items + helpers)
        # each shard returns at most limit+offset rows (in the final order)
        s.set("offset", None)
        if with_ties and limit is not None and limit[0] == "const" and limit[1] is not None:
            extra = offset[1] if offset is not None and offset[0] == "const" else None
            if offset is not None and extra is None:
                s.set("limit", None)
            else:
                s.set("limit", exp.Fetch(
                    direction="FIRST", count=exp.Literal.number(limit[1] + (extra or 0)),
                    limit_options=exp.LimitOptions(rows=True, with_ties=True)))
        elif limit is not None and limit[0] == "const" and limit[1] is not None:
            extra = offset[1] if offset is not None and offset[0] == "const" else None
            if offset is None:
                s.set("limit", exp.Limit(expression=exp.Literal.number(limit[1])))
            elif extra is not None:
                s.set("limit", exp.Limit(expression=exp.Literal.number(limit[1] + extra)))
            else:
                s.set("limit", None)  # an OFFSET parameter: every row, cut in the proxy
        elif limit is not None and not (offset is None and limit[0] == "param"):
            s.set("limit", None)
        if distinct_on is None and distinct is not None and limit is not None:
            s.set("limit", None)  # duplicates across shards: each shard's top-n may not do
        return MergePlan(
            shard_sql=s.sql(dialect="postgres"), helpers=len(helpers),
            aggregate=False, group_keys=(), aggs=(), distinct_arg=None, having=None,
            outputs=None, order=sort_keys,
            distinct=distinct is not None and distinct_on is None,
            distinct_on=distinct_on, limit=limit, offset=offset,
            with_ties=with_ties)

    @staticmethod
    def _resolve(e: exp.Expression, items: list[exp.Expression], has_star: bool
                 ) -> exp.Expression:
        """An ORDER BY / DISTINCT ON item as the expression it stands for: a select-list
        position or output name means that select-list expression."""
        if isinstance(e, exp.Literal) and not e.is_string:
            if has_star:
                raise FeatureNotSupported(
                    "ORDER BY a position with SELECT * across shards is not supported",
                    hint="name the column")
            n = int(e.this)
            if not 1 <= n <= len(items):
                raise FeatureNotSupported(f"ORDER BY position {n} is not in select list")
            it = items[n - 1]
            return it.this if isinstance(it, exp.Alias) else it
        if isinstance(e, exp.Column) and not e.table:
            for it in items:
                if isinstance(it, exp.Alias) and it.alias == e.name:
                    return it.this
        return e

    @staticmethod
    def _output_index(e: exp.Expression, items: list[exp.Expression]) -> int | None:
        """The select-list position an ORDER BY / DISTINCT ON expression refers to."""
        if isinstance(e, exp.Literal) and not e.is_string:
            n = int(e.this)
            if not 1 <= n <= len(items):
                raise FeatureNotSupported(f"ORDER BY position {n} is not in select list")
            return n - 1
        if isinstance(e, exp.Column) and not e.table:
            name = e.name
            for i, it in enumerate(items):
                if isinstance(it, exp.Alias) and it.alias == name:
                    return i
        for i, it in enumerate(items):
            inner = it.this if isinstance(it, exp.Alias) else it
            if inner == e:
                return i
        return None

    # ----------------------------------------------------------------- aggregation
    def _aggregate_plan(self) -> MergePlan:
        s = self.select
        items = list(s.expressions)
        if s.args.get("distinct") is not None and isinstance(
                s.args["distinct"], exp.Distinct) and s.args["distinct"].args.get("on"):
            raise FeatureNotSupported("DISTINCT ON with aggregates across shards is not "
                                      "supported")
        group = s.args.get("group")
        group_exprs: list[exp.Expression] = []
        for g in group.expressions if group else []:
            if isinstance(g, exp.Literal) and not g.is_string:
                n = int(g.this)
                if not 1 <= n <= len(items):
                    raise FeatureNotSupported(f"GROUP BY position {n} is not in select list")
                it = items[n - 1]
                g = it.this if isinstance(it, exp.Alias) else it
            elif isinstance(g, exp.Column) and not g.table:
                for it in items:
                    if isinstance(it, exp.Alias) and it.alias == g.name:
                        g = it.this
                        break
            if not isinstance(g, exp.Expression) or _has_agg(g):
                raise FeatureNotSupported("GROUP BY this expression across shards is not "
                                          "supported")
            group_exprs.append(g)
        if group and any(isinstance(g, (exp.Rollup, exp.Cube, exp.GroupingSets))
                         for g in group.expressions):
            raise FeatureNotSupported("GROUPING SETS / ROLLUP / CUBE across shards are not "
                                      "supported")
        shard_items: list[exp.Expression] = []
        keys: list[int] = []
        for g in group_exprs:
            keys.append(len(shard_items))
            shard_items.append(exp.alias_(g.copy(), f"{_HELPER}g{len(keys) - 1}"))
        aggs: list[AggSpec] = []
        agg_sql: dict[str, int] = {}  # aggregate SQL -> index in aggs
        distinct_arg: list[exp.Expression] = []

        def add_agg(node: exp.Expression) -> int:
            text = node.sql(dialect="postgres")
            if text in agg_sql:
                return agg_sql[text]
            if isinstance(node, exp.Anonymous) and node.name.lower() == "every" and len(
                    node.expressions) == 1:
                node = exp.LogicalAnd(this=node.expressions[0].copy())
            if isinstance(node, (exp.GroupConcat, exp.ArrayAgg)):
                return add_ordered(node, text)
            if isinstance(node, _UNSUPPORTED_AGGS) or (
                    isinstance(node, exp.Anonymous) and node.name.lower() in _OTHER_AGGS):
                name = text.split("(", 1)[0]
                raise FeatureNotSupported(
                    f"aggregate {name.lower()}() over rows of several shards is not supported "
                    "yet", hint="group by the shard key, or add it to the WHERE clause")
            where: exp.Expression | None = None
            if isinstance(node, exp.Filter):  # agg(...) FILTER (WHERE ...): filtered partials
                where = node.expression
                node = node.this
            func = _AGGS.get(type(node))
            if func is None:
                raise FeatureNotSupported(
                    f"aggregate {node.sql(dialect='postgres')} across shards is not supported")

            def filtered(partial: exp.Expression) -> exp.Expression:
                if where is None:
                    return partial
                return exp.Filter(this=partial, expression=where.copy())

            arg = node.this
            distinct = isinstance(arg, exp.Distinct)
            star = isinstance(arg, exp.Star)
            if distinct and where is not None:
                raise FeatureNotSupported("DISTINCT aggregates with FILTER across shards are "
                                          "not supported yet")
            if distinct:
                inner = arg.expressions
                if len(inner) != 1:
                    raise FeatureNotSupported("DISTINCT aggregates of several arguments")
                arg = inner[0]
                if distinct_arg and distinct_arg[0] != arg:
                    raise FeatureNotSupported(
                        "DISTINCT aggregates over different expressions across shards are "
                        "not supported", hint="use one DISTINCT argument per query")
                if not distinct_arg:
                    distinct_arg.append(arg)
                args: tuple[int, ...] = (-1,)  # resolved below
            elif func == "avg":
                args = (len(shard_items), len(shard_items) + 1)
                shard_items.append(exp.alias_(filtered(exp.Sum(this=arg.copy())),
                                              f"{_HELPER}a{len(aggs)}s"))
                shard_items.append(exp.alias_(filtered(exp.Count(this=arg.copy())),
                                              f"{_HELPER}a{len(aggs)}c"))
            else:
                args = (len(shard_items),)
                partial = filtered(node.copy())
                shard_items.append(exp.alias_(partial, f"{_HELPER}a{len(aggs)}"))
            aggs.append(AggSpec(func, args, distinct, star))
            agg_sql[text] = len(aggs) - 1
            return len(aggs) - 1

        def add_ordered(node: exp.Expression, text: str) -> int:
            """string_agg / array_agg: values (and ORDER BY keys) gathered as arrays."""
            func: AggFunc = "string_agg" if isinstance(node, exp.GroupConcat) else "array_agg"
            separator: str | None = None
            if func == "string_agg":
                sep = node.args.get("separator")
                if not (isinstance(sep, exp.Literal) and sep.is_string):
                    raise FeatureNotSupported(
                        "string_agg across shards needs a constant string separator")
                separator = sep.this
            arg = node.this
            ordered: list[exp.Ordered] = []
            if isinstance(arg, exp.Order):
                ordered = list(arg.expressions)
                arg = arg.this
            distinct = isinstance(arg, exp.Distinct)
            if distinct:
                if len(arg.expressions) != 1:
                    raise FeatureNotSupported("DISTINCT aggregates of several arguments")
                arg = arg.expressions[0]
                if any(o.this != arg for o in ordered):
                    raise FeatureNotSupported(
                        "in an aggregate with DISTINCT, ORDER BY expressions must appear in "
                        "argument list")
            if node.find(exp.Filter) is not None:
                raise FeatureNotSupported("string_agg/array_agg with FILTER across shards")
            if not ordered:
                raise FeatureNotSupported(
                    f"{func}() over rows of several shards needs an ORDER BY inside the "
                    "aggregate", hint=f"write {func}(x ORDER BY ...): without it the order "
                    "of the shards' rows is arbitrary")
            order_sql = (" ORDER BY " + ", ".join(o.sql(dialect="postgres") for o in ordered)
                         if ordered else "")
            value_sql = (("DISTINCT " if distinct else "") + arg.sql(dialect="postgres")
                         + order_sql)
            cols = [len(shard_items)]
            shard_items.append(exp.alias_(
                sqlglot.parse_one(f"ARRAY_AGG({value_sql})", read="postgres"),
                f"{_HELPER}a{len(aggs)}v"))
            for i, o in enumerate(ordered):
                if distinct:
                    cols.append(cols[0])  # the value is the key
                    continue
                cols.append(len(shard_items))
                shard_items.append(exp.alias_(sqlglot.parse_one(
                    f"ARRAY_AGG({o.this.sql(dialect='postgres')}{order_sql})",
                    read="postgres"), f"{_HELPER}a{len(aggs)}k{i}"))
            aggs.append(AggSpec(func, tuple(cols), distinct=distinct,
                                order=tuple((bool(o.args.get("desc")), _nulls_first(o))
                                            for o in ordered), separator=separator))
            agg_sql[text] = len(aggs) - 1
            return len(aggs) - 1

        n_keys = len(keys)
        outputs: list[OutputColumn] = []
        exprs: list[Any] = []
        for it in items:
            inner = it.this if isinstance(it, exp.Alias) else it
            if _is_agg(inner):
                outputs.append(OutputColumn(n_keys + add_agg(inner), True))
                continue
            if _is_constant(inner):
                outputs.append(OutputColumn(n_keys + len(aggs), True))
                shard_items.append(exp.alias_(inner.copy(), f"{_HELPER}c{len(aggs)}"))
                aggs.append(AggSpec("any", (len(shard_items) - 1,)))
                continue
            if _has_agg(inner):
                from proxy.exec.merge.expr import compile_having
                exprs.append(compile_having(inner, group_exprs, add_agg, n_keys))
                outputs.append(OutputColumn(EXPR + len(exprs) - 1, True))
                continue
            k = _index_of(inner, group_exprs)
            if k is None:
                raise FeatureNotSupported(
                    f"column {inner.sql(dialect='postgres')} must appear in the GROUP BY "
                    "clause or be used in an aggregate function")
            outputs.append(OutputColumn(k, True))
        having = None
        if s.args.get("having") is not None:
            from proxy.exec.merge.expr import compile_having
            having = compile_having(s.args["having"].this, group_exprs, add_agg, n_keys)
        order: list[SortKey] = []
        order_node = s.args.get("order")
        for o in order_node.expressions if order_node else []:
            e = o.this
            col: int | None = None
            if isinstance(e, exp.Literal) and not e.is_string:
                n = int(e.this)
                if not 1 <= n <= len(outputs):
                    raise FeatureNotSupported(f"ORDER BY position {n} is not in select list")
                col = outputs[n - 1].column
            elif isinstance(e, exp.Column) and not e.table and any(
                    isinstance(it, exp.Alias) and it.alias == e.name for it in items):
                i = next(i for i, it in enumerate(items)
                         if isinstance(it, exp.Alias) and it.alias == e.name)
                col = outputs[i].column
            elif _is_agg(e):
                col = n_keys + add_agg(e)
            else:
                k = _index_of(e, group_exprs)
                if k is None:
                    raise FeatureNotSupported(
                        f"ORDER BY {e.sql(dialect='postgres')} across shards must be a "
                        "GROUP BY key or an aggregate")
                col = k
            order.append(SortKey(col, bool(o.args.get("desc")), _nulls_first(o)))
        if distinct_arg:
            d_index = len(shard_items)
            shard_items.append(exp.alias_(distinct_arg[0].copy(), f"{_HELPER}dv"))
            aggs = [AggSpec(a.func, (d_index,), True, a.star)
                    if a.distinct and a.func not in ("string_agg", "array_agg") else a
                    for a in aggs]
        limit, offset = _bounds(s)
        fetch = s.args.get("limit")
        if isinstance(fetch, exp.Fetch) and fetch.args.get("limit_options") and fetch.args[
                "limit_options"].args.get("with_ties"):
            raise FeatureNotSupported("FETCH ... WITH TIES over merged groups is not "
                                      "supported yet")
        shard = exp.Select(expressions=shard_items)
        for part in ("from_", "joins", "where", "with_"):
            val = s.args.get(part)
            if val is not None:
                shard.set(part, [v.copy() for v in val] if isinstance(val, list)
                          else val.copy())
        group_by = [g.copy() for g in group_exprs]
        if distinct_arg:
            group_by.append(distinct_arg[0].copy())
        if group_by:
            shard.set("group", exp.Group(expressions=group_by))
        if not shard_items:
            raise FeatureNotSupported("empty select list")
        return MergePlan(
            shard_sql=shard.sql(dialect="postgres"), helpers=0,
            aggregate=True, group_keys=tuple(keys), aggs=tuple(aggs),
            distinct_arg=len(shard_items) - 1 if distinct_arg else None, having=having,
            outputs=tuple(outputs), order=tuple(order),
            distinct=s.args.get("distinct") is not None, distinct_on=None, limit=limit,
            offset=offset, exprs=tuple(exprs))


_OTHER_AGGS = frozenset({
    "string_agg", "array_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "xmlagg", "bit_and", "bit_or", "bit_xor", "every", "percentile_cont", "percentile_disc",
    "mode", "corr", "covar_pop", "covar_samp", "regr_slope", "stddev", "stddev_pop",
    "stddev_samp", "variance", "var_pop", "var_samp", "range_agg", "range_intersect_agg",
})


def _is_agg(e: exp.Expression) -> bool:
    if isinstance(e, exp.Filter):
        return _is_agg(e.this)
    return isinstance(e, (exp.AggFunc, *_UNSUPPORTED_AGGS)) or (
        isinstance(e, exp.Anonymous) and e.name.lower() in _OTHER_AGGS)


def _has_agg(e: exp.Expression) -> bool:
    """An aggregate of this query level (not inside a subquery, which has its own)."""
    stack = [e]
    while stack:
        node = stack.pop()
        if isinstance(node, (exp.Subquery, exp.Select)) and node is not e:
            continue
        if isinstance(node, exp.Window):
            continue  # an aggregate used as a window function groups nothing
        if _is_agg(node):
            return True
        stack.extend(node.iter_expressions())
    return False


def _is_constant(e: exp.Expression) -> bool:
    """No column, aggregate, subquery, parameter or volatile function: the same value on
    every shard (literals, casts of literals, NULL)."""
    for node in e.walk():
        if isinstance(node, (exp.Column, exp.Star, exp.Subquery, exp.Select, exp.Parameter,
                             exp.Placeholder, exp.AggFunc, exp.Anonymous, exp.Func)) and not (
                isinstance(node, exp.Cast)):
            return False
    return True


def _index_of(e: exp.Expression, exprs: list[exp.Expression]) -> int | None:
    for i, g in enumerate(exprs):
        if g == e:
            return i
    return None


def _constant_int(e: exp.Expression) -> int | None:
    """The value of an integer constant expression (``2 + 3``, ``(10)``), else None."""
    if isinstance(e, exp.Paren):
        return _constant_int(e.this)
    if isinstance(e, exp.Literal) and not e.is_string:
        try:
            return int(e.this)
        except ValueError:
            return None
    if isinstance(e, exp.Neg):
        inner = _constant_int(e.this)
        return None if inner is None else -inner
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul)):
        a, b = _constant_int(e.this), _constant_int(e.expression)
        if a is None or b is None:
            return None
        return a + b if isinstance(e, exp.Add) else a - b if isinstance(e, exp.Sub) else a * b
    return None


def _nulls_first(o: exp.Ordered) -> bool:
    """Postgres' default: NULLS LAST ascending, NULLS FIRST descending."""
    nf = o.args.get("nulls_first")
    if nf is None:
        return bool(o.args.get("desc"))
    return bool(nf)


def _bounds(s: exp.Select) -> tuple[Bound | None, Bound | None]:
    return _bound(s.args.get("limit"), "LIMIT"), _bound(s.args.get("offset"), "OFFSET")


def _bound(node: exp.Expression | None, what: str) -> Bound | None:
    if node is None:
        return None
    if isinstance(node, exp.Fetch):
        opts = node.args.get("limit_options")
        if opts is not None and opts.args.get("percent"):
            raise FeatureNotSupported("FETCH ... PERCENT across shards is not supported")
        e = node.args.get("count")
        if e is None:
            return ("const", 1)  # FETCH FIRST ROW ONLY
    else:
        e = node.args.get("expression") if isinstance(node, (exp.Limit, exp.Offset)) else node
        if e is None:
            e = node.this
    value = _constant_int(e)
    if value is not None:
        return ("const", value)
    if isinstance(e, exp.Var) and e.name.upper() == "ALL":
        return ("const", None)
    if isinstance(e, exp.Null):
        return ("const", None)
    if isinstance(e, exp.Literal) and not e.is_string:
        try:
            return ("const", int(e.this))
        except ValueError:
            pass
    if isinstance(e, exp.Parameter):
        try:
            return ("param", int(e.name) - 1)
        except ValueError:
            pass
    raise FeatureNotSupported(f"{what} {e.sql(dialect='postgres')} across shards must be a "
                              "number or a parameter")
