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
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.backend.connection import ServerConnection
from proxy.errors import FeatureNotSupported, ProtocolViolation, ShardwireError
from proxy.frontend.settings import SettingChange, apply_change, parse_setting, sync_sql
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

_ASYNC = frozenset({m.NOTICE_RESPONSE, m.NOTIFICATION_RESPONSE, m.PARAMETER_STATUS})
_EXECUTE_END = frozenset({m.COMMAND_COMPLETE, m.EMPTY_QUERY, m.PORTAL_SUSPENDED})
_DESCRIBE_END = frozenset({m.ROW_DESCRIPTION, m.NO_DATA})
_COPY_MESSAGES = frozenset({m.COPY_DATA, m.COPY_DONE, m.COPY_FAIL})
_VALID_FRONTEND = frozenset({
    m.QUERY, m.PARSE, m.BIND, m.DESCRIBE, m.EXECUTE, m.CLOSE, m.SYNC, m.FLUSH, m.TERMINATE,
    m.COPY_DATA, m.COPY_DONE, m.COPY_FAIL, m.FUNCTION_CALL,
})
WRITE_HIGH_WATER = 1 << 20


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
        self.pending: list[SettingChange] = []
        # Prepared statements by client name; "" is the unnamed statement.
        self.stmts: dict[str, Statement] = {}
        self.portal_changes: dict[str, SettingChange] = {}
        self.unnamed_body = b""  # the client's last unnamed Parse, to replay on another server
        self.server: ServerConnection | None = None
        self.pool: Pool | None = None
        self.queue: deque[Entry] = deque()
        self.out: list[bytes] = []  # bytes for the server, flushed once per client read
        self.skipping = False  # after an error in extended protocol: drop until Sync
        self.closed = False
        self._draining = False

    # ----------------------------------------------------------------- client -> server
    async def run(self, rest: bytes) -> None:
        """Serve the client until it terminates or disconnects."""
        data = rest
        try:
            while not self.closed:
                if data:
                    region, frames = self.framer.feed(data)
                    if frames:
                        await self.handle_frames(region, frames)
                if self.closed:
                    break
                data = await self.stream.read()
                if not data:
                    break
        except ProtocolViolation as err:
            self.send_error(err)
        finally:
            self.closed = True
            self.cleanup()

    async def handle_frames(self, region: bytes, frames: list[Frame]) -> None:
        for mtype, start, end in frames:
            if mtype not in _VALID_FRONTEND:
                raise ProtocolViolation(f"invalid frontend message type {mtype}")
            if mtype == m.TERMINATE:
                self.closed = True
                break
            if self.skipping and mtype != m.SYNC:
                continue
            if mtype in _COPY_MESSAGES:
                if self.server is not None:
                    self.out.append(region[start - 5:end])
                continue  # outside COPY Postgres ignores these too
            if self.server is None:
                if self.answer_locally(mtype, region, start, end):
                    continue
                self.flush()
                try:
                    await self.checkout()
                except ShardwireError as err:
                    self.reject(err, simple=mtype == m.QUERY)
                    continue
                if self.server is None:  # lost while checking out
                    continue
            self.forward(mtype, region, start, end)
        self.flush()

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
        if mtype == m.QUERY:
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
            return "DEALLOCATE ALL"
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        else:
            name = name.lower()
        if name not in self.stmts:
            return None  # let Postgres report 26000 with its own message
        del self.stmts[name]
        return "DEALLOCATE"

    async def checkout(self) -> None:
        pool = self.proxy.pool_for(self.route(), self.user)
        server = pool.try_acquire()
        if server is None:
            server = await pool.acquire()
        if self.closed:
            pool.release(server)
            return
        self.server = server
        self.pool = pool
        server.sink = self
        sql = sync_sql(self.params, server.params, self.settings, server.settings)
        if sql:
            server.settings = dict(self.settings)
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
                self.synth(m.command_complete(tag) + m.ready_for_query(server.status))
                return
            changes = None
            if sql.lstrip()[:1] in "sSrRdD":
                found = [c for c in map(parse_setting, split_statements(sql)) if c is not None]
                changes = deque(found) if found else None
            self.out.append(region[start - 5:end])
            queue.append(Entry(K_QUERY, changes))
        elif mtype == m.BIND:
            portal, pos = m.read_cstr(region, start)
            name, pos = m.read_cstr(region, pos)
            stmt = self.stmts.get(name)
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
            queue.append(Entry(K_ONE))
        elif mtype == m.EXECUTE:
            self.out.append(region[start - 5:end])
            change = None
            if self.portal_changes:
                portal, _ = m.read_cstr(region, start)
                change = self.portal_changes.get(portal)
            queue.append(Entry(K_EXECUTE, change))
        elif mtype == m.SYNC:
            self.out.append(region[start - 5:end])
            queue.append(Entry(K_SYNC))
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
        """Report a request the proxy refuses, as Postgres would report an error there."""
        payload = error_bytes(err)
        if simple:
            status = self.server.status if self.server is not None else b"I"
            if status == b"T":
                status = b"E"  # Postgres aborts the transaction block on any error
                if self.server is not None:
                    self._abort_server_transaction()
            payload += m.ready_for_query(status)
        else:
            self.skipping = True
        self.synth(payload)

    def _abort_server_transaction(self) -> None:
        """Put the server's transaction into failed state too, so later statements get 25P02."""
        self.out.append(m.query("DO $$BEGIN RAISE EXCEPTION 'shardwire: aborted'; END$$"))
        self.queue.append(Entry(K_SWALLOW_Z))

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
                elif mtype == m.ERROR_RESPONSE:
                    log.warning("session sync failed on %s: %s", server.address,
                                m.decode_fields(region[start:end]).get("M"))
            elif mtype in _ASYNC:
                if mtype == m.PARAMETER_STATUS:
                    name, value = m.decode_parameter_status(region[start:end])
                    server.params[name] = value
                    self.params[name] = value
                continue
            elif mtype == m.ERROR_RESPONSE:
                self.pending.clear()
                if kind != K_QUERY:
                    if entry is not None:
                        self._undo(entry)
                        queue.popleft()
                    self._drop_until_sync()
            elif kind == K_QUERY or kind == K_SYNC:
                if mtype == m.READY_FOR_QUERY:
                    status = region[start:start + 1]
                    server.status = status
                    queue.popleft()
                    if status == b"I":
                        self._commit_settings()
                        release = self.transaction_mode and not queue
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
                    out.append(queue.popleft().data)  # type: ignore[arg-type]
        if flushed < len(region):
            out.append(region[flushed:] if flushed else region)
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
        if release and self.server is server:
            self.release_server()

    def _on_command_complete(self, tag: bytes, changes: deque[SettingChange] | None) -> None:
        first = tag[:1]
        if first == b"S" or first == b"R":
            if tag == b"ROLLBACK":
                self.pending.clear()
            elif changes and (tag == b"SET" or tag == b"RESET"):
                self.pending.append(changes.popleft())
        elif first == b"D":
            if tag == b"DISCARD ALL" and changes:
                self.pending.append(changes.popleft())
            if tag in (b"DISCARD ALL", b"DEALLOCATE ALL") and self.server is not None:
                self.server.prepared.clear()
                self.server.unnamed = None

    def _commit_settings(self) -> None:
        if self.pending:
            server = self.server
            for change in self.pending:
                apply_change(self.settings, change)
                if server is not None:
                    apply_change(server.settings, change)
            self.pending.clear()

    def _undo(self, entry: Entry) -> None:
        """A Parse that did not happen: forget the statement on the server and the client."""
        if entry.data is None or entry.kind not in (K_ONE, K_SWALLOW_ONE):
            return
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
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        if (not self._draining and self.server is not None
                and transport.get_write_buffer_size() > WRITE_HIGH_WATER):
            # The client reads slower than the server sends: stop reading the server.
            self._draining = True
            server = self.server
            server.pause_reading()
            asyncio.get_running_loop().create_task(self._drain(server))

    async def _drain(self, server: ServerConnection) -> None:
        try:
            await self.stream.writer.drain()
        except ConnectionError:
            pass
        finally:
            self._draining = False
            server.resume_reading()

    def send_error(self, err: ShardwireError, *, fatal: bool = False) -> None:
        self.write(error_bytes(err, fatal=fatal))

    def release_server(self) -> None:
        server, pool = self.server, self.pool
        self.server = None
        self.pool = None
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


def error_bytes(err: ShardwireError, *, fatal: bool = False) -> bytes:
    severity = "FATAL" if fatal else err.severity
    return m.error_response(severity, err.sqlstate, err.message, detail=err.detail,
                            hint=err.hint)


SessionFactory = Callable[..., ClientSession]
