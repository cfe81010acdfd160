"""Owns the Prometheus endpoint (``/metrics``) and the health probe (``/health``).

Values are read at scrape time from the proxy's own state and counters (a collector, not
``Counter.inc`` on the hot path): requests and their latency per shard (plain-int
histograms, proxy/stats/), pools, client sessions, host health and replica lag, the
planner's caches, cross-shard statements by kind, two-phase commits and recoveries,
reloads, errors by SQLSTATE class. Labels are bounded sets (shard names, hosts, kinds,
SQLSTATE classes): never a key value or a query text.

The HTTP server is the standard library's, in a daemon thread; the collector only takes
snapshots (``list(...)`` of dicts is atomic under the GIL) of what the event loop updates.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from proxy.config import Metrics
from proxy.stats.histogram import LATENCY_BOUNDS, Histogram, HistogramVec
from proxy.stats.hotkeys import HotKeys

if TYPE_CHECKING:
    from proxy.server import Proxy

log = logging.getLogger("shardwire.metrics")


# Shards one scatter-gather statement reached.
SCATTER_BOUNDS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class Stats:
    """What the proxy counts where things happen (plain ints and lists: cheap)."""

    def __init__(self) -> None:
        # Requests per shard by operation (read | write), with their latency: a Query's or
        # an Execute's, from forwarding to its answer; a scatter's, on each shard it ran on.
        self.requests = HistogramVec(LATENCY_BOUNDS, ("shard", "operation"))
        self.scatter = Histogram(SCATTER_BOUNDS)
        # Shard-key values of statements routed by the planner's quick paths (sampled
        # space-saving sketch) and exact per-bucket counts: SHOW HOT KEYS / SHOW STATS.
        self.hotkeys = HotKeys(capacity=128, sample_every=8)
        self.cross_shard: Counter[str] = Counter()  # query_type -> statements
        self.errors: Counter[str] = Counter()  # SQLSTATE class -> errors sent to clients
        self.twophase_commits = 0
        self.twophase_recovered = 0
        self.reloads: Counter[str] = Counter()  # result (ok | error) -> topology reloads

    def scattered(self, shards: Sequence[str], read: bool, seconds: float) -> None:
        self.scatter.observe(len(shards))
        op = "read" if read else "write"
        for shard in shards:
            self.requests.labels(shard, op).observe(seconds)


class ProxyCollector(Collector):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Any]:
        proxy = self.proxy
        stats = proxy.stats
        yield GaugeMetricFamily("shardwire_client_connections", "Client sessions served now",
                                value=len(proxy.sessions))
        pools = GaugeMetricFamily("shardwire_pool_connections",
                                  "Server connections per pool, by state",
                                  labels=["shard", "role", "state"])
        per: dict[tuple[str, str], list[int]] = {}
        for pool in list(proxy.pools.values()):
            key = (pool.target.shard, pool.target.role)
            counts = per.setdefault(key, [0, 0, 0])
            counts[0] += pool.active
            counts[1] += len(pool.idle)
            counts[2] += len(pool.waiters)
        sizes: dict[tuple[str, str], int] = {}
        for pool in list(proxy.pools.values()):
            key = (pool.target.shard, pool.target.role)
            sizes[key] = sizes.get(key, 0) + pool.size
        for (shard, role), (active, idle, waiting) in sorted(per.items()):
            pools.add_metric([shard, role, "active"], active)
            pools.add_metric([shard, role, "idle"], idle)
            pools.add_metric([shard, role, "waiting"], waiting)
        yield pools
        size = GaugeMetricFamily("shardwire_pool_size", "Configured connections of the pools "
                                 "of each shard and role (summed over users): the capacity "
                                 "that pool_connections{state=\"active\"} uses up",
                                 labels=["shard", "role"])
        for (shard, role), total in sorted(sizes.items()):
            size.add_metric([shard, role], total)
        yield size
        up = GaugeMetricFamily("shardwire_shard_up", "1 while a shard host answers its health "
                               "checks, 0 while its circuit breaker is open",
                               labels=["shard", "role", "host"])
        lag = GaugeMetricFamily("shardwire_replication_lag_seconds", "Replay lag of each "
                                "replica, measured by the proxy against its primary's WAL",
                                labels=["shard", "replica"])
        for e in proxy.health.endpoints():
            up.add_metric([e.shard, e.configured_role, e.address], 1 if e.up else 0)
            if e.configured_role == "replica" and e.lag is not None:
                lag.add_metric([e.shard, e.address], e.lag)
        yield up
        yield lag
        failovers = CounterMetricFamily("shardwire_failovers", "Times a shard's writes moved "
                                        "to another host (or back) after a failover",
                                        labels=["shard"])
        for shard in proxy.config.shard_names:
            failovers.add_metric([shard], proxy.health.failovers[shard])
        yield failovers
        planner = proxy.planner
        hits = planner.hits + planner.quick_hits if planner is not None else 0
        misses = planner.misses if planner is not None else 0
        yield CounterMetricFamily("shardwire_plan_cache_hits", "Statements routed from the "
                                  "plan cache (or the quick path)", value=hits)
        yield CounterMetricFamily("shardwire_plan_cache_misses", "Statements the planner "
                                  "analysed anew", value=misses)
        cross = CounterMetricFamily("shardwire_cross_shard_queries",
                                    "Statements run on several shards, by kind",
                                    labels=["query_type"])
        for kind, count in sorted(list(stats.cross_shard.items())):
            cross.add_metric([kind], count)
        yield cross
        errors = CounterMetricFamily("shardwire_errors", "Errors sent to clients, by "
                                     "SQLSTATE class", labels=["sqlstate_class"])
        for klass, count in sorted(list(stats.errors.items())):
            errors.add_metric([klass], count)
        yield errors
        requests = CounterMetricFamily("shardwire_shard_requests", "Statements sent to each "
                                       "shard, by operation (read | write)",
                                       labels=["shard", "operation"])
        for (shard, op), hist in sorted(stats.requests.children().items()):
            requests.add_metric([shard, op], hist.count)
        yield requests
        yield stats.requests.families("shardwire_shard_request_duration_seconds",
                                      "Time from sending a statement to a shard to its "
                                      "answer (for a scatter: the whole scatter)")
        buckets, total = stats.scatter.snapshot()
        scatter = HistogramMetricFamily("shardwire_scatter_gather_shards",
                                        "Shards reached by each statement run on several")
        scatter.add_metric([], buckets, total)
        yield scatter
        yield CounterMetricFamily("shardwire_twophase_commits", "Transactions committed with "
                                  "two-phase commit", value=stats.twophase_commits)
        yield CounterMetricFamily("shardwire_twophase_recovered", "In-doubt transactions "
                                  "resolved by recovery", value=stats.twophase_recovered)
        yield GaugeMetricFamily("shardwire_topology_version", "Version of the topology in "
                                "use: 1 at start, +1 per reload that changed it",
                                value=proxy.topology_version)
        reloads = CounterMetricFamily("shardwire_topology_reloads", "Topology reloads "
                                      "(file change, SIGHUP, admin RELOAD) by result",
                                      labels=["result"])
        for result in ("ok", "error"):
            reloads.add_metric([result], stats.reloads[result])
        yield reloads


class MetricsServer:
    """``/metrics`` and ``/health`` on the configured address, in a daemon thread."""

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProxyCollector(proxy))
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/metrics":
                    body = generate_latest(registry)
                    self._reply(200, CONTENT_TYPE_LATEST, body)
                elif self.path.split("?", 1)[0] == "/health":
                    ok = not proxy.shutting_down
                    self._reply(200 if ok else 503, "text/plain; charset=utf-8",
                                b"ok\n" if ok else b"shutting down\n")
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found\n")

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not news

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class WaitingServer:
    """``/health`` (503 with the problem) while ``serve --wait-for-valid-config`` waits
    for a valid topology; everything else is 503 too (there is nothing to measure yet)."""

    def __init__(self, host: str, port: int, problem: Callable[[], str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (problem() + "\n").encode()
                self.send_response(503)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health",
                                       daemon=True)

    @staticmethod
    def address_of(path: str) -> tuple[str, int]:
        """The metrics address the file asks for, if that much of it can be read (else the
        default), so probes find the proxy where they will find it once it is valid."""
        default = Metrics()
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
            section = data.get("metrics") or {}
            return (str(section.get("host", default.host)),
                    int(section.get("port", default.port)))
        except Exception:
            return default.host, default.port

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
