"""Small pure helpers the session uses to act on routes: statement verbs and merge shapes.

The planner (:mod:`proxy.sql`) decides where a statement goes; these helpers answer the
session's own questions about a statement it is about to send: is it a BEGIN, a COMMIT, a
savepoint command; can its cross-shard result be combined without the scatter-gather
engine (a plain ``count(*)``); which multi-statement strings end a transaction.
"""

from __future__ import annotations

import re
from typing import Literal

TxnVerb = Literal["begin", "commit", "rollback", "savepoint", "prepared", "other"]

_COMMENTS = r"(?:\s+|--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/)*"
_WORDS = re.compile(_COMMENTS + r"([A-Za-z_]+)(?:" + _COMMENTS + r"([A-Za-z_]+))?")
# A statement that ends (or prepares) a transaction, anywhere in a multi-statement string.
_ENDS_TXN = re.compile(
    r"(?:^|;)" + _COMMENTS + r"(?:commit|end|rollback|abort|prepare\s+transaction)\b",
    re.IGNORECASE)
# Statements that read no table: any shard answers them the same way.
FLOATING_SOURCES = frozenset({"anywhere", "transaction"})
FLOATING_TYPES = frozenset({"set", "show", "transaction", "empty"})


def txn_verb(sql: str) -> TxnVerb:
    """What a transaction-control statement does (the planner's statement_type is
    ``transaction``): begin, commit, rollback, savepoint (SAVEPOINT / RELEASE / ROLLBACK TO),
    prepared (two-phase commands) or other."""
    match = _WORDS.match(sql)
    if match is None:
        return "other"
    first = match.group(1).lower()
    second = (match.group(2) or "").lower()
    if first in ("begin", "start"):
        return "begin"
    if first in ("commit", "end"):
        return "prepared" if second == "prepared" else "commit"
    if first in ("rollback", "abort"):
        if second == "prepared":
            return "prepared"
        return "savepoint" if second == "to" else "rollback"
    if first in ("savepoint", "release"):
        return "savepoint"
    if first == "prepare":
        return "prepared"
    return "other"


def ends_transaction(sql: str) -> bool:
    """Whether a (multi-statement) query string commits or rolls back a transaction."""
    return _ENDS_TXN.search(sql) is not None


def in_order(rows_of: tuple[tuple[int, ...], ...]) -> object:
    """A row combiner for a split INSERT ... RETURNING: rows back in VALUES order.

    Shard i's RETURNING rows come in the order of ``rows_of[i]`` (original row numbers);
    when a shard returned another number of rows (ON CONFLICT DO NOTHING skipped some),
    the original order cannot be known and rows stay in shard order."""

    def combine(rows: list[list[bytes]]) -> list[bytes]:
        if any(len(r) != len(idx) for r, idx in zip(rows, rows_of, strict=False)):
            return [row for shard_rows in rows for row in shard_rows]
        placed: list[tuple[int, bytes]] = []
        for shard_rows, idx in zip(rows, rows_of, strict=False):
            placed.extend(zip(idx, shard_rows, strict=True))
        placed.sort(key=lambda pair: pair[0])
        return [row for _, row in placed]

    return combine


_READ_HEADS = ("SELECT", "WITH", "SHOW", "VALUES", "TABLE", "FETCH", "EXPLAI")
# The first six characters of most statements, decided without any string work.
_HEADS = {"SELECT": True, "select": True, "INSERT": False, "insert": False,
          "UPDATE": False, "update": False, "DELETE": False, "delete": False}


def is_read(sql: str) -> bool:
    """Whether a statement reads only, judged by its first word: the `operation` label of
    the request metrics (a WITH holding a data-modifying statement counts as a read here;
    the planner, not this, decides where statements run)."""
    known = _HEADS.get(sql[:6])
    if known is not None:
        return known
    return sql[:24].lstrip()[:6].upper().startswith(_READ_HEADS)


_READ_START = re.compile(r"\s*(?:(?:/\*.*?\*/|--[^\n]*\n)\s*)*(?:select|with|values|table)\b",
                         re.IGNORECASE | re.DOTALL)
_WRITES = re.compile(
    r"\b(?:insert|update|delete|merge|into|for\s+(?:no\s+key\s+)?update|for\s+(?:key\s+)?share"
    r"|nextval|setval|pg_advisory\w*|lo_\w+|txid_current|pg_current_xact_id\w*|set_config"
    r"|pg_notify|pg_try_advisory\w*)\b|;\s*\S|\brole\s*:\s*primary\b",
    re.IGNORECASE)


def replica_safe(sql: str) -> bool:
    """Whether a statement may run on a read replica: one SELECT (or WITH / VALUES / TABLE)
    that neither locks rows, nor writes through INTO or a data-modifying WITH, nor calls a
    function known to write (nextval, advisory locks, ...), and carries no
    ``/* role: primary */`` hint. Errs towards the primary: a word like "update" inside a
    string literal sends the statement to the primary too."""
    return _READ_START.match(sql) is not None and _WRITES.search(sql) is None


# Statements that change no data: not writes for read_your_writes (though SET, SHOW,
# transaction control ... are no replica reads either).
_CHANGES_NOTHING = re.compile(
    r"\s*(?:(?:/\*.*?\*/|--[^\n]*\n)\s*)*(?:select|with|values|table|show|set|reset|begin|start"
    r"|commit|end|rollback|abort|savepoint|release|discard|deallocate|prepare|execute"
    r"|listen|unlisten|fetch|close|declare|explain)\b", re.IGNORECASE | re.DOTALL)


def writes(sql: str) -> bool:
    """Whether a statement may change data, for `reads.read_your_writes` (a data-modifying
    WITH counts as no write here, as a SELECT calling a writing function does)."""
    return _CHANGES_NOTHING.match(sql) is None
