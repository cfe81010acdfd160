"""The admin console: the virtual database `admin.database`, plain result sets (psql shows
them), refused to users not in `admin.users`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

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
            assert ("public.adm_items", "hash", "id", None) in topo
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
    assert lines[0] == "shard|primary|database|replicas|default|buckets"
    assert lines[-1] == "(2 rows)"


def test_users_not_listed_are_refused(console: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        admin_conn(console, user="other", password="otherpw")
    assert "admin console" in str(info.value)


def test_no_admin_users_means_no_console(proxy_factory: ProxyFactory,
                                         shard_clusters: list[LocalPostgres]) -> None:
    with routed_proxy(proxy_factory, {}) as plain:
        with pytest.raises(psycopg.OperationalError):
            admin_conn(plain)
