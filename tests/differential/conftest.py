"""Fixtures of the differential test: four shards behind shardwire and one plain Postgres,
loaded with the same data (tests/differential/dataset.py).

* ``diff_env`` (module scope, torn down with the module): five clusters started from the
  suite's ``pg_factory`` (C.UTF-8 where available, the same settings everywhere, database
  ``app``), a proxy over the four shards with the dataset's topology, the schema created
  through the proxy (DDL broadcast) and on the plain server, the data loaded with COPY
  through the proxy and directly into the plain server, and a second plain database
  ``app_rev`` holding the same rows in the opposite physical order (to check that a case's
  expected answer does not depend on the plan). The load is verified straight on the
  shards: the union of the shards equals the plain data, every shard holds a reference
  table whole, the unlisted table is on the default shard only, and every row of a hash
  table is on the shard owning its key's bucket (as Postgres' own hash partitioning
  computes it).
* ``psy`` / ``apg`` (module): psycopg (text results; simple protocol without parameters,
  extended with) and asyncpg (binary results, extended protocol) connections to the plain
  server and to the proxy, reconnected when a case broke one.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.conftest import SUPERUSER_PASSWORD, PgFactory
from tests.differential.dataset import (
    BUCKETS,
    CLUSTER_SETTINGS,
    REFERENCE,
    SCHEMA,
    SHARD_COUNT,
    SHARDED,
    TOPOLOGY_TABLES,
    UNLISTED,
    Table,
    generate,
    reversed_tables,
)
from tests.integration.conftest import RunningProxy, base_topology, start_proxy
from tests.integration.test_routing_helpers import owner, pg_buckets

DATABASE = "app"
REVERSED_DATABASE = "app_rev"
SHARD_NAMES = tuple(f"s{i}" for i in range(SHARD_COUNT))
# The shard key of each hash table, for the placement check.
HASH_KEYS = {t: str(TOPOLOGY_TABLES[t]["shard_key"]) for t in SHARDED}

Raw = tuple[str | None, ...]


@dataclass
class DiffEnv:
    shards: list[LocalPostgres]
    plain: LocalPostgres
    proxy: RunningProxy
    tables: list[Table]

    def plain_dsn(self, dbname: str = DATABASE) -> str:
        return self.plain.dsn(dbname)

    def shard_dsn(self, index: int) -> str:
        return self.shards[index].dsn(DATABASE)


def raw_rows(conn: psycopg.Connection[Any], sql: str) -> list[Raw]:
    """The rows of `sql` exactly as the server sent them (text format)."""
    with conn.cursor() as cur:
        cur.execute(sql)
        res = cur.pgresult
        assert res is not None
        return [tuple(_text(res.get_value(r, c)) for c in range(res.nfields))
                for r in range(res.ntuples)]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def connect_psycopg(dsn: str) -> psycopg.Connection[Any]:
    """Autocommit, PostgreSQL-style ``$n`` placeholders, never server-side prepared by
    psycopg itself (each statement is sent as written)."""
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, prepare_threshold=None,
                           cursor_factory=psycopg.RawCursor)


def load(conn: psycopg.Connection[Any], tables: Sequence[Table]) -> None:
    with conn.cursor() as cur:
        for table in tables:
            if not table.rows:
                continue
            with cur.copy(table.copy_sql) as copy:
                for row in table.rows:
                    copy.write_row(row)


def create_schema(conn: psycopg.Connection[Any]) -> None:
    for statement in SCHEMA:
        conn.execute(statement)


def _start(pg_factory: PgFactory, name: str) -> LocalPostgres:
    cluster = pg_factory(name, auth="scram-sha-256", superuser_password=SUPERUSER_PASSWORD,
                         settings=CLUSTER_SETTINGS)
    cluster.create_database(DATABASE)
    return cluster


def verify_load(env: DiffEnv) -> None:
    """The shards hold exactly the plain server's data, each row where it belongs."""
    with connect_psycopg(env.plain_dsn()) as plain:
        shard_conns = [connect_psycopg(env.shard_dsn(i)) for i in range(SHARD_COUNT)]
        try:
            for table in env.tables:
                want = Counter(raw_rows(plain, f"SELECT * FROM {table.name}"))
                assert sum(want.values()) == len(table.rows), table.name
                got = {}
                for name, conn in zip(SHARD_NAMES, shard_conns, strict=True):
                    exists = conn.execute("SELECT to_regclass($1) IS NOT NULL",
                                          (table.name,)).fetchone()
                    got[name] = (Counter(raw_rows(conn, f"SELECT * FROM {table.name}"))
                                 if exists and exists[0] else None)
                _verify_table(table, want, got)
            for table in env.tables:
                if table.name in HASH_KEYS and table.rows:
                    _verify_placement(env.plain_dsn(), shard_conns, table.name,
                                      HASH_KEYS[table.name])
        finally:
            for conn in shard_conns:
                conn.close()


def _verify_table(table: Table, want: Counter[Raw], got: dict[str, Counter[Raw] | None]) -> None:
    name = table.name
    if name in REFERENCE:
        for shard, rows in got.items():
            assert rows == want, f"reference table {name} on {shard} differs from the plain data"
        return
    if name in UNLISTED:
        assert got["s0"] == want, f"unlisted table {name} on the default shard s0 differs"
        others = [s for s, rows in got.items() if s != "s0" and rows is not None]
        assert others == [], f"unlisted table {name} exists on {others} (DDL went too far)"
        return
    missing = [s for s, rows in got.items() if rows is None]
    assert missing == [], f"sharded table {name} is missing on {missing}"
    union: Counter[Raw] = Counter()
    for rows in got.values():
        assert rows is not None
        union += rows
    only_shards = list((union - want).elements())[:5]
    only_plain = list((want - union).elements())[:5]
    assert union == want, (f"{name}: the union of the shards differs from the plain data; "
                           f"only on the shards: {only_shards}; only on plain: {only_plain}")
    if len(table.rows) > 100:
        empty = [s for s, rows in got.items() if rows is not None and not rows]
        assert empty == [], f"{name}: no rows at all on {empty}"


def _verify_placement(plain_dsn: str, shard_conns: Sequence[psycopg.Connection[Any]],
                      table: str, key: str) -> None:
    keys_by_shard = {name: [r[0] for r in conn.execute(f"SELECT {key} FROM {table}").fetchall()]
                     for name, conn in zip(SHARD_NAMES, shard_conns, strict=True)}
    distinct = {k for keys in keys_by_shard.values() for k in keys if k is not None}
    with psycopg.connect(plain_dsn, autocommit=True) as conn:  # pg_buckets uses %s
        buckets = pg_buckets(conn, sorted(distinct), "bigint")
    wrong = []
    for shard, keys in keys_by_shard.items():
        for k in keys:
            bucket = 0 if k is None else buckets[k]  # NULL hash keys are in bucket 0
            if owner(bucket, SHARD_NAMES, BUCKETS) != shard:
                wrong.append((k, shard, bucket, owner(bucket, SHARD_NAMES, BUCKETS)))
    assert wrong == [], (f"{len(wrong)} rows of {table} on the wrong shard (key, found on, "
                         f"bucket, owner): {wrong[:10]}")


@pytest.fixture(scope="module")
def diff_env(pg_factory: PgFactory,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffEnv]:
    names = [*(f"diff{i}" for i in range(SHARD_COUNT)), "diffplain"]
    with ThreadPoolExecutor(len(names)) as pool:
        clusters = list(pool.map(lambda n: _start(pg_factory, n), names))
    shards, plain = clusters[:SHARD_COUNT], clusters[SHARD_COUNT]
    plain.create_database(REVERSED_DATABASE)
    topology = base_topology(
        shards, sharding={"buckets": BUCKETS}, tables=TOPOLOGY_TABLES, unparsed="default",
        pool={"mode": "transaction", "size": 6, "connect_timeout": 5, "checkout_timeout": 20,
              "shutdown_timeout": 5})
    workdir: Path = tmp_path_factory.mktemp("differential")
    proxy = start_proxy(workdir, topology, name="diffproxy")
    tables = generate()
    env = DiffEnv(shards, plain, proxy, tables)
    try:
        with connect_psycopg(proxy.dsn()) as conn:
            create_schema(conn)
            load(conn, tables)
        with connect_psycopg(env.plain_dsn()) as conn:
            create_schema(conn)
            load(conn, tables)
            conn.execute("ANALYZE")
        with connect_psycopg(env.plain_dsn(REVERSED_DATABASE)) as conn:
            create_schema(conn)
            load(conn, reversed_tables(tables))
            conn.execute("ANALYZE")
        for i in range(SHARD_COUNT):
            with connect_psycopg(env.shard_dsn(i)) as conn:
                conn.execute("ANALYZE")
        verify_load(env)
        yield env
    finally:
        proxy.stop(signal.SIGTERM, timeout=10)
        for cluster in clusters:  # free them now, not at the end of the whole suite
            cluster.destroy()


# ---------------------------------------------------------------------- client connections


class PsycopgClients:
    """psycopg connections to the plain server and the proxy (text format)."""

    def __init__(self, env: DiffEnv) -> None:
        self.env = env
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    def get(self, side: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(side)
        if conn is None or conn.closed or conn.broken:
            dsn = self.env.proxy.dsn() if side == "proxy" else self.env.plain_dsn(
                REVERSED_DATABASE if side == "plain_rev" else DATABASE)
            conn = self._conns[side] = connect_psycopg(dsn)
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()


class AsyncpgClients:
    """asyncpg connections to the plain server and the proxy (binary format)."""

    def __init__(self, env: DiffEnv) -> None:
        self.env = env
        self._conns: dict[str, asyncpg.Connection] = {}

    async def get(self, side: str) -> asyncpg.Connection:
        conn = self._conns.get(side)
        if conn is None or conn.is_closed():
            url = self.env.proxy.url() if side == "proxy" else self.env.plain_dsn()
            conn = self._conns[side] = await asyncpg.connect(url, timeout=10)
        return conn

    async def close(self) -> None:
        for conn in self._conns.values():
            if not conn.is_closed():
                await conn.close(timeout=10)


@pytest.fixture(scope="module")
def psy(diff_env: DiffEnv) -> Iterator[PsycopgClients]:
    clients = PsycopgClients(diff_env)
    yield clients
    clients.close()


@pytest.fixture(scope="module")
async def apg(diff_env: DiffEnv) -> AsyncIterator[AsyncpgClients]:
    clients = AsyncpgClients(diff_env)
    yield clients
    await clients.close()
