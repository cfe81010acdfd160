"""One shard's Postgres is killed under load: statements for its keys fail fast with 08006
naming it, the other shard keeps serving, and once it is back it serves again without a
proxy restart. Metrics and the admin console show it down, then up."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from proxy.localpg import LocalPostgres
from tests.integration.conftest import base_topology, start_proxy
from tests.integration.test_faults_helpers import wait_until
from tests.integration.test_routing_helpers import BUCKETS, direct, pick_keys

T = "sd_items"


def test_killed_shard_fails_fast_and_comes_back(pg_factory: Any, tmp_path: Path) -> None:
    clusters: list[LocalPostgres] = []
    for name in ("sd0", "sd1"):
        cluster = pg_factory(name, auth="scram-sha-256", superuser_password="postgres")
        cluster.create_database("app")
        cluster.psql(f"CREATE TABLE {T} (id bigint PRIMARY KEY, v int)", dbname="app")
        clusters.append(cluster)
    topo = base_topology(clusters, sharding={"buckets": BUCKETS},
                         tables={T: {"shard_key": "id"}},
                         admin={"database": "shardwire", "users": ["app"]},
                         health={"check_interval": "200ms"})
    topo["pool"]["connect_timeout"] = 5
    running = start_proxy(tmp_path, topo, name="down")
    with direct(clusters[0]) as conn:
        key0 = pick_keys(conn, "s0", 1, 100)[0]
        key1 = pick_keys(conn, "s1", 1, 100)[0]
    try:
        with psycopg.connect(running.dsn(), autocommit=True) as conn:
            for k in (key0, key1):
                conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, %s)", (k, k))
            clusters[1].kill()
            # every statement for s1's key fails fast and says which shard; s0 serves
            for _ in range(5):
                start = time.monotonic()
                try:
                    conn.execute(f"SELECT v FROM {T} WHERE id = %s", (key1,))
                    raise AssertionError("a statement reached a killed shard")
                except psycopg.OperationalError as exc:
                    assert exc.sqlstate == "08006", exc
                    assert 'shard "s1"' in str(exc), exc
                assert time.monotonic() - start < topo["pool"]["connect_timeout"]
                assert conn.execute(f"SELECT v FROM {T} WHERE id = %s",
                                    (key0,)).fetchone() == (key0,)
            with psycopg.connect(running.dsn(dbname="shardwire"), autocommit=True) as adm:
                states = {r[0]: r[6] for r in adm.execute("SHOW SHARDS").fetchall()}
                assert states == {"s0": "up", "s1": "down"}
            metrics = topo["metrics"]
            url = f"http://{metrics['host']}:{metrics['port']}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
            host = f"127.0.0.1:{clusters[1].port}"
            assert f'shardwire_shard_up{{host="{host}",role="primary",shard="s1"}} 0.0' in text
            # back: served again, same proxy, same client connection
            clusters[1].start()

            def serves() -> bool:
                # (the row itself may be gone: the test clusters run with fsync off)
                try:
                    row = conn.execute(f"SELECT count(*) FROM {T} WHERE id = %s",
                                       (key1,)).fetchone()
                    return row is not None
                except psycopg.OperationalError:
                    return False
            wait_until(serves, 20, "s1 to serve again")
            conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 1) ON CONFLICT (id) DO NOTHING",
                         (key1,))
            with psycopg.connect(running.dsn(dbname="shardwire"), autocommit=True) as adm:
                states = {r[0]: r[6] for r in adm.execute("SHOW SHARDS").fetchall()}
                assert states == {"s0": "up", "s1": "up"}
        assert running.process.poll() is None
        assert "Traceback" not in running.log()
    finally:
        clusters[1].start()
        running.stop()
