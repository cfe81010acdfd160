"""Owns the admin console: the virtual database ``admin.database`` (users in ``admin.users``).

A PgBouncer-style console whose answers are ordinary result sets, so psql shows them (see
COMMANDS). Simple query protocol only; anything else, or an unknown command, is an error
and the console goes on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from proxy.config import format_ranges
from proxy.errors import ShardwireError
from proxy.frontend.startup import ClientStream
from proxy.sql.route import explain
from proxy.wire import messages as m
from proxy.wire.framing import Framer

if TYPE_CHECKING:
    from proxy.server import Proxy

_TEXT = 25
_INT8 = 20
_FLOAT8 = 701
COMMANDS = ("SHOW SHARDS", "SHOW HEALTH", "SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS",
            "SHOW STATS", "SHOW STATS SHARDS", "SHOW STATS BUCKETS", "SHOW TOPOLOGY",
            "SHOW PLAN CACHE", "SHOW HOT KEYS", "SHOW ROUTE <sql>", "RELOAD",
            "PAUSE [shard]", "RESUME [shard]")
Columns = Sequence[tuple[str, int]]


def _result(columns: Columns, rows: Sequence[Sequence[object]], tag: str | None = None
            ) -> bytes:
    out = [m.row_description(columns)]
    for row in rows:
        out.append(m.data_row([None if v is None else _text(v).encode() for v in row]))
    out.append(m.command_complete(tag or f"SHOW {len(rows)}"))
    return b"".join(out)


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _ms(seconds: float, count: int) -> float | None:
    return round(seconds / count * 1000, 3) if count else None


# ----------------------------------------------------------------------------- commands
def show_shards(proxy: Proxy, _arg: str) -> bytes:
    cfg = proxy.config
    rows = []
    for s in cfg.shards:
        primary = proxy.primary_dsn(s.name)
        rows.append((s.name, f"{primary.host}:{primary.port}", primary.database,
                     len(s.replicas), "yes" if s.name == cfg.default_shard else "no",
                     sum(1 for b in cfg.sharding.assignment if b == s.name),
                     proxy.shard_state(s.name)))
    return _result([("shard", _TEXT), ("primary", _TEXT), ("database", _TEXT),
                    ("replicas", _INT8), ("default", _TEXT), ("buckets", _INT8),
                    ("state", _TEXT)], rows)


def show_health(proxy: Proxy, _arg: str) -> bytes:
    rows = []
    health = proxy.health
    if health is not None:
        now = time.monotonic()
        for e in health.endpoints():
            rows.append((e.shard, e.configured_role, e.address, "up" if e.up else "down",
                         None if e.in_recovery is None else ("yes" if e.in_recovery else "no"),
                         None if e.lag is None else round(e.lag, 3),
                         None if e.down_since is None else round(now - e.down_since, 1),
                         e.last_error))
    return _result([("shard", _TEXT), ("role", _TEXT), ("address", _TEXT), ("state", _TEXT),
                    ("in_recovery", _TEXT), ("lag_seconds", _FLOAT8),
                    ("down_seconds", _FLOAT8), ("last_error", _TEXT)], rows)


def show_pools(proxy: Proxy, _arg: str) -> bytes:
    rows = [(p.target.shard, p.target.role, p.target.user, f"{p.target.host}:{p.target.port}",
             p.size, p.active, len(p.idle), len(p.waiters), p.checkouts, p.connects,
             p.connect_errors, _pool_state(p.down is not None, p.paused is not None,
                                           p.closing))
            for p in list(proxy.pools.values())]
    return _result([("shard", _TEXT), ("role", _TEXT), ("user", _TEXT), ("address", _TEXT),
                    ("size", _INT8), ("active", _INT8), ("idle", _INT8), ("waiting", _INT8),
                    ("checkouts", _INT8), ("connects", _INT8), ("connect_errors", _INT8),
                    ("state", _TEXT)], rows)


def _pool_state(down: bool, paused: bool, closing: bool) -> str:
    return "draining" if closing else "down" if down else "paused" if paused else "ok"


def show_clients(proxy: Proxy, _arg: str) -> bytes:
    rows = []
    for pid, s in sorted(list(proxy.sessions.items())):
        held = ",".join(sorted(s.held))
        state = "waiting" if s._busy else "active" if s.queue else "idle"
        rows.append((pid, s.user, s.client_status().decode(), held or None, len(s.stmts),
                     state, len(s.queue)))
    return _result([("pid", _INT8), ("user", _TEXT), ("status", _TEXT),
                    ("shards_held", _TEXT), ("prepared", _INT8), ("state", _TEXT),
                    ("queued", _INT8)], rows)


def show_servers(proxy: Proxy, _arg: str) -> bytes:
    now = time.monotonic()
    rows = []
    for pool in list(proxy.pools.values()):
        idle = set(map(id, pool.idle))
        for conn in list(pool.conns):
            client = getattr(conn.sink, "pid", None)
            rows.append((pool.target.shard, pool.target.role, pool.target.user, conn.address,
                         conn.pid, "idle" if id(conn) in idle else "active", client,
                         conn.status.decode(), round(now - conn.created_at, 1)))
    return _result([("shard", _TEXT), ("role", _TEXT), ("user", _TEXT), ("address", _TEXT),
                    ("backend_pid", _INT8), ("state", _TEXT), ("client_pid", _INT8),
                    ("transaction", _TEXT), ("age_seconds", _FLOAT8)], rows)


def show_stats(proxy: Proxy, arg: str) -> bytes:
    what = arg.upper()
    if what == "SHARDS":
        return _stats_shards(proxy)
    if what == "BUCKETS":
        return _stats_buckets(proxy)
    if what:
        raise ShardwireError(f"unknown SHOW STATS {arg!r}", sqlstate="42601",
                             hint="SHOW STATS, SHOW STATS SHARDS or SHOW STATS BUCKETS")
    stats = proxy.stats
    rows = [("uptime_seconds", int(time.time() - proxy.started_at)),
            ("client_connections", len(proxy.sessions)),
            ("topology_version", proxy.topology_version),
            ("twophase_commits", stats.twophase_commits),
            ("twophase_recovered", stats.twophase_recovered),
            ("commit_prepared_retries", proxy.commit_retries)]
    rows += [(f"reloads_{k}", v) for k, v in sorted(stats.reloads.items())]
    rows += [(f"cross_shard_{k}", v) for k, v in sorted(stats.cross_shard.items())]
    rows += [(f"errors_{k}", v) for k, v in sorted(stats.errors.items())]
    return _result([("stat", _TEXT), ("value", _INT8)], rows)


def _stats_shards(proxy: Proxy) -> bytes:
    per: dict[str, dict[str, tuple[int, float]]] = {}
    for (shard, op), hist in proxy.stats.requests.children().items():
        per.setdefault(shard, {})[op] = (hist.count, hist.sum)
    keyed = proxy.stats.hotkeys.shard_totals()
    rows = []
    for shard in sorted(set(per) | set(proxy.config.shard_names)):
        reads, read_s = per.get(shard, {}).get("read", (0, 0.0))
        writes, write_s = per.get(shard, {}).get("write", (0, 0.0))
        rows.append((shard, reads, writes, _ms(read_s, reads), _ms(write_s, writes),
                     keyed.get(shard, 0)))
    return _result([("shard", _TEXT), ("reads", _INT8), ("writes", _INT8),
                    ("read_avg_ms", _FLOAT8), ("write_avg_ms", _FLOAT8),
                    ("keyed_statements", _INT8)], rows)


def _stats_buckets(proxy: Proxy) -> bytes:
    counts = proxy.stats.hotkeys.bucket_counts()
    assignment = proxy.config.sharding.assignment
    totals: dict[str, int] = {}
    for bucket, n in enumerate(counts):
        if bucket < len(assignment):
            totals[assignment[bucket]] = totals.get(assignment[bucket], 0) + n
    rows = []
    for bucket, n in enumerate(counts):
        if n and bucket < len(assignment):
            shard = assignment[bucket]
            rows.append((bucket, shard, n, round(100 * n / totals[shard], 2)))
    return _result([("bucket", _INT8), ("shard", _TEXT), ("statements", _INT8),
                    ("percent_of_shard", _FLOAT8)], rows)


def show_topology(proxy: Proxy, _arg: str) -> bytes:
    cfg = proxy.config
    rows: list[tuple[str, str, str]] = [
        ("version", str(proxy.topology_version), f"last reload: {proxy.last_reload}"),
        ("source", cfg.source, f"{cfg.sharding.buckets} buckets, default shard "
                               f"{cfg.default_shard}")]
    for s in cfg.shards:
        owned = cfg.sharding.buckets_of(s.name)
        rows.append(("shard", s.name, f"buckets {format_ranges(owned) or 'none'} "
                                      f"({len(owned)})"))
    for name, t in sorted(cfg.tables.items()):
        if t.is_reference:
            detail = "reference (every shard)"
        else:
            detail = f"{t.strategy} on {t.shard_key}" + (f" ({t.key_type})" if t.key_type
                                                         else "")
        rows.append(("table", name, detail))
    return _result([("kind", _TEXT), ("name", _TEXT), ("detail", _TEXT)], rows)


def show_plan_cache(proxy: Proxy, _arg: str) -> bytes:
    planner = proxy.planner
    rows = []
    if planner is not None:
        for cache, values in planner.cache_stats().items():
            rows += [(cache, k, v) for k, v in values.items()]
    return _result([("cache", _TEXT), ("stat", _TEXT), ("value", _INT8)], rows)


def show_hot_keys(proxy: Proxy, arg: str) -> bytes:
    n = int(arg) if arg.isdigit() else 20
    rows = [(k.key, k.shard, k.count, k.error, round(100 * k.share, 2))
            for k in proxy.stats.hotkeys.top(n)]
    return _result([("key", _TEXT), ("shard", _TEXT), ("statements", _INT8),
                    ("max_overcount", _INT8), ("percent_of_shard", _FLOAT8)], rows)


def show_route(proxy: Proxy, sql: str) -> bytes:
    if not sql or proxy.planner is None:
        raise ShardwireError("SHOW ROUTE needs a statement, and a topology with tables",
                             sqlstate="42601")
    route = proxy.planner.plan(sql)
    lines = explain(route).splitlines()
    if route.error is None and route.needs_merge:
        try:
            lines += ["merge plan:"] + [f"  {x}" for x in
                                        proxy.merge_plan(sql).describe().splitlines()]
        except ShardwireError as exc:
            lines.append(f"merge: refused, {exc.sqlstate}: {exc.message}")
    return _result([("route", _TEXT)], [(x,) for x in lines])


def reload(proxy: Proxy, _arg: str) -> bytes:
    ok, message = proxy.reload("admin RELOAD")
    if not ok:
        raise ShardwireError(message, sqlstate="F0000",
                             hint="fix the topology file; the running topology is unchanged")
    return _result([("result", _TEXT)], [(message,)], "RELOAD")


async def pause(proxy: Proxy, arg: str) -> bytes:
    rows = await proxy.pause(_shards(proxy, arg))
    return _result([("shard", _TEXT), ("state", _TEXT), ("active", _INT8)], rows, "PAUSE")


async def resume(proxy: Proxy, arg: str) -> bytes:
    rows = proxy.resume(_shards(proxy, arg))
    return _result([("shard", _TEXT), ("state", _TEXT), ("active", _INT8)], rows, "RESUME")


def _shards(proxy: Proxy, arg: str) -> list[str]:
    names = proxy.config.shard_names
    if not arg:
        return list(names)
    if arg not in names:
        raise ShardwireError(f"unknown shard {arg!r}", sqlstate="42704",
                             hint="one of " + ", ".join(names))
    return [arg]


Handler = Callable[["Proxy", str], bytes]
_SHOW: dict[str, Handler] = {
    "SHARDS": show_shards, "HEALTH": show_health, "POOLS": show_pools,
    "CLIENTS": show_clients, "SERVERS": show_servers, "STATS": show_stats,
    "TOPOLOGY": show_topology, "PLAN CACHE": show_plan_cache, "HOT KEYS": show_hot_keys,
}
_ASYNC: dict[str, Callable[[Proxy, str], Awaitable[bytes]]] = {"PAUSE": pause,
                                                               "RESUME": resume}


async def answer(proxy: Proxy, sql: str) -> bytes:
    """The result set (or error) for one console command."""
    text = sql.strip().rstrip(";").strip()
    words = text.split()
    verb = words[0].upper() if words else ""
    rest = text[len(words[0]):].strip() if words else ""
    if verb == "SHOW" and len(words) > 1:
        if words[1].upper() == "ROUTE":
            return show_route(proxy, rest[len(words[1]):].strip())
        for name, handler in _SHOW.items():
            parts = name.split()
            if [w.upper() for w in words[1:1 + len(parts)]] == parts:
                return handler(proxy, " ".join(words[1 + len(parts):]))
    elif verb == "RELOAD" and len(words) == 1:
        return reload(proxy, "")
    elif verb in _ASYNC and len(words) <= 2:
        return await _ASYNC[verb](proxy, words[1] if len(words) == 2 else "")
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
                    stream.write(await answer(proxy, sql) + m.READY_IDLE)
                except ShardwireError as exc:
                    stream.write(m.error_response("ERROR", exc.sqlstate, exc.message,
                                                  hint=exc.hint) + m.READY_IDLE)
            await stream.writer.drain()
        data = await stream.read()
        if not data:
            return
