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
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.backend.connection import ServerConnection
from proxy.errors import FeatureNotSupported, InternalError, ProtocolViolation, ShardwireError
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
    from proxy.frontend.startup import ClientStream
    from proxy.server import Proxy

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


class Entry:
    """One expected response group; `data` is kind-specific (payload, changes, undo)."""

    __slots__ = ("data", "kind")

    def __init__(self, kind: int, data: object = None) -> None:
        self.kind = kind
        self.data = data


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
        count = len(frames)
        while index < count:
            mtype, start, end = frames[index]
            index += 1
            if mtype not in _VALID_FRONTEND:
                raise ProtocolViolation(f"invalid frontend message type {mtype}")
            if mtype == m.TERMINATE:
                self.flush()
                self.close()
                return
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
            if self.server is None:
                if self.answer_locally(mtype, region, start, end):
                    continue
                pool = self.proxy.pool_for(self.route(), self.user)
                server = pool.try_acquire()
                if server is None:
                    self.flush()
                    self._busy = True
                    self.transport.pause_reading()
                    self.proxy.spawn(self._checkout_then_resume(pool, region, frames, index - 1))
                    return
                self.attach(server, pool)
            self.forward(mtype, region, start, end)
        self.flush()

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
        while self._backlog and not self._busy and not self.closed:
            self._feed(self._backlog.popleft())
        if not self._busy and not self.closed and not self._server_full:
            self.transport.resume_reading()

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
            self.write(m.READY_IDLE)
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
                self.write(m.command_complete(tag) + m.READY_IDLE)
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
        self.server = server
        self.pool = pool
        server.sink = self
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

    def route(self) -> str:
        """The shard for the next statement. Until the router lands: the default shard."""
        return self.proxy.config.default_shard

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
            queue.append(Entry(K_QUERY, changes))
            if restore:
                self._restore(restore)
        elif mtype == m.BIND:
            portal, pos = m.read_cstr(region, start)
            name, pos = m.read_cstr(region, pos)
            stmt = self.stmts.get(name)
            server_name = None
            if stmt is None:
                self.out.append(region[start - 5:end])  # Postgres reports the missing statement
            else:
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
            self.out.append(region[start - 5:end])
            change = None
            if self.portal_changes or self.portal_resets:
                portal, _ = m.read_cstr(region, start)
                change = self.portal_changes.get(portal)
                target = self.portal_resets.get(portal)
                if target is not None:
                    self.resets.add(target)
            queue.append(Entry(K_EXECUTE, change))
        elif mtype == m.SYNC:
            self.skipping = False  # a Sync ends the skip after an error (as in Postgres)
            self.out.append(region[start - 5:end])
            queue.append(Entry(K_SYNC))
            if self.resets:
                self._restore(self.resets)
                self.resets = set()
        elif mtype == m.PARSE:
            self.parse(region[start:end])
        elif mtype == m.DESCRIBE or mtype == m.CLOSE:
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
            queue.append(Entry(K_DESCRIBE))
        elif mtype == m.FLUSH:
            self.out.append(region[start - 5:end])
        elif mtype == m.FUNCTION_CALL:
            self.out.append(region[start - 5:end])
            queue.append(Entry(K_QUERY))
        else:  # pragma: no cover - filtered by _VALID_FRONTEND
            raise ProtocolViolation(f"unexpected message type {mtype}")

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

    def reject(self, err: ShardwireError, *, simple: bool) -> None:
        """Report a request the proxy refuses, as Postgres would report an error there.

        With a server attached, the server is made to fail in the statement's place (a
        statement that cannot parse) and its ErrorResponse is replaced by ours: the
        transaction is aborted, later extended messages are skipped up to Sync and the
        ReadyForQuery status is the server's own, exactly as if Postgres had refused it;
        and a ReadyForQuery 'I' gives the server back to the pool as usual."""
        payload = error_bytes(err)
        if self.server is not None:
            self.out.append(_FAIL_QUERY if simple else _FAIL_PARSE)
            if simple:
                self.server.unnamed = None  # a simple Query drops the unnamed statement
            self.queue.append(Entry(K_FAIL_QUERY if simple else K_FAIL_ONE, payload))
            return
        if simple:
            payload += m.READY_IDLE  # no server: no transaction in progress
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
        queue = self.queue
        if (len(queue) == 1 and frames[-1][0] == m.READY_FOR_QUERY and queue[0].kind == K_QUERY
                and queue[0].data is None and not self.pending and not self.savepoints
                and not self.failed and self._plain_answer(region, frames)):
            # Fast path: the whole answer to one plain simple query, nothing to track.
            queue.clear()
            status = server.status = region[frames[-1][1]:frames[-1][1] + 1]
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
                    continue  # notices and notifications still reach the client
                if start - 5 > flushed:
                    out.append(region[flushed:start - 5])
                flushed = end
                if kind == K_SWALLOW_ONE:
                    queue.popleft()
                elif mtype == m.READY_FOR_QUERY:
                    server.status = region[start:start + 1]
                    queue.popleft()
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
                    self._drop_until_sync()
            elif kind == K_QUERY or kind == K_SYNC:
                if mtype == m.READY_FOR_QUERY:
                    status = region[start:start + 1]
                    server.status = status
                    queue.popleft()
                    if status == b"I":
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
            elif kind == K_ONE:
                queue.popleft()
            elif kind == K_DESCRIBE:
                if mtype in _DESCRIBE_END:
                    queue.popleft()
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
        while queue and queue[0].kind != K_SYNC:
            self._undo(queue.popleft())
        if not queue:
            self.skipping = True  # the Sync has not arrived yet: drop the client's messages

    def on_server_lost(self, server: ServerConnection, exc: Exception | None) -> None:
        if server is not self.server:
            return
        self.server = None
        self.queue.clear()
        if self.pool is not None:
            self.pool.release(server, reusable=False)
            self.pool = None
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
        self.write(error_bytes(err, fatal=fatal))

    def release_server(self) -> None:
        server, pool = self.server, self.pool
        self.server = None
        self.pool = None
        if self._server_full:
            self.resume_client()
        if server is not None and pool is not None:
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

    def cleanup(self) -> None:
        """The client is gone: give the server back clean, or close it."""
        self.proxy.forget_session(self)
        server, pool = self.server, self.pool
        self.server = None
        self.pool = None
        if server is None or pool is None:
            return
        server.sink = None
        if self.queue or server.status != b"I":
            # Mid-query or mid-transaction: stop the query, never hand this connection on.
            if self.queue:
                self.proxy.spawn(self.proxy.send_cancel(server))
            self.queue.clear()
            pool.release(server, reusable=False)
        elif not self.transaction_mode:
            self.proxy.spawn(self.proxy.reset_and_release(pool, server))
        else:
            pool.release(server)


def _has_deallocate(region: bytes, start: int, end: int) -> bool:
    """Cheap byte test before decoding a query to look for DEALLOCATE."""
    return (region.find(b"eallocate", start, end) >= 0
            or region.find(b"EALLOCATE", start, end) >= 0)


def error_bytes(err: ShardwireError, *, fatal: bool = False) -> bytes:
    severity = "FATAL" if fatal else err.severity
    return m.error_response(severity, err.sqlstate, err.message, detail=err.detail,
                            hint=err.hint)


SessionFactory = Callable[..., ClientSession]
