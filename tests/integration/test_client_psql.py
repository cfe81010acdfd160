"""psql, unchanged, through shardwire: its output must equal psql's output going direct.

Every check runs the same psql command twice, once through the proxy (transaction pooling)
and once straight to the default shard, and compares stdout/stderr after normalising the
few things that legitimately differ (host/port in connection messages).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import RunningProxy, assert_clean_log

T = "client_psql_t"  # this file's tables (all test files share the shard's `app` database)
PSQL = shutil.which("psql") or "psql"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LC_MESSAGES="C", PGCONNECT_TIMEOUT="10")
    env.update(extra or {})
    return env


def run_psql(dsn: str, *args: str, stdin: str | None = None,
             env: dict[str, str] | None = None, check: bool = True,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PSQL, "-X", "-v", "VERBOSITY=default", *args, "-d", dsn],
        input=stdin, capture_output=True, text=True, timeout=60, env=_env(env), cwd=cwd)
    if check:
        assert result.returncode == 0, f"psql failed ({result.returncode}):\n{result.stderr}"
    return result


def both(proxy: RunningProxy, direct_dsn: str, *args: str, stdin: str | None = None,
         check: bool = True) -> tuple[subprocess.CompletedProcess[str],
                                      subprocess.CompletedProcess[str]]:
    via = run_psql(proxy.dsn(), *args, stdin=stdin, check=check)
    ref = run_psql(direct_dsn, *args, stdin=stdin, check=check)
    return via, ref


@pytest.fixture(scope="module")
def table(direct: LocalPostgres, proxy: RunningProxy) -> Iterator[str]:
    start = len(proxy.log())  # the default proxy is shared with other test files
    direct.psql(f"""
        DROP TABLE IF EXISTS {T}, {T}_copy, {T}_tx CASCADE;
        CREATE TABLE {T} (id int PRIMARY KEY, name text NOT NULL, score numeric(8,2),
                          created date DEFAULT '2024-01-02');
        COMMENT ON TABLE {T} IS 'psql client test table';
        CREATE INDEX {T}_name_idx ON {T} (name);
        INSERT INTO {T} SELECT g, 'name ' || g, g * 1.5 FROM generate_series(1, 50) g;
        CREATE TABLE {T}_copy (id int, name text, note text);
        CREATE TABLE {T}_tx (id int PRIMARY KEY);
        DROP SCHEMA IF EXISTS client_psql_s CASCADE;
        CREATE SCHEMA client_psql_s;
        CREATE TABLE client_psql_s.{T} (v text);
        INSERT INTO client_psql_s.{T} VALUES ('in schema');
    """, dbname="app")
    yield T
    assert_clean_log(proxy, since=start)


def test_plain_queries_equal_direct(proxy: RunningProxy, direct_dsn: str, table: str) -> None:
    sql = (f"SELECT id, name, score, created FROM {table} WHERE id % 7 = 0 ORDER BY id;"
           "SELECT 1 AS one, 'x'::text AS two, NULL::int AS three, now() IS NOT NULL AS ok;")
    via, ref = both(proxy, direct_dsn, "-c", sql)
    assert via.stdout == ref.stdout
    assert "(7 rows)" in via.stdout
    # Aligned, unaligned and expanded output all come from the same result.
    for fmt in (["-A", "-t"], ["-x"], ["--csv"]):
        via, ref = both(proxy, direct_dsn, *fmt, "-c", f"SELECT * FROM {table} ORDER BY id")
        assert via.stdout == ref.stdout
        assert "name 50" in via.stdout


def test_multi_statement_string(proxy: RunningProxy, direct_dsn: str, table: str) -> None:
    via, ref = both(proxy, direct_dsn, "-A", "-t", "-c", "select 1; select 2; select 'three'")
    assert via.stdout == ref.stdout == "1\n2\nthree\n"
    # A failing statement in the middle of a multi-statement string: psql shows the
    # results before it, then the error; the string's implicit transaction rolls back.
    sql = (f"insert into {table}_tx values (1001); select 'before'; select 1/0; "
           f"insert into {table}_tx values (1002)")
    via, ref = both(proxy, direct_dsn, "-A", "-t", "-c", sql, check=False)
    assert via.returncode == ref.returncode == 1
    assert via.stdout == ref.stdout
    assert via.stderr == ref.stderr
    assert "division by zero" in via.stderr
    via = run_psql(proxy.dsn(), "-A", "-t", "-c", f"select count(*) from {table}_tx "
                                                  "where id in (1001, 1002)")
    assert via.stdout == "0\n"


@pytest.mark.parametrize("sql", [
    "SELECT 1 +;",
    "SELECT * FROM client_psql_t WHERE nam = 'x';",  # hint: Perhaps you meant ...
    "SELECT nonexistent_function(1, 'a');",  # hint about casts
    "INSERT INTO client_psql_t (id, name) VALUES (1, 'dup');",  # detail: Key (id)=(1)
    "SELECT 'abc'::int;",
    "SELEC 1;",
])
@pytest.mark.parametrize("verbosity", ["default", "verbose"])
def test_errors_equal_direct(proxy: RunningProxy, direct_dsn: str, table: str, sql: str,
                             verbosity: str) -> None:
    via, ref = both(proxy, direct_dsn, "-v", f"VERBOSITY={verbosity}", "-c", sql, check=False)
    assert via.returncode == ref.returncode == 1
    assert via.stderr.startswith("ERROR:")
    assert via.stderr == ref.stderr
    if verbosity == "verbose":
        assert "LOCATION:" in via.stderr


def test_error_fields_show_detail_hint_position(proxy: RunningProxy, table: str) -> None:
    via = run_psql(proxy.dsn(), "-c", f"SELECT * FROM {table} WHERE nam = 'x';", check=False)
    assert "HINT:  Perhaps you meant to reference the column" in via.stderr
    assert "LINE 1: SELECT * FROM client_psql_t WHERE nam = 'x';" in via.stderr
    via = run_psql(proxy.dsn(), "-c", f"INSERT INTO {table} (id, name) VALUES (1, 'd');",
                   check=False)
    assert "DETAIL:  Key (id)=(1) already exists." in via.stderr
    # A script: later statements still run after an error (no ON_ERROR_STOP).
    via = run_psql(proxy.dsn(), "-A", "-t", "-f", "-",
                   stdin="select 'a';\nselect 1 +;\nselect 'b';\n", check=False)
    assert via.stdout == "a\nb\n"
    assert "psql:<stdin>:2: ERROR:  syntax error at or near \";\"" in via.stderr


@pytest.mark.parametrize("meta", [
    f"\\d {T}", f"\\d+ {T}", f"\\d {T}_name_idx", f"\\dt {T}*", f"\\dt+ {T}", "\\dn",
    "\\l", "\\du postgres", "\\df pg_catalog.lower", "\\dT pg_catalog.int4", "\\conninfo",
])
def test_meta_commands_equal_direct(proxy: RunningProxy, direct_dsn: str, table: str,
                                    meta: str) -> None:
    via, ref = both(proxy, direct_dsn, "-c", meta)
    if meta == "\\conninfo":  # names the host/port/user: the one thing that must differ
        assert 'database "app" as user "app"' in via.stdout
        assert f'port "{proxy.port}"' in via.stdout
        return
    if meta.startswith("\\dt+"):  # the table's size may differ after concurrent writes
        strip = re.compile(r"\| \d+ (?:bytes|kB) +\|")
        assert strip.sub("|", via.stdout) == strip.sub("|", ref.stdout)
    else:
        assert via.stdout == ref.stdout
    assert via.stderr == ref.stderr == ""
    assert via.stdout.strip()


def test_describe_shows_structure(proxy: RunningProxy, table: str) -> None:
    out = run_psql(proxy.dsn(), "-c", f"\\d {table}").stdout
    assert f'Table "public.{table}"' in out
    assert "score   | numeric(8,2)" in out
    assert f'"{table}_pkey" PRIMARY KEY, btree (id)' in out
    assert f'"{table}_name_idx" btree (name)' in out
    out = run_psql(proxy.dsn(), "-c", "\\l").stdout
    assert " app " in out and " postgres " in out and " template1 " in out


def test_copy_from_and_to_file(proxy: RunningProxy, direct: LocalPostgres, table: str,
                               tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    rows = [f'{i},"name, with comma {i}","line1\nline2 ""quoted"" {i}"' for i in range(2000)]
    src.write_text("id,name,note\n" + "\n".join(rows) + "\n")
    direct.psql(f"TRUNCATE {table}_copy", dbname="app")
    out = run_psql(proxy.dsn(), "-c",
                   f"\\copy {table}_copy from '{src}' with (format csv, header true)")
    assert out.stdout.strip() == "COPY 2000"
    assert direct.psql(f"select count(*), count(distinct note) from {table}_copy",
                       dbname="app").strip() == "2000|2000"
    # and back out, through the proxy and direct: same bytes, and the same as the input
    via_file, ref_file = tmp_path / "via.csv", tmp_path / "ref.csv"
    for dsn, path in ((proxy.dsn(), via_file), (direct_dsn_of(direct), ref_file)):
        out = run_psql(dsn, "-c", f"\\copy (select * from {table}_copy order by id) "
                                  f"to '{path}' with (format csv, header true)")
        assert out.stdout.strip() == "COPY 2000"
    assert via_file.read_bytes() == ref_file.read_bytes() == src.read_bytes()
    # COPY ... FROM STDIN through psql's own stdin, and a COPY that fails half way.
    data = "".join(f"{5000 + i}\tt{i}\t\\N\n" for i in range(100))
    out = run_psql(proxy.dsn(), "-c", f"\\copy {table}_copy from stdin", stdin=data)
    assert out.stdout.strip() == "COPY 100"
    bad = "9000\tok\t\\N\nnot-a-number\tx\t\\N\n"
    out = run_psql(proxy.dsn(), "-c", f"\\copy {table}_copy from stdin", stdin=bad,
                   check=False)
    assert out.returncode == 1
    assert 'invalid input syntax for type integer: "not-a-number"' in out.stderr
    assert "CONTEXT:  COPY client_psql_t_copy, line 2, column id" in out.stderr
    out = run_psql(proxy.dsn(), "-A", "-t", "-c",
                   f"select count(*) from {table}_copy; select count(*) from {table}_copy "
                   "where id = 9000")
    assert out.stdout == "2100\n0\n"


def direct_dsn_of(direct: LocalPostgres) -> str:
    return (f"host={direct.host} port={direct.port} user=postgres password=postgres "
            "dbname=app")


def test_transactions_and_on_error_rollback(proxy: RunningProxy, direct_dsn: str,
                                            table: str) -> None:
    script = f"""
\\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO {table}_tx VALUES (1);
INSERT INTO {table}_tx VALUES (1);
INSERT INTO {table}_tx VALUES (2);
SELECT 1/0;
INSERT INTO {table}_tx VALUES (3);
COMMIT;
SELECT array_agg(id ORDER BY id) FROM {table}_tx WHERE id < 100;
BEGIN;
INSERT INTO {table}_tx VALUES (4);
ROLLBACK;
\\set ON_ERROR_ROLLBACK off
BEGIN;
INSERT INTO {table}_tx VALUES (5);
SELECT 1/0;
INSERT INTO {table}_tx VALUES (6);
COMMIT;
SELECT array_agg(id ORDER BY id) FROM {table}_tx WHERE id < 100;
DELETE FROM {table}_tx WHERE id < 100;
"""
    outputs = []
    for dsn in (proxy.dsn(), direct_dsn):
        result = run_psql(dsn, "-A", "-t", "-f", "-", stdin=script, check=False)
        outputs.append(result)
    via, ref = outputs
    assert via.stdout == ref.stdout
    assert via.stderr.replace(proxy.dsn(), "") == ref.stderr
    assert "{1,2,3}" in via.stdout
    assert "current transaction is aborted, commands ignored until end of transaction block" \
        in via.stderr
    assert "ROLLBACK" in via.stdout  # COMMIT of the failed transaction reports ROLLBACK


def test_set_variables_and_gset(proxy: RunningProxy, direct_dsn: str, table: str) -> None:
    script = f"""
\\set lim 3
\\set who 'name 2'
SELECT id FROM {table} WHERE id <= :lim ORDER BY id;
SELECT id FROM {table} WHERE name = :'who';
SELECT count(*) AS n, max(id) AS top FROM {table} \\gset
\\echo :n :top
SELECT :top - :n AS diff;
\\if :{{?n}}
\\echo non-empty
\\endif
SELECT :'who' AS quoted, :"who" IS NULL AS ident_error;
"""
    via = run_psql(proxy.dsn(), "-A", "-t", "-f", "-", stdin=script, check=False)
    ref = run_psql(direct_dsn, "-A", "-t", "-f", "-", stdin=script, check=False)
    assert via.stdout == ref.stdout
    assert via.stderr == ref.stderr
    assert via.stdout.startswith("1\n2\n3\n2\n50 50\n0\nnon-empty\n")
    assert 'column "name 2" does not exist' in via.stderr


def test_session_state_in_psql(proxy: RunningProxy, direct_dsn: str, table: str) -> None:
    """A psql session's SETs follow it from transaction to transaction."""
    script = f"""
SET search_path TO client_psql_s, public;
SET TimeZone TO 'Asia/Tokyo';
SET application_name TO 'psql-test';
SELECT v FROM {table};
SHOW search_path;
SHOW TimeZone;
SELECT current_setting('application_name');
\\set ON_ERROR_ROLLBACK on
BEGIN;
SET search_path TO public;
SELECT 1/0;
COMMIT;
SELECT count(*) FROM {table};
SHOW search_path;
RESET search_path;
SHOW search_path;
"""
    via = run_psql(proxy.dsn(), "-q", "-A", "-t", "-f", "-", stdin=script, check=False)
    ref = run_psql(direct_dsn, "-q", "-A", "-t", "-f", "-", stdin=script, check=False)
    assert via.stderr == ref.stderr
    assert via.stdout == ref.stdout
    assert via.stdout.split("\n")[:4] == ["in schema", "client_psql_s, public", "Asia/Tokyo",
                                          "psql-test"]
    assert via.stdout.split("\n")[4:7] == ["50", "public", '"$user", public']
