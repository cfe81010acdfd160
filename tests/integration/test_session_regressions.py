"""Regressions found in review of the session's response accounting (one test per bug)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from proxy.wire import messages as m
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_faults_helpers import RawClient


@pytest.fixture(scope="module")
def single(proxy_factory: ProxyFactory) -> RunningProxy:
    """One server connection: every client shares it, so leftovers show at once."""
    return proxy_factory(pool={"mode": "transaction", "size": 1, "connect_timeout": 3,
                               "checkout_timeout": 3})


@pytest.fixture(scope="module")
def tables(single: RunningProxy) -> Iterator[None]:
    with psycopg.connect(single.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS reg_child, reg_parent")
        conn.execute("CREATE TABLE reg_parent (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE reg_child (pid int REFERENCES reg_parent "
                     "DEFERRABLE INITIALLY DEFERRED)")
    yield
    with psycopg.connect(single.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE reg_child, reg_parent")


def read_until_ready(client: RawClient) -> list[tuple[int, bytes]]:
    frames = []
    while True:
        frame = client.read_message()
        assert frame is not None, "the proxy closed the connection"
        frames.append(frame)
        if frame[0] == m.READY_FOR_QUERY:
            return frames


def test_error_at_sync_gives_the_server_back(single: RunningProxy, tables: None) -> None:
    """A deferred FK violation fails the implicit commit at Sync: ErrorResponse, then
    ReadyForQuery answering the Sync. The client must stay usable and the (only) server
    connection must go back to the pool for others."""
    with psycopg.connect(single.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO reg_child VALUES (%s)", [42])  # extended protocol
        assert conn.execute("SELECT %s::int + 1", [1]).fetchone() == (2,)
        with psycopg.connect(single.dsn(), autocommit=True) as other:
            assert other.execute("SELECT 7").fetchone() == (7,)


def test_unnamed_statement_survives_simple_query(single: RunningProxy) -> None:
    """Postgres drops the unnamed statement on a simple Query; a later Bind to "" must
    still find the client's statement (shardwire re-prepares it)."""
    with RawClient(single.host, single.port) as client:
        client.startup()
        client.send(m.parse_message("", "SELECT $1::int * 2") + m.SYNC_MSG)
        assert [t for t, _ in read_until_ready(client)] == [m.PARSE_COMPLETE,
                                                            m.READY_FOR_QUERY]
        client.send(m.query("SELECT 1"))
        read_until_ready(client)
        bind = m.message(m.BIND, b"\x00\x00" + b"\x00\x00" + b"\x00\x01"
                         + b"\x00\x00\x00\x0221" + b"\x00\x00")
        client.send(bind + m.message(m.EXECUTE, b"\x00\x00\x00\x00\x00") + m.SYNC_MSG)
        frames = read_until_ready(client)
        kinds = [t for t, _ in frames]
        assert m.ERROR_RESPONSE not in kinds, m.decode_fields(
            next(b for t, b in frames if t == m.ERROR_RESPONSE))
        row = next(b for t, b in frames if t == m.DATA_ROW)
        assert row.endswith(b"42")


def test_deallocate_reports_the_status_in_force(single: RunningProxy) -> None:
    """DEALLOCATE answered by shardwire after a pipelined BEGIN must say 'T', not 'I'."""
    with RawClient(single.host, single.port) as client:
        client.startup()
        client.send(m.parse_message("s1", "SELECT 1") + m.SYNC_MSG)
        read_until_ready(client)
        client.send(m.query("BEGIN") + m.query("DEALLOCATE s1"))
        first = read_until_ready(client)
        second = read_until_ready(client)
        assert first[-1] == (m.READY_FOR_QUERY, b"T")
        assert (m.COMMAND_COMPLETE, b"DEALLOCATE\x00") in second
        assert second[-1] == (m.READY_FOR_QUERY, b"T")
        client.send(m.query("ROLLBACK"))
        assert read_until_ready(client)[-1] == (m.READY_FOR_QUERY, b"I")
