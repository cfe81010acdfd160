"""Session settings follow the client across pooled server connections, exactly as Postgres.

Each scenario runs step by step on two psycopg connections in lockstep: one through a
transaction-pooling proxy with only 2 server connections, one straight to the shard. Every
step's outcome (rows or SQLSTATE, transaction status, reported parameters) must be equal.
Between steps two "noise" clients with settings of their own take turns holding a server
connection, so the client under test keeps changing server connections, and they check
after every step that nothing of the client under test leaked into their sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.frontend.settings import startup_value_sql
from tests.integration.conftest import ProxyFactory, RunningProxy, pooled_proxy

T = "client_settings_t"
SA, SB, SN = "client_settings_a", "client_settings_b", "client_settings_noise"
PROBE = ("SELECT current_setting('search_path'), current_setting('TimeZone'), "
         "current_setting('application_name'), current_setting('statement_timeout'), "
         "current_setting('work_mem'), current_setting('DateStyle'), "
         # once set on a server connection, a custom setting's placeholder stays there
         # (RESET makes it ''): pooling cannot hide that, so '' counts as unset
         "nullif(current_setting('myapp.tenant', true), ''), current_user::text, "
         f"(SELECT v FROM {T})")
REPORTED = ("TimeZone", "application_name", "DateStyle", "IntervalStyle", "client_encoding")


@pytest.fixture(scope="module")
def small(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with pooled_proxy(proxy_factory, checkout_timeout=5) as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def schemas(direct_dsn: str) -> Iterator[None]:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        for schema in ("public", SA, SB, SN):
            if schema != "public":
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"DROP TABLE IF EXISTS {schema}.{T}")
            conn.execute(f"CREATE TABLE {schema}.{T} (v text)")
            conn.execute(f"INSERT INTO {schema}.{T} VALUES ('{schema}')")
    yield


class Noise:
    """Two clients, one with settings of its own, one with none (so that anything left
    behind on a server connection shows); between steps one of them holds a server."""

    SETTINGS = [
        f"SET search_path TO {SN}", "SET TimeZone TO 'Pacific/Auckland'",
        "SET application_name TO 'noise'", "SET statement_timeout TO 54321",
        "SET work_mem TO '7MB'", "SET DateStyle TO 'SQL, DMY'", "SET myapp.tenant TO 'noise'",
    ]

    def __init__(self, proxy: RunningProxy) -> None:
        self.conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(2)]
        for stmt in self.SETTINGS:
            self.conns[0].execute(stmt)
        self.expected = [self.probe(conn) for conn in self.conns]
        assert self.expected[0] == (SN, "Pacific/Auckland", "noise", "54321ms", "7MB",
                                    "SQL, DMY", "noise", "postgres", SN)
        assert self.expected[1] == ('"$user", public', "Etc/UTC", "", "0", "4MB", "ISO, MDY",
                                    None, "postgres", "public")
        self.reported = [{p: conn.info.parameter_status(p) for p in REPORTED}
                         for conn in self.conns]
        self.turn = 0

    @staticmethod
    def probe(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        row = conn.execute(PROBE).fetchone()
        assert row is not None
        return tuple(row)

    def check(self, k: int) -> None:
        conn = self.conns[k]
        assert self.probe(conn) == self.expected[k], "another client's settings leaked"
        assert {p: conn.info.parameter_status(p) for p in REPORTED} == self.reported[k]

    def before(self) -> None:
        k = self.turn % 2
        self.conns[k].execute("BEGIN")
        self.check(k)

    def after(self) -> None:
        k = self.turn % 2
        self.check(k)
        self.conns[k].execute("COMMIT")
        self.check(1 - k)
        self.turn += 1

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def outcome(conn: psycopg.Connection[Any], stmt: str, extended: bool) -> tuple[Any, ...]:
    try:
        cur = conn.execute(stmt, prepare=True if extended else None)
        result: Any = []
        while True:  # every result of a multi-statement query
            result.append(cur.fetchall() if cur.description else cur.statusmessage)
            if not cur.nextset():
                break
        result = result[0] if len(result) == 1 else tuple(result)
    except psycopg.Error as exc:
        result = ("error", exc.sqlstate)
    status = conn.info.transaction_status.name
    params = tuple(conn.info.parameter_status(p) for p in REPORTED)
    return result, status, params


def run_lockstep(small: RunningProxy, direct_dsn: str, steps: list[str], *,
                 extended: bool = False, **connect_kw: Any) -> list[tuple[Any, ...]]:
    """Run `steps` through the proxy and direct; assert equal outcomes; return them."""
    noise = Noise(small)
    via = psycopg.connect(small.dsn(), autocommit=True, **connect_kw)
    ref = psycopg.connect(direct_dsn, autocommit=True, **connect_kw)
    results = []
    try:
        for n, stmt in enumerate(steps):
            noise.before()
            got = outcome(via, stmt, extended)
            want = outcome(ref, stmt, extended)
            assert got == want, f"step {n}: {stmt!r}"
            results.append(got)
            noise.after()
    finally:
        noise.close()
        via.close()
        ref.close()
    return results


BASIC = [
    PROBE,
    f"SET search_path TO {SA}, public",
    PROBE,
    "SET TimeZone TO 'Asia/Kolkata'",
    "SELECT '2024-01-01 00:00:00+00'::timestamptz::text",
    "SET application_name TO 'main client'",
    "SET statement_timeout TO '300ms'",
    "SET work_mem = '3MB'",
    "SET myapp.tenant = 'tenant-1'",
    "SET DateStyle TO 'German'",
    "SELECT '2024-03-04'::date::text",
    PROBE,
    "SELECT pg_sleep(0.6)",  # statement_timeout applies to this client only
    PROBE,
    # SET LOCAL does not outlive its transaction
    "BEGIN",
    f"SET LOCAL search_path TO {SB}",
    "SET LOCAL TimeZone TO 'UTC'",
    PROBE,
    "COMMIT",
    PROBE,
    # a rolled-back SET is undone
    "BEGIN",
    f"SET search_path TO {SB}",
    "SET TimeZone TO 'Europe/Lisbon'",
    PROBE,
    "ROLLBACK",
    PROBE,
    # a committed one sticks
    "BEGIN",
    f"SET search_path TO {SB}",
    "SET work_mem TO '4MB'",
    "COMMIT",
    PROBE,
    # an error aborts the transaction, and its SETs with it
    "BEGIN",
    f"SET search_path TO {SA}",
    "SELECT 1/0",
    PROBE,
    "ROLLBACK",
    PROBE,
    # COMMIT of a failed transaction is a rollback too
    "BEGIN",
    "SET work_mem TO '9MB'",
    "SELECT 1/0",
    "COMMIT",
    PROBE,
    "RESET search_path",
    "RESET TimeZone",
    PROBE,
    "SET search_path TO DEFAULT",
    "SET statement_timeout TO DEFAULT",
    PROBE,
    "RESET ALL",
    PROBE,
    f"SET search_path TO {SA}",
    "SET myapp.tenant = 'again'",
    "DISCARD ALL",
    PROBE,
]

MULTI = [  # multi-statement simple queries: one implicit transaction
    f"SET search_path TO {SA}; SET work_mem TO '2MB'; SELECT v FROM {T}",
    PROBE,
    f"SET search_path TO {SB}; SELECT 1/0",
    PROBE,
    f"SET search_path TO {SB}; COMMIT; SELECT 1",
    PROBE,
    f"BEGIN; SET search_path TO {SA}; ROLLBACK; SELECT v FROM {T}",
    PROBE,
    "SET TimeZone TO 'America/Denver'; SET LOCAL work_mem TO '8MB'; SELECT 1",
    PROBE,
]

SAVEPOINTS = [
    # a SET before a savepoint survives ROLLBACK TO (psql's ON_ERROR_ROLLBACK does this)
    "BEGIN",
    f"SET search_path TO {SA}",
    "SAVEPOINT s1",
    "SELECT 1/0",
    "ROLLBACK TO SAVEPOINT s1",
    PROBE,
    "COMMIT",
    PROBE,
    # a SET after the savepoint is undone by ROLLBACK TO
    "BEGIN",
    "SAVEPOINT s1",
    f"SET search_path TO {SB}",
    "SET work_mem TO '6MB'",
    "ROLLBACK TO s1",
    PROBE,
    "COMMIT",
    PROBE,
    # RELEASE keeps them; nested savepoints with reused names
    "BEGIN",
    "SAVEPOINT a",
    "SET work_mem TO '5MB'",
    "SAVEPOINT b",
    f"SET search_path TO {SB}",
    "SAVEPOINT a",
    "SET myapp.tenant TO 'inner'",
    "ROLLBACK TO a",
    "RELEASE b",
    PROBE,
    "COMMIT",
    PROBE,
    # psql's ON_ERROR_ROLLBACK pattern, statement by statement
    "BEGIN",
    "SAVEPOINT pg_psql_temporary_savepoint",
    f"SET search_path TO {SA}",
    "RELEASE pg_psql_temporary_savepoint",
    "SAVEPOINT pg_psql_temporary_savepoint",
    "SELECT no_such_column",
    "ROLLBACK TO pg_psql_temporary_savepoint",
    "SAVEPOINT pg_psql_temporary_savepoint",
    "SET TimeZone TO 'Africa/Cairo'",
    "RELEASE pg_psql_temporary_savepoint",
    "COMMIT",
    PROBE,
    # an error then a full ROLLBACK still drops everything
    "BEGIN",
    f"SET search_path TO {SB}",
    "SAVEPOINT x",
    "SELECT 1/0",
    "ROLLBACK",
    PROBE,
    # ROLLBACK AND CHAIN / COMMIT AND CHAIN
    "BEGIN",
    "SET work_mem TO '11MB'",
    "ROLLBACK AND CHAIN",
    "SET myapp.tenant TO 'chained'",
    "COMMIT AND CHAIN",
    "COMMIT",
    PROBE,
]


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_settings_follow_the_client(small: RunningProxy, direct_dsn: str,
                                    extended: bool) -> None:
    results = run_lockstep(small, direct_dsn, BASIC, extended=extended)
    probes = [r[0][0] for r, s in zip(results, BASIC, strict=True) if s == PROBE]
    assert probes[1][0] == f"{SA}, public"
    assert probes[2][:7] == (f"{SA}, public", "Asia/Kolkata", "main client", "300ms", "3MB",
                             "German, DMY", "tenant-1")
    assert results[12][0] == ("error", "57014")  # pg_sleep cancelled by statement_timeout
    assert probes[-1] == probes[0]  # DISCARD ALL: back to the start


def test_multi_statement_settings(small: RunningProxy, direct_dsn: str) -> None:
    results = run_lockstep(small, direct_dsn, MULTI)
    assert results[0][0] == ("SET", "SET", [(SA,)])
    assert results[2][0] == ("error", "22012")


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_settings_with_savepoints(small: RunningProxy, direct_dsn: str,
                                  extended: bool) -> None:
    results = run_lockstep(small, direct_dsn, SAVEPOINTS, extended=extended)
    probes = [r[0][0] for r, s in zip(results, SAVEPOINTS, strict=True) if s == PROBE]
    assert probes[1][0] == SA
    assert probes[3][0] == SA and probes[3][4] == "4MB"


STARTUP = [
    PROBE,
    f"SET search_path TO {SA}",
    "SET application_name TO 'changed'",
    PROBE,
    "RESET search_path",
    "RESET application_name",
    PROBE,
    f"SET search_path TO {SA}",
    "SET statement_timeout TO 1000",
    "RESET ALL",
    PROBE,
    f"SET search_path TO {SA}",
    "DISCARD ALL",
    PROBE,
    "BEGIN",
    "RESET search_path",
    PROBE,
    "ROLLBACK",
    PROBE,
]


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_startup_parameters_and_reset(small: RunningProxy, direct_dsn: str,
                                      extended: bool) -> None:
    """Startup options apply, and RESET returns to them (not to the server's defaults)."""
    results = run_lockstep(
        small, direct_dsn, STARTUP, extended=extended,
        options=f"-c search_path={SB} -c statement_timeout=4242 -c TimeZone=Asia/Tokyo",
        application_name="startup app")
    probes = [r[0][0] for r, s in zip(results, STARTUP, strict=True) if s == PROBE]
    assert probes[0][:4] == (SB, "Asia/Tokyo", "startup app", "4242ms")
    assert all(p == probes[0] for p in probes[2:]), probes


LIST_VALUES = [f"{SA},{SB}", f"{SB},public", f'"$user",{SA}', f'"{SA}",{SB},pg_catalog',
               f"{SA.upper()},{SB}"]


@pytest.mark.parametrize("value", LIST_VALUES)
def test_startup_value_sql_means_what_the_startup_packet_means(direct_dsn: str,
                                                                value: str) -> None:
    """settings.startup_value_sql turns a raw startup value into SET syntax with the same
    meaning (checked against Postgres itself)."""
    with psycopg.connect(direct_dsn, options=f"-c search_path={value}") as conn:
        want = conn.execute("SELECT current_schemas(true)").fetchone()
    with psycopg.connect(direct_dsn) as conn:
        conn.execute(f"SET search_path TO {startup_value_sql('search_path', value)}")
        assert conn.execute("SELECT current_schemas(true)").fetchone() == want


@pytest.mark.parametrize("value", LIST_VALUES)
def test_startup_search_path_list(small: RunningProxy, direct_dsn: str, value: str) -> None:
    """A list-valued startup setting means the same as it does to Postgres."""
    seen = []
    for dsn in (small.dsn(), direct_dsn):
        with psycopg.connect(dsn, options=f"-c search_path={value}") as conn:
            seen.append(conn.execute("SELECT current_schemas(true)").fetchone())
            conn.execute(f"SET search_path TO {SA}")
            conn.execute("RESET search_path")
            seen.append(conn.execute("SELECT current_schemas(true)").fetchone())
    assert seen[:2] == seen[2:]


async def test_asyncpg_server_settings_and_pool_reset(small: RunningProxy,
                                                      direct_dsn: str) -> None:
    """asyncpg's server_settings are startup parameters; its pool runs RESET ALL when a
    connection is released, which in Postgres returns to those startup values."""
    settings = {"search_path": SB, "application_name": "apg",
                "statement_timeout": "4321"}
    pool = await asyncpg.create_pool(small.url(), min_size=1, max_size=3,
                                     server_settings=settings)
    assert pool is not None

    async def job(i: int) -> tuple[Any, ...]:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT (SELECT v FROM {T}), current_setting('search_path'), "
                "current_setting('application_name'), current_setting('statement_timeout')")
            if i % 2:
                await conn.execute(f"SET search_path TO {SA}")
            return tuple(row)  # type: ignore[arg-type]

    try:
        rows = await asyncio.gather(*(job(i) for i in range(30)))
        assert set(rows) == {(SB, SB, "apg", "4321ms")}
    finally:
        await pool.close()


def test_two_clients_never_see_each_others_settings(small: RunningProxy) -> None:
    """Many clients, each with its own settings, interleaving over 2 server connections."""
    conns = []
    for i in range(6):
        schema = (SA, SB, SN)[i % 3]
        conn = psycopg.connect(small.dsn(), autocommit=True,
                               options=f"-c myapp.tenant=t{i}" if i % 2 else "")
        conn.execute(f"SET search_path TO {schema}")
        conn.execute(f"SET TimeZone TO 'Etc/GMT+{i}'")
        conn.execute(f"SET application_name TO 'client {i}'")
        conn.execute(f"SET statement_timeout TO {1100 + i}")
        if i % 2 == 0:
            conn.execute(f"SET myapp.tenant TO 'set{i}'")
        conns.append((conn, schema, i))
    try:
        for rnd in range(5):
            for conn, schema, i in conns:
                prepare = True if rnd % 2 else None
                row = conn.execute(
                    f"SELECT (SELECT v FROM {T}), current_setting('TimeZone'), "
                    "current_setting('application_name'), "
                    "current_setting('statement_timeout'), current_setting('myapp.tenant')",
                    prepare=prepare).fetchone()
                tenant = f"t{i}" if i % 2 else f"set{i}"
                assert row == (schema, f"Etc/GMT+{i}", f"client {i}", f"{1100 + i}ms", tenant)
                assert conn.info.parameter_status("TimeZone") == f"Etc/GMT+{i}"
    finally:
        for conn, _, _ in conns:
            conn.close()
