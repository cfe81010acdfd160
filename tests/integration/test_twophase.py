"""Two-phase commit of transactions that write on several shards, and its crash recovery.

A proxy is killed (fault injection: SHARDWIRE_TEST_CRASH makes it exit like SIGKILL at a
named point of the commit) after every participant prepared, or after the decision was
recorded; a new proxy of the same instance then resolves the prepared transactions by
itself: rolled back without a decision, committed with one. Nothing stays prepared.
Everything is checked on the shards directly.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import RunningProxy, base_topology, start_proxy
from tests.integration.test_routing_helpers import (
    BUCKETS,
    by_name,
    direct,
    drop_everywhere,
    pick_keys,
    run_everywhere,
    via,
)

T = "tpc_accounts"
TABLES = {T: {"shard_key": "id"}}
INSTANCE = "t2pc"


def _proxy(workdir: Path, clusters: list[LocalPostgres], name: str,
           crash: str | None = None) -> RunningProxy:
    topology = base_topology(
        clusters, sharding={"buckets": BUCKETS}, tables=TABLES,
        transactions={"mode": "two_phase", "instance": INSTANCE},
        pool={"mode": "transaction", "size": 4, "connect_timeout": 3,
              "checkout_timeout": 10, "shutdown_timeout": 5})
    return start_proxy(workdir, topology, name=name,
                       env={"SHARDWIRE_TEST_CRASH": crash} if crash else None)


@pytest.fixture(scope="module")
def setup(shard_clusters: list[LocalPostgres], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Path, dict[str, list[int]]]]:
    drop_everywhere(shard_clusters, T)
    run_everywhere(shard_clusters,
                   f"CREATE TABLE {T} (id bigint PRIMARY KEY, balance int NOT NULL, "
                   "CONSTRAINT tpc_unique_balance UNIQUE (balance) DEFERRABLE INITIALLY DEFERRED)")
    with direct(shard_clusters[0]) as conn:
        keys = {s: pick_keys(conn, s, 40, 50_000) for s in ("s0", "s1")}
    try:
        yield tmp_path_factory.mktemp("twophase"), keys
    finally:
        drop_everywhere(shard_clusters, T)


def prepared(clusters: list[LocalPostgres]) -> dict[str, list[str]]:
    out = {}
    for name, cluster in by_name(clusters).items():
        with direct(cluster) as conn:
            out[name] = [r[0] for r in conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'sw:%'").fetchall()]
    return out


def balance(clusters: list[LocalPostgres], shard: str, key: int) -> int | None:
    with direct(by_name(clusters)[shard]) as conn:
        row = conn.execute(f"SELECT balance FROM {T} WHERE id = %s", (key,)).fetchone()
    return None if row is None else int(row[0])


def transfer(proxy: RunningProxy, a: int, b: int, x: int, y: int) -> None:
    with via(proxy, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, %s)", (a, x))
        conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, %s)", (b, y))
        conn.execute("COMMIT")


def test_commit_prepares_every_writer_and_leaves_nothing_prepared(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    workdir, keys = setup
    proxy = _proxy(workdir, shard_clusters, "commit")
    try:
        a, b = keys["s0"].pop(), keys["s1"].pop()
        transfer(proxy, a, b, 1001, 1002)
        assert balance(shard_clusters, "s0", a) == 1001
        assert balance(shard_clusters, "s1", b) == 1002
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
        with direct(by_name(shard_clusters)["s0"]) as conn:  # the decision was recorded
            n = conn.execute("SELECT count(*) FROM shardwire.decisions WHERE txn LIKE "
                             "'sw:t2pc:%'").fetchone()
        assert n is not None and n[0] >= 1
        assert "Traceback" not in proxy.log()
    finally:
        proxy.stop(signal.SIGTERM)


def test_failed_prepare_rolls_back_every_participant(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    """A deferred unique violation on s1 fails at PREPARE: s0's part is rolled back too,
    and the client gets s1's error."""
    workdir, keys = setup
    proxy = _proxy(workdir, shard_clusters, "failprepare")
    try:
        a, b, c = keys["s0"].pop(), keys["s1"].pop(), keys["s1"].pop()
        with via(proxy, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 2001)", (a,))
            conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 2002), (%s, 2002)",
                         (b, c))
            with pytest.raises(psycopg.errors.UniqueViolation) as info:
                conn.execute("COMMIT")
            assert 'shard "s1"' in (info.value.diag.message_detail or "")
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert balance(shard_clusters, "s0", a) is None
        assert balance(shard_clusters, "s1", b) is None
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
    finally:
        proxy.stop(signal.SIGTERM)


@pytest.mark.parametrize(("crash", "committed"), [("after_prepare", False),
                                                  ("after_decision", True)])
def test_recovery_after_a_crash_mid_commit(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres],
        crash: str, committed: bool) -> None:
    workdir, keys = setup
    doomed = _proxy(workdir, shard_clusters, f"crash-{crash}", crash=crash)
    a, b = keys["s0"].pop(), keys["s1"].pop()
    with pytest.raises(psycopg.OperationalError):
        transfer(doomed, a, b, 3001 if committed else 3003, 3002 if committed else 3004)
    assert doomed.process.wait(timeout=10) == 137
    left = prepared(shard_clusters)
    assert sum(len(v) for v in left.values()) >= 1, left  # in doubt until recovery
    survivor = _proxy(workdir, shard_clusters, f"recover-{crash}")
    try:
        deadline = time.monotonic() + 20  # recovery runs in the background at start
        while "two-phase commit ready" not in survivor.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "two-phase commit ready" in survivor.log(), survivor.log()[-2000:]
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
        want = (3001, 3002) if committed else (None, None)
        assert (balance(shard_clusters, "s0", a), balance(shard_clusters, "s1", b)) == want
        assert "recovered in-doubt transaction" in survivor.log()
        # and it serves: a new transfer commits on both shards
        c, d = keys["s0"].pop(), keys["s1"].pop()
        transfer(survivor, c, d, 3005 + int(committed) * 10, 3006 + int(committed) * 10)
        assert balance(shard_clusters, "s1", d) is not None
    finally:
        survivor.stop(signal.SIGTERM)


def test_bank_transfers_survive_repeated_sigkill(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    """Concurrent transfers between accounts on both shards while the proxy is killed with
    SIGKILL and restarted several times: afterwards the total is unchanged, nothing is
    prepared on any shard, every transfer whose COMMIT succeeded is there and every one
    whose COMMIT failed is not."""
    workdir, _ = setup
    drop_everywhere(shard_clusters, "bank", "bank_log")
    run_everywhere(shard_clusters,
                   "CREATE TABLE bank (id bigint PRIMARY KEY, balance bigint NOT NULL)",
                   "CREATE TABLE bank_log (id text PRIMARY KEY, a bigint, b bigint, amount bigint)")
    tables = {**TABLES, "bank": {"shard_key": "id"}, "bank_log": {"shard_key": "id"}}

    def start(name: str) -> RunningProxy:
        topology = base_topology(
            shard_clusters, sharding={"buckets": BUCKETS}, tables=tables,
            transactions={"mode": "two_phase", "instance": "bank"},
            pool={"mode": "transaction", "size": 8, "connect_timeout": 3,
                  "checkout_timeout": 10, "shutdown_timeout": 5})
        return start_proxy(workdir, topology, name=name)

    accounts = list(range(1, 41))
    current = [start("bank0")]
    with via(current[0], autocommit=True) as conn:
        conn.execute("INSERT INTO bank (id, balance) VALUES "
                     + ", ".join(f"({i}, 1000)" for i in accounts))
    confirmed: list[str] = []
    failed: list[str] = []
    unknown: list[str] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not stop.is_set():
            a, b = rng.sample(accounts, 2)
            amount = rng.randint(1, 50)
            tid = f"w{seed}-{n}"
            n += 1
            try:
                # two transfers locking the same accounts in opposite order on two shards
                # wait for each other unseen by either Postgres: lock_timeout ends that
                conn = psycopg.connect(current[0].dsn(), autocommit=True, connect_timeout=3,
                                       options="-c lock_timeout=1000")
            except psycopg.Error:
                time.sleep(0.05)
                continue
            try:
                conn.execute("BEGIN")
                conn.execute("UPDATE bank SET balance = balance - %s WHERE id = %s",
                             (amount, a))
                conn.execute("UPDATE bank SET balance = balance + %s WHERE id = %s",
                             (amount, b))
                conn.execute("INSERT INTO bank_log (id, a, b, amount) VALUES (%s, %s, %s, %s)",
                             (tid, a, b, amount))
            except psycopg.Error:
                conn.close()
                continue  # never reached COMMIT: not counted
            try:
                conn.execute("COMMIT")
                confirmed.append(tid)
            except psycopg.OperationalError:
                unknown.append(tid)  # the proxy died during COMMIT: either outcome is fine
            except psycopg.Error:
                failed.append(tid)
            finally:
                conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for round_ in range(1, 4):
            time.sleep(1.5)
            current[0].stop(signal.SIGKILL)
            current[0] = start(f"bank{round_}")
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    final = current[0]
    try:
        deadline = time.monotonic() + 20
        while "two-phase commit ready" not in final.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "two-phase commit ready" in final.log(), final.log()[-2000:]
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
        total = 0
        logged: set[str] = set()
        for cluster in shard_clusters:
            with direct(cluster) as conn:
                total += int(conn.execute("SELECT coalesce(sum(balance), 0) FROM bank")
                             .fetchone()[0])
                logged |= {r[0] for r in conn.execute("SELECT id FROM bank_log").fetchall()}
        assert total == 40 * 1000
        assert len(confirmed) > 20, (len(confirmed), len(failed), len(unknown))
        assert set(confirmed) <= logged, set(confirmed) - logged
        assert not (set(failed) & logged), set(failed) & logged
        assert "Traceback" not in final.log()
    finally:
        final.stop(signal.SIGTERM)
        drop_everywhere(shard_clusters, "bank", "bank_log")


def test_savepoints_span_participants_including_late_joiners(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    """SAVEPOINT before a shard joins, work on both shards, ROLLBACK TO undoes the work on
    both (the late shard got the savepoint when it joined), RELEASE keeps the rest."""
    workdir, keys = setup
    proxy = _proxy(workdir, shard_clusters, "savepoints")
    try:
        a, b, c = keys["s0"].pop(), keys["s1"].pop(), keys["s1"].pop()
        with via(proxy, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 4001)", (a,))
            conn.execute("SAVEPOINT sp1")
            conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 4002)", (b,))  # s1 joins
            conn.execute(f"UPDATE {T} SET balance = 4003 WHERE id = %s", (a,))
            conn.execute("ROLLBACK TO SAVEPOINT sp1")
            conn.execute("SAVEPOINT sp2")
            conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 4004)", (c,))
            conn.execute("RELEASE SAVEPOINT sp2")
            conn.execute("COMMIT")
        assert balance(shard_clusters, "s0", a) == 4001
        assert balance(shard_clusters, "s1", b) is None
        assert balance(shard_clusters, "s1", c) == 4004
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
    finally:
        proxy.stop(signal.SIGTERM)


def test_a_client_gone_mid_transaction_rolls_back_every_participant(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    workdir, keys = setup
    proxy = _proxy(workdir, shard_clusters, "disconnect")
    try:
        a, b = keys["s0"].pop(), keys["s1"].pop()
        conn = via(proxy, autocommit=True)
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 5001)", (a,))
        conn.execute(f"INSERT INTO {T} (id, balance) VALUES (%s, 5002)", (b,))
        conn.pgconn.finish()  # gone without COMMIT or ROLLBACK
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with direct(by_name(shard_clusters)["s1"]) as check:
                busy = check.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in "
                    "transaction%' AND datname = 'app'").fetchone()
            if busy == (0,):
                break
            time.sleep(0.05)
        assert balance(shard_clusters, "s0", a) is None
        assert balance(shard_clusters, "s1", b) is None
        with via(proxy, autocommit=True) as conn2:  # the proxy serves on
            assert conn2.execute(f"SELECT count(*) FROM {T} WHERE id = %s", (a,)).fetchone() \
                == (0,)
    finally:
        proxy.stop(signal.SIGTERM)


def test_a_multi_statement_query_over_two_shards_is_one_transaction(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    """`INSERT ...; INSERT ...` for two shards in one simple Query: both commit (two-phase),
    or, when the second fails, neither does: as one Postgres runs such a string."""
    workdir, keys = setup
    proxy = _proxy(workdir, shard_clusters, "multi")
    try:
        a, b = keys["s0"].pop(), keys["s1"].pop()
        with via(proxy, autocommit=True) as conn:
            cur = conn.execute(f"INSERT INTO {T} (id, balance) VALUES ({a}, 6001); "
                               f"INSERT INTO {T} (id, balance) VALUES ({b}, 6002)")
            assert cur.statusmessage == "INSERT 0 1"
        assert (balance(shard_clusters, "s0", a), balance(shard_clusters, "s1", b)) == (
            6001, 6002)
        c, d = keys["s0"].pop(), keys["s1"].pop()
        with via(proxy, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.NotNullViolation):
                conn.execute(f"INSERT INTO {T} (id, balance) VALUES ({c}, 6003); "
                             f"INSERT INTO {T} (id, balance) VALUES ({d}, NULL)")
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert (balance(shard_clusters, "s0", c), balance(shard_clusters, "s1", d)) == (
            None, None)
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
    finally:
        proxy.stop(signal.SIGTERM)


def test_recovery_leaves_a_live_peers_transactions_alone(
        setup: tuple[Path, dict[str, list[int]]], shard_clusters: list[LocalPostgres]) -> None:
    """Replicas of one Deployment share their instance name: a proxy starting next to a
    live one must not resolve the live one's in-doubt transactions (its run lock is held);
    once that proxy is dead, the next recovery resolves them."""
    workdir, keys = setup
    alive = _proxy(workdir, shard_clusters, "alive", crash="hang_after_prepare")
    a, b = keys["s0"].pop(), keys["s1"].pop()
    worker = threading.Thread(target=lambda: _swallow(transfer, alive, a, b, 3101, 3102),
                              daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    while sum(len(v) for v in prepared(shard_clusters).values()) < 2:
        assert time.monotonic() < deadline, "the transfer never prepared"
        time.sleep(0.05)
    in_doubt = prepared(shard_clusters)
    peer = _proxy(workdir, shard_clusters, "peer")
    try:
        _wait_ready(peer)
        assert prepared(shard_clusters) == in_doubt  # untouched: its owner is alive
        assert "recovered in-doubt transaction" not in peer.log()
    finally:
        peer.stop(signal.SIGTERM)
    alive.stop(signal.SIGKILL)  # now the run is over: its lock went with its connections
    worker.join(10)
    after = _proxy(workdir, shard_clusters, "after")
    try:
        _wait_ready(after)
        assert prepared(shard_clusters) == {"s0": [], "s1": []}
        assert (balance(shard_clusters, "s0", a), balance(shard_clusters, "s1", b)) == (
            None, None)  # no decision: rolled back
    finally:
        after.stop(signal.SIGTERM)


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except psycopg.Error:
        pass  # the proxy serving it is killed


def _wait_ready(proxy: RunningProxy) -> None:
    deadline = time.monotonic() + 20  # recovery runs in the background at start
    while "two-phase commit ready" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()[-2000:]
        time.sleep(0.05)
