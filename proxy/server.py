"""The proxy's lifecycle: listen, accept and authenticate clients, own the pools, shut down.

Graceful shutdown (uvicorn's habit): stop accepting, let clients finish their running
transaction for up to `pool.shutdown_timeout`, then end every remaining session with a
FATAL 57P01, as Postgres does on a fast shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from proxy.admin import console as admin_console
from proxy.backend.connection import ServerConnection, open_server
from proxy.backend.health import HealthMonitor
from proxy.backend.pool import Pool, PoolTarget
from proxy.config import Config, Dsn, load_config
from proxy.errors import (
    AdminShutdown,
    ConfigError,
    InternalError,
    InvalidAuthorization,
    ShardUnavailable,
    ShardwireError,
    UnknownDatabase,
)
from proxy.exec import twophase
from proxy.frontend.routing import replica_safe
from proxy.frontend.session import ClientSession, error_bytes
from proxy.frontend.settings import (
    CANONICAL,
    session_only_feature,
    startup_settings,
    startup_value_sql,
    sync_sql,
)
from proxy.frontend.startup import CancelTarget, ClientStream, authenticate, negotiate
from proxy.frontend.statements import StatementCache
from proxy.metrics import MetricsServer, Stats
from proxy.sql.merge import MergePlan, plan_merge
from proxy.sql.planner import Planner
from proxy.topology.reload import plan_reload
from proxy.topology.watcher import TopologyWatcher
from proxy.wire import messages as m

log = logging.getLogger("shardwire.server")

STARTUP_TIMEOUT = 30.0
MAINTENANCE_INTERVAL = 10.0
# What the admin console reports at login (psql reads these).
_ADMIN_PARAMS = {"server_version": "15.0 (shardwire admin)", "server_encoding": "UTF8",
                 "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
                 "integer_datetimes": "on", "standard_conforming_strings": "on"}
# How often in-doubt transactions of earlier runs are looked for again (two-phase commit).
RECOVERY_INTERVAL = 60.0


def make_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context for `config.tls`; ConfigError naming the key if the
    files cannot be used. (Fault tests: a missing file used to end `serve` with a bare
    traceback, FileNotFoundError without even the file name.)"""
    tls = config.tls
    if tls is None:
        return None
    for key, path in (("tls.cert", tls.cert), ("tls.key", tls.key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(config.source, key,
                              f"cannot read {path}: {exc.strerror or exc}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(config.source, "tls",
                          f"cannot load certificate {tls.cert} with key {tls.key}: "
                          f"{exc}") from None
    return ctx


class Proxy:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        # The topology file (None: no reloads, e.g. `shardwire demo`) and its version,
        # bumped by each reload that changes something (see reload()).
        self.config_path = config_path
        self.topology_version = 1
        self.last_reload = "none yet"
        self.watcher: TopologyWatcher | None = None
        # Pools by (shard, role, user, host, port); the primary's by (shard, user) too.
        self.pools: dict[tuple[str, str, str, str, int], Pool] = {}
        self._primary_pools: dict[tuple[str, str], Pool] = {}
        # Every host of every shard is checked in the background (proxy/backend/health.py):
        # its circuit breaker, replica lag and failover detection.
        self.health = HealthMonitor(config.shards, interval=config.health.check_interval,
                                    connect_timeout=config.pool.connect_timeout,
                                    on_change=self._health_changed)
        self.paused: set[str] = set()  # shards paused by the admin console
        self._read_only: dict[str, bool] = {}  # statement text -> may run on a replica
        self._set_replica_reads(config)
        self.sessions: dict[int, ClientSession] = {}
        self.statements = StatementCache()
        self.stats = Stats()  # read by /metrics at scrape time (proxy/metrics.py)
        self.stats.hotkeys.resize(config.sharding.buckets)
        self.planner: Planner | None = self._planner(config)
        # Parameter type OIDs the shards reported for statements whose Parse left them
        # unspecified (asyncpg binds binary values that way): server name -> OIDs.
        self.param_oids: dict[str, tuple[int, ...]] = {}
        # Cross-shard SELECTs that need a merge: plans by statement text (bounded), the
        # shards' collation (asked once), and the cap on groups / distinct rows held.
        self._merge_plans: dict[str, MergePlan | ShardwireError] = {}
        self.collation: str | None = None
        self.max_groups = config.merge.max_groups
        # Two-phase commit of transactions that wrote on several shards (proxy/exec/twophase)
        self.instance = twophase.instance_name(config.transactions.instance,
                                               config.listen.host, config.listen.port)
        self.two_phase = config.transactions.mode == "two_phase" and len(config.shards) > 1
        self.recovered = not self.two_phase
        self.boot = twophase.new_boot()
        # This run's liveness lock on the default shard (see twophase.hold_run_lock): other
        # proxies recover only runs that lost it. Taken before this run's first PREPARE.
        self._run_lock: ServerConnection | None = None
        self._run_lock_guard = asyncio.Lock()
        self._last_recovery = time.monotonic()
        self.commit_retries = 0  # COMMIT PREPARED retried after a failure
        self.metrics_server: MetricsServer | None = None
        self.max_server_statements = 2000
        self.shutting_down = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        # Connections still in startup/authentication (not yet in `sessions`).
        self._handshaking: set[asyncio.Task[Any]] = set()
        self.ssl_context = make_ssl_context(config)
        self.started_at = time.time()

    # -------------------------------------------------------------------- lifecycle
    async def hold_run_lock(self) -> str | None:
        """Make sure this run holds its liveness lock; the problem if it cannot."""
        lock = self._run_lock
        if lock is not None and not lock.closed:
            return None
        async with self._run_lock_guard:
            lock = self._run_lock
            if lock is not None and not lock.closed:
                return None
            shard = self.config.default_shard
            dsn = self.primary_dsn(shard)
            try:
                server = await open_server(
                    shard=shard, role="primary", host=dsn.host, port=dsn.port, user=dsn.user,
                    database=dsn.database, password=dsn.password,
                    connect_timeout=self.config.pool.connect_timeout,
                    extra={"application_name": "shardwire run lock"})
            except ShardUnavailable as exc:
                return exc.message
            error = await twophase.hold_run_lock(server, self.instance, self.boot)
            if error is not None:
                server.terminate()
                return f'cannot take the run lock on shard "{shard}": {error}'
            self._run_lock = server
            return None

    async def recover(self) -> None:
        """Create the decision log and resolve the in-doubt transactions of proxy runs that
        ended (see proxy/exec/twophase.py). Retried by maintenance until it succeeds."""
        cfg = self.config
        servers: dict[str, ServerConnection] = {}
        try:
            problem = await self.hold_run_lock()
            if problem is not None:
                raise RuntimeError(problem)
            for shard in cfg.shards:
                dsn = self.primary_dsn(shard.name)
                servers[shard.name] = await open_server(
                    shard=shard.name, role="primary", host=dsn.host, port=dsn.port,
                    user=dsn.user, database=dsn.database, password=dsn.password,
                    connect_timeout=cfg.pool.connect_timeout,
                    extra={"application_name": "shardwire recovery"})
            for server in servers.values():
                warning = await twophase.check_prepared_slots(server)
                if warning is not None:
                    log.warning("%s", warning)
            error = await twophase.ensure_schema(servers[cfg.default_shard])
            if error is not None:
                raise RuntimeError(f"cannot create the decision log: {error}")
            committed, rolled_back = await twophase.recover(self.instance, servers,
                                                            cfg.default_shard, self.boot)
            first = not self.recovered
            self.recovered = True
            self.stats.twophase_recovered += committed + rolled_back
            if first or committed or rolled_back:
                log.info("two-phase commit ready (instance %s): recovered %d committed, %d "
                         "rolled back", self.instance, committed, rolled_back)
        except Exception as exc:
            log.warning("two-phase commit recovery failed (retrying): %s", exc)
        finally:
            for server in servers.values():
                server.terminate()

    async def start(self) -> None:
        listen = self.config.listen
        metrics = self.config.metrics
        if metrics.enabled:
            try:
                self.metrics_server = MetricsServer(self, metrics.host, metrics.port)
                self.metrics_server.start()
            except OSError as exc:
                self.metrics_server = None
                log.warning("metrics endpoint not started on %s:%d: %s", metrics.host,
                            metrics.port, exc)
        if self.two_phase:  # in the background: it never touches this run's transactions
            self.spawn(self.recover())
        self.spawn(self.health.start())
        self._server = await asyncio.start_server(
            self._handle_client, listen.host, listen.port, reuse_address=True, backlog=1024)
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        if self.config_path is not None:
            self.watcher = TopologyWatcher(self.config_path,
                                           lambda: self.reload("the file changed"))
            self.watcher.start()
        log.info("shardwire listening on %s:%d (database %r, %d shards, pool mode %s)",
                 listen.host, self.port, self.config.database, len(self.config.shards),
                 self.config.pool.mode)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; let transactions finish up to `timeout`; close everyone else."""
        if timeout is None:
            timeout = self.config.pool.shutdown_timeout
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        # Clients still logging in get 57P03 now (as from Postgres) instead of holding the
        # exit back (they used to delay it by 5 s, or by their whole login timeout).
        for task in list(self._handshaking):
            task.cancel()
        deadline = time.monotonic() + timeout
        err = AdminShutdown("terminating connection due to administrator command",
                            hint="shardwire is shutting down")
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions.values()):
                if self._between_transactions(session):  # safe to end now
                    session.send_error(err, fatal=True)
                    session.close()
            if self.sessions:
                await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            session.send_error(err, fatal=True)
            session.close()
        if self._clients:
            await asyncio.wait(self._clients, timeout=5)
        if self._maintenance is not None:
            self._maintenance.cancel()
        if self.watcher is not None:
            await self.watcher.close()
        await self.health.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        for pool in self.pools.values():
            pool.close()
        if self._run_lock is not None:
            self._run_lock.terminate()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        log.info("shardwire stopped")

    @staticmethod
    def _between_transactions(session: ClientSession) -> bool:
        """No transaction open and nothing running. In session mode an idle client keeps
        its server, so `server is None` alone made idle session-mode clients wait for the
        whole shutdown_timeout (fault tests)."""
        return session.between_transactions()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            for pool in self.pools.values():
                pool.prune()
            now = time.monotonic()
            if self.two_phase and (not self.recovered
                                   or now - self._last_recovery >= RECOVERY_INTERVAL):
                self._last_recovery = now
                await self.recover()

    # ------------------------------------------------------------------ services
    def pool_for(self, shard: str, user: str) -> Pool:
        """The pool of `shard`'s primary for `user` (per checkout: one dict lookup)."""
        pool = self._primary_pools.get((shard, user))
        if pool is None or pool.closing:
            pool = self._pool(shard, "primary", self.primary_dsn(shard), user)
            self._primary_pools[(shard, user)] = pool
        return pool

    def primary_dsn(self, shard: str) -> Dsn:
        """Where `shard`'s writes go: its configured primary, or the host that took over
        after a failover (see proxy/backend/health.py)."""
        try:
            return self.health.primary(shard)
        except KeyError:
            return self.config.shard(shard).primary

    def replica_pool(self, shard: str, user: str, pick: int) -> Pool | None:
        """A pool of a healthy replica of `shard` within `reads.max_replica_lag`, or None
        (then the primary serves the read). `pick` spreads clients over the replicas."""
        dsns = self.health.replicas(shard, self.config.reads.max_replica_lag)
        if not dsns:
            return None
        return self._pool(shard, "replica", dsns[pick % len(dsns)], user)

    def read_only(self, sql: str) -> bool:
        """Whether a statement may run on a replica (see proxy/frontend/routing.py)."""
        known = self._read_only.get(sql)
        if known is None:
            known = replica_safe(sql)
            if len(self._read_only) >= 4096:
                self._read_only.clear()
            self._read_only[sql] = known
        return known

    def _set_replica_reads(self, config: Config) -> None:
        # Replica reads need transaction pooling: a session-mode client keeps one server.
        self.replica_reads = (config.pool.mode == "transaction"
                              and any(s.replicas for s in config.shards))

    def shard_state(self, shard: str) -> str:
        """up, down (its primary's breaker is open) or paused (admin PAUSE)."""
        if shard in self.paused:
            return "paused"
        dsn = self.primary_dsn(shard)
        return "down" if self.health.is_down(shard, dsn.host, dsn.port) else "up"

    # ------------------------------------------------------------------ health
    def _unreachable(self, target: PoolTarget, exc: ShardUnavailable) -> None:
        """A pool could not connect: open the breaker of that host for every pool now."""
        self.health.mark_down(target.shard, target.host, target.port, exc.message)

    def _health_changed(self, shard: str) -> None:
        """A host of `shard` went down or came back, or its primary moved: pools follow."""
        primary = self.primary_dsn(shard)
        for key, pool in list(self.pools.items()):
            t = pool.target
            if t.shard != shard:
                continue
            if t.role == "primary" and (t.host, t.port) != (primary.host, primary.port):
                log.warning('shard "%s": writes now go to %s:%d (was %s:%d)', shard,
                            primary.host, primary.port, t.host, t.port)
                pool.drain()
                del self.pools[key]
                continue
            pool.set_down(self._down_error(shard, t.role, t.host, t.port))
        self._primary_pools = {k: p for k, p in self._primary_pools.items()
                               if not p.closing}

    def _down_error(self, shard: str, role: str, host: str,
                    port: int) -> ShardUnavailable | None:
        """The breaker's error for that host while it is down, else None."""
        e = self.health.endpoint(shard, host, port)
        if e is None or e.up:
            return None
        return ShardUnavailable(
            f'shard "{shard}" is down ({role} {host}:{port}): '
            f"{e.last_error or 'it does not answer'}",
            hint=f"shardwire checks it every {self.health.interval:g}s and sends statements "
                 "to it again as soon as it answers",
            sqlstate="08006")

    # ------------------------------------------------------------------ admin
    async def pause(self, shards: list[str]) -> list[tuple[str, str, int]]:
        """PAUSE: new statements for `shards` wait; returns once the statements and
        transactions running there have finished (or after pool.shutdown_timeout)."""
        self.paused.update(shards)
        for pool in list(self.pools.values()):
            if pool.target.shard in shards:
                pool.pause()
        deadline = time.monotonic() + self.config.pool.shutdown_timeout
        for _ in iter(lambda: self._active(shards) and time.monotonic() < deadline, False):
            await asyncio.sleep(0.02)  # polled: connections come back from many places
        log.info("paused %s", ", ".join(shards))
        return [(s, "paused", self._active([s])) for s in shards]

    def resume(self, shards: list[str]) -> list[tuple[str, str, int]]:
        self.paused.difference_update(shards)
        for pool in list(self.pools.values()):
            if pool.target.shard in shards:
                pool.resume()
        log.info("resumed %s", ", ".join(shards))
        return [(s, "running", self._active([s])) for s in shards]

    def _active(self, shards: list[str]) -> int:
        return sum(p.active for p in list(self.pools.values()) if p.target.shard in shards)

    def _pool(self, shard: str, role: str, dsn: Dsn, user: str) -> Pool:
        key = (shard, role, user, dsn.host, dsn.port)
        pool = self.pools.get(key)
        if pool is None or pool.closing:
            cfg = self.config
            user_cfg = cfg.auth.users.get(user)
            server_user = (user_cfg.server_user if user_cfg else None) or dsn.user
            password = (user_cfg.server_password if user_cfg else None) or dsn.password
            pc = cfg.pool
            pool = Pool(PoolTarget(shard, role, dsn.host, dsn.port, dsn.database,
                                   server_user, password),
                        size=pc.size, connect_timeout=pc.connect_timeout,
                        checkout_timeout=pc.checkout_timeout,
                        idle_timeout=pc.idle_timeout or float("inf"),
                        lifetime=pc.server_lifetime or float("inf"),
                        on_unreachable=self._unreachable)
            pool.set_down(self._down_error(shard, role, dsn.host, dsn.port))
            if shard in self.paused:
                pool.pause()
            self.pools[key] = pool
        return pool

    # ------------------------------------------------------------------ reload
    def reload(self, why: str) -> tuple[bool, str]:
        """Read the topology file again and switch to it if it is valid (see
        proxy/topology/reload.py). Returns (ok, what happened). Never raises: an invalid
        file keeps the running topology, and the problem is logged and counted."""
        if self.watcher is not None:
            self.watcher.seen()
        if self.config_path is None:
            return False, "no topology file: this proxy was started without one"
        try:
            new = load_config(self.config_path)
            changes = plan_reload(self.config, new, two_phase=self.two_phase)
            ssl_context = make_ssl_context(changes.config)
            planner = self._planner(changes.config)
        except ConfigError as exc:
            self.stats.reloads["error"] += 1
            self.last_reload = f"error: {exc}"
            log.error("topology reload (%s) refused, still on version %d: %s", why,
                      self.topology_version, exc)
            return False, f"invalid topology, still on version {self.topology_version}: {exc}"
        self.stats.reloads["ok"] += 1
        for item in changes.restart_needed:
            log.warning("topology reload: %s changed; this takes effect at the next restart",
                        item)
        if not changes.summary:
            self.last_reload = f"ok: nothing to change (version {self.topology_version})"
            log.info("topology reload (%s): nothing changed (version %d)", why,
                     self.topology_version)
            return True, self.last_reload
        self._switch(changes.config, planner, ssl_context)
        text = "; ".join(changes.summary)
        self.last_reload = f"ok: version {self.topology_version}: {text}"
        log.info("topology reload (%s): version %d: %s", why, self.topology_version, text)
        return True, self.last_reload

    def _planner(self, config: Config) -> Planner | None:
        """The statement router for `config`; None when it lists no table (every statement
        then goes to the default shard at no planning cost)."""
        if not config.tables:
            return None
        return Planner(config, observe=self.stats.hotkeys.record)

    def _switch(self, config: Config, planner: Planner | None,
                ssl_context: ssl.SSLContext | None) -> None:
        """Make `config` the running topology: one step on the event loop, so no statement
        sees half of it. Sessions between transactions take it now, the others when their
        transaction ends (proxy/frontend/session.py: adopt_topology)."""
        self.config = config
        self.planner = planner
        self.ssl_context = ssl_context
        self.max_groups = config.merge.max_groups
        self.health.update(config.shards)
        self.paused &= set(config.shard_names)
        self._set_replica_reads(config)
        if config.sharding.buckets != self.stats.hotkeys.buckets:
            self.stats.hotkeys.resize(config.sharding.buckets)
        self.topology_version += 1
        pc = config.pool
        for key, pool in list(self.pools.items()):
            shard, role, user, host, port = key
            target = self._target_of(shard, role, user, host, port)
            if target != pool.target:
                pool.drain()  # removed shard, new host or credentials: retire it
                del self.pools[key]
                continue
            pool.reconfigure(size=pc.size, connect_timeout=pc.connect_timeout,
                             checkout_timeout=pc.checkout_timeout,
                             idle_timeout=pc.idle_timeout or float("inf"),
                             lifetime=pc.server_lifetime or float("inf"))
        self._primary_pools = {k: p for k, p in self._primary_pools.items()
                               if not p.closing}
        for session in list(self.sessions.values()):
            if session.between_transactions():
                session.adopt_topology()

    def _target_of(self, shard: str, role: str, user: str, host: str,
                   port: int) -> PoolTarget | None:
        """What a pool with this key would connect to under the running config."""
        cfg = self.config
        try:
            spec = cfg.shard(shard)
        except KeyError:
            return None
        hosts = [self.primary_dsn(shard)] if role == "primary" else list(spec.replicas)
        dsn = next((d for d in hosts if d.host == host and d.port == port), None)
        if dsn is None:
            return None
        user_cfg = cfg.auth.users.get(user)
        if user_cfg is None and cfg.auth.users:
            return None
        return PoolTarget(shard, role, dsn.host, dsn.port, dsn.database,
                          (user_cfg.server_user if user_cfg else None) or dsn.user,
                          (user_cfg.server_password if user_cfg else None) or dsn.password)

    def merge_plan(self, sql: str) -> MergePlan:
        """The merge plan of a cross-shard SELECT (cached); raises what planning raised."""
        plan = self._merge_plans.get(sql)
        if plan is None:
            try:
                plan = plan_merge(sql)
            except ShardwireError as exc:
                plan = exc
            if len(self._merge_plans) >= 4096:
                self._merge_plans.clear()
            self._merge_plans[sql] = plan
        if isinstance(plan, ShardwireError):
            raise plan
        return plan

    @staticmethod
    def session_only(sql: str) -> str | None:
        return session_only_feature(sql)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send_cancel(self, server: ServerConnection) -> Coroutine[Any, Any, None]:
        """Cancel what `server` runs; returns the coroutine to spawn.

        Not async on purpose: the server is marked as having a cancel in flight *now*, before
        the statement can finish, so the pool holds it back until the cancel has landed.
        (Fault tests: a late cancel used to hit the next client's statement on the same
        server once the pool had handed it on.)"""
        server.cancels_in_flight += 1
        return self._send_cancel(server)

    async def _send_cancel(self, server: ServerConnection) -> None:
        host, _, port = server.address.rpartition(":")
        delivered = False
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(m.cancel_request(server.pid, server.key))
                await writer.drain()
                # Postgres signals the backend, then closes: after EOF the cancel has landed
                # (a backend idle at that moment ignores it, as it should).
                await reader.read()
                delivered = True
        except (OSError, TimeoutError) as exc:
            log.warning("could not send a cancel request to %s: %s", server.address, exc)
        finally:
            if writer is not None:
                writer.close()
            server.cancels_in_flight -= 1
            pool = server.parked
            if pool is not None and server.cancels_in_flight == 0:
                server.parked = None
                # Unconfirmed cancel: it may still hit whatever runs next there; close it.
                pool.release(server, reusable=delivered)

    async def reset_and_release(self, pool: Pool, server: ServerConnection) -> None:
        """Session mode: wipe the session state a client left before reusing the server."""
        try:
            async with asyncio.timeout(5):
                frames = await server.run_until_ready("DISCARD ALL")
        except (OSError, TimeoutError) as exc:
            log.warning("reset of %s failed: %s", server.address, exc)
            pool.release(server, reusable=False)
            return
        if any(mtype == m.ERROR_RESPONSE for mtype, _ in frames):
            # E.g. a late cancel hit the DISCARD ALL: the old session state is still there.
            log.warning("reset of %s failed: %s", server.address,
                        [m.decode_fields(body).get("M") for _, body in frames])
            pool.release(server, reusable=False)
            return
        server.prepared.clear()
        server.settings.clear()
        server.unnamed = None
        pool.release(server)

    def forget_session(self, session: ClientSession) -> None:
        if self.sessions.get(session.pid) is session:
            del self.sessions[session.pid]

    def _new_backend_key(self) -> tuple[int, int]:
        while True:
            pid = secrets.randbits(31) or 1
            if pid not in self.sessions:
                return pid, secrets.randbits(31)

    # ------------------------------------------------------------------ clients
    async def _handle_client(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            self._handshaking.add(task)
        stream = ClientStream(reader, writer)
        try:
            await self._serve_client(stream)
        except asyncio.CancelledError:
            if not self.shutting_down or task is None or task not in self._handshaking:
                raise
            # Cancelled by shutdown() while still logging in.
            writer.write(error_bytes(AdminShutdown("the database system is shutting down",
                                                   sqlstate="57P03"), fatal=True))
        except ShardwireError as err:
            writer.write(error_bytes(err, fatal=True))
        except (ConnectionError, TimeoutError, ssl.SSLError):
            pass
        except Exception as exc:
            log.exception("unexpected error serving a client")
            writer.write(error_bytes(InternalError(f"{type(exc).__name__}: {exc}"), fatal=True))
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._clients.discard(task)
                self._handshaking.discard(task)

    async def _serve_client(self, stream: ClientStream) -> None:
        result = await negotiate(stream, self.ssl_context, STARTUP_TIMEOUT)
        if result is None:
            return
        if isinstance(result, CancelTarget):
            target = self.sessions.get(result.pid)
            if target is not None and target.key == result.key:
                target.cancel()
            return
        startup = result
        if self.shutting_down:
            raise AdminShutdown("the database system is shutting down", sqlstate="57P03")
        cfg = self.config
        user_cfg = cfg.auth.users.get(startup.user)
        await authenticate(stream, cfg.auth.method, startup.user,
                           user_cfg.password if user_cfg else None, STARTUP_TIMEOUT)
        if user_cfg is None and cfg.auth.users:
            raise InvalidAuthorization(f'role "{startup.user}" does not exist')
        if startup.database == cfg.admin.database and startup.database != cfg.database:
            if startup.user not in cfg.admin.users:
                raise InvalidAuthorization(
                    f'user "{startup.user}" may not use the admin console',
                    hint="list the user under admin.users in the topology")
            pid, key = self._new_backend_key()
            stream.write(m.AUTHENTICATION_OK + b"".join(
                m.parameter_status(k, v) for k, v in _ADMIN_PARAMS.items())
                + m.backend_key_data(pid, key) + m.READY_IDLE)
            task = asyncio.current_task()
            if task is not None:
                self._handshaking.discard(task)
            await admin_console.serve(self, stream, startup.rest)
            return
        if startup.database != cfg.database:
            raise UnknownDatabase(f'database "{startup.database}" does not exist',
                                  hint=f'shardwire serves the database "{cfg.database}"')
        pid, key = self._new_backend_key()
        session = ClientSession(self, stream, startup.user, pid, key)
        await self._prime(session, startup_settings(startup.params))
        stream.write(m.AUTHENTICATION_OK
                     + b"".join(m.parameter_status(k, v) for k, v in session.params.items())
                     + m.backend_key_data(pid, key) + m.READY_IDLE)
        self.sessions[pid] = session
        task = asyncio.current_task()
        if task is not None:
            self._handshaking.discard(task)
        await session.run(startup.rest)

    async def _prime(self, session: ClientSession, wanted: dict[str, str]) -> None:
        """Work out the session's starting parameters as Postgres would report them."""
        pool = self.pool_for(self.config.default_shard, session.user)
        server = pool.try_acquire() or await pool.acquire()
        reusable = False
        try:
            session.params = dict(server.initial_params)
            reported = {CANONICAL[k.lower()]: v for k, v in wanted.items()
                        if k.lower() in CANONICAL}
            others = {k.lower(): startup_value_sql(k, v) for k, v in wanted.items()
                      if k.lower() not in CANONICAL}
            want_params = {**server.initial_params, **reported}
            sql = sync_sql(want_params, server.params, others, server.settings)
            if sql:
                async with asyncio.timeout(self.config.pool.connect_timeout):
                    frames = await server.run_until_ready(sql)
                server.settings = dict(others)
                for mtype, body in frames:
                    if mtype == m.ERROR_RESPONSE:
                        fields = m.decode_fields(body)
                        server.settings.clear()
                        reusable = True
                        raise ShardwireError(fields.get("M", "invalid startup parameter"),
                                             sqlstate=fields.get("C", "22023"),
                                             detail=fields.get("D"), hint=fields.get("H"))
            for name in reported:
                session.params[name] = server.params.get(name, reported[name])
            session.settings = dict(others)
            reusable = True
        finally:
            pool.release(server, reusable=reusable)
