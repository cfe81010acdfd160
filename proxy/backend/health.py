"""Shard health: a circuit breaker per endpoint, replica lag, and failover detection.

One :class:`HealthMonitor` watches every endpoint (primary and replicas) of every shard over
one monitoring connection each. Every ``interval`` seconds each endpoint answers
``pg_is_in_recovery()`` and its WAL position; each endpoint has its own loop and each check
is bounded by ``connect_timeout``, so an endpoint that hangs delays no other:

* A failed connect or query opens the endpoint's breaker (``up=False``); the next check
  reconnects, and the first success closes it again. Pools report their own connect
  failures with :meth:`HealthMonitor.mark_down`, which opens the breaker at once.
* Replica lag is measured by the proxy alone, without comparing clocks across hosts: per
  shard a :class:`LagTracker` remembers when (proxy's monotonic clock) the primary was first
  seen at each WAL position; a replica's lag is how long ago the primary already had WAL
  the replica has still not replayed.
* Failover: when the configured primary is down or in recovery and exactly one other
  endpoint of the shard is up and not in recovery (the replica Patroni & co. promoted),
  that endpoint becomes the shard's effective primary.

The per-statement queries (:meth:`~HealthMonitor.is_down`, :meth:`~HealthMonitor.primary`,
:meth:`~HealthMonitor.replicas`) only read tables precomputed after every check.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from proxy.backend.connection import ServerConnection, open_server
from proxy.config import Dsn, Shard
from proxy.errors import ShardwireError
from proxy.wire import messages as m

__all__ = [
    "CHECK_SQL",
    "Endpoint",
    "HealthMonitor",
    "LagTracker",
    "choose_primary",
    "format_lsn",
    "parse_lsn",
]

log = logging.getLogger("shardwire.health")

CHECK_SQL = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() "
    "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
)
APPLICATION_NAME = "shardwire health"
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


# --------------------------------------------------------------------------------- LSNs


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> ``0x16B374D848`` (Postgres' pg_lsn text form: two hex halves)."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid LSN {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    """The inverse of :func:`parse_lsn`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


# ---------------------------------------------------------------------------- lag tracker


class LagTracker:
    """A bounded history of (primary WAL position, monotonic time it was first observed).

    Positions only ever grow within one history: a sample equal to the newest one adds
    nothing (the time the primary *first* had a position is what matters), and a smaller
    one (another primary, a restored backup) starts a new history.
    """

    def __init__(self, max_samples: int = 1024) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.max_samples = max_samples
        self._lsns: list[int] = []
        self._times: list[float] = []

    def __len__(self) -> int:
        return len(self._lsns)

    def reset(self) -> None:
        self._lsns.clear()
        self._times.clear()

    def observe(self, lsn: int, at: float) -> None:
        """The primary was at WAL position ``lsn`` at monotonic time ``at``."""
        if self._lsns:
            newest = self._lsns[-1]
            if lsn == newest:
                return
            if lsn < newest or at < self._times[-1]:
                self.reset()
        self._lsns.append(lsn)
        self._times.append(at)
        excess = len(self._lsns) - self.max_samples
        if excess > 0:
            del self._lsns[:excess]
            del self._times[:excess]

    def lag(self, replay_lsn: int, now: float) -> float | None:
        """Seconds a replica at ``replay_lsn`` (observed at ``now``) is behind: ``now`` minus
        the time of the oldest primary sample whose position is beyond ``replay_lsn``;
        0 when it has replayed the newest sample. Only samples taken at or before ``now``
        count. When even the oldest sample is beyond it, the result is a lower bound.
        None when no sample was taken yet."""
        usable = bisect.bisect_right(self._times, now)
        if usable == 0:
            return None
        first_ahead = bisect.bisect_right(self._lsns, replay_lsn, 0, usable)
        if first_ahead == usable:
            return 0.0
        return max(0.0, now - self._times[first_ahead])


# ------------------------------------------------------------------------------ endpoints


@dataclass(eq=False)
class Endpoint:
    """One server of a shard as the monitor sees it."""

    shard: str
    configured_role: str  # "primary" | "replica" as in the topology
    dsn: Dsn
    up: bool = True  # False while the breaker is open (last check/connect failed)
    last_error: str | None = None
    down_since: float | None = None  # time.monotonic()
    in_recovery: bool | None = None  # pg_is_in_recovery() at the last check
    lag: float | None = None  # replicas: replay lag in seconds measured by the proxy
    lsn: int | None = None  # WAL position at the last check (current, or replayed)
    checked_at: float | None = None  # time.monotonic() of the last successful check
    failures: int = 0  # checks and connects that failed, in total

    @property
    def address(self) -> str:
        host = f"[{self.dsn.host}]" if ":" in self.dsn.host else self.dsn.host
        return f"{host}:{self.dsn.port}"

    @property
    def is_writable(self) -> bool:
        """Up and known not to be in recovery."""
        return self.up and self.in_recovery is False


def choose_primary(configured: Endpoint, others: Iterable[Endpoint],
                   current: Endpoint | None = None) -> Endpoint:
    """The effective primary of a shard: ``configured`` unless it is down or in recovery
    and exactly one of ``others`` is up and not in recovery (then that one).

    Sticky: after a failover, writes stay on the promoted host (``current``) for as long
    as it is writable, even if the old primary comes back writable too. Two writable
    hosts are a split brain, and moving writes back and forth would spread them over
    both; they return to ``configured`` only once ``current`` is demoted or down."""
    if current is not None and current is not configured and current.is_writable:
        return current
    if configured.up and configured.in_recovery is not True:
        return configured
    writable = [ep for ep in others if ep is not configured and ep.is_writable]
    return writable[0] if len(writable) == 1 else configured


@dataclass(eq=False)
class _Probe:
    """The monitor's private state for one endpoint."""

    endpoint: Endpoint
    conn: ServerConnection | None = None
    marked_at: float = float("-inf")  # last mark_down
    removed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one query at a time
    task: asyncio.Task[None] | None = None  # its background loop

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.terminate()


@dataclass(eq=False)
class _Outcome:
    started: float
    finished: float
    in_recovery: bool | None = None
    lsn: int | None = None
    error: str | None = None


@dataclass(eq=False)
class _ShardState:
    configured: _Probe
    probes: list[_Probe]  # configured primary first, then replicas in topology order
    tracker: LagTracker = field(default_factory=LagTracker)
    effective: _Probe | None = None


def _identity(shard: str, dsn: Dsn) -> tuple[str, str, int, str, str]:
    return shard, dsn.host, dsn.port, dsn.database, dsn.user


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ShardwireError):
        return f"{exc.message}: {exc.detail}" if exc.detail else exc.message
    return str(exc) or type(exc).__name__


# -------------------------------------------------------------------------------- monitor


class HealthMonitor:
    """Watches every endpoint of ``shards``; see the module docstring.

    Every endpoint is probed by its own background loop (one probe, then ``interval``
    seconds of sleep), so an endpoint that hangs until ``connect_timeout`` delays nobody
    else; each probe's result is applied the moment it arrives. ``on_change(shard)`` is
    called when an endpoint of the shard goes down (also via :meth:`mark_down`) or comes
    back up, and when the shard's effective primary changes (once per probe result that
    causes any of these).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        *,
        interval: float = 1.0,
        connect_timeout: float = 5.0,
        on_change: Callable[[str], None] | None = None,
        max_samples: int = 1024,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.on_change = on_change
        self.max_samples = max_samples
        self.failovers: collections.Counter[str] = collections.Counter()
        self.checks = 0  # probes completed (successful or not)
        self._probes: dict[tuple[str, str, int, str, str], _Probe] = {}
        self._shards: dict[str, _ShardState] = {}
        # Precomputed after every change for the hot path.
        self._by_address: dict[tuple[str, str, int], Endpoint] = {}
        self._primary: dict[str, Dsn] = {}
        self._replicas: dict[str, list[tuple[float, Dsn]]] = {}
        self._running = False
        self._closed = False
        self.update(shards)

    # ------------------------------------------------------------------ hot path
    def endpoint(self, shard: str, host: str, port: int) -> Endpoint | None:
        return self._by_address.get((shard, host, port))

    def is_down(self, shard: str, host: str, port: int) -> bool:
        """True while the breaker of that endpoint is open (unknown endpoints: False)."""
        endpoint = self._by_address.get((shard, host, port))
        return endpoint is not None and not endpoint.up

    def primary(self, shard: str) -> Dsn:
        """The shard's effective primary (the configured one unless a failover was seen).
        KeyError for an unknown shard."""
        return self._primary[shard]

    def replicas(self, shard: str, max_lag: float) -> list[Dsn]:
        """Replicas that are up, in recovery, not the effective primary, and whose lag is
        known and at most ``max_lag`` seconds (topology order)."""
        return [dsn for lag, dsn in self._replicas.get(shard, ()) if lag <= max_lag]

    def endpoints(self) -> list[Endpoint]:
        # copies: the metrics thread calls this while the event loop may update
        return [probe.endpoint for state in list(self._shards.values())
                for probe in list(state.probes)]

    # ------------------------------------------------------------------ topology
    def update(self, shards: Sequence[Shard]) -> None:
        """Take a new topology. Endpoints whose (shard, host, port, database, user) did not
        change keep their object, connection and history; removed ones are closed.

        A change of effective primary caused by the new topology itself is not counted
        as a failover and does not call ``on_change`` (the reload handles its pools)."""
        old_probes = self._probes
        probes: dict[tuple[str, str, int, str, str], _Probe] = {}
        states: dict[str, _ShardState] = {}
        for shard in shards:
            members: list[_Probe] = []
            roles = [("primary", shard.primary)] + [("replica", d) for d in shard.replicas]
            for role, dsn in roles:
                key = _identity(shard.name, dsn)
                if key in probes:  # the same server listed twice: one probe is enough
                    continue
                probe = old_probes.get(key)
                if probe is None:
                    probe = _Probe(Endpoint(shard=shard.name, configured_role=role, dsn=dsn))
                else:
                    probe.endpoint.configured_role = role
                    probe.endpoint.dsn = dsn
                probes[key] = probe
                members.append(probe)
            state = _ShardState(configured=members[0], probes=members,
                                tracker=LagTracker(self.max_samples))
            old_state = self._shards.get(shard.name)
            if old_state is not None and old_state.effective in members:
                state.effective = old_state.effective
                state.tracker = old_state.tracker
            states[shard.name] = state
        for key, probe in old_probes.items():
            if key not in probes:
                probe.removed = True
                if probe.task is not None:
                    probe.task.cancel()
                    probe.task = None
                probe.drop()
        self._probes = probes
        self._shards = states
        for state in states.values():
            effective = self._choose(state)
            if effective is not state.effective:
                state.effective = effective
                state.tracker.reset()
        for name in [name for name in self.failovers if name not in states]:
            del self.failovers[name]
        self._publish()
        if self._running:
            self._spawn_loops()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Check every endpoint now, then keep checking each every ``interval`` seconds."""
        if self._closed:
            raise RuntimeError("the health monitor is closed")
        await self.check_now()
        self._running = True
        self._spawn_loops()

    async def close(self) -> None:
        """Stop the loops and close the monitoring connections."""
        self._closed = True
        self._running = False
        tasks = [p.task for p in self._probes.values() if p.task is not None]
        for probe in self._probes.values():
            probe.task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for probe in self._probes.values():
            probe.drop()

    def _spawn_loops(self) -> None:
        for state in self._shards.values():
            # The effective primary's loop first: it is sampled just before its replicas.
            first = state.effective or state.configured
            for probe in [first, *(p for p in state.probes if p is not first)]:
                if probe.task is None:
                    probe.task = asyncio.create_task(
                        self._loop(probe),
                        name=f"shardwire-health {probe.endpoint.shard} {probe.endpoint.address}")

    async def _loop(self, probe: _Probe) -> None:
        while not probe.removed:
            await asyncio.sleep(self.interval)
            try:
                await self._check(probe)
            except Exception:  # a bug here must not end monitoring
                log.exception("health check of %s failed", probe.endpoint.address)

    # ------------------------------------------------------------------ breaker
    def mark_down(self, shard: str, host: str, port: int, error: str) -> None:
        """A pool could not connect: open the endpoint's breaker now. The monitoring loop
        keeps probing it (with a fresh connection) and closes the breaker when a probe
        started after this call succeeds."""
        endpoint = self._by_address.get((shard, host, port))
        if endpoint is None:
            return
        probe = self._probes.get(_identity(shard, endpoint.dsn))
        if probe is None:
            return
        probe.marked_at = time.monotonic()
        probe.drop()
        endpoint.last_error = error
        endpoint.failures += 1
        if not endpoint.up:
            return
        endpoint.up = False
        endpoint.down_since = probe.marked_at
        endpoint.lag = None
        log.warning("shard %s: %s %s is down: %s", shard, endpoint.configured_role,
                    endpoint.address, error)
        state = self._shards[shard]
        self._refresh_primary(state)
        self._publish_shard(state)
        self._notify(shard)

    # ------------------------------------------------------------------ checks
    async def check_now(self) -> None:
        """Check every endpoint once, concurrently (effective primaries' queries first),
        and wait for all of them; each result is applied as it arrives."""
        if self._closed:
            return
        order: list[_Probe] = []
        for state in self._shards.values():
            first = state.effective or state.configured
            order.append(first)
            order.extend(p for p in state.probes if p is not first)
        await asyncio.gather(*(self._check(p) for p in order))

    async def _check(self, probe: _Probe) -> None:
        async with probe.lock:
            if probe.removed:
                return
            outcome = await self._probe(probe)
        self.checks += 1
        if probe.removed or self._closed:
            return
        if self._apply(probe, outcome):
            self._notify(probe.endpoint.shard)

    async def _probe(self, probe: _Probe) -> _Outcome:
        try:
            return await self._probe_once(probe)
        except BaseException:  # cancelled mid-query: the connection's state is unknown
            probe.drop()
            raise
        finally:
            if probe.removed:  # update() dropped the endpoint while we were talking to it
                probe.drop()

    async def _probe_once(self, probe: _Probe) -> _Outcome:
        started = time.monotonic()
        endpoint = probe.endpoint
        dsn = endpoint.dsn
        try:
            async with asyncio.timeout(self.connect_timeout):
                if probe.conn is None or probe.conn.closed:
                    probe.conn = None
                    probe.conn = await open_server(
                        shard=endpoint.shard, role=endpoint.configured_role, host=dsn.host,
                        port=dsn.port, user=dsn.user, database=dsn.database,
                        password=dsn.password, connect_timeout=self.connect_timeout,
                        extra={"application_name": APPLICATION_NAME})
                frames = await probe.conn.run_until_ready(CHECK_SQL)
            finished = time.monotonic()
        except TimeoutError:
            probe.drop()
            return _Outcome(started, time.monotonic(),
                            error=f"health check timed out after {self.connect_timeout:g}s")
        except Exception as exc:
            probe.drop()
            return _Outcome(started, time.monotonic(), error=_error_text(exc))
        row: list[str | None] | None = None
        error: str | None = None
        for mtype, body in frames:
            if mtype == m.DATA_ROW and row is None:
                row = m.decode_data_row(body)
            elif mtype == m.ERROR_RESPONSE and error is None:
                fields = m.decode_fields(body)
                error = fields.get("M", "error")
                if "C" in fields:
                    error = f"{error} (SQLSTATE {fields['C']})"
        if error is None and (row is None or len(row) != 2 or row[0] not in ("t", "f")):
            error = f"unexpected answer to the health check: {row!r}"
        if error is not None or row is None:
            probe.drop()
            return _Outcome(started, finished, error=error)
        lsn: int | None = None
        if row[1] is not None:
            try:
                lsn = parse_lsn(row[1])
            except ValueError as exc:
                probe.drop()
                return _Outcome(started, finished, error=str(exc))
        return _Outcome(started, finished, in_recovery=row[0] == "t", lsn=lsn)

    def _apply(self, probe: _Probe, outcome: _Outcome) -> bool:
        """Fold one probe's outcome into its shard; True if on_change is due."""
        endpoint = probe.endpoint
        shard = endpoint.shard
        state = self._shards.get(shard)
        if state is None or probe not in state.probes:
            return False
        changed = False
        if outcome.error is None:
            endpoint.in_recovery = outcome.in_recovery
            endpoint.lsn = outcome.lsn
            endpoint.checked_at = outcome.finished
            if not endpoint.up and outcome.started >= probe.marked_at:
                log.info("shard %s: %s %s is back up (down for %.1fs)", shard,
                         endpoint.configured_role, endpoint.address,
                         outcome.finished - (endpoint.down_since or outcome.finished))
                endpoint.up = True
                endpoint.down_since = None
                changed = True
        else:
            endpoint.in_recovery = None
            endpoint.lsn = None
            endpoint.lag = None
            endpoint.last_error = outcome.error
            endpoint.failures += 1
            if endpoint.up:
                log.warning("shard %s: %s %s is down: %s", shard, endpoint.configured_role,
                            endpoint.address, outcome.error)
                endpoint.up = False
                endpoint.down_since = outcome.finished
                changed = True
        if self._refresh_primary(state):
            changed = True
        if probe is state.effective:
            endpoint.lag = None
            if endpoint.is_writable and endpoint.lsn is not None:
                state.tracker.observe(endpoint.lsn, outcome.finished)
        elif endpoint.up and endpoint.in_recovery is True and endpoint.lsn is not None:
            endpoint.lag = state.tracker.lag(endpoint.lsn, outcome.finished)
        else:
            endpoint.lag = None
        self._publish_shard(state)
        return changed

    def _choose(self, state: _ShardState) -> _Probe:
        current = state.effective.endpoint if state.effective is not None else None
        chosen = choose_primary(state.configured.endpoint, (p.endpoint for p in state.probes),
                                current)
        return next(p for p in state.probes if p.endpoint is chosen)

    def _refresh_primary(self, state: _ShardState) -> bool:
        """Re-evaluate the effective primary; log and count a change. True if it changed."""
        effective = self._choose(state)
        old = state.effective
        if effective is old:
            return False
        state.effective = effective
        # Positions and lags were relative to the old primary: start over.
        state.tracker.reset()
        for probe in state.probes:
            probe.endpoint.lag = None
        if old is None:
            return False
        shard = state.configured.endpoint.shard
        self.failovers[shard] += 1
        log.warning("shard %s: effective primary changed from %s (%s) to %s (%s)", shard,
                    old.endpoint.address, old.endpoint.configured_role,
                    effective.endpoint.address, effective.endpoint.configured_role)
        return True

    def _publish(self) -> None:
        """Rebuild all the tables the hot path reads (after a topology change)."""
        by_address: dict[tuple[str, str, int], Endpoint] = {}
        for name, state in self._shards.items():
            for probe in state.probes:
                endpoint = probe.endpoint
                by_address[(name, endpoint.dsn.host, endpoint.dsn.port)] = endpoint
        self._by_address = by_address  # is_down reads Endpoint.up itself
        self._primary = {}
        self._replicas = {}
        for state in self._shards.values():
            self._publish_shard(state)

    def _publish_shard(self, state: _ShardState) -> None:
        """Refresh one shard's effective primary and usable replicas."""
        effective = state.effective or state.configured
        usable: list[tuple[float, Dsn]] = []
        for probe in state.probes:
            endpoint = probe.endpoint
            if (probe is not effective and endpoint.up and endpoint.in_recovery is True
                    and endpoint.lag is not None):
                usable.append((endpoint.lag, endpoint.dsn))
        name = state.configured.endpoint.shard
        self._primary[name] = effective.endpoint.dsn
        self._replicas[name] = usable

    def _notify(self, shard: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(shard)
        except Exception:
            log.exception("health on_change callback failed for shard %s", shard)
