"""Session pooling: a client keeps one server connection, so session-scoped features work;
when it leaves, the connection is reset before the next client gets it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.integration.conftest import ProxyFactory, RunningProxy, pooled_proxy

T = "client_session_t"


@pytest.fixture(scope="module")
def session_proxy(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with pooled_proxy(proxy_factory, mode="session") as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def table(direct_dsn: str) -> None:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {T}")
        conn.execute(f"CREATE TABLE {T} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {T} SELECT g, 'v' || g FROM generate_series(1, 100) g")


def connect(p: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(), autocommit=True, **kw)


class SqlLevel:
    """Runs SQL-level statements as simple queries (prepare=False) or prepared (True)."""

    def __init__(self, conn: psycopg.Connection[Any], prepare: bool) -> None:
        self.conn, self.prepare = conn, prepare

    def execute(self, query: str) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, prepare=self.prepare)


def pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_session_features_work_and_are_reset(session_proxy: RunningProxy) -> None:
    holder = connect(session_proxy)  # keeps the other server connection busy
    try:
        pid(holder)
        with connect(session_proxy) as a:
            server_pid = pid(a)
            a.execute("CREATE TEMP TABLE client_session_tmp (x int)")
            a.execute("INSERT INTO client_session_tmp SELECT generate_series(1, 5)")
            with a.transaction():
                a.execute("INSERT INTO client_session_tmp VALUES (6)")
            assert a.execute("SELECT sum(x) FROM client_session_tmp").fetchone() == (21,)
            # SQL-level prepared statements
            a.execute("PREPARE client_session_p (int) AS "
                      f"SELECT v FROM {T} WHERE id = $1")
            assert a.execute("EXECUTE client_session_p (7)").fetchone() == ("v7",)
            assert a.execute("SELECT name FROM pg_prepared_statements "
                             "WHERE name = 'client_session_p'").fetchone() \
                == ("client_session_p",)
            # session settings, advisory lock, LISTEN, a WITH HOLD cursor
            a.execute("SET search_path TO pg_catalog")
            a.execute("SET application_name TO 'session client'")
            assert a.execute("SELECT pg_advisory_lock(424242)").fetchone() == ("",)
            a.execute("LISTEN client_session_chan")
            a.execute(f"DECLARE held CURSOR WITH HOLD FOR SELECT id FROM public.{T} "
                      "ORDER BY id")
            assert a.execute("FETCH 3 FROM held").fetchall() == [(1,), (2,), (3,)]
            assert a.execute("FETCH 2 FROM held").fetchall() == [(4,), (5,)]
            # the lock is held: another session cannot take it
            assert holder.execute("SELECT pg_try_advisory_lock(424242)").fetchone() \
                == (False,)
        # a's server connection is reset (DISCARD ALL) and handed to the next client
        with connect(session_proxy) as b:
            assert pid(b) == server_pid  # the same server connection
            with pytest.raises(errors.UndefinedTable):
                b.execute("SELECT * FROM client_session_tmp")
            with pytest.raises(errors.InvalidSqlStatementName):
                b.execute("EXECUTE client_session_p (7)")
            with pytest.raises(errors.InvalidCursorName):
                b.execute("FETCH 1 FROM held")
            assert b.execute("SELECT current_setting('search_path'), "
                             "current_setting('application_name')").fetchone() \
                == ('"$user", public', "")
            assert b.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
            # the advisory lock went with the session
            assert holder.execute("SELECT pg_try_advisory_lock(424242)").fetchone() == (True,)
            assert holder.execute("SELECT pg_advisory_unlock(424242)").fetchone() == (True,)
    finally:
        holder.close()


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_sql_prepare_execute_deallocate(session_proxy: RunningProxy, direct_dsn: str,
                                        prepare: bool) -> None:
    """PREPARE / EXECUTE / DEALLOCATE behave as in Postgres (sent as simple queries, or as
    protocol-level prepared statements), next to protocol-level statements (which shardwire
    renames) on the same connection."""
    results = []
    for dsn in (session_proxy.dsn(), direct_dsn):
        got: list[Any] = []
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as pconn:
            conn = SqlLevel(pconn, prepare)
            conn.execute(f"PREPARE p1 AS SELECT count(*) FROM {T}")
            conn.execute("PREPARE p2 (int, text) AS SELECT $1 * 2, $2 || '!'")
            got.append(conn.execute("EXECUTE p1").fetchone())
            got.append(conn.execute("EXECUTE p2 (21, 'hi')").fetchone())
            got.append(pconn.execute("SELECT %s::int + 1", (1,)).fetchone())  # protocol-level
            got.append(conn.execute("SELECT name, statement FROM pg_prepared_statements "
                                    "WHERE name IN ('p1', 'p2') ORDER BY name").fetchall())
            conn.execute("DEALLOCATE p1")
            try:
                conn.execute("EXECUTE p1")
            except psycopg.Error as exc:
                got.append(exc.sqlstate)
            got.append(conn.execute("EXECUTE p2 (1, 'a')").fetchone())
            conn.execute("DEALLOCATE ALL")
            try:
                conn.execute("EXECUTE p2 (1, 'a')")
            except psycopg.Error as exc:
                got.append(exc.sqlstate)
            got.append(conn.execute("SELECT count(*) FROM pg_prepared_statements "
                                    "WHERE name IN ('p1', 'p2')").fetchone())
            # psycopg's own statements still work after DEALLOCATE ALL
            got.append(pconn.execute("SELECT %s::int + 1", (2,)).fetchone())
            try:
                conn.execute("PREPARE p2 AS SELECT 1")
                conn.execute("PREPARE p2 AS SELECT 2")
            except psycopg.Error as exc:
                got.append(exc.sqlstate)
        results.append(got)
    assert results[0] == results[1]
    assert results[0][4] == "26000" and results[0][6] == "26000"


def test_listen_notify(session_proxy: RunningProxy, direct_dsn: str) -> None:
    with connect(session_proxy) as listener:
        listener.execute("LISTEN client_session_events")
        listener.execute('LISTEN "Client Session Quoted"')
        # notifications from a client going direct, and from one through the proxy
        with psycopg.connect(direct_dsn, autocommit=True) as other:
            other.execute("NOTIFY client_session_events, 'direct'")
        with connect(session_proxy) as other:
            other.execute("SELECT pg_notify('client_session_events', 'via proxy')")
            other.execute("""NOTIFY "Client Session Quoted", 'quoted'""")
            other.execute("NOTIFY client_session_ignored, 'nobody listens'")
        got = []
        for note in listener.notifies(timeout=5, stop_after=3):
            got.append((note.channel, note.payload))
        assert got == [("client_session_events", "direct"),
                       ("client_session_events", "via proxy"),
                       ("Client Session Quoted", "quoted")]
        # a notification arriving while the client is idle, then one inside a transaction
        threading.Timer(0.3, lambda: psycopg.connect(direct_dsn, autocommit=True).execute(
            "NOTIFY client_session_events, 'later'").connection.close()).start()
        late = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in late] == [("client_session_events", "later")]
        listener.execute("UNLISTEN *")
        with psycopg.connect(direct_dsn, autocommit=True) as other:
            other.execute("NOTIFY client_session_events, 'after unlisten'")
        time.sleep(0.2)
        assert list(listener.notifies(timeout=0.5)) == []


async def test_asyncpg_listener_and_session_state(session_proxy: RunningProxy) -> None:
    conn = await asyncpg.connect(session_proxy.url())
    sender = await asyncpg.connect(session_proxy.url())
    try:
        received: asyncio.Queue[str] = asyncio.Queue()
        await conn.add_listener("client_session_apg", lambda *args: received.put_nowait(args[3]))
        for i in range(3):
            await sender.execute(f"NOTIFY client_session_apg, 'msg {i}'")
        got = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
        assert got == ["msg 0", "msg 1", "msg 2"]
        await conn.execute("CREATE TEMP TABLE client_session_apg_tmp AS SELECT 1 AS x")
        assert await conn.fetchval("SELECT x FROM client_session_apg_tmp") == 1
        async with conn.transaction():
            await conn.execute("DECLARE c CURSOR FOR SELECT generate_series(1, 10)")
            assert await conn.fetchval("FETCH 1 FROM c") == 1
    finally:
        await conn.close()
        await sender.close()


def test_disconnect_mid_transaction_discards_server(session_proxy: RunningProxy) -> None:
    a = connect(session_proxy)
    server_pid = pid(a)
    a.execute("BEGIN")
    a.execute("CREATE TEMP TABLE client_session_gone (x int)")
    a.close()
    # the next clients never get that (dirty) server connection
    conns = [connect(session_proxy) for _ in range(2)]
    try:
        pids = {pid(c) for c in conns}
        assert server_pid not in pids
        for c in conns:
            with pytest.raises(errors.UndefinedTable):
                c.execute("SELECT * FROM client_session_gone")
    finally:
        for c in conns:
            c.close()
