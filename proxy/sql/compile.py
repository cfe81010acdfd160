"""Owns turning statement text into a routing template: classify, parse, analyse.

DML (SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, VALUES, TABLE) is normalised (see
:mod:`proxy.sql.lexer`), parsed once per normalised text with sqlglot, and analysed by
:mod:`proxy.sql.analyze`; the templates are cached by normalised text. Everything else is
classified from its tokens (:mod:`proxy.sql.commands`). Text sqlglot cannot parse becomes
an :class:`~proxy.sql.template.UnparsedTemplate`: never a guess.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

from proxy.errors import FeatureNotSupported
from proxy.sql.analyze import AnalysisError, analyze
from proxy.sql.commands import DDL_HEADS, TRANSACTION_HEADS, Commands, head_of, word_at
from proxy.sql.lexer import DML_HEADS, Scan, scan
from proxy.sql.route import Route
from proxy.sql.template import MultiTemplate, StaticTemplate, UnparsedTemplate, bind_literals
from proxy.topology.router import KeyValue, Router

__all__ = ["Compiler"]

_DIALECT = Dialect.get_or_raise("postgres")

# sqlglot logs a warning whenever it falls back to an opaque Command; the planner treats
# those statements itself, so the warning is noise.


class _CommandFallbackFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_CommandFallbackFilter())

# --------------------------------------------------------------------------- compiler


class Compiler(Commands):
    """Compiles statements for one topology; owns the normalised-text template cache."""

    def __init__(self, router: Router, unparsed: str = "default",
                 capacity: int = 4096) -> None:
        self.router = router
        self.unparsed = unparsed
        self.capacity = capacity
        self.templates: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.parses = 0

    # ----------------------------------------------------------------- DML by key

    def dml(self, key: str, head: str) -> Any:
        """The template of a normalised DML text (cached by the text)."""
        templates = self.templates
        t = templates.get(key)
        if t is not None:
            self.hits += 1
            templates.move_to_end(key)
            return t
        self.misses += 1
        t = self._parse_dml(key, head)
        templates[key] = t
        if len(templates) > self.capacity:
            templates.popitem(last=False)
        return t

    def _parse_dml(self, text: str, head: str) -> Any:
        self.parses += 1
        try:
            trees = [t for t in _DIALECT.parse(_for_sqlglot(text)) if t is not None]
        except (ParseError, TokenError) as e:
            return self._unparsed(text, _statement_type_of_head(head), _short(e))
        except Exception as e:  # sqlglot bugs must not take the proxy down
            return self._unparsed(text, _statement_type_of_head(head), f"parser error: {e}")
        if len(trees) != 1:
            return self._unparsed(text, _statement_type_of_head(head), "not one statement")
        tree = trees[0]
        stype = _statement_type_of_tree(tree)
        if stype is None or not _matches_head(tree, head):
            return self._unparsed(text, _statement_type_of_head(head),
                                  f"read as {type(tree).__name__}")
        if isinstance(tree, exp.Merge):
            return self._merge(tree, text)
        try:
            return analyze(tree, self.router, stype)
        except AnalysisError as e:
            return self._unparsed(text, stype, str(e))
        except RecursionError:
            return self._unparsed(text, stype, "statement nested too deeply")

    def _unparsed(self, text: str, statement_type: str, detail: str) -> UnparsedTemplate:
        return UnparsedTemplate(self.router, statement_type, detail, self.named_tables(scan(text)),
                                self.unparsed)

    # ----------------------------------------------------------------- any text

    def compile_text(self, sql: str) -> tuple[Any, tuple[KeyValue, ...]]:
        """The template and literal values of one raw query text (general path)."""
        sc = scan(sql)
        bounds = sc.statement_bounds()
        if not bounds:
            return StaticTemplate(Route(kind="default", shards=(self.router.default_shard,),
                                        reason="empty query -> default shard",
                                        statement_type="empty")), ()
        if len(bounds) == 1:
            return self.compile_range(sc, *bounds[0])
        parts = []
        for start, end in bounds:
            t, lits = self.compile_range(sc, start, end)
            text = sql[sc.starts[start] : sc.ends[end - 1]]
            parts.append((t, lits, text if len(text) <= 60 else text[:57] + "..."))
        return MultiTemplate(parts), ()

    def compile_range(self, sc: Scan, start: int, end: int) -> tuple[Any, tuple[KeyValue, ...]]:
        """Template and literals of the statement in tokens ``[start, end)``."""
        if sc.bad:
            return self._unparsed(sc.sql, "other", "unterminated quote or comment"), ()
        head = head_of(sc, start)
        if head in DML_HEADS:
            key, slots = sc.normalize(start, end, literals=True)
            t = self.dml(key, head)
            if isinstance(t, UnparsedTemplate) and slots:
                # the placeholders may be what sqlglot stumbled on: try the literals as written
                key2, _ = sc.normalize(start, end, literals=False)
                t2 = self.dml(key2, head)
                if not isinstance(t2, UnparsedTemplate):
                    return t2, ()
            return t, bind_literals(sc.sql, slots)
        words = sc.words()
        if head in TRANSACTION_HEADS or (head == "prepare" and word_at(words, start + 1) ==
                                         "transaction"):
            return self._static("transaction", "transaction control -> default shard "
                                "(the session keeps it on the transaction's shards)",
                                source="transaction"), ()
        if head in ("set", "reset", "show"):
            return self._setting(sc, start, end), ()
        if head == "explain":
            return self._explain(sc, start, end)
        if head == "copy":
            return self._copy(sc, start, end)
        if head in DDL_HEADS:
            return self._ddl(sc, start, end)
        if head in ("listen", "unlisten", "notify"):
            return self._static("other", f"{head.upper()} -> default shard"), ()
        if head == "discard":
            return self._static("set", "DISCARD -> default shard"), ()
        if head in ("checkpoint",):
            return self._static("other", "CHECKPOINT -> all shards", kind="all"), ()
        if head == "lock":
            return self._lock(sc, start, end), ()
        if head in ("deallocate", "load", "call"):
            return self._static("other", f"{head.upper()} -> default shard"), ()
        if head in ("fetch", "move", "close"):
            return self._static("other", f"{head.upper()} -> default shard (a cursor stays on "
                                "the shard of its DECLARE)"), ()
        if head == "declare":
            return self._declare(sc, start, end)
        if head == "prepare":
            return self._sql_prepare(sc, start, end)
        if head == "execute":
            return self._static("other", "EXECUTE of an SQL-level prepared statement -> "
                                "default shard (where PREPARE ran)"), ()
        if head == "do":
            return self._do(sc, start, end), ()
        return self._unparsed_range(sc, start, end, "other", f"unknown statement {head!r}"), ()

    def _merge(self, tree: exp.Merge, text: str) -> Any:
        target = tree.this
        using = tree.args.get("using")
        tkind = self._tree_table_class(target)
        names = [n for n in (_tree_table_name(target), _tree_table_name(using)) if n]
        configured = [n for n in names if self._table_class(n) in ("sharded", "reference")]
        ukind = self._tree_table_class(using)
        if tkind == "unlisted" and ukind in ("unlisted", "reference", "catalog", "opaque"):
            return self._static("merge", "MERGE into a table not in the topology -> default "
                                "shard", is_write=True)
        if tkind == "reference" and ukind in ("reference", "opaque"):
            return self._static("merge", "MERGE into reference table -> all shards", kind="all",
                                is_write=True, tables=configured, source="broadcast")
        return self._static("merge", "MERGE", is_write=True, tables=configured,
                            error=FeatureNotSupported(
                                f"MERGE with {', '.join(configured) or 'sharded data'} is not "
                                "supported yet",
                                hint="use INSERT ... ON CONFLICT, or add a /* shard: NAME */ "
                                "hint"))

    def _tree_table_class(self, t: exp.Expression | None) -> str:
        name = _tree_table_name(t)
        if name is None:
            return "opaque"
        return self._table_class(name)


def _tree_table_name(t: exp.Expression | None) -> str | None:
    if not isinstance(t, exp.Table) or not isinstance(t.this, exp.Identifier):
        return None
    name = t.this.this if t.this.quoted else t.this.this.lower()
    db = t.args.get("db")
    schema = (db.this if db.quoted else db.this.lower()) if isinstance(db, exp.Identifier) \
        else "public"
    return f"{schema}.{name}"


# Postgres syntax sqlglot 30 rejects but that does not matter for routing: removed from
# the text sqlglot parses (never from the text sent to Postgres).
_SQLGLOT_FIXUPS = (
    (re.compile(r"\boverriding\s+(?:system|user)\s+value\b", re.I), " "),
)


def _for_sqlglot(text: str) -> str:
    for pattern, repl in _SQLGLOT_FIXUPS:
        if pattern.search(text):
            text = pattern.sub(repl, text)
    return text


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.replace("\x1b[4m", "").replace("\x1b[0m", "")


_STATEMENT_TYPES: dict[type, str] = {
    exp.Select: "select", exp.Union: "select", exp.Intersect: "select", exp.Except: "select",
    exp.Values: "select", exp.Subquery: "select", exp.Insert: "insert", exp.Update: "update",
    exp.Delete: "delete", exp.Merge: "merge",
}


def _statement_type_of_tree(tree: exp.Expression) -> str | None:
    return _STATEMENT_TYPES.get(type(tree))


def _statement_type_of_head(head: str) -> str:
    return {"insert": "insert", "update": "update", "delete": "delete", "merge": "merge"}.get(
        head, "select" if head in ("select", "values", "table", "(") else "other")


def _matches_head(tree: exp.Expression, head: str) -> bool:
    if head == "with":
        return tree.args.get("with_") is not None or isinstance(tree, exp.Subquery)
    expected = {
        "select": (exp.Select, exp.SetOperation),
        "values": (exp.Values, exp.SetOperation, exp.Select),
        "table": (exp.Select, exp.SetOperation),
        "(": (exp.Select, exp.SetOperation, exp.Subquery, exp.Values),
        "insert": (exp.Insert,),
        "update": (exp.Update,),
        "delete": (exp.Delete,),
        "merge": (exp.Merge,),
    }.get(head)
    return expected is not None and isinstance(tree, expected)
