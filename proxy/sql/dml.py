"""Owns routing with a compiled DML template: values in, :class:`Route` out.

:func:`proxy.sql.analyze.analyze` builds a :class:`DmlTemplate` once per statement shape;
``DmlTemplate.route`` evaluates each group's shard-key formula with the bound values, checks
that groups which must share a shard do, applies the rules for unlisted and reference
tables, rejects UPDATEs that would move rows, marks results that need merging, and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.errors import FeatureNotSupported, ShardwireError
from proxy.sql.route import Route
from proxy.sql.values import Binding, P, V, eval_array, eval_value
from proxy.topology.router import Dist, KeyValue, Router, describe_value

if TYPE_CHECKING:
    from proxy.sql.analyze import Occ, Scope, _Analyzer

__all__ = ["DmlTemplate"]


@dataclass(slots=True)
class _Group:
    """Co-located occurrences routed together; ``formula`` gives their atoms."""

    gid: int
    members: list[Occ]
    formula: Any = None
    names: list[str] = field(default_factory=list)
    names_text: str = ""
    dist: Any = None

    def finish(self) -> None:
        for o in self.members:
            if o.name not in self.names:
                self.names.append(o.name)
        self.names_text = ", ".join(self.names)


@dataclass(slots=True)
class _ScopeCheck:
    features: str
    exemptable: str
    exempt_groups: frozenset[int]
    groups: frozenset[int]
    is_root: bool
    correlated: frozenset[int]


class DmlTemplate:
    """A routing template for one DML statement shape (see the module docstring)."""

    def __init__(self, an: _Analyzer, root: Scope, statement_type: str) -> None:
        self.router = an.router
        self._all_shards = frozenset(an.router.shards)
        self.statement_type = statement_type
        self.is_write = an.is_write
        occs = an.occs
        self.group_of = [an.find(o.idx) for o in occs]
        groups: dict[int, _Group] = {}
        for o in occs:
            g = self.group_of[o.idx]
            groups.setdefault(g, _Group(gid=g, members=[])).members.append(o)
        self.groups = list(groups.values())
        # subtree groups per scope (post-order: children were created after parents)
        for s in reversed(an.scopes):
            gs = {self.group_of[o.idx] for o in s.occs}
            for c in s.children:
                gs |= c.subtree_groups
            s.subtree_groups = frozenset(gs)
        # an outer join's ON conditions restrict a group lying wholly on its sharded side
        members = {grp.gid: frozenset(o.idx for o in grp.members) for grp in self.groups}
        for s in an.scopes:
            for p, side in s.on_preds:
                gids = _pred_groups(p, self.group_of)
                if gids and all(members[g] <= side for g in gids):
                    s.preds.append(p)
        for grp in self.groups:
            grp.finish()
            grp.formula = _specialize(self._formula(root, grp.gid), grp.gid, self.group_of)
        # which groups must share one shard
        self.copins: list[frozenset[int]] = [
            frozenset(self.group_of[o.idx] for o in occs_) for occs_ in an.copins
        ]
        all_groups = frozenset(groups)
        if len(all_groups) > 1:
            branches = _union_all_branches(root)
            if branches and all(b.subtree_groups for b in branches) and _disjoint(
                [b.subtree_groups for b in branches]
            ) and frozenset().union(*(b.subtree_groups for b in branches)) == all_groups:
                for b in branches:
                    if len(b.subtree_groups) > 1:
                        self.copins.append(b.subtree_groups)
            else:
                self.copins.append(all_groups)
        # merge checks
        self.checks: list[_ScopeCheck] = []
        for s in an.scopes:
            if not (s.features or s.exemptable):
                continue
            exempt = frozenset(self.group_of[o.idx] for o in s.exempt_occs)
            correlated = frozenset(self.group_of[o.idx] for o in s.correlated_occs)
            self.checks.append(_ScopeCheck(s.features, s.exemptable, exempt, s.subtree_groups,
                                           s is root, correlated))
        # partitioned output: over several shards, every result row must come from exactly
        # one shard, so it must be built from a row of a sharded table (Scope.row_occs)
        self.partition_error: ShardwireError | None = None
        for b in _union_all_branches(root) or [root]:
            if not b.row_occs:
                self.partition_error = _partition_error(b)
                break
        self.unlisted = tuple(an.unlisted)
        self.reference_reads = tuple(dict.fromkeys(an.reference_reads))
        self.reference_writes = tuple(dict.fromkeys(an.reference_writes))
        self.catalog = an.catalog
        self.errors = list(an.errors)
        self.key_sets = list(an.key_sets)
        self.insert_rows = an.insert_rows
        self.insert_occ = an.insert_occ
        self.insert_gid = self.group_of[an.insert_occ.idx] if an.insert_occ is not None else -1
        names = [o.name for o in occs] + list(self.reference_reads) + list(self.reference_writes)
        self.tables = tuple(sorted(dict.fromkeys(names)))
        self.first_dist: Dist | None = occs[0].dist if occs else None
        self.sharded_write = bool(an.sharded_writes)
        self.unlisted_writes = tuple(an.unlisted_writes)
        self._simple = (
            len(self.groups) == 1 and not self.copins and not self.unlisted
            and not self.reference_writes and not self.key_sets and not self.errors
            and (self.insert_rows is None or len(self.insert_rows) == 1)
            and len(self.router.shards) > 1
        )
        # The hot path (see quick_shard): one equality on a hash key, no other condition
        # (with one shard too: it is the cost of routing there).
        self.quick: tuple[Dist, V] | None = None
        if self._simple:
            grp = self.groups[0]
            grp.dist = grp.members[0].dist
        if self._simple or (len(self.router.shards) == 1 and len(self.groups) == 1
                            and not self.copins and not self.unlisted
                            and not self.reference_writes and not self.key_sets
                            and not self.errors and self.insert_rows is None):
            f = self.groups[0].formula
            if (f is not None and f[0] in ("eq", "row") and f[1].strategy == "hash"
                    and f[3][0] in ("lit", "param")):
                self.quick = (f[1], f[3])
        used: set[int] = set()

        def collect(v: V) -> bool:
            if v[0] == "lit":
                used.add(v[1])
            elif v[0] in ("cast", "neg"):
                collect(v[1])
            return False

        for g in self.groups:
            _uses(g.formula, collect)
        for v in [k.value for k in self.key_sets] + list(self.insert_rows or ()):
            if v is not None:
                collect(v)
        self.used_literals = frozenset(used)
        self.uses_params = any(_uses_params(g.formula) for g in self.groups) or any(
            k.value is not None and _uses_params_v(k.value) for k in self.key_sets
        ) or bool(self.insert_rows and any(
            v is not None and _uses_params_v(v) for v in self.insert_rows))

    # ----------------------------------------------------------------- formula

    def _formula(self, s: Scope, g: int) -> Any:
        """A tree ("and"|"or", [parts]) / ("pred", P) whose value is the group's atoms."""
        if g not in s.subtree_groups:
            return None
        kids = [c for c in s.children if g in c.subtree_groups]
        if s.kind == "setop":
            parts = [self._formula(c, g) for c in kids]
            parts = [p for p in parts if p is not None]
            if s.op in ("union", "union_all"):
                return ("or", parts)
            if s.op == "intersect":
                return ("and", parts)
            left = s.children[0] if s.children else None
            return self._formula(left, g) if left is not None and left in kids else (
                ("or", parts))
        base = [("pred", p) for p in s.preds if _pred_mentions(p, g, self.group_of)]
        here = any(self.group_of[o.idx] == g for o in s.occs)
        pos = [c for c in kids if c.positive]
        neg = [c for c in kids if not c.positive]
        if here or pos:
            return ("and", base + [self._formula(c, g) for c in pos])
        return ("and", [*base, ("or", [self._formula(c, g) for c in neg])])

    # ----------------------------------------------------------------- routing

    def quick_shard(self, kv: KeyValue) -> str | None:
        """The shard for the key value of a `quick` template, without building a Route;
        None when the general path must decide (NULL, a value that does not hash)."""
        q = self.quick
        if q is None or kv.kind == "null" or kv.kind == "unknown":
            return None
        dist = q[0]
        bucket = dist.bucket(kv)
        if bucket is None:
            return None
        shard = dist.shard_of_atom(bucket)
        if dist.observe is not None and shard is not None:
            dist.observe(shard, bucket, kv.value)
        return shard

    def route(self, b: Binding) -> Route:
        if self._simple:
            r = self._route_simple(b)
            if r is not None:
                return r
        router = self.router
        if self.errors:
            return _error_route(self, self.errors[0])
        group_atoms: dict[int, frozenset[Any] | None] = {}
        group_desc: dict[int, str | None] = {}
        group_shards: dict[int, frozenset[str]] = {}
        for grp in self.groups:
            dist = grp.members[0].dist
            atoms, desc = _evaluate(grp.formula, b)
            group_atoms[grp.gid] = atoms
            group_desc[grp.gid] = desc
            if atoms is None:
                group_shards[grp.gid] = self._all_shards
            else:
                shards = set()
                for a in atoms:
                    sh = dist.shard_of_atom(a)
                    if sh is not None:
                        shards.add(sh)
                    elif grp.gid == self.insert_gid:
                        return _error_route(self, ShardwireError(
                            f"no shard of {dist.name} takes {desc or 'the inserted key'} "
                            "(the value is not listed and the table has no default)",
                            sqlstate="23514"))
                group_shards[grp.gid] = frozenset(shards)
        rows: list[str] | None = None
        if self.insert_rows is not None and (
            len(self.insert_rows) > 1 or group_atoms.get(self.insert_gid) is None
        ):
            try:
                rows = self.row_shards(b)
            except ShardwireError as e:
                return _error_route(self, e)
        # groups that must share one shard
        for copin in self.copins:
            chosen: set[str] = set()
            for gid in copin:
                chosen |= group_shards[gid]
            if len(chosen) > 1:
                return _error_route(self, _cross_shard_error(self, copin, group_shards))
        reasons: list[str] = []
        for grp in self.groups:
            reasons.append(_group_reason(grp, group_atoms[grp.gid], group_desc[grp.gid],
                                         group_shards[grp.gid], router))
        shards: set[str] = set()
        for s in group_shards.values():
            shards |= s
        if self.groups and not shards:
            shards = {router.default_shard}
            reasons.append("no shard can hold matching rows -> default shard")
        # unlisted tables live on the default shard only
        if self.unlisted:
            if shards and shards != {router.default_shard}:
                return _error_route(self, FeatureNotSupported(
                    f"the statement uses {', '.join(self.unlisted)} (not in the topology, so "
                    f"on the default shard {router.default_shard}) together with sharded data "
                    f"on {', '.join(router.sort_shards(shards))}",
                    hint="list the table in the topology (sharded or reference), or split "
                    "the statement",
                ))
        # writes to reference tables go to every shard
        if self.reference_writes:
            if self.groups or self.unlisted:
                reads = [*self.unlisted, *(n for n in self.tables
                                           if n not in self.reference_writes)]
                return _error_route(self, FeatureNotSupported(
                    f"a write to reference table {', '.join(self.reference_writes)} that reads "
                    f"{', '.join(reads)}: every shard must write the same rows",
                    hint="write reference tables from constants or other reference tables",
                ))
            return self._route(
                "all", router.shards,
                f"write to reference table {', '.join(self.reference_writes)} -> all shards",
                "broadcast",
            )
        if not self.groups:
            if self.unlisted:
                what = ", ".join(self.unlisted)
                return self._route("default", (router.default_shard,),
                                   f"{what} not in the topology -> default shard", "default")
            if self.reference_reads:
                chosen = b.reference_shard or router.default_shard
                return self._route(
                    "shard", (chosen,),
                    f"reference table {', '.join(self.reference_reads)} -> {chosen} "
                    "(the session's reference shard)",
                    "reference",
                )
            if self.catalog:
                return self._route("default", (router.default_shard,),
                                   "catalog query -> default shard", "catalog")
            # reads no table at all: any shard answers the same (the session keeps it on
            # the shard it is already using)
            return self._route("default", (router.default_shard,),
                               "no sharded table -> default shard", "anywhere")
        ordered = router.sort_shards(shards)
        reason = "; ".join(reasons)
        # UPDATE / ON CONFLICT that would move a row
        if self.key_sets:
            err = self._check_key_sets(b, group_shards)
            if err is not None:
                return _error_route(self, err)
        if rows is not None and len(set(rows)) > 1:
            return self._split_route(b, ordered, reason)
        needs_merge = False
        if len(ordered) > 1 and self.partition_error is not None:
            return _error_route(self, self.partition_error)
        if len(ordered) > 1:
            try:
                needs_merge, why = self._needs_merge(group_shards)
            except FeatureNotSupported as e:
                return _error_route(self, e, reason)
            if needs_merge:
                reason += f"; cross-shard {why} needs merging"
                if self.is_write:
                    return _error_route(self, FeatureNotSupported(
                        f"cross-shard {self.statement_type.upper()} with {why} is not "
                        "supported: its result depends on rows of several shards",
                        hint="restrict the statement to one shard key value",
                    ), reason)
        kind = "shard" if len(ordered) == 1 else (
            "all" if len(ordered) == len(router.shards) else "shards")
        return Route(
            kind=kind,  # type: ignore[arg-type]
            shards=ordered,
            reason=reason,
            statement_type=self.statement_type,
            is_write=self.is_write,
            needs_merge=needs_merge,
            tables=self.tables,
            source="key" if any(group_atoms[g.gid] is not None for g in self.groups)
            else "broadcast",
        )

    def _route_simple(self, b: Binding) -> Route | None:
        """The common case (one group, nothing else to check) without the general
        bookkeeping; None sends the statement through :meth:`route`'s general path."""
        grp = self.groups[0]
        atoms, desc = _evaluate(grp.formula, b)
        router = self.router
        if atoms is None:
            if self.insert_rows is not None:
                return None  # an INSERT row whose key cannot be read: the general path says why
            shards = router.shards
            reason = f"{grp.names_text} without shard key -> all shards"
            source = "broadcast"
        elif len(atoms) == 1:
            (atom,) = atoms
            shard = grp.dist.shard_of_atom(atom)
            if shard is None:
                return None
            shards = (shard,)
            text = desc or grp.names_text
            if len(grp.names) > 1 and desc and not all(n in desc for n in grp.names):
                text = f"{desc} (co-located: {grp.names_text})"
            reason = f"{text} -> {grp.dist.describe_atoms(atoms)} -> {shard}"
            source = "key"
        else:
            return None
        needs_merge = False
        if len(shards) > 1 and self.partition_error is not None:
            return _error_route(self, self.partition_error)
        if len(shards) > 1:
            try:
                needs_merge, why = self._needs_merge({grp.gid: self._all_shards})
            except FeatureNotSupported:
                return None  # the general path says why
            if needs_merge:
                if self.is_write:
                    return None
                reason += f"; cross-shard {why} needs merging"
        return Route(
            kind="shard" if len(shards) == 1 else "all",
            shards=shards,
            reason=reason,
            statement_type=self.statement_type,
            is_write=self.is_write,
            needs_merge=needs_merge,
            tables=self.tables,
            source=source,
        )

    def _route(self, kind: str, shards: Sequence[str], reason: str, source: str) -> Route:
        return Route(kind=kind, shards=tuple(shards), reason=reason,  # type: ignore[arg-type]
                     statement_type=self.statement_type, is_write=self.is_write,
                     tables=self.tables, source=source)

    def _needs_merge(self, group_shards: dict[int, frozenset[str]]) -> tuple[bool, str]:
        """Whether the result needs combining across shards, and why. Raises
        FeatureNotSupported when a subquery (not the statement's own top level) would need
        it: the merge engine combines the top-level rows only."""
        multi = {g for g, s in group_shards.items() if len(s) > 1}
        root_why = ""
        for c in self.checks:
            if c.is_root or c.groups & multi:
                if len(c.correlated) == 1 and c.groups <= c.correlated:
                    continue  # a subquery correlated on the shard key: local to each shard
                why = c.features
                if not why and c.exemptable:
                    if len(c.exempt_groups) == 1 and c.groups <= c.exempt_groups:
                        continue
                    why = c.exemptable
                if not why:
                    continue
                if not c.is_root:
                    raise FeatureNotSupported(
                        f"a subquery with {why} over rows of several shards is not supported",
                        hint="group or filter the subquery by the shard key so each shard "
                             "answers it alone, or move it to the top level")
                if "window function" in why:
                    raise FeatureNotSupported(
                        "a window function over rows of several shards is not supported",
                        hint="partition the window by the shard key (each shard then "
                             "computes it alone), or restrict the query to one shard")
                root_why = root_why or why  # go on: a subquery may still refuse
        return bool(root_why), root_why

    def _check_key_sets(self, b: Binding, group_shards: dict[int, frozenset[str]]
                        ) -> ShardwireError | None:
        for ks in self.key_sets:
            if ks.same:
                continue
            occ = ks.occ
            key = f"{occ.name}.{occ.dist.key}"
            if ks.value is None:
                return FeatureNotSupported(
                    f"UPDATE sets shard key {key} to a computed value; shardwire cannot "
                    "move rows between shards: DELETE and re-INSERT instead")
            kv = eval_value(ks.value, b)
            atoms = occ.dist.null_atoms() if kv.kind == "null" else occ.dist.point(kv)
            if atoms is None:
                return FeatureNotSupported(
                    f"UPDATE sets shard key {key} to {describe_value(kv)}, which shardwire "
                    "cannot place; shardwire cannot move rows between shards: DELETE and "
                    "re-INSERT instead")
            new = {occ.dist.shard_of_atom(a) for a in atoms}
            new_shard = next(iter(new)) if len(new) == 1 else None
            current = group_shards[self.group_of[occ.idx]]
            if self.insert_rows is not None:
                current = self._row_shards(b)
            if not current or (new_shard is not None and current == {new_shard}):
                continue
            cur = self.router.sort_shards(current)
            target = new_shard or "?"
            if len(cur) == 1:
                return FeatureNotSupported(
                    f"UPDATE would move the row from shard {cur[0]} to shard {target} "
                    f"({key} = {describe_value(kv)}); shardwire cannot move rows between "
                    "shards: DELETE and re-INSERT instead")
            return FeatureNotSupported(
                f"UPDATE would move rows from shards {', '.join(cur)} to shard {target} "
                f"({key} = {describe_value(kv)}); shardwire cannot move rows between shards: "
                "DELETE and re-INSERT instead")
        return None

    def row_shards(self, b: Binding) -> list[str]:
        """The shard of each VALUES row of a sharded INSERT (raises ShardwireError)."""
        occ = self.insert_occ
        assert occ is not None and self.insert_rows is not None
        dist = occ.dist
        out: list[str] = []
        for i, v in enumerate(self.insert_rows):
            assert v is not None
            kv = eval_value(v, b)
            atoms = dist.null_atoms() if kv.kind == "null" else dist.point(kv)
            if atoms is None:
                if kv.kind == "unknown":
                    raise FeatureNotSupported(
                        f"INSERT into {occ.name}: the shard key {dist.key} of row {i + 1} has "
                        "no value shardwire can read (a parameter not bound yet, or of a type "
                        "it cannot decode)",
                        hint="bind the parameter in text format or as int2/int4/int8, text, "
                        "varchar or uuid")
                raise ShardwireError(
                    f"INSERT into {occ.name}: row {i + 1} has shard key {dist.key} = "
                    f"{describe_value(kv)}, which is not a valid {dist.key} value",
                    sqlstate="22P02")
            (atom,) = atoms
            shard = dist.shard_of_atom(atom)
            if shard is None:
                raise ShardwireError(
                    f"no shard of {occ.name} takes {dist.key} = {describe_value(kv)} "
                    f"(row {i + 1}): it is not listed and the table has no default",
                    sqlstate="23514")
            out.append(shard)
        return out

    def _row_shards(self, b: Binding) -> set[str]:
        try:
            return set(self.row_shards(b))
        except ShardwireError:
            return set()

    def _split_route(self, b: Binding, ordered: Sequence[str], reason: str) -> Route:
        """A multi-row INSERT whose rows go to several shards: the planner (which has the
        SQL text) fills in ``rewrites``."""
        return Route(kind="shards" if len(ordered) < len(self.router.shards) else "all",
                     shards=tuple(ordered), reason=reason + "; rows split by shard",
                     statement_type=self.statement_type, is_write=True, tables=self.tables,
                     rewrites=(), source="key")


def _union_all_branches(root: Scope) -> list[Scope]:
    """The branches of a top-level UNION [ALL]: independent queries whose rows are
    concatenated (UNION's de-duplication is a merge feature of the set operation)."""
    if root.kind == "setop" and root.op in ("union", "union_all"):
        out: list[Scope] = []
        for c in root.children:
            out.extend(_union_all_branches(c) or [c])
        return out
    return []


def _partition_error(scope: Scope) -> ShardwireError:
    """Why the rows of ``scope`` (no row source, see Scope.row_occs) would be repeated or
    wrong over several shards."""
    s = scope
    while True:
        if s.preserved is not None:
            kept, sharded = s.preserved
            return FeatureNotSupported(
                f"an outer join that keeps all rows of {kept} (not sharded) joined to sharded "
                f"table {sharded} cannot be answered by several shards: every shard would "
                f"return the rows of {kept} that have no match among its own part of {sharded}",
                hint=f"filter {sharded} by its shard key (one shard), use an INNER JOIN, or "
                "keep the rows of the sharded table (LEFT JOIN from it)",
            )
        inner = [src.child for src in s.sources if src.child is not None and not src.nullable
                 and not src.child.row_occs and src.child.subtree_groups]
        if len(inner) != 1:
            break
        s = inner[0]
        if s.kind == "setop":
            break
    names = ", ".join(dict.fromkeys(o.name for o in _occs_under(s)))
    if not names:
        return FeatureNotSupported(
            "a UNION [ALL] branch that reads no sharded table would be answered by every shard "
            "the statement runs on, repeating its rows",
            hint="send that branch as a separate statement, or restrict the sharded branches "
            "to one shard key value",
        )
    if s.kind == "setop":
        return FeatureNotSupported(
            f"a set operation over {names} whose branches do not all read a sharded table "
            "cannot be answered by several shards",
            hint="restrict the statement to one shard key value, or split it")
    return FeatureNotSupported(
        f"a query whose rows come from reference tables (or no table) and that reads sharded "
        f"table {names} only in subqueries (EXISTS, NOT EXISTS, IN, scalar subqueries) cannot "
        f"be answered by several shards: every shard would answer from its own part of {names}",
        hint=f"restrict {names} to one shard key value (one shard), or read {names} in the "
        "FROM clause with an INNER JOIN, so that each row comes from one of its rows",
    )


def _occs_under(scope: Scope) -> list[Occ]:
    out = list(scope.occs)
    for c in scope.children:
        out.extend(_occs_under(c))
    return out


def _pred_groups(p: P, group_of: list[int]) -> set[int]:
    tag = p[0]
    if tag == "true":
        return set()
    if tag in ("and", "or"):
        out: set[int] = set()
        for x in p[1]:
            out |= _pred_groups(x, group_of)
        return out
    return {group_of[o.idx] for o in p[1]}


def _disjoint(sets: list[frozenset[int]]) -> bool:
    seen: set[int] = set()
    for s in sets:
        if seen & s:
            return False
        seen |= s
    return True


def _pred_mentions(p: P, g: int, group_of: list[int]) -> bool:
    tag = p[0]
    if tag == "true":
        return False
    if tag in ("and", "or"):
        return any(_pred_mentions(x, g, group_of) for x in p[1])
    return any(group_of[o.idx] == g for o in p[1])


def _uses_params(f: Any) -> bool:
    return _uses(f, _uses_params_v)


def _uses(f: Any, test: Any) -> bool:
    """Whether a specialised formula reads a value ``test`` accepts."""
    if f is None:
        return False
    tag = f[0]
    if tag in ("and", "or"):
        return any(_uses(x, test) for x in f[1])
    if tag == "isnull":
        return False
    if tag == "in":
        return any(test(v) for v in f[3])
    if tag == "cmp":
        return bool(test(f[4]))
    if tag == "between":
        return bool(test(f[3]) or test(f[4]))
    return bool(test(f[3]))


def _uses_params_v(v: V) -> bool:
    tag = v[0]
    if tag == "param":
        return True
    if tag in ("cast", "neg"):
        return _uses_params_v(v[1])
    return False


# --------------------------------------------------------------------------- evaluation


def _specialize(f: Any, g: int, group_of: list[int]) -> Any:
    """A formula for group ``g`` alone: predicates on other groups (or on nothing known)
    become None ("no restriction"), ANDs drop them, ORs with one become None, and each
    leaf keeps just its occurrence of ``g`` and a ready column name."""
    if f is None:
        return None
    tag = f[0]
    if tag == "pred":
        return _specialize_pred(f[1], g, group_of)
    parts = [_specialize(x, g, group_of) for x in f[1]]
    return _junction(tag, parts)


def _junction(tag: str, parts: list[Any]) -> Any:
    if tag == "and":
        parts = [x for x in parts if x is not None]
        if not parts:
            return None
    elif not parts or any(x is None for x in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    return (tag, parts)


def _specialize_pred(p: P, g: int, group_of: list[int]) -> Any:
    tag = p[0]
    if tag == "true":
        return None
    if tag in ("and", "or"):
        return _junction(tag, [_specialize_pred(x, g, group_of) for x in p[1]])
    occs = [o for o in p[1] if group_of[o.idx] == g]
    if not occs:
        return None
    o = occs[0]
    return (tag, o.dist, f"{o.name}.{o.dist.key}", *p[2:])


def _evaluate(f: Any, b: Binding) -> tuple[frozenset[Any] | None, str | None]:
    """(atoms or None for "all", description) of a specialised formula."""
    if f is None:
        return None, None
    tag = f[0]
    if tag == "and" or tag == "or":
        return _combine(tag, [_evaluate(x, b) for x in f[1]])
    dist: Dist = f[1]
    col: str = f[2]
    if tag == "eq":
        kv = eval_value(f[3], b)
        return dist.point(kv), f"{col} = {describe_value(kv)}"
    if tag == "row":
        kv = eval_value(f[3], b)
        atoms = dist.null_atoms() if kv.kind == "null" else dist.point(kv)
        return atoms, f"{col} = {describe_value(kv)}"
    if tag == "isnull":
        return dist.null_atoms(), f"{col} IS NULL"
    if tag == "in":
        kvs = [eval_value(v, b) for v in f[3]]
        return _points(dist, kvs), f"{col} IN ({_list_text(kvs)})"
    if tag == "any":
        items = eval_array(f[3], b)
        if items is None:
            return None, None
        return _points(dist, items), f"{col} = ANY({_list_text(items)})"
    if tag == "cmp":
        kv = eval_value(f[4], b)
        return dist.compare(f[3], kv), f"{col} {f[3]} {describe_value(kv)}"
    if tag == "between":
        lo, hi = eval_value(f[3], b), eval_value(f[4], b)
        return dist.between(lo, hi), (
            f"{col} BETWEEN {describe_value(lo)} AND {describe_value(hi)}")
    return None, None


def _combine(tag: str, results: list[tuple[frozenset[Any] | None, str | None]]
             ) -> tuple[frozenset[Any] | None, str | None]:
    if tag == "and":
        atoms: frozenset[Any] | None = None
        descs: list[str] = []
        for a, d in results:
            if a is None:
                continue
            atoms = a if atoms is None else atoms & a
            if d:
                descs.append(d)
        return atoms, " AND ".join(descs) if descs else None
    acc: set[Any] = set()
    descs = []
    for a, d in results:
        if a is None:
            return None, None
        acc |= a
        if d:
            descs.append(d)
    if len(descs) > 1:
        return frozenset(acc), "(" + " OR ".join(descs) + ")"
    return frozenset(acc), descs[0] if descs else None


def _points(dist: Dist, kvs: list[KeyValue]) -> frozenset[Any] | None:
    acc: set[Any] = set()
    for kv in kvs:
        a = dist.point(kv)
        if a is None:
            return None
        acc |= a
    return frozenset(acc)


def _list_text(kvs: list[KeyValue]) -> str:
    if len(kvs) > 4:
        return ", ".join(describe_value(k) for k in kvs[:3]) + f", ... {len(kvs)} values"
    return ", ".join(describe_value(k) for k in kvs)


def _group_reason(grp: _Group, atoms: frozenset[Any] | None, desc: str | None,
                  shards: frozenset[str], router: Router) -> str:
    names = grp.names_text
    if atoms is None:
        if len(shards) == len(router.shards):
            return f"{names} without shard key -> all shards"
        return f"{names} without shard key -> {', '.join(router.sort_shards(shards))}"
    dist = grp.members[0].dist
    where = ", ".join(router.sort_shards(shards)) if shards else "no shard"
    text = desc or names
    if len(grp.names) > 1 and desc and not all(n in desc for n in grp.names):
        text = f"{desc} (co-located: {names})"
    if not atoms:
        return f"{text} -> no rows can match"
    return f"{text} -> {dist.describe_atoms(atoms)} -> {where}"


def _cross_shard_error(t: DmlTemplate, copin: frozenset[int],
                       group_shards: dict[int, frozenset[str]]) -> ShardwireError:
    parts = []
    for grp in t.groups:
        if grp.gid in copin:
            shards = group_shards[grp.gid]
            where = ("all shards" if len(shards) == len(t.router.shards)
                     else ", ".join(t.router.sort_shards(shards)))
            parts.append(f"{grp.names_text} on {where}")
    return FeatureNotSupported(
        "cross-shard query: " + "; ".join(parts) + " are not joined on their shard keys, so "
        "the statement would need rows from several shards at once",
        hint="join sharded tables on their shard keys, or restrict every table to the same "
        "shard key value",
    )


def _error_route(t: DmlTemplate, err: ShardwireError, reason: str | None = None) -> Route:
    return Route(kind="default", shards=(), reason=reason or err.message,
                 statement_type=t.statement_type, is_write=t.is_write, error=err,
                 tables=t.tables, source="error")
