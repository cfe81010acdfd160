"""Live topology reload: the proxy follows its YAML file (ConfigMap-style symlink swaps,
SIGHUP, admin RELOAD) while clients keep querying, and never takes an invalid file."""

from __future__ import annotations

import os
import random
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.localpg import LocalPostgres
from tests.configmap import ConfigMapDir
from tests.integration.conftest import RunningProxy, base_topology, start_proxy
from tests.integration.test_faults_helpers import wait_until
from tests.integration.test_routing_helpers import (
    direct,
    drop_everywhere,
    run_everywhere,
)

T = "rl_items"
REF = "rl_ref"
ROWS = 400
ADMIN = {"database": "shardwire", "users": ["app"]}


def scrape(running: RunningProxy) -> dict[str, float]:
    metrics = running.topology["metrics"]
    url = f"http://{metrics['host']}:{metrics['port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return values


def version(running: RunningProxy) -> int:
    return int(scrape(running)["shardwire_topology_version"])


def reloads(running: RunningProxy, result: str) -> int:
    return int(scrape(running)[f"shardwire_topology_reloads_total{{result={result}}}"])


@pytest.fixture(scope="module")
def third_shard(pg_factory: Any) -> LocalPostgres:
    cluster = pg_factory("reload_s2", auth="scram-sha-256", superuser_password="postgres")
    cluster.create_database("app")
    return cluster


@pytest.fixture(scope="module")
def clusters(shard_clusters: list[LocalPostgres],
             third_shard: LocalPostgres) -> Iterator[list[LocalPostgres]]:
    everyone = [*shard_clusters, third_shard]
    drop_everywhere(everyone, T, REF)
    run_everywhere(everyone, f"CREATE TABLE {T} (id bigint PRIMARY KEY, v int)",
                   f"CREATE TABLE {REF} (code int PRIMARY KEY, name text)",
                   f"INSERT INTO {REF} SELECT g, 'n' || g FROM generate_series(1, 10) g")
    yield everyone
    drop_everywhere(everyone, T, REF)


def topology(clusters: list[LocalPostgres], base: dict[str, Any], *, size: int,
             reference: bool, third: bool) -> dict[str, Any]:
    topo = dict(base)
    shards = [{"name": f"s{i}", "primary": c.dsn("app")} for i, c in enumerate(clusters)]
    topo["shards"] = shards if third else shards[:2]
    topo["pool"] = {**base["pool"], "size": size}
    # s2, once added, owns no buckets: it serves the reference table only.
    topo["sharding"] = {"buckets": 64, "assignment": {"s0": "0-31", "s1": "32-63"}}
    tables: dict[str, Any] = {T: {"shard_key": "id"}}
    if reference:
        tables[REF] = {"strategy": "reference"}
    topo["tables"] = tables
    return topo


def test_reload_under_load(clusters: list[LocalPostgres], tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "configmap")
    base = base_topology(clusters[:2], admin=ADMIN)
    base["pool"] = {**base["pool"], "checkout_timeout": 10}
    first = topology(clusters, base, size=4, reference=False, third=False)
    cm.publish(yaml.safe_dump(first, sort_keys=False))
    running = start_proxy(tmp_path, first, name="reload", config_path=cm.path)
    try:
        _run_reloads(running, clusters, cm, base)
    finally:
        running.stop()


def _run_reloads(running: RunningProxy, clusters: list[LocalPostgres], cm: ConfigMapDir,
                 base: dict[str, Any]) -> None:
    with psycopg.connect(running.dsn(), autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {T} (id, v) VALUES (%s, %s)",
                            [(i, i * 10) for i in range(1, ROWS + 1)])
    errors: list[BaseException] = []
    done = threading.Event()
    statements = [0]
    reference_on = threading.Event()

    def client(seed: int, transactions: bool) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(running.dsn(), autocommit=not transactions) as conn:
                while not done.is_set():
                    key = rnd.randint(1, ROWS)
                    row = conn.execute(f"SELECT v FROM {T} WHERE id = %s", (key,)).fetchone()
                    assert row == (key * 10,), (key, row)
                    total = conn.execute(f"SELECT count(*), sum(v) FROM {T}").fetchone()
                    assert total == (ROWS, sum(i * 10 for i in range(1, ROWS + 1))), total
                    if reference_on.is_set():
                        ref = conn.execute(f"SELECT count(*) FROM {REF}").fetchone()
                        assert ref == (10,), ref
                    if transactions:
                        conn.commit()
                    statements[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i, i % 2 == 1), daemon=True)
               for i in range(4)]
    for t in threads:
        t.start()
    try:
        expected = version(running)
        assert expected == 1
        invalid_seen = False
        for step in range(50):
            reference = step >= 10
            third = step >= 20
            topo = topology(clusters, base, size=3 + step % 4, reference=reference,
                            third=third)
            if step == 30:  # an invalid file: a bucket assigned to a shard that is not there
                bad = dict(topo, sharding={"buckets": 64,
                                           "assignment": {"s0": "0-31", "s9": "32-63"}})
                before = reloads(running, "error")
                cm.publish(yaml.safe_dump(bad, sort_keys=False))
                wait_until(lambda b=before: reloads(running, "error") == b + 1, 15,
                           "the error count")
                assert version(running) == expected  # the old map stays
                invalid_seen = True
            cm.publish(yaml.safe_dump(topo, sort_keys=False))
            if step % 10 == 5:  # SIGHUP as well: at most one of the two changes anything
                running.process.send_signal(signal.SIGHUP)
            expected += 1
            wait_until(lambda e=expected: version(running) == e, 15,
                       f"topology version {expected}")
            if step == 10:
                reference_on.set()
            assert not errors, errors[0]
        assert invalid_seen
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not errors, repr(errors[0])
    assert statements[0] > 50, statements[0]
    log = running.log()
    assert "s9" in log and "refused" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_invalid_at_start_waits_with_health_503(shard_clusters: list[LocalPostgres],
                                                tmp_path: Path) -> None:
    """`serve --wait-for-valid-config` on a broken file: /health says 503 and why; once
    the file is fixed the proxy starts serving, with /health 200."""
    import subprocess
    import sys
    import urllib.error

    from tests.integration.conftest import ROOT, wait_for_port

    topo = base_topology(shard_clusters)
    broken = dict(topo, default_shard="nowhere")
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    log_path = tmp_path / "waiting.log"
    metrics = topo["metrics"]
    url = f"http://{metrics['host']}:{metrics['port']}/health"

    def health() -> tuple[int, str] | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--wait-for-valid-config", "--config",
             str(path)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    running = RunningProxy(topo["listen"]["host"], topo["listen"]["port"], path, process,
                           log_path, topo)
    try:
        wait_until(lambda: health() is not None, 15, "/health to answer")
        status, body = health()  # type: ignore[misc]
        assert status == 503 and "default_shard" in body and "nowhere" in body, body
        assert process.poll() is None
        path.write_text(yaml.safe_dump(topo, sort_keys=False))
        wait_for_port(running.host, running.port, process, log_path)
        wait_until(lambda: health() == (200, "ok\n"), 15, "/health 200 once serving")
        with psycopg.connect(running.dsn(), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        running.stop()


def test_reload_keeps_running_transactions_and_unchanged_pools(
        clusters: list[LocalPostgres], tmp_path: Path) -> None:
    """A transaction finishes on the map it began with; pools of unchanged shards keep their
    server connections; a removed shard's pool is drained and its connections closed."""
    from tests.integration.test_routing_helpers import pick_keys

    base = base_topology(clusters[:2], admin=ADMIN)
    first = topology(clusters, base, size=4, reference=False, third=True)
    running = start_proxy(tmp_path, first, name="maps")
    ports = {f"s{i}": c.port for i, c in enumerate(clusters)}
    try:
        with direct(clusters[0]) as conn:
            key = pick_keys(conn, "s0", 1, 7000)[0]
        admin = psycopg.connect(running.dsn(dbname="shardwire"), autocommit=True)
        client = psycopg.connect(running.dsn(), autocommit=True)
        where = f"/* shard_key: {key} */ SELECT inet_server_port()"
        assert client.execute(where).fetchone() == (ports["s0"],)
        assert client.execute("/* shard: s2 */ SELECT 1").fetchone() == (1,)

        def servers(shard: str) -> set[int]:
            return {int(r[4]) for r in admin.execute("SHOW SERVERS").fetchall()
                    if r[0] == shard}

        before = servers("s0")
        assert before and servers("s2")
        client.execute("BEGIN")
        assert client.execute(where).fetchone() == (ports["s0"],)
        # every bucket to s1, s2 gone
        second = topology(clusters, base, size=4, reference=False, third=False)
        second["sharding"] = {"buckets": 64, "assignment": {"s1": "0-63"}}
        running.config_path.write_text(yaml.safe_dump(second, sort_keys=False))
        result = admin.execute("RELOAD").fetchone()
        assert result is not None and "shards removed: s2" in str(
            admin.execute("SHOW TOPOLOGY").fetchall()[0]) + str(result)
        # the running transaction still routes with the old map ...
        assert client.execute(where).fetchone() == (ports["s0"],)
        client.execute("COMMIT")
        # ... the next one with the new
        assert client.execute(where).fetchone() == (ports["s1"],)
        assert before <= servers("s0")  # s0 is unchanged: its connections stayed
        assert not [r for r in admin.execute("SHOW POOLS").fetchall() if r[0] == "s2"]
        wait_until(lambda: not _app_backends(clusters[2]), 15, "s2's connections to close")
        client.close()
        admin.close()
    finally:
        running.stop()


def _app_backends(cluster: LocalPostgres) -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT pid, application_name FROM pg_stat_activity WHERE "
                            "datname = 'app' AND backend_type = 'client backend'").fetchall()
