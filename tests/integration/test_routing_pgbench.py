"""pgbench, unchanged, through a routing shardwire (the topology of config/pgbench.yaml).

``pgbench -i -s 5`` creates the tables (DDL on every shard), loads them (INSERTs and COPY,
split by key, in one transaction over both shards), vacuums and adds primary keys. Then, on
the shards directly, every row of every table must sit on the shard owning its key's bucket
(decided by Postgres' own hash partitioning, see test_routing_helpers) and the totals must be
pgbench's: 500000 accounts, 50 tellers, 5 branches, no history. Finally the select-only
benchmark runs in every query mode; its start-up ``select count(*) from pgbench_branches``
must be summed over the shards (pgbench reports the scale it computes from it).

The topology names the tables unqualified, i.e. ``public.pgbench_*`` (that is the topology's
rule whatever the search_path), so this module drops them from both shards at the start and
the end (test_client_pgbench keeps its own in schema client_pgbench).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    bucket_counts,
    by_name,
    direct,
    drop_everywhere,
    owner,
    routed_proxy,
    table_exists,
)

PGBENCH = shutil.which("pgbench") or "pgbench"
SCALE = 5
# table -> (shard key, rows pgbench -i makes at scale 5)
PGBENCH_TABLES = {
    "pgbench_accounts": ("aid", 100_000 * SCALE),
    "pgbench_tellers": ("tid", 10 * SCALE),
    "pgbench_branches": ("bid", SCALE),
    "pgbench_history": ("aid", 0),
}
TOPOLOGY_TABLES = {t: {"shard_key": key} for t, (key, _) in PGBENCH_TABLES.items()}

pytestmark = pytest.mark.timeout(600)


def run_pgbench(proxy: RunningProxy, *args: str,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGCONNECT_TIMEOUT="10", PGHOST=proxy.host, PGPORT=str(proxy.port),
               PGUSER="app", PGPASSWORD="secret", PGDATABASE="app")
    return subprocess.run([PGBENCH, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def bench_proxy(proxy_factory: ProxyFactory,
                shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    drop_everywhere(shard_clusters, *PGBENCH_TABLES)
    try:
        with routed_proxy(proxy_factory, TOPOLOGY_TABLES, size=4) as running:
            yield running
    finally:
        drop_everywhere(shard_clusters, *PGBENCH_TABLES)


@pytest.fixture(scope="module")
def initialised(bench_proxy: RunningProxy) -> RunningProxy:
    result = run_pgbench(bench_proxy, "-i", "-s", str(SCALE), "-q")
    assert result.returncode == 0, f"pgbench -i failed:\n{result.stdout}\n{result.stderr}"
    assert "done in" in result.stderr
    return bench_proxy


def test_init_places_every_row_on_its_buckets_shard(
        initialised: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    totals: dict[str, int] = {}
    misplaced: dict[str, dict[str, int]] = {}
    per_shard: dict[str, dict[str, int]] = {}
    for name, cluster in by_name(shard_clusters).items():
        with direct(cluster) as conn:
            for table, (key, _) in PGBENCH_TABLES.items():
                assert table_exists(conn, table), f"{table} missing on {name}"
                counts, total = bucket_counts(conn, table, key, "bigint")
                wrong = sum(n for b, n in counts.items() if owner(b) != name)
                if wrong:
                    misplaced.setdefault(table, {})[name] = wrong
                totals[table] = totals.get(table, 0) + total
                per_shard.setdefault(table, {})[name] = total
    assert misplaced == {}, f"rows on the wrong shard (table -> shard -> rows): {misplaced}; " \
                            f"rows per shard: {per_shard}"
    assert totals == {t: n for t, (_, n) in PGBENCH_TABLES.items()}, per_shard
    for table in ("pgbench_accounts", "pgbench_tellers"):
        assert all(per_shard[table].values()), f"{table}: {per_shard[table]}"


def test_init_ran_its_ddl_on_every_shard(initialised: RunningProxy,
                                         shard_clusters: list[LocalPostgres]) -> None:
    """Primary keys (pgbench's last init step) and the vacuum/analyze step on both shards."""
    for name, cluster in by_name(shard_clusters).items():
        with direct(cluster) as conn:
            for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers"):
                assert table_exists(conn, f"{table}_pkey"), f"{table}_pkey missing on {name}"
            # Backends publish their statistics up to a second after going idle (and a
            # pooled server connection stays open): poll instead of reading once.
            deadline = time.monotonic() + 15
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'public' AND "
                    "relname IN ('pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', "
                    "'pgbench_history') "
                    "AND (last_vacuum IS NOT NULL OR last_autovacuum IS NOT NULL)").fetchone()
                if (row is not None and row[0] == 4) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert row is not None and row[0] == 4, (name, row)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_select_only_benchmark(initialised: RunningProxy, mode: str) -> None:
    result = run_pgbench(initialised, "-S", "-M", mode, "-c", "4", "-j", "2", "-T", "3", "-n",
                         timeout=120)
    assert result.returncode == 0, f"pgbench failed:\n{result.stdout}\n{result.stderr}"
    out = result.stdout
    # the scale comes from `select count(*) from pgbench_branches`, summed over the shards
    assert f"scaling factor: {SCALE}" in out, out
    assert f"query mode: {mode}" in out
    assert re.search(r"number of failed transactions: 0 \(0\.000%\)", out), out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed is not None, out
    assert int(processed.group(1)) > 50, out
    assert "error" not in result.stderr.lower(), result.stderr
