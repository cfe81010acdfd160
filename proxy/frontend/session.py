"""One client connection after authentication: the message loop, pooling and response accounting.

The session reads the client's frames, borrows a server connection when a statement needs
one, forwards the frames (renaming prepared statements), and receives the server's answers
through `on_server_data` (a callback from the server protocol, no task switch).

Response accounting: every request forwarded to a server appends an entry to `queue` naming
how its response ends. Entries the proxy answers itself (a statement already prepared on this
server, a Close of a client statement) are "synthetic" and are emitted in order, when all
server responses ahead of them have gone out. Requests the proxy adds (re-preparing a
statement, syncing session settings) are "swallowed": their responses never reach the client.
In transaction mode the server goes back to its pool at ReadyForQuery 'I' with nothing queued.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from proxy.backend.connection import ServerConnection
from proxy.errors import FeatureNotSupported, InternalError, ProtocolViolation, ShardwireError
from proxy.frontend import fanout
from proxy.frontend.routing import (
    FLOATING_SOURCES,
    FLOATING_TYPES,
    ends_transaction,
    is_read,
    txn_verb,
    writes,
)
from proxy.frontend.settings import (
    SETTABLE_REPORTED,
    Savepoint,
    SettingChange,
    apply_change,
    parse_tracked,
    quote_literal,
    reset_target,
    sync_sql,
)
from proxy.frontend.statements import Statement, split_statements
from proxy.wire import messages as m
from proxy.wire.framing import Frame, Framer

if TYPE_CHECKING:
    from proxy.backend.pool import Pool
    from proxy.frontend.fanout import CopyIn
    from proxy.frontend.startup import ClientStream
    from proxy.server import Proxy
    from proxy.sql.planner import PreparedPlan
    from proxy.sql.route import Route
    from proxy.stats.histogram import Histogram

log = logging.getLogger("shardwire.session")

# Queue entry kinds: how the server's response to one request ends.
K_QUERY = 0  # simple Query / FunctionCall: everything through ReadyForQuery
K_SYNC = 1  # Sync: ReadyForQuery
K_ONE = 2  # Parse / Bind / Close: exactly one message
K_DESCRIBE = 3  # Describe: ends at RowDescription or NoData
K_EXECUTE = 4  # Execute: ends at CommandComplete, EmptyQueryResponse or PortalSuspended
K_SYNTH = 5  # answered by the proxy: emit payload when reached
K_SWALLOW_ONE = 6  # a Parse the proxy injected: drop its ParseComplete
K_SWALLOW_Z = 7  # a query the proxy injected: drop everything through ReadyForQuery
K_FAIL_QUERY = 8  # a refused Query: the server fails in its stead, data replaces its error
K_FAIL_ONE = 9  # a refused Parse: likewise, then the server skips to Sync
K_RESTORE = 10  # startup values set again after RESET: like K_SWALLOW_Z, but see _restore
K_SWALLOW_SYNC = 11  # a Sync the proxy injected to end a batch before switching shards

# A statement (first, or after a ';', maybe behind comments) that changes tracked session
# state: SET/RESET/DISCARD and the savepoint commands. A cheap test before splitting.
_MAY_TRACK = re.compile(
    r"(?:^|;)\s*(?:(?:/\*.*?\*/|--[^\n]*\n)\s*)*"
    r"(?:set|reset|discard|savepoint|release|rollback|deallocate)\b",
    re.IGNORECASE | re.DOTALL)
_ASYNC = frozenset({m.NOTICE_RESPONSE, m.NOTIFICATION_RESPONSE, m.PARAMETER_STATUS})
_PLAIN = frozenset({m.ROW_DESCRIPTION, m.DATA_ROW, m.COMMAND_COMPLETE, m.EMPTY_QUERY})
_EXECUTE_END = frozenset({m.COMMAND_COMPLETE, m.EMPTY_QUERY, m.PORTAL_SUSPENDED})
_DESCRIBE_END = frozenset({m.ROW_DESCRIPTION, m.NO_DATA})
_COPY_MESSAGES = frozenset({m.COPY_DATA, m.COPY_DONE, m.COPY_FAIL})
# Statements about shardwire's own settings: answered by the session, never sent on.
_LOCAL_TYPES = frozenset({"shardwire_set", "shardwire_show"})
_VALID_FRONTEND = frozenset({
    m.QUERY, m.PARSE, m.BIND, m.DESCRIBE, m.EXECUTE, m.CLOSE, m.SYNC, m.FLUSH, m.TERMINATE,
    m.COPY_DATA, m.COPY_DONE, m.COPY_FAIL, m.FUNCTION_CALL,
})
# Sent in place of a refused statement: fails at parse time, changes nothing on the server.
_FAIL_QUERY = m.query("shardwire refused this statement")
_FAIL_PARSE = m.parse_message("shardwire_refused", "shardwire refused this statement")
# Server statements Postgres refused to Bind with 0A000 ("cached plan must not change result
# type": DDL changed the shape of a SELECT * ...). Postgres keeps failing such a statement
# until it is prepared again, and clients (pgjdbc, asyncpg) heal by preparing the same text
# under a new name, which shardwire maps to the same server name: so each server connection
# holding it closes and re-prepares it once. Server name -> the servers that did so since.
_REPLAN: dict[str, weakref.WeakSet[ServerConnection]] = {}


_BEGIN_QUERY = m.query("BEGIN")


class BeginProbe:
    """Data of the K_SWALLOW_Z entry for a BEGIN injected into a batch whose statements
    spread over shards: without Postgres' "already a transaction in progress" warning, the
    batch was the client's implicit transaction, now a block to commit at its Sync."""

    __slots__ = ("warned",)

    def __init__(self) -> None:
        self.warned = False


class Entry:
    """One expected response group; `data` is kind-specific (payload, changes, undo)."""

    __slots__ = ("data", "kind")
    h: Histogram | None = None  # see Timed (a class attribute: no cost per Entry)
    t = 0.0

    def __init__(self, kind: int, data: object = None) -> None:
        self.kind = kind
        self.data = data


class Timed(Entry):
    """A client's Query or Execute: also the latency histogram it counts in (`h`) and
    when it was sent (`t`)."""

    __slots__ = ("h", "t")  # type: ignore[misc]  # shadows Entry's class defaults

    def __init__(self, kind: int, data: object, h: Histogram, t: float) -> None:
        self.kind = kind
        self.data = data
        self.h = h
        self.t = t


class ClientSession:
    def __init__(self, proxy: Proxy, stream: ClientStream, user: str, pid: int, key: int) -> None:
        self.proxy = proxy
        self.stream = stream
        self.transport = stream.writer.transport
        self.user = user
        self.pid = pid
        self.key = key
        self.transaction_mode = proxy.config.pool.mode == "transaction"
        self.framer = Framer()
        # Session state the client expects, replayed onto each server it borrows.
        self.params: dict[str, str] = {}
        self.settings: dict[str, str] = {}
        # Changes of the transaction in progress, applied when it commits: (change, for the
        # client too; False for the proxy's own restores, which concern the server only).
        self.pending: list[tuple[SettingChange, bool]] = []
        self.savepoints: list[tuple[str, int]] = []  # (name, len(pending) when made)
        self.failed = False  # an ErrorResponse since the last ReadyForQuery
        # What RESET returns to (set in run(), after startup): the startup settings, and
        # the startup values of reported parameters that differ from the server's defaults.
        self.defaults: dict[str, str] = {}
        self.start_params: dict[str, str] = {}
        self.default_params: dict[str, str] | None = None  # computed at first checkout
        self.restorable = False
        self.portal_resets: dict[str, str] = {}  # portal -> its statement's reset_target
        self.resets: set[str] = set()  # reset targets executed since the last Sync
        # Prepared statements by client name; "" is the unnamed statement.
        self.stmts: dict[str, Statement] = {}
        self.portal_changes: dict[str, SettingChange | Savepoint] = {}
        self.unnamed_body = b""  # the client's last unnamed Parse, to replay on another server
        self.server: ServerConnection | None = None
        self.pool: Pool | None = None
        self.queue: deque[Entry] = deque()
        self.out: list[bytes] = []  # bytes for the server, flushed once per client read
        self.skipping = False  # after an error in extended protocol: drop until Sync
        self.closed = False
        self._busy = False  # a checkout is waiting: client bytes go to _backlog meanwhile
        self._backlog: deque[bytes] = deque()
        self._client_paused = False
        self._server_full = False
        self._sync_failed: str | None = None
        self._done: asyncio.Future[None] | None = None
        # Routing (see proxy/frontend/routing.py and proxy/sql/ROUTING.md).
        config = proxy.config
        self.generation = proxy.topology_version  # the topology this session routes with
        self.planner = proxy.planner
        self.default_shard = config.default_shard
        # Every server this session holds, by shard: the active one (`server`), and in a
        # transaction the other participants; in session mode, each shard it has used.
        self.held: dict[str, tuple[ServerConnection, Pool]] = {}
        self.begin_sql: str | None = None  # what opened the transaction in progress
        self.deferred_begin = False  # BEGIN answered here, not yet sent to any shard
        self.deferred_failed = False  # ... and a statement since failed here
        self.batch_open = False  # extended messages sent to `server` since its last Sync
        self.batch_executed = False  # ... among them an Execute
        self.hint_shard: str | None = None  # SET shardwire.shard
        self.hint_key: str | None = None  # SET shardwire.shard_key
        names = config.shard_names
        self.reference_shard = names[pid % len(names)]  # reads of reference tables
        self.copy: CopyIn | None = None  # a COPY FROM STDIN fanned out to several shards
        self.fanout_servers: list[ServerConnection] = []  # servers of a running fanout
        self._resume_at: tuple[bytes, list[Frame], int] | None = None  # after a drain
        self._drain_action: Callable[[bytes, list[Frame], int], None] | None = None
        # The client's implicit transaction (an extended batch) spread over shards: its
        # Sync commits every participant (see _drained).
        self.implicit_txn = False
        # cursors over merged cross-shard results, by client portal (see fanout.merge)
        self.cursors: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._lookahead: tuple[int, int, str] | None = None  # (region id, Bind, shard)
        # Per-shard request latency by operation (read | write), see proxy/metrics.py.
        self.requests = proxy.stats.requests
        self.bound_read = False  # the statement of the last Bind is a read
        # Reads on replicas (see _replica_ok): only when some shard has replicas.
        self.replica_reads = proxy.replica_reads
        self.want_replica = False  # the statement being routed may run on a replica
        self.primary_until = 0.0  # read_your_writes: reads stay on primaries until then

    # ----------------------------------------------------------------- client -> server
    async def run(self, rest: bytes) -> None:
        """Serve the client until it terminates or disconnects.

        After startup the client socket is switched from the asyncio stream to this object
        as its Protocol: each chunk the client sends is handled in `data_received` without
        a task switch, like the server side. Only a checkout that must wait for the pool
        (or for a shard to connect) runs as a task, with the client's socket paused.
        """
        self.defaults = dict(self.settings)
        self.start_params = {k: v for k, v in self.params.items() if k in SETTABLE_REPORTED}
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        reader = self.stream.reader
        # Bytes the stream already read past the startup exchange belong to us now (the
        # private buffer is the only way to take them over; it has been stable since 3.4).
        buffered = bytes(reader._buffer)
        reader._buffer.clear()
        if reader.at_eof() or reader.exception() is not None or self.transport.is_closing():
            self._done.set_result(None)  # the client left during login: nothing to serve
        else:
            self.transport.set_protocol(self)
            # The stream may have paused the socket for a full buffer; nobody else resumes it.
            self.transport.resume_reading()
        try:
            if rest or buffered:
                self.data_received(rest + buffered)
            await self._done
        finally:
            self.closed = True
            self.cleanup()

    # asyncio.Protocol, for the client's socket
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._busy:  # an async step (checkout) is under way: keep order
            self._backlog.append(data)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            region, frames = self.framer.feed(data)
            if frames:
                self.process(region, frames, 0)
        except Exception as exc:
            self._end_with(exc)

    def _end_with(self, exc: Exception) -> None:
        """End this session (only this one) with a FATAL naming what went wrong."""
        if isinstance(exc, ProtocolViolation):
            self.send_error(exc, fatal=True)
        else:  # a bug: report it as one
            log.exception("session failed", exc_info=exc)
            self.send_error(InternalError(f"{type(exc).__name__}: {exc}"), fatal=True)
        self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost ends the session

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def pause_writing(self) -> None:
        # The client reads slower than the server sends: stop reading the server.
        self._client_paused = True
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
        self._client_paused = False
        if self.server is not None:
            self.server.resume_reading()

    def pause_client(self) -> None:
        """The server's socket is full (e.g. a large COPY): stop reading the client."""
        self._server_full = True
        self.transport.pause_reading()

    def resume_client(self) -> None:
        self._server_full = False
        if not self._busy and not self.closed and not self._server_full:
            self.transport.resume_reading()

    def process(self, region: bytes, frames: list[Frame], index: int) -> None:
        """Handle client frames from `index` on; hand over to a task if one must wait."""
        if (self.generation != self.proxy.topology_version and self.between_transactions()
                and not self.batch_open and not self.implicit_txn and not self.cursors):
            self.adopt_topology()  # a reload happened while this session was busy
        count = len(frames)
        planner = self.planner
        while index < count:
            mtype, start, end = frames[index]
            index += 1
            if mtype not in _VALID_FRONTEND:
                raise ProtocolViolation(f"invalid frontend message type {mtype}")
            if mtype == m.TERMINATE:
                self.flush()
                self.close()
                return
            if self.copy is not None:
                if self.copy.client_frame(mtype, region, start, end, frames, index):
                    if self._busy:
                        return
                    continue
            if self.skipping and mtype != m.SYNC:
                continue
            problem = m.malformed_frontend(mtype, region, start, end)
            if problem is not None:
                self.reject(ShardwireError(problem, sqlstate="08P01"), simple=mtype == m.QUERY)
                continue
            if mtype in _COPY_MESSAGES:
                if self.server is not None:
                    self.out.append(region[start - 5:end])
                continue  # outside COPY Postgres ignores these too
            if mtype == m.SYNC and self.implicit_txn:
                self._sync_implicit(region, frames, index)
                self.flush()
                return
            if self.cursors and (mtype == m.EXECUTE or mtype == m.DESCRIBE
                                 or mtype == m.CLOSE) and self._cursor_frame(
                                     mtype, region, start, end, frames, index - 1):
                if self._busy:
                    self.flush()
                    return
                continue
            shard: str | None = None
            statement = mtype == m.QUERY or mtype == m.PARSE or mtype == m.BIND
            if statement and self.replica_reads:  # before target(): a scatter needs it too
                self.want_replica = self._replica_ok(mtype, region, start)
            if planner is not None and statement:
                shard = self.target(mtype, region, start, end, frames, index)
                if shard is None:  # answered here, refused, or handed to a task
                    if self._busy:
                        self.flush()
                        return
                    continue
            server = self.server
            if statement and self.replica_reads:
                if server is not None and self.want_replica != (server.role == "replica"):
                    shard = shard or server.shard  # the same shard, the other role
                    server = None
            if server is None or (shard is not None and shard != server.shard):
                if server is None and self.answer_locally(mtype, region, start, end):
                    continue
                if not self.activate(shard or self.default_shard, region, frames, index - 1):
                    if self._busy:
                        self.flush()
                        return
                    continue
            if self.deferred_begin:
                self._open_transaction(self.server)  # type: ignore[arg-type]
            self.forward(mtype, region, start, end)
        self.flush()

    def _replica_ok(self, mtype: int, region: bytes, start: int) -> bool:
        """Whether the Query, Parse or Bind at `start` may go to a replica: a read-only
        statement (proxy.read_only) outside a transaction, or in one begun READ ONLY; not
        within `reads.read_your_writes` of this client's last write; no role hint."""
        if self.in_transaction():
            if self.deferred_begin:
                begin = (self.begin_sql or "").upper()
                return "READ ONLY" in begin and "READ WRITE" not in begin
            server = self.server
            return server is not None and server.role == "replica"
        if mtype == m.BIND:
            name, _ = m.read_cstr(region, m.read_cstr(region, start)[1])
            stmt = self.stmts.get(name)
            if stmt is None:
                return False
            sql = stmt.query
        elif mtype == m.PARSE:
            sql, _ = m.read_cstr(region, m.read_cstr(region, start)[1])
        else:
            sql, _ = m.read_cstr(region, start)
        if self.proxy.read_only(sql):
            return not self.primary_until or monotonic() >= self.primary_until
        ryw = self.proxy.config.reads.read_your_writes
        if ryw and writes(sql):
            self.primary_until = monotonic() + ryw
        return False

    def adopt_topology(self) -> None:
        """Route with the proxy's current topology (called between transactions only: a
        transaction finishes on the map it began with). Servers kept from retired pools
        (session mode) are given back, to be closed."""
        proxy = self.proxy
        self.generation = proxy.topology_version
        self.planner = proxy.planner
        config = proxy.config
        self.default_shard = config.default_shard
        names = config.shard_names
        self.reference_shard = names[self.pid % len(names)]
        self.replica_reads = proxy.replica_reads
        for shard, (server, pool) in list(self.held.items()):
            if pool.closing:
                if server is self.server:
                    self.server = None
                    self.pool = None
                del self.held[shard]
                pool.release(server, reusable=False)

    # ------------------------------------------------------------------ routing
    def target(self, mtype: int, region: bytes, start: int, end: int, frames: list[Frame],
               index: int) -> str | None:
        """The shard a Query, Parse or Bind goes to; None when it was dealt with here
        (answered, refused, or handed to a task, which sets `_busy`)."""
        if mtype == m.QUERY:
            sql, _ = m.read_cstr(region, start)
            if self.hint_shard is None and self.hint_key is None and not self.deferred_failed:
                shard = self.planner.quick_text(sql)  # type: ignore[union-attr]
                if shard is not None:
                    return shard
            return self.dispatch(self.plan(sql), sql, region, frames, index - 1, simple=True)
        if mtype == m.PARSE:
            return self._shard_of_batch(region, frames, index)
        look = self._lookahead
        if look is not None and look[0] == id(region) and look[1] == start:
            self._lookahead = None  # decided at the Parse in front of it
            if self.server is None or self.server.shard == look[2]:
                return look[2]
        try:
            nul = region.index(b"\x00", start)
            pos = region.index(b"\x00", nul + 1)
            stmt = self.stmts.get(region[nul + 1:pos].decode("utf-8", "surrogateescape"))
            if stmt is None:
                return self._floating()  # Postgres reports the missing statement
            plan = self.planner.prepare(stmt.query)  # type: ignore[union-attr]
            shard = self._quick_bind(plan, stmt, region, pos + 1)
            if shard is not None:
                return shard
            _, _, values, _ = m.decode_bind(region, start, end)
        except (ValueError, struct.error):
            return self._floating()  # Postgres reports the malformed Bind
        route = self.plan(stmt.query, values, self._param_types(stmt), plan)
        return self.dispatch(route, stmt.query, region, frames, index - 1, simple=False)

    def _quick_bind(self, plan: PreparedPlan, stmt: Statement, region: bytes,
                    pos: int) -> str | None:
        """The hot path of a Bind: the shard from the one parameter that decides it."""
        quick = plan.quick_param
        if (quick is None or self.hint_shard is not None or self.hint_key is not None
                or self.deferred_failed):
            return None
        types = stmt.param_types
        oid = types[quick] if quick < len(types) else 0
        if oid == 0:
            reported = self.proxy.param_oids.get(stmt.server_name)
            oid = reported[quick] if reported and quick < len(reported) else 0
        return plan.quick_value(m.bind_param(region, pos, quick), oid)

    def plan(self, sql: str, params: list[str | bytes | None] | None = None,
             param_types: tuple[int, ...] | None = None,
             prepared: PreparedPlan | None = None) -> Route:
        assert self.planner is not None
        server = self.server
        return (prepared or self.planner.prepare(sql)).route(
            params, param_types, session_shard=self.hint_shard,
            session_shard_key=self.hint_key,
            reference_shard=server.shard if server is not None else self.reference_shard)

    def _param_types(self, stmt: Statement) -> tuple[int, ...] | None:
        types = stmt.param_types
        if not types or 0 in types:
            reported = self.proxy.param_oids.get(stmt.server_name)
            if reported is not None:
                return reported
        return types or None

    def _floating(self) -> str:
        """Where a statement that reads no table goes: the shard in use, else the
        transaction's, else the default shard."""
        if self.server is not None:
            return self.server.shard
        for shard, (server, _) in self.held.items():
            if server.status != b"I":
                return shard
        return self.default_shard

    def _shard_of_batch(self, region: bytes, frames: list[Frame], index: int) -> str:
        """For a Parse: the shard of the first Bind after it (up to the Sync) that names a
        table, so the statement is prepared where it will run; else the floating shard."""
        assert self.planner is not None
        _, parse_start, parse_end = frames[index - 1]
        parse_name, parsed = self.proxy.statements.from_parse(region[parse_start:parse_end])
        for i in range(index, len(frames)):
            mtype, start, end = frames[i]
            if mtype == m.SYNC:
                break
            if mtype != m.BIND:
                continue
            try:
                nul = region.index(b"\x00", start)
                pos = region.index(b"\x00", nul + 1)
                name = region[nul + 1:pos].decode("utf-8", "surrogateescape")
                stmt = parsed if name == parse_name else self.stmts.get(name)
                if stmt is None:
                    break
                plan = self.planner.prepare(stmt.query)
                shard = self._quick_bind(plan, stmt, region, pos + 1)
                if shard is not None:
                    self._lookahead = (id(region), start, shard)
                    return shard
                _, _, values, _ = m.decode_bind(region, start, end)
            except (ValueError, struct.error):
                break
            route = self.plan(stmt.query, values, self._param_types(stmt), plan)
            if route.error is not None or route.statement_type in _LOCAL_TYPES:
                break
            if route.source in FLOATING_SOURCES or route.statement_type in FLOATING_TYPES:
                continue
            if len(route.shards) != 1:
                break
            self._lookahead = (id(region), start, route.shards[0])
            return route.shards[0]
        return self._floating()

    def dispatch(self, route: Route, sql: str, region: bytes, frames: list[Frame], index: int,
                 *, simple: bool) -> str | None:
        """Act on a route: the shard to forward to, or None when dealt with here."""
        if route.error is not None:
            self.reject(route.error, simple=simple)
            return None
        stype = route.statement_type
        if self.deferred_failed and stype != "transaction":
            self.reject(ShardwireError(
                "current transaction is aborted, commands ignored until end of transaction "
                "block", sqlstate="25P02"), simple=simple)
            return None
        if stype in _LOCAL_TYPES:
            self.local_setting(route, simple=simple)
            return None
        if stype == "transaction":
            return self.transaction_control(sql, region, frames, index, simple=simple)
        if route.source in FLOATING_SOURCES or stype in FLOATING_TYPES:
            return self._floating()
        shards = route.shards
        if len(shards) == 1:
            if stype == "multi" and len(self.held) > 1 and ends_transaction(sql):
                self.reject(FeatureNotSupported(
                    "a query string that ends a transaction spanning several shards must "
                    "send COMMIT or ROLLBACK on its own",
                    hint="send the COMMIT/ROLLBACK as a separate statement"), simple=simple)
                return None
            return shards[0]
        # several shards
        if stype == "multi":
            if not simple:
                self.reject(FeatureNotSupported("several statements in one Parse"),
                            simple=False)
                return None
            if not self._drained(region, frames, index):
                return None
            if self._failed_shard() is not None:
                return self._failed_shard()
            self.go_async(self._scatter(route, fanout.multi_statement(self, sql, region, frames,
                                                                      index)))
            return None
        merged = None
        if route.needs_merge:
            try:
                merged = self.proxy.merge_plan(sql)
            except ShardwireError as exc:
                self.reject(exc, simple=simple)
                return None
        elif not simple and stype == "select" and _row_limited(region, frames, index):
            # a cursor over rows of several shards: the merge engine fetches in steps
            try:
                merged = self.proxy.merge_plan(sql)
            except ShardwireError:
                merged = None
        if not self._drained(region, frames, index):
            return None
        if self._failed_shard() is not None:
            return self._failed_shard()  # Postgres answers 25P02 there
        if merged is not None:
            self.go_async(self._scatter(route, fanout.merge(self, route, merged, sql, region,
                                                            frames, index, simple)))
            return None
        self.go_async(self._scatter(route, fanout.statement(self, route, sql, region, frames,
                                                            index, simple)))
        return None

    async def _scatter(self, route: Route, run: Coroutine[Any, Any, None]) -> None:
        """Run a statement on several shards, counting it for each shard in the metrics."""
        start = perf_counter()
        try:
            await run
        finally:
            self.proxy.stats.scattered(route.shards, not route.is_write,
                                       perf_counter() - start)

    def _cursor_frame(self, mtype: int, region: bytes, start: int, end: int,
                      frames: list[Frame], index: int) -> bool:
        """Execute / Describe / Close of a cursor over a merged result: handled here."""
        if mtype == m.EXECUTE:
            portal, _ = m.read_cstr(region, start)
            if portal not in self.cursors:
                return False
            if not self._drained(region, frames, index):
                return True
            self.go_async(fanout.cursor_fetch(self, portal, region, frames, index))
            return True
        if region[start] != ord("P"):
            return False
        portal, _ = m.read_cstr(region, start + 1)
        entry = self.cursors.get(portal)
        if entry is None:
            return False
        if mtype == m.DESCRIBE:
            self.synth(entry[0].describe())
        else:
            del self.cursors[portal]  # its shard portals go with the transaction
            self.synth(m.CLOSE_COMPLETE_MSG)
        return True

    def _failed_shard(self) -> str | None:
        for shard, (server, _) in self.held.items():
            if server.status == b"E":
                return shard
        return None

    def participants(self) -> list[ServerConnection]:
        """The servers in the client's transaction (accurate once the queue is drained)."""
        return [server for server, _ in self.held.values() if server.status != b"I"]

    def in_transaction(self) -> bool:
        return self.deferred_begin or any(s.status != b"I" for s, _ in self.held.values())

    def client_status(self) -> bytes:
        """The ReadyForQuery status the client should see now (queue drained)."""
        if self.deferred_begin:
            return b"E" if self.deferred_failed else b"T"
        status = b"I"
        for server, _ in self.held.values():
            if server.status == b"E":
                return b"E"
            if server.status == b"T":
                status = b"T"
        return status

    def between_transactions(self) -> bool:
        """No transaction open and nothing running (graceful shutdown may end it)."""
        return (not self.queue and not self._busy and self.copy is None
                and not self.in_transaction())

    def transaction_control(self, sql: str, region: bytes, frames: list[Frame], index: int,
                            *, simple: bool) -> str | None:
        verb = txn_verb(sql)
        if not self._drained(region, frames, index):
            return None
        parts = self.participants()
        if verb == "begin":
            if not parts and not self.deferred_begin and simple:
                # Answered here: the first statement decides the shard, BEGIN goes with it.
                self.begin_sql = sql
                self.deferred_begin = True
                self.write(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
                return None
            if not parts and not self.deferred_begin:
                self.begin_sql = sql  # extended BEGIN: runs on the floating shard
            return self._floating()
        if verb == "commit" or verb == "rollback":
            if not parts:
                if self.deferred_begin and simple:
                    tag = "COMMIT" if verb == "commit" and not self.deferred_failed else (
                        "ROLLBACK")
                    self.deferred_begin = self.deferred_failed = False
                    self.begin_sql = None
                    self.write(m.command_complete(tag) + m.READY_IDLE)
                    return None
                return self._floating()
            if len(parts) == 1:
                return parts[0].shard
            shape = None if simple else fanout.extended_shape(region, frames, index)
            if isinstance(shape, ShardwireError):
                self.reject(shape, simple=False)
                return None
            self.go_async(fanout.end_transaction(self, parts, sql, verb, region, frames,
                                                 index, shape=shape))
            return None
        if verb == "savepoint":
            if len(parts) <= 1:
                return parts[0].shard if parts else self._floating()
            shape = None if simple else fanout.extended_shape(region, frames, index)
            if isinstance(shape, ShardwireError):
                self.reject(shape, simple=False)
                return None
            self.go_async(fanout.on_participants(self, parts, sql, region, frames, index,
                                                 shape=shape))
            return None
        if len(parts) > 1:
            self.reject(FeatureNotSupported(
                "this transaction command is not supported in a transaction spanning "
                "several shards yet"), simple=simple)
            return None
        return parts[0].shard if parts else self._floating()

    def _drained(self, region: bytes, frames: list[Frame], index: int) -> bool:
        """True when nothing is outstanding on the active server; else arrange for frame
        `index` to be handled again once it is (ending an open batch with a Sync first),
        and return False."""
        if not self.queue and not self.batch_open:
            return True
        if self.batch_open:
            if self.batch_executed and self.server is not None:
                # What this batch ran here must commit or roll back with what it runs on
                # the next shard, at the client's Sync: BEGIN turns the transaction it
                # started into a block (keeping that work), which our Sync leaves open.
                self.out.append(_BEGIN_QUERY)
                self.queue.append(Entry(K_SWALLOW_Z, BeginProbe()))
                self.server.unnamed = None
            self._end_batch()
        self.flush()
        self._busy = True
        self.transport.pause_reading()
        self._resume_at = (region, frames, index)
        if not self.queue:  # nothing to wait for after all
            asyncio.get_running_loop().call_soon(self._resume_after_drain)
        return False

    def _end_batch(self) -> None:
        """Send a Sync of our own to end the client's open batch on the active server."""
        self.out.append(m.SYNC_MSG)
        self.queue.append(Entry(K_SWALLOW_SYNC))
        self.batch_open = self.batch_executed = False

    def _sync_implicit(self, region: bytes, frames: list[Frame], index: int) -> None:
        """The client's Sync ends an implicit transaction spread over shards: end the batch
        on the active server, then commit (or roll back) every participant."""
        self.skipping = False
        if self.server is not None:
            self.out.append(m.SYNC_MSG)
            self.queue.append(Entry(K_SWALLOW_SYNC))
        self.batch_open = self.batch_executed = False
        self.flush()
        self._busy = True
        self.transport.pause_reading()
        self._resume_at = (region, frames, index)
        self._drain_action = self._commit_implicit
        if not self.queue:
            asyncio.get_running_loop().call_soon(self._resume_after_drain)

    def _commit_implicit(self, region: bytes, frames: list[Frame], index: int) -> None:
        self.go_async(fanout.end_transaction(self, self.participants(), "COMMIT", "commit",
                                             region, frames, index - 1, implicit=True))

    def _resume_after_drain(self) -> None:
        resume, self._resume_at = self._resume_at, None
        if resume is None or self.closed:
            return
        action, self._drain_action = self._drain_action, None
        if action is not None:
            action(*resume)
            return
        self._busy = False
        try:
            self.process(*resume)
        except Exception as exc:
            self._end_with(exc)
        self._after_async()

    def _after_async(self) -> None:
        """An async step ended: go on with what the client sent meanwhile."""
        while self._backlog and not self._busy and not self.closed:
            self._feed(self._backlog.popleft())
        if not self._busy and not self.closed and not self._server_full:
            self.transport.resume_reading()

    def go_async(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a multi-shard step as a task; the client's socket stays paused meanwhile."""
        self.flush()
        self._busy = True
        self.transport.pause_reading()
        self.proxy.spawn(coro)

    def activate(self, shard: str, region: bytes, frames: list[Frame], index: int) -> bool:
        """Make `shard`'s server the active one. True if the frame can be forwarded to
        `self.server` now; False when refused or when a task or a drain takes over."""
        server = self.server
        if server is not None:
            if server.shard == shard and (not self.replica_reads
                                          or self.want_replica == (server.role == "replica")):
                return True
            if not self._drained(region, frames, index):
                return False
            if server.status == b"E":
                return True  # a failed transaction: Postgres refuses everything there
            self.deactivate()
        else:
            failed = self._failed_shard()
            if failed is not None:
                shard = failed
        held = self.held.get(shard)
        if held is not None:
            self.attach(*held)
            return True
        pool = None
        if self.want_replica:
            pool = self.proxy.replica_pool(shard, self.user, self.pid)
        if pool is None:
            pool = self.proxy.pool_for(shard, self.user)
        conn = pool.try_acquire()
        if conn is None:
            self.flush()
            self._busy = True
            self.transport.pause_reading()
            self.proxy.spawn(self._checkout_then_resume(pool, region, frames, index))
            return False
        self.attach(conn, pool)
        return True

    def deactivate(self) -> None:
        """Stop using the active server (queue empty): a transaction's participant stays
        held; an idle one goes back to its pool in transaction mode."""
        server = self.server
        if server is None:
            return
        if self.transaction_mode and server.status == b"I":
            self.release_server()
            return
        self.server = None
        self.pool = None

    async def _checkout_then_resume(self, pool: Pool, region: bytes, frames: list[Frame],
                                    index: int) -> None:
        """Wait for a server, then go on with the frames and whatever arrived meanwhile.

        Whatever happens here, the session must end up either serving (reading resumed) or
        closed: a task that died with the client's socket paused would never see its EOF."""
        mtype = frames[index][0]
        try:
            while True:
                server = await pool.acquire()
                if not server.closed:
                    break
                pool.release(server, reusable=False)  # died while being handed over
        except Exception as exc:
            err = exc if isinstance(exc, ShardwireError) else InternalError(
                f"checkout failed: {type(exc).__name__}: {exc}")
            if not isinstance(exc, ShardwireError):
                log.exception("checkout failed")
            elif log.isEnabledFor(logging.DEBUG):
                self._log_sessions(err.message)
            self.reject(err, simple=mtype == m.QUERY)
            index += 1
        else:
            if self.closed:
                pool.release(server)
                return
            self.attach(server, pool)
        self._busy = False
        try:
            if not self.closed:
                self.process(region, frames, index)
        except Exception as exc:
            self._end_with(exc)
        self._after_async()

    def _log_sessions(self, why: str) -> None:
        """Debug aid for pool exhaustion: what every session holds right now."""
        for other in list(self.proxy.sessions.values()):
            srv = other.server
            log.debug("checkout failed (%s); session %d: server=%s pid=%s status=%s queue=%s "
                      "busy=%s closed=%s", why, other.pid, srv.address if srv else None,
                      srv.pid if srv else None, srv.status if srv else None,
                      [e.kind for e in other.queue], other._busy, other.closed)

    def flush(self) -> None:
        if self.out:
            server = self.server
            if server is not None:
                server.send(self.out[0] if len(self.out) == 1 else b"".join(self.out))
            self.out = []

    def answer_locally(self, mtype: int, region: bytes, start: int, end: int) -> bool:
        """Answer what needs no server while none is attached. True if answered."""
        if mtype == m.SYNC:
            self.skipping = False
            self.write(m.ready_for_query(self.client_status()))
            return True
        if mtype == m.FLUSH:
            return True
        if mtype == m.CLOSE and region[start] == ord("S"):
            name, _ = m.read_cstr(region, start + 1)
            self.stmts.pop(name, None)
            self.write(m.CLOSE_COMPLETE_MSG)
            return True
        if mtype == m.QUERY and _has_deallocate(region, start, end):
            sql, _ = m.read_cstr(region, start)
            tag = self.deallocate(sql)
            if tag is not None:
                self.write(m.command_complete(tag) + m.ready_for_query(self.client_status()))
                return True
        return False

    def deallocate(self, sql: str) -> str | None:
        """Handle `DEALLOCATE [PREPARE] name|ALL` against the client's own statements.

        Server-side names differ from the client's, so Postgres cannot run it for us
        (psycopg sends it to evict statements from its cache)."""
        head = sql.lstrip()[:10].lower()
        if not head.startswith("deallocate"):
            return None
        words = sql.replace(";", " ").split()
        if len(words) >= 2 and words[1].lower() == "prepare":
            words.pop(1)
        if len(words) != 2:
            return None
        name = words[1]
        if name.lower() == "all":
            self.stmts = {k: v for k, v in self.stmts.items() if k == ""}
            if not self.transaction_mode:
                # Session mode: the server is the client's own and may hold its SQL-level
                # PREPAREs, which must go too; Postgres runs it (see _on_command_complete).
                return None
            return "DEALLOCATE ALL"
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        else:
            name = name.lower()
        if name not in self.stmts:
            return None  # let Postgres report 26000 with its own message
        del self.stmts[name]
        return "DEALLOCATE"

    def attach(self, server: ServerConnection, pool: Pool) -> None:
        """Take `server` for this client: bring its session state up to the client's."""
        joins = server.status == b"I" and self.in_transaction()  # before it is held
        self.server = server
        self.pool = pool
        server.sink = self
        server.flow = None
        self.held[server.shard] = (server, pool)
        if self._client_paused:
            server.pause_reading()
        if self.default_params is None:
            self.default_params = {k: v for k, v in self.start_params.items()
                                   if server.initial_params.get(k) != v}
            self.restorable = bool(self.defaults or self.default_params)
        sql = sync_sql(self.params, server.params, self.settings, server.settings)
        if sql:
            server.settings = dict(self.settings)
            server.unnamed = None  # any simple Query drops the unnamed statement
            self.out.append(m.query(sql))
            self.queue.append(Entry(K_SWALLOW_Z))
        if joins:
            self._open_transaction(server)

    def _open_transaction(self, server: ServerConnection) -> None:
        """A new participant of the client's transaction (or the first, after a BEGIN
        answered here): open it there too, with the client's BEGIN (isolation level...)
        and its savepoints so far."""
        replay = [self.begin_sql or "BEGIN"]
        replay += ['SAVEPOINT "' + name.replace('"', '""') + '"' for name, _ in self.savepoints]
        self.deferred_begin = self.deferred_failed = False
        server.unnamed = None
        self.out.append(m.query(";".join(replay)))
        self.queue.append(Entry(K_SWALLOW_Z))

    def forward(self, mtype: int, region: bytes, start: int, end: int) -> None:
        """Forward one client frame to the attached server, recording what to expect."""
        server = self.server
        assert server is not None
        queue = self.queue
        if mtype == m.QUERY:
            sql, _ = m.read_cstr(region, start)
            if self.transaction_mode:
                feature = self.proxy.session_only(sql)
                if feature is not None:
                    self.reject(self.session_only_error(feature), simple=True)
                    return
            tag = self.deallocate(sql)
            if tag is not None:
                # The ReadyForQuery status is the one in force when this answer goes out
                # (a BEGIN pipelined ahead of it changes it): a tuple marks "add it then".
                if self.queue:
                    self.queue.append(Entry(K_SYNTH, (m.command_complete(tag),)))
                else:
                    self.write(m.command_complete(tag) + m.ready_for_query(server.status))
                return
            changes = restore = None
            if _MAY_TRACK.search(sql) is not None:
                parts = split_statements(sql)
                found = [c for c in map(parse_tracked, parts) if c is not None]
                changes = deque(found) if found else None
                if self.restorable:
                    restore = {t for t in map(reset_target, parts) if t is not None}
            self.out.append(region[start - 5:end])
            server.unnamed = None  # Postgres drops the unnamed statement on a simple Query
            queue.append(Timed(K_QUERY, changes,
                               (server.hists or self._hists(server))[is_read(sql)],
                               perf_counter()))
            if restore:
                self._restore(restore)
        elif mtype == m.BIND:
            self.batch_open = True
            portal, pos = m.read_cstr(region, start)
            name, pos = m.read_cstr(region, pos)
            stmt = self.stmts.get(name)
            server_name = None
            if stmt is None:
                self.out.append(region[start - 5:end])  # Postgres reports the missing statement
            else:
                self.bound_read = stmt.read
                server_name = self.ensure_prepared(name, stmt)
                self.out.append(m.message(m.BIND, m.cstr(portal) + m.cstr(server_name)
                                          + region[pos:end]))
                if stmt.change is not None:
                    self.portal_changes[portal] = stmt.change
                elif self.portal_changes:
                    self.portal_changes.pop(portal, None)
                if self.restorable:
                    if stmt.reset is not None:
                        self.portal_resets[portal] = stmt.reset
                    else:
                        self.portal_resets.pop(portal, None)
            # a str (not a tuple): for _stale_plan if the Bind fails, ignored by _undo
            queue.append(Entry(K_ONE, server_name or None))
        elif mtype == m.EXECUTE:
            self.batch_open = self.batch_executed = True
            self.out.append(region[start - 5:end])
            change = None
            if self.portal_changes or self.portal_resets:
                portal, _ = m.read_cstr(region, start)
                change = self.portal_changes.get(portal)
                target = self.portal_resets.get(portal)
                if target is not None:
                    self.resets.add(target)
            queue.append(Timed(K_EXECUTE, change,
                               (server.hists or self._hists(server))[self.bound_read],
                               perf_counter()))
        elif mtype == m.SYNC:
            self.batch_open = self.batch_executed = False
            self.skipping = False  # a Sync ends the skip after an error (as in Postgres)
            self.out.append(region[start - 5:end])
            queue.append(Entry(K_SYNC))
            if self.resets:
                self._restore(self.resets)
                self.resets = set()
        elif mtype == m.PARSE:
            self.batch_open = True
            self.parse(region[start:end])
        elif mtype == m.DESCRIBE or mtype == m.CLOSE:
            self.batch_open = True
            kind = region[start]
            if kind != ord("S"):
                self.out.append(region[start - 5:end])
                queue.append(Entry(K_DESCRIBE if mtype == m.DESCRIBE else K_ONE))
                return
            name, _ = m.read_cstr(region, start + 1)
            stmt = self.stmts.get(name)
            if mtype == m.CLOSE:
                if stmt is not None:
                    del self.stmts[name]
                self.synth(m.CLOSE_COMPLETE_MSG)  # the server keeps it for others
                return
            if stmt is None:
                self.out.append(region[start - 5:end])
            else:
                server_name = self.ensure_prepared(name, stmt)
                self.out.append(m.message(m.DESCRIBE, b"S" + m.cstr(server_name)))
                if self.planner is not None:  # learn its parameter types (see target)
                    queue.append(Entry(K_DESCRIBE, stmt))
                    return
            queue.append(Entry(K_DESCRIBE))
        elif mtype == m.FLUSH:
            self.out.append(region[start - 5:end])
        elif mtype == m.FUNCTION_CALL:
            self.out.append(region[start - 5:end])
            queue.append(Entry(K_QUERY))
        else:  # pragma: no cover - filtered by _VALID_FRONTEND
            raise ProtocolViolation(f"unexpected message type {mtype}")

    def _hists(self, server: ServerConnection) -> tuple[Histogram, Histogram]:
        """The (write, read) latency histograms of `server`'s shard, kept on the server."""
        server.hists = (self.requests.labels(server.shard, "write"),
                        self.requests.labels(server.shard, "read"))
        return server.hists

    def _restore(self, targets: set[str]) -> None:
        """After RESET-like statements (a simple Query, or extended ones up to a Sync).

        Postgres' RESET returns a setting to the client's startup value, the server's to
        its own default: queue a query setting the startup values again (in the same
        transaction). Its ParameterStatus messages reach the client, and its ReadyForQuery
        stands in for the one of the client's request, held back until then."""
        every = "" in targets
        sql: list[str] = []
        changes: list[SettingChange] = []
        for name, value in (self.default_params or {}).items():
            if every or name.lower() in targets:
                sql.append(f"SET {name} TO {quote_literal(value)}")
        for name, value in self.defaults.items():
            if every or name in targets:
                sql.append(f"SET {name} TO {value}")
                changes.append(SettingChange(name, value))
        if sql:
            self.out.append(m.query(";".join(sql)))
            if self.server is not None:
                self.server.unnamed = None
            self.queue.append(Entry(K_RESTORE, changes))

    def parse(self, body: bytes) -> None:
        name, stmt = self.proxy.statements.from_parse(body)
        if self.transaction_mode and stmt.session_feature is not None:
            self.reject(self.session_only_error(stmt.session_feature), simple=False)
            return
        if name and name in self.stmts:
            self.reject(ShardwireError(f'prepared statement "{name}" already exists',
                                       sqlstate="42P05"), simple=False)
            return
        self.stmts[name] = stmt
        server = self.server
        assert server is not None
        if name == "":
            # The unnamed statement is per server connection: send it as the client wrote it.
            self.out.append(m.message(m.PARSE, body))
            self.unnamed_body = server.unnamed = body
            self.queue.append(Entry(K_ONE, (name, None)))
            return
        if _REPLAN:
            self._replan(server, stmt.server_name)
        if stmt.server_name in server.prepared:
            server.prepared.move_to_end(stmt.server_name)
            self.synth(m.PARSE_COMPLETE_MSG)
            return
        self.prepare_on_server(stmt)
        self.queue.append(Entry(K_ONE, (name, stmt.server_name)))

    def prepare_on_server(self, stmt: Statement) -> None:
        server = self.server
        assert server is not None
        prepared = server.prepared
        if len(prepared) >= self.proxy.max_server_statements:
            evict, _ = prepared.popitem(last=False)
            self.out.append(m.close_statement(evict))
            self.queue.append(Entry(K_SWALLOW_ONE, (None, evict)))
        prepared[stmt.server_name] = None
        self.out.append(m.message(m.PARSE, stmt.parse_body))
        if _REPLAN:
            fresh = _REPLAN.get(stmt.server_name)
            if fresh is not None:
                fresh.add(server)

    def _replan(self, server: ServerConnection, server_name: str) -> None:
        """Close a statement on `server` if it went stale there (see _REPLAN); the caller
        then prepares it again as the server no longer lists it."""
        fresh = _REPLAN.get(server_name)
        if fresh is None or server in fresh:
            return
        fresh.add(server)
        if server.prepared.pop(server_name, 0) is None:  # listed: held by the server
            self.out.append(m.close_statement(server_name))
            self.queue.append(Entry(K_SWALLOW_ONE, (None, None)))

    @staticmethod
    def _stale_plan(server_name: str, error: bytes) -> None:
        """A Bind of a named statement failed: if Postgres will keep refusing the statement
        (0A000, see _REPLAN), make every server connection prepare it again."""
        if m.decode_fields(error).get("C") == "0A000":
            _REPLAN[server_name] = weakref.WeakSet()

    def ensure_prepared(self, name: str, stmt: Statement) -> str:
        """Before a Bind/Describe: make sure this server holds the client's statement.

        Returns the statement's name on the server ("" stays the unnamed statement)."""
        server = self.server
        assert server is not None
        if name == "":
            body = self.unnamed_body
            if server.unnamed is not body and server.unnamed != body:
                self.out.append(m.message(m.PARSE, body))
                server.unnamed = body
                self.queue.append(Entry(K_SWALLOW_ONE, ("", None)))
            return ""
        if _REPLAN:
            self._replan(server, stmt.server_name)
        if stmt.server_name in server.prepared:
            server.prepared.move_to_end(stmt.server_name)
        else:
            self.prepare_on_server(stmt)
            self.queue.append(Entry(K_SWALLOW_ONE, (None, stmt.server_name)))
        return stmt.server_name

    def synth(self, payload: bytes) -> None:
        """Answer in order: now if nothing is pending, else when the queue reaches it."""
        if self.queue:
            self.queue.append(Entry(K_SYNTH, payload))
        else:
            self.write(payload)

    def local_setting(self, route: Route, *, simple: bool) -> None:
        """`SET/RESET/SHOW shardwire.shard|shard_key`: the session's routing hints."""
        setting = route.setting
        assert setting is not None
        if not simple:
            self.reject(FeatureNotSupported(
                f"shardwire.{setting.name} can only be set or shown with a simple query",
                hint="send it without parameters through the simple query protocol (psql, "
                     "or your driver's plain execute)"), simple=False)
            return
        name = setting.name
        if route.statement_type == "shardwire_show":
            value = self.hint_shard if name == "shard" else self.hint_key
            payload = (m.row_description([(f"shardwire.{name}", 25)])
                       + m.data_row([(value or "").encode()]) + m.command_complete("SHOW"))
        else:
            if setting.local:
                self.reject(FeatureNotSupported(
                    f"SET LOCAL shardwire.{name} is not supported",
                    hint=f"use SET shardwire.{name} and RESET it after the transaction"),
                    simple=True)
                return
            value = setting.value
            if name == "shard" and value is not None and value != "all" and (
                    value not in self.proxy.config.shard_names):
                self.reject(ShardwireError(
                    f"unknown shard {value!r} in SET shardwire.shard; expected one of "
                    f"{', '.join((*self.proxy.config.shard_names, 'all'))}",
                    sqlstate="22023"), simple=True)
                return
            if name == "shard":
                self.hint_shard = value
            else:
                self.hint_key = value
            payload = m.command_complete("SET" if value is not None else "RESET")
        if self.queue:
            self.queue.append(Entry(K_SYNTH, (payload,)))
        else:
            self.write(payload + m.ready_for_query(self.client_status()))

    def reject(self, err: ShardwireError, *, simple: bool) -> None:
        """Report a request the proxy refuses, as Postgres would report an error there.

        With a server attached, the server is made to fail in the statement's place (a
        statement that cannot parse) and its ErrorResponse is replaced by ours: the
        transaction is aborted, later extended messages are skipped up to Sync and the
        ReadyForQuery status is the server's own, exactly as if Postgres had refused it;
        and a ReadyForQuery 'I' gives the server back to the pool as usual."""
        payload = error_bytes(err)
        self.proxy.stats.errors[err.sqlstate[:2]] += 1
        if self.server is not None:
            self.out.append(_FAIL_QUERY if simple else _FAIL_PARSE)
            if simple:
                self.server.unnamed = None  # a simple Query drops the unnamed statement
            self.queue.append(Entry(K_FAIL_QUERY if simple else K_FAIL_ONE, payload))
            return
        if self.deferred_begin:
            self.deferred_failed = True  # the error aborts the (not yet sent) transaction
        if simple:
            payload += m.ready_for_query(self.client_status())
        else:
            self.skipping = True
        self.synth(payload)

    @staticmethod
    def session_only_error(feature: str) -> FeatureNotSupported:
        return FeatureNotSupported(
            f"{feature} is not supported in transaction pooling mode",
            detail="the server connection is shared between clients after each transaction, "
                   "so session-scoped state would leak or be lost",
            hint="use pool.mode: session for this workload, or a protocol-level prepared "
                 "statement / transaction-scoped alternative")

    # ----------------------------------------------------------------- server -> client
    def on_server_data(self, server: ServerConnection, region: bytes,
                       frames: list[Frame]) -> None:
        if server is not self.server:
            self._passive_data(server, region, frames)
            return
        queue = self.queue
        if (len(queue) == 1 and frames[-1][0] == m.READY_FOR_QUERY and queue[0].kind == K_QUERY
                and queue[0].data is None and not self.pending and not self.savepoints
                and not self.failed and self._plain_answer(region, frames)):
            # Fast path: the whole answer to one plain simple query, nothing to track.
            entry = queue.popleft()
            if entry.h is not None:
                entry.h.observe(perf_counter() - entry.t)
            status = server.status = region[frames[-1][1]:frames[-1][1] + 1]
            if status == b"I":
                self.begin_sql = None
                if self.cursors:
                    self.cursors.clear()
            self.write(region)
            if status == b"I" and self.transaction_mode and self.server is server:
                self.release_server()
            return
        out: list[bytes] = []
        flushed = 0  # region[flushed:] not yet copied to `out`
        release = False
        for mtype, start, end in frames:
            entry = queue[0] if queue else None
            kind = entry.kind if entry is not None else -1
            if kind == K_SWALLOW_Z or kind == K_SWALLOW_ONE:
                if mtype == m.PARAMETER_STATUS:
                    name, value = m.decode_parameter_status(region[start:end])
                    server.params[name] = value
                elif mtype == m.ERROR_RESPONSE and kind == K_SWALLOW_ONE:
                    # A statement the client prepared earlier failed to re-prepare (e.g. a
                    # dropped table): the client must see it, as its Bind now fails.
                    self._undo(entry)
                    queue.popleft()
                    self._drop_until_sync()
                    continue
                elif mtype in _ASYNC:
                    if (mtype != m.NOTICE_RESPONSE
                            or entry.data.__class__ is not BeginProbe):  # type: ignore[union-attr]
                        continue  # notices and notifications still reach the client
                    entry.data.warned = True  # type: ignore[union-attr]
                if start - 5 > flushed:
                    out.append(region[flushed:start - 5])
                flushed = end
                if kind == K_SWALLOW_ONE:
                    queue.popleft()
                elif mtype == m.READY_FOR_QUERY:
                    server.status = region[start:start + 1]
                    queue.popleft()
                    probe = entry.data  # type: ignore[union-attr]
                    if probe.__class__ is BeginProbe and not probe.warned and (  # type: ignore[union-attr]
                            server.status == b"T"):
                        self.implicit_txn = True
                elif mtype == m.ERROR_RESPONSE and kind == K_SWALLOW_Z:
                    # The client's session state could not be applied: running its statements
                    # with other settings (say another search_path) could write to the wrong
                    # place. End the session rather than guess.
                    problem = m.decode_fields(region[start:end]).get("M", "error")
                    log.warning("session sync failed on %s: %s", server.address, problem)
                    server.settings.clear()
                    server.params.clear()  # forces a full sync for the next client
                    self._sync_failed = problem
            elif kind == K_RESTORE:
                if mtype in _ASYNC:
                    if mtype == m.PARAMETER_STATUS:  # the client sees these, as in Postgres
                        name, value = m.decode_parameter_status(region[start:end])
                        server.params[name] = value
                        self.params[name] = value
                    continue
                if mtype == m.READY_FOR_QUERY:  # forwarded: it stands in for the client's
                    status = server.status = region[start:start + 1]
                    queue.popleft()
                    if entry.data:  # type: ignore[union-attr]
                        # server-side only: the server has the startup values again
                        self.pending.extend((c, False) for c in entry.data)  # type: ignore[union-attr]
                    if status == b"I":
                        self._commit_settings()
                        release = self._idle_after(queue)
                else:  # its CommandComplete / ErrorResponse: hidden
                    if mtype == m.ERROR_RESPONSE:  # e.g. 25P02: it changed nothing
                        entry.data = None  # type: ignore[union-attr]
                    if start - 5 > flushed:
                        out.append(region[flushed:start - 5])
                    flushed = end
            elif mtype in _ASYNC:
                if mtype == m.PARAMETER_STATUS:
                    name, value = m.decode_parameter_status(region[start:end])
                    server.params[name] = value
                    self.params[name] = value
                continue
            elif kind == K_SWALLOW_SYNC:  # its ReadyForQuery (errors belong to earlier ones)
                if start - 5 > flushed:
                    out.append(region[flushed:start - 5])
                flushed = end
                if mtype == m.READY_FOR_QUERY:
                    server.status = region[start:start + 1]
                    queue.popleft()
                    if server.status == b"I":
                        release = self._idle_after(queue)
            elif mtype == m.ERROR_RESPONSE:
                # The transaction is aborted: its SETs go at ReadyForQuery 'I' or ROLLBACK;
                # those before a savepoint survive ROLLBACK TO.
                self.failed = True
                if kind == K_FAIL_QUERY or kind == K_FAIL_ONE:
                    # The stand-in for a refused statement failed: show our error instead.
                    if start - 5 > flushed:
                        out.append(region[flushed:start - 5])
                    out.append(entry.data)  # type: ignore[union-attr,arg-type]
                    flushed = end
                    if kind == K_FAIL_QUERY:
                        entry.kind, entry.data = K_QUERY, None  # type: ignore[union-attr]
                    else:
                        queue.popleft()
                        self._drop_until_sync()
                elif kind != K_QUERY and kind != K_SYNC:  # at a Sync, ReadyForQuery follows
                    if entry is not None:
                        if kind == K_ONE and entry.data.__class__ is str:  # a failed Bind
                            self._stale_plan(entry.data, region[start:end])  # type: ignore[arg-type]
                        self._undo(entry)
                        queue.popleft()
                        if entry.h is not None:
                            entry.h.observe(perf_counter() - entry.t)
                    self._drop_until_sync()
            elif kind == K_QUERY or kind == K_SYNC:
                if mtype == m.READY_FOR_QUERY:
                    status = region[start:start + 1]
                    server.status = status
                    queue.popleft()
                    if entry.h is not None:  # type: ignore[union-attr]
                        entry.h.observe(perf_counter() - entry.t)  # type: ignore[union-attr]
                    if status == b"I":
                        if not self.deferred_begin:
                            self.begin_sql = None
                        if self.cursors:
                            self.cursors.clear()
                        if self.failed:  # the (implicit) transaction was rolled back
                            self.pending.clear()
                            self.savepoints.clear()
                        else:
                            self._commit_settings()
                        release = self._idle_after(queue)
                    self.failed = False
                    if queue and queue[0].kind == K_RESTORE:  # see _restore: held back
                        if start - 5 > flushed:
                            out.append(region[flushed:start - 5])
                        flushed = end
                elif mtype == m.COMMAND_COMPLETE:
                    self._on_command_complete(region[start:end - 1],
                                              entry.data if entry is not None else None)
            elif kind == K_EXECUTE:
                if mtype in _EXECUTE_END:
                    if mtype == m.COMMAND_COMPLETE:
                        change = entry.data if entry is not None else None
                        self._on_command_complete(
                            region[start:end - 1],
                            deque((change,)) if change is not None else None)
                    queue.popleft()
                    if entry.h is not None:  # type: ignore[union-attr]
                        entry.h.observe(perf_counter() - entry.t)  # type: ignore[union-attr]
            elif kind == K_ONE:
                queue.popleft()
            elif kind == K_DESCRIBE:
                if mtype in _DESCRIBE_END:
                    queue.popleft()
                elif mtype == m.PARAMETER_DESCRIPTION and entry.data is not None:  # type: ignore[union-attr]
                    self._learn_param_types(entry.data, region, start, end)  # type: ignore[union-attr,arg-type]
            # else: nothing expected (e.g. a FATAL at server shutdown): forward as is.
            if queue and queue[0].kind == K_SYNTH:
                out.append(region[flushed:end])
                flushed = end
                while queue and queue[0].kind == K_SYNTH:
                    data = queue.popleft().data
                    if data.__class__ is tuple:  # a simple-query answer: status as of now
                        data = data[0] + m.ready_for_query(server.status)  # type: ignore[index]
                    out.append(data)  # type: ignore[arg-type]
        if flushed < len(region):
            out.append(region[flushed:] if flushed else region)
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
        if self._sync_failed is not None:
            problem, self._sync_failed = self._sync_failed, None
            self.send_error(ShardwireError(
                f'could not apply this session\'s settings on shard "{server.shard}": {problem}',
                hint="a setting this client made earlier is not valid on that shard; "
                     "reconnect, and check that every shard has the same roles and schemas",
                sqlstate="08006"), fatal=True)
            self.close()
            return
        if release and self.server is server:
            self.release_server()
        if self._resume_at is not None and not self.queue:
            asyncio.get_running_loop().call_soon(self._resume_after_drain)

    def _passive_data(self, server: ServerConnection, region: bytes,
                      frames: list[Frame]) -> None:
        """Traffic from a held server that is not the active one (a transaction's idle
        participant): only notices and notifications are expected; pass them on."""
        for mtype, start, end in frames:
            if mtype == m.NOTICE_RESPONSE or mtype == m.NOTIFICATION_RESPONSE:
                self.write(region[start - 5:end])
            elif mtype == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(region[start:end])
                server.params[name] = value
            else:
                log.warning("unexpected message %r from idle participant %s", chr(mtype),
                            server.address)

    def _learn_param_types(self, stmt: Statement, region: bytes, start: int, end: int) -> None:
        count = int.from_bytes(region[start:start + 2], "big")
        if start + 2 + 4 * count <= end:
            oids = self.proxy.param_oids
            if len(oids) > 10000:
                oids.clear()
            oids[stmt.server_name] = struct.unpack_from(f"!{count}I", region, start + 2)

    @staticmethod
    def _plain_answer(region: bytes, frames: list[Frame]) -> bool:
        """Only rows and tags before the final ReadyForQuery, none that changes server state
        (DISCARD ALL / DEALLOCATE ALL), no errors, notices or parameter reports."""
        for index in range(len(frames) - 1):
            mtype, start, _ = frames[index]
            if mtype not in _PLAIN:
                return False
            if mtype == m.COMMAND_COMPLETE and region[start] == 68 and not region.startswith(
                    b"DELETE", start):  # 68 is "D"
                return False
        return True

    def _idle_after(self, queue: deque[Entry]) -> bool:
        """At a ReadyForQuery 'I' in transaction mode: can the server go back to its pool?
        Yes when nothing more is expected from it: the queue is empty, or holds only
        answers the proxy gives itself (they go out right after this ReadyForQuery)."""
        return self.transaction_mode and (not queue or all(e.kind == K_SYNTH for e in queue))

    def _on_command_complete(self, tag: bytes,
                             changes: deque[SettingChange | Savepoint] | None) -> None:
        first = tag[:1]
        if first == b"S" or first == b"R":
            if tag == b"SET" or tag == b"RESET":
                if changes and isinstance(changes[0], SettingChange):
                    self.pending.append((changes.popleft(), True))
            elif tag == b"SAVEPOINT" or tag == b"RELEASE" or tag == b"ROLLBACK":
                op = changes[0] if changes else None
                if not isinstance(op, Savepoint) or op.op != tag.decode().lower():
                    op = None
                elif changes:
                    changes.popleft()
                self._move_savepoint(tag, op)
        elif first == b"D":
            if tag == b"DISCARD ALL" and changes and isinstance(changes[0], SettingChange):
                self.pending.append((changes.popleft(), True))  # type: ignore[arg-type]
            if tag in (b"DISCARD ALL", b"DEALLOCATE ALL") and self.server is not None:
                self.server.prepared.clear()
                self.server.unnamed = None
        elif tag == b"COMMIT":  # also COMMIT AND CHAIN, whose new transaction goes on
            self._commit_settings()
            self.savepoints.clear()

    def _move_savepoint(self, tag: bytes, op: Savepoint | None) -> None:
        """SAVEPOINT marks the pending SETs; ROLLBACK TO drops those after the mark;
        RELEASE keeps them; a plain ROLLBACK (also a failed COMMIT) drops them all."""
        savepoints = self.savepoints
        if op is None:
            if tag == b"ROLLBACK":
                self.pending.clear()
                savepoints.clear()
            return
        if op.op == "savepoint":
            savepoints.append((op.name, len(self.pending)))
            return
        for i in range(len(savepoints) - 1, -1, -1):  # the newest of that name
            if savepoints[i][0] == op.name:
                if op.op == "rollback":
                    del self.pending[savepoints[i][1]:]
                    del savepoints[i + 1:]  # the savepoint itself stays
                else:
                    del savepoints[i:]
                return

    def _commit_settings(self) -> None:
        if self.pending:
            server = self.server
            for change, for_client in self.pending:
                if for_client:
                    apply_change(self.settings, change, self.defaults)
                if server is not None:
                    apply_change(server.settings, change)  # the server's own defaults
            self.pending.clear()

    def _undo(self, entry: Entry) -> None:
        """A Parse that did not happen: forget the statement on the server and the client."""
        if entry.data.__class__ is not tuple or entry.kind not in (K_ONE, K_SWALLOW_ONE):
            return  # (a Bind's entry holds a str)
        client_name, server_name = entry.data  # type: ignore[misc]
        server = self.server
        if server_name is not None and server is not None:
            server.prepared.pop(server_name, None)
        if client_name == "" and server is not None:
            server.unnamed = None
        if client_name and entry.kind == K_ONE:
            self.stmts.pop(client_name, None)

    def _drop_until_sync(self) -> None:
        """After an error the server skips to the next Sync: so do our expectations."""
        queue = self.queue
        while queue and queue[0].kind != K_SYNC and queue[0].kind != K_SWALLOW_SYNC:
            self._undo(queue.popleft())
        if not queue or queue[0].kind == K_SWALLOW_SYNC:
            self.skipping = True  # the client's Sync has not arrived: drop its messages

    def on_server_lost(self, server: ServerConnection, exc: Exception | None) -> None:
        held = self.held.get(server.shard)
        if held is None or held[0] is not server:
            return
        del self.held[server.shard]
        held[1].release(server, reusable=False)
        if server is self.server:
            self.server = None
            self.pool = None
            self.queue.clear()
        if not self.closed:
            self.send_error(ShardwireError(
                f'lost the connection to shard "{server.shard}" ({server.address})',
                detail=str(exc) if exc else "the server closed the connection",
                hint="the shard restarted or failed; reconnect and retry the transaction",
                sqlstate="08006"), fatal=True)
            self.close()

    # -------------------------------------------------------------------- plumbing
    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def send_error(self, err: ShardwireError, *, fatal: bool = False) -> None:
        self.proxy.stats.errors[err.sqlstate[:2]] += 1
        self.write(error_bytes(err, fatal=fatal))

    def release_server(self) -> None:
        server, pool = self.server, self.pool
        self.server = None
        self.pool = None
        if self._server_full:
            self.resume_client()
        if server is not None and pool is not None:
            self.held.pop(server.shard, None)
            pool.release(server)

    def close(self) -> None:
        self.closed = True
        if not self.transport.is_closing():
            self.transport.close()

    def cancel(self) -> None:
        """Forward a client's CancelRequest to the server running its statement."""
        server = self.server
        if server is not None and self.queue:
            self.proxy.spawn(self.proxy.send_cancel(server))
        for other in self.fanout_servers:
            self.proxy.spawn(self.proxy.send_cancel(other))

    def cleanup(self) -> None:
        """The client is gone: give the server back clean, or close it."""
        self.proxy.forget_session(self)
        active = self.server
        self.server = None
        self.pool = None
        busy = bool(self.queue) or self.copy is not None
        self.queue.clear()
        held, self.held = self.held, {}
        if self.copy is not None:
            self.copy.abandon()
            self.copy = None
        for server, pool in held.values():
            if server in self.fanout_servers:
                continue  # the fanout task gives these back when it ends
            server.sink = None
            server.flow = None
            if (busy and server is active) or server.status != b"I":
                # Mid-query or mid-transaction: stop the query, never hand this connection on.
                if busy and server is active:
                    self.proxy.spawn(self.proxy.send_cancel(server))
                pool.release(server, reusable=False)
            elif not self.transaction_mode:
                self.proxy.spawn(self.proxy.reset_and_release(pool, server))
            else:
                pool.release(server)


def _row_limited(region: bytes, frames: list[Frame], index: int) -> bool:
    """Whether the batch from frame `index` (a Bind) to its Sync executes with a row limit,
    or only binds a named portal (to execute it later, in steps)."""
    named = region[frames[index][1]] != 0
    for i in range(index + 1, len(frames)):
        mtype, start, end = frames[i]
        if mtype == m.SYNC:
            return named
        if mtype == m.BIND:
            return False
        if mtype == m.EXECUTE:
            return m.execute_max_rows(region, start, end) != 0
    return False


def _has_deallocate(region: bytes, start: int, end: int) -> bool:
    """Cheap byte test before decoding a query to look for DEALLOCATE."""
    return (region.find(b"eallocate", start, end) >= 0
            or region.find(b"EALLOCATE", start, end) >= 0)


def error_bytes(err: ShardwireError, *, fatal: bool = False) -> bytes:
    severity = "FATAL" if fatal else err.severity
    return m.error_response(severity, err.sqlstate, err.message, detail=err.detail,
                            hint=err.hint)


SessionFactory = Callable[..., ClientSession]
