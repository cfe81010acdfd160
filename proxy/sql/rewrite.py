"""Owns the one SQL rewrite the planner makes: a multi-row INSERT split by shard.

The rewrite is made on the client's own text, not re-rendered from a syntax tree: each
per-shard statement is the original text with the VALUES list cut down to that shard's
rows, so functions, casts, comments, ON CONFLICT and RETURNING stay exactly as written
(sqlglot would re-render ``now()`` as ``CURRENT_TIMESTAMP`` and may normalise casts and
quoting). Parameters ``$n`` are renumbered densely per statement, in order of first
appearance, and ``rewrite_params`` says which original parameter each new one is.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.errors import InternalError
from proxy.sql.lexer import PARAM, PUNCT, WORD, scan

__all__ = ["InsertRows", "insert_rows", "split_insert"]


class InsertRows:
    """Where the VALUES rows of an INSERT sit in its text."""

    __slots__ = ("params", "prefix_end", "rows", "sql", "suffix_start")

    def __init__(self, sql: str, rows: list[tuple[int, int]], params: list[tuple[int, int, int]]
                 ) -> None:
        self.sql = sql
        self.rows = rows  # (start, end) of each "( ... )" row
        self.prefix_end = rows[0][0]
        self.suffix_start = rows[-1][1]
        self.params = params  # (start, end, number) of every $n


def insert_rows(sql: str) -> InsertRows:
    """Locate the VALUES rows of the (single) INSERT statement in ``sql``."""
    sc = scan(sql)
    kinds = sc.kinds
    n = len(kinds)
    depth = 0
    seen_insert = False
    values_at = -1
    for i in range(n):
        kind = kinds[i]
        if kind == PUNCT:
            t = sc.text(i)
            if t == "(":
                depth += 1
            elif t == ")":
                depth -= 1
        elif kind == WORD and depth == 0:
            w = sc.word(i)
            if w == "insert":
                seen_insert = True
            elif w == "values" and seen_insert:
                values_at = i
                break
    if values_at < 0:
        raise InternalError("INSERT split: no VALUES list found")
    rows: list[tuple[int, int]] = []
    i = values_at + 1
    while i < n and sc.is_punct(i, "("):
        depth = 0
        j = i
        while j < n:
            if kinds[j] == PUNCT:
                t = sc.text(j)
                if t == "(":
                    depth += 1
                elif t == ")":
                    depth -= 1
                    if depth == 0:
                        break
            j += 1
        if j >= n:
            raise InternalError("INSERT split: unbalanced VALUES row")
        rows.append((sc.starts[i], sc.ends[j]))
        i = j + 1
        if i < n and sc.is_punct(i, ","):
            i += 1
            continue
        break
    if not rows:
        raise InternalError("INSERT split: empty VALUES list")
    params = [(sc.starts[k], sc.ends[k], int(sc.text(k)[1:])) for k in range(n)
              if kinds[k] == PARAM]
    return InsertRows(sql, rows, params)


def split_insert(
    located: InsertRows, row_shards: Sequence[str], shard_order: Sequence[str]
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """One INSERT per shard: ``(rewrites, rewrite_params, rewrite_rows)`` (see
    :class:`proxy.sql.route.Route`), shards in ``shard_order``."""
    if len(row_shards) != len(located.rows):
        raise InternalError(
            f"INSERT split: {len(located.rows)} rows in the text, {len(row_shards)} analysed")
    by_shard: dict[str, list[int]] = {}
    for i, shard in enumerate(row_shards):
        by_shard.setdefault(shard, []).append(i)
    sql = located.sql
    rewrites: list[tuple[str, str]] = []
    params_out: list[tuple[int, ...]] = []
    rows_out: list[tuple[int, ...]] = []
    for shard in shard_order:
        idx = by_shard.get(shard)
        if not idx:
            continue
        spans = [(0, located.prefix_end)]
        for k in idx:
            spans.append(located.rows[k])
        spans.append((located.suffix_start, len(sql)))
        numbering: dict[int, int] = {}
        parts: list[str] = []
        for n_span, (start, end) in enumerate(spans):
            if 1 < n_span < len(spans) - 1:
                parts.append(", ")
            parts.append(_renumber(sql, start, end, located.params, numbering))
        rewrites.append((shard, "".join(parts)))
        params_out.append(tuple(old - 1 for old in numbering))
        rows_out.append(tuple(idx))
    return tuple(rewrites), tuple(params_out), tuple(rows_out)


def _renumber(sql: str, start: int, end: int, params: list[tuple[int, int, int]],
              numbering: dict[int, int]) -> str:
    out: list[str] = []
    pos = start
    for p_start, p_end, number in params:
        if p_start < start or p_end > end:
            continue
        new = numbering.setdefault(number, len(numbering) + 1)
        out.append(sql[pos:p_start])
        out.append(f"${new}")
        pos = p_end
    out.append(sql[pos:end])
    return "".join(out)
