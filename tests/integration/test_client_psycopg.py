"""psycopg 3, unchanged, through a transaction-pooling shardwire: results equal direct.

Most tests use a proxy with a pool of 2 server connections and several client connections
taking turns, so a client's prepared statements and settings must follow it across server
connections.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from tests.integration.conftest import ProxyFactory, RunningProxy, pooled_proxy

T = "client_psycopg"  # table-name prefix for this file


class Note(NamedTuple):
    severity: str | None
    message_primary: str | None
    message_detail: str | None
    message_hint: str | None


@pytest.fixture(scope="module")
def small(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with pooled_proxy(proxy_factory) as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def tables(direct_dsn: str) -> Iterator[None]:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(f"""
            DROP TABLE IF EXISTS {T}_items, {T}_copy, {T}_tx, {T}_types CASCADE;
            CREATE TABLE {T}_items (id int PRIMARY KEY, name text NOT NULL, price numeric);
            INSERT INTO {T}_items SELECT g, 'item ' || g, g * 0.25 FROM generate_series(1, 500) g;
            CREATE TABLE {T}_copy (id int, t text, b bytea, ts timestamptz, j jsonb,
                                   a int[]);
            CREATE TABLE {T}_tx (id int PRIMARY KEY, who text);
        """)
    yield


def connect(p: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(), **kw)


TYPES_QUERY = """
SELECT 1::int2, 2::int4, 3000000000::int8, 1.5::float4, 2.25::float8,
       123456789012345678901234567890.123456789::numeric, 'NaN'::numeric,
       'text ünicode ☃'::text, 'v'::varchar(3), 'c'::char(2), '\\x00ff10'::bytea,
       true, false, NULL::int,
       '2024-02-29'::date, '12:34:56.789'::time, '2024-02-29 12:34:56.789+05:30'::timestamptz,
       '2024-02-29 12:34:56'::timestamp, '1 year 2 mons 3 days 04:05:06.7'::interval,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '{"k": [1, 2, {"x": null}]}'::jsonb,
       '{"k": 1}'::json, ARRAY[1, 2, NULL, 4]::int[], ARRAY['a', 'b c', NULL]::text[],
       '192.168.1.0/24'::cidr, '10.0.0.1'::inet, int4range(1, 10), 'x'::name, 42::oid
"""


@pytest.mark.parametrize("binary", [False, True])
def test_types_text_and_binary_equal_direct(small: RunningProxy, direct_dsn: str,
                                            binary: bool) -> None:
    with connect(small) as via, psycopg.connect(direct_dsn) as ref:
        got = via.execute(TYPES_QUERY, binary=binary).fetchone()
        want = ref.execute(TYPES_QUERY, binary=binary).fetchone()
        assert got is not None and want is not None
        assert got[6].is_nan() and want[6].is_nan()  # NaN != NaN: compare the rest
        assert got[:6] + got[7:] == want[:6] + want[7:]
        assert got[5] == Decimal("123456789012345678901234567890.123456789")
        # A cursor created binary, with parameters of many types sent back and forth.
        params = (7, 2 ** 40, 1.25, Decimal("-1.000000000000000000001"), "quote ' \" \\",
                  b"\x00\x01\xff", True, None, dt.date(1999, 12, 31),
                  dt.datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
                  dt.timedelta(days=3, seconds=5), uuid.UUID(int=12345), [1, 2, 3],
                  ["x", None], Jsonb({"a": [1, "b"]}))
        query = "SELECT " + ", ".join(["%s"] * 13) + ", %s::text[], %s"
        rows = []
        for conn in (via, ref):
            cur = conn.cursor(binary=binary)
            row = cur.execute(query, params).fetchone()
            assert row is not None
            assert row[:14] == params[:14]
            assert row[14] == {"a": [1, "b"]}
            rows.append(row)
        assert rows[0] == rows[1]
        assert [d.name for d in via.execute(TYPES_QUERY).description] \
            == [d.name for d in ref.execute(TYPES_QUERY).description]


def test_many_rows_and_large_values(small: RunningProxy, direct_dsn: str) -> None:
    q = ("SELECT g, repeat(md5(g::text), 40), g * 1.5 FROM generate_series(1, 20000) g "
         "WHERE g %% %s = 0")
    with connect(small) as via, psycopg.connect(direct_dsn) as ref:
        for binary in (False, True):
            got = via.execute(q, (3,), binary=binary).fetchall()
            assert got == ref.execute(q, (3,), binary=binary).fetchall()
            assert len(got) == 6666
        big = "x" * 5_000_000
        assert via.execute("SELECT length(%s), %s = %s", (big, big, big)).fetchone() \
            == (5_000_000, True)


@pytest.mark.parametrize("threshold", [0, None])
def test_prepared_statements_across_pooled_servers(small: RunningProxy,
                                                   threshold: int | None) -> None:
    """6 clients over 2 server connections, each running the same 4 statements many times
    (prepare_threshold=0: prepared at once; default: prepared after 5 executions)."""
    kw = {} if threshold is None else {"prepare_threshold": threshold}
    conns = [connect(small, autocommit=True, **kw) for _ in range(6)]
    try:
        queries = [
            (f"SELECT name FROM {T}_items WHERE id = %s", lambda i: (f"item {i}",)),
            (f"SELECT count(*) FROM {T}_items WHERE id <= %s", lambda i: (i,)),
            ("SELECT %s::int * 2, %s::text || 'x'", None),
            (f"SELECT price FROM {T}_items WHERE id = %s AND name = %s", None),
        ]
        for rnd, (n, conn) in itertools.product(range(12), enumerate(conns)):
            i = 1 + (rnd * 7 + n * 13) % 500
            assert conn.execute(queries[0][0], (i,)).fetchone() == (f"item {i}",)
            assert conn.execute(queries[1][0], (i,)).fetchone() == (i,)
            assert conn.execute(queries[2][0], (i, str(n))).fetchone() == (2 * i, f"{n}x")
            assert conn.execute(queries[3][0], (i, f"item {i}")).fetchone() \
                == (Decimal(i) * Decimal("0.25"),)
            # and some in explicit transactions, interleaved with the others
            if rnd % 3 == 0:
                with conn.transaction():
                    assert conn.execute(queries[1][0], (i,)).fetchone() == (i,)
                    assert conn.execute(queries[0][0], (i,)).fetchone() == (f"item {i}",)
        for conn in conns:
            prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements "
                                    "WHERE name LIKE '_pg3_%%'").fetchone()
            # psycopg's names never reach the server: shardwire renames them
            assert prepared == (0,)
    finally:
        for conn in conns:
            conn.close()


def test_pipeline_mode_with_error(small: RunningProxy) -> None:
    with connect(small) as conn:
        conn.execute(f"DELETE FROM {T}_tx WHERE id BETWEEN 100 AND 199")
        conn.commit()
    with connect(small, autocommit=True) as conn:
        cur = conn.cursor()
        with conn.pipeline() as p:
            for i in range(100, 120):
                cur.execute(f"INSERT INTO {T}_tx VALUES (%s, %s)", (i, "pipe"))
            cur.execute(f"SELECT count(*) FROM {T}_tx WHERE id BETWEEN 100 AND 199")
            p.sync()
            assert cur.fetchone() == (20,)
        with pytest.raises(errors.DivisionByZero), conn.pipeline() as p:
            cur.execute(f"INSERT INTO {T}_tx VALUES (%s, %s)", (150, "lost"))
            cur.execute("SELECT 1 / %s", (0,))
            cur.execute(f"INSERT INTO {T}_tx VALUES (%s, %s)", (151, "lost"))
        # the failed pipeline's implicit transaction was rolled back as a whole
        assert conn.execute(f"SELECT count(*) FROM {T}_tx WHERE id IN (150, 151)").fetchone() \
            == (0,)
        # and the error does not spill into the next pipeline
        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int", (1,))
            c2 = conn.execute("SELECT %s::text", ("two",))
            assert c1.fetchone() == (1,)
            assert c2.fetchone() == ("two",)
    # the same in a transaction: the error aborts it, later statements are skipped
    with connect(small) as conn:
        cur = conn.cursor()
        with pytest.raises(errors.UniqueViolation), conn.pipeline():
            cur.execute(f"INSERT INTO {T}_tx VALUES (%s, %s)", (160, "tx"))
            cur.execute(f"INSERT INTO {T}_tx VALUES (%s, %s)", (160, "dup"))
            cur.execute(f"INSERT INTO {T}_tx VALUES (%s, %s)", (161, "tx"))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {T}_tx WHERE id IN (160, 161)").fetchone() \
            == (0,)


def fetch_mid_pipeline(dsn: str) -> list[Any]:
    """Fetch a result mid-pipeline (psycopg sends a flush request, no Sync yet), so the
    server's error arrives before the client's Sync; then go on."""
    out: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.pipeline() as p:
            c1 = conn.execute("SELECT %s::int", (1,))
            c2 = conn.execute("SELECT 1 / %s", (0,))
            for step in (lambda: c2.fetchone(),
                         lambda: conn.execute("SELECT %s::int", (2,)).fetchone()):
                try:
                    out.append(step())
                except psycopg.Error as exc:
                    out.append(type(exc).__name__)
            p.sync()
            out.append(conn.execute("SELECT %s::int", (3,)).fetchone())
        out.append(c1.fetchone())
        out.append(conn.execute("SELECT %s::text", ("after",)).fetchone())
        out.append(conn.info.transaction_status.name)
    return out


def test_pipeline_error_before_sync(small: RunningProxy, direct_dsn: str) -> None:
    got = fetch_mid_pipeline(small.dsn())
    assert got == fetch_mid_pipeline(direct_dsn)
    assert got[0] == "DivisionByZero"
    assert got[-2:] == [("after",), "IDLE"]


def test_pipeline_many_statements_prepared(small: RunningProxy) -> None:
    with connect(small, autocommit=True, prepare_threshold=0) as conn:
        for _ in range(3):
            with conn.pipeline():
                curs = [conn.execute(f"SELECT name FROM {T}_items WHERE id = %s", (i,))
                        for i in range(1, 200)]
                curs += [conn.execute("SELECT %s::int + 1", (i,)) for i in range(50)]
            assert [c.fetchone() for c in curs[:199]] == [(f"item {i}",) for i in range(1, 200)]
            assert [c.fetchone() for c in curs[199:]] == [(i + 1,) for i in range(50)]


def test_server_side_cursor(small: RunningProxy, direct_dsn: str) -> None:
    q = f"SELECT id, name FROM {T}_items WHERE id <= %s ORDER BY id"
    with psycopg.connect(direct_dsn) as ref:
        want = ref.execute(q, (321,)).fetchall()
    with connect(small) as conn:
        with conn.cursor(name="client_cur") as cur:
            cur.itersize = 7
            cur.execute(q, (321,))
            first = cur.fetchmany(5)
            rest = list(cur)
        assert first + rest == want
        with conn.cursor(name="client_cur2", scrollable=True) as cur:
            cur.execute(q, (321,))
            cur.scroll(300)
            assert cur.fetchone() == want[300]
            cur.scroll(0, mode="absolute")
            assert cur.fetchone() == want[0]
        conn.commit()
        # a server-side cursor WITH HOLD outlives the transaction: not in transaction mode
        with pytest.raises(errors.FeatureNotSupported) as info:
            with conn.cursor(name="held", withhold=True) as cur:
                cur.execute(q, (5,))
        assert info.value.sqlstate == "0A000"
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_text_and_binary(small: RunningProxy, direct_dsn: str) -> None:
    rows = [(i, f"text {i}\twith\ttabs\nand newline \\ backslash", bytes([i % 256]) * 3,
             dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i),
             Jsonb({"i": i}), [i, i + 1]) for i in range(3000)]
    cols = "(id, t, b, ts, j, a)"
    with connect(small) as conn:
        conn.execute(f"TRUNCATE {T}_copy")
        with conn.cursor().copy(f"COPY {T}_copy {cols} FROM STDIN") as copy:
            for row in rows[:1500]:
                copy.write_row(row)
        with conn.cursor().copy(f"COPY {T}_copy {cols} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea", "timestamptz", "jsonb", "int4[]"])
            for row in rows[1500:]:
                copy.write_row(row)
        conn.commit()
        # raw text out, through the proxy and direct: identical bytes
        outs = []
        with psycopg.connect(direct_dsn) as ref:
            for c in (conn, ref):
                with c.cursor().copy(f"COPY (SELECT * FROM {T}_copy ORDER BY id) "
                                     "TO STDOUT") as cp:
                    outs.append(b"".join(bytes(b) for b in cp))
        out, ref_out = outs
        assert out == ref_out
        assert out.count(b"\n") == 3000
        with conn.cursor().copy(f"COPY (SELECT * FROM {T}_copy ORDER BY id) TO STDOUT "
                                "(FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea", "timestamptz", "jsonb", "int4[]"])
            got = list(copy.rows())
        assert got == [(r[0], r[1], r[2], r[3], r[4].obj, r[5]) for r in rows]
        # a COPY that fails half way (bad data, then a client-side exception)
        with pytest.raises(errors.InvalidTextRepresentation):
            with conn.cursor().copy(f"COPY {T}_copy (id) FROM STDIN") as copy:
                copy.write(b"1\n2\nnot-int\n3\n")
        conn.rollback()
        # psycopg sends CopyFail and re-raises; the server aborts the transaction
        with pytest.raises(RuntimeError, match="client gave up"):
            with conn.cursor().copy(f"COPY {T}_copy (id) FROM STDIN") as copy:
                copy.write_row((1,))
                raise RuntimeError("client gave up")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {T}_copy").fetchone() == (3000,)


def test_transactions(small: RunningProxy) -> None:
    with connect(small) as a, connect(small) as b:
        a.execute(f"DELETE FROM {T}_tx WHERE id < 100")
        a.commit()
        a.execute(f"INSERT INTO {T}_tx VALUES (1, 'a')")
        # not visible to b before commit, while b runs on the other server connection
        assert b.execute(f"SELECT count(*) FROM {T}_tx WHERE id = 1").fetchone() == (0,)
        b.commit()
        a.commit()
        assert b.execute(f"SELECT who FROM {T}_tx WHERE id = 1").fetchone() == ("a",)
        b.commit()
        a.execute(f"INSERT INTO {T}_tx VALUES (2, 'a')")
        a.rollback()
        with a.transaction():
            a.execute(f"INSERT INTO {T}_tx VALUES (3, 'a')")
            with pytest.raises(errors.UniqueViolation), a.transaction():  # a savepoint
                a.execute(f"INSERT INTO {T}_tx VALUES (3, 'again')")
            a.execute(f"INSERT INTO {T}_tx VALUES (4, 'a')")
        assert a.execute(f"SELECT array_agg(id ORDER BY id) FROM {T}_tx WHERE id < 100") \
            .fetchone() == ([1, 3, 4],)
        a.commit()
        # an error aborts the transaction: 25P02 until rollback
        a.execute(f"INSERT INTO {T}_tx VALUES (5, 'a')")
        with pytest.raises(errors.DivisionByZero):
            a.execute("SELECT 1/0")
        with pytest.raises(errors.InFailedSqlTransaction) as info:
            a.execute("SELECT 1")
        assert info.value.sqlstate == "25P02"
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        a.rollback()
        assert a.execute(f"SELECT count(*) FROM {T}_tx WHERE id = 5").fetchone() == (0,)
        a.rollback()
        # autocommit: each statement its own transaction
        a.autocommit = True
        a.execute(f"INSERT INTO {T}_tx VALUES (6, 'auto')")
        assert b.execute(f"SELECT who FROM {T}_tx WHERE id = 6").fetchone() == ("auto",)
        b.rollback()
        # isolation levels and read-only transactions are per transaction
        a.autocommit = False
        a.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        a.read_only = True
        assert a.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            a.execute(f"INSERT INTO {T}_tx VALUES (7, 'ro')")
        a.rollback()
        assert b.execute("SHOW transaction_isolation").fetchone() == ("read committed",)


def test_listen_rejected_in_transaction_mode(small: RunningProxy) -> None:
    with connect(small, autocommit=True) as conn:
        with pytest.raises(errors.FeatureNotSupported) as info:
            conn.execute("LISTEN client_psycopg_chan")
        assert info.value.sqlstate == "0A000"
        assert info.value.diag.message_primary == \
            "LISTEN is not supported in transaction pooling mode"
        assert info.value.diag.message_hint and "pool.mode: session" in info.value.diag.message_hint
        # the connection is still usable, and NOTIFY (not session-scoped) works
        conn.execute("NOTIFY client_psycopg_chan, 'x'")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # inside a transaction the rejection aborts it, as a Postgres error would
        conn.autocommit = False
        conn.execute("SELECT 1")
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute("LISTEN client_psycopg_chan")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_listen_rejection_does_not_hold_a_server(proxy_factory: ProxyFactory) -> None:
    """A client whose only statement was refused must not keep a server connection."""
    tiny = proxy_factory(pool={"mode": "transaction", "size": 1, "connect_timeout": 3,
                               "checkout_timeout": 2, "shutdown_timeout": 5})
    with connect(tiny, autocommit=True) as a, connect(tiny, autocommit=True) as b:
        with pytest.raises(errors.FeatureNotSupported):
            a.execute("LISTEN client_psycopg_chan")
        with pytest.raises(errors.FeatureNotSupported):
            a.execute("PREPARE client_psycopg_p AS SELECT 1")
        # a stays connected and idle; b must get the only server connection
        assert b.execute("SELECT 42").fetchone() == (42,)
        assert a.execute("SELECT 43").fetchone() == (43,)


def test_notices_reach_the_client(small: RunningProxy) -> None:
    with connect(small, autocommit=True) as conn:
        notices: list[Note] = []
        # a Diagnostic is only valid inside the handler: copy what we check
        conn.add_notice_handler(lambda d: notices.append(Note(
            d.severity, d.message_primary, d.message_detail, d.message_hint)))
        conn.execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; "
                     "RAISE WARNING 'careful' USING DETAIL = 'some detail', HINT = 'a hint'; "
                     "END$$")
        assert [(n.severity, n.message_primary) for n in notices] == [
            ("NOTICE", "hello 42"), ("WARNING", "careful")]
        assert notices[1].message_detail == "some detail"
        assert notices[1].message_hint == "a hint"
        # notices from a prepared, extended-protocol statement too
        notices.clear()
        for _ in range(3):
            conn.execute(f"DROP TABLE IF EXISTS {T}_does_not_exist", prepare=True)
        assert [n.message_primary for n in notices] == [
            f'table "{T}_does_not_exist" does not exist, skipping'] * 3


ERRORS = [
    ("SELECT 1 +", None),
    (f"SELECT nam FROM {T}_items", None),
    (f"INSERT INTO {T}_items (id, name) VALUES (1, 'dup')", None),
    (f"INSERT INTO {T}_items (id, name) VALUES (%s, %s)", (2, None)),
    ("SELECT %s::int", ("abc",)),
    ("SELECT lower(1, 2, 3)", None),
]


@pytest.mark.parametrize(("query", "params"), ERRORS)
def test_error_fields_equal_direct(small: RunningProxy, direct_dsn: str, query: str,
                                   params: tuple[Any, ...] | None) -> None:
    diags = []
    for dsn in (small.dsn(), direct_dsn):
        with psycopg.connect(dsn) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(query, params)
            d = info.value.diag
            diags.append((type(info.value), d.sqlstate, d.severity, d.message_primary,
                          d.message_detail, d.message_hint, d.statement_position,
                          d.context, d.schema_name, d.table_name, d.column_name,
                          d.constraint_name, d.source_function))
            # the connection works after the error
            conn.rollback()
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert diags[0] == diags[1]
    assert diags[0][1] is not None


def test_deallocate_eviction(small: RunningProxy) -> None:
    """psycopg evicts statements beyond prepared_max (protocol Close or DEALLOCATE)."""
    with connect(small, autocommit=True) as conn, connect(small, autocommit=True) as other:
        conn.prepared_max = 2
        conn.prepare_threshold = 1
        stmts = [f"SELECT %s::int + {k}" for k in range(5)]
        for rnd in range(4):
            for k, q in enumerate(stmts):
                for i in range(3):
                    assert conn.execute(q, (rnd * 10 + i,)).fetchone() == (rnd * 10 + i + k,)
                    # interleave another client so servers change hands
                    assert other.execute("SELECT %s::text", (f"{k}",)).fetchone() == (f"{k}",)
        # explicit DEALLOCATE ALL (what psycopg sends on some schema changes) and reuse
        conn.execute("DEALLOCATE ALL")
        for k, q in enumerate(stmts):
            for i in range(3):
                assert conn.execute(q, (i,)).fetchone() == (i + k,)
        # DEALLOCATE of an unknown name: Postgres' own error
        with pytest.raises(errors.InvalidSqlStatementName):
            conn.execute("DEALLOCATE no_such_statement")
        # explicit prepare=True / prepare=False
        assert conn.execute("SELECT %s::int * 3", (5,), prepare=True).fetchone() == (15,)
        assert conn.execute("SELECT %s::int * 3", (6,), prepare=False).fetchone() == (18,)


def test_statement_invalidated_by_ddl(small: RunningProxy) -> None:
    """A prepared statement whose table changes under it: Postgres replans or reports
    'cached plan must not change result type', and psycopg recovers."""
    with connect(small, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {T}_ddl")
        conn.execute(f"CREATE TABLE {T}_ddl (a int)")
        conn.execute(f"INSERT INTO {T}_ddl VALUES (1)")
        q = f"SELECT * FROM {T}_ddl WHERE a > %s"
        assert conn.execute(q, (0,)).fetchall() == [(1,)]
        conn.execute(f"ALTER TABLE {T}_ddl ADD COLUMN b text DEFAULT 'x'")
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute(q, (0,))
        conn.execute("DEALLOCATE ALL")
        assert conn.execute(q, (0,)).fetchall() == [(1, "x")]
        conn.execute(f"DROP TABLE {T}_ddl")
        with pytest.raises(errors.UndefinedTable):
            conn.execute(q, (0,))


def test_sql_composition_and_executemany(small: RunningProxy) -> None:
    with connect(small) as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM {T}_tx WHERE id >= 1000")
        cur.executemany(f"INSERT INTO {T}_tx VALUES (%s, %s)",
                        [(1000 + i, f"many {i}") for i in range(300)])
        cur.executemany(f"INSERT INTO {T}_tx VALUES (%s, %s) RETURNING id",
                        [(2000 + i, "ret") for i in range(10)], returning=True)
        ids = []
        while True:
            ids.append(cur.fetchone()[0])  # type: ignore[index]
            if not cur.nextset():
                break
        assert ids == list(range(2000, 2010))
        conn.commit()
        q = sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s").format(
            sql.Identifier(f"{T}_tx"), sql.Identifier("id"))
        assert conn.execute(q, (1000,)).fetchone() == (310,)
        conn.execute(f"DELETE FROM {T}_tx WHERE id >= 1000")
        conn.commit()
