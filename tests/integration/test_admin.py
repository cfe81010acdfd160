"""The admin console: the virtual database `admin.database`, plain result sets (psql shows
them), refused to users not in `admin.users`."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import routed_proxy, via

ADMIN = {"database": "shardwire", "users": ["app"]}


@pytest.fixture(scope="module")
def console(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with routed_proxy(proxy_factory, {"adm_items": {"shard_key": "id"}},
                      admin=ADMIN) as running:
        yield running


def admin_conn(proxy: RunningProxy, user: str = "app", password: str = "secret"
               ) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(proxy.dsn(user=user, password=password, dbname="shardwire"),
                           autocommit=True, connect_timeout=5)


def test_show_commands_answer_result_sets(console: RunningProxy) -> None:
    with via(console) as conn:  # a client and a pool to show
        conn.execute("SELECT 1")
        with admin_conn(console) as adm:
            shards = adm.execute("SHOW SHARDS").fetchall()
            assert [r[0] for r in shards] == ["s0", "s1"]
            assert sum(int(r[5]) for r in shards) == 64  # every bucket once
            pools = adm.execute("SHOW POOLS").fetchall()
            assert any(r[0] == "s0" and int(r[4]) + int(r[5]) >= 1 for r in pools)
            clients = adm.execute("SHOW CLIENTS").fetchall()
            assert any(r[1] == "app" for r in clients)
            topo = adm.execute("SHOW TOPOLOGY").fetchall()
            assert ("table", "public.adm_items", "hash on id") in topo
            assert topo[0][:2] == ("version", "1")
            assert ("shard", "s0", "buckets 0-31 (32)") in topo
            stats = dict(adm.execute("SHOW STATS").fetchall())
            assert int(stats["client_connections"]) >= 1
            route = [r[0] for r in adm.execute(
                "SHOW ROUTE SELECT count(*) FROM adm_items").fetchall()]
            assert route[0].startswith("route: all shards") and "merge plan:" in route
            cache = adm.execute("SHOW PLAN CACHE").fetchall()
            assert any(r[0] == "plans" and r[1] == "hits" for r in cache)
            with pytest.raises(psycopg.errors.SyntaxError) as info:
                adm.execute("SHOW NOTHING")
            assert "SHOW SHARDS" in (info.value.diag.message_hint or "")
            assert adm.execute("SHOW SHARDS").fetchall() == shards  # the console goes on


def test_psql_shows_them(console: RunningProxy, pg_bindir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = "secret"
    result = subprocess.run(
        [str(pg_bindir / "psql"), "-X", "-A", "-v", "ON_ERROR_STOP=1", "-c", "SHOW SHARDS",
         console.dsn(password=None, dbname="shardwire")],
        capture_output=True, text=True, env=env, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "shard|primary|database|replicas|default|buckets|state"
    assert lines[-1] == "(2 rows)"
    # every command, as psql shows it: a header and a row count (or the command tag)
    for command in ("SHOW HEALTH", "SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS",
                    "SHOW STATS", "SHOW STATS SHARDS", "SHOW STATS BUCKETS", "SHOW TOPOLOGY",
                    "SHOW PLAN CACHE", "SHOW HOT KEYS", "SHOW ROUTE SELECT 1", "RELOAD",
                    "PAUSE s1", "RESUME s1"):
        result = subprocess.run(
            [str(pg_bindir / "psql"), "-X", "-A", "-v", "ON_ERROR_STOP=1", "-c", command,
             console.dsn(password=None, dbname="shardwire")],
            capture_output=True, text=True, env=env, timeout=20, check=False)
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.strip().splitlines()[-1].endswith(("rows)", "row)")), (
            command, result.stdout)


def test_users_not_listed_are_refused(console: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        admin_conn(console, user="other", password="otherpw")
    assert "admin console" in str(info.value)


def test_no_admin_users_means_no_console(proxy_factory: ProxyFactory,
                                         shard_clusters: list[LocalPostgres]) -> None:
    with routed_proxy(proxy_factory, {}) as plain:
        with pytest.raises(psycopg.OperationalError):
            admin_conn(plain)


def test_servers_stats_and_hot_keys(console: RunningProxy,
                                    shard_clusters: list[LocalPostgres]) -> None:
    with via(console) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS adm_items (id bigint PRIMARY KEY, v int)")
        for _ in range(400):  # one hot key, sampled 1 in 8: about 50 sketch updates
            conn.execute("SELECT v FROM adm_items WHERE id = %s", (7,))
        for k in range(100, 140):
            conn.execute("SELECT v FROM adm_items WHERE id = %s", (k,))
        with admin_conn(console) as adm:
            servers = adm.execute("SHOW SERVERS").fetchall()
            assert servers and {r[5] for r in servers} <= {"idle", "active"}
            assert all(r[4] is not None for r in servers)  # backend pids
            hot = adm.execute("SHOW HOT KEYS").fetchall()
            assert hot[0][0] == "7", hot
            assert float(hot[0][4]) > 50, hot  # over half of its shard's keyed statements
            shards = {r[0]: r for r in adm.execute("SHOW STATS SHARDS").fetchall()}
            assert int(shards["s0"][1]) + int(shards["s1"][1]) >= 440
            buckets = adm.execute("SHOW STATS BUCKETS").fetchall()
            assert sum(int(r[2]) for r in buckets) >= 440
            assert all(0 <= int(r[0]) < 64 for r in buckets)
            health = adm.execute("SHOW HEALTH").fetchall()
            assert {(r[0], r[1], r[3]) for r in health} == {("s0", "primary", "up"),
                                                          ("s1", "primary", "up")}
    drop = "DROP TABLE IF EXISTS adm_items"
    for cluster in shard_clusters:
        cluster.psql(drop, dbname="app")


def test_pause_holds_new_statements_until_resume(console: RunningProxy) -> None:
    with admin_conn(console) as adm, via(console) as conn:
        conn.execute("SELECT 1")
        paused = adm.execute("PAUSE s0").fetchall()
        assert paused == [("s0", "paused", 0)]
        assert dict((r[0], r[6]) for r in adm.execute("SHOW SHARDS").fetchall())["s0"] == (
            "paused")
        done: list[float] = []

        def client() -> None:
            conn.execute("SELECT 2")  # unparsed: the default shard s0, which waits
            done.append(time.monotonic())

        worker = threading.Thread(target=client)
        worker.start()
        time.sleep(0.5)
        assert not done, "a statement ran on a paused shard"
        resumed_at = time.monotonic()
        assert adm.execute("RESUME s0").fetchall() == [("s0", "running", 0)]
        worker.join(10)
        assert done and done[0] >= resumed_at
        with pytest.raises(psycopg.errors.UndefinedObject):
            adm.execute("PAUSE nowhere")


def test_reload_from_the_console(console: RunningProxy) -> None:
    with admin_conn(console) as adm:
        assert adm.execute("RELOAD").fetchall()[0][0].startswith("ok: nothing to change")
        good = console.config_path.read_text()
        topo = yaml.safe_load(good)
        try:
            topo["pool"]["size"] = 5
            console.config_path.write_text(yaml.safe_dump(topo))
            result = adm.execute("RELOAD").fetchall()[0][0]
            assert result.startswith("ok: version") or "nothing to change" in result
            assert ("version", "1") != adm.execute("SHOW TOPOLOGY").fetchall()[0][:2]
            console.config_path.write_text("shards: [")  # broken YAML
            with pytest.raises(psycopg.errors.ConfigFileError) as info:
                adm.execute("RELOAD")
            assert "invalid YAML" in str(info.value)
            assert {int(r[4]) for r in adm.execute("SHOW POOLS").fetchall()} <= {5}
        finally:
            console.config_path.write_text(good)
