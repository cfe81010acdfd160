"""COPY through shardwire: COPY FROM STDIN into a sharded table splits the rows by shard key
(text and CSV, with and without HEADER, with and without a column list, from psycopg and
psql), into a reference table copies them to every shard, and COPY TO STDOUT from a sharded
table returns the rows of every shard. Placement is checked on the shards directly against
Postgres' own hash partitioning (test_routing_helpers).
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.test_routing_helpers import (
    assert_hash_placement,
    assert_on_every_shard,
    direct,
    owner,
    pg_buckets,
    routed_proxy,
    rows_by_shard,
    run_psql,
    run_psql_bytes,
    via,
)

T_TEXT = "rt_copy_text"  # COPY ... FROM STDIN, no column list (psycopg write_row)
T_TEXT_COLS = "rt_copy_text_cols"  # text format, column list with the key in the middle
T_CSV_HEADER = "rt_copy_csv_header"  # CSV, HEADER, column list with the key last
T_CSV_PSQL = "rt_copy_csv_psql"  # CSV, no header, no column list, from psql
T_CODES = "rt_copy_codes"  # a text shard key
T_BINARY = "rt_copy_binary"
T_OUT = "rt_copy_out"
T_REF = "rt_copy_ref"
SHARDED = (T_TEXT, T_TEXT_COLS, T_CSV_HEADER, T_CSV_PSQL, T_BINARY, T_OUT)
TABLES: dict[str, Any] = {t: {"shard_key": "id"} for t in SHARDED}
TABLES[T_CODES] = {"shard_key": "code"}
TABLES[T_REF] = {"reference": True}
# Multi-line values, tabs, quotes, commas, backslashes and unicode: the splitter must keep
# every row whole however the format escapes it.
NASTY = ["plain", "tab\there", "new\nline", 'quote " and , comma', "back\\slash", "ünï☃",
         "", "  spaces  ", "\\N literally", "carriage\rreturn", "x" * 2000]


def _keys(n: int, seed: str) -> list[int]:
    rng = random.Random(seed)
    keys = {0, -1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1}
    while len(keys) < n:
        keys.add(rng.randint(-(1 << rng.randint(1, 63)), (1 << rng.randint(1, 63)) - 1))
    return sorted(keys)


def _rows(n: int, seed: str) -> list[tuple[int, str, str]]:
    return [(k, NASTY[i % len(NASTY)], f"note {i}") for i, k in enumerate(_keys(n, seed))]


@pytest.fixture(scope="module")
def routed(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with routed_proxy(proxy_factory, TABLES) as running:
        with via(running) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}")
            for t in SHARDED:
                conn.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text, note text)")
            conn.execute(f"CREATE TABLE {T_CODES} (code text PRIMARY KEY, n int)")
            conn.execute(f"CREATE TABLE {T_REF} (code text PRIMARY KEY, name text)")
        yield running


def check_rows(clusters: list[LocalPostgres], table: str,
               rows: list[tuple[int, str, str]]) -> None:
    """Each row on the shard owning its key, once, and intact."""
    found = assert_hash_placement(clusters, table, "id", "bigint", [r[0] for r in rows])
    assert all(found.values()), f"a shard got no row: {found}"
    stored = rows_by_shard(clusters, f"SELECT id, name, note FROM {table}")
    assert sorted(r for rs in stored.values() for r in rs) == sorted(rows)


def test_copy_text_without_column_list(routed: RunningProxy,
                                       shard_clusters: list[LocalPostgres]) -> None:
    rows = _rows(200, "text")
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_TEXT} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert cur.rowcount == len(rows)
    check_rows(shard_clusters, T_TEXT, rows)


def test_copy_text_with_column_list(routed: RunningProxy,
                                    shard_clusters: list[LocalPostgres]) -> None:
    rows = _rows(150, "text-cols")
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_TEXT_COLS} (note, id, name) FROM STDIN") as copy:
            for k, name, note in rows:
                copy.write_row((note, k, name))
        assert cur.rowcount == len(rows)
    check_rows(shard_clusters, T_TEXT_COLS, rows)


def test_copy_csv_with_header_and_column_list(routed: RunningProxy,
                                              shard_clusters: list[LocalPostgres]) -> None:
    rows = _rows(150, "csv-header")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # a CSV file made on Windows
    writer.writerow(["note", "name", "id"])
    for k, name, note in rows:
        writer.writerow([note, name, k])
    data = buf.getvalue().encode()
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_CSV_HEADER} (note, name, id) FROM STDIN "
                      "(FORMAT csv, HEADER true)") as copy:
            for i in range(0, len(data), 997):  # chunks that cut rows and characters apart
                copy.write(data[i:i + 997])
        assert cur.rowcount == len(rows)
    # CSV has no NULL marker in quoted fields; csv.writer quotes only when needed, so ""
    # (empty name) arrived as an unquoted empty field, which COPY reads as NULL.
    want = [(k, None if name == "" else name, note) for k, name, note in rows]
    check_rows(shard_clusters, T_CSV_HEADER, want)


def test_copy_csv_from_psql_without_header_or_column_list(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    rows = _rows(120, "csv-psql")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).writerows(rows)
    result = run_psql(routed, "-c", f"COPY {T_CSV_PSQL} FROM STDIN (FORMAT csv)",
                      stdin=buf.getvalue() + "\\.\n")
    assert result.stderr == ""
    check_rows(shard_clusters, T_CSV_PSQL, rows)
    # ... and \copy, which psql turns into COPY FROM STDIN too
    more = [(k + 1, "more", "m") for k, _, _ in rows if k < 2**63 - 1 and k + 1 not in
            {r[0] for r in rows}][:40]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(more)
    run_psql(routed, "-c", f"\\copy {T_CSV_PSQL} (id, name, note) from pstdin with csv",
             stdin=buf.getvalue())
    check_rows(shard_clusters, T_CSV_PSQL, rows + more)


def test_copy_into_a_text_keyed_table(routed: RunningProxy,
                                      shard_clusters: list[LocalPostgres]) -> None:
    # no key looks like an integer or a UUID: a COPY field has no type (ROUTING.md)
    codes = ["", "é", "日本語", "🎉", "k-1", "O'Reilly", "tab\tkey", "ключ", "NULLish"]
    codes += [f"code-{i}-ß" for i in range(80)]
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_CODES} (code, n) FROM STDIN") as copy:
            for i, code in enumerate(codes):
                copy.write_row((code, i))
        assert cur.rowcount == len(codes)
    found = assert_hash_placement(shard_clusters, T_CODES, "code", "text", codes)
    assert all(found.values())


def test_copy_into_a_reference_table_reaches_every_shard(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    rows = [(f"c{i:03}", NASTY[i % len(NASTY)]) for i in range(60)]
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_REF} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([("d1", "psql"), ("d2", "psql, too")])
    run_psql(routed, "-c", f"COPY {T_REF} FROM STDIN (FORMAT csv)", stdin=buf.getvalue())
    want = sorted([*rows, ("d1", "psql"), ("d2", "psql, too")])
    assert_on_every_shard(shard_clusters, T_REF)
    stored = rows_by_shard(shard_clusters, f"SELECT code, name FROM {T_REF} ORDER BY code")
    assert stored == {"s0": want, "s1": want}


def test_copy_to_stdout_returns_every_shards_rows(routed: RunningProxy,
                                                  shard_clusters: list[LocalPostgres]) -> None:
    assert_on_every_shard(shard_clusters, T_OUT)
    rows = _rows(100, "out")
    with direct(shard_clusters[0]) as conn:
        owners = {k: owner(b) for k, b in pg_buckets(conn, [r[0] for r in rows],
                                                     "bigint").items()}
    for name, cluster in zip(("s0", "s1"), shard_clusters, strict=True):
        with direct(cluster) as conn, conn.cursor() as cur:  # placed right, straight
            with cur.copy(f"COPY {T_OUT} FROM STDIN") as copy:
                for row in rows:
                    if owners[row[0]] == name:
                        copy.write_row(row)
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_OUT} TO STDOUT") as copy:
            got = list(copy.rows())
        assert cur.rowcount == len(rows)
    got = [(int(k), name, note) for k, name, note in got]
    assert sorted(got) == sorted(rows)  # every shard's rows, once (order not guaranteed)
    # psql, CSV with a header: one header line however many shards answered
    out = run_psql_bytes(routed, "-c", f"COPY {T_OUT} TO STDOUT (FORMAT csv, HEADER true)")
    lines = list(csv.reader(io.StringIO(out.stdout.decode(), newline="")))
    assert lines[0] == ["id", "name", "note"]
    assert sorted((int(k), n, o) for k, n, o in lines[1:]) \
        == sorted((k, n, o) for k, n, o in rows)
    # a column list
    with via(routed) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {T_OUT} (id) TO STDOUT") as copy:
            ids = sorted(int(r[0]) for r in copy.rows())
    assert ids == sorted(r[0] for r in rows)


def test_binary_copy_into_a_sharded_table_is_refused(
        routed: RunningProxy, shard_clusters: list[LocalPostgres]) -> None:
    """ROUTING.md: binary COPY cannot be split by key -> 0A000, and nothing is written."""
    with via(routed) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg.Error) as info:
            with cur.copy(f"COPY {T_BINARY} (id, name) FROM STDIN (FORMAT binary)") as copy:
                copy.set_types(["int8", "text"])
                for k in _keys(20, "binary"):
                    copy.write_row((k, "b"))
        assert info.value.sqlstate == "0A000", info.value
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_on_every_shard(shard_clusters, T_BINARY)
    counts = rows_by_shard(shard_clusters, f"SELECT count(*) FROM {T_BINARY}")
    assert counts == {"s0": [(0,)], "s1": [(0,)]}
