"""Owns routing of statements other than DML, classified from their tokens.

sqlglot's Postgres grammar is incomplete for these (``LISTEN foo`` parses as a column
alias, ``VACUUM``, ``EXPLAIN``, ``SET x TO a, b`` as opaque commands, ``NOTIFY x, 'y'`` and
``START TRANSACTION READ ONLY`` fail), and routing only needs the statement kind and the
tables it names:

* transaction control and ``SET``/``SHOW`` go to the default shard (the session keeps them
  on the shards of the transaction / replays settings); ``SET shardwire.*`` is for the proxy;
* DDL (CREATE/ALTER/DROP TABLE, CREATE/DROP INDEX, TRUNCATE, VACUUM, ANALYZE, ...) on a
  sharded or reference table runs on every shard, on an unlisted table on the default shard
  only, and a statement mixing both is rejected; ``DROP INDEX`` cannot tell its table and
  goes to every shard; schemas holding configured tables and extensions go everywhere;
  other DDL goes everywhere when it names a configured table;
* COPY is split, broadcast or sent to one shard (see :mod:`proxy.sql.copy`);
* EXPLAIN, COPY (query), CREATE TABLE ... AS, CREATE VIEW, DECLARE and SQL PREPARE route
  by their embedded query.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from proxy.errors import FeatureNotSupported, ShardwireError
from proxy.sql.lexer import (
    DML_HEADS,
    DOLLAR,
    ESTR,
    NUM,
    PUNCT,
    QIDENT,
    STR,
    WORD,
    Scan,
    literal_value,
    scan,
)
from proxy.sql.route import CopyOptions, CopySplit, Route, Setting
from proxy.sql.template import InnerTemplate, StaticTemplate, UnparsedTemplate
from proxy.sql.values import Binding
from proxy.topology.router import KeyValue, Router

__all__ = ["DDL_HEADS", "KNOWN_SETTINGS", "TRANSACTION_HEADS", "Commands", "head_of", "word_at"]

TRANSACTION_HEADS = frozenset({"begin", "start", "commit", "end", "rollback", "abort",
                               "savepoint", "release"})
DDL_HEADS = frozenset({"create", "alter", "drop", "truncate", "vacuum", "analyze", "analyse",
                       "reindex", "cluster", "comment", "grant", "revoke", "refresh",
                       "security", "import", "reassign"})
KNOWN_SETTINGS = ("shard", "shard_key")


class Commands:
    """Compiles non-DML statements; mixed into :class:`proxy.sql.compile.Compiler`, which
    provides ``router``, ``unparsed`` and ``compile_range``."""

    router: Router
    unparsed: str

    def compile_range(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        raise NotImplementedError

    def named_tables(self, sc: Scan, start: int = 0, end: int | None = None) -> list[str]:
        """Configured tables the text names (any identifier spelled like one; quotes and
        comments do not count): the cheap check for statements that cannot be parsed."""
        router = self.router
        tables = router.config.tables
        found: list[str] = []
        for parts in sc.identifiers(start, end):
            if len(parts) >= 2:
                name = f"{parts[-2]}.{parts[-1]}"
                if name in tables and name not in found:
                    found.append(name)
                    continue
            for name in router.bare_names.get(parts[-1], ()):
                if name not in found:
                    found.append(name)
        return found

    # ----------------------------------------------------------------- helpers

    def _route(self, statement_type: str, reason: str, *, kind: str = "default",
               shards: Sequence[str] | None = None, is_write: bool = False,
               source: str = "default", tables: Sequence[str] = (),
               error: ShardwireError | None = None, **extra: Any) -> Route:
        router = self.router
        if shards is None:
            shards = router.shards if kind == "all" else (router.default_shard,)
        if error is not None:
            shards = ()
            source = "error"
            kind = "default"
        return Route(kind=kind, shards=tuple(shards), reason=reason,  # type: ignore[arg-type]
                     statement_type=statement_type, is_write=is_write, error=error,
                     tables=tuple(tables), source=source, **extra)

    def _static(self, statement_type: str, reason: str, **kw: Any) -> StaticTemplate:
        return StaticTemplate(self._route(statement_type, reason, **kw))

    def _unparsed_range(self, sc: Scan, start: int, end: int, stype: str,
                        detail: str) -> UnparsedTemplate:
        return UnparsedTemplate(self.router, stype, detail, self.named_tables(sc, start, end),
                                self.unparsed)

    def _embedded(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        if start >= end:
            return self._unparsed_range(sc, start, end, "other", "missing query"), ()
        return self.compile_range(sc, start, end)

    def _table_class(self, name: str) -> str:
        if name in self.router.dists:
            return "sharded"
        if name in self.router.reference:
            return "reference"
        schema = name.split(".", 1)[0]
        if schema in ("pg_catalog", "information_schema"):
            return "catalog"
        return "unlisted"

    def _tables_route(self, stype: str, names: list[str], what: str, *,
                      is_write: bool = True, none_kind: str = "all") -> StaticTemplate:
        """DDL-like statements on a list of tables: configured tables live on every shard,
        unlisted ones on the default shard only; a mix cannot run anywhere."""
        router = self.router
        if not names:
            if none_kind == "all":
                return self._static(stype, f"{what} of the whole database -> all shards",
                                    kind="all", is_write=is_write, source="broadcast")
            return self._static(stype, f"{what} -> default shard", is_write=is_write)
        everywhere = [n for n in names if self._table_class(n) in ("sharded", "reference")]
        default = [n for n in names if n not in everywhere]
        if everywhere and default:
            return self._static(stype, "mixed tables", is_write=is_write, error=FeatureNotSupported(
                f"{what} mixes tables on every shard ({', '.join(everywhere)}) with tables on "
                f"the default shard only ({', '.join(default)})",
                hint="run it separately for each kind of table",
            ), tables=everywhere)
        if everywhere:
            kinds = {self._table_class(n) for n in everywhere}
            label = "sharded" if kinds == {"sharded"} else (
                "reference" if kinds == {"reference"} else "sharded/reference")
            return self._static(stype, f"{what} on {label} table {', '.join(everywhere)} -> "
                                "all shards", kind="all", shards=router.shards,
                                is_write=is_write, tables=everywhere, source="broadcast")
        return self._static(stype, f"{what} on {', '.join(default)} (not in the topology) -> "
                            "default shard", is_write=is_write)

    # ----------------------------------------------------------------- SET / SHOW

    def _setting(self, sc: Scan, start: int, end: int) -> StaticTemplate:
        words = sc.words()
        head = words[start]
        i = start + 1
        local = False
        if head == "set" and word_at(words, i) in ("session", "local"):
            local = word_at(words, i) == "local"
            i += 1
        if head == "set" and word_at(words, i) in ("transaction", "constraints"):
            return self._static("transaction", "SET TRANSACTION -> default shard (the session "
                                "keeps it on the transaction's shards)", source="transaction")
        name_parts: list[str] = []
        while i < end and sc.kinds[i] in (WORD, QIDENT):
            name_parts.append(sc.ident(i))
            if i + 1 < end and sc.is_punct(i + 1, "."):
                i += 2
                continue
            i += 1
            break
        name = ".".join(name_parts)
        if not name.startswith("shardwire."):
            stype = "show" if head == "show" else "set"
            return self._static(stype, f"{head.upper()} -> default shard (session settings "
                                "follow the client to every shard)")
        setting = name.split(".", 1)[1]
        stype = "shardwire_show" if head == "show" else "shardwire_set"
        if setting not in KNOWN_SETTINGS:
            return self._static(stype, f"unknown setting {name}", error=ShardwireError(
                f'unrecognized configuration parameter "{name}"', sqlstate="42704",
                hint="shardwire knows shardwire.shard and shardwire.shard_key"))
        value: str | None = None
        if head == "set":
            if i < end and (sc.is_punct(i, "=") or word_at(words, i) == "to"):
                i += 1
            if i >= end:
                return self._static(stype, "SET without a value", error=ShardwireError(
                    f"SET {name} needs a value", sqlstate="42601"))
            if word_at(words, i) == "default":
                value = None
            else:
                kind = sc.kinds[i]
                text = sc.text(i)
                if kind in (STR, ESTR):
                    value = literal_value(sc.sql, (sc.starts[i], sc.ends[i],
                                                   "e" if kind == ESTR else "s")).value
                elif kind in (WORD, NUM, QIDENT):
                    value = sc.ident(i) if kind != NUM else text
                else:
                    # a negative number: "-" then a number
                    if text == "-" and i + 1 < end and sc.kinds[i + 1] == NUM:
                        value = "-" + sc.text(i + 1)
                    else:
                        return self._static(stype, "bad value", error=ShardwireError(
                            f"invalid value for {name}", sqlstate="22023"))
            if setting == "shard" and value is not None:
                allowed = (*self.router.shards, "all")
                if value not in allowed:
                    return self._static(stype, "unknown shard", error=ShardwireError(
                        f"unknown shard {value!r} for {name}; expected one of "
                        f"{', '.join(allowed)}", sqlstate="22023"))
        verb = {"set": "SET", "reset": "RESET", "show": "SHOW"}[head]
        shown = "" if value is None else f" = {value!r}"
        return self._static(stype, f"{verb} {name}{shown} (handled by shardwire)",
                            source="setting", setting=Setting(setting, value, local))

    # ----------------------------------------------------------------- EXPLAIN

    def _explain(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        words = sc.words()
        i = start + 1
        analyze_ = False
        if sc.is_punct(i, "("):
            depth = 0
            options: list[str] = []
            while i < end:
                if sc.is_punct(i, "("):
                    depth += 1
                elif sc.is_punct(i, ")"):
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                else:
                    options.append(words[i])
                i += 1
            for k, w in enumerate(options):
                if w in ("analyze", "analyse"):
                    nxt = options[k + 1] if k + 1 < len(options) else ","
                    analyze_ = nxt not in ("false", "off", "0")
        else:
            while i < end and words[i] in ("analyze", "analyse", "verbose"):
                analyze_ = analyze_ or words[i] in ("analyze", "analyse")
                i += 1
        inner, lits = self._embedded(sc, i, end)

        def adjust(r: Route) -> Route:
            if r.error is not None:
                return dataclasses.replace(r, statement_type="explain")
            if len(r.shards) > 1:
                if analyze_:
                    return dataclasses.replace(
                        r, statement_type="explain", needs_merge=True, rewrites=None,
                        reason=r.reason + "; EXPLAIN ANALYZE on several shards needs merging")
                first = r.shards[0]
                return dataclasses.replace(
                    r, kind="shard", shards=(first,), statement_type="explain",
                    needs_merge=False, rewrites=None, rewrite_params=None, rewrite_rows=None,
                    reason=r.reason + f"; EXPLAIN shows the plan on {first}")
            return dataclasses.replace(r, statement_type="explain")

        t = InnerTemplate(inner, lits, "explain", adjust)
        if not analyze_:
            t.is_write = False
        return t, ()

    # ----------------------------------------------------------------- COPY

    def _copy(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        words = sc.words()
        i = start + 1
        router = self.router
        if sc.is_punct(i, "("):
            close = _matching(sc, i, end)
            if close < 0:
                return self._unparsed_range(sc, start, end, "copy", "unbalanced parentheses"), ()
            inner, lits = self._embedded(sc, i + 1, close)
            opts, err = _copy_options(sc, close + 2, end)
            if err:
                return self._static("copy", err, error=ShardwireError(err, sqlstate="42601")), ()

            def adjust(r: Route) -> Route:
                return dataclasses.replace(r, statement_type="copy", copy_options=opts,
                                           rewrites=None)

            return InnerTemplate(inner, lits, "copy", adjust), ()
        if word_at(words, i) == "binary":
            i += 1
        name, i = _qualified_name(sc, i, end)
        if name is None:
            return self._unparsed_range(sc, start, end, "copy", "no table name"), ()
        columns: list[str] | None = None
        if sc.is_punct(i, "("):
            close = _matching(sc, i, end)
            if close < 0:
                return self._unparsed_range(sc, start, end, "copy", "unbalanced parentheses"), ()
            columns = [sc.ident(k) for k in range(i + 1, close) if sc.kinds[k] in (WORD, QIDENT)]
            i = close + 1
        direction = word_at(words, i)
        if direction not in ("from", "to"):
            return self._unparsed_range(sc, start, end, "copy", "expected FROM or TO"), ()
        i += 1
        target = word_at(words, i)
        std = target in ("stdin", "stdout")
        if target == "program":
            i += 1
        opts, err = _copy_options(sc, i + 1, end)
        if err:
            return self._static("copy", err, error=ShardwireError(err, sqlstate="42601")), ()
        if direction == "from":
            std = std and target == "stdin"
        kind = self._table_class(name)
        is_write = direction == "from"
        if kind == "sharded":
            dist = router.dists[name]
            if not std:
                return self._static("copy", "server-side file", is_write=is_write, error=(
                    FeatureNotSupported(
                        f"COPY {direction.upper()} a server-side file or program with sharded "
                        f"table {name}: each shard would use its own file",
                        hint=f"use COPY {direction.upper()} "
                        f"{'STDIN' if is_write else 'STDOUT'}")), tables=[name]), ()
            if direction == "to":
                return self._static(
                    "copy", f"COPY from sharded table {name} -> all shards (streamed shard by "
                    "shard)", kind="all", tables=[name], source="broadcast",
                    copy_options=opts), ()
            if opts.format == "binary":
                return self._static("copy", "binary COPY", is_write=True, error=(
                    FeatureNotSupported(
                        f"binary COPY into sharded table {name} cannot be split by shard key",
                        hint="use FORMAT text or csv")), tables=[name]), ()
            key_index: int | None = None
            if columns is not None:
                if dist.key not in columns:
                    return self._static("copy", "no shard key", is_write=True, error=(
                        FeatureNotSupported(
                            f"COPY into sharded table {name} without its shard key {dist.key}",
                            hint=f"include {dist.key} in the column list")), tables=[name]), ()
                key_index = columns.index(dist.key)
            split = CopySplit(table=name, key_column=dist.key,
                              columns=tuple(columns) if columns is not None else None,
                              key_index=key_index, options=opts)
            return self._static(
                "copy", f"COPY into sharded table {name}: rows split by {dist.key} -> all shards",
                kind="all", is_write=True, tables=[name], source="key", copy_options=opts,
                copy_split=split), ()
        if kind == "reference":
            if direction == "from":
                if not std:
                    return self._static("copy", "server-side file", is_write=True, error=(
                        FeatureNotSupported(
                            f"COPY FROM a server-side file into reference table {name}",
                            hint="use COPY FROM STDIN")), tables=[name]), ()
                return self._static("copy", f"COPY into reference table {name} -> all shards",
                                    kind="all", is_write=True, tables=[name],
                                    source="broadcast", copy_options=opts), ()
            return _ReferenceCopy(self.router, name, opts), ()
        return self._static("copy", f"COPY {name} (not in the topology) -> default shard",
                            is_write=is_write, copy_options=opts), ()

    # ----------------------------------------------------------------- DDL

    def _ddl(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        words = sc.words()
        head = words[start]
        i = start + 1
        if head == "truncate":
            if word_at(words, i) == "table":
                i += 1
            return self._tables_route("ddl", _name_list(sc, i, end), "TRUNCATE"), ()
        if head in ("vacuum", "analyze", "analyse"):
            if sc.is_punct(i, "("):
                i = _matching(sc, i, end) + 1
            while word_at(words, i) in ("full", "freeze", "verbose", "analyze", "analyse",
                                      "skip_locked"):
                i += 1
            return self._tables_route("ddl", _name_list(sc, i, end), head.upper(),
                                      is_write=False), ()
        if head == "cluster":
            if word_at(words, i) == "verbose":
                i += 1
            names = _name_list(sc, i, end)[:1]
            return self._tables_route("ddl", names, "CLUSTER", is_write=False), ()
        if head == "reindex":
            if sc.is_punct(i, "("):
                i = _matching(sc, i, end) + 1
            what = word_at(words, i)
            i += 1
            if word_at(words, i) == "concurrently":
                i += 1
            if what == "table":
                return self._tables_route("ddl", _name_list(sc, i, end)[:1], "REINDEX"), ()
            if what == "schema":
                return self._schema_route(sc, i, end, "REINDEX SCHEMA"), ()
            if what == "index":
                return self._index_route("REINDEX INDEX"), ()
            return self._static("ddl", f"REINDEX {what.upper()} -> all shards", kind="all",
                                source="broadcast"), ()
        if head == "refresh":
            return self._static("ddl", "REFRESH MATERIALIZED VIEW -> default shard",
                                is_write=True), ()
        if head in ("create", "alter", "drop"):
            return self._create_alter_drop(sc, start, end)
        # COMMENT, GRANT, REVOKE, SECURITY LABEL, IMPORT, REASSIGN
        return self._by_names(sc, start, end, head.upper()), ()

    def _by_names(self, sc: Scan, start: int, end: int, what: str) -> StaticTemplate:
        named = self.named_tables(sc, start, end)
        if named:
            return self._static("ddl", f"{what} naming {', '.join(named)} -> all shards",
                                kind="all", is_write=True, tables=named, source="broadcast")
        return self._static("ddl", f"{what} names no sharded or reference table -> default "
                            "shard", is_write=True)

    def _index_route(self, what: str) -> StaticTemplate:
        if not self.router.config.tables:
            return self._static("ddl", f"{what} -> default shard", is_write=True)
        return self._static("ddl", f"{what}: an index name does not say its table -> all "
                            "shards (use IF EXISTS, or a /* shard: */ hint for an index on "
                            "an unlisted table)", kind="all", is_write=True,
                            source="broadcast")

    def _schema_route(self, sc: Scan, i: int, end: int, what: str) -> StaticTemplate:
        names = []
        words = sc.words()
        if word_at(words, i) == "if":
            i += 3 if word_at(words, i + 1) == "not" else 2
        while i < end and sc.kinds[i] in (WORD, QIDENT):
            if words[i] in ("cascade", "restrict", "authorization"):
                break
            names.append(sc.ident(i))
            i += 1
            if sc.is_punct(i, ","):
                i += 1
                continue
            break
        used = [n for n in names if n in self.router.schemas]
        if used:
            return self._static("ddl", f"{what} {', '.join(used)} holds tables of the topology "
                                "-> all shards", kind="all", is_write=True, source="broadcast")
        return self._static("ddl", f"{what} {', '.join(names)} -> default shard", is_write=True)

    def _create_alter_drop(self, sc: Scan, start: int, end: int
                           ) -> tuple[Any, tuple[KeyValue, ...]]:
        words = sc.words()
        head = words[start]
        i = start + 1
        verb = head.upper()
        while word_at(words, i) in ("or", "replace", "global", "local", "temp", "temporary",
                                  "unlogged", "unique", "materialized", "recursive",
                                  "foreign", "trusted", "procedural", "default", "constraint"):
            if word_at(words, i) == "default" and word_at(words, i + 1) == "privileges":
                break
            i += 1
        obj = word_at(words, i)
        i += 1
        if obj == "table":
            if head == "drop":
                if word_at(words, i) == "if":
                    i += 2
                return self._tables_route("ddl", _name_list(sc, i, end), "DROP TABLE"), ()
            if head == "alter" and word_at(words, i) == "all":
                return self._static("ddl", "ALTER TABLE ALL -> all shards", kind="all",
                                    is_write=True, source="broadcast"), ()
            if word_at(words, i) == "if":
                i += 3 if word_at(words, i + 1) == "not" else 2
            if word_at(words, i) == "only":
                i += 1
            name, j = _qualified_name(sc, i, end)
            if name is None:
                return self._unparsed_range(sc, start, end, "ddl", "no table name"), ()
            names = [name]
            if head == "create":
                # PARTITION OF parent / INHERITS (parent) / AS query
                for k in range(j, end):
                    if words[k] == "of" and k > 0 and words[k - 1] == "partition":
                        parent, _ = _qualified_name(sc, k + 1, end)
                        if parent:
                            names.append(parent)
                        break
                as_at = _top_level_word(sc, j, end, "as")
                if as_at is not None and head_of(sc, as_at + 1) in DML_HEADS:
                    return self._create_as(sc, as_at + 1, end, name, "CREATE TABLE ... AS")
            configured = [n for n in names if self._table_class(n) in ("sharded", "reference")]
            if configured:
                return self._static("ddl", f"{verb} TABLE on {'/'.join(configured)} (in the "
                                    "topology) -> all shards", kind="all", is_write=True,
                                    tables=configured, source="broadcast"), ()
            return self._static("ddl", f"{verb} TABLE {name} (not in the topology) -> default "
                                "shard", is_write=True), ()
        if obj == "index":
            if head == "create":
                on = _top_level_word(sc, i, end, "on")
                if on is None:
                    return self._unparsed_range(sc, start, end, "ddl", "CREATE INDEX without "
                                                "ON"), ()
                k = on + 1
                if word_at(words, k) == "only":
                    k += 1
                name, _ = _qualified_name(sc, k, end)
                return self._tables_route("ddl", [name] if name else [], "CREATE INDEX"), ()
            return self._index_route(f"{verb} INDEX"), ()
        if obj == "view":
            if head == "create":
                as_at = _top_level_word(sc, i, end, "as")
                name, _ = _qualified_name(sc, i, end)
                if as_at is not None:
                    return self._create_as(sc, as_at + 1, end, name or "?", "CREATE VIEW")
            return self._static("ddl", f"{verb} VIEW -> default shard", is_write=True), ()
        if obj == "schema":
            return self._schema_route(sc, i, end, f"{verb} SCHEMA"), ()
        if obj == "extension":
            return self._static("ddl", f"{verb} EXTENSION -> all shards (extensions are "
                                "installed on every shard)", kind="all", is_write=True,
                                source="broadcast"), ()
        # sequences, types, functions, triggers, policies, ...: by the tables they name
        return self._by_names(sc, start, end, f"{verb} {obj.upper()}"), ()

    def _create_as(self, sc: Scan, q_start: int, end: int, name: str, what: str
                   ) -> tuple[Any, tuple[KeyValue, ...]]:
        inner, lits = self._embedded(sc, q_start, end)
        router = self.router
        target = self._table_class(name) if name != "?" else "unlisted"

        def adjust(r: Route) -> Route:
            base = dict(statement_type="ddl", is_write=True, rewrites=None, needs_merge=False)
            if r.error is not None:
                return dataclasses.replace(r, **base)  # type: ignore[arg-type]
            if target in ("sharded", "reference"):
                return dataclasses.replace(r, kind="default", shards=(), **base,  # type: ignore[arg-type]
                                           source="error", error=FeatureNotSupported(
                    f"{what} into {name}, a table of the topology, is not supported",
                    hint=f"create {name}, then INSERT ... SELECT"))
            sharded = [t for t in r.tables if t in router.dists]
            if sharded and what == "CREATE VIEW":
                return dataclasses.replace(r, kind="default", shards=(), **base,  # type: ignore[arg-type]
                                           source="error", error=FeatureNotSupported(
                    f"a view over sharded table {', '.join(sharded)} would only see one "
                    "shard's rows", hint="query the sharded tables directly"))
            if r.shards != (router.default_shard,) and (sharded or r.needs_merge):
                return dataclasses.replace(r, kind="default", shards=(), **base,  # type: ignore[arg-type]
                                           source="error", error=FeatureNotSupported(
                    f"{what} {name} (not in the topology, so on the default shard) from data "
                    f"on {', '.join(r.shards)}",
                    hint="create the table, then copy the rows through the proxy"))
            return dataclasses.replace(r, kind="default" if r.shards == (router.default_shard,)
                                       else r.kind, reason=f"{what} {name}: " + r.reason,
                                       **base)  # type: ignore[arg-type]

        return InnerTemplate(inner, lits, "ddl", adjust), ()

    # ----------------------------------------------------------------- other

    def _lock(self, sc: Scan, start: int, end: int) -> StaticTemplate:
        words = sc.words()
        i = start + 1
        if word_at(words, i) == "table":
            i += 1
        names = _name_list(sc, i, end)
        t = self._tables_route("other", names, "LOCK", is_write=False)
        return t

    def _declare(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        at = _top_level_word(sc, start, end, "for")
        if at is None:
            return self._unparsed_range(sc, start, end, "other", "DECLARE without FOR"), ()
        inner, lits = self._embedded(sc, at + 1, end)

        def adjust(r: Route) -> Route:
            if r.error is None and (len(r.shards) > 1 or r.needs_merge):
                return dataclasses.replace(r, kind="default", shards=(), statement_type="other",
                                           source="error", error=FeatureNotSupported(
                    "a cursor over several shards is not supported",
                    hint="restrict the query to one shard key value"))
            return dataclasses.replace(r, statement_type="other")

        return InnerTemplate(inner, lits, "other", adjust), ()

    def _sql_prepare(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        at = _top_level_word(sc, start, end, "as")
        if at is None:
            return self._unparsed_range(sc, start, end, "other", "PREPARE without AS"), ()
        inner, lits = self._embedded(sc, at + 1, end)

        def adjust(r: Route) -> Route:
            if r.tables:
                return dataclasses.replace(r, kind="default", shards=(), statement_type="other",
                                           source="error", error=FeatureNotSupported(
                    f"SQL-level PREPARE of a statement on {', '.join(r.tables)} is not "
                    "supported (EXECUTE cannot be routed)",
                    hint="use protocol-level prepared statements (Parse/Bind)"))
            return dataclasses.replace(r, statement_type="other",
                                       reason="PREPARE -> " + r.reason)

        return InnerTemplate(inner, lits, "other", adjust), ()

    def _do(self, sc: Scan, start: int, end: int) -> StaticTemplate:
        named: list[str] = []
        for k in range(start + 1, end):
            text = sc.text(k)
            if sc.kinds[k] == DOLLAR:
                body = text[text.index("$", 1) + 1 : text.rindex("$", 0, len(text) - 1)]
                named += self.named_tables(scan(body))
            elif sc.kinds[k] in (STR, ESTR):
                named += self.named_tables(scan(text[1:-1].replace("''", "'")))
        if named:
            return self._static("other", "DO block", error=FeatureNotSupported(
                f"a DO block that names {', '.join(dict.fromkeys(named))} cannot be routed",
                hint="add a /* shard: NAME */ or /* shard: all */ hint comment"),
                tables=list(dict.fromkeys(named)))
        return self._static("other", "DO block names no sharded or reference table -> "
                            "default shard")


class _ReferenceCopy:
    """COPY reference_table TO STDOUT: from the session's reference shard."""

    statement_type = "copy"
    is_write = False
    first_dist = None
    uses_params = False

    def __init__(self, router: Router, name: str, opts: CopyOptions) -> None:
        self.router = router
        self.name = name
        self.opts = opts
        self.tables = (name,)

    def route(self, b: Binding) -> Route:
        shard = b.reference_shard or self.router.default_shard
        return Route(kind="shard", shards=(shard,), reason=f"COPY from reference table "
                     f"{self.name} -> {shard} (the session's reference shard)",
                     statement_type="copy", copy_options=self.opts, tables=self.tables,
                     source="reference")


# --------------------------------------------------------------------------- token helpers


def head_of(sc: Scan, i: int) -> str:
    if i >= len(sc.kinds):
        return ""
    if sc.kinds[i] == WORD:
        return sc.word(i)
    if sc.is_punct(i, "("):
        return "("
    return ""


def word_at(words: list[str], i: int) -> str:
    return words[i] if 0 <= i < len(words) else ""


def _matching(sc: Scan, i: int, end: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``i``; -1 if none."""
    depth = 0
    for k in range(i, end):
        if sc.kinds[k] != PUNCT:
            continue
        t = sc.text(k)
        if t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
            if depth == 0:
                return k
    return -1


def _top_level_word(sc: Scan, i: int, end: int, word: str) -> int | None:
    depth = 0
    for k in range(i, end):
        kind = sc.kinds[k]
        if kind == PUNCT:
            t = sc.text(k)
            if t == "(":
                depth += 1
            elif t == ")":
                depth -= 1
        elif kind == WORD and depth == 0 and sc.word(k) == word:
            return k
    return None


def _qualified_name(sc: Scan, i: int, end: int) -> tuple[str | None, int]:
    """``[schema.]table`` at token ``i`` as ``schema.table`` (folded; ``public`` default)."""
    parts: list[str] = []
    while i < end and sc.kinds[i] in (WORD, QIDENT):
        parts.append(sc.ident(i))
        if i + 1 < end and sc.is_punct(i + 1, "."):
            i += 2
            continue
        i += 1
        break
    if not parts:
        return None, i
    if len(parts) == 1:
        parts.insert(0, "public")
    return f"{parts[-2]}.{parts[-1]}", i


_NAME_LIST_STOP = frozenset({"cascade", "restrict", "restart", "continue", "in", "nowait",
                             "using", "where", "with"})


def _name_list(sc: Scan, i: int, end: int) -> list[str]:
    """``[ONLY] name [*] [(cols)], ...`` (TRUNCATE, DROP TABLE, VACUUM, LOCK)."""
    names: list[str] = []
    while i < end:
        if sc.word(i) == "only":
            i += 1
        if sc.word(i) in _NAME_LIST_STOP:
            break
        name, i = _qualified_name(sc, i, end)
        if name is None:
            break
        names.append(name)
        if sc.is_punct(i, "*"):
            i += 1
        if sc.is_punct(i, "("):
            close = _matching(sc, i, end)
            i = close + 1 if close > 0 else end
        if sc.is_punct(i, ","):
            i += 1
            continue
        break
    return names


def _copy_options(sc: Scan, i: int, end: int) -> tuple[CopyOptions, str | None]:
    """COPY options in the modern ``WITH (opt value, ...)`` or the legacy form."""
    words = sc.words()
    fmt = "text"
    values: dict[str, str | None] = {}
    header = False

    def value_at(k: int) -> str | None:
        if k >= end:
            return None
        kind = sc.kinds[k]
        if kind in (STR, ESTR):
            return literal_value(sc.sql, (sc.starts[k], sc.ends[k],
                                          "e" if kind == ESTR else "s")).value
        return sc.text(k).lower() if kind == WORD else sc.text(k)

    if word_at(words, i) == "with":
        i += 1
    if sc.is_punct(i, "("):
        close = _matching(sc, i, end)
        if close < 0:
            return CopyOptions(), "COPY: unbalanced options"
        k = i + 1
        while k < close:
            opt = words[k]
            k += 1
            val: str | None = None
            if k < close and not sc.is_punct(k, ","):
                if sc.is_punct(k, "("):  # FORCE_QUOTE (cols)
                    k = _matching(sc, k, close) + 1
                else:
                    val = value_at(k)
                    k += 1
            if opt == "format":
                fmt = (val or "text").lower()
            elif opt == "header":
                header = val is None or val.lower() not in ("false", "off", "0")
            elif opt in ("delimiter", "null", "quote", "escape", "encoding"):
                values[opt] = val
            while k < close and not sc.is_punct(k, ","):
                k += 1
            k += 1
    else:
        k = i
        while k < end:
            w = words[k]
            if w in ("binary", "csv"):
                fmt = w
            elif w == "header":
                header = True
            elif w in ("delimiter", "null", "quote", "escape", "encoding"):
                k += 1
                if word_at(words, k) == "as":
                    k += 1
                values[w] = value_at(k)
            elif w == "where":
                break
            k += 1
    if fmt not in ("text", "csv", "binary"):
        return CopyOptions(), f"COPY format {fmt!r} not recognized"
    csv = fmt == "csv"
    delimiter = values.get("delimiter") or ("," if csv else "\t")
    quote = values.get("quote") or '"'
    return CopyOptions(
        format=fmt,  # type: ignore[arg-type]
        delimiter=delimiter,
        null=values["null"] if values.get("null") is not None else ("" if csv else "\\N"),
        header=header,
        quote=quote,
        escape=values.get("escape") or quote,
        encoding=values.get("encoding"),
    ), None
