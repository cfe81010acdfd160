"""Server connection pool for one (shard, role, user): check-out, give back, wait, expire.

Discipline (asyncpg's pool, psycopg_pool): a connection is handed out only when idle and
clean; one returned dirty is closed, never handed on; a waiter cancelled while a
connection was being handed to it gives the connection back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from proxy.backend.connection import ServerConnection, open_server
from proxy.errors import CheckoutTimeout, ShardUnavailable

log = logging.getLogger("shardwire.pool")


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """Where and as whom a pool connects."""

    shard: str
    role: str
    host: str
    port: int
    database: str
    user: str
    password: str | None


class Pool:
    def __init__(self, target: PoolTarget, *, size: int, connect_timeout: float,
                 checkout_timeout: float, idle_timeout: float = 600.0,
                 lifetime: float = 3600.0) -> None:
        self.target = target
        self.size = size
        self.connect_timeout = connect_timeout
        self.checkout_timeout = checkout_timeout
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.idle: deque[ServerConnection] = deque()
        self.total = 0  # open or opening connections, in use or idle
        self.waiters: deque[asyncio.Future[ServerConnection | None]] = deque()
        self.closing = False
        # Counters read by metrics/admin at scrape time.
        self.checkouts = 0
        self.connects = 0
        self.connect_errors = 0

    @property
    def active(self) -> int:
        return self.total - len(self.idle)

    def try_acquire(self) -> ServerConnection | None:
        """Hand out an idle connection without waiting, if there is one."""
        idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection, and idle ones age out
            if conn.closed:
                self.total -= 1
                continue
            self.checkouts += 1
            return conn
        return None

    async def acquire(self) -> ServerConnection:
        conn = self.try_acquire()
        if conn is not None:
            return conn
        if self.total < self.size:
            return await self._open()
        fut: asyncio.Future[ServerConnection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(self.checkout_timeout):
                conn = await fut  # raises ShardUnavailable if a connect attempt failed
        except TimeoutError:
            self._reclaim(fut)  # the timeout may fire just as something was handed to us
            raise CheckoutTimeout(
                f'no server connection to shard "{self.target.shard}" became free within '
                f"{self.checkout_timeout:g}s (pool size {self.size})",
                detail=f"{self.active} connections in use by clients in a statement or "
                       f"transaction, {len(self.waiters)} other clients waiting",
                hint="raise pool.size or pool.checkout_timeout, or shorten transactions "
                     "(a client idle inside a transaction holds its connection)") from None
        except asyncio.CancelledError:
            self._reclaim(fut)
            raise
        finally:
            if fut in self.waiters:
                self.waiters.remove(fut)
        if conn is None:  # a slot freed up: open a new connection ourselves
            return await self._open()
        self.checkouts += 1
        return conn

    async def _open(self) -> ServerConnection:
        self.total += 1
        t = self.target
        try:
            conn = await open_server(shard=t.shard, role=t.role, host=t.host, port=t.port,
                                     user=t.user, database=t.database, password=t.password,
                                     connect_timeout=self.connect_timeout)
        except ShardUnavailable as exc:
            self.total -= 1
            self.connect_errors += 1
            # Fail fast: the clients queued behind this attempt would each try the same
            # unreachable shard in turn (one connect_timeout apiece) and the last ones end
            # with a misleading 53300 checkout timeout. Hand them this error now instead
            # (pgbouncer does the same while server logins fail).
            self._fail_waiters(exc)
            raise
        except BaseException:
            self.total -= 1
            self.connect_errors += 1
            self._offer(None)
            raise
        self.connects += 1
        self.checkouts += 1
        return conn

    def release(self, conn: ServerConnection, *, reusable: bool = True) -> None:
        """Give a connection back. Dirty (`reusable=False`) or expired ones are closed."""
        conn.sink = None
        conn.resume_reading()  # a session may have paused it for a slow client
        now = time.monotonic()
        conn.last_used = now
        if (not reusable or conn.closed or self.closing or conn.status != b"I"
                or now - conn.created_at > self.lifetime):
            if not conn.closed:
                conn.terminate()
            self.total -= 1
            self._offer(None)
            return
        if conn.cancels_in_flight:
            # A cancel for its last statement is still on its way: handing it on now could
            # cancel the next client's statement. The canceller releases it when done.
            conn.parked = self
            return
        if not self._offer(conn):
            self.idle.append(conn)

    def _reclaim(self, fut: asyncio.Future[ServerConnection | None]) -> None:
        """A waiter gave up: pass on whatever was handed to it (a connection or a slot)."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            conn = fut.result()
            if conn is not None:
                self.release(conn)
            else:
                self._offer(None)

    def _offer(self, conn: ServerConnection | None) -> bool:
        """Hand `conn` (or, with None, a free slot) to the first live waiter."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def _fail_waiters(self, exc: ShardUnavailable) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ShardUnavailable(exc.message, detail=exc.detail,
                                                   hint=exc.hint, sqlstate=exc.sqlstate))

    def prune(self) -> None:
        """Close connections idle longer than idle_timeout (called periodically)."""
        now = time.monotonic()
        keep: deque[ServerConnection] = deque()
        for conn in self.idle:
            if conn.closed or now - conn.last_used > self.idle_timeout:
                conn.terminate()
                self.total -= 1
            else:
                keep.append(conn)
        self.idle = keep

    def close(self) -> None:
        self.closing = True
        while self.idle:
            self.idle.pop().terminate()
            self.total -= 1
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.cancel()
