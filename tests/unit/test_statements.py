"""Unit tests for proxy.frontend.statements: the shared prepared-statement cache and
multi-statement splitting."""

from __future__ import annotations

import re
import struct

import pytest

from proxy.frontend.settings import SettingChange
from proxy.frontend.statements import StatementCache, split_statements
from proxy.wire import messages as m


def parse_body(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    types = struct.pack(f"!h{len(oids)}I", len(oids), *oids)
    return m.cstr(name) + m.cstr(sql) + types


# ---------------------------------------------------------------------- StatementCache


def test_from_parse_decodes_client_name_and_query() -> None:
    cache = StatementCache()
    name, stmt = cache.from_parse(parse_body("s1", "SELECT $1", (23,)))
    assert name == "s1"
    assert stmt.query == "SELECT $1"
    assert stmt.change is None
    assert stmt.session_feature is None


def test_server_name_shape() -> None:
    _, stmt = StatementCache().from_parse(parse_body("", "SELECT 1"))
    assert re.fullmatch(r"sw_[0-9a-f]{24}", stmt.server_name)
    assert len(stmt.server_name) < 64  # NAMEDATALEN


def test_parse_body_carries_server_name_and_the_rest_verbatim() -> None:
    body = parse_body("client_stmt", "SELECT $1::text", (25,))
    _, stmt = StatementCache().from_parse(body)
    rest = body[len(b"client_stmt\x00") :]
    assert stmt.parse_body == m.cstr(stmt.server_name) + rest
    # The parse body is a valid Parse message body.
    name, pos = m.read_cstr(stmt.parse_body, 0)
    sql, pos = m.read_cstr(stmt.parse_body, pos)
    assert (name, sql) == (stmt.server_name, "SELECT $1::text")
    assert stmt.parse_body[pos:] == b"\x00\x01\x00\x00\x00\x19"


def test_equal_text_and_types_share_one_statement() -> None:
    cache = StatementCache()
    n1, a = cache.from_parse(parse_body("a", "SELECT $1", (23,)))
    n2, b = cache.from_parse(parse_body("b", "SELECT $1", (23,)))
    n3, c = cache.from_parse(parse_body("", "SELECT $1", (23,)))
    assert (n1, n2, n3) == ("a", "b", "")
    assert a is b is c
    assert a.server_name == b.server_name


def test_names_are_deterministic_across_caches() -> None:
    body = parse_body("x", "SELECT now()")
    assert (
        StatementCache().from_parse(body)[1].server_name
        == StatementCache().from_parse(body)[1].server_name
    )


@pytest.mark.parametrize(
    "other",
    [
        parse_body("s", "SELECT $1", (25,)),  # different type
        parse_body("s", "SELECT $1", ()),  # types left to the server
        parse_body("s", "SELECT $1", (23, 23)),  # extra type
        parse_body("s", "SELECT $1", (0,)),  # explicit "unspecified"
        parse_body("s", "SELECT  $1", (23,)),  # different text
        parse_body("s", "select $1", (23,)),
    ],
)
def test_different_text_or_types_get_different_names(other: bytes) -> None:
    cache = StatementCache()
    _, base = cache.from_parse(parse_body("s", "SELECT $1", (23,)))
    _, stmt = cache.from_parse(other)
    assert stmt.server_name != base.server_name


def test_statement_records_setting_change_and_session_feature() -> None:
    cache = StatementCache()
    _, setter = cache.from_parse(parse_body("", "SET search_path TO a"))
    assert setter.change == SettingChange("search_path", "a")
    _, locker = cache.from_parse(parse_body("", "SELECT pg_advisory_lock($1)", (20,)))
    assert locker.session_feature is not None
    _, listen = cache.from_parse(parse_body("", "LISTEN x"))
    assert listen.session_feature == "LISTEN"


def test_non_utf8_query_text_does_not_raise() -> None:
    body = b"s\x00SELECT 'caf\xe9'\x00\x00\x00"
    name, stmt = StatementCache().from_parse(body)
    assert name == "s"
    assert stmt.parse_body.endswith(b"SELECT 'caf\xe9'\x00\x00\x00")


def test_capacity_is_bounded_and_oldest_is_evicted() -> None:
    cache = StatementCache(capacity=3)
    bodies = [parse_body("", f"SELECT {i}") for i in range(5)]
    stmts = [cache.from_parse(b)[1] for b in bodies]
    assert len(cache._items) == 3
    # The two oldest were evicted: parsing them again builds new objects (same names).
    again0 = cache.from_parse(bodies[0])[1]
    assert again0 is not stmts[0]
    assert again0.server_name == stmts[0].server_name
    assert len(cache._items) == 3
    # The newest are still cached (the same object comes back).
    assert cache.from_parse(bodies[4])[1] is stmts[4]


def test_capacity_one() -> None:
    cache = StatementCache(capacity=1)
    for i in range(10):
        cache.from_parse(parse_body("", f"SELECT {i}"))
        assert len(cache._items) == 1


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_zero_caches_nothing(capacity: int) -> None:
    cache = StatementCache(capacity=capacity)
    body = parse_body("s", "SET search_path TO a")
    name, stmt = cache.from_parse(body)
    assert name == "s"
    assert stmt.change == SettingChange("search_path", "a")
    assert cache._items == {}
    _, again = cache.from_parse(body)
    assert again.server_name == stmt.server_name
    assert cache._items == {}


def test_statement_records_commented_setting_and_feature() -> None:
    cache = StatementCache()
    _, setter = cache.from_parse(parse_body("", "/* app */ SET a.b.c = 1 -- c"))
    assert setter.change == SettingChange("a.b.c", "1")
    _, resetter = cache.from_parse(parse_body("", "-- c\nRESET a.b.c"))
    assert resetter.reset == "a.b.c"
    _, listen = cache.from_parse(parse_body("", "/* a /* b */ */ LISTEN x"))
    assert listen.session_feature == "LISTEN"


def test_hits_do_not_grow_the_cache() -> None:
    cache = StatementCache(capacity=2)
    body = parse_body("", "SELECT 1")
    for _ in range(10):
        cache.from_parse(body)
    assert len(cache._items) == 1


# -------------------------------------------------------------------- split_statements


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;", ["SELECT 1"]),
        ("SELECT 1;;", ["SELECT 1"]),
        ("SELECT 1; SELECT 2", ["SELECT 1", " SELECT 2"]),
        ("SELECT 1;SELECT 2;", ["SELECT 1", "SELECT 2"]),
        (";;; SELECT 1 ;; ;\n; SELECT 2 ;", [" SELECT 1 ", " SELECT 2 "]),
        (";", []),
        (" ; \n ; ", []),
        # single quotes, doubled quotes
        ("SELECT ';'; SELECT 2", ["SELECT ';'", " SELECT 2"]),
        ("SELECT 'it''s; fine'; SELECT 2", ["SELECT 'it''s; fine'", " SELECT 2"]),
        ("SELECT ''; SELECT ''''", ["SELECT ''", " SELECT ''''"]),
        ("SELECT 'a'';''b';x", ["SELECT 'a'';''b'", "x"]),
        # double-quoted identifiers
        ('SELECT 1 AS ";"; SELECT 2', ['SELECT 1 AS ";"', " SELECT 2"]),
        ('SELECT 1 AS "a"";""b"; x', ['SELECT 1 AS "a"";""b"', " x"]),
        # E'' strings without backslash-escaped quotes
        ("SELECT E'a;b\\n'; SELECT 2", ["SELECT E'a;b\\n'", " SELECT 2"]),
        ("SELECT E'it''s;'; x", ["SELECT E'it''s;'", " x"]),
        # dollar quotes
        ("SELECT $$a;b$$; SELECT 2", ["SELECT $$a;b$$", " SELECT 2"]),
        ("SELECT $t$ ; $$ ; $t$; x", ["SELECT $t$ ; $$ ; $t$", " x"]),
        ("SELECT $fn_1$;$fn_1$;x", ["SELECT $fn_1$;$fn_1$", "x"]),
        (
            "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$"
            " LANGUAGE plpgsql; SELECT f()",
            [
                "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$"
                " LANGUAGE plpgsql",
                " SELECT f()",
            ],
        ),
        ("DO $$BEGIN RAISE NOTICE ';'; END$$;", ["DO $$BEGIN RAISE NOTICE ';'; END$$"]),
        ("SELECT 'a$$'; SELECT '$$b'", ["SELECT 'a$$'", " SELECT '$$b'"]),
        # positional parameters are not dollar quotes
        ("SELECT $1; SELECT $2", ["SELECT $1", " SELECT $2"]),
        ("SELECT $1::int;SELECT $2", ["SELECT $1::int", "SELECT $2"]),
        # comments
        ("SELECT 1 -- a; b\n; SELECT 2", ["SELECT 1 -- a; b\n", " SELECT 2"]),
        ("SELECT 1 /* ; */; SELECT 2", ["SELECT 1 /* ; */", " SELECT 2"]),
        ("/* it's; */ SELECT 1; SELECT 2", ["/* it's; */ SELECT 1", " SELECT 2"]),
        ("-- it's\nSELECT 1; SELECT 2", ["-- it's\nSELECT 1", " SELECT 2"]),
        ("SELECT '--'; SELECT '/*'; x", ["SELECT '--'", " SELECT '/*'", " x"]),
        ("SELECT 1 - 1; SELECT 2/2", ["SELECT 1 - 1", " SELECT 2/2"]),
        # SET statements as the session sees them
        (
            "SET search_path TO a; SET work_mem = '1;MB'; RESET ALL",
            ["SET search_path TO a", " SET work_mem = '1;MB'", " RESET ALL"],
        ),
    ],
)
def test_split_statements(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'unterminated; still quoted",
        'SELECT "unterminated; ident',
        "SELECT $$ unterminated; dollar",
        "SELECT 1 /* unterminated; comment",
        "SELECT 1 -- line comment; to the end",
    ],
)
def test_unterminated_constructs_swallow_the_rest(sql: str) -> None:
    assert split_statements(sql) == [sql]


def test_no_semicolon_returns_input_unchanged() -> None:
    assert split_statements("  SELECT 1  ") == ["  SELECT 1  "]


def test_unicode_text() -> None:
    assert split_statements("SELECT 'é;ü'; SELECT '✓'") == ["SELECT 'é;ü'", " SELECT '✓'"]


def test_split_escape_string_with_backslash_quote() -> None:
    sql = "SELECT E'it\\'s; here'; SELECT 2"
    assert split_statements(sql) == ["SELECT E'it\\'s; here'", " SELECT 2"]


def test_split_nested_block_comment() -> None:
    sql = "SELECT 1 /* outer /* inner */ still; comment */; SELECT 2"
    assert split_statements(sql) == [
        "SELECT 1 /* outer /* inner */ still; comment */",
        " SELECT 2",
    ]


@pytest.mark.parametrize(
    "sql,expected",
    [
        # E'' strings: backslash escapes (a quote, a backslash), '' too, either case of E
        ("SELECT E'\\\\'; SELECT 2", ["SELECT E'\\\\'", " SELECT 2"]),
        ("SELECT e'a\\';b'; x", ["SELECT e'a\\';b'", " x"]),
        ("SELECT E'a'';b\\''''; x", ["SELECT E'a'';b\\''''", " x"]),
        ("SELECT 1, E'\\\\', ';'; x", ["SELECT 1, E'\\\\', ';'", " x"]),
        # a quote after an identifier ending in e is a standard string
        ("SELECT some'a\\'; x", ["SELECT some'a\\'", " x"]),
        ("SELECT U&'a\\'; x", ["SELECT U&'a\\'", " x"]),
        # nested block comments, "/*/" opens, "*/*" closes
        ("SELECT 1 /* a /* b /* c */ ; */ ; */; x",
         ["SELECT 1 /* a /* b /* c */ ; */ ; */", " x"]),
        ("SELECT 1 /*/ ; */; x", ["SELECT 1 /*/ ; */", " x"]),
        ("SELECT 1 /* */* 2; x", ["SELECT 1 /* */* 2", " x"]),
        ("SELECT 1 /* '; */; x", ["SELECT 1 /* '; */", " x"]),
        # a carriage return ends a line comment too
        ("SELECT 1 -- c\r; x", ["SELECT 1 -- c\r", " x"]),
        # `$` inside an identifier starts no dollar quote
        ("SELECT a$$b; SELECT 2", ["SELECT a$$b", " SELECT 2"]),
        ("SELECT 1 AS x$y$; SELECT $y$;$y$", ["SELECT 1 AS x$y$", " SELECT $y$;$y$"]),
    ],
)
def test_split_statements_lexer_details(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT E'unterminated\\'; still quoted",
        "SELECT 1 /* a /* b */ ; still in a",
    ],
)
def test_unterminated_escape_string_and_nested_comment(sql: str) -> None:
    assert split_statements(sql) == [sql]
