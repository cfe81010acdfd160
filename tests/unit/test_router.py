"""Unit tests for proxy.topology.router: key values -> atoms -> shards."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from proxy.config import Config, parse_config
from proxy.errors import ShardwireError
from proxy.topology.hashing import bucket_of
from proxy.topology.router import (
    NULL_ATOM,
    KeyValue,
    Router,
    describe_value,
    python_key_value,
    untyped,
)


def config(tables: dict[str, Any], *, shards: int = 2, assignment: dict[str, str] | None = None
           ) -> Config:
    sharding: dict[str, Any] = {"buckets": 64}
    if assignment:
        sharding["assignment"] = assignment
    return parse_config({
        "database": "app",
        "auth": {"method": "trust"},
        "shards": [{"name": f"s{i}", "primary": f"postgresql://u@h:{5433 + i}/app"}
                   for i in range(shards)],
        "sharding": sharding,
        "tables": tables,
    })


def kv(kind: str, value: Any) -> KeyValue:
    return KeyValue(kind, value)


HASH = config({"users": {"shard_key": "id"}, "codes": {"shard_key": "code"},
               "refs": {"reference": True}})


def test_hash_buckets_match_postgres_hashing() -> None:
    router = Router(HASH)
    dist = router.dist("public.users")
    assert dist is not None
    for n in (-(2**63), -1, 0, 1, 42, 2**31, 2**63 - 1):
        assert dist.point(kv("int", n)) == {bucket_of(n, "int8", 64)}
    assert dist.point(kv("string", "42")) == {bucket_of("42", "text", 64)}
    assert dist.point(kv("text", "héllo")) == {bucket_of("héllo", "text", 64)}
    u = uuid.uuid4()
    assert dist.point(kv("uuid", u)) == {bucket_of(u, "uuid", 64)}


def test_untyped_values_are_inferred() -> None:
    dist = Router(HASH).dist("public.users")
    assert dist is not None
    assert dist.point(untyped("42")) == {bucket_of(42, "int8", 64)}
    assert dist.point(untyped(" -7 ")) == {bucket_of(-7, "int8", 64)}
    u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert dist.point(untyped(u)) == {bucket_of(uuid.UUID(u), "uuid", 64)}
    assert dist.point(untyped("abc")) == {bucket_of("abc", "text", 64)}
    assert dist.point(kv("numeric", Decimal("7.0"))) == {bucket_of(7, "int8", 64)}
    assert dist.point(kv("numeric", Decimal("7.5"))) is None
    assert dist.point(kv("int", 2**63)) is None  # out of int8: cannot be a key
    assert dist.point(kv("bool", True)) is None
    assert dist.point(kv("unknown", None)) is None


def test_key_type_overrides_inference() -> None:
    router = Router(HASH, key_types={"codes": "text", "users": "bigint"})
    codes = router.dist("public.codes")
    users = router.dist("public.users")
    assert codes is not None and users is not None
    assert codes.point(kv("int", 42)) == {bucket_of("42", "text", 64)}
    assert codes.point(untyped("42")) == {bucket_of("42", "text", 64)}
    assert users.point(kv("string", "42")) == {bucket_of(42, "int8", 64)}
    assert users.point(kv("string", "x")) is None


def test_null_keys() -> None:
    router = Router(HASH)
    dist = router.dist("public.users")
    assert dist is not None
    assert dist.point(kv("null", None)) == frozenset()  # key = NULL matches nothing
    assert dist.null_atoms() == {0}  # Postgres hashes a NULL key to remainder 0
    assert router.shard_for_key("public.users", None) == "s0"


def test_shard_for_key_and_assignment() -> None:
    cfg = config({"users": {"shard_key": "id"}},
                 assignment={"s0": "32-63", "s1": "0-31"})
    router = Router(cfg)
    for n in range(50):
        b = bucket_of(n, "int8", 64)
        assert router.shard_for_key("public.users", n) == ("s1" if b < 32 else "s0")
        assert router.shard_for_key("public.users", str(n)) == ("s1" if b < 32 else "s0")
    with pytest.raises(ShardwireError):
        router.shard_for_key("public.nope", 1)
    assert router.bucket_of(42) == bucket_of(42, "int8", 64)
    assert router.bucket_of("abc") == bucket_of("abc", "text", 64)


LIST = config({"events": {"shard_key": "region", "strategy": "list",
                          "values": {"eu": "s0", "us": "s1", 7: "s1"}, "default": "s0"},
               "strict": {"shard_key": "region", "strategy": "list",
                          "values": {"eu": "s0"}}})


def test_list_values() -> None:
    router = Router(LIST)
    events = router.dist("public.events")
    strict = router.dist("public.strict")
    assert events is not None and strict is not None
    assert events.point(kv("string", "us")) == {"us"}
    assert events.shard_of_atom("us") == "s1"
    assert events.shard_of_atom("mars") == "s0"  # default
    assert events.point(kv("int", 7)) == {"7"} and events.shard_of_atom("7") == "s1"
    assert strict.shard_of_atom("mars") is None  # no shard takes it
    assert events.null_atoms() == {NULL_ATOM} and events.shard_of_atom(NULL_ATOM) == "s0"
    with pytest.raises(ShardwireError) as e:
        router.shard_for_key("public.strict", "mars")
    assert e.value.sqlstate == "23514"
    assert events.colocation != strict.colocation


RANGE = config({
    "logs": {"shard_key": "created_at", "strategy": "range", "ranges": [
        {"to": "2025-01-01", "shard": "s0"},
        {"from": "2025-01-01", "to": "2025-07-01", "shard": "s1"},
        {"from": "2025-09-01", "shard": "s0"},
    ]},
    "nums": {"shard_key": "n", "strategy": "range", "default": "s1", "ranges": [
        {"from": 10, "to": 20, "shard": "s0"},
    ]},
})


def test_range_segments_and_gaps() -> None:
    router = Router(RANGE)
    logs = router.dist("public.logs")
    nums = router.dist("public.nums")
    assert logs is not None and nums is not None

    def shards(atoms: Any) -> set[str | None]:
        return {logs.shard_of_atom(a) for a in atoms}

    assert shards(logs.point(kv("string", "2024-12-31 23:59"))) == {"s0"}
    assert shards(logs.point(kv("string", "2025-01-01"))) == {"s1"}  # lower bound inclusive
    assert shards(logs.point(kv("string", "2025-08-01"))) == {None}  # the gap: no shard
    assert shards(logs.point(kv("date", "2026-01-01"))) == {"s0"}
    assert logs.point(kv("string", "not a date")) is None
    assert logs.point(kv("timestamp", "2025-02-01 00:00+00")) is None  # aware vs naive
    # comparisons
    assert shards(logs.compare("<", kv("string", "2025-01-01"))) == {"s0"}
    assert shards(logs.compare("<=", kv("string", "2025-01-01"))) == {"s0", "s1"}
    assert shards(logs.compare(">", kv("string", "2025-06-30"))) == {"s1", None, "s0"}
    assert shards(logs.between(kv("string", "2025-02-01"), kv("string", "2025-03-01"))) == {
        "s1"}
    assert logs.between(kv("string", "2025-03-01"), kv("string", "2025-02-01")) == frozenset()
    # AND of two half-ranges is exact (atoms are segments, not shards)
    lower = logs.compare(">=", kv("string", "2025-02-01"))
    upper = logs.compare("<", kv("string", "2025-03-01"))
    assert lower is not None and upper is not None
    assert shards(lower & upper) == {"s1"}
    # integer ranges with a default for the gaps
    assert {nums.shard_of_atom(a) for a in nums.point(kv("int", 5)) or ()} == {"s1"}
    assert {nums.shard_of_atom(a) for a in nums.point(kv("int", 15)) or ()} == {"s0"}
    assert {nums.shard_of_atom(a) for a in nums.point(kv("int", 20)) or ()} == {"s1"}
    assert nums.point(kv("numeric", Decimal("1.5"))) is None
    assert "range [10, 20)" in nums.describe_atoms(nums.point(kv("int", 15)) or ())


TEXT_RANGE = config({
    "labels": {"shard_key": "label", "strategy": "range", "ranges": [
        {"to": "Z", "shard": "s0"},
        {"from": "Z", "shard": "s1"},
    ]},
    "names": {"shard_key": "name", "strategy": "range", "key_type": "text", "default": "s1",
              "ranges": [{"from": "m", "to": "t", "shard": "s0"}]},
})


def test_text_range_inequalities_do_not_narrow() -> None:
    # Postgres compares text with the collation (en_US: 'a' < 'B'), the segments use code
    # points ('B' < 'a'): a row 'B' on s0 satisfies label >= 'a', so no inequality narrows.
    router = Router(TEXT_RANGE)
    labels = router.dist("public.labels")
    names = router.dist("public.names")
    assert labels is not None and names is not None

    def shards(dist: Any, atoms: Any) -> set[str | None]:
        assert atoms is not None
        return {dist.shard_of_atom(a) for a in atoms}

    for op in ("<", "<=", ">", ">="):
        assert shards(labels, labels.compare(op, kv("string", "a"))) == {"s0", "s1"}
        assert shards(names, names.compare(op, kv("string", "p"))) == {"s0", "s1"}  # + gaps
    assert labels.compare(">=", kv("string", "a")) == frozenset(range(2))
    assert names.compare("<", kv("string", "a")) == frozenset(range(3))  # gaps included
    assert shards(labels, labels.between(kv("string", "a"), kv("string", "c"))) == {"s0", "s1"}
    # reversed in code-point order only: not "no rows" under a collation where 'a' < 'B'
    assert shards(labels, labels.between(kv("string", "a"), kv("string", "B"))) == {"s0", "s1"}
    # NULL comparisons are never true, whatever the collation
    assert labels.compare(">=", kv("null", None)) == frozenset()
    assert labels.between(kv("null", None), kv("string", "a")) == frozenset()
    # equality is placement, the proxy's own rule: it still narrows
    assert shards(labels, labels.point(kv("string", "B"))) == {"s0"}
    assert shards(labels, labels.point(kv("string", "a"))) == {"s1"}
    assert shards(names, names.point(kv("string", "p"))) == {"s0"}
    assert shards(names, names.point(kv("string", "a"))) == {"s1"}  # the default
    # integer ranges keep narrowing
    nums = Router(RANGE).dist("public.nums")
    assert nums is not None
    assert shards(nums, nums.compare("<", kv("int", 10))) == {"s1"}
    assert nums.compare("<", kv("int", 10)) == frozenset({0})


def test_colocation() -> None:
    router = Router(config({"a": {"shard_key": "x"}, "b": {"shard_key": "y"}}))
    a, b = router.dist("public.a"), router.dist("public.b")
    assert a is not None and b is not None
    assert a.colocation == b.colocation  # every hash table shares the bucket table


def test_reference_and_bare_names() -> None:
    router = Router(config({"refs": {"reference": True}, "billing.invoices": {"shard_key": "a"}}))
    assert router.reference == {"public.refs"}
    assert router.bare_names == {"refs": ["public.refs"], "invoices": ["billing.invoices"]}
    assert router.schemas == {"public", "billing"}
    assert router.sort_shards(["s1", "s0", "s1"]) == ("s0", "s1")


def test_python_values_and_descriptions() -> None:
    assert python_key_value(5) == kv("int", 5)
    assert python_key_value(True) == kv("bool", True)
    assert python_key_value(1.5) == kv("numeric", Decimal("1.5"))
    assert python_key_value(dt.date(2025, 1, 2)) == kv("date", "2025-01-02")
    assert python_key_value(object()).kind == "unknown"
    assert describe_value(kv("string", "it's")) == "'it''s'"
    assert describe_value(kv("int", 5)) == "5"
    assert describe_value(kv("null", None)) == "NULL"
    assert describe_value(kv("text", "x" * 100)).endswith("...")
