"""Owns two-phase commit across shards: transaction names, the decision log, recovery.

A transaction that wrote on several shards commits in three steps:

1. ``PREPARE TRANSACTION '<key>:<shard>'`` on every participant (the key is
   ``sw:<instance>:<random>``: the instance names the proxy that owns it);
2. the *decision* is made durable: a row ``<key>`` in ``shardwire.decisions`` on the default
   shard. When the default shard takes part, the row is inserted inside its transaction
   and its ``COMMIT PREPARED`` is the decision (one commit, no extra round trip); else the
   row is inserted on its own before any ``COMMIT PREPARED``;
3. ``COMMIT PREPARED`` everywhere else (retried until it succeeds).

Why a table on the default shard: the decision must survive the proxy (SIGKILL, a lost
host), be readable by any proxy instance at start, and commit atomically with one of the
participants; a Postgres table gives all three without a second store to run.

Recovery (at start, then every minute): every prepared transaction of a proxy run that has
ended is committed when its decision row exists, else rolled back (no decision = nothing
was committed). Several proxies share the shards (Kubernetes replicas with one ConfigMap
share even their instance name), so "ended" must be known, not guessed: each run holds a
session advisory lock on the default shard for as long as it lives (:func:`hold_run_lock`,
taken before its first PREPARE), and recovery resolves a run's transactions only after
taking that lock itself. A run that is alive (its lock is held) is left alone, whichever
instance it belongs to; a run whose proxy died (SIGKILL, a lost host) lost its lock with
its connection, and any proxy resolves it.
"""

from __future__ import annotations

import logging
import re
import secrets
import zlib

from proxy.backend.connection import ServerConnection
from proxy.wire import messages as m

log = logging.getLogger("shardwire.twophase")

SCHEMA_SQL = (
    "CREATE SCHEMA IF NOT EXISTS shardwire;"
    "CREATE TABLE IF NOT EXISTS shardwire.decisions "
    "(txn text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT now());"
    "GRANT USAGE ON SCHEMA shardwire TO PUBLIC;"
    "GRANT SELECT, INSERT, DELETE ON shardwire.decisions TO PUBLIC"
)


def instance_name(configured: str | None, host: str, port: int) -> str:
    """This proxy's name in the transactions it prepares."""
    if configured:
        return configured
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{host}-{port}")[:40]


def new_key(instance: str, boot: str) -> str:
    """``sw:<instance>:<boot>-<random>``: `boot` names this run of the proxy, so recovery
    (which resolves earlier runs' transactions) never touches one in flight now."""
    return f"sw:{instance}:{boot}-{secrets.token_hex(8)}"


def new_boot() -> str:
    return secrets.token_hex(4)


# pg_advisory_lock(RUN_LOCK_CLASS, run_lock_key(...)): the classid keeps clear of other users
RUN_LOCK_CLASS = 0x5357  # "SW"
_GID = re.compile(r"sw:([A-Za-z0-9_.-]{1,40}):([0-9a-f]+)-[0-9a-f]+:[A-Za-z0-9_.-]+")


def run_lock_key(instance: str, boot: str) -> int:
    """The advisory lock key (a signed int4) of one run of one instance."""
    return zlib.crc32(f"{instance}:{boot}".encode()) - (1 << 31)


async def hold_run_lock(server: ServerConnection, instance: str, boot: str) -> str | None:
    """Take this run's liveness lock on `server` (the default shard; keep the connection
    open for the life of the run). The error, if any."""
    _, error = await _query(server, f"SELECT pg_catalog.pg_advisory_lock({RUN_LOCK_CLASS}, "
                                    f"{run_lock_key(instance, boot)})")
    return error


def gid(key: str, shard: str) -> str:
    return f"{key}:{shard}"


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def record_sql(key: str) -> str:
    return f"INSERT INTO shardwire.decisions (txn) VALUES ({quote(key)})"


async def _query(server: ServerConnection, sql: str) -> tuple[list[list[str | None]], str | None]:
    """Rows (text) and the first error message of a query on a detached server."""
    rows: list[list[str | None]] = []
    error = None
    for mtype, body in await server.run_until_ready(sql):
        if mtype == m.DATA_ROW:
            rows.append(m.decode_data_row(body))
        elif mtype == ord("E") and error is None:
            fields = body.split(b"\x00")
            error = next((f[1:].decode() for f in fields if f[:1] == b"M"), "error")
    return rows, error


async def check_prepared_slots(server: ServerConnection) -> str | None:
    """A warning when the shard cannot PREPARE TRANSACTION (max_prepared_transactions 0)."""
    rows, error = await _query(server, "SHOW max_prepared_transactions")
    if error is None and rows and rows[0][0] == "0":
        return (f'shard "{server.shard}" has max_prepared_transactions = 0: transactions '
                "that write on several shards will fail to commit; set it (e.g. to "
                "max_connections) and restart that Postgres, or use transactions.mode: "
                "best_effort")
    return None


async def ensure_schema(server: ServerConnection) -> str | None:
    """Create the decision log on the default shard; the error, if any."""
    _, error = await _query(server, SCHEMA_SQL)
    return error


async def recover(instance: str, servers: dict[str, ServerConnection],
                  default_shard: str, boot: str) -> tuple[int, int]:
    """Resolve the prepared transactions of proxy runs that have ended, on `servers`
    (shard -> a detached connection): commit those with a decision, roll back the others.
    Runs still alive (their lock is held; this one's included) are skipped. Returns
    (committed, rolled back)."""
    default = servers.get(default_shard)
    if default is None:
        raise RuntimeError(f"recovery needs the default shard {default_shard!r}")
    runs: dict[tuple[str, str], dict[str, list[str]]] = {}  # run -> shard -> gids
    everything: set[str] = set()  # keys still prepared somewhere
    for shard, server in servers.items():
        rows, error = await _query(
            server, "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE gid LIKE 'sw:%' "
            "AND database = current_database()")
        if error is not None:
            raise RuntimeError(f'shard "{shard}": {error}')
        for (g,) in rows:
            match = _GID.fullmatch(g or "")
            if match is None:
                continue
            everything.add(g.rsplit(":", 1)[0])  # type: ignore[union-attr]
            run = (match.group(1), match.group(2))
            if run != (instance, boot):
                runs.setdefault(run, {}).setdefault(shard, []).append(g)  # type: ignore[arg-type]
    committed = rolled_back = 0
    for (run_instance, run_boot), found in sorted(runs.items()):
        key = run_lock_key(run_instance, run_boot)
        rows, error = await _query(default, "SELECT pg_catalog.pg_try_advisory_lock("
                                            f"{RUN_LOCK_CLASS}, {key})")
        if error is not None:
            raise RuntimeError(f'run lock on "{default_shard}": {error}')
        if not rows or rows[0][0] != "t":
            log.debug("run %s:%s is alive: its prepared transactions are its own",
                      run_instance, run_boot)
            continue
        try:
            c, r = await _resolve(found, servers, default, default_shard)
            committed += c
            rolled_back += r
        finally:
            await _query(default, f"SELECT pg_catalog.pg_advisory_unlock({RUN_LOCK_CLASS}, "
                                  f"{key})")
    # forget old decisions nothing prepared refers to any more
    keep = ", ".join(quote(k) for k in sorted(everything)) or "NULL"
    _, error = await _query(
        default, "DELETE FROM shardwire.decisions WHERE decided_at < now() - interval "
        f"'1 hour' AND txn NOT IN ({keep})")
    if error is not None:
        log.warning("could not prune the decision log: %s", error)
    return committed, rolled_back


async def _resolve(found: dict[str, list[str]], servers: dict[str, ServerConnection],
                   default: ServerConnection, default_shard: str) -> tuple[int, int]:
    """Commit or roll back one ended run's prepared transactions (shard -> gids)."""
    keys = {g.rsplit(":", 1)[0] for gids in found.values() for g in gids}
    listed = ", ".join(quote(k) for k in sorted(keys))
    rows, error = await _query(
        default, f"SELECT txn FROM shardwire.decisions WHERE txn IN ({listed})")
    if error is not None:
        raise RuntimeError(f'decision log on "{default_shard}": {error}')
    decided = {r[0] for r in rows if r[0] is not None}
    committed = rolled_back = 0
    for shard, gids in found.items():
        server = servers[shard]
        for g in gids:
            commit = g.rsplit(":", 1)[0] in decided
            verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
            _, error = await _query(server, f"{verb} {quote(g)}")
            if error is not None and "does not exist" in error:
                continue  # resolved meanwhile by another proxy (it held the run's lock)
            if error is not None:
                raise RuntimeError(f'{verb} {g} on shard "{shard}": {error}')
            log.warning("recovered in-doubt transaction %s on shard %s: %s", g, shard,
                        "committed" if commit else "rolled back")
            if commit:
                committed += 1
            else:
                rolled_back += 1
    return committed, rolled_back
