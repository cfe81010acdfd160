"""Unit tests for proxy.frontend.settings: SET/RESET tracking, sync SQL, startup options,
and detection of session-scoped features."""

from __future__ import annotations

import pytest

from proxy.frontend.settings import (
    CANONICAL,
    SETTABLE_REPORTED,
    Savepoint,
    SettingChange,
    apply_change,
    parse_savepoint,
    parse_setting,
    parse_tracked,
    quote_literal,
    reset_target,
    session_only_feature,
    startup_settings,
    startup_value_sql,
    sync_sql,
)
from proxy.frontend.statements import split_statements

RESET_ALL = SettingChange("", None, reset_all=True)

# ------------------------------------------------------------------------ parse_setting


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SET search_path TO a, b", SettingChange("search_path", "a, b")),
        ("set search_path = 'x'", SettingChange("search_path", "'x'")),
        ("SET search_path='x'", SettingChange("search_path", "'x'")),
        ("Set Search_Path To public", SettingChange("search_path", "public")),
        ('SET search_path TO "$user", public', SettingChange("search_path", '"$user", public')),
        ("SET search_path TO a,\n  b", SettingChange("search_path", "a,\n  b")),
        ("SET SESSION statement_timeout = 5000", SettingChange("statement_timeout", "5000")),
        ("set session statement_timeout to '5s'", SettingChange("statement_timeout", "'5s'")),
        ("SET work_mem TO '64MB'", SettingChange("work_mem", "'64MB'")),
        ("SET ROLE foo", SettingChange("role", "foo")),
        ("SET SESSION ROLE foo", SettingChange("role", "foo")),
        ('SET ROLE "Mixed Case"', SettingChange("role", '"Mixed Case"')),
        ("SET ROLE NONE", SettingChange("role", "NONE")),
        ("SET x TO DEFAULT", SettingChange("x", None)),
        ("SET x = default", SettingChange("x", None)),
        ("set search_path to default;", SettingChange("search_path", None)),
        ("SET myapp.tenant = '42'", SettingChange("myapp.tenant", "'42'")),
        ("SET MyApp.Tenant TO 7", SettingChange("myapp.tenant", "7")),
        ("SET a$b = 1", SettingChange("a$b", "1")),
        ("SET local_preload_libraries = 'x'", SettingChange("local_preload_libraries", "'x'")),
        ("SET role_x = 1", SettingChange("role_x", "1")),
        ("SET search_path TO 'a;b'", SettingChange("search_path", "'a;b'")),
        # whitespace, newlines, trailing semicolons
        ("   SET search_path TO a", SettingChange("search_path", "a")),
        ("\n\t SET search_path TO a;", SettingChange("search_path", "a")),
        ("SET search_path TO a ;  \n", SettingChange("search_path", "a")),
        ("SET\nsearch_path\nTO\na", SettingChange("search_path", "a")),
        # RESET / DISCARD
        ("RESET ALL", RESET_ALL),
        ("reset all;", RESET_ALL),
        ("  RESET work_mem", SettingChange("work_mem", None)),
        ("RESET myapp.tenant;", SettingChange("myapp.tenant", None)),
        ("RESET ROLE", SettingChange("role", None)),
        ("DISCARD ALL", RESET_ALL),
        ("discard all ;", RESET_ALL),
    ],
)
def test_parse_setting_tracked(sql: str, expected: SettingChange) -> None:
    assert parse_setting(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        # transaction-scoped
        "SET LOCAL work_mem = '1MB'",
        "set local search_path to a",
        "SET  LOCAL work_mem = 1",
        "SET SESSION LOCAL x = 1",
        "SET LOCAL TIME ZONE 'UTC'",
        "SET TRANSACTION READ ONLY",
        # reported parameters (tracked through ParameterStatus instead)
        "SET TIME ZONE 'UTC'",
        "SET TIME ZONE LOCAL",
        "SET SESSION TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE",
        "SET application_name = 'x'",
        "SET APPLICATION_NAME TO 'x'",
        "SET TimeZone = 'UTC'",
        "set timezone to 'UTC'",
        "SET DateStyle TO ISO, MDY",
        "SET intervalstyle = postgres",
        "SET client_encoding TO 'UTF8'",
        "SET standard_conforming_strings = on",
        "SET default_transaction_read_only = on",
        "SET SESSION AUTHORIZATION bob",
        "RESET TimeZone",
        "RESET application_name",
        "RESET SESSION AUTHORIZATION",
        # not SET/RESET statements at all
        "SELECT 'set'",
        "SELECT 'SET search_path TO x'",
        "select set_config('a', 'b', false)",
        "SETTINGS = 1",
        "SETTINGS",
        "settings_table",
        "SET",
        "SET search_path",
        "RESET",
        "RESETALL",
        "DISCARD PLANS",
        "DISCARD TEMP",
        "DISCARDALL",
        "UPDATE t SET x = 1",
        "",
        "   ",
    ],
)
def test_parse_setting_not_tracked(sql: str) -> None:
    assert parse_setting(sql) is None


@pytest.mark.parametrize(
    "sql",
    [
        "/* set schema */ SET search_path TO a",
        "-- switch tenant\nSET search_path TO a",
    ],
)
def test_parse_setting_after_leading_comment(sql: str) -> None:
    assert parse_setting(sql) == SettingChange("search_path", "a")


@pytest.mark.parametrize("sql", ["SET role = foo", "SET ROLE TO foo", "set role to foo"])
def test_parse_setting_role_generic_syntax(sql: str) -> None:
    assert parse_setting(sql) == SettingChange("role", "foo")


def test_parse_setting_trailing_line_comment() -> None:
    assert parse_setting("SET work_mem = '64MB' -- tuning") == SettingChange("work_mem", "'64MB'")


def test_parse_setting_set_schema() -> None:
    assert parse_setting("SET SCHEMA 'tenant_1'") == SettingChange("search_path", "'tenant_1'")


def test_parse_setting_multi_dot_custom_name() -> None:
    assert parse_setting("SET a.b.c = 1") == SettingChange("a.b.c", "1")


@pytest.mark.parametrize(
    "sql",
    [
        "  /* a */ /* b */\n SET search_path TO a",
        "/* outer /* nested */ still comment */ SET search_path TO a",
        "/*/ opens, does not close */ SET search_path TO a",
        "-- one\n-- two\r\n/* three */SET search_path TO a",
        "/**/SET search_path TO a",
        "SET /* c */ search_path /* d */ TO a",
        "SET search_path TO a -- c",
        "SET search_path TO a /* c */;",
        "SET search_path TO a; -- c",
        "SET search_path TO a--c",
    ],
)
def test_parse_setting_comments_are_white_space(sql: str) -> None:
    assert parse_setting(sql) == SettingChange("search_path", "a")


@pytest.mark.parametrize(
    "sql",
    [
        "/* unterminated SET search_path TO a",
        "-- SET search_path TO a",
        "/* SET x = 1 */",
        "/* a /* b */ SET x = 1 */ SELECT 1",
        "SELECT 1 -- SET x = 1",
    ],
)
def test_parse_setting_inside_comment_is_not_tracked(sql: str) -> None:
    assert parse_setting(sql) is None


@pytest.mark.parametrize(
    "sql,value",
    [
        ("SET x = 'a -- b'", "'a -- b'"),
        ("SET x = 'a /* b */' -- c", "'a /* b */'"),
        ("SET x = E'it\\'s -- here' -- gone", "E'it\\'s -- here'"),
        ('SET x = "a--b"', '"a--b"'),
        ("SET x = $$ -- in $$ -- out", "$$ -- in $$"),
        ("SET search_path TO a, -- first\n b", "a,  \n b"),
    ],
)
def test_parse_setting_comment_markers_in_quoted_text_stay(sql: str, value: str) -> None:
    assert parse_setting(sql) == SettingChange(sql.split()[1].lower(), value)


@pytest.mark.parametrize(
    "sql,value",
    [
        ("SET ROLE toby", "toby"),
        ("SET ROLE 'to'", "'to'"),
        ("SET role=foo", "foo"),
        ("SET SESSION role = foo", "foo"),
        ("SET ROLE TO foo -- switch", "foo"),
        ("/* c */ SET ROLE foo;", "foo"),
        ("SET role TO DEFAULT", None),
    ],
)
def test_parse_setting_role_forms(sql: str, value: str | None) -> None:
    assert parse_setting(sql) == SettingChange("role", value)


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SET role_x = 1", SettingChange("role_x", "1")),
        ("SET rolex TO 1", SettingChange("rolex", "1")),
        ("SET role.x = 1", SettingChange("role.x", "1")),
        ("SET session_replication_role = replica",
         SettingChange("session_replication_role", "replica")),
        ("SET SESSION AUTHORIZATION DEFAULT", None),
    ],
)
def test_parse_setting_not_role(sql: str, expected: SettingChange | None) -> None:
    assert parse_setting(sql) == expected


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("set schema 'a'", SettingChange("search_path", "'a'")),
        ("SET SESSION SCHEMA 'a,b'", SettingChange("search_path", "'a,b'")),
        ("SET SCHEMA E'x\\\\y'", SettingChange("search_path", "E'x\\\\y'")),
        ("SET SCHEMA 'x' -- c", SettingChange("search_path", "'x'")),
        ("SET SCHEMA $$x$$", SettingChange("search_path", "$$x$$")),
        # not the SCHEMA form: the generic SET of a parameter named so (Postgres refuses it)
        ("SET schema = 'x'", SettingChange("schema", "'x'")),
        ("SET schema_x = 1", SettingChange("schema_x", "1")),
        ("SET LOCAL SCHEMA 'x'", None),
        ("SET SCHEMA", None),
    ],
)
def test_parse_setting_schema_forms(sql: str, expected: SettingChange | None) -> None:
    assert parse_setting(sql) == expected


def test_parse_setting_xml_option() -> None:
    assert parse_setting("SET XML OPTION DOCUMENT") == SettingChange("xmloption", "DOCUMENT")
    assert parse_setting("set xml option content;") == SettingChange("xmloption", "content")
    assert parse_setting("SET LOCAL XML OPTION DOCUMENT") is None


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SET a.b.c TO 'x'", SettingChange("a.b.c", "'x'")),
        ("SET App.Tenant.Id = 1", SettingChange("app.tenant.id", "1")),
        ("SET a.b.c TO DEFAULT", SettingChange("a.b.c", None)),
        ("RESET a.b.c", SettingChange("a.b.c", None)),
        ("RESET x.y.z;", SettingChange("x.y.z", None)),
        ("SET a..b = 1", None),
        ("SET a.b. = 1", None),
        ("RESET a.b.", None),
    ],
)
def test_parse_setting_dotted_names(sql: str, expected: SettingChange | None) -> None:
    assert parse_setting(sql) == expected


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("RESET work_mem -- c", SettingChange("work_mem", None)),
        ("/* c */ RESET ALL", RESET_ALL),
        ("-- c\nDISCARD ALL -- c", RESET_ALL),
        ("RESET /* c */ work_mem", SettingChange("work_mem", None)),
    ],
)
def test_parse_setting_reset_with_comments(sql: str, expected: SettingChange) -> None:
    assert parse_setting(sql) == expected


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("RESET work_mem", "work_mem"),
        ("RESET a.b.c", "a.b.c"),
        ("RESET ALL", ""),
        ("DISCARD ALL", ""),
        ("RESET TimeZone", "timezone"),
        ("SET TIME ZONE DEFAULT", "timezone"),
        ("SET TIME ZONE LOCAL", "timezone"),
        ("SET application_name TO DEFAULT", "application_name"),
        ("set a.b.c = default;", "a.b.c"),
        ("/* c */ RESET work_mem", "work_mem"),
        ("-- c\n  RESET work_mem -- d", "work_mem"),
        ("/* a /* b */ */ DISCARD ALL", ""),
        ("SET x TO 1", None),
        ("SELECT 1", None),
        ("RESET", None),
        ("-- RESET ALL", None),
        ("", None),
    ],
)
def test_reset_target(sql: str, expected: str | None) -> None:
    assert reset_target(sql) == expected


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SAVEPOINT a", Savepoint("savepoint", "a")),
        ("/* c */ SAVEPOINT a", Savepoint("savepoint", "a")),
        ("-- c\nRELEASE SAVEPOINT a -- d", Savepoint("release", "a")),
        ('ROLLBACK TO /* c */ SAVEPOINT "A";', Savepoint("rollback", "A")),
        ("rollback work to b", Savepoint("rollback", "b")),
        ("ROLLBACK", None),
        ("-- SAVEPOINT a", None),
        ("SELECT 1", None),
    ],
)
def test_parse_savepoint(sql: str, expected: Savepoint | None) -> None:
    assert parse_savepoint(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SET search_path TO a", "/* c */ SET x.y.z = 1 -- d", "RESET ALL", "DISCARD ALL",
        "SAVEPOINT a", "-- c\nROLLBACK TO a", "RELEASE a", "SELECT 1", "  select 1", "",
        "/* x */", "ROLLBACK", "SET LOCAL x = 1", "rollback to savepoint b",
    ],
)
def test_parse_tracked_is_setting_or_savepoint(sql: str) -> None:
    assert parse_tracked(sql) == (parse_setting(sql) or parse_savepoint(sql))


def test_parse_setting_reported_names_are_all_canonicalised() -> None:
    for name in SETTABLE_REPORTED:
        assert CANONICAL[name.lower()] == name
        assert parse_setting(f"SET {name} TO 'x'") is None
        assert parse_setting(f"SET {name.upper()} = 'x'") is None
        assert parse_setting(f"RESET {name.lower()}") is None


# ------------------------------------------------------------------------- apply_change


def test_apply_change() -> None:
    settings: dict[str, str] = {}
    apply_change(settings, SettingChange("search_path", "a"))
    apply_change(settings, SettingChange("work_mem", "'4MB'"))
    assert settings == {"search_path": "a", "work_mem": "'4MB'"}
    apply_change(settings, SettingChange("search_path", "b"))
    apply_change(settings, SettingChange("work_mem", None))
    apply_change(settings, SettingChange("never_set", None))
    assert settings == {"search_path": "b"}
    apply_change(settings, RESET_ALL)
    assert settings == {}


# ----------------------------------------------------------------------------- sync_sql


def statements(sql: str) -> set[str]:
    return set(split_statements(sql))


def test_sync_sql_nothing_to_do() -> None:
    params = {"application_name": "a", "TimeZone": "UTC", "server_version": "16"}
    settings = {"search_path": "a, b"}
    assert sync_sql(params, dict(params), settings, dict(settings)) == ""
    assert sync_sql({}, {}, {}, {}) == ""


def test_sync_sql_reported_difference_is_quoted() -> None:
    sql = sync_sql(
        {"application_name": "app", "TimeZone": "UTC"},
        {"application_name": "other", "TimeZone": "UTC"},
        {},
        {},
    )
    assert sql == "SET application_name TO 'app'"


def test_sync_sql_reported_missing_on_server() -> None:
    sql = sync_sql({"DateStyle": "ISO, MDY"}, {}, {}, {})
    assert sql == "SET DateStyle TO 'ISO, MDY'"


def test_sync_sql_ignores_non_settable_reported_params() -> None:
    want = {"server_version": "17", "is_superuser": "on", "session_authorization": "x"}
    assert sync_sql(want, {}, {}, {}) == ""


def test_sync_sql_reported_param_absent_from_want_is_left_alone() -> None:
    assert sync_sql({}, {"application_name": "x"}, {}, {}) == ""


def test_sync_sql_embedded_quotes() -> None:
    sql = sync_sql({"application_name": "O'Reilly's app"}, {}, {}, {})
    assert sql == "SET application_name TO 'O''Reilly''s app'"


def test_sync_sql_semicolon_in_reported_value_stays_one_statement() -> None:
    sql = sync_sql({"application_name": "a;b", "TimeZone": "UTC"}, {}, {}, {})
    assert statements(sql) == {"SET application_name TO 'a;b'", "SET TimeZone TO 'UTC'"}


def test_sync_sql_tracked_settings_are_sql_text() -> None:
    sql = sync_sql({}, {}, {"search_path": "a, b", "work_mem": "'64MB'"}, {"work_mem": "'64MB'"})
    assert sql == "SET search_path TO a, b"


def test_sync_sql_changed_tracked_setting() -> None:
    sql = sync_sql({}, {}, {"statement_timeout": "5000"}, {"statement_timeout": "0"})
    assert sql == "SET statement_timeout TO 5000"


def test_sync_sql_resets_extra_server_settings() -> None:
    sql = sync_sql({}, {}, {"search_path": "a"}, {"search_path": "a", "work_mem": "1", "role": "x"})
    assert statements(sql) == {"RESET work_mem", "RESET role"}


def test_sync_sql_all_kinds_together() -> None:
    sql = sync_sql(
        {"application_name": "a", "TimeZone": "UTC", "client_encoding": "UTF8"},
        {"application_name": "b", "TimeZone": "UTC"},
        {"search_path": "s", "myapp.tenant": "'42'"},
        {"search_path": "t", "work_mem": "'1MB'"},
    )
    assert statements(sql) == {
        "SET application_name TO 'a'",
        "SET client_encoding TO 'UTF8'",
        "SET search_path TO s",
        "SET myapp.tenant TO '42'",
        "RESET work_mem",
    }


def test_sync_sql_replays_through_parse_setting() -> None:
    """The tracked part of a sync, parsed back as client SQL, yields the wanted settings."""
    want = {"search_path": '"$user", public', "myapp.tenant": "'42'", "work_mem": "'64MB'"}
    have = {"search_path": "x", "statement_timeout": "10"}
    result = dict(have)
    for stmt in split_statements(sync_sql({}, {}, want, have)):
        change = parse_setting(stmt)
        assert change is not None
        apply_change(result, change)
    assert result == want


def test_sync_sql_role_replays_through_parse_setting() -> None:
    want = {"role": "app_rw"}
    [stmt] = split_statements(sync_sql({}, {}, want, {}))
    assert parse_setting(stmt) == SettingChange("role", "app_rw")


def test_sync_sql_replays_commented_and_dotted_settings() -> None:
    """Settings read from commented client SQL replay as one statement each."""
    result: dict[str, str] = {}
    for sql in ["SET work_mem = '64MB' -- tuning", "SET ROLE TO app_rw",
                "/* x */ SET a.b.c = 1", "SET SCHEMA 's' -- tenant"]:
        change = parse_setting(sql)
        assert change is not None
        apply_change(result, change)
    assert result == {"work_mem": "'64MB'", "role": "app_rw", "a.b.c": "1", "search_path": "'s'"}
    replayed: dict[str, str] = {}
    for stmt in split_statements(sync_sql({}, {}, result, {})):
        change = parse_setting(stmt)
        assert change is not None
        apply_change(replayed, change)
    assert replayed == result


def test_quote_literal() -> None:
    assert quote_literal("") == "''"
    assert quote_literal("plain") == "'plain'"
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("''") == "''''''"


def test_quote_literal_backslash_is_mode_independent() -> None:
    assert quote_literal("C:\\dir\\") == "E'C:\\\\dir\\\\'"


def test_quote_literal_backslash_and_quote() -> None:
    assert quote_literal("a\\'b") == "E'a\\\\''b'"
    # The E'' literal is one statement to split_statements, however it ends.
    sql = sync_sql({"application_name": "x\\"}, {}, {}, {})
    assert split_statements(sql + ";SELECT 1") == [sql, "SELECT 1"]


def test_startup_value_sql_quotes_backslashes() -> None:
    assert startup_value_sql("work_mem", "a\\b") == "E'a\\\\b'"
    assert startup_value_sql("search_path", 'a, "B\\c"') == "'a', E'B\\\\c'"


# ---------------------------------------------------------------------- startup_settings


def test_startup_settings_plain_params() -> None:
    params = {
        "user": "u",
        "database": "d",
        "replication": "false",
        "application_name": "psql",
        "search_path": "a",
    }
    assert startup_settings(params) == {"application_name": "psql", "search_path": "a"}


def test_startup_settings_options() -> None:
    params = {"user": "u", "options": "-c a=b -c c=d --e=f"}
    assert startup_settings(params) == {"a": "b", "c": "d", "e": "f"}


def test_startup_settings_attached_c() -> None:
    assert startup_settings({"options": "-ca=b"}) == {"a": "b"}
    assert startup_settings({"options": "-csearch_path=x,y -cwork_mem=4MB"}) == {
        "search_path": "x,y",
        "work_mem": "4MB",
    }


def test_startup_settings_options_whitespace_and_dashes() -> None:
    params = {"options": "  -c   statement_timeout=5s\t--client-encoding=UTF8\n"}
    assert startup_settings(params) == {"statement_timeout": "5s", "client_encoding": "UTF8"}


def test_startup_settings_value_with_equals() -> None:
    assert startup_settings({"options": "-c myapp.expr=a=b"}) == {"myapp.expr": "a=b"}


def test_startup_settings_ignores_other_switches_and_dangling_c() -> None:
    assert startup_settings({"options": "-B 100 -d 5 -c"}) == {}
    assert startup_settings({"options": "-c noequals"}) == {}
    assert startup_settings({"options": ""}) == {}


def test_startup_settings_escaped_spaces() -> None:
    params = {"options": r"-c application_name=my\ app -c search_path=a,\ b"}
    assert startup_settings(params) == {"application_name": "my app", "search_path": "a, b"}


def test_startup_settings_escaped_backslash() -> None:
    assert startup_settings({"options": r"-c x=a\\b"}) == {"x": "a\\b"}


def test_startup_settings_explicit_param_beats_options() -> None:
    params = {"application_name": "explicit", "options": "-c application_name=opt"}
    assert startup_settings(params) == {"application_name": "explicit"}


def test_startup_settings_excludes_protocol_options() -> None:
    assert startup_settings({"user": "u", "_pq_.foo": "bar"}) == {}


def test_startup_settings_explicit_param_beats_options_case_insensitively() -> None:
    params = {"Application_Name": "explicit", "options": "-c application_name=opt -c a=1"}
    assert startup_settings(params) == {"a": "1", "Application_Name": "explicit"}


def test_startup_settings_later_option_wins() -> None:
    assert startup_settings({"options": "-c a=1 --a=2"}) == {"a": "2"}


@pytest.mark.parametrize(
    "options,expected",
    [
        (r"-c a=x\ y\ \ z", {"a": "x y  z"}),  # escaped spaces, one word
        ("-c a=b\\", {"a": "b"}),  # a trailing backslash escapes nothing
        (r"-c a=\\\ b", {"a": "\\ b"}),
        (r"-c a=\x", {"a": "x"}),
        ("-c a= -c b=1", {"a": "", "b": "1"}),
        ("-B 10 -c a=1", {"a": "1"}),  # other switches and their arguments are skipped
        ("-B -c -c a=1", {"a": "1"}),  # "-c" is -B's argument
        ("-e -c a=1", {"a": "1"}),  # a switch without argument
        ("-ec a=1", {"a": "1"}),  # switches may be grouped
        ("-c a=1 -- -c b=2", {"a": "1"}),  # "--" ends the switches
        ("-c a=1 stray -c b=2", {"a": "1"}),  # so does a non-switch (Postgres refuses)
        ("--work-mem=4MB", {"work_mem": "4MB"}),  # dashes in the name only
        ("-c my-app.x=a-b", {"my_app.x": "a-b"}),
    ],
)
def test_startup_settings_options_like_postgres(options: str, expected: dict[str, str]) -> None:
    assert startup_settings({"options": options}) == expected


# ------------------------------------------------------------------ session_only_feature


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("LISTEN channel", "LISTEN"),
        ("listen channel;", "LISTEN"),
        ("  \n LISTEN x", "LISTEN"),
        ('LISTEN "Chan"', "LISTEN"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("prepare p (int) AS SELECT $1", "PREPARE"),
        ("CREATE TEMP TABLE t (id int)", "CREATE TEMP"),
        ("create temporary table t AS SELECT 1", "CREATE TEMPORARY"),
        ("CREATE  TEMP\n TABLE IF NOT EXISTS t ()", "CREATE TEMP"),
        ("CREATE GLOBAL TEMPORARY TABLE t ()", "CREATE GLOBAL"),
        ("CREATE LOCAL TEMP TABLE t ()", "CREATE LOCAL"),
    ],
)
def test_session_only_statements(sql: str, expected: str) -> None:
    assert session_only_feature(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "declare c no scroll cursor with  hold for select 1",
        "DECLARE c BINARY CURSOR\nWITH\nHOLD FOR SELECT 1",
    ],
)
def test_declare_with_hold(sql: str) -> None:
    feature = session_only_feature(sql)
    assert feature is not None and feature.startswith("DECLARE")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_advisory_lock (1)",
        "select pg_try_advisory_lock(1, 2)",
        "SELECT pg_advisory_lock_shared(1)",
        "SELECT pg_try_advisory_lock_shared(42)",
        "SELECT pg_catalog.pg_advisory_lock(1)",
        "WITH x AS (SELECT 1) SELECT pg_advisory_lock(hashtext('k')) FROM x",
    ],
)
def test_session_advisory_locks(sql: str) -> None:
    assert session_only_feature(sql) == "session-level advisory locks (pg_advisory_lock)"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_try_advisory_xact_lock_shared(1)",
        "SELECT pg_advisory_unlock(1)",
        "SELECT pg_advisory_unlock_all()",
        "SELECT listen FROM t",
        "SELECT 'listen'",
        "UNLISTEN channel",
        "UPDATE t SET listen = true",
        "DECLARE c CURSOR FOR SELECT 1",
        "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
        "DEALLOCATE p",
        "CREATE TABLE temp (id int)",
        "CREATE TABLE temporary_things (id int)",
        "CREATE UNLOGGED TABLE t ()",
        "COMMIT",
        "SELECT 1",
        "",
        "listener",
        "preparedness",
        "SELECT my_advisory_lock_helper()",
        "SELECT pg_advisory_lock_count",
    ],
)
def test_not_session_only(sql: str) -> None:
    assert session_only_feature(sql) is None


def test_advisory_lock_upper_case() -> None:
    assert session_only_feature("SELECT PG_ADVISORY_LOCK(1)") is not None


@pytest.mark.parametrize(
    "sql",
    ["SELECT Pg_Advisory_Lock(1)", "select PG_TRY_ADVISORY_LOCK_SHARED(1)",
     "SELECT pg_advisory_LOCK (1)"],
)
def test_advisory_lock_mixed_case(sql: str) -> None:
    assert session_only_feature(sql) == "session-level advisory locks (pg_advisory_lock)"


@pytest.mark.parametrize("sql", ["/* app */ LISTEN x", "-- c\nCREATE TEMP TABLE t ()"])
def test_session_only_after_leading_comment(sql: str) -> None:
    assert session_only_feature(sql) is not None


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("/* a /* nested */ b */ PREPARE p AS SELECT 1", "PREPARE"),
        ("  -- one\n  /* two */\n listen x", "LISTEN"),
        ("/**/DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE ... WITH HOLD"),
        ("-- LISTEN x\nSELECT 1", None),
        ("/* LISTEN x */ SELECT 1", None),
        ("/* unterminated LISTEN x", None),
        ("--", None),
    ],
)
def test_session_only_comments(sql: str, expected: str | None) -> None:
    assert session_only_feature(sql) == expected
