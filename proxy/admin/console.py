"""Owns the admin console: the virtual database ``admin.database`` (users in ``admin.users``).

A PgBouncer-style console whose answers are ordinary result sets, so psql shows them:
``SHOW SHARDS``, ``SHOW POOLS``, ``SHOW CLIENTS``, ``SHOW STATS``, ``SHOW TOPOLOGY``,
``SHOW PLAN CACHE``, ``SHOW ROUTE <sql>``. Simple query protocol only; anything else is an
error (the session goes on).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.errors import ShardwireError
from proxy.frontend.startup import ClientStream
from proxy.sql.route import explain
from proxy.wire import messages as m
from proxy.wire.framing import Framer

if TYPE_CHECKING:
    from proxy.server import Proxy

_TEXT = 25
_INT8 = 20
COMMANDS = ("SHOW SHARDS", "SHOW POOLS", "SHOW CLIENTS", "SHOW STATS", "SHOW TOPOLOGY",
            "SHOW PLAN CACHE", "SHOW ROUTE <sql>")


def _result(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[object]],
            tag: str) -> bytes:
    out = [m.row_description(columns)]
    for row in rows:
        out.append(m.data_row([None if v is None else str(v).encode() for v in row]))
    out.append(m.command_complete(tag))
    return b"".join(out)


def answer(proxy: Proxy, sql: str) -> bytes:
    """The result set (or error) for one console command."""
    text = sql.strip().rstrip(";").strip()
    words = text.split(None, 2)
    head = " ".join(words[:2]).upper()
    cfg = proxy.config
    if head == "SHOW SHARDS":
        rows = [(s.name, f"{s.primary.host}:{s.primary.port}", s.primary.database,
                 len(s.replicas), "yes" if s.name == cfg.default_shard else "no",
                 sum(1 for b in cfg.sharding.assignment if b == s.name))
                for s in cfg.shards]
        return _result([("shard", _TEXT), ("primary", _TEXT), ("database", _TEXT),
                        ("replicas", _INT8), ("default", _TEXT), ("buckets", _INT8)],
                       rows, f"SHOW {len(rows)}")
    if head == "SHOW POOLS":
        rows = [(p.target.shard, p.target.role, p.target.user, p.size, p.active,
                 len(p.idle), len(p.waiters), p.checkouts, p.connects, p.connect_errors)
                for p in list(proxy.pools.values())]
        return _result([("shard", _TEXT), ("role", _TEXT), ("user", _TEXT), ("size", _INT8),
                        ("active", _INT8), ("idle", _INT8), ("waiting", _INT8),
                        ("checkouts", _INT8), ("connects", _INT8),
                        ("connect_errors", _INT8)], rows, f"SHOW {len(rows)}")
    if head == "SHOW CLIENTS":
        rows = []
        for pid, s in sorted(list(proxy.sessions.items())):
            held = ",".join(sorted(s.held))
            rows.append((pid, s.user, s.client_status().decode(), held or None,
                         len(s.stmts)))
        return _result([("pid", _INT8), ("user", _TEXT), ("status", _TEXT),
                        ("shards_held", _TEXT), ("prepared", _INT8)], rows,
                       f"SHOW {len(rows)}")
    if head == "SHOW STATS":
        stats = proxy.stats
        rows = [("uptime_seconds", int(time.time() - proxy.started_at)),
                ("client_connections", len(proxy.sessions)),
                ("twophase_commits", stats.twophase_commits),
                ("twophase_recovered", stats.twophase_recovered),
                ("commit_prepared_retries", proxy.commit_retries)]
        rows += [(f"cross_shard_{k}", v) for k, v in sorted(stats.cross_shard.items())]
        rows += [(f"errors_{k}", v) for k, v in sorted(stats.errors.items())]
        return _result([("stat", _TEXT), ("value", _INT8)], rows, f"SHOW {len(rows)}")
    if head == "SHOW TOPOLOGY":
        rows = [(name, t.strategy, t.shard_key, t.key_type)
                for name, t in sorted(cfg.tables.items())]
        return _result([("table", _TEXT), ("strategy", _TEXT), ("shard_key", _TEXT),
                        ("key_type", _TEXT)], rows, f"SHOW {len(rows)}")
    if head == "SHOW PLAN":
        planner = proxy.planner
        rows = []
        if planner is not None:
            for cache, values in planner.cache_stats().items():
                rows += [(cache, k, v) for k, v in values.items()]
        return _result([("cache", _TEXT), ("stat", _TEXT), ("value", _INT8)], rows,
                       f"SHOW {len(rows)}")
    if head == "SHOW ROUTE":
        if len(words) < 3 or proxy.planner is None:
            raise ShardwireError("SHOW ROUTE needs a statement, and a topology with tables",
                                 sqlstate="42601")
        route = proxy.planner.plan(words[2])
        lines = explain(route).splitlines()
        if route.error is None and route.needs_merge:
            try:
                lines += ["merge plan:"] + [f"  {x}" for x in
                                            proxy.merge_plan(words[2]).describe().splitlines()]
            except ShardwireError as exc:
                lines.append(f"merge: refused, {exc.sqlstate}: {exc.message}")
        return _result([("route", _TEXT)], [(x,) for x in lines], f"SHOW {len(lines)}")
    raise ShardwireError(f"unknown admin command: {text[:60]!r}", sqlstate="42601",
                         hint="try " + ", ".join(COMMANDS))


async def serve(proxy: Proxy, stream: ClientStream, rest: bytes) -> None:
    """The console's message loop (simple queries) until the client leaves."""
    framer = Framer()
    data = rest
    while True:
        if data:
            region, frames = framer.feed(data)
            for mtype, start, _end in frames:
                if mtype == m.TERMINATE:
                    return
                if mtype != m.QUERY:
                    err = ShardwireError("the admin console speaks the simple query protocol "
                                         "only", sqlstate="0A000")
                    stream.write(m.error_response("ERROR", err.sqlstate, err.message)
                                 + m.READY_IDLE)
                    continue
                sql, _ = m.read_cstr(region, start)
                try:
                    stream.write(answer(proxy, sql) + m.READY_IDLE)
                except ShardwireError as exc:
                    stream.write(m.error_response("ERROR", exc.sqlstate, exc.message,
                                                  hint=exc.hint) + m.READY_IDLE)
            await stream.writer.drain()
        data = await stream.read()
        if not data:
            return
