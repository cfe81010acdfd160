"""Planner tests: the data-driven route cases (tests/cases/routes.yaml) and the planner's
caches, INSERT split, COPY splitting and parameter decoding."""

from __future__ import annotations

import dataclasses
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from sqlglot import exp

from proxy.config import Config, parse_config
from proxy.errors import ShardwireError
from proxy.sql import CopyOptions, CopySplitter, Planner, Route, explain, split_copy_rows
from proxy.sql.copy import column_order_sql, key_index_of
from proxy.sql.lexer import normalize, scan
from proxy.sql.params import decode_param, decode_param_array, parse_text_array
from proxy.sql.values import Binding
from proxy.topology.hashing import bucket_of
from proxy.topology.router import KeyValue

CASES = Path(__file__).resolve().parents[1] / "cases" / "routes.yaml"
SHARDS = ("s0", "s1", "s2", "s3")
UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def topology(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "database": "app",
        "auth": {"method": "trust"},
        "shards": [
            {"name": name, "primary": f"postgresql://postgres@127.0.0.1:{5433 + i}/app"}
            for i, name in enumerate(SHARDS)
        ],
        "default_shard": "s0",
        "sharding": {"buckets": 64},
        "tables": {
            "users": {"shard_key": "id"},
            "orders": {"shard_key": "user_id"},
            "order_items": {"shard_key": "user_id"},
            "billing.invoices": {"shard_key": "account_id"},
            "codes": {"shard_key": "code", "key_type": "varchar(20)"},
            "accounts": {"shard_key": "id", "key_type": "bigint"},
            "sessions": {"shard_key": "id", "key_type": "uuid"},
            "pgbench_accounts": {"shard_key": "aid"},
            "pgbench_tellers": {"shard_key": "tid"},
            "pgbench_branches": {"shard_key": "bid"},
            "pgbench_history": {"shard_key": "aid"},
            "countries": {"reference": True},
            "currencies": {"reference": True},
            "events": {
                "shard_key": "region",
                "strategy": "list",
                "values": {"eu": "s0", "us": "s1", "apac": "s2"},
                "default": "s3",
            },
            "tickets": {
                "shard_key": "region",
                "strategy": "list",
                "values": {"eu": "s0", "us": "s1"},
            },
            "stores": {
                "shard_key": "store_id",
                "strategy": "list",
                "key_type": "int4",
                "values": {1: "s1", "02": "s2"},
                "default": "s3",
            },
            "devices": {
                "shard_key": "device_id",
                "strategy": "list",
                "key_type": "uuid",
                "values": {UUID.upper(): "s2"},
                "default": "s0",
            },
            "logs": {
                "shard_key": "created_at",
                "strategy": "range",
                "ranges": [
                    {"to": "2025-01-01", "shard": "s0"},
                    {"from": "2025-01-01", "to": "2025-07-01", "shard": "s1"},
                    {"from": "2025-07-01", "shard": "s2"},
                ],
            },
            "metrics": {
                "shard_key": "day",
                "strategy": "range",
                "ranges": [
                    {"to": 100, "shard": "s0"},
                    {"from": 100, "to": 200, "shard": "s1"},
                    {"from": 300, "shard": "s3"},
                ],
            },
            "labels": {
                "shard_key": "label",
                "strategy": "range",
                "key_type": "text",
                "ranges": [{"to": 5, "shard": "s0"}, {"from": 5, "shard": "s1"}],
            },
        },
    }
    data.update(overrides)
    return parse_config(data, source="test-topology")


CONFIG = topology()
PLANNER = Planner(CONFIG)  # key types from the topology (codes, accounts, ...)


def shard_of(key: Any) -> str:
    """The expected shard of a hash key, computed from hashing + assignment (not the
    router): ints hash as int8, strings as text, {uuid: ...} as uuid."""
    if isinstance(key, dict):
        (kind, value), = key.items()
        key, type_name = (uuid.UUID(value), "uuid") if kind == "uuid" else (value, kind)
    elif isinstance(key, bool):
        raise TypeError("bool key")
    elif isinstance(key, int):
        type_name = "int8"
    else:
        type_name = "text"
    return CONFIG.sharding.assignment[bucket_of(key, type_name, CONFIG.sharding.buckets)]


def load_cases() -> list[dict[str, Any]]:
    with CASES.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


ALL_CASES = load_cases()


def case_id(case: dict[str, Any]) -> str:
    sql = " ".join(str(case["sql"]).split())
    extra = f" {case['params']!r}" if "params" in case else ""
    text = sql + extra
    return text if len(text) <= 90 else text[:87] + "..."


def test_case_file_is_big_enough() -> None:
    assert len(ALL_CASES) >= 170


@pytest.mark.parametrize("case", ALL_CASES, ids=[case_id(c) for c in ALL_CASES])
def test_route_case(case: dict[str, Any]) -> None:
    route = PLANNER.plan(
        case["sql"],
        case.get("params"),
        case.get("param_types"),
        session_shard=case.get("session_shard"),
        session_shard_key=case.get("session_shard_key"),
        reference_shard=case.get("reference_shard"),
    )
    check_route(route, case)


def check_route(route: Route, case: dict[str, Any]) -> None:
    where = explain(route)
    if "error" in case:
        assert route.error is not None, where
        assert route.error.sqlstate == str(case["error"]), where
        if "message" in case:
            assert case["message"] in route.error.message, where
        assert route.shards == (), where
        return
    assert route.error is None, where
    expected: tuple[str, ...] | None = None
    if "shard_of_key" in case:
        expected = (shard_of(case["shard_of_key"]),)
    elif "shards_of_keys" in case:
        expected = tuple(sorted({shard_of(k) for k in case["shards_of_keys"]}))
    elif "shards" in case:
        expected = tuple(case["shards"])
    elif case.get("kind") == "all":
        expected = SHARDS
    if expected is not None:
        assert route.shards == expected, where
        kind = case.get("kind")
        if kind is None and "shards" not in case:
            kind = "shard" if len(expected) == 1 else (
                "all" if len(expected) == len(SHARDS) else "shards")
        if kind is not None:
            assert route.kind == kind, where
    elif "kind" in case:
        assert route.kind == case["kind"], where
    reasons = case.get("reason", [])
    for text in [reasons] if isinstance(reasons, str) else reasons:
        assert text in route.reason, where
    assert route.needs_merge == bool(case.get("merge", False)), where
    if "type" in case:
        assert route.statement_type == case["type"], where
    if "write" in case:
        assert route.is_write == case["write"], where
    if "source" in case:
        assert route.source == case["source"], where
    if "tables" in case:
        assert sorted(route.tables) == sorted(case["tables"]), where
    if "setting" in case:
        assert route.setting is not None, where
        assert [route.setting.name, route.setting.value] == case["setting"], where
    if "rewrites" in case:
        assert route.rewrites is not None, where
        assert dict(route.rewrites) == case["rewrites"], where
        if "rewrite_params" in case:
            assert [list(p) for p in route.rewrite_params or ()] == case["rewrite_params"]
    elif route.rewrites is not None:
        pytest.fail(f"unexpected rewrites\n{where}")
    if "copy_split" in case:
        cs = route.copy_split
        assert cs is not None, where
        spec = case["copy_split"]
        assert cs.key_index == spec["key_index"], where
        assert cs.options.format == spec["format"], where
        assert cs.options.header == spec["header"], where
        if "delimiter" in spec:
            assert cs.options.delimiter == spec["delimiter"], where


def _summary(route: Route) -> tuple[Any, ...]:
    return (route.kind, route.shards, route.needs_merge,
            route.error.sqlstate if route.error else None, route.rewrites)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c["sql"]],
                         ids=[case_id(c) for c in ALL_CASES if c["sql"]])
def test_fast_and_full_tokenizer_agree(case: dict[str, Any]) -> None:
    """The regex normaliser (fast path) and the full tokenizer route every case alike."""
    planner = Planner(CONFIG)
    fast = planner.plan(case["sql"], case.get("params"), case.get("param_types"),
                        reference_shard=case.get("reference_shard"))
    template, literals = planner.compiler.compile_text(case["sql"])
    full = template.route(Binding(case.get("params"), case.get("param_types"), literals,
                                  case.get("reference_shard")))
    if fast.rewrites is not None:  # the split is made by the prepared plan
        fast = dataclasses.replace(fast, rewrites=())
    if planner.prepare(case["sql"]).hints:
        return  # hints skip the analysis on both paths
    assert _summary(fast) == _summary(full), f"{explain(fast)}\n---\n{explain(full)}"


def test_key_types_come_from_the_topology() -> None:
    assert PLANNER.key_types == {
        "public.codes": "text", "public.accounts": "bigint", "public.sessions": "uuid",
        "public.stores": "integer", "public.devices": "uuid", "public.labels": "text",
    }
    sql = "SELECT * FROM accounts WHERE id = '7'"
    assert PLANNER.plan(sql).shards == (shard_of(7),) != (shard_of("7"),)


def test_key_types_argument_overrides_the_topology() -> None:
    planner = Planner(CONFIG, key_types={"accounts": "text", "public.users": "int8"})
    assert planner.key_types["public.accounts"] == "text"
    assert planner.key_types["public.users"] == "int8"
    assert planner.key_types["public.codes"] == "text"  # the topology's, not overridden
    assert planner.plan("SELECT * FROM accounts WHERE id = 7").shards == (shard_of("7"),)
    assert planner.plan("SELECT * FROM users WHERE id = '7'").shards == (shard_of(7),)
    # without the argument, users has no key type: the string literal hashes as text
    assert PLANNER.plan("SELECT * FROM users WHERE id = '7'").shards == (shard_of("7"),)


def test_dollar_inside_identifier_is_not_a_parameter() -> None:
    route = Planner(CONFIG).plan("SELECT price$1 FROM users WHERE id = $1", ["5"])
    assert route.shards == ("s1",)


# --------------------------------------------------------------------------- caches


def test_literal_normalising_cache_shares_one_parse() -> None:
    planner = Planner(CONFIG)
    keys = [5, 14, 42, 1, 7, 19, 4, 2, 87903, 50717]
    for k in keys:
        route = planner.plan(f"SELECT abalance FROM pgbench_accounts WHERE aid = {k}")
        assert route.shards == (shard_of(k),), explain(route)
    stats = planner.cache_stats()
    assert stats["templates"]["parses"] == 1
    assert stats["templates"]["misses"] == 1
    assert stats["templates"]["hits"] == len(keys) - 1
    assert stats["plans"]["misses"] == len(keys)


def test_literal_normalising_cache_for_multi_row_insert() -> None:
    planner = Planner(CONFIG)
    r1 = planner.plan("INSERT INTO users (id, name) VALUES (1, 'a'), (5, 'b')")
    r2 = planner.plan("INSERT INTO users (id, name) VALUES (14, 'c'), (19, 'd')")
    assert planner.cache_stats()["templates"]["parses"] == 1
    assert dict(r1.rewrites or ()) == {
        "s1": "INSERT INTO users (id, name) VALUES (5, 'b')",
        "s3": "INSERT INTO users (id, name) VALUES (1, 'a')",
    }
    assert r2.shards == ("s0",) and r2.rewrites is None


def test_plan_cache_hits_and_memoised_routes() -> None:
    planner = Planner(CONFIG)
    sql = "SELECT * FROM users WHERE id = 7"
    first = planner.plan(sql)
    again = planner.plan(sql)
    assert again is first  # a literal-only statement's route is memoised
    assert planner.cache_stats()["plans"] == {"hits": 1, "misses": 1, "size": 1,
                                              "capacity": 4096}


def test_reference_route_memo_depends_on_reference_shard() -> None:
    planner = Planner(CONFIG)
    assert planner.plan("SELECT * FROM countries", reference_shard="s2").shards == ("s2",)
    assert planner.plan("SELECT * FROM countries", reference_shard="s3").shards == ("s3",)
    assert planner.plan("SELECT * FROM countries").shards == ("s0",)


def test_plan_cache_is_bounded_lru() -> None:
    planner = Planner(CONFIG, capacity=3, template_capacity=2)
    for k in range(10):
        planner.plan(f"SELECT * FROM users WHERE id = {k} AND name = 'n{k}'")
        planner.plan(f"SELECT {k} FROM orders")
    stats = planner.cache_stats()
    assert stats["plans"]["size"] == 3
    assert stats["templates"]["size"] <= 2


def test_prepared_plan_routes_at_bind() -> None:
    planner = Planner(CONFIG)
    prepared = planner.prepare("SELECT * FROM users WHERE id = $1")
    for k in (1, 5, 14, 42):
        assert prepared.route([str(k)]).shards == (shard_of(k),)
        assert prepared.route([struct.pack(">q", k)], [20]).shards == (shard_of(k),)
    assert planner.prepare("SELECT * FROM users WHERE id = $1") is prepared
    assert planner.cache_stats()["templates"]["parses"] == 1


def test_parameterised_routes_are_not_memoised() -> None:
    prepared = Planner(CONFIG).prepare("SELECT * FROM users WHERE id = $1")
    assert prepared.route(["1"]).shards == ("s3",)
    assert prepared.route(["5"]).shards == ("s1",)


def test_normalize_replaces_only_value_literals() -> None:
    key, slots = normalize(
        "SELECT x::varchar(10), round(y, 2) FROM t WHERE a = 5 AND b IN ('x', 'y') "
        "AND c BETWEEN 1 AND 2 AND d LIKE 'p%' AND e = $1 LIMIT 10") or ("", [])
    assert "varchar(10)" in key
    assert "LIMIT 10" in key and "LIKE 'p%'" in key
    assert " :p1 " in key
    # slots: round's 2 (an argument is a value position), 5, 'x', 'y', 1, 2;
    # the type modifier, LIKE's pattern and LIMIT keep their literals
    assert len(slots) == 6
    assert key.count(":l") == len(slots)


def test_normalize_declines_what_needs_the_full_tokenizer() -> None:
    assert normalize("SELECT $$x$$") is None
    assert normalize("SELECT 1; SELECT 2") is None
    assert normalize("SELECT 'open") is None
    assert normalize("SELECT /* a /* nested */ b */ 1") is None
    assert normalize("SELECT 1;") is not None


def test_scan_handles_postgres_lexical_rules() -> None:
    sc = scan("SELECT a=-1, E'it\\'s', $q$ ; $q$, \"Id\" /* x /* y */ z */ FROM t -- c\n;")
    texts = [sc.text(i) for i in range(len(sc))]
    assert texts[:4] == ["SELECT", "a", "=", "-"]
    assert "E'it\\'s'" in texts and "$q$ ; $q$" in texts and '"Id"' in texts
    assert not sc.bad
    assert sc.statement_bounds() == [(0, len(sc) - 1)]
    assert scan("SELECT 'x").bad


# --------------------------------------------------------------------------- INSERT split


def _rows_and_rest(sql: str) -> tuple[list[str], str]:
    tree = sqlglot.parse_one(sql, read="postgres")
    assert isinstance(tree, exp.Insert)
    values = tree.expression
    assert isinstance(values, exp.Values)
    rows = [row.sql("postgres") for row in values.expressions]
    rest = tree.copy()
    rest.set("expression", exp.Values(expressions=[]))
    return rows, rest.sql("postgres")


@pytest.mark.parametrize("sql", [
    "INSERT INTO users (id, name, at) VALUES (1, 'a', now()), (5, 'b', now()), "
    "(14, 'c', '2020-01-01'::timestamptz), (2, 'd', now()) "
    "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name RETURNING id, name",
    "insert into orders(user_id,total) values(1,1.5),(4,2),(5,3),(14,4)",
    "WITH c AS (SELECT 1) INSERT INTO users (name, id) VALUES ('x', 19), ('y', 7)",
])
def test_split_insert_means_the_same(sql: str) -> None:
    route = Planner(CONFIG).plan(sql)
    assert route.error is None and route.rewrites, explain(route)
    rows, rest = _rows_and_rest(sql)
    seen: list[int] = []
    for (shard, rewritten), idx in zip(route.rewrites, route.rewrite_rows or (), strict=True):
        new_rows, new_rest = _rows_and_rest(rewritten)
        assert new_rest == rest  # same target, columns, ON CONFLICT, RETURNING
        assert new_rows == [rows[i] for i in idx]  # the shard's rows, in order
        single = Planner(CONFIG).plan(rewritten)
        assert single.shards == (shard,), explain(single)  # every row is on its shard
        seen.extend(idx)
    assert sorted(seen) == list(range(len(rows)))


def test_split_insert_keeps_the_text_as_written() -> None:
    sql = "INSERT INTO users (id, at) VALUES (1, now()), (5, NOW()::date)  -- why\n"
    route = Planner(CONFIG).plan(sql)
    assert dict(route.rewrites or ()) == {
        "s1": "INSERT INTO users (id, at) VALUES (5, NOW()::date)  -- why\n",
        "s3": "INSERT INTO users (id, at) VALUES (1, now())  -- why\n",
    }
    # sqlglot would have re-rendered the functions:
    assert "CURRENT_TIMESTAMP" in sqlglot.transpile(sql, read="postgres", write="postgres")[0]


def test_split_insert_renumbers_parameters() -> None:
    sql = ("INSERT INTO users (id, name) VALUES ($1, $2), ($3, upper($2)), ($4, $5) "
           "ON CONFLICT (id) DO UPDATE SET name = $6")
    params = ["5", "a", "1", "14", "b", "z"]
    route = Planner(CONFIG).plan(sql, params)
    assert route.error is None, explain(route)
    got = {shard: (text, p, r) for (shard, text), p, r in
           zip(route.rewrites or (), route.rewrite_params or (), route.rewrite_rows or (),
               strict=True)}
    assert got["s1"] == ("INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO "
                         "UPDATE SET name = $3", (0, 1, 5), (0,))
    assert got["s3"] == ("INSERT INTO users (id, name) VALUES ($1, upper($2)) ON CONFLICT "
                         "(id) DO UPDATE SET name = $3", (2, 1, 5), (1,))
    assert got["s0"][1:] == ((3, 4, 5), (2,))
    # the rewritten statements route with their parameter subsets to their shard
    for (shard, text), idx in zip(route.rewrites or (), route.rewrite_params or (),
                                  strict=True):
        sub = [params[i] for i in idx]
        assert Planner(CONFIG).plan(text, sub).shards == (shard,)


# --------------------------------------------------------------------------- hints, explain


def test_hint_precedence() -> None:
    p = Planner(CONFIG)
    sql = "SELECT * FROM users WHERE id = 1 /* shard_key: 14 */"
    assert p.plan(sql, session_shard="s2").shards == ("s0",)  # comment beats session
    assert p.plan("SELECT * FROM users", session_shard="s2",
                  session_shard_key="1").shards == ("s2",)
    assert p.plan("SELECT * FROM users", session_shard_key=5).shards == ("s1",)
    assert p.plan("SELECT * FROM users", session_shard="nope").error is not None
    assert p.plan("COMMIT", session_shard="s2").shards == ("s0",)


def test_explain_text() -> None:
    text = explain(PLANNER.plan("INSERT INTO users (id) VALUES (1), (5)"))
    assert text.splitlines()[0] == "route: shards s1, s3 (insert; write)"
    assert "rewrite for s1 rows 2: INSERT INTO users (id) VALUES (5)" in text
    err = explain(PLANNER.plan("UPDATE users SET id = 5 WHERE id = 1"))
    assert err.startswith("error 0A000: UPDATE would move the row from shard s3 to shard s1")
    assert "needs merge: yes" in explain(PLANNER.plan("SELECT count(*) FROM users"))
    assert "copy split: public.users by id (field 1)" in explain(
        PLANNER.plan("COPY users (id, name) FROM STDIN"))


def test_routes_are_frozen_values() -> None:
    route = PLANNER.plan("SELECT * FROM users WHERE id = 7")
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.kind = "all"  # type: ignore[misc]
    assert route.shard == "s1"


def test_unparsed_error_mode() -> None:
    strict = Planner(topology(unparsed="error"))
    route = strict.plan("SELEC 1")
    assert route.error is not None and route.error.sqlstate == "0A000"
    assert strict.plan("SELEC 1 /* shard: s1 */").shards == ("s1",)
    assert strict.plan("LISTEN foo").error is None  # recognised, not unparsed


def test_unanalysable_statement_never_reaches_a_wrong_shard() -> None:
    # sqlglot 30 cannot parse WHERE CURRENT OF: with a sharded table named, reject it
    route = PLANNER.plan("UPDATE users SET name = 'x' WHERE CURRENT OF c")
    assert route.error is not None and route.shards == ()
    assert "/* shard: NAME */" in (route.error.hint or "")


# --------------------------------------------------------------------------- COPY split


def _by_key(text: str | None) -> str:
    assert text is not None
    return PLANNER.router.shard_for_key("public.users", text)


def test_split_copy_text_rows() -> None:
    data = b"1\ta\n5\tb\n14\tc\\td\n2\t\\N\n"
    out = split_copy_rows(CopyOptions(), 0, [data], _by_key, SHARDS)
    assert out == {"s3": b"1\ta\n2\t\\N\n", "s1": b"5\tb\n", "s0": b"14\tc\\td\n"}


def test_split_copy_text_escapes_key_and_embedded_newline() -> None:
    # the key is field 2; an escaped tab and an escaped newline stay inside their row
    data = b"x\\\ty\t5\n" + b"multi\\\nline\t14\n" + b"o\\061\t\\061\n"
    out = split_copy_rows(CopyOptions(), 1, [data], _by_key, SHARDS)
    assert out == {"s1": b"x\\\ty\t5\n", "s0": b"multi\\\nline\t14\n",
                   "s3": b"o\\061\t\\061\n"}


def test_split_copy_chunk_boundaries_and_end_marker() -> None:
    data = b"1\ta\n5\tb\n14\tc\n\\.\n99\tignored\n"
    byte_by_byte = [data[i : i + 1] for i in range(len(data))]
    whole = split_copy_rows(CopyOptions(), 0, [data], _by_key, SHARDS)
    assert split_copy_rows(CopyOptions(), 0, byte_by_byte, _by_key, SHARDS) == whole
    assert whole == {"s3": b"1\ta\n", "s1": b"5\tb\n", "s0": b"14\tc\n"}


def test_split_copy_csv_quotes_header_and_newlines() -> None:
    opts = CopyOptions(format="csv", delimiter=",", null="", header=True)
    data = (b"name,id\r\n"
            b"\"Smith, J\",5\r\n"
            b"\"two\nlines \"\"quoted\"\"\",\"14\"\r\n"
            b"plain,1")  # no final newline: flushed by finish()
    splitter = CopySplitter(opts, 1, _by_key, SHARDS)
    got: list[tuple[str, bytes]] = []
    for i in range(0, len(data), 7):
        got += splitter.feed(data[i : i + 7])
    got += splitter.finish()
    per: dict[str, bytes] = {}
    for shard, chunk in got:
        per[shard] = per.get(shard, b"") + chunk
    assert per == {
        "s0": b"name,id\r\n\"two\nlines \"\"quoted\"\"\",\"14\"\r\n",
        "s1": b"name,id\r\n\"Smith, J\",5\r\n",
        "s2": b"name,id\r\n",
        "s3": b"name,id\r\nplain,1",
    }
    assert splitter.rows == 3


def test_split_copy_csv_null_and_custom_quote_escape() -> None:
    keys: list[str | None] = []

    def record(text: str | None) -> str:
        keys.append(text)
        return "s0"

    opts = CopyOptions(format="csv", delimiter=";", null="NULL", quote="'", escape="\\")
    data = b"a;'x\\'y'\nb;NULL\nc;'NULL'\nd;''\n"
    split_copy_rows(opts, 1, [data], record, SHARDS)
    assert keys == ["x'y", None, "NULL", ""]


def test_split_copy_errors() -> None:
    with pytest.raises(ShardwireError) as e:
        split_copy_rows(CopyOptions(), 2, [b"1\ta\n"], _by_key, SHARDS)
    assert e.value.sqlstate == "22P04" and "row 1" in e.value.message
    typed = Planner(CONFIG, key_types={"users": "bigint"}).router
    with pytest.raises(ShardwireError) as e:
        split_copy_rows(CopyOptions(), 0, [b"abc\tx\n"],
                        lambda v: typed.shard_for_key("public.users", v), SHARDS)
    assert e.value.sqlstate == "22P02"
    events = PLANNER.router
    with pytest.raises(ShardwireError) as e:
        split_copy_rows(CopyOptions(), 0, [b"mars\n"],
                        lambda v: events.shard_for_key("public.tickets", v), SHARDS)
    assert e.value.sqlstate == "23514"
    with pytest.raises(ShardwireError):
        CopySplitter(CopyOptions(format="binary"), 0, _by_key, SHARDS)
    with pytest.raises(ShardwireError):
        split_copy_rows(CopyOptions(format="csv"), 0, [b'"open,1\n'], _by_key, SHARDS)


def test_copy_key_index_lookup_sql() -> None:
    assert column_order_sql('billing.My"T') == (
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = "
        "'\"billing\".\"My\"\"T\"'::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = '' ORDER BY attnum")
    assert key_index_of(["aid", "bid"], "bid") == 1
    with pytest.raises(ShardwireError):
        key_index_of(["a"], "b")


# --------------------------------------------------------------------------- parameters


def test_decode_text_and_binary_parameters() -> None:
    assert decode_param("42", 0) == KeyValue("untyped", "42")
    assert decode_param("42", 20) == KeyValue("int", 42)
    assert decode_param(" -7 ", 23) == KeyValue("int", -7)
    assert decode_param("x", 20).kind == "unknown"
    assert decode_param("42", 25) == KeyValue("text", "42")
    assert decode_param(struct.pack(">q", -(2**63)), 20) == KeyValue("int", -(2**63))
    assert decode_param(struct.pack(">i", 123), 23) == KeyValue("int", 123)
    assert decode_param(struct.pack(">h", -2), 21) == KeyValue("int", -2)
    assert decode_param(b"caf\xc3\xa9", 1043) == KeyValue("text", "café")
    u = uuid.uuid4()
    assert decode_param(u.bytes, 2950) == KeyValue("uuid", u)
    assert decode_param(str(u), 2950) == KeyValue("uuid", u)
    assert decode_param(b"\x00\x01", 20).kind == "unknown"  # wrong length
    assert decode_param(b"\x00" * 8, 0).kind == "unknown"  # binary without a type
    assert decode_param(None, 20).kind == "null"
    assert decode_param(7) == KeyValue("int", 7)
    assert decode_param(struct.pack(">i", 9132), 1082) == KeyValue("date", "2025-01-01")


def test_decode_array_parameters() -> None:
    assert parse_text_array('{1, 2,"a b",NULL,"NULL"}') == ["1", "2", "a b", None, "NULL"]
    assert parse_text_array("{}") == []
    assert parse_text_array("{{1,2}}") is None
    assert parse_text_array("1,2") is None
    assert decode_param_array("{1,2}", 1016) == [KeyValue("int", 1), KeyValue("int", 2)]
    assert decode_param_array("{1,2}", 0) == [KeyValue("untyped", "1"),
                                              KeyValue("untyped", "2")]
    binary = (struct.pack(">iiI", 1, 1, 23) + struct.pack(">ii", 2, 1)
              + struct.pack(">ii", 4, 7) + struct.pack(">i", -1))
    assert decode_param_array(binary, 1007) == [KeyValue("int", 7), KeyValue("null", None)]
    assert decode_param_array(b"\x00\x01", 1007) is None
