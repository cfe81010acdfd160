"""Owns the Prometheus endpoint (``/metrics``) and the health probe (``/health``).

Values are read at scrape time from the proxy's own state and counters (a collector, not
``Counter.inc`` on the hot path): pools, client sessions, the planner's caches, cross-shard
statements by kind, two-phase commits and recoveries, errors by SQLSTATE class. Labels are
bounded sets (shard names, kinds, SQLSTATE classes): never a key value or a query text.

The HTTP server is the standard library's, in a daemon thread; the collector only takes
snapshots (``list(...)`` of dicts is atomic under the GIL) of what the event loop updates.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from proxy.server import Proxy

log = logging.getLogger("shardwire.metrics")


class Stats:
    """Counters the proxy bumps where things happen (plain ints: cheap)."""

    def __init__(self) -> None:
        self.cross_shard: Counter[str] = Counter()  # query_type -> statements
        self.errors: Counter[str] = Counter()  # SQLSTATE class -> errors sent to clients
        self.twophase_commits = 0
        self.twophase_recovered = 0
        self.reloads: Counter[str] = Counter()  # result (ok | error) -> topology reloads


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
        for (shard, role), (active, idle, waiting) in sorted(per.items()):
            pools.add_metric([shard, role, "active"], active)
            pools.add_metric([shard, role, "idle"], idle)
            pools.add_metric([shard, role, "waiting"], waiting)
        yield pools
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
