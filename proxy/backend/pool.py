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
from collections.abc import Callable
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
    """Connections to one Postgres host for one user.

    Two switches stop check-outs without touching connections in use: ``down`` (the
    shard's circuit breaker is open: check-outs fail at once with that error instead of
    each waiting ``connect_timeout``) and ``paused`` (admin ``PAUSE``: check-outs wait
    until ``RESUME``). ``on_unreachable`` is told when a connect attempt fails for
    network reasons, so the health monitor can open the breaker for every pool of the host.
    """

    def __init__(self, target: PoolTarget, *, size: int, connect_timeout: float,
                 checkout_timeout: float, idle_timeout: float = 600.0,
                 lifetime: float = 3600.0,
                 on_unreachable: Callable[[PoolTarget, ShardUnavailable], None] | None = None,
                 ) -> None:
        self.target = target
        self.size = size
        self.connect_timeout = connect_timeout
        self.checkout_timeout = checkout_timeout
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.on_unreachable = on_unreachable
        self.idle: deque[ServerConnection] = deque()
        self.total = 0  # open or opening connections, in use or idle
        self.conns: set[ServerConnection] = set()  # open ones, for SHOW SERVERS
        self.waiters: deque[asyncio.Future[ServerConnection | None]] = deque()
        self.closing = False
        self.down: ShardUnavailable | None = None  # the breaker's error while open
        self.paused: asyncio.Event | None = None  # set by RESUME
        self.blocked = False  # down or paused: try_acquire hands nothing out
        # Counters read by metrics/admin at scrape time.
        self.checkouts = 0
        self.connects = 0
        self.connect_errors = 0

    # ------------------------------------------------------------------ switches
    def set_down(self, error: ShardUnavailable | None) -> None:
        """Open (with the error to give) or close (None) this pool's circuit breaker."""
        self.down = error
        self.blocked = error is not None or self.paused is not None
        if error is not None:
            self._fail_waiters(error)
            while self.idle:  # the host is gone: these are dead too
                self._forget(self.idle.pop())

    def pause(self) -> None:
        if self.paused is None:
            self.paused = asyncio.Event()
            self.blocked = True

    def resume(self) -> None:
        paused, self.paused = self.paused, None
        self.blocked = self.down is not None
        if paused is not None:
            paused.set()

    def reconfigure(self, *, size: int, connect_timeout: float, checkout_timeout: float,
                    idle_timeout: float, lifetime: float) -> None:
        """Apply new pool settings (topology reload) without closing anything: a smaller
        pool shrinks as connections come back, a larger one serves waiters now."""
        grow = size - self.size
        self.size = size
        self.connect_timeout = connect_timeout
        self.checkout_timeout = checkout_timeout
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        for _ in range(max(0, grow)):
            if not self._offer(None):
                break

    def drain(self) -> None:
        """Retire this pool (its host left the topology or changed): idle connections close
        now, ones in use close when they come back; nothing running is interrupted."""
        self.closing = True
        while self.idle:
            self._forget(self.idle.pop())

    @property
    def active(self) -> int:
        return self.total - len(self.idle)

    def try_acquire(self) -> ServerConnection | None:
        """Hand out an idle connection without waiting, if there is one."""
        if self.blocked:
            return None
        idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection, and idle ones age out
            if conn.closed:
                self._forget(conn)
                continue
            self.checkouts += 1
            return conn
        return None

    def _forget(self, conn: ServerConnection) -> None:
        if not conn.closed:
            conn.terminate()
        self.conns.discard(conn)
        self.total -= 1

    async def acquire(self) -> ServerConnection:
        while self.blocked:
            if self.down is not None:
                err = self.down
                raise ShardUnavailable(err.message, detail=err.detail, hint=err.hint,
                                       sqlstate=err.sqlstate)
            if self.paused is not None:
                await self.paused.wait()
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
            if exc.sqlstate == "08006" and self.on_unreachable is not None:
                self.on_unreachable(t, exc)  # opens the breaker of every pool of the host
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
        self.conns.add(conn)
        return conn

    def release(self, conn: ServerConnection, *, reusable: bool = True) -> None:
        """Give a connection back. Dirty (`reusable=False`) or expired ones are closed."""
        conn.sink = None
        conn.resume_reading()  # a session may have paused it for a slow client
        now = time.monotonic()
        conn.last_used = now
        if (not reusable or conn.closed or self.closing or conn.status != b"I"
                or now - conn.created_at > self.lifetime or self.total > self.size
                or self.down is not None):
            self._forget(conn)
            if self.total < self.size:
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
                self._forget(conn)
            else:
                keep.append(conn)
        self.idle = keep

    def close(self) -> None:
        self.closing = True
        while self.idle:
            self._forget(self.idle.pop())
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.cancel()
