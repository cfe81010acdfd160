"""`/metrics` (Prometheus text format, scraped with prometheus-client's own parser) and
`/health` of a running proxy, after a known workload."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    direct,
    drop_everywhere,
    pick_keys,
    routed_proxy,
    run_everywhere,
    via,
)

T = "mx_items"


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory,
           shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    drop_everywhere(shard_clusters, T)
    run_everywhere(shard_clusters, f"CREATE TABLE {T} (id bigint PRIMARY KEY, v int)")
    with routed_proxy(proxy_factory, {T: {"shard_key": "id"}}) as running:
        yield running
    drop_everywhere(shard_clusters, T)


def scrape(proxy: RunningProxy, path: str) -> tuple[int, str]:
    m = proxy.topology["metrics"]
    try:
        with urllib.request.urlopen(f"http://{m['host']}:{m['port']}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_after_a_known_workload(routed: RunningProxy) -> None:
    assert scrape(routed, "/health") == (200, "ok\n")
    with via(routed) as conn:
        for i in range(1, 21):
            conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, %s)", (i, i))
        assert conn.execute(f"SELECT count(*) FROM {T}").fetchone() == (20,)  # merged
        assert len(conn.execute(f"SELECT id FROM {T}").fetchall()) == 20  # cross-shard read
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(f"SELECT id, row_number() OVER () FROM {T}")
        status, text = scrape(routed, "/metrics")
        assert status == 200
        got = samples(text)
        assert got[("shardwire_client_connections", ())] >= 1
    assert got[("shardwire_cross_shard_queries_total", (("query_type", "merge"),))] >= 1
    assert got[("shardwire_cross_shard_queries_total", (("query_type", "read"),))] >= 1
    assert got[("shardwire_errors_total", (("sqlstate_class", "0A"),))] >= 1
    assert got[("shardwire_plan_cache_hits_total", ())] + got[
        ("shardwire_plan_cache_misses_total", ())] >= 20
    for state in ("active", "idle", "waiting"):
        assert ("shardwire_pool_connections",
                (("role", "primary"), ("shard", "s0"), ("state", state))) in got
    assert got[("shardwire_topology_version", ())] == 1
    assert scrape(routed, "/nothing")[0] == 404


def requests(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], shard: str,
             op: str) -> float:
    return got.get(("shardwire_shard_requests_total",
                    (("operation", op), ("shard", shard))), 0.0)


def test_requests_per_shard_after_a_known_workload(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """Counts per shard and operation are exact; latency histograms count the same
    requests; a scatter counts once per shard it reached."""
    with direct(shard_clusters[0]) as conn:
        keys0 = pick_keys(conn, "s0", 3, 1000)
        keys1 = pick_keys(conn, "s1", 4, 1000)
    with via(routed) as conn:
        for k in keys0 + keys1:
            conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 0)", (k,))
        before = samples(scrape(routed, "/metrics")[1])
        for _ in range(5):
            for k in keys0:  # extended protocol: counted at Execute
                conn.execute(f"SELECT v FROM {T} WHERE id = %s", (k,))
            for k in keys1:  # simple protocol: counted at Query
                conn.execute(f"SELECT v FROM {T} WHERE id = {k}", prepare=False)
        conn.execute(f"UPDATE {T} SET v = v + 1 WHERE id = %s", (keys1[0],))
        conn.execute(f"SELECT id FROM {T} ORDER BY id")  # a scatter over both shards
    after = samples(scrape(routed, "/metrics")[1])

    def delta(shard: str, op: str) -> float:
        return requests(after, shard, op) - requests(before, shard, op)

    assert delta("s0", "read") == 5 * len(keys0) + 1
    assert delta("s1", "read") == 5 * len(keys1) + 1
    assert (delta("s0", "write"), delta("s1", "write")) == (0, 1)
    for shard in ("s0", "s1"):
        for op in ("read", "write"):
            count = ("shardwire_shard_request_duration_seconds_count",
                     (("operation", op), ("shard", shard)))
            assert after.get(count, 0) == requests(after, shard, op)
    inf = ("shardwire_scatter_gather_shards_bucket", (("le", "+Inf"),))
    two = ("shardwire_scatter_gather_shards_bucket", (("le", "2.0"),))
    assert after[inf] - before.get(inf, 0) >= 1
    assert after[two] - after[("shardwire_scatter_gather_shards_bucket", (("le", "1.0"),))] >= 1
