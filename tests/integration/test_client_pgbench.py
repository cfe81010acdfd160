"""pgbench, unchanged, through shardwire: initialise, then run every query mode.

pgbench's tables live in their own schema (selected with PGOPTIONS, which also proves that
startup `options` reach the server) so they never collide with other tests in `app`.
The runs use a transaction-pooling proxy whose pool is smaller than pgbench's client
count, so consecutive transactions of one client land on different server connections.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy, pooled_proxy

SCHEMA = "client_pgbench"
PGBENCH = shutil.which("pgbench") or "pgbench"


def run_pgbench(proxy: RunningProxy, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGOPTIONS=f"-c search_path={SCHEMA}", PGCONNECT_TIMEOUT="10",
               PGHOST=proxy.host, PGPORT=str(proxy.port), PGUSER="app", PGPASSWORD="secret",
               PGDATABASE="app")
    return subprocess.run([PGBENCH, *args], capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture(scope="module")
def bench_proxy(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with pooled_proxy(proxy_factory, size=3) as running:
        yield running


@pytest.fixture(scope="module")
def initialised(bench_proxy: RunningProxy, direct: LocalPostgres) -> RunningProxy:
    direct.psql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};",
                dbname="app")
    result = run_pgbench(bench_proxy, "-i", "-s", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stderr
    counts = direct.psql(
        f"SELECT (SELECT count(*) FROM {SCHEMA}.pgbench_accounts), "
        f"(SELECT count(*) FROM {SCHEMA}.pgbench_branches), "
        f"(SELECT count(*) FROM {SCHEMA}.pgbench_tellers), "
        f"(SELECT count(*) FROM {SCHEMA}.pgbench_history)", dbname="app")
    assert counts.strip() == "100000|1|10|0"
    # nothing leaked into public
    assert direct.psql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgbench%' "
                       "AND schemaname <> 'client_pgbench'", dbname="app").strip() == "0"
    return bench_proxy


def check_run(result: subprocess.CompletedProcess[str], clients: int) -> int:
    assert result.returncode == 0, f"pgbench failed:\n{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert f"number of clients: {clients}" in out
    assert re.search(r"number of failed transactions: 0 \(0\.000%\)", out), out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed is not None, out
    assert int(processed.group(1)) > 50, out
    assert "error" not in result.stderr.lower(), result.stderr
    return int(processed.group(1))


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_select_only(initialised: RunningProxy, mode: str) -> None:
    result = run_pgbench(initialised, "-S", "-M", mode, "-c", "4", "-j", "2", "-T", "3",
                         "-n")
    check_run(result, 4)
    assert f"query mode: {mode}" in result.stdout


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_tpcb_keeps_balances_consistent(initialised: RunningProxy, direct_dsn: str,
                                        mode: str) -> None:
    with psycopg.connect(direct_dsn) as conn:
        before = conn.execute(f"SELECT count(*) FROM {SCHEMA}.pgbench_history").fetchone()
    # One pgbench thread per client: a thread running several clients blocks all of them
    # while one waits for a pooled connection (pgbench prepares with a blocking PQprepare),
    # and if another of its clients holds the branch row lock, that is a wait cycle through
    # the pool (pool size 3 < 4 clients) that no pooler can break. See README, Pool modes.
    result = run_pgbench(initialised, "-M", mode, "-c", "4", "-j", "4", "-T", "3", "-n")
    processed = check_run(result, 4)
    assert "TPC-B (sort of)" in result.stdout
    with psycopg.connect(direct_dsn) as conn:
        row = conn.execute(f"""
            SELECT (SELECT sum(abalance) FROM {SCHEMA}.pgbench_accounts),
                   (SELECT sum(tbalance) FROM {SCHEMA}.pgbench_tellers),
                   (SELECT sum(bbalance) FROM {SCHEMA}.pgbench_branches),
                   (SELECT sum(delta) FROM {SCHEMA}.pgbench_history),
                   (SELECT count(*) FROM {SCHEMA}.pgbench_history)""").fetchone()
    assert row is not None
    accounts, tellers, branches, history, count = row
    assert accounts == tellers == branches == history
    # every transaction pgbench counted committed one history row; with -T, a client
    # stopped at the deadline may leave one more committed but uncounted (direct too)
    assert before is not None
    assert processed <= count - before[0] <= processed + 4


def test_custom_script_with_variables(initialised: RunningProxy, direct_dsn: str,
                                      tmp_path: os.PathLike[str]) -> None:
    """A script with \\set, a multi-statement transaction and \\gset, in prepared mode."""
    script = os.path.join(tmp_path, "custom.sql")
    with open(script, "w") as f:
        f.write("\\set aid random(1, 100000)\n"
                "\\set delta random(-100, 100)\n"
                "BEGIN;\n"
                "SELECT :aid % 10 + 1 AS tid, 1 AS bid \\gset\n"
                "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
                "UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n"
                "UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n"
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                "VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\n"
                "END;\n")
    with psycopg.connect(direct_dsn) as conn:
        before = conn.execute(f"SELECT count(*) FROM {SCHEMA}.pgbench_history").fetchone()
    result = run_pgbench(initialised, "-M", "prepared", "-f", script, "-c", "4", "-j", "4",
                         "-t", "100", "-n")
    assert result.returncode == 0, result.stderr
    assert "number of transactions actually processed: 400/400" in result.stdout
    with psycopg.connect(direct_dsn) as conn:
        row = conn.execute(f"""
            SELECT (SELECT sum(abalance) FROM {SCHEMA}.pgbench_accounts)
                   = (SELECT sum(delta) FROM {SCHEMA}.pgbench_history),
                   (SELECT count(*) FROM {SCHEMA}.pgbench_history)""").fetchone()
    assert row is not None and before is not None
    assert row == (True, before[0] + 400)
