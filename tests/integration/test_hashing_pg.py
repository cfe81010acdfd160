"""proxy.topology.hashing against real PostgreSQL hash partitioning.

For each supported key type a ``PARTITION BY HASH (k)`` table with every partition is
created, ~2000 keys are inserted, and the partition PostgreSQL routed each row to
(``tableoid``) is compared with :func:`bucket_of`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from proxy.topology.hashing import HASH_PARTITION_SEED, bucket_of, hash_int, hash_value

N_KEYS = 2000
MODULI = (64, 7)
# (SQL type, PG extended hash support function)
TYPES = {
    "smallint": "hashint2extended",
    "integer": "hashint4extended",
    "bigint": "hashint8extended",
    "text": "hashtextextended",
    "varchar": "hashtextextended",
    "uuid": "uuid_hash_extended",
}
INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_SEED_SIGNED = (
    HASH_PARTITION_SEED - (1 << 64) if HASH_PARTITION_SEED >= 1 << 63 else HASH_PARTITION_SEED
)
_CHAR_POOL = "abcXYZ019 ,'\"\\%_-\téüßñΩЖ日本語中文한국😀🎉🚀"


def _int_keys(bits: int, rng: random.Random) -> list[int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    keys: set[int] = {lo, lo + 1, hi, hi - 1, 0, 1, -1, 2, -2, 42, -42}
    for p in range(1, bits - 1):  # powers of two and their neighbours, both signs
        for v in (1 << p, (1 << p) - 1, (1 << p) + 1):
            keys.update((v, -v))
    while len(keys) < N_KEYS:
        width = rng.randint(1, bits - 1)  # spread over magnitudes, not just huge values
        keys.add(rng.randint(-(1 << width), (1 << width) - 1))
    return sorted(k for k in keys if lo <= k <= hi)


def _text_keys(rng: random.Random) -> list[str]:
    keys: set[str] = {"", " ", "a", "é", "日本語", "🎉", "NULL", "0", "-1", "x" * 1000}
    keys.update("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"[:n] for n in range(41))
    while len(keys) < N_KEYS:
        length = rng.choice((rng.randint(0, 16), rng.randint(0, 64), rng.randint(0, 300)))
        keys.add("".join(rng.choice(_CHAR_POOL) for _ in range(length)))
    return sorted(keys)


def _uuid_keys(rng: random.Random) -> list[uuid.UUID]:
    keys = {uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), uuid.UUID(int=1)}
    while len(keys) < N_KEYS:
        keys.add(uuid.UUID(int=rng.getrandbits(128)))
    return sorted(keys)


def _keys_for(sql_type: str) -> list[Any]:
    rng = random.Random(f"hashing-{sql_type}")
    if sql_type in INT_BITS:
        return _int_keys(INT_BITS[sql_type], rng)
    if sql_type == "uuid":
        return _uuid_keys(rng)
    return _text_keys(rng)


@pytest.fixture(scope="module")
def pg(pg_factory: Callable[..., LocalPostgres]) -> LocalPostgres:
    return pg_factory("hashing")


@pytest.fixture
def conn(pg: LocalPostgres) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.dsn(), autocommit=True) as connection:
        yield connection


@pytest.mark.parametrize("modulus", MODULI)
@pytest.mark.parametrize("sql_type", list(TYPES))
def test_routing_matches_postgres(
    conn: psycopg.Connection[Any], sql_type: str, modulus: int
) -> None:
    table = f"hp_{sql_type}_m{modulus}"
    keys = _keys_for(sql_type)
    assert len(keys) >= N_KEYS - 100
    conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    conn.execute(f"CREATE TABLE {table} (k {sql_type}) PARTITION BY HASH (k)")
    for r in range(modulus):
        conn.execute(
            f"CREATE TABLE {table}_p{r} PARTITION OF {table} "
            f"FOR VALUES WITH (MODULUS {modulus}, REMAINDER {r})"
        )
    with conn.cursor() as cur, cur.copy(f"COPY {table} (k) FROM STDIN") as copy:
        for key in keys:
            copy.write_row((key,))

    rows = conn.execute(f"SELECT k, tableoid::regclass::text FROM {table}").fetchall()
    assert len(rows) == len(keys)
    mismatches = []
    used = set()
    for key, partition in rows:
        remainder = int(partition.rsplit("_p", 1)[1])
        used.add(remainder)
        if bucket_of(key, sql_type, modulus) != remainder:
            mismatches.append((key, remainder, bucket_of(key, sql_type, modulus)))
    assert mismatches == []
    assert len(used) == modulus  # sanity: keys really were spread over all partitions
    conn.execute(f"DROP TABLE {table} CASCADE")


@pytest.mark.parametrize("sql_type", list(TYPES))
def test_extended_hash_matches_postgres(conn: psycopg.Connection[Any], sql_type: str) -> None:
    keys = _keys_for(sql_type)[:500]
    fn = TYPES[sql_type]
    rows = conn.execute(
        f"SELECT k, {fn}(k, %s) FROM unnest(%s::{sql_type}[]) AS k", (_SEED_SIGNED, keys)
    ).fetchall()
    assert len(rows) == len(keys)
    for key, pg_hash in rows:
        assert hash_value(key, sql_type) == pg_hash & 0xFFFFFFFFFFFFFFFF, key


def test_int_widths_hash_identically_in_postgres(conn: psycopg.Connection[Any]) -> None:
    """PG's int2/int4/int8 extended hashes agree for every value that fits; so do ours."""
    bad = conn.execute(
        "SELECT v FROM generate_series(-32768, 32767) AS v WHERE NOT ("
        " hashint2extended(v::int2, %(s)s) = hashint4extended(v::int4, %(s)s) AND"
        " hashint4extended(v::int4, %(s)s) = hashint8extended(v::int8, %(s)s))",
        {"s": _SEED_SIGNED},
    ).fetchall()
    assert bad == []
    samples = [-(2**31), -(2**31) + 1, -123456789, -65536, 65536, 987654321, 2**31 - 1]
    rows = conn.execute(
        "SELECT v, hashint4extended(v::int4, %(s)s), hashint8extended(v::int8, %(s)s)"
        " FROM unnest(%(v)s::int8[]) AS v",
        {"s": _SEED_SIGNED, "v": samples},
    ).fetchall()
    for value, h4, h8 in rows:
        assert h4 == h8
        assert hash_int(value, "int4") == hash_int(value, "int8") == h8 & 0xFFFFFFFFFFFFFFFF
