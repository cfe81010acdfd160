"""Owns the analysis of one parsed DML statement into a reusable routing template.

``analyze(tree, router)`` walks a sqlglot tree (SELECT, set operations, VALUES, INSERT,
UPDATE, DELETE, with their CTEs, joins and subqueries) once and compiles what routing needs
into a :class:`DmlTemplate`; ``DmlTemplate.route(binding)`` then decides a route for given
parameter and literal values without touching the tree again.

The model (proxy/sql/ROUTING.md has the rules as users see them):

* Every reference to a sharded table is an *occurrence*. Occurrences compared on their
  shard keys (``o.user_id = u.id`` in a join, a correlated subquery, ``IN (SELECT ...)``,
  a derived table's exposed key) are *linked*: when their tables are co-located (same
  bucket table, or identical list/range maps) the linked rows live on the same shard, so
  the linked occurrences form one *group* that can run shard by shard.
* Each group's shards come from the shard-key conditions that restrict the rows the
  result depends on: the WHERE clause and inner-join ON conditions of the query and of the
  subqueries that must match (EXISTS, IN, inner-joined derived tables), combined with AND
  within a query and OR across UNION branches. Conditions inside NOT EXISTS, outer-join ON
  clauses, select lists or OR branches restrict nothing.
* A statement with one group runs on that group's shards. Several groups (tables joined
  without their keys, unrelated subqueries) are only correct on one shard: all of them
  must resolve to the same single shard, or the route is an error. The branches of a
  top-level UNION [ALL] are independent and may go to different shards.
* Tables not in the topology live on the default shard; reference tables everywhere;
  ``pg_catalog``/``information_schema`` everywhere.

Anything not understood restricts nothing (all shards) or, when running on several shards
could give a wrong answer, marks the route ``needs_merge`` or fails it. Never a wrong shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from proxy.errors import FeatureNotSupported, ShardwireError
from proxy.sql.dml import DmlTemplate
from proxy.sql.lexer import number_value
from proxy.sql.values import TRUE, P, V, type_name
from proxy.topology.router import Dist, KeyValue, Router

__all__ = ["AnalysisError", "DmlTemplate", "Scope", "analyze"]

_NULL = KeyValue("null", None)
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_AGGREGATE_NAMES = frozenset({
    "array_agg", "avg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "count",
    "every", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "max", "min",
    "range_agg", "range_intersect_agg", "string_agg", "sum", "xmlagg", "corr", "covar_pop",
    "covar_samp", "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2",
    "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "stddev", "stddev_pop", "stddev_samp",
    "variance", "var_pop", "var_samp", "mode", "percentile_cont", "percentile_disc",
    "json_objectagg", "json_arrayagg", "any_value", "grouping",
})
_SCOPE_BARRIERS = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values, exp.Insert,
                   exp.Update, exp.Delete, exp.Merge)


class AnalysisError(Exception):
    """The tree holds something the analysis does not model: treat the statement as
    unparsed (never guess)."""


# --------------------------------------------------------------------------- model


@dataclass(eq=False, slots=True)
class Occ:
    """One occurrence of a sharded table in the statement."""

    idx: int
    dist: Dist
    alias: str
    scope: Scope
    target: bool = False
    nullable: bool = False

    @property
    def name(self) -> str:
        return self.dist.name


@dataclass(eq=False, slots=True)
class Source:
    """An entry of a query's FROM namespace."""

    alias: str
    kind: str  # sharded, reference, unlisted, catalog, derived, opaque
    occ: Occ | None = None
    child: Scope | None = None
    exposed: dict[str, tuple[Occ, ...]] = field(default_factory=dict)
    nullable: bool = False
    name: str = ""  # the qualified table name (reference, unlisted, catalog tables)


@dataclass(eq=False, slots=True)
class Scope:
    """One query level: a SELECT, a set operation, or the DML statement itself."""

    kind: str  # select, setop, insert, update, delete, values, opaque
    parent: Scope | None
    positive: bool = True  # its rows restrict its parent's rows (EXISTS, inner derived)
    op: str = ""  # for setop: union, union_all, intersect, except
    sources: list[Source] = field(default_factory=list)
    occs: list[Occ] = field(default_factory=list)
    preds: list[P] = field(default_factory=list)
    children: list[Scope] = field(default_factory=list)
    links: list[tuple[Occ, Occ]] = field(default_factory=list)
    exposed: dict[str, tuple[Occ, ...]] = field(default_factory=dict)
    positional: list[tuple[Occ, ...] | V | None] = field(default_factory=list)
    features: str = ""  # why a cross-shard result of this scope needs merging ("" = none)
    exemptable: str = ""  # aggregate/group/distinct features a key GROUP BY makes local
    exempt_occs: tuple[Occ, ...] = ()
    from_child: bool = False  # a derived table / CTE reference in a FROM clause
    lateral: bool = False
    branch: int = -1
    subtree_groups: frozenset[int] = frozenset()
    # Row sources: sharded occurrences such that every result row of this scope is built
    # from one row of one of them, so it is produced on that row's shard only. Empty when
    # the rows are driven by replicated data (reference tables, no table, functions): then
    # every shard would produce them (see DmlTemplate.partition_error).
    row_occs: list[Occ] = field(default_factory=list)
    full_rows: list[Occ] = field(default_factory=list)  # both sides of sharded FULL JOINs
    # a replicated FROM item preserved by an outer join against sharded data:
    # (preserved tables, sharded tables)
    preserved: tuple[str, str] | None = None
    # ON conditions of such an outer join on its sharded side: (predicate, the sharded
    # side's occurrences). Only rows matching them matter, so they restrict a group that
    # lies wholly inside that side (DmlTemplate applies them; a group reaching outside it,
    # e.g. correlated with an outer query, keeps its other rows)
    on_preds: list[tuple[P, frozenset[int]]] = field(default_factory=list)
    correlated_occs: tuple[Occ, ...] = ()


@dataclass(slots=True)
class _KeySet:
    """``SET key = value`` of an UPDATE or an ON CONFLICT DO UPDATE."""

    occ: Occ
    value: V | None  # None: computed (not a constant)
    same: bool = False


# --------------------------------------------------------------------------- analysis


class _Analyzer:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.occs: list[Occ] = []
        self.uf: list[int] = []
        self.scopes: list[Scope] = []
        self.unlisted: list[str] = []
        self.reference_reads: list[str] = []
        self.reference_writes: list[str] = []
        self.sharded_writes: list[str] = []
        self.unlisted_writes: list[str] = []
        self.catalog = False
        self.ctes: list[dict[str, tuple[exp.Expression, bool, list[int]]]] = []
        self.cte_self: list[str] = []
        self.expanding: list[str] = []
        self.recursive_occs: list[Occ] = []
        self.errors: list[ShardwireError] = []
        self.key_sets: list[_KeySet] = []
        self.insert_rows: list[V | None] | None = None
        self.insert_occ: Occ | None = None
        self.is_write = False
        self.copins: list[list[Occ]] = []

    # ----------------------------------------------------------------- helpers

    def new_scope(self, kind: str, parent: Scope | None, positive: bool = True) -> Scope:
        s = Scope(kind=kind, parent=parent, positive=positive)
        self.scopes.append(s)
        if parent is not None:
            parent.children.append(s)
        return s

    def find(self, i: int) -> int:
        uf = self.uf
        while uf[i] != i:
            uf[i] = uf[uf[i]]
            i = uf[i]
        return i

    def link(self, scope: Scope, a: Sequence[Occ], b: Sequence[Occ]) -> None:
        for x in a:
            for y in b:
                if x is y or x.dist.colocation != y.dist.colocation:
                    continue
                scope.links.append((x, y))
                rx, ry = self.find(x.idx), self.find(y.idx)
                if rx != ry:
                    self.uf[max(rx, ry)] = min(rx, ry)

    def table_kind(self, t: exp.Table) -> tuple[str, str]:
        """(kind, qualified name) of a table reference."""
        this = t.this
        if not isinstance(this, exp.Identifier):
            return "opaque", ""
        name = _ident(this)
        db = t.args.get("db")
        schema = _ident(db) if isinstance(db, exp.Identifier) else None
        if schema is None:
            if name in self.cte_self:
                return "opaque", name  # a recursive CTE reading itself
            for env in reversed(self.ctes):
                if name in env:
                    return "cte", name
            qualified = "public." + name
            if name.startswith("pg_") and qualified not in self.router.config.tables:
                return "catalog", "pg_catalog." + name
        else:
            qualified = schema + "." + name
            if schema in _CATALOG_SCHEMAS:
                return "catalog", qualified
        if qualified in self.router.dists:
            return "sharded", qualified
        if qualified in self.router.reference:
            return "reference", qualified
        return "unlisted", qualified

    def add_occ(self, dist: Dist, alias: str, scope: Scope, *, target: bool = False) -> Occ:
        occ = Occ(idx=len(self.occs), dist=dist, alias=alias, scope=scope, target=target)
        self.occs.append(occ)
        self.uf.append(occ.idx)
        scope.occs.append(occ)
        return occ

    # ----------------------------------------------------------------- statements

    def statement(self, node: exp.Expression) -> Scope:
        if isinstance(node, (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)):
            return self.query(node, None, True)
        kinds = {exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete"}
        kind = kinds.get(type(node))
        if kind is None:
            raise AnalysisError(f"unsupported statement {type(node).__name__}")
        root = self.new_scope(kind, None)
        with_ = node.args.get("with_")
        self.push_ctes(with_)
        try:
            getattr(self, kind)(node, root)
        finally:
            self.pop_ctes(with_, root)
        return root

    def push_ctes(self, with_: exp.Expression | None) -> None:
        if not isinstance(with_, exp.With):
            return
        env: dict[str, tuple[exp.Expression, bool, list[int]]] = {}
        recursive = bool(with_.args.get("recursive"))
        for cte in with_.expressions:
            alias = cte.args.get("alias")
            name = _ident(alias.this) if alias is not None and alias.this else ""
            if not name:
                raise AnalysisError("CTE without a name")
            env[name] = (cte, recursive, [0])
        self.ctes.append(env)

    def pop_ctes(self, with_: exp.Expression | None, scope: Scope | None) -> None:
        if not isinstance(with_, exp.With):
            return
        env = self.ctes.pop()
        if scope is None:
            return
        # A data-modifying CTE runs even when nothing reads it.
        for cte, _rec, refs in env.values():
            body = cte.this
            if refs[0] == 0 and isinstance(body, (exp.Insert, exp.Update, exp.Delete,
                                                  exp.Merge)):
                holder = self.new_scope("opaque", scope, positive=False)
                self.dml_in_cte(body, holder)

    def dml_in_cte(self, body: exp.Expression, scope: Scope) -> Scope:
        """A data-modifying CTE: analysed as its own statement below ``scope``."""
        if isinstance(body, exp.Merge):
            raise AnalysisError("MERGE in a CTE")
        kind = {exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete"}[type(body)]
        inner = self.new_scope(kind, scope, positive=True)
        if isinstance(body, exp.Insert):
            self.insert(body, inner)
        elif isinstance(body, exp.Update):
            self.update(body, inner)
        else:
            self.delete(body, inner)
        # RETURNING exposes the target's key
        target = next((o for o in inner.occs if o.target), None)
        if target is not None:
            inner.exposed[target.dist.key] = (target,)
            inner.row_occs.append(target)
        return inner

    # ----------------------------------------------------------------- DML

    def dml_target(self, t: exp.Expression, scope: Scope, what: str) -> Occ | None:
        if not isinstance(t, exp.Table):
            raise AnalysisError(f"{what} target is not a table")
        kind, name = self.table_kind(t)
        alias = _alias(t) or (name.split(".")[-1] if name else "")
        self.is_write = True
        if kind == "sharded":
            occ = self.add_occ(self.router.dists[name], alias, scope, target=True)
            scope.sources.append(Source(alias=alias, kind="sharded", occ=occ))
            scope.row_occs.append(occ)
            self.sharded_writes.append(name)
            return occ
        if kind == "reference":
            self.reference_writes.append(name)
        elif kind == "cte":
            raise AnalysisError("writing to a CTE")
        elif kind == "catalog":
            self.catalog = True
            self.unlisted_writes.append(name)
        else:
            self.unlisted_writes.append(name)
            if name not in self.unlisted:
                self.unlisted.append(name)
        scope.sources.append(Source(alias=alias, kind=kind, name=name))
        return None

    def insert(self, node: exp.Insert, scope: Scope) -> None:
        target = node.this
        columns: list[str] | None = None
        if isinstance(target, exp.Schema):
            columns = [_ident(c) if isinstance(c, exp.Identifier) else c.name.lower()
                       for c in target.expressions]
            target = target.this
        occ = self.dml_target(target, scope, "INSERT")
        source = node.expression
        if occ is not None:
            self.insert_occ = occ
            key = occ.dist.key
            if columns is None:
                self.errors.append(FeatureNotSupported(
                    f"INSERT into sharded table {occ.name} without a column list: shardwire "
                    f"cannot tell which value is the shard key {key}",
                    hint=f"list the columns: INSERT INTO {occ.name} ({key}, ...) VALUES ...",
                ))
            elif key not in columns:
                self.errors.append(FeatureNotSupported(
                    f"INSERT into sharded table {occ.name} does not set its shard key {key}",
                    hint=f"give {key} a value (a default generated on one shard would put "
                    "the row in the wrong bucket)",
                ))
            elif isinstance(source, exp.Values):
                pos = columns.index(key)
                rows: list[V | None] = []
                for row in source.expressions:
                    values = row.expressions if isinstance(row, exp.Tuple) else [row]
                    if pos >= len(values):
                        rows.append(None)
                        continue
                    rows.append(self.value(values[pos]))
                self.insert_rows = rows
                scope.preds.append(("or", [("row", (occ,), v) if v is not None else TRUE
                                           for v in rows]))
                for i, v in enumerate(rows):
                    if v is None:
                        self.errors.append(FeatureNotSupported(
                            f"INSERT into {occ.name}: the shard key {key} of row {i + 1} is "
                            "not a constant shardwire can evaluate",
                            hint="pass the key as a literal or a parameter, or add a "
                            "/* shard: NAME */ hint",
                        ))
                        break
            elif source is None:
                self.errors.append(FeatureNotSupported(
                    f"INSERT into sharded table {occ.name} without values for its shard key "
                    f"{key}"))
        if isinstance(source, (exp.Select, exp.SetOperation, exp.Subquery)):
            child = self.query(source, scope, True)
            if occ is not None and columns is not None and occ.dist.key in columns:
                pos = columns.index(occ.dist.key)
                item = child.positional[pos] if pos < len(child.positional) else None
                if isinstance(item, tuple) and item and isinstance(item[0], Occ):
                    self.link(scope, (occ,), item)  # rows are produced where they belong
                    if not any(o.dist.colocation == occ.dist.colocation for o in item):
                        self.errors.append(self._insert_select_error(occ))
                elif isinstance(item, tuple) and item and isinstance(item[0], str):
                    scope.preds.append(("row", (occ,), item))
                else:
                    self.errors.append(self._insert_select_error(occ))
        elif isinstance(source, exp.Values):
            self.subqueries_in(source, scope)
        conflict = node.args.get("conflict")
        if isinstance(conflict, exp.OnConflict):
            for item in conflict.expressions or []:
                self.set_item(item, scope, occ, conflict=True)
            self.subqueries_in(conflict, scope)
        self.returning(node, scope)

    def _insert_select_error(self, occ: Occ) -> ShardwireError:
        return FeatureNotSupported(
            f"INSERT ... SELECT into sharded table {occ.name}: shardwire cannot tell which "
            f"shard each row belongs on ({occ.dist.key} is not a constant or a co-located "
            "shard key of the query)",
            hint="insert the rows with VALUES, or select the key of a table sharded the "
            "same way",
        )

    def update(self, node: exp.Update, scope: Scope) -> None:
        occ = self.dml_target(node.this, scope, "UPDATE")
        from_ = node.args.get("from_")
        if from_ is not None:
            self.from_item(from_.this, scope, join=None)
        for j in node.args.get("joins") or []:
            self.join(j, scope)
        self.where(node.args.get("where"), scope)
        for item in node.expressions:
            self.set_item(item, scope, occ, conflict=False)
        self.returning(node, scope)
        self.check_local(scope)

    def delete(self, node: exp.Delete, scope: Scope) -> None:
        self.dml_target(node.this, scope, "DELETE")
        for u in node.args.get("using") or []:
            self.from_item(u, scope, join=None)
        self.where(node.args.get("where"), scope)
        self.returning(node, scope)
        self.check_local(scope)

    def set_item(self, item: exp.Expression, scope: Scope, occ: Occ | None,
                 *, conflict: bool) -> None:
        if not isinstance(item, exp.EQ):
            self.subqueries_in(item, scope)
            return
        left, right = item.this, item.expression
        pairs: list[tuple[exp.Expression, exp.Expression | None]]
        if isinstance(left, exp.Tuple):
            rights = right.expressions if isinstance(right, exp.Tuple) else None
            pairs = [(c, rights[i] if rights and i < len(rights) else None)
                     for i, c in enumerate(left.expressions)]
        else:
            pairs = [(left, right)]
        for col, val in pairs:
            if occ is None or not isinstance(col, exp.Column) or col.name.lower() != occ.dist.key:
                continue
            if _is_same_key(val, occ, conflict):
                self.key_sets.append(_KeySet(occ, None, same=True))
                continue
            v = self.value(val) if val is not None else None
            self.key_sets.append(_KeySet(occ, v))
        self.subqueries_in(right, scope)

    def returning(self, node: exp.Expression, scope: Scope) -> None:
        ret = node.args.get("returning")
        if ret is not None:
            self.subqueries_in(ret, scope)

    # ----------------------------------------------------------------- queries

    def query(self, node: exp.Expression, parent: Scope | None, positive: bool) -> Scope:
        """Analyse a query expression as a scope below ``parent``."""
        with_ = node.args.get("with_") if isinstance(node, (exp.Select, exp.SetOperation)) else None
        self.push_ctes(with_)
        scope: Scope | None = None
        try:
            if isinstance(node, exp.Select):
                scope = self.select(node, parent, positive)
            elif isinstance(node, exp.SetOperation):
                scope = self.setop(node, parent, positive)
            elif isinstance(node, exp.Values):
                scope = self.new_scope("values", parent, positive)
                self.subqueries_in(node, scope)
                for row in node.expressions[:1]:
                    values = row.expressions if isinstance(row, exp.Tuple) else [row]
                    scope.positional = [self.value(v) for v in values]
            elif isinstance(node, exp.Subquery):
                scope = self.query(node.this, parent, positive)
                if any(node.args.get(k) for k in ("limit", "offset")):
                    scope.features = scope.features or "LIMIT"
                    scope.exposed = {}
            else:
                raise AnalysisError(f"unsupported query {type(node).__name__}")
        finally:
            self.pop_ctes(with_, scope)
        return scope

    def setop(self, node: exp.SetOperation, parent: Scope | None, positive: bool) -> Scope:
        scope = self.new_scope("setop", parent, positive)
        distinct = node.args.get("distinct")
        if isinstance(node, exp.Union):
            scope.op = "union" if distinct is not False else "union_all"
        elif isinstance(node, exp.Intersect):
            scope.op = "intersect"
        else:
            scope.op = "except"
        left = self.query(node.this, scope, True)
        right = self.query(node.expression, scope, scope.op != "except")
        feats = []
        if scope.op != "union_all":
            feats.append(scope.op.upper())
        if node.args.get("order"):
            feats.append("ORDER BY")
        if node.args.get("limit") or node.args.get("offset"):
            feats.append("LIMIT")
        scope.features = "/".join(feats)
        # exposure: a column is a key of the union only if both branches expose it
        if scope.op in ("union", "union_all"):
            for i in range(min(len(left.positional), len(right.positional))):
                a, b = left.positional[i], right.positional[i]
                if _is_occs(a) and _is_occs(b):
                    scope.positional.append(tuple(a) + tuple(b))  # type: ignore[arg-type]
                else:
                    scope.positional.append(None)
            names = list(left.exposed)
            for name in names:
                if name in right.exposed:
                    scope.exposed[name] = left.exposed[name] + right.exposed[name]
            if left.row_occs and right.row_occs:  # else one branch is replicated
                scope.row_occs = left.row_occs + right.row_occs
        elif left.row_occs and right.row_occs:
            # INTERSECT/EXCEPT rows are left rows; their de-duplication is a merge feature
            scope.row_occs = list(left.row_occs)
        return scope

    def select(self, node: exp.Select, parent: Scope | None, positive: bool) -> Scope:
        scope = self.new_scope("select", parent, positive)
        from_ = node.args.get("from_")
        if from_ is not None:
            self.from_item(from_.this, scope, join=None)
        for j in node.args.get("joins") or []:
            self.join(j, scope)
        self.where(node.args.get("where"), scope)
        if node.args.get("into") is not None:
            self.is_write = True
            self.unlisted_writes.append("SELECT INTO")
            self.unlisted.append("(SELECT INTO a new table)")
        # projections, exposure, merge features
        blocked = False
        feats: list[str] = []
        exemptable: list[str] = []
        if node.args.get("limit") or node.args.get("offset"):
            feats.append("LIMIT")
            blocked = True
        if node.args.get("order") and parent is None:
            feats.append("ORDER BY")
        distinct = node.args.get("distinct")
        if isinstance(distinct, exp.Distinct):
            if distinct.args.get("on") is not None:
                feats.append("DISTINCT ON")
                blocked = True
            else:
                exemptable.append("DISTINCT")
        if node.args.get("group"):
            exemptable.append("GROUP BY")
        if node.args.get("having") is not None:
            exemptable.append("HAVING")
        agg, window = False, False
        for part in (*node.expressions, node.args.get("having"), node.args.get("order")):
            if part is None:
                continue
            a, w = _aggregates(part)
            agg, window = agg or a, window or w
        if agg:
            exemptable.append("aggregate")
        if (window or node.args.get("windows")) and not (
                window and not agg and not node.args.get("group")
                and not node.args.get("windows") and self._windows_by_key(node, scope)):
            feats.append("window function")
            blocked = True
        scope.features = "/".join(feats)
        scope.exemptable = "/".join(exemptable)
        for e in node.expressions:
            item: Any = None
            out_name = e.alias_or_name.lower() if isinstance(e, exp.Expression) else ""
            inner = e.this if isinstance(e, exp.Alias) else e
            if isinstance(e, exp.Alias) and e.args.get("alias") is not None:
                out_name = _ident(e.args["alias"])
            if isinstance(inner, exp.Star):
                for src in scope.sources:
                    if src.kind == "sharded" and src.occ is not None and not blocked:
                        scope.exposed.setdefault(src.occ.dist.key, (src.occ,))
                    elif src.kind == "derived" and not blocked:
                        for k, v in src.exposed.items():
                            scope.exposed.setdefault(k, v)
                scope.positional.append(None)
                continue
            if isinstance(inner, exp.Column) and isinstance(inner.this, exp.Star):
                src = self.source_by_alias(scope, _qualifier(inner))
                if src is not None and not blocked:
                    if src.kind == "sharded" and src.occ is not None:
                        scope.exposed.setdefault(src.occ.dist.key, (src.occ,))
                    else:
                        for k, v in src.exposed.items():
                            scope.exposed.setdefault(k, v)
                scope.positional.append(None)
                continue
            occs = self.keyref(inner, scope)
            if occs and not blocked:
                scope.exposed[out_name] = occs
                item = occs
            elif not occs:
                item = self.value(inner)
            scope.positional.append(item)
            self.subqueries_in(e, scope)
        # key GROUP BY / DISTINCT makes aggregates and grouping local to each shard
        keys: list[Occ] = []
        group = node.args.get("group")
        if group is not None:
            for g in group.expressions:
                keys.extend(self.keyref(g, scope))
        elif "DISTINCT" in exemptable:
            for e in node.expressions:
                keys.extend(self.keyref(e.this if isinstance(e, exp.Alias) else e, scope))
        scope.exempt_occs = tuple(o for o in keys if o.scope is scope or o in scope.row_occs)
        for part in ("group", "having", "order", "qualify", "windows"):
            val = node.args.get(part)
            if val is not None:
                if isinstance(val, list):
                    for v in val:
                        self.subqueries_in(v, scope)
                else:
                    self.subqueries_in(val, scope)
        self.check_local(scope)
        return scope

    # ----------------------------------------------------------------- FROM

    def from_item(self, item: exp.Expression, scope: Scope, join: exp.Join | None) -> Source:
        lateral = False
        if isinstance(item, exp.Lateral):
            lateral = True
            item = item.this
        if isinstance(item, exp.Table):
            kind, name = self.table_kind(item)
            alias = _alias(item) or name.split(".")[-1]
            if kind == "sharded":
                occ = self.add_occ(self.router.dists[name], alias, scope)
                src = Source(alias=alias, kind="sharded", occ=occ)
            elif kind == "cte":
                src = self.cte_source(name, alias, scope, item)
            else:
                if kind == "reference":
                    self.reference_reads.append(name)
                elif kind == "unlisted":
                    if name not in self.unlisted:
                        self.unlisted.append(name)
                elif kind == "catalog":
                    self.catalog = True
                elif kind == "opaque":
                    self.subqueries_in(item.this, scope)
                src = Source(alias=alias, kind=kind, name=name)
        elif isinstance(item, (exp.Subquery, exp.Values)):
            alias = _alias(item)
            query = item.this if isinstance(item, exp.Subquery) else item
            child = self.query(query if isinstance(item, exp.Subquery) else item, scope, True)
            if isinstance(item, exp.Subquery) and any(
                item.args.get(k) for k in ("limit", "offset")
            ):
                child.features = child.features or "LIMIT"
                child.exposed = {}
            child.from_child = True
            child.lateral = lateral
            src = Source(alias=alias, kind="derived", child=child, exposed=_renamed(child, item))
        elif not item.find(exp.Table):
            self.subqueries_in(item, scope)  # a function, UNNEST, ROWS FROM ...
            src = Source(alias=_alias(item), kind="opaque")
        else:
            raise AnalysisError(f"unsupported FROM item {type(item).__name__}")
        scope.sources.append(src)
        return src

    def cte_source(self, name: str, alias: str, scope: Scope, item: exp.Table) -> Source:
        """A reference to a CTE: its body is analysed afresh for every reference, like a
        derived table (each reference reads its own rows)."""
        for depth in range(len(self.ctes) - 1, -1, -1):
            env = self.ctes[depth]
            if name not in env:
                continue
            cte, recursive, refs = env[name]
            if name in self.expanding:
                raise AnalysisError(f"CTE {name} refers to itself")
            refs[0] += 1
            body = cte.this
            saved = self.ctes
            self.ctes = saved[: depth + 1]
            self.expanding.append(name)
            if recursive:
                self.cte_self.append(name)
            start = len(self.occs)
            try:
                if isinstance(body, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
                    holder = self.new_scope("opaque", scope, True)
                    child = self.dml_in_cte(body, holder)
                    holder.exposed = dict(child.exposed)
                    holder.row_occs = list(child.row_occs)
                    child = holder
                else:
                    child = self.query(body, scope, True)
            finally:
                self.ctes = saved
                self.expanding.pop()
                if recursive:
                    self.cte_self.pop()
            if recursive and len(self.occs) > start:
                self.copins.append(self.occs[start:])  # recursion stays on one shard
            child.from_child = True
            return Source(alias=alias, kind="derived", child=child, exposed=_renamed(child, cte))
        raise AnalysisError(f"CTE {name} not found")

    def join(self, j: exp.Join, scope: Scope) -> None:
        side = (j.args.get("side") or "").upper()
        kind = (j.args.get("kind") or "").upper()
        if kind in ("SEMI", "ANTI"):
            raise AnalysisError(f"unsupported join {kind}")
        before = list(scope.sources)
        left_occs = [o for s in before for o in self.source_occs(s)]
        src = self.from_item(j.this, scope, join=j)
        right_occs = self.source_occs(src)
        left_rows = [o for s in before if not s.nullable for o in _source_rows(s)]
        left_rows.extend(o for o in scope.full_rows if o not in left_rows)
        right_rows = _source_rows(src)
        # the occurrences whose rows an outer join's ON clause restricts, when the preserved
        # side is replicated (holds no sharded data): only rows matching ON matter
        on_restricts: list[Occ] = []
        if side in ("LEFT", "FULL"):
            self.mark_nullable(src)
        if side in ("RIGHT", "FULL"):
            for s in before:
                self.mark_nullable(s)
            scope.full_rows = []
        if side == "FULL" and left_rows and right_rows:
            scope.full_rows = left_rows + right_rows  # each row is driven by a sharded row
        elif side == "LEFT" and right_occs and not left_rows:
            scope.preserved = scope.preserved or (
                self.names_of(before) or "a table function", _occ_names(right_occs))
            if not left_occs:
                on_restricts = right_occs
        elif side == "RIGHT" and left_occs and not right_rows:
            scope.preserved = scope.preserved or (
                self.names_of([src]) or "a table function", _occ_names(left_occs))
            if not right_occs:
                on_restricts = left_occs
        elif side == "FULL" and (left_occs or right_occs):
            scope.preserved = scope.preserved or (
                self.names_of([s for s in (*before, src) if not self.source_occs(s)])
                or "a table function", _occ_names(left_occs + right_occs))
        inner = side == ""
        on = j.args.get("on")
        if on is not None:
            for c in _conjuncts(on):
                self.conjunct(c, scope, restrict=inner)
                if on_restricts:
                    p = self.pred(c, scope)
                    if _pred_within(p, on_restricts):
                        scope.on_preds.append((p, frozenset(o.idx for o in on_restricts)))
        using = j.args.get("using")
        if using:
            for ident in using:
                col = _ident(ident) if isinstance(ident, exp.Identifier) else str(ident).lower()
                right = _source_key(src, col)
                for s in before:
                    left = _source_key(s, col)
                    if left and right:
                        self.link(scope, left, right)

    def source_occs(self, src: Source) -> list[Occ]:
        """The sharded occurrences a FROM item reads."""
        if src.occ is not None:
            return [src.occ]
        if src.child is not None:
            return _occs_below(src.child, self)
        return []

    def names_of(self, sources: Sequence[Source]) -> str:
        return ", ".join(dict.fromkeys(s.name or s.alias for s in sources
                                       if s.occ is None and s.kind != "derived"
                                       and (s.name or s.alias)))

    def mark_nullable(self, src: Source) -> None:
        src.nullable = True
        if src.occ is not None:
            src.occ.nullable = True
            if src.occ in src.occ.scope.row_occs:
                src.occ.scope.row_occs.remove(src.occ)
        if src.child is not None:
            src.child.positive = False

    # ----------------------------------------------------------------- WHERE

    def where(self, where: exp.Expression | None, scope: Scope) -> None:
        # row sources: every non-nullable sharded table and derived table of the FROM list
        for src in scope.sources:
            if src.nullable:
                continue
            if src.occ is not None and src.occ not in scope.row_occs:
                scope.row_occs.append(src.occ)
            elif src.child is not None:
                scope.row_occs.extend(o for o in src.child.row_occs if o not in scope.row_occs)
        scope.row_occs.extend(o for o in scope.full_rows if o not in scope.row_occs)
        if where is None:
            return
        cond = where.this if isinstance(where, exp.Where) else where
        for c in _conjuncts(cond):
            self.conjunct(c, scope, restrict=True)

    def conjunct(self, c: exp.Expression, scope: Scope, *, restrict: bool) -> None:
        """One top-level AND term of a WHERE or ON clause."""
        c = _unparen(c)
        # links and positive subqueries
        if isinstance(c, exp.EQ):
            left, right = _unparen(c.this), _unparen(c.expression)
            lo, ro = self.keyref(left, scope), self.keyref(right, scope)
            if lo and ro:
                self.link(scope, lo, ro)
                outer = [o for o in (*lo, *ro) if _is_ancestor(o.scope, scope)]
                if outer and restrict:
                    # correlated on the shard key: the subquery runs per outer row, over
                    # rows co-located with it, so its aggregates/LIMIT stay local
                    scope.correlated_occs = (*scope.correlated_occs, *outer)
                return
            for key, other in ((lo, right), (ro, left)):
                if key and isinstance(other, exp.Any) and _subquery_of(other.this) is not None:
                    child = self.query(_subquery_of(other.this), scope, restrict)  # type: ignore[arg-type]
                    self.link_child_key(scope, key, child)
                    return
            if isinstance(right, exp.Subquery) or isinstance(left, exp.Subquery):
                for side, key in ((left, ro), (right, lo)):
                    if isinstance(side, exp.Subquery):
                        child = self.query(side, scope, restrict)
                        if key:  # key = (SELECT key ...): the row it finds is co-located
                            self.link_child_key(scope, key, child)
                    else:
                        self.subqueries_in(side, scope)
                if restrict:
                    scope.preds.append(TRUE)
                return
        if isinstance(c, exp.In) and c.args.get("query") is not None:
            key = self.keyref(_unparen(c.this), scope)
            query = c.args["query"]
            child = self.query(query.this if isinstance(query, exp.Subquery) else query,
                               scope, restrict)
            if key:
                self.link_child_key(scope, key, child)
            return
        if isinstance(c, exp.Exists):
            self.query(c.this, scope, restrict)
            return
        if restrict:
            scope.preds.append(self.pred(c, scope))
        self.subqueries_in(c, scope)

    def link_child_key(self, scope: Scope, key: tuple[Occ, ...], child: Scope) -> None:
        if len(child.positional) == 1 and _is_occs(child.positional[0]):
            self.link(scope, key, child.positional[0])  # type: ignore[arg-type]

    def subqueries_in(self, e: exp.Expression | None, scope: Scope) -> None:
        """Analyse every subquery inside ``e`` (not a top-level conjunct) as a scope that
        restricts nothing."""
        if e is None or not isinstance(e, exp.Expression):
            return
        stack = list(e.iter_expressions()) if isinstance(e, exp.Values) else [e]
        while stack:
            node = stack.pop()
            if isinstance(node, (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)):
                self.query(node, scope, False)
                continue
            if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
                raise AnalysisError("nested data-modifying statement")
            stack.extend(node.iter_expressions())

    # ----------------------------------------------------------------- predicates

    def pred(self, e: exp.Expression, scope: Scope) -> P:
        e = _unparen(e)
        if isinstance(e, exp.And):
            return ("and", [self.pred(x, scope) for x in _conjuncts(e)])
        if isinstance(e, exp.Or):
            return ("or", [self.pred(e.this, scope), self.pred(e.expression, scope)])
        if e.args.get("negate"):
            return TRUE  # any negated predicate (NOT LIKE, IS NOT ...) restricts nothing
        if isinstance(e, (exp.EQ, exp.NullSafeEQ)):
            left, right = _unparen(e.this), _unparen(e.expression)
            if isinstance(left, exp.Tuple) and isinstance(right, exp.Tuple):
                if len(left.expressions) == len(right.expressions):
                    return ("and", [self.pred(exp.EQ(this=a, expression=b), scope)
                                    for a, b in zip(left.expressions, right.expressions,
                                                    strict=True)])
                return TRUE
            for key_side, other in ((left, right), (right, left)):
                occs = self.keyref(key_side, scope)
                if not occs:
                    continue
                if isinstance(other, exp.Any):
                    inner = _unparen(other.this)
                    if isinstance(inner, exp.Array):
                        vals = [self.value(x) for x in inner.expressions]
                        if any(v is None for v in vals):
                            return TRUE
                        return ("in", occs, vals)
                    v = self.value(inner)
                    return TRUE if v is None else ("any", occs, v)
                v = self.value(other)
                if v is None:
                    return TRUE
                if isinstance(e, exp.NullSafeEQ):
                    return ("row", occs, v) if not _nullable(occs) else TRUE
                return ("eq", occs, v)
            return TRUE
        if isinstance(e, exp.In):
            if e.args.get("query") is not None or e.args.get("unnest") is not None:
                return TRUE
            occs = self.keyref(_unparen(e.this), scope)
            if not occs:
                return TRUE
            vals = [self.value(x) for x in e.expressions]
            if any(v is None for v in vals):
                return TRUE
            return ("in", occs, vals)
        if isinstance(e, exp.Between):
            occs = self.keyref(_unparen(e.this), scope)
            if not occs or e.args.get("symmetric"):
                return TRUE
            lo, hi = self.value(e.args.get("low")), self.value(e.args.get("high"))
            if lo is None or hi is None:
                return TRUE
            return ("between", occs, lo, hi)
        if isinstance(e, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
            op = {exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}[type(e)]
            left, right = _unparen(e.this), _unparen(e.expression)
            occs = self.keyref(left, scope)
            other = right
            if not occs:
                occs = self.keyref(right, scope)
                other = left
                op = {">": "<", ">=": "<=", "<": ">", "<=": ">="}[op]
            if not occs:
                return TRUE
            v = self.value(other)
            return TRUE if v is None else ("cmp", occs, op, v)
        if (isinstance(e, exp.Is) and isinstance(e.expression, exp.Null)
                and not e.args.get("negate")):
            # ``key IS NULL`` (``key NOTNULL`` / ``IS NOT NULL`` parse as Is with negate:
            # they restrict nothing placement-wise)
            occs = self.keyref(_unparen(e.this), scope)
            if occs and not _nullable(occs):
                return ("isnull", occs)
            return TRUE
        return TRUE

    def _windows_by_key(self, node: exp.Select, scope: Scope) -> bool:
        """Every window function of this SELECT is partitioned by a shard key: each
        partition lives on one shard, so every shard computes its rows' values alone."""
        found = False
        stack: list[exp.Expression] = [*node.expressions]
        if node.args.get("order") is not None:
            stack.append(node.args["order"])
        while stack:
            n = stack.pop()
            if isinstance(n, _SCOPE_BARRIERS):
                continue
            if isinstance(n, exp.Window):
                found = True
                parts = n.args.get("partition_by") or []
                if not any(self.keyref(p, scope) for p in parts):
                    return False
                continue
            stack.extend(n.iter_expressions())
        return found

    def keyref(self, e: exp.Expression | None, scope: Scope) -> tuple[Occ, ...]:
        """The occurrences whose shard key ``e`` is (a bare column), or ``()``."""
        e = _unparen(e) if e is not None else None
        if not isinstance(e, exp.Column) or isinstance(e.this, exp.Star):
            return ()
        col = _ident(e.this) if isinstance(e.this, exp.Identifier) else e.name.lower()
        qual = _qualifier(e)
        s: Scope | None = scope
        if qual:
            while s is not None:
                src = self.source_by_alias(s, qual)
                if src is not None:
                    return _source_key(src, col)
                s = s.parent
            return ()
        found: list[Occ] = []
        for src in scope.sources:
            found.extend(_source_key(src, col))
        return tuple(found)

    def source_by_alias(self, scope: Scope, alias: str) -> Source | None:
        for src in scope.sources:
            if src.alias == alias:
                return src
        return None

    def value(self, e: exp.Expression | None) -> V | None:
        """A compiled constant (literal, parameter, cast of one) or None."""
        e = _unparen(e) if e is not None else None
        if isinstance(e, exp.Literal):
            if e.is_string:
                return ("const", KeyValue("string", e.this))
            return ("const", number_value(e.this))
        if isinstance(e, exp.Placeholder):
            name = str(e.this or "")
            if name[:1] == "l" and name[1:].isdigit():
                return ("lit", int(name[1:]))
            if name[:1] == "p" and name[1:].isdigit() and int(name[1:]) >= 1:
                return ("param", int(name[1:]) - 1)
            return None
        if isinstance(e, exp.Parameter):
            inner = e.this
            if isinstance(inner, exp.Literal) and str(inner.this).isdigit():
                return ("param", int(inner.this) - 1)
            return None
        if isinstance(e, (exp.Cast, exp.TryCast)):
            inner_v = self.value(e.this)
            if inner_v is None:
                return None
            return ("cast", inner_v, type_name(e.args.get("to")))
        if isinstance(e, exp.Neg):
            inner_v = self.value(e.this)
            return None if inner_v is None else ("neg", inner_v)
        if isinstance(e, exp.Null):
            return ("const", _NULL)
        if isinstance(e, exp.Boolean):
            return ("const", KeyValue("bool", bool(e.this)))
        if isinstance(e, exp.ByteString):  # E'...' when parsed without normalising
            return ("const", KeyValue("string", e.this))
        return None

    # ----------------------------------------------------------------- co-location

    def check_local(self, scope: Scope) -> None:
        """The FROM items of one query must be joined on their shard keys, or they can
        only run on a single shard together."""
        units: list[Any] = []
        unit_of: dict[int, int] = {}
        for src in scope.sources:
            if src.occ is not None:
                unit_of[src.occ.idx] = len(units)
                units.append(src.occ)
            elif src.child is not None and _has_occs(src.child, self):
                n = len(units)
                units.append(src.child)
                for o in _occs_below(src.child, self):
                    unit_of[o.idx] = n
        if len(units) <= 1:
            return
        parent = list(range(len(units)))

        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for s in _positive_closure(scope):
            for a, b in s.links:
                if a.idx in unit_of and b.idx in unit_of:
                    ra, rb = find(unit_of[a.idx]), find(unit_of[b.idx])
                    if ra != rb:
                        parent[ra] = rb
        roots = {find(i) for i in range(len(units))}
        if len(roots) > 1:
            occs: list[Occ] = []
            for u in units:
                occs.extend([u] if isinstance(u, Occ) else _occs_below(u, self))
            self.copins.append(occs)


# --------------------------------------------------------------------------- helpers


def _ident(node: exp.Expression | str | None) -> str:
    if node is None:
        return ""
    if isinstance(node, str):
        return node.lower()
    if isinstance(node, exp.Identifier):
        return node.this if node.quoted else node.this.lower()
    if isinstance(node, exp.TableAlias):
        return _ident(node.this)
    return node.name.lower()


def _alias(node: exp.Expression) -> str:
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias):
        return _ident(alias.this) if alias.this is not None else ""
    if isinstance(alias, exp.Identifier):
        return _ident(alias)
    return ""


def _qualifier(col: exp.Column) -> str:
    table = col.args.get("table")
    return _ident(table) if table is not None else ""


def _renamed(child: Scope, node: exp.Expression) -> dict[str, tuple[Occ, ...]]:
    """A derived table's exposed keys under its column aliases (``AS s(a, b)``)."""
    alias = node.args.get("alias")
    cols = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
    if not cols:
        return dict(child.exposed)
    out: dict[str, tuple[Occ, ...]] = {}
    for i, c in enumerate(cols):
        item = child.positional[i] if i < len(child.positional) else None
        if _is_occs(item):
            out[_ident(c)] = item  # type: ignore[assignment]
    return out


def _source_key(src: Source, col: str) -> tuple[Occ, ...]:
    if src.kind == "sharded" and src.occ is not None and src.occ.dist.key == col:
        return (src.occ,)
    if src.kind == "derived":
        return src.exposed.get(col, ())
    return ()


def _source_rows(src: Source) -> list[Occ]:
    """The row sources of a FROM item (see Scope.row_occs)."""
    if src.occ is not None:
        return [src.occ]
    if src.child is not None:
        return list(src.child.row_occs)
    return []


def _occ_names(occs: Sequence[Occ]) -> str:
    return ", ".join(dict.fromkeys(o.name for o in occs))


def _pred_within(p: P, occs: Sequence[Occ]) -> bool:
    """Whether predicate ``p`` restricts some of ``occs`` and mentions no other occurrence."""
    tag = p[0]
    if tag == "true":
        return False
    if tag in ("and", "or"):
        parts = [x for x in p[1] if x[0] != "true"]
        if tag == "or" and len(parts) < len(p[1]):
            return False
        return bool(parts) and all(_pred_within(x, occs) for x in parts)
    return all(any(o is x for x in occs) for o in p[1])


def _is_occs(item: object) -> bool:
    return isinstance(item, tuple) and bool(item) and isinstance(item[0], Occ)


def _nullable(occs: Sequence[Occ]) -> bool:
    return any(o.nullable for o in occs)


def _unparen(e: Any) -> Any:
    while isinstance(e, exp.Paren):
        e = e.this
    return e


def _conjuncts(e: exp.Expression) -> list[exp.Expression]:
    e = _unparen(e)
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    return [e]


def _subquery_of(e: exp.Expression) -> exp.Expression | None:
    e = _unparen(e)
    if isinstance(e, exp.Subquery):
        return e.this
    if isinstance(e, (exp.Select, exp.SetOperation)):
        return e
    return None


def _is_same_key(val: exp.Expression | None, occ: Occ, conflict: bool) -> bool:
    """``SET key = key`` (or ``= EXCLUDED.key`` in ON CONFLICT) changes nothing."""
    val = _unparen(val)
    if not isinstance(val, exp.Column) or val.name.lower() != occ.dist.key:
        return False
    qual = _qualifier(val)
    if conflict:
        return qual == "excluded"
    return qual in ("", occ.alias)


def _aggregates(e: exp.Expression) -> tuple[bool, bool]:
    """(has aggregate, has window function) in ``e``, not looking into subqueries."""
    agg = window = False
    stack = [e]
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPE_BARRIERS):
            continue
        if isinstance(node, exp.Window):
            window = True
            continue  # an aggregate used as a window function is not a grouping aggregate
        if isinstance(node, (exp.AggFunc, exp.WithinGroup)):
            agg = True
        elif isinstance(node, exp.Anonymous) and str(node.this).lower() in _AGGREGATE_NAMES:
            agg = True
        stack.extend(node.iter_expressions())
    return agg, window


def _is_ancestor(a: Scope, s: Scope) -> bool:
    p = s.parent
    while p is not None:
        if p is a:
            return True
        p = p.parent
    return False


def _positive_closure(scope: Scope) -> Iterator[Scope]:
    yield scope
    for c in scope.children:
        if c.positive and not c.from_child:
            yield from _positive_closure(c)


def _occs_below(scope: Scope, an: _Analyzer) -> list[Occ]:
    out = list(scope.occs)
    for c in scope.children:
        out.extend(_occs_below(c, an))
    return out


def _has_occs(scope: Scope, an: _Analyzer) -> bool:
    return bool(_occs_below(scope, an))


def analyze(tree: exp.Expression, router: Router, statement_type: str) -> DmlTemplate:
    """Compile a parsed DML statement; raises :class:`AnalysisError` for shapes it does not
    model (the caller treats those as unparsed)."""
    an = _Analyzer(router)
    root = an.statement(tree)
    return DmlTemplate(an, root, statement_type)
