"""Statements that run on several shards at once, for one client session.

The session's single-shard path relays frames through callbacks; a statement whose route
names several shards runs here instead, as a task, with the client's socket paused: the
session borrows (or reuses, inside a transaction) a server per shard, detaches them, brings
each up to the session (settings, the open transaction), sends the statement and merges the
answers with :func:`proxy.exec.scatter.gather`. Used for reads that need no merge (rows of
each shard in turn), plain ``count(*)`` sums, writes to reference tables, DDL broadcast,
multi-row INSERTs split per shard, COPY in both directions, and the end of a transaction
that spans shards.

Outside a transaction, a data-changing statement on several shards is wrapped in
BEGIN/COMMIT on each shard and rolled back everywhere if any shard fails, so only the
final COMMITs can leave it partly applied (two-phase commit closes that gap later).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from proxy.backend.connection import ServerConnection
from proxy.errors import FeatureNotSupported, InternalError, ProtocolViolation, ShardwireError
from proxy.exec import twophase
from proxy.exec.merge import engine
from proxy.exec.merge.engine import Request
from proxy.exec.scatter import HIDDEN, RowCombiner, Step, gather
from proxy.exec.shard_errors import shard_error, shard_error_message
from proxy.frontend.routing import in_order
from proxy.frontend.settings import parse_tracked, sync_sql
from proxy.frontend.statements import split_statements
from proxy.sql.copy import CopySplitter, column_order_sql, key_index_of
from proxy.sql.merge import MergePlan
from proxy.sql.route import Route
from proxy.wire import messages as m
from proxy.wire.framing import Frame

if TYPE_CHECKING:
    from proxy.backend.pool import Pool
    from proxy.frontend.session import ClientSession

log = logging.getLogger("shardwire.fanout")

Held = list[tuple[ServerConnection, "Pool"]]
_WRAPPED_WRITES = frozenset({"insert", "update", "delete", "merge", "copy"})
_BATCH_TYPES = frozenset({m.BIND, m.DESCRIBE, m.EXECUTE, m.CLOSE, m.FLUSH, m.SYNC})


# ---------------------------------------------------------------------- entry points
async def statement(session: ClientSession, route: Route, sql: str, region: bytes,
                    frames: list[Frame], index: int, simple: bool) -> None:
    """Run the statement of frame `index` (a Query, or a Bind up to its Sync) on
    `route.shards` and answer the client with one merged response."""
    resume = index + 1
    simple_answer = simple
    session.proxy.stats.cross_shard[_query_type(route)] += 1
    if not simple:
        batch = _extended_batch(session, route, region, frames, index)
        if isinstance(batch, ShardwireError):
            session._busy = False
            session.reject(batch, simple=False)
            session.process(region, frames, resume)
            session._after_async()
            return
        resume = index + len(batch)

    async def body(servers: Held) -> bool:
        if not simple:
            await _extended(session, servers, batch)
            return False
        if route.statement_type == "copy" and route.is_write:
            return await _copy_in(session, route, sql, servers, region, frames, resume)
        await _query(session, route, sql, servers)
        return False

    await _run(session, route.shards, body, region, frames, resume, simple_answer)


async def end_transaction(session: ClientSession, parts: list[ServerConnection], sql: str,
                          verb: str, region: bytes, frames: list[Frame], index: int, *,
                          shape: list[int] | None = None, implicit: bool = False) -> None:
    """COMMIT or ROLLBACK a transaction with several participants.

    A COMMIT of a failed transaction rolls back everywhere (Postgres answers it with
    ROLLBACK). With two-phase commit (the default) the writers PREPARE, the decision is
    recorded, then COMMIT PREPARED; with best_effort participants commit one by one.
    `shape`: the statement came as extended-protocol messages (their types, Bind through
    Sync), answered in kind. `implicit`: the client's Sync of a batch spread over shards;
    only its ReadyForQuery (and any error) is the client's."""
    if implicit:
        sql = "COMMIT"

    async def body(servers: Held) -> bool:
        failed = any(server.status == b"E" for server, _ in servers)
        text = sql if verb == "commit" and not failed else "ROLLBACK"
        had_pending = bool(session.pending)
        tags: list[bytes] = []
        error: bytes | None = None
        if (verb == "commit" and text == sql and session.proxy.two_phase
                and len(servers) > 1 and not _CHAIN.search(sql)):
            writers = await _writers([s for s, _ in servers])
            if len(writers) > 1:  # else a plain COMMIT everywhere is atomic enough
                error = await _two_phase_commit(session, [s for s, _ in servers], writers)
                tags.append(b"COMMIT" if error is None else b"ROLLBACK")
                if error is not None:
                    text = "ROLLBACK"
        for server, _ in servers if not tags else ():  # one after another
            answer = await _run_query(server, text if error is None else "ROLLBACK")
            if answer.error is not None and error is None:
                error = _shard_error_bytes(answer.error, server.shard)
            elif answer.error is None and answer.tag is not None and error is None:
                tags.append(answer.tag)
            for notice in answer.notices:
                session.write(notice)
        if implicit:
            session.implicit_txn = False
            if error is not None:
                session.write(error)
        else:
            _answer(session, shape, error, tags[0] if tags else None)
        if text == sql and error is None:
            session._commit_settings()
        else:
            session.pending.clear()
        session.savepoints.clear()
        session.begin_sql = None
        session.cursors.clear()
        if had_pending:  # SETs of this transaction ran on some of them: resync next time
            for server, _ in servers:
                server.settings.clear()
                server.params.clear()
        return False

    held = [(server, session.held[server.shard][1]) for server in parts]
    await _run(session, [s.shard for s in parts], body, region, frames,
               index + (len(shape) if shape else 1), True, servers=held)


_CHAIN = re.compile(r"\bchain\b", re.IGNORECASE)


def _crash_point(name: str) -> None:
    """Fault injection for the recovery tests: SHARDWIRE_TEST_CRASH=<name> kills the proxy
    there, as SIGKILL would (no cleanup, nothing flushed)."""
    if os.environ.get("SHARDWIRE_TEST_CRASH") == name:
        log.error("SHARDWIRE_TEST_CRASH=%s: exiting now", name)
        os._exit(137)


async def _writers(conns: list[ServerConnection]) -> list[ServerConnection]:
    """The participants whose part of the transaction wrote something (it has an xid)."""
    out = []
    for server in conns:
        answer = await _run_query(server, "SELECT pg_catalog.pg_current_xact_id_if_assigned() "
                                          "IS NOT NULL")
        if answer.error is not None or answer.column(0) != ["f"]:
            out.append(server)  # unknown: treat it as a writer
    return out


async def _two_phase_commit(session: ClientSession, conns: list[ServerConnection],
                            writers: list[ServerConnection]) -> bytes | None:
    """Read-only parts COMMIT; the writers PREPARE, the decision is made durable, then
    COMMIT PREPARED (proxy/exec/twophase). Returns the error for the client (then every
    participant was rolled back), or None."""
    proxy = session.proxy
    default = proxy.config.default_shard
    problem = await proxy.hold_run_lock()  # before any PREPARE: see twophase.py
    if problem is not None:
        await _rollback_all(conns, [])
        return m.error_response(
            "ERROR", "08006", "cannot commit a transaction that wrote on several shards: "
            f"{problem}", hint="the default shard keeps the two-phase commit log; the "
            "transaction was rolled back everywhere")
    key = twophase.new_key(proxy.instance, proxy.boot)
    for server in conns:
        if server not in writers:
            await _run_query(server, "COMMIT")  # read nothing to undo
    conns = writers
    first = next((s for s in conns if s.shard == default), None)
    order = ([first] if first is not None else []) + [s for s in conns if s is not first]
    if first is not None:  # the decision commits with the default shard's own part
        answer = await _run_query(first, twophase.record_sql(key))
        if answer.error is not None:
            await _rollback_all(order, [])
            return _shard_error_bytes(answer.error, first.shard)
    prepared: list[ServerConnection] = []
    for server in order:
        answer = await _run_query(server, "PREPARE TRANSACTION "
                                  + twophase.quote(twophase.gid(key, server.shard)))
        if answer.error is not None or answer.tag == b"ROLLBACK":
            await _rollback_all(order, prepared, key)
            if answer.error is not None:
                return _shard_error_bytes(answer.error, server.shard)
            return m.error_response("ERROR", "40000", f'shard "{server.shard}" rolled back '
                                    "its part of the transaction at PREPARE")
        prepared.append(server)
    _crash_point("after_prepare")
    if os.environ.get("SHARDWIRE_TEST_CRASH") == "hang_after_prepare":
        await asyncio.sleep(3600)  # fault injection: alive, in doubt, holding its run lock
    if first is None:
        error = await _record_decision(session, key)
        if error is not None:
            await _rollback_all(order, prepared, key)
            return error
        rest = order
    else:
        answer = await _run_query(first, "COMMIT PREPARED "
                                  + twophase.quote(twophase.gid(key, first.shard)))
        if answer.error is not None:
            # the outcome is in the decision log (and recovery): unknown to us right now
            return m.error_response(
                "ERROR", "08007", "the commit's outcome is unknown: the decision could not "
                f"be confirmed on shard \"{first.shard}\"",
                hint="shardwire's recovery commits or rolls back the prepared parts; check "
                     "the data before retrying")
        rest = order[1:]
    _crash_point("after_decision")
    proxy.stats.twophase_commits += 1
    for server in rest:
        name = twophase.gid(key, server.shard)
        answer = await _run_query(server, "COMMIT PREPARED " + twophase.quote(name))
        if answer.error is not None:  # committed by decision: finish it in the background
            log.warning("COMMIT PREPARED %s on %s failed (%s); retrying", name,
                        server.shard, m.decode_fields(answer.error[5:]).get("M"))
            proxy.spawn(_retry_commit(session, server.shard, name))
    return None


async def _record_decision(session: ClientSession, key: str) -> bytes | None:
    """The decision row on the default shard when it took no part (autocommit)."""
    proxy = session.proxy
    pool = proxy.pool_for(proxy.config.default_shard, session.user)
    server = await pool.acquire()
    try:
        answer = await _run_query(server, twophase.record_sql(key))
    finally:
        pool.release(server, reusable=server.status == b"I" and not server.closed)
    if answer.error is not None:
        return _shard_error_bytes(answer.error, server.shard)
    return None


async def _rollback_all(order: list[ServerConnection], prepared: list[ServerConnection],
                        key: str = "") -> None:
    for server in order:
        if server in prepared:
            await _run_query(server, "ROLLBACK PREPARED "
                             + twophase.quote(twophase.gid(key, server.shard)))
        elif server.status != b"I":
            await _run_query(server, "ROLLBACK")


async def _retry_commit(session: ClientSession, shard: str, name: str) -> None:
    """COMMIT PREPARED until it succeeds (the decision is recorded: it must commit)."""
    proxy = session.proxy
    delay = 0.1
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
        proxy.commit_retries += 1
        try:
            pool = proxy.pool_for(shard, session.user)
            server = await pool.acquire()
        except Exception as exc:  # the shard is down: try again later
            log.warning("COMMIT PREPARED %s: %s", name, exc)
            continue
        try:
            answer = await _run_query(server, "COMMIT PREPARED " + twophase.quote(name))
        finally:
            pool.release(server, reusable=server.status == b"I" and not server.closed)
        if answer.error is None or m.decode_fields(answer.error[5:]).get("C") == "42704":
            log.info("COMMIT PREPARED %s on %s done after retries", name, shard)
            return  # 42704: already resolved (by recovery)


async def on_participants(session: ClientSession, parts: list[ServerConnection], sql: str,
                          region: bytes, frames: list[Frame], index: int, *,
                          shape: list[int] | None = None) -> None:
    """SAVEPOINT / RELEASE / ROLLBACK TO on every participant of the transaction."""

    async def body(servers: Held) -> bool:
        error: bytes | None = None
        tag: bytes | None = None
        for server, _ in servers:
            answer = await _run_query(server, sql)
            if answer.error is not None and error is None:
                error = _shard_error_bytes(answer.error, server.shard)
            tag = tag or answer.tag
        _answer(session, shape, error, tag)
        if error is None and tag is not None:
            changes = deque(c for c in map(parse_tracked, split_statements(sql))
                            if c is not None)
            session._on_command_complete(tag, changes)
        return False

    held = [(server, session.held[server.shard][1]) for server in parts]
    await _run(session, [s.shard for s in parts], body, region, frames,
               index + (len(shape) if shape else 1), True, servers=held)


def extended_shape(region: bytes, frames: list[Frame], index: int) -> list[int] | ShardwireError:
    """The message types from the Bind at `index` through the next Sync, for a transaction
    command the proxy runs on several shards and answers itself."""
    shape: list[int] = []
    for i in range(index, len(frames)):
        mtype, start, _ = frames[i]
        if mtype not in _BATCH_TYPES or (mtype == m.BIND and i != index) or (
                (mtype == m.DESCRIBE or mtype == m.CLOSE) and region[start] == ord("S")):
            break
        shape.append(mtype)
        if mtype == m.SYNC:
            return shape
    return FeatureNotSupported(
        "a transaction command for several shards must arrive with its Execute and Sync, "
        "with no other statement in between")


def _answer(session: ClientSession, shape: list[int] | None, error: bytes | None,
            tag: bytes | None) -> None:
    """Answer a command the proxy ran itself: its CommandComplete (or error), preceded in
    the extended protocol by what the client's Bind and Describe expect."""
    if shape is not None:
        for mtype in shape:
            if mtype == m.BIND:
                session.write(m.BIND_COMPLETE_MSG)
            elif mtype == m.DESCRIBE:
                session.write(m.NO_DATA_MSG)
            elif mtype == m.EXECUTE:
                break
    if error is not None:
        session.write(error)
    elif tag is not None:
        session.write(m.message(m.COMMAND_COMPLETE, tag + b"\x00"))


# ---------------------------------------------------------------------- the task frame
async def _run(session: ClientSession, shards: Sequence[str],
               body: Callable[[Held], Awaitable[bool]], region: bytes, frames: list[Frame],
               resume: int, simple: bool, servers: Held | None = None) -> None:
    """Borrow the servers, run `body`, answer errors, give the servers back (unless `body`
    handed them to a COPY in progress), then go on with the client's next frames."""
    kept = broken = False
    try:
        if servers is None:
            servers = await _borrow(session, shards)
        else:
            _detach(session, servers)
        await _bring_up(session, servers)
        kept = await body(servers)
    except ShardwireError as exc:  # raised once the servers' answers were read
        session.send_error(exc)
        if not simple:
            session.skipping = True
    except Exception as exc:  # a lost shard or a bug: what the servers still owe is unknown
        broken = True
        if servers is not None:
            _give_back(session, servers, broken=True)
        session._end_with(InternalError(
            f"cross-shard statement failed: {type(exc).__name__}: {exc}"))
    finally:
        if not kept and not broken and servers is not None:
            _give_back(session, servers)
    if not kept and not session.closed and simple:
        session.write(m.ready_for_query(session.client_status()))
    _go_on(session, region, frames, resume)


def _go_on(session: ClientSession, region: bytes, frames: list[Frame], index: int) -> None:
    """A multi-shard step is over: handle the client's frames from `index` on, then what
    it sent meanwhile."""
    session._busy = False
    if session.closed:
        return
    try:
        session.process(region, frames, index)
    except Exception as exc:
        session._end_with(exc)
    session._after_async()


async def _borrow(session: ClientSession, shards: Sequence[str]) -> Held:
    servers: Held = []
    for shard in shards:
        held = session.held.get(shard)
        if held is None:
            pool = None
            if session.want_replica and not session.in_transaction():  # a read: a replica
                pool = session.proxy.replica_pool(shard, session.user, session.pid)
            if pool is None:
                pool = session.proxy.pool_for(shard, session.user)
            while True:
                server = await pool.acquire()
                if not server.closed:
                    break
                pool.release(server, reusable=False)
            held = (server, pool)
            if session.closed:
                pool.release(server)
                raise ShardwireError("client went away", sqlstate="08006")
            session.held[shard] = held
        servers.append(held)
    _detach(session, servers)
    return servers


def _detach(session: ClientSession, servers: Held) -> None:
    session.server = None
    session.pool = None
    session.fanout_servers = [server for server, _ in servers]
    for server, _ in servers:
        server.sink = None


async def _bring_up(session: ClientSession, servers: Held) -> None:
    """Apply the session's settings and open its transaction on servers that lack them."""
    in_txn = session.in_transaction()
    for server, _ in servers:
        sql = sync_sql(session.params, server.params, session.settings, server.settings)
        if sql:
            server.settings = dict(session.settings)
            answer = await _run_query(server, sql)
            if answer.error is not None:
                server.settings.clear()
                server.params.clear()
                raise ShardwireError(
                    f'could not apply this session\'s settings on shard "{server.shard}": '
                    f"{m.decode_fields(answer.error[5:]).get('M', 'error')}", sqlstate="08006")
        if in_txn and server.status == b"I":
            replay = [session.begin_sql or "BEGIN"]
            replay += ['SAVEPOINT "' + name.replace('"', '""') + '"'
                       for name, _ in session.savepoints]
            answer = await _run_query(server, ";".join(replay))
            if answer.error is not None:
                raise _shard_error(answer.error, server.shard)
    session.deferred_begin = False


def _give_back(session: ClientSession, servers: Held, *, broken: bool = False) -> None:
    """After the statement: idle servers go back to their pools (transaction mode),
    participants of an open transaction stay held. `broken`: the servers may still owe
    answers (or the client left): none is reused."""
    session.fanout_servers = []
    for server, pool in servers:
        shard = server.shard
        server.flow = None
        held = session.held.get(shard)
        if broken or session.closed or server.closed:
            if held is not None and held[0] is server:
                del session.held[shard]
            clean = (not broken and not server.closed and server.status == b"I"
                     and not server.pending_frames())
            if clean and not session.transaction_mode:
                session.proxy.spawn(session.proxy.reset_and_release(pool, server))
            else:
                pool.release(server, reusable=clean)
            continue
        if session.transaction_mode and server.status == b"I":
            session.held.pop(shard, None)
            pool.release(server)
        else:
            server.sink = session


# ---------------------------------------------------------------------- simple queries
async def _query(session: ClientSession, route: Route, sql: str, servers: Held) -> None:
    """One simple-query statement on every server (its own rewrite where split)."""
    wrap = (route.is_write and route.statement_type in _WRAPPED_WRITES
            and not session.in_transaction())
    conns = [server for server, _ in servers]
    if wrap:
        for server in conns:
            answer = await _run_query(server, "BEGIN")
            if answer.error is not None:
                raise _shard_error(answer.error, server.shard)
    texts = dict(route.rewrites) if route.rewrites else {}
    for server in conns:
        server.send(m.query(texts.get(server.shard, sql)))
    combine: RowCombiner | None = None
    if route.rewrites and route.rewrite_rows:
        combine = in_order(route.rewrite_rows)  # type: ignore[assignment]
    header = bool(route.copy_options and route.copy_options.header)
    steps: list[Step] = [(m.QUERY, tuple(range(len(conns))))]
    result = await gather(conns, steps, session.write, forward_ready=False, combine=combine,
                          copy_header=header and route.statement_type == "copy",
                          replicas=_replicas(session, route))
    if wrap:
        await _finish_wrapped(session, conns, failed=result.error is not None)


async def _finish_wrapped(session: ClientSession, conns: Sequence[ServerConnection], *,
                          failed: bool) -> None:
    """COMMIT (or ROLLBACK after a failure) the BEGIN a cross-shard write was wrapped in:
    with two-phase commit when several shards wrote."""
    error: bytes | None = None
    if not failed and session.proxy.two_phase and len(conns) > 1:
        writers = await _writers(list(conns))
        if len(writers) > 1:
            error = await _two_phase_commit(session, list(conns), writers)
            if error is not None:
                session.write(error)
            return
    for server in conns:
        text = "ROLLBACK" if failed or error is not None else "COMMIT"
        answer = await _run_query(server, text)
        if answer.error is not None and error is None:
            error = _shard_error_bytes(answer.error, server.shard)
        elif text == "COMMIT" and answer.tag == b"ROLLBACK" and error is None:
            error = m.error_response("ERROR", "40000", f'shard "{server.shard}" rolled back '
                                     "its part of a cross-shard write at COMMIT")
    if error is not None:
        session.write(error)


# ---------------------------------------------------------------------- extended protocol
class Batch:
    """The client's messages from a Bind through its Sync, ready for each shard."""

    __slots__ = ("limit", "messages", "rewrites", "route")

    def __init__(self, route: Route, messages: list[tuple[int, bytes]],
                 rewrites: dict[str, bytes] | None, limit: int) -> None:
        self.route = route
        self.limit = limit  # the Execute's row limit (0: all rows)
        self.messages = messages  # (type, body); the Bind first, the Sync last
        self.rewrites = rewrites  # shard -> Parse + Bind of its part of a split INSERT

    def __len__(self) -> int:
        return len(self.messages)


def _extended_batch(session: ClientSession, route: Route, region: bytes,
                    frames: list[Frame], index: int) -> Batch | ShardwireError:
    """The client's messages from the Bind at `index` through its Sync, renamed for the
    servers; an error when the batch cannot be fanned out."""
    out: list[tuple[int, bytes]] = []
    rewrites: dict[str, bytes] | None = None
    limit = 0
    for i in range(index, len(frames)):
        mtype, start, end = frames[i]
        if mtype not in _BATCH_TYPES or (mtype == m.BIND and i != index):
            return FeatureNotSupported(
                "a statement for several shards must be followed by its Describe/Execute "
                "and a Sync, with no other statement in between")
        if mtype == m.BIND:
            portal, pos = m.read_cstr(region, start)
            name, pos = m.read_cstr(region, pos)
            stmt = session.stmts.get(name)
            server_name = "" if stmt is None or name == "" else stmt.server_name
            out.append((mtype, m.cstr(portal) + m.cstr(server_name) + region[pos:end]))
            if route.rewrites and stmt is not None:
                rewrites = _rewritten(route, stmt.param_types, region, start, end)
            continue
        if mtype == m.EXECUTE and (limit := m.execute_max_rows(region, start, end)) != 0:
            # fetchrow-style: all rows are run, the first `limit` relayed, the unnamed
            # portal ends at the Sync. A named portal is a cursor that would go on.
            if region[start] != 0:
                return FeatureNotSupported(
                    "a cursor (a portal fetched a limited number of rows at a time) over "
                    "a statement that reads several shards is not supported yet",
                    hint="fetch all rows at once (no fetch size / cursor), or add the shard "
                         "key")
            portal_end = region.index(b"\x00", start) + 1
            out.append((mtype, region[start:portal_end] + b"\x00\x00\x00\x00"))
            continue
        if (mtype == m.DESCRIBE or mtype == m.CLOSE) and region[start] == ord("S"):
            return FeatureNotSupported(
                "Describe/Close of a statement inside a batch for several shards is not "
                "supported")
        out.append((mtype, region[start:end]))
        if mtype == m.SYNC:
            return Batch(route, out, rewrites, limit)
    return FeatureNotSupported(
        "a statement for several shards must arrive together with its Sync",
        hint="send Bind, Execute and Sync in one write (libpq, JDBC and most drivers do)")


def _rewritten(route: Route, types: Sequence[int], region: bytes, start: int,
               end: int) -> dict[str, bytes]:
    """Per shard: an unnamed Parse of its rewritten INSERT and a Bind with its parameters."""
    assert route.rewrites is not None and route.rewrite_params is not None
    out: dict[str, bytes] = {}
    for (shard, sql), keep in zip(route.rewrites, route.rewrite_params, strict=True):
        oids = [types[i] if i < len(types) else 0 for i in keep]
        parse = m.message(m.PARSE, m.cstr("") + m.cstr(sql) + len(oids).to_bytes(2, "big")
                          + b"".join(oid.to_bytes(4, "big") for oid in oids))
        out[shard] = parse + m.message(m.BIND, m.rebind(region, start, end, keep, ""))
    return out


async def _extended(session: ClientSession, servers: Held, batch: Batch) -> None:
    conns = [server for server, _ in servers]
    messages = batch.messages
    every = tuple(range(len(conns)))
    steps: list[Step] = []
    rest = b"".join(m.message(mtype, body) for mtype, body in messages[1:])
    if batch.rewrites is not None:
        steps.append((m.PARSE | HIDDEN, every))
        for server in conns:
            server.unnamed = None
            server.send(batch.rewrites[server.shard] + rest)
    else:
        _, bind = messages[0]
        portal_end = bind.index(b"\x00") + 1
        stmt_name = bind[portal_end:bind.index(b"\x00", portal_end)].decode()
        for server in conns:
            await _prepare(session, server, stmt_name)
        payload = m.message(m.BIND, bind) + rest
        for server in conns:
            server.send(payload)
    steps.extend((mtype, every) for mtype, _ in messages)
    combine: RowCombiner | None = None
    if batch.rewrites is not None and batch.route.rewrite_rows:
        combine = in_order(batch.route.rewrite_rows)  # type: ignore[assignment]
    await gather(conns, steps, session.write, forward_ready=True, combine=combine,
                 replicas=_replicas(session, batch.route), limit=batch.limit)
    session.batch_open = session.batch_executed = False
    session.skipping = False


async def _prepare(session: ClientSession, server: ServerConnection, server_name: str) -> None:
    """Make sure `server` holds the statement the Bind names (Parse, then Sync)."""
    if server_name == "":
        body = session.unnamed_body
        if server.unnamed == body:
            return
        parse = m.message(m.PARSE, body)
    else:
        if server_name in server.prepared:
            return
        stmt = next((s for s in session.stmts.values() if s.server_name == server_name), None)
        if stmt is None:
            return  # Postgres reports the missing statement at Bind
        parse = m.message(m.PARSE, stmt.parse_body)
    server.send(parse + m.SYNC_MSG)
    error: bytes | None = None
    while True:
        mtype, body = await server.recv()
        if mtype == m.ERROR_RESPONSE:
            error = m.message(mtype, body)
        elif mtype == m.READY_FOR_QUERY:
            server.status = body[:1]
            break
    if error is not None:
        raise _shard_error(error, server.shard)
    if server_name == "":
        server.unnamed = session.unnamed_body
    else:
        server.prepared[server_name] = None


# ---------------------------------------------------------------------- COPY FROM STDIN
async def _copy_in(session: ClientSession, route: Route, sql: str, servers: Held,
                   region: bytes, frames: list[Frame], resume: int) -> bool:
    """Start COPY on every shard; the client's rows then flow through :class:`CopyIn`."""
    conns = [server for server, _ in servers]
    wrap = not session.in_transaction()
    if wrap:
        for server in conns:
            answer = await _run_query(server, "BEGIN")
            if answer.error is not None:
                raise _shard_error(answer.error, server.shard)
    splitter: CopySplitter | None = None
    split = route.copy_split
    if split is not None:
        key_index = split.key_index
        if key_index is None:
            answer = await _run_query(conns[0], column_order_sql(split.table))
            if answer.error is not None:
                await _abort_wrapped(conns, wrap)
                raise _shard_error(answer.error, conns[0].shard)
            key_index = key_index_of(answer.column(0), split.key_column)
        planner = session.planner
        assert planner is not None
        router = planner.router
        shard_of = router.key_shard_function(router.dists[split.table])
        splitter = CopySplitter(split.options, key_index, shard_of, router.shards)
    first: bytes | None = None
    error: bytes | None = None
    started: list[ServerConnection] = []
    for server in conns:
        server.send(m.query(sql))
        while True:
            mtype, body = await server.recv()
            if mtype == m.COPY_IN_RESPONSE:
                started.append(server)
                first = first or m.message(mtype, body)
                break
            if mtype == m.ERROR_RESPONSE:
                error = error or _shard_error_bytes(m.message(mtype, body), server.shard)
            elif mtype == m.READY_FOR_QUERY:
                server.status = body[:1]
                break
            elif mtype == m.NOTICE_RESPONSE:
                session.write(m.message(mtype, body))
        if error is not None:
            break
    if error is not None or first is None:
        for server in started:
            server.send(m.message(m.COPY_FAIL, m.cstr("COPY failed on another shard")))
            await _run_until_ready(server)
        await _abort_wrapped(conns, wrap)
        session.write(error or m.error_response("ERROR", "XX000", "COPY did not start"))
        return False
    for server in conns:
        server.flow = session
    session.copy = CopyIn(session, servers, splitter, wrap, region, frames, resume)
    session.write(first)
    return True


class CopyIn:
    """A COPY FROM STDIN in progress on several shards: the session hands it the client's
    CopyData/CopyDone/CopyFail; rows go to their shard (or, for a reference table, to
    every shard)."""

    def __init__(self, session: ClientSession, servers: Held, splitter: CopySplitter | None,
                 wrap: bool, region: bytes, frames: list[Frame], resume: int) -> None:
        self.session = session
        self.servers = servers
        self.by_shard = {server.shard: server for server, _ in servers}
        self.splitter = splitter
        self.wrap = wrap
        self.error: ShardwireError | None = None

    def client_frame(self, mtype: int, region: bytes, start: int, end: int,
                     frames: list[Frame], index: int) -> bool:
        """Take one client frame during the COPY; True if it was consumed here."""
        if mtype == m.COPY_DATA:
            if self.error is None:
                self._data(region, start, end)
            return True
        if mtype == m.FLUSH or mtype == m.SYNC:
            return True  # ignored during COPY, as Postgres does
        if mtype == m.COPY_DONE:
            if self.error is None and self.splitter is not None:
                try:
                    self._send(self.splitter.finish())
                except ShardwireError as exc:
                    self._fail(exc)
            if self.error is None:
                for server, _ in self.servers:
                    server.send(m.message(m.COPY_DONE))
        elif mtype == m.COPY_FAIL:
            if self.error is None:
                for server, _ in self.servers:
                    server.send(region[start - 5:end])
        else:
            self._fail(ProtocolViolation(
                f"unexpected message type 0x{mtype:02X} during COPY from stdin"))
        session = self.session
        session.go_async(self._complete(region, frames, index))
        return True

    def _data(self, region: bytes, start: int, end: int) -> None:
        if self.splitter is None:  # a reference table: every shard gets every row
            frame = region[start - 5:end]
            for server, _ in self.servers:
                server.send(frame)
            return
        try:
            self._send(self.splitter.feed(region[start:end]))
        except ShardwireError as exc:
            self._fail(exc)

    def _send(self, parts: list[tuple[str, bytes]]) -> None:
        by_shard = self.by_shard
        for shard, data in parts:
            server = by_shard.get(shard)
            if server is None:  # the header line goes to every shard of the COPY
                continue
            server.send(m.message(m.COPY_DATA, data))

    def _fail(self, exc: ShardwireError) -> None:
        self.error = exc
        for server, _ in self.servers:
            server.send(m.message(m.COPY_FAIL, m.cstr(exc.message)))

    async def _complete(self, region: bytes, frames: list[Frame], index: int) -> None:
        session = self.session
        conns = [server for server, _ in self.servers]
        ours = self.error

        def write(data: bytes) -> None:
            if ours is None:
                session.write(data)

        try:
            result = await gather(conns, [(m.QUERY, tuple(range(len(conns))))], write,
                                  forward_ready=False, replicas=self.splitter is None)
            failed = ours is not None or result.error is not None
            if ours is not None:
                session.send_error(ours)
            if self.wrap:
                await _finish_wrapped(session, conns, failed=failed)
        except Exception as exc:
            session.copy = None
            _give_back(session, self.servers, broken=True)
            session._end_with(InternalError(f"COPY failed: {type(exc).__name__}: {exc}"))
            return
        session.copy = None
        _give_back(session, self.servers)
        if not session.closed:
            session.write(m.ready_for_query(session.client_status()))
        _go_on(session, region, frames, index)

    def abandon(self) -> None:
        """The client went away mid-COPY: stop it on every shard."""
        for server, pool in self.servers:
            server.send(m.message(m.COPY_FAIL, m.cstr("client disconnected")))
            server.flow = None
            pool.release(server, reusable=False)


# ---------------------------------------------------------------------- small helpers
def _query_type(route: Route) -> str:
    """A bounded label for a statement run on several shards."""
    if route.statement_type == "copy":
        return "copy"
    if route.statement_type == "ddl":
        return "ddl"
    return "write" if route.is_write else "read"



def _replicas(session: ClientSession, route: Route) -> bool:
    """A write to reference tables only: every shard holds the same rows, so the answer
    is one shard's (Postgres would report the rows of one table)."""
    if not route.is_write or not route.tables:
        return False
    config = session.proxy.config
    return all((t := config.table(name)) is not None and t.is_reference
               for name in route.tables)



class Answer:
    """A detached simple query's answer: tag, rows, first error, notices."""

    __slots__ = ("error", "notices", "rows", "tag")

    def __init__(self) -> None:
        self.tag: bytes | None = None
        self.error: bytes | None = None
        self.rows: list[bytes] = []
        self.notices: list[bytes] = []

    def column(self, index: int) -> list[str]:
        """The text values of one column of the rows."""
        return [m.decode_data_row(row)[index] or "" for row in self.rows]


async def _run_query(server: ServerConnection, sql: str) -> Answer:
    server.send(m.query(sql))
    return await _run_until_ready(server)


async def _run_until_ready(server: ServerConnection) -> Answer:
    answer = Answer()
    while True:
        mtype, body = await server.recv()
        if mtype == m.READY_FOR_QUERY:
            server.status = body[:1]
            return answer
        if mtype == m.COMMAND_COMPLETE:
            answer.tag = body[:-1]
        elif mtype == m.DATA_ROW:
            answer.rows.append(body)
        elif mtype == m.ERROR_RESPONSE:
            answer.error = answer.error or m.message(mtype, body)
        elif mtype == m.NOTICE_RESPONSE:
            answer.notices.append(m.message(mtype, body))
        elif mtype == m.PARAMETER_STATUS:
            name, value = m.decode_parameter_status(body)
            server.params[name] = value


async def _abort_wrapped(conns: Sequence[ServerConnection], wrap: bool) -> None:
    if wrap:
        for server in conns:
            if server.status != b"I":
                await _run_query(server, "ROLLBACK")


def _shard_error_bytes(error: bytes, shard: str) -> bytes:
    """A shard's ErrorResponse message (as received) with the shard named in its detail."""
    return shard_error_message(m.decode_fields(error[5:]), shard)


def _shard_error(error: bytes, shard: str) -> ShardwireError:
    return shard_error(m.decode_fields(error[5:]), shard)


# ---------------------------------------------------------------------- several statements
_NOT_IN_MULTI = frozenset({"transaction", "shardwire_set", "shardwire_show", "copy", "set",
                           "multi"})


async def multi_statement(session: ClientSession, sql: str, region: bytes,
                          frames: list[Frame], index: int) -> None:
    """A simple Query holding several statements for different shards: one implicit
    transaction (unless the client has one open) over every shard it touches, each
    statement run where it belongs, answered as one Postgres answers such a query."""
    session.proxy.stats.cross_shard["multi"] += 1
    parts = split_statements(sql)
    routes = [session.plan(p) for p in parts]
    problem: ShardwireError | None = None
    for text, route in zip(parts, routes, strict=True):
        if route.error is not None:
            problem = route.error
        elif route.statement_type in _NOT_IN_MULTI or route.needs_merge or route.rewrites:
            problem = FeatureNotSupported(
                f"in a query string with statements for several shards, this one must be "
                f"sent on its own: {text.strip()[:80]}",
                hint="send it as a separate query (transaction control, SET, COPY and "
                     "cross-shard statements that need a merge or a split)")
        if problem is not None:
            break
    if problem is not None:
        session._busy = False
        session.reject(problem, simple=True)
        _go_on(session, region, frames, index + 1)
        return
    anchor = next((r.shards[0] for r in routes
                   if r.source not in ("anywhere",) and r.shards), session.default_shard)
    shards: list[str] = []
    for route in routes:
        for shard in (route.shards if route.source != "anywhere" else (anchor,)):
            if shard not in shards:
                shards.append(shard)

    async def body(servers: Held) -> bool:
        conns = {server.shard: server for server, _ in servers}
        implicit = not session.in_transaction()
        if implicit:
            for server in conns.values():
                answer = await _run_query(server, "BEGIN")
                if answer.error is not None:
                    raise _shard_error(answer.error, server.shard)
        failed = False
        for text, route in zip(parts, routes, strict=True):
            targets = [conns[s] for s in (route.shards if route.source != "anywhere"
                                          else (anchor,))]
            for server in targets:
                server.send(m.query(text))
            result = await gather(targets, [(m.QUERY, tuple(range(len(targets))))],
                                  session.write, forward_ready=False,
                                  replicas=_replicas(session, route))
            if result.error is not None:
                failed = True
                break
        if implicit:
            await _finish_wrapped(session, list(conns.values()), failed=failed)
        return False

    await _run(session, shards, body, region, frames, index + 1, True)


# ---------------------------------------------------------------------- merged SELECT
async def merge(session: ClientSession, route: Route, plan: MergePlan, sql: str,
                region: bytes, frames: list[Frame], index: int, simple: bool) -> None:
    """A cross-shard SELECT whose result is combined by the merge engine."""
    session.proxy.stats.cross_shard["merge"] += 1
    req = Request(sql=sql)
    describe = True
    resume = index + 1
    if not simple:
        shaped = _merge_request(session, sql, region, frames, index)
        if isinstance(shaped, ShardwireError):
            session._busy = False
            session.reject(shaped, simple=False)
            _go_on(session, region, frames, resume)
            return
        req, describe, count = shaped
        resume = index + count

    portal = _bind_portal(region, frames[index]) if not simple else ""
    cursor = bool(portal) and req.max_rows != 0  # -1: bound now, executed later

    async def body(servers: Held) -> bool:
        conns = [server for server, _ in servers]
        ctx = _merge_context(session, await _collation(session, conns[0]))
        if not simple:
            session.write(m.BIND_COMPLETE_MSG)
        try:
            if cursor:
                # a cursor (a named portal fetched in steps, inside a transaction): the
                # shards keep named portals, the session keeps the merge between Executes
                run = engine.Merge(plan, conns, req, ctx, session.proxy.max_groups,
                                   portal=f"sw_cursor_{portal}")
                try:
                    await run.start(session.write, describe=describe)
                    suspended = True
                    if req.max_rows > 0:
                        _, suspended = await run.fetch(req.max_rows, session.write)
                finally:
                    await run.sync()
                if suspended:
                    session.cursors[portal] = (run, tuple(route.shards))
            else:
                await engine.run(plan, conns, req, session.write, describe=describe,
                                 ctx=ctx, max_groups=session.proxy.max_groups)
        except engine.ShardError as exc:
            session.write(exc.message())
            if not simple:
                session.skipping = False
        except ShardwireError as exc:
            session.send_error(exc)
        if not simple:
            session.batch_open = session.batch_executed = False
            session.write(m.ready_for_query(session.client_status()))
        return False

    await _run(session, route.shards, body, region, frames, resume, simple)


def _merge_request(session: ClientSession, sql: str, region: bytes, frames: list[Frame],
                   index: int) -> tuple[Request, bool, int] | ShardwireError:
    """The client's Bind (at `index`) through its Sync as a merge request: parameters,
    result formats, whether it described the portal, and how many frames it spans."""
    _, start, end = frames[index]
    portal, pos = m.read_cstr(region, start)
    name, pos = m.read_cstr(region, pos)
    stmt = session.stmts.get(name)
    if stmt is None:
        return ShardwireError(f'prepared statement "{name}" does not exist', sqlstate="26000")
    _, _, values, results = m.decode_bind(region, start, end)
    (nres,) = struct.unpack_from("!h", region, results)
    formats = struct.unpack_from(f"!{nres}h", region, results + 2) if nres else ()
    types = session._param_types(stmt) or ()
    req = Request(sql=stmt.query,
                  param_types=struct.pack(f"!h{len(types)}I", len(types), *types),
                  params=region[pos:results], values=values, formats=tuple(formats))
    describe = False
    req.max_rows = -1  # no Execute in this batch: a portal bound now, executed later
    for i in range(index + 1, len(frames)):
        mtype, s, e = frames[i]
        if mtype == m.DESCRIBE and region[s] == ord("P"):
            describe = True
        elif mtype == m.EXECUTE:
            req.max_rows = m.execute_max_rows(region, s, e)
            if req.max_rows and portal != "" and not session.in_transaction():
                return FeatureNotSupported(
                    "a cursor (a named portal fetched a limited number of rows at a time) "
                    "over a merged cross-shard result needs a transaction",
                    hint="open a transaction first (as JDBC fetchSize and asyncpg cursors "
                         "do), or fetch all rows at once")
        elif mtype == m.SYNC:
            if req.max_rows < 0 and (portal == "" or not session.in_transaction()):
                return FeatureNotSupported(
                    "a portal over rows of several shards must be executed in the batch "
                    "that binds it, unless it is a named portal inside a transaction")
            return req, describe, i - index + 1
        elif mtype != m.FLUSH:
            break
    return FeatureNotSupported(
        "a cross-shard SELECT that needs a merge must arrive as Bind, Describe, Execute and "
        "Sync in one write", hint="libpq, JDBC, psycopg and asyncpg do so; so should this "
        "client")


def _bind_portal(region: bytes, frame: Frame) -> str:
    return m.read_cstr(region, frame[1])[0]


async def cursor_fetch(session: ClientSession, portal: str, region: bytes,
                       frames: list[Frame], index: int) -> None:
    """The client's next Execute (at `index`) of a cursor over a merged result."""
    run, shards = session.cursors[portal]
    _, start, end = frames[index]
    max_rows = m.execute_max_rows(region, start, end)
    resume = index + 1
    while resume < len(frames) and frames[resume][0] == m.FLUSH:
        resume += 1
    if resume < len(frames) and frames[resume][0] == m.SYNC:
        resume += 1
        sync = True
    else:
        sync = False

    async def body(servers: Held) -> bool:
        try:
            _, suspended = await run.fetch(max_rows, session.write)
        except engine.ShardError as exc:
            session.write(exc.message())
            suspended = False
        finally:
            await run.sync()
        if not suspended:
            session.cursors.pop(portal, None)
        if sync:
            session.write(m.ready_for_query(session.client_status()))
        return False

    held = []
    for shard in shards:
        h = session.held.get(shard)
        if h is None:
            session.cursors.pop(portal, None)
            session._busy = False
            session.reject(ShardwireError(
                f'cursor "{portal}" does not exist', sqlstate="34000"), simple=False)
            _go_on(session, region, frames, resume)
            return
        held.append(h)
    await _run(session, shards, body, region, frames, resume, False, servers=held)


def _merge_context(session: ClientSession, collation: str) -> engine.Context:
    """How the session reads values as text: its TimeZone, DateStyle, IntervalStyle and
    extra_float_digits (the server's defaults unless the client set them)."""
    params = session.params
    digits = session.settings.get("extra_float_digits", "1").strip("'\"")
    try:
        extra = int(digits)
    except ValueError:
        extra = 1
    return engine.Context(collation=collation, time_zone=params.get("TimeZone", "UTC"),
                          extra_float_digits=extra,
                          date_style=params.get("DateStyle", "ISO, MDY"),
                          interval_style=params.get("IntervalStyle", "postgres"))


async def _collation(session: ClientSession, server: ServerConnection) -> str:
    """The shards' text ordering (their database collation), asked once per proxy."""
    proxy = session.proxy
    if proxy.collation is None:
        answer = await _run_query(server, "SHOW lc_collate")
        if answer.error is not None:
            raise _shard_error(answer.error, server.shard)
        proxy.collation = answer.column(0)[0] if answer.rows else "C"
    return proxy.collation
