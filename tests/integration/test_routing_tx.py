"""Transactions over several shards through shardwire.

BEGIN, writes on s0 and s1, COMMIT: both rows are committed (shard by shard; not atomic
yet) and invisible to others until then. ROLLBACK undoes every shard. An error inside the
transaction fails every later statement with 25P02, whichever shard it is for, until
ROLLBACK (and a COMMIT of a failed transaction rolls back), as one Postgres would.

The table is created straight on each shard, so these tests depend on routing inside
transactions only; every outcome is checked on the shards directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    by_name,
    direct,
    drop_everywhere,
    pick_keys,
    routed_proxy,
    rows_by_shard,
    run_everywhere,
    run_psql,
    via,
)

T = "rt_tx_users"
TABLES = {T: {"shard_key": "id"}}


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory,
           shard_clusters: list[LocalPostgres]) -> Iterator[RunningProxy]:
    drop_everywhere(shard_clusters, T)
    run_everywhere(shard_clusters, f"CREATE TABLE {T} (id bigint PRIMARY KEY, v text)")
    with routed_proxy(proxy_factory, TABLES) as running:
        yield running
    drop_everywhere(shard_clusters, T)


class Keys:
    """Fresh keys owned by each shard, decided by Postgres."""

    def __init__(self, clusters: list[LocalPostgres]) -> None:
        with direct(clusters[0]) as conn:
            self.pool = {s: pick_keys(conn, s, 60, 10_000) for s in ("s0", "s1")}

    def on(self, shard: str) -> int:
        return self.pool[shard].pop()


@pytest.fixture(scope="module")
def keys(shard_clusters: list[LocalPostgres]) -> Keys:
    return Keys(shard_clusters)


def stored(clusters: list[LocalPostgres], ids: list[int]) -> dict[str, dict[int, str]]:
    found = rows_by_shard(clusters, f"SELECT id, v FROM {T} WHERE id = ANY(%s)", [ids])
    return {shard: dict(rows) for shard, rows in found.items()}


def test_commit_over_two_shards(routed: RunningProxy, shard_clusters: list[LocalPostgres],
                                keys: Keys) -> None:
    a, b = keys.on("s0"), keys.on("s1")
    with via(routed, autocommit=False) as conn:  # psycopg sends BEGIN itself
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'a')", (a,))
        conn.execute(f"INSERT INTO {T} (id, v) VALUES ({b}, 'b')")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        # the transaction sees its own rows on both shards ...
        got = conn.execute(f"SELECT id, v FROM {T} WHERE id = ANY(%s)", ([a, b],)).fetchall()
        assert sorted(got) == sorted([(a, "a"), (b, "b")])
        # ... nobody else does yet (each shard holds an open transaction)
        assert stored(shard_clusters, [a, b]) == {"s0": {}, "s1": {}}
        conn.commit()
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert stored(shard_clusters, [a, b]) == {"s0": {a: "a"}, "s1": {b: "b"}}


def test_commit_over_two_shards_from_psql(routed: RunningProxy,
                                          shard_clusters: list[LocalPostgres],
                                          keys: Keys) -> None:
    """Simple protocol, one statement per Query (psql -f), explicit BEGIN/COMMIT."""
    a, b, c = keys.on("s1"), keys.on("s0"), keys.on("s1")
    script = (f"BEGIN;\nINSERT INTO {T} (id, v) VALUES ({a}, 'psql a');\n"
              f"INSERT INTO {T} (id, v) VALUES ({b}, 'psql b');\n"
              f"UPDATE {T} SET v = 'psql a2' WHERE id = {a};\n"
              f"INSERT INTO {T} (id, v) VALUES ({c}, 'psql c');\n"
              f"SELECT id, v FROM {T} WHERE id IN ({a}, {b}, {c});\nCOMMIT;\n")
    out = run_psql(routed, "-f", "-", stdin=script).stdout
    assert sorted(out.splitlines()) == sorted([f"{a}|psql a2", f"{b}|psql b", f"{c}|psql c"])
    assert stored(shard_clusters, [a, b, c]) == {"s0": {b: "psql b"},
                                                 "s1": {a: "psql a2", c: "psql c"}}


def test_rollback_undoes_every_shard(routed: RunningProxy,
                                     shard_clusters: list[LocalPostgres], keys: Keys) -> None:
    a, b = keys.on("s0"), keys.on("s1")
    with direct(by_name(shard_clusters)["s1"]) as conn:
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'before')", (b,))
    with via(routed) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'a')", (a,))
        conn.execute(f"UPDATE {T} SET v = 'changed' WHERE id = %s", (b,))
        assert conn.execute(f"SELECT v FROM {T} WHERE id = %s", (b,)).fetchone() \
            == ("changed",)
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"SELECT v FROM {T} WHERE id = %s", (b,)).fetchone() \
            == ("before",)
    assert stored(shard_clusters, [a, b]) == {"s0": {}, "s1": {b: "before"}}


@pytest.mark.parametrize("next_shard", ["s0", "s1", "none"])
def test_an_error_fails_the_rest_of_the_transaction(
        routed: RunningProxy, shard_clusters: list[LocalPostgres], keys: Keys,
        next_shard: str) -> None:
    """A duplicate key on s1 after a write on s0: every later statement (for s0, for s1,
    or for no table) is 25P02 until ROLLBACK; the write on s0 is gone."""
    a, dup = keys.on("s0"), keys.on("s1")
    with direct(by_name(shard_clusters)["s1"]) as conn:
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'existing')", (dup,))
    later = {"s0": (f"SELECT v FROM {T} WHERE id = %s", (keys.on("s0"),)),
             "s1": (f"SELECT v FROM {T} WHERE id = %s", (keys.on("s1"),)),
             "none": ("SELECT 1", None)}[next_shard]
    with via(routed) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'a')", (a,))
        with pytest.raises(errors.UniqueViolation):
            conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'dup')", (dup,))
        assert conn.info.transaction_status == TransactionStatus.INERROR
        for _ in range(2):
            with pytest.raises(errors.InFailedSqlTransaction):
                conn.execute(*later)
        with pytest.raises(errors.InFailedSqlTransaction):  # simple protocol too
            conn.execute(f"SELECT v FROM {T} WHERE id = {a}")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == TransactionStatus.IDLE
        # usable again, and the write on s0 was rolled back
        assert conn.execute(f"SELECT v FROM {T} WHERE id = %s", (a,)).fetchall() == []
        assert conn.execute(*later).fetchall() in ([], [(1,)])
    assert stored(shard_clusters, [a, dup]) == {"s0": {}, "s1": {dup: "existing"}}


def test_commit_of_a_failed_transaction_rolls_back(
        routed: RunningProxy, shard_clusters: list[LocalPostgres], keys: Keys) -> None:
    """Postgres answers COMMIT in a failed transaction with ROLLBACK: s0, whose own part
    went fine, must not commit either."""
    a, dup = keys.on("s0"), keys.on("s1")
    with direct(by_name(shard_clusters)["s1"]) as conn:
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'existing')", (dup,))
    with via(routed) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'a')", (a,))
        with pytest.raises(errors.UniqueViolation):
            conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'dup')", (dup,))
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert stored(shard_clusters, [a, dup]) == {"s0": {}, "s1": {dup: "existing"}}


def test_error_in_a_transaction_from_psql(routed: RunningProxy,
                                          shard_clusters: list[LocalPostgres],
                                          keys: Keys) -> None:
    a, b = keys.on("s0"), keys.on("s1")
    script = (f"BEGIN;\nINSERT INTO {T} (id, v) VALUES ({a}, 'psql');\n"
              "SELECT 1/0;\n"
              f"INSERT INTO {T} (id, v) VALUES ({b}, 'psql');\nCOMMIT;\n")
    result = run_psql(routed, "-v", "ON_ERROR_STOP=0", "-f", "-", stdin=script, check=False)
    assert "division by zero" in result.stderr
    assert "current transaction is aborted" in result.stderr
    assert stored(shard_clusters, [a, b]) == {"s0": {}, "s1": {}}


async def test_asyncpg_transactions(routed: RunningProxy,
                                    shard_clusters: list[LocalPostgres], keys: Keys) -> None:
    a, b, c, d = keys.on("s0"), keys.on("s1"), keys.on("s0"), keys.on("s1")
    conn = await asyncpg.connect(routed.url())
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {T} (id, v) VALUES ($1, $2)", a, "async a")
            await conn.execute(f"INSERT INTO {T} (id, v) VALUES ($1, $2)", b, "async b")
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {T} (id, v) VALUES ($1, $2)", c, "async c")
                await conn.execute(f"INSERT INTO {T} (id, v) VALUES ($1, $2)", d, "async d")
                raise RuntimeError("roll back")
        with pytest.raises(asyncpg.PostgresError) as info:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {T} (id, v) VALUES ($1, $2)", c, "async c")
                await conn.execute(f"INSERT INTO {T} (id, v) VALUES ($1, $2)", b, "again")
        assert info.value.sqlstate == "23505"
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert stored(shard_clusters, [a, b, c, d]) == {"s0": {a: "async a"},
                                                    "s1": {b: "async b"}}


def test_read_only_transaction_over_two_shards(routed: RunningProxy,
                                               shard_clusters: list[LocalPostgres],
                                               keys: Keys) -> None:
    """BEGIN with options is replayed on every shard the transaction reaches."""
    a, b = keys.on("s0"), keys.on("s1")
    for name, k in (("s0", a), ("s1", b)):
        with direct(by_name(shard_clusters)[name]) as conn:
            conn.execute(f"INSERT INTO {T} (id, v) VALUES (%s, 'ro')", (k,))
    with via(routed) as conn:
        conn.execute("BEGIN READ ONLY")
        assert conn.execute(f"SELECT v FROM {T} WHERE id = %s", (a,)).fetchone() == ("ro",)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute(f"UPDATE {T} SET v = 'rw' WHERE id = %s", (b,))
        conn.execute("ROLLBACK")
    assert stored(shard_clusters, [a, b]) == {"s0": {a: "ro"}, "s1": {b: "ro"}}
