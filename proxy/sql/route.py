"""Owns the planner's answer: :class:`Route` (where a statement goes and why) and ``explain``.

A route is a value: frozen, comparable, cheap to log. ``reason`` is for people (logs,
``shardwire route``, SHOW ROUTE); ``source`` is its bounded form for metric labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.errors import ShardwireError

__all__ = [
    "CopyOptions",
    "CopySplit",
    "Route",
    "RouteKind",
    "Setting",
    "explain",
]

RouteKind = Literal["shard", "shards", "all", "default"]


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """The options of a COPY statement that matter for reading or writing its data."""

    format: Literal["text", "csv", "binary"] = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    header: bool = False  # True also for HEADER MATCH
    quote: str = '"'
    escape: str = '"'
    encoding: str | None = None


@dataclass(frozen=True, slots=True)
class CopySplit:
    """COPY ... FROM STDIN into a sharded table: how the session splits the rows by key.

    ``key_index`` is the shard key's position among the fields of a row: known when the
    statement lists its columns; ``None`` when it does not, and the session must look the
    column order up on a shard (:func:`proxy.sql.copy.column_order_sql`, then
    :func:`proxy.sql.copy.key_index_of`).
    Feed the CopyData payloads to :class:`proxy.sql.copy.CopySplitter`.
    """

    table: str
    key_column: str
    columns: tuple[str, ...] | None
    key_index: int | None
    options: CopyOptions


@dataclass(frozen=True, slots=True)
class Setting:
    """``SET/RESET/SHOW shardwire.<name>``: consumed by the proxy, never sent to Postgres.

    ``value`` is None for RESET, ``SET ... TO DEFAULT`` and SHOW.
    """

    name: str  # "shard" or "shard_key"
    value: str | None
    local: bool = False  # SET LOCAL: until the end of the transaction


@dataclass(frozen=True, slots=True)
class Route:
    """Where one statement goes.

    * ``kind``: ``shard`` (one shard chosen by key, hint or reference choice), ``shards``
      (several, not all), ``all`` (every shard), ``default`` (the default shard, because
      nothing sharded decided otherwise).
    * ``shards``: the shard names, in topology order.
    * ``reason``: which table, key, value, hint or fallback decided.
    * ``statement_type``: select, insert, update, delete, merge, ddl, copy, explain, set,
      show, transaction, shardwire_set, shardwire_show, other, multi (several statements
      of one Query), empty.
    * ``needs_merge``: a SELECT over several shards whose result needs combining (ORDER BY,
      aggregates, LIMIT, DISTINCT, GROUP BY, windows): reply 0A000 until scatter-gather.
    * ``rewrites``: a multi-row INSERT split by shard: ``(shard, sql)`` pairs to send
      instead of the original text; ``rewrite_params[i]`` lists, for the i-th rewrite, the
      original 0-based parameter index of each of its ``$1..$n``; ``rewrite_rows[i]`` the
      original 0-based VALUES row indexes it carries (to put RETURNING rows back in order).
    * ``error``: the statement must be rejected with this error (never sent anywhere;
      ``shards`` is then empty).
    * ``copy_options``/``copy_split``: for COPY (see :class:`CopySplit`).
    * ``setting``: for ``statement_type`` ``shardwire_set``/``shardwire_show``.
    * ``tables``: the configured (sharded or reference) tables the statement touches.
    * ``source``: bounded label for metrics: key, hint, session_hint, reference, broadcast,
      default, anywhere (reads no table: any shard gives the same answer), catalog,
      transaction, setting, error.
    """

    kind: RouteKind
    shards: tuple[str, ...]
    reason: str
    statement_type: str
    is_write: bool = False
    needs_merge: bool = False
    rewrites: tuple[tuple[str, str], ...] | None = None
    rewrite_params: tuple[tuple[int, ...], ...] | None = None
    rewrite_rows: tuple[tuple[int, ...], ...] | None = None
    error: ShardwireError | None = None
    copy_options: CopyOptions | None = None
    copy_split: CopySplit | None = None
    setting: Setting | None = None
    tables: tuple[str, ...] = ()
    source: str = "default"

    @property
    def shard(self) -> str | None:
        """The single shard, when the route has exactly one."""
        return self.shards[0] if len(self.shards) == 1 else None


def explain(route: Route) -> str:
    """A human description of a route (``shardwire route``, logs, tests)."""
    if route.error is not None:
        err = route.error
        lines = [f"error {err.sqlstate}: {err.message}"]
        if err.hint:
            lines.append(f"hint: {err.hint}")
        lines.append(f"statement: {route.statement_type}")
        lines.append(f"reason: {route.reason}")
        return "\n".join(lines)
    where = {
        "shard": "shard",
        "shards": "shards",
        "all": "all shards",
        "default": "default shard",
    }[route.kind]
    flags = [route.statement_type]
    if route.is_write:
        flags.append("write")
    lines = [f"route: {where} {', '.join(route.shards)} ({'; '.join(flags)})"]
    lines.append(f"reason: {route.reason}")
    if route.tables:
        lines.append(f"tables: {', '.join(route.tables)}")
    if route.needs_merge:
        lines.append("needs merge: yes (the merge engine combines the shards' results)")
    if route.rewrites:
        rows = route.rewrite_rows or ((),) * len(route.rewrites)
        for (shard, sql), row_idx in zip(route.rewrites, rows, strict=False):
            which = f" rows {','.join(str(i + 1) for i in row_idx)}" if row_idx else ""
            lines.append(f"rewrite for {shard}{which}: {sql}")
    if route.copy_split is not None:
        cs = route.copy_split
        key = f"field {cs.key_index + 1}" if cs.key_index is not None else "position unknown"
        lines.append(
            f"copy split: {cs.table} by {cs.key_column} ({key}), format {cs.options.format}"
            + (", header" if cs.options.header else "")
        )
    if route.setting is not None:
        st = route.setting
        lines.append(f"setting: shardwire.{st.name} = {st.value!r}")
    return "\n".join(lines)
